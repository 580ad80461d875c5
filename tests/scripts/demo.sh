#!/usr/bin/env bash
# make demo: converge the demo hosts into local systemd containers and say what came up.
# Until the full-stack scenario lands, the demo is the harness scenario's hosts.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1
# shellcheck disable=SC1091
source .venv/bin/activate
SCENARIO=${DEMO_SCENARIO:-harness}
molecule converge -s "$SCENARIO"
echo
echo "demo: scenario '$SCENARIO' is up; its hosts:"
docker ps --filter "name=kbxy-$SCENARIO-" --format '{{.Names}}' | sort | while read -r name; do
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name")
    os=$(docker exec "$name" sh -c '. /etc/os-release && echo "$PRETTY_NAME"')
    state=$(docker exec "$name" systemctl is-system-running 2>/dev/null || true)
    printf '  %-28s %-15s %-34s systemd: %s\n' "$name" "$ip" "$os" "$state"
done
echo "demo: log in with 'docker exec -it <name> bash'; remove with 'make demo-destroy'"
