#!/usr/bin/env bash
# Build (once per requirement list, cached) the controller wheelhouse of the demo app
# (roles/uvicorn/files/demo_app) for the hosts' Python versions: the uvicorn and stack
# scenarios deploy it with pip --no-index from there, so no deploy downloads from PyPI.
#
# usage: tests/scripts/app-wheelhouse.sh 3.11 [3.13 ...]    prints "cached" when nothing was built
#   KBXY_APP_WHEELHOUSE_ROOT  cache root (default ~/.cache/kbxy/wheelhouse/uvicorn)
#   PYTHON                    the controller's Python with pip (any version: wheels are
#                             chosen for the target version and platform)
#
# Scenarios run side by side (molecule.sh): a lock serializes builders, and a new
# wheelhouse is downloaded into a temporary directory and renamed into place, so a reader
# never sees a half-filled one.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1

PYTHON=${PYTHON:-python3}
ROOT=${KBXY_APP_WHEELHOUSE_ROOT:-$HOME/.cache/kbxy/wheelhouse/uvicorn}
PYPROJECT=roles/uvicorn/files/demo_app/pyproject.toml
[ $# -gt 0 ] || { echo "usage: $0 PYTHON_VERSION..." >&2; exit 2; }

mapfile -t reqs < <("$PYTHON" - "$PYPROJECT" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
print("\n".join(sorted(project["project"]["dependencies"] + project["build-system"]["requires"])))
PY
)
stamp_id=$(printf '%s\n' "${reqs[@]}" | sha1sum | cut -c1-16)

mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
built=0
for version in "$@"; do
    dir="$ROOT/py$version"
    [ -e "$dir/.requirements-$stamp_id" ] && continue
    tmp=$(mktemp -d "$ROOT/.py$version.XXXXXX")
    chmod 755 "$tmp"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --platform manylinux2014_x86_64 --implementation cp --python-version "$version" \
        --dest "$tmp" "${reqs[@]}"
    printf '%s\n' "${reqs[@]}" >"$tmp/.requirements-$stamp_id"
    sync -f "$tmp"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    built=1
    echo "app-wheelhouse: built $dir" >&2
done
[ "$built" = 1 ] || echo cached
