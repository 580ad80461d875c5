#!/usr/bin/env bash
# make demo: the full stack (molecule scenario `stack`: nginx on kbxy-stack-web, the demo
# app and its backups on kbxy-stack-app, the upscaling service on the CPU on kbxy-stack-gpu)
# from nothing, converged with site.yml and the
# settings of inventories/local; then the URLs to open and a curl line that is tried here.
# make demo-destroy removes it (molecule destroy -s stack).
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1
# shellcheck disable=SC1091
source .venv/bin/activate
export ANSIBLE_COLLECTIONS_PATH="$PWD/.collections"
KBXY_APT_PROXY=$(tests/images/apt-cache.sh) || KBXY_APT_PROXY=""
export KBXY_APT_PROXY

molecule create -s stack
molecule prepare -s stack
molecule converge -s stack

web_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' kbxy-stack-web)
app_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' kbxy-stack-app)
gpu_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' kbxy-stack-gpu)
mkdir -p build/stack
docker exec kbxy-stack-web cat /etc/nginx/tls/kbxy-demo/ca.crt >build/stack/ca.crt
name=kbxy-stack.localhost
curl_line="curl --cacert build/stack/ca.crt --resolve $name:443:$web_ip https://$name/api/items"

echo
echo "demo: the stack is up"
printf '  %-16s %-15s %s\n' kbxy-stack-web "$web_ip" "nginx (TLS by a throwaway CA: build/stack/ca.crt)" \
    kbxy-stack-app "$app_ip" "kbxy-demo on :8000/:8001 (reachable from the web host only), SQLite backups" \
    kbxy-stack-gpu "$gpu_ip" "kbxy-upscale on :8100 (CPU, random-weight test model; web host only)"
echo "  open:    https://$web_ip/  (the SPA; the certificate is for $name, issued by build/stack/ca.crt)"
echo "           https://$web_ip/api/docs  (the API)"
echo "  try:     $curl_line"
echo "  upscale: curl --cacert build/stack/ca.crt --resolve $name:443:$web_ip -H 'Content-Type: image/png' \\"
echo "             --data-binary @some.png -o big.png 'https://$name/ai/v1/upscale?model=general-x4v3'"
echo "  deploy:  ansible-playbook site.yml -i inventories/local --private-key build/stack/id_ed25519"
echo "  day-2:   ansible-playbook playbooks/db_download.yml -i inventories/local --private-key build/stack/id_ed25519"
echo "  remove:  make demo-destroy"
echo
echo "demo: $curl_line"
if command -v curl >/dev/null; then
    $curl_line --fail --silent --show-error --max-time 10
    echo
else
    python3 - "$web_ip" "$name" <<'PY'
import json, ssl, sys, urllib.request
ip, name = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile="build/stack/ca.crt")
ctx.check_hostname = False
req = urllib.request.Request(f"https://{ip}/api/items", headers={"Host": name})
print(json.dumps(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))))
PY
fi
