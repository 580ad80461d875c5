# shellcheck shell=bash
# Sourced by setup.sh and setup-realesrgan.sh: uv, installed by pip into the cache once,
# and the arguments that give it pip's settings on this machine (local wheel dirs, extra
# indexes, CA bundle), so uv and pip resolve the same thing.
#
# uv_env PYTHON VENV CACHE_DIR: sets UV (the binary; empty where it could not be installed)
# and uv_args (for `$UV pip install`), and exports SSL_CERT_FILE when pip names a cert.
uv_env() {
    local python=$1 venv=$2 cache_dir=$3 dir url cert
    UV="$cache_dir/uv-tool/bin/uv"
    if [ ! -x "$UV" ] && "$python" -m venv "$cache_dir/uv-tool"; then
        "$cache_dir/uv-tool/bin/pip" install -q uv 2>&1 | grep -v "^WARNING: Location" || true
    fi
    [ -x "$UV" ] || UV=""
    uv_args=(--python "$venv/bin/python" --cache-dir "$cache_dir/uv-cache" --link-mode hardlink --index-strategy unsafe-best-match)
    for dir in $("$python" -m pip config get global.find-links 2>/dev/null || true); do uv_args+=(--find-links "$dir"); done
    for url in $("$python" -m pip config get global.extra-index-url 2>/dev/null || true); do uv_args+=(--extra-index-url "$url"); done
    cert=$("$python" -m pip config get global.cert 2>/dev/null || true)
    if [ -n "$cert" ]; then export SSL_CERT_FILE="$cert"; fi
}
