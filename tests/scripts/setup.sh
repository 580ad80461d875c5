#!/usr/bin/env bash
# make setup: controller venv, Python requirements, collections, host packages.
# Idempotent: each part is skipped when already done for the same inputs.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
CACHE_DIR=${KBXY_CACHE_DIR:-$HOME/.cache/kbxy}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
say() { printf 'setup: %s\n' "$*"; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "apt: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Host tools the tests use: sqlite3 CLI (benchmark reference), debootstrap (images),
# rsync (sanity tree), shellcheck (ansible-test sanity checks our shell scripts).
apt_install sqlite3 debootstrap rsync git shellcheck

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $($PYTHON --version)"
    if ! $PYTHON -m venv "$VENV" 2>/dev/null; then
        apt_install python3-venv
        rm -rf "$VENV"
        $PYTHON -m venv "$VENV"
    fi
fi

stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # uv resolves and links from its cache in seconds where pip takes a minute; pip is the
    # fall-back where uv cannot be had
    # shellcheck source=tests/scripts/uv-env.sh
    source tests/scripts/uv-env.sh
    uv_env "$PYTHON" "$VENV" "$CACHE_DIR"
    if [ -n "$UV" ]; then
        say "uv: installing requirements.txt"
        "$UV" pip install -q "${uv_args[@]}" -r requirements.txt
    else
        say "pip: installing requirements.txt (uv unavailable)"
        "$VENV/bin/pip" install -q -U pip
        "$VENV/bin/pip" install -q -r requirements.txt
    fi
    echo "$want" > "$stamp"
else
    say "requirements.txt unchanged, nothing to install"
fi

# The collection itself, importable as ansible_collections.kbxy.platform.
mkdir -p .collections/ansible_collections/kbxy
ln -sfn ../../.. .collections/ansible_collections/kbxy/platform

# Galaxy when it answers; otherwise the collections bundled with the ansible package.
# Checked once per venv and requirements (make runs setup before every stage, and an
# unreachable Galaxy costs the probe's whole timeout each time).
collections_stamp="$VENV/.collections.sha256"
want_collections=$(cat requirements.yml requirements.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$collections_stamp" 2>/dev/null)" != "$want_collections" ]; then
    if timeout 8 "$VENV/bin/python" -c 'import urllib.request; urllib.request.urlopen("https://galaxy.ansible.com/api/", timeout=6)' 2>/dev/null; then
        say "galaxy reachable: installing requirements.yml into .collections"
        "$VENV/bin/ansible-galaxy" collection install -r requirements.yml -p .collections >/dev/null
    else
        say "galaxy not reachable: using the collections bundled with the ansible package"
    fi
    installed=$(ANSIBLE_COLLECTIONS_PATH=.collections "$VENV/bin/ansible-galaxy" collection list 2>/dev/null)
    for fqcn in community.general community.crypto ansible.posix community.docker; do
        grep -q "^$fqcn " <<<"$installed" || { say "ERROR: collection $fqcn not found"; exit 1; }
    done
    echo "$want_collections" >"$collections_stamp"
fi
version=$("$VENV/bin/ansible" --version 2>/dev/null)
say "ready: ${version%%$'\n'*}"
