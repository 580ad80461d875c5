#!/usr/bin/env bash
# Write the pytest ids of every test suite, one sorted file per suite, so that a
# restructuring of the suites (scenarios folded into others, hosts dropped) can be
# reviewed by diffing the lists of two commits (tests/scripts/compare-test-ids.py).
# Collection only: nothing is converged and no test runs.
#
# usage: [REPO=CHECKOUT] tests/scripts/collect-test-ids.sh [OUTDIR]  (default CHECKOUT/tests/test-ids)
#   REPO: the checkout to list (default: this script's), e.g. a clone of an older commit
#   that predates this script, with its own .venv
#   OUTDIR/unit.txt                  root pytest.ini suite (.venv)
#   OUTDIR/esrgan.txt                tests/realesrgan (.venv-esrgan; skipped when missing)
#   OUTDIR/molecule-<scenario>.txt   testinfra tests of each molecule/<scenario>
#   OUTDIR/SKIPPED                   suites not collected, with the reason
# Exit 1 when a suite fails to collect or collects nothing; skipped suites alone exit 0.
#
# Written to run unchanged in a clone of an older commit too: everything it knows about
# the scenarios comes from their molecule.yml, nothing is listed here.
set -euo pipefail
ROOT=$(cd "${REPO:-$(dirname "$0")/../..}" && pwd)
OUT=$(mkdir -p "${1:-$ROOT/tests/test-ids}" && cd "${1:-$ROOT/tests/test-ids}" && pwd)
cd "$ROOT"
WORK=$(mktemp -d)
RUN=stand-in-$$-${WORK##*/}  # labels this run's stand-in containers
FAILED=()
# a stale list from an earlier run (or another commit) must not pass for this one's
rm -f "$OUT"/unit.txt "$OUT"/esrgan.txt "$OUT"/molecule-*.txt "$OUT"/SKIPPED

remove_standins() {
    # by this run's label, not by name: if molecule replaced a stand-in meanwhile, the name
    # is theirs; and a stand-in whose `docker run` was cut off by a signal is found too
    docker ps -aq --filter "label=kbxy.collect-test-ids=$RUN" 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1 || true
}
cleanup() { remove_standins; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

skip() { echo "SKIPPED $1: $2" >&2; echo "$1: $2" >>"$OUT/SKIPPED"; }

# collect SUITE PYTEST [ARGS...]: OUT/SUITE.txt, or 1 with pytest's output in WORK/SUITE.log
collect() {
    local suite=$1 started=$SECONDS rc=0
    shift
    "$@" -p no:cacheprovider --collect-only -q >"$WORK/$suite.log" 2>&1 || rc=$?
    # the ids end at the first blank line: after it come warnings and the summary
    awk 'NF == 0 { exit } /::/' "$WORK/$suite.log" | LC_ALL=C sort >"$WORK/$suite.ids"
    if [ "$rc" -ne 0 ] || [ ! -s "$WORK/$suite.ids" ]; then return 1; fi
    mv "$WORK/$suite.ids" "$OUT/$suite.txt"
    printf '%-24s %5d ids  %3ds\n' "$suite" "$(wc -l <"$OUT/$suite.txt")" $((SECONDS - started))
}

fail() {
    echo "FAILED $1: collection errors or 0 tests; pytest said:" >&2
    grep -E '^(E  |ERROR|no tests|[0-9]+ tests? collected)' "$WORK/$1.log" | tail -15 | sed 's/^/    /' >&2
    FAILED+=("$1")
}

[ -x .venv/bin/pytest ] || { echo "no .venv/bin/pytest in $ROOT (tests/scripts/setup.sh)" >&2; exit 1; }
collect unit .venv/bin/pytest --rootdir . || fail unit
if [ -x .venv-esrgan/bin/pytest ]; then
    collect esrgan .venv-esrgan/bin/pytest -c tests/realesrgan/pytest.ini --rootdir . || fail esrgan
else
    skip esrgan "no .venv-esrgan in $ROOT (tests/scripts/setup-realesrgan.sh)"
fi

# Stand-in containers for a scenario whose tests read a container at import (hardening:
# docker inspect of its outside host). Only when none of the scenario's containers exist:
# if some do, molecule is creating, running or destroying that scenario right now, and a
# container of ours under one of its names would break that run. (When all of them are
# up, the first try has already read them: docker inspect only, nothing is changed.)
start_standins() {
    local name image
    while read -r name image; do
        if docker container inspect "$name" >/dev/null 2>&1; then return 2; fi
    done <"$1"
    while read -r name image; do
        # --rm and a bounded sleep: gone within 10 minutes even if this script is killed
        docker run -d --rm --pull never --label "kbxy.collect-test-ids=$RUN" \
            --name "$name" --entrypoint sleep "$image" 600 >/dev/null || return 1
        echo "  stand-in container $name ($image) for the import-time docker inspect"
    done <"$1"
}

for yml in molecule/*/molecule.yml; do
    dir=${yml%/molecule.yml}
    s=${dir#molecule/}  # molecule.sh runs `molecule test -s <directory name>`
    eph=$WORK/ephemeral-$s
    mkdir -p "$eph"
    # molecule's inventory, as far as the tests read it: the platforms (a scenario's list
    # replaces the base's, as molecule merges lists) with their groups.
    if ! .venv/bin/python - "$yml" "$s" "$eph/inventory.yml" >"$eph/platforms" <<'EOF'
import os, sys, yaml
scenario_file, scenario, inventory = sys.argv[1:]
def load(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}
base = load(".config/molecule/config.yml") if os.path.exists(".config/molecule/config.yml") else {}
platforms = load(scenario_file).get("platforms", base.get("platforms", []))
hosts, groups = {}, {}
for p in platforms:
    name = p["name"].replace("${MOLECULE_SCENARIO_NAME}", scenario).replace("$MOLECULE_SCENARIO_NAME", scenario)
    hosts[name] = {"ansible_connection": "docker"}
    for g in p.get("groups", []):
        groups.setdefault(g, {"hosts": {}})["hosts"][name] = {}
    print(name, p.get("image", ""))
with open(inventory, "w") as f:
    yaml.safe_dump({"all": {"hosts": hosts, "children": groups}}, f)
EOF
    then
        echo "FAILED molecule-$s: could not read the platforms of $yml" >&2
        FAILED+=("molecule-$s")
        continue
    fi
    # the variables molecule's testinfra verifier runs the tests with, and its options
    # --connection=ansible --ansible-inventory (they give the ids their ansible://host)
    run=(env PATH="$ROOT/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$ROOT/.collections"
        ANSIBLE_ROLES_PATH="$ROOT/roles" MOLECULE_PROJECT_DIRECTORY="$ROOT"
        MOLECULE_SCENARIO_NAME="$s" MOLECULE_SCENARIO_DIRECTORY="$ROOT/$dir"
        MOLECULE_EPHEMERAL_DIRECTORY="$eph" MOLECULE_INVENTORY_FILE="$eph/inventory.yml"
        .venv/bin/pytest --rootdir . --connection=ansible --ansible-inventory="$eph/inventory.yml" "$dir/tests")
    collect "molecule-$s" "${run[@]}" && continue
    if ! grep -qE 'docker\.errors\.|No such container' "$WORK/molecule-$s.log"; then fail "molecule-$s"; continue; fi
    rc=0
    start_standins "$eph/platforms" || rc=$?
    if [ "$rc" -eq 2 ]; then
        skip "molecule-$s" "its tests read its containers at import, and some of them exist (scenario running?): not touched; run again when it is done"
    elif [ "$rc" -ne 0 ]; then
        echo "FAILED molecule-$s: could not start stand-in containers (image built? tests/images/build.sh)" >&2
        FAILED+=("molecule-$s")
    else
        collect "molecule-$s" "${run[@]}" || fail "molecule-$s"
    fi
    remove_standins
done

if [ -s "$OUT/SKIPPED" ]; then echo "skipped suites (listed in $OUT/SKIPPED):" >&2; cat "$OUT/SKIPPED" >&2; fi
if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED suites: ${FAILED[*]}" >&2; exit 1; fi
echo "ids in $OUT"
