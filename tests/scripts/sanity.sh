#!/usr/bin/env bash
# ansible-test sanity on a copy of the collection at
# $KBXY_CACHE_DIR/sanity/ansible_collections/kbxy/platform: ansible-test needs that path
# shape, and a tree of its own (inside this repo's git work tree it would see every file as
# ignored). The copy holds what git would ship: tracked files plus untracked ones that
# .gitignore does not exclude. ansible-test runs from .venv-sanity (ansible-core only) so
# the pinned sanity tools never mix with the controller venv.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
CACHE_DIR=${KBXY_CACHE_DIR:-$HOME/.cache/kbxy}
WORK="$CACHE_DIR/sanity"
DEST="$WORK/ansible_collections/kbxy/platform"
SANITY_VENV=${SANITY_VENV:-.venv-sanity}

if [ ! -x "$SANITY_VENV/bin/ansible-test" ]; then
    python3 -m venv "$SANITY_VENV"
    "$SANITY_VENV/bin/pip" install -q "$(grep -E '^ansible-core' requirements.txt)"
fi
pip_version=$("$SANITY_VENV/bin/python" - <<'PY'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
PY
)
# ansible-test would download get-pip from a host we cannot reach: give it the offline one.
bootstrap="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
mkdir -p "$(dirname "$bootstrap")"
cmp -s tests/scripts/get_pip_offline.py "$bootstrap" || cp tests/scripts/get_pip_offline.py "$bootstrap"

rm -rf "$DEST" && mkdir -p "$DEST"
git ls-files --cached --others --exclude-standard -z | rsync -a --ignore-missing-args --from0 --files-from=- ./ "$DEST/"
cd "$DEST"
git init -q . && git add -A
exec "$ROOT/$SANITY_VENV/bin/ansible-test" sanity --venv --requirements --python 3.11 --color no "$@"
