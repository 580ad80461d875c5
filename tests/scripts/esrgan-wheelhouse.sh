#!/usr/bin/env bash
# Build (once, cached) the controller wheelhouse the realesrgan role installs from with
# pip --no-index: torch + torchvision (PyPI's CUDA builds with their nvidia-* wheels,
# about 2.7 GB of wheels), the kbxy-upscale package's dependencies and its build backend.
# The molecule scenario `realesrgan` calls it from its prepare step; it runs on its own too.
#
# usage: tests/scripts/esrgan-wheelhouse.sh            prints the wheelhouse directory last
#   KBXY_ESRGAN_WHEELHOUSE_ROOT  cache root (default ~/.cache/kbxy/wheelhouse/realesrgan)
#   KBXY_ESRGAN_TORCH            torch requirements (default "torch==2.14.1 torchvision==0.29.1",
#                                the pair of the role's realesrgan_torch_requirements)
#   KBXY_ESRGAN_PACKAGE          the service package (default roles/realesrgan/files/kbxy_upscale)
#   PYTHON                       a Python 3.11 with pip (the hosts' Python: Debian 12)
#
# The directory is keyed by the requirement list: unchanged requirements -> "cached", no
# pip run. A new one is downloaded into a temporary directory, checked with a dry-run
# install from it alone (--no-index: every dependency and the build backend present),
# and only then renamed into place.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1

PYTHON=${PYTHON:-python3}
ROOT=${KBXY_ESRGAN_WHEELHOUSE_ROOT:-$HOME/.cache/kbxy/wheelhouse/realesrgan}
TORCH=${KBXY_ESRGAN_TORCH:-torch==2.14.1 torchvision==0.29.1}
PKG=${KBXY_ESRGAN_PACKAGE:-roles/realesrgan/files/kbxy_upscale}
say() { printf 'esrgan-wheelhouse: %s\n' "$*" >&2; }

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = 3.11 ] || { say "needs Python 3.11 (the Debian 12 hosts' Python), got $pyver"; exit 2; }
[ -f "$PKG/pyproject.toml" ] || { say "$PKG/pyproject.toml not found"; exit 2; }

# The package's runtime dependencies and build requirements, plus the torch pair.
mapfile -t reqs < <("$PYTHON" - "$PKG/pyproject.toml" "$TORCH" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
reqs = set(sys.argv[2].split())
reqs.update(project["project"].get("dependencies", []))
reqs.update(project.get("build-system", {}).get("requires", ["setuptools>=40.8.0", "wheel"]))
print("\n".join(sorted(reqs)))
EOF
)
stamp_id=$(printf '%s\n' "${reqs[@]}" | sha1sum | cut -c1-16)
dir="$ROOT/py$pyver"
stamp="$dir/.requirements-$stamp_id"

# scenarios run side by side (molecule.sh): one builder at a time, the others then find it cached
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if [ -e "$stamp" ]; then
    say "cached: $dir ($(du -sh "$dir" | cut -f1))"
    echo "$dir"
    exit 0
fi

mkdir -p "$ROOT"
tmp=$(mktemp -d "$ROOT/.py$pyver.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
started=$(date +%s)
say "downloading ${reqs[*]} into $tmp"
# (pip's "Location ... is ignored" lines about this machine's local indexes are noise)
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --dest "$tmp" "${reqs[@]}" 2> >(grep -v "^WARNING: Location '" >&2)
# The check: every requirement and the package itself resolve from the wheelhouse alone.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --dry-run --ignore-installed \
    --no-index --find-links "$tmp" "${reqs[@]}" "$(realpath "$PKG")"
printf '%s\n' "${reqs[@]}" >"$tmp/.requirements-$stamp_id"
sync -f "$tmp"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
say "built $dir ($(du -sh "$dir" | cut -f1), $(($(date +%s) - started)) s)"
echo "$dir"
