#!/usr/bin/env bash
# .venv-esrgan: the controller venv for the realesrgan tests and benchmark: torch/torchvision,
# spandrel (pinned), the reference (realesrgan 0.3.0 + basicsr 1.4.2, test-only), pytest,
# httpx, and kbxy-upscale (roles/realesrgan/files/kbxy_upscale) installed editable.
# Idempotent: stamped with the sha256 of this script and the package's pyproject.toml;
# a repeat run with nothing changed does nothing. Installs with uv (itself installed by pip
# into $KBXY_CACHE_DIR/uv-tool) and uv's cache in $KBXY_CACHE_DIR/uv-cache, hard-linked into
# the venv, so a fresh clone on a machine that ran this once installs torch in seconds.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1
started=$(date +%s%N)
VENV=${VENV_ESRGAN:-.venv-esrgan}
PYTHON=${PYTHON:-python3}
CACHE_DIR=${KBXY_CACHE_DIR:-$HOME/.cache/kbxy}
PKG=roles/realesrgan/files/kbxy_upscale
say() { printf 'setup-realesrgan: [%ss] %s\n' "$(elapsed)" "$*"; }
elapsed() { local ms=$((($(date +%s%N) - started) / 1000000)); printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)); }

# Everything installed; the versions are exact so that uv and pip resolve the same thing.
REQUIREMENTS=(
    torch==2.14.1 torchvision==0.29.1 spandrel==0.4.2
    fastapi uvicorn httpx python-multipart numpy pillow opencv-python-headless
    pytest
    # what realesrgan/basicsr import (they are installed --no-deps: their declared
    # dependencies pull in gfpgan, facexlib, tb-nightly, lmdb, ... which they never import here)
    scipy pyyaml addict tqdm requests setuptools
)
REFERENCE=(basicsr==1.4.2 realesrgan==0.3.0)

want=$(cat "$0" "$PKG/pyproject.toml" | sha256sum | cut -d' ' -f1)
stamp="$VENV/.setup-realesrgan.sha256"
# make test's check lane (esrgan) and the stack scenario's prepare may both get here at
# once: one installs, the other waits and then finds the stamp
mkdir -p build
exec 8>build/setup-realesrgan.lock
flock 8
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    say "$VENV is up to date, nothing to install"
    exit 0
fi

say "checking uv in $CACHE_DIR/uv-tool"
# shellcheck source=tests/scripts/uv-env.sh
source tests/scripts/uv-env.sh
uv_env "$PYTHON" "$VENV" "$CACHE_DIR"

if [ -n "$UV" ]; then
    [ -x "$VENV/bin/python" ] || "$UV" venv -q --python "$PYTHON" --seed "$VENV"
    say "uv: installing torch, spandrel, the service and its test tools into $VENV"
    "$UV" pip install -q "${uv_args[@]}" "${REQUIREMENTS[@]}"
    "$UV" pip install -q "${uv_args[@]}" --no-deps --no-build-isolation "${REFERENCE[@]}"
    "$UV" pip install -q "${uv_args[@]}" --no-deps -e "$PKG"
    say "installed; checking that everything imports"
else
    say "uv unavailable: falling back to pip (slow: torch is ~5.5 GB)"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    pip_q() { "$VENV/bin/pip" install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
    pip_q "${REQUIREMENTS[@]}"
    pip_q --no-deps --no-build-isolation "${REFERENCE[@]}"
    pip_q --no-deps -e "$PKG"
fi

# The editable build leaves setuptools metadata in the source tree; the venv has its own copy.
rm -rf "$PKG"/src/*.egg-info "$PKG"/build

# Prove it imports: the service, spandrel, and the reference with its torchvision shim.
"$VENV/bin/python" - <<'PY'
import sys
import torchvision.transforms.functional as f
sys.modules["torchvision.transforms.functional_tensor"] = f
import torch, spandrel, kbxy_upscale.app  # noqa: E401
from realesrgan import RealESRGANer  # noqa: F401
print(f"setup-realesrgan: torch {torch.__version__}, spandrel {spandrel.__version__}, reference realesrgan importable")
PY
echo "$want" > "$stamp"
say "$VENV ready"
