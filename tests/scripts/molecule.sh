#!/usr/bin/env bash
# Run molecule scenarios, several side by side (MOLECULE_JOBS, default 2), each logging
# to build/logs/molecule-<scenario>.log. Container names carry the scenario name, so
# parallel scenarios never collide. Prints a line per scenario with its wall time and
# pytest's closing line; on failure, the tail of the failed scenario's log.
#
# usage: tests/scripts/molecule.sh [scenario ...]   (default: every molecule/*/molecule.yml)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
JOBS=${MOLECULE_JOBS:-2}
LOGS=build/logs
mkdir -p "$LOGS"
# shellcheck disable=SC1091
source .venv/bin/activate

# apt-cacher-ng in a test container: .deb files are downloaded once for all scenarios.
KBXY_APT_PROXY=$(tests/images/apt-cache.sh) || KBXY_APT_PROXY=""
export KBXY_APT_PROXY

scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    # the longest first, so the last one to start is a short one and the slots stay full
    for s in stack hardening uvicorn nginx sqlite_backup; do
        [ -f "molecule/$s/molecule.yml" ] && scenarios+=("$s")
    done
    for f in molecule/*/molecule.yml; do
        s=$(basename "$(dirname "$f")")
        [[ " ${scenarios[*]} " == *" $s "* ]] || scenarios+=("$s")
    done
fi

run_one() {
    local s=$1 started rc
    started=$(date +%s)
    ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 NO_COLOR=1 molecule test -s "$s" >"$LOGS/molecule-$s.log" 2>&1
    rc=$?
    echo "$s $rc $(($(date +%s) - started))" >"$LOGS/molecule-$s.result"
    return $rc
}

for s in "${scenarios[@]}"; do
    rm -f "$LOGS/molecule-$s.result"
done
started_all=$(date +%s)
for s in "${scenarios[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    echo "molecule: starting scenario $s"
    run_one "$s" &
done
# Each scenario's status is read from its .result file, not from `wait PID`: bash may
# already have reaped a finished job (the `jobs` polling above) and then answers
# "pid ... is not a child of this shell" with status 127 for a scenario that passed.
wait
finished_all=$(date +%s)
status=0
: >"$LOGS/molecule-times.tsv"
scenario_seconds=0
for s in "${scenarios[@]}"; do
    rc=missing secs=- why=""
    [ -f "$LOGS/molecule-$s.result" ] && read -r _ rc secs <"$LOGS/molecule-$s.result"
    closing=$(grep -E '=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s' "$LOGS/molecule-$s.log" | tail -1 | sed 's/^[^=]*//')
    # a scenario that passed without running its tests proves nothing: molecule skips
    # verify when a scenario has no test files, and pytest collects 0 from a broken module
    if [ "$rc" = 0 ]; then
        if [ -z "$closing" ]; then
            rc=no-verify why="never reached verify (no pytest closing line in $LOGS/molecule-$s.log)"
        elif grep -Eq '^collected 0 items' "$LOGS/molecule-$s.log" || ! grep -Eq '[0-9]+ passed' <<<"$closing"; then
            rc=no-tests why="its pytest collected or passed 0 tests: $closing"
        fi
    fi
    [ "$rc" = 0 ] || status=1
    [[ $secs =~ ^[0-9]+$ ]] && scenario_seconds=$((scenario_seconds + secs))
    printf '%s\t%s\t%s\n' "$s" "$rc" "$secs" >>"$LOGS/molecule-times.tsv"
    printf 'molecule: %-14s %s  %4ss  %s\n' "$s" "$([ "$rc" = 0 ] && echo PASS || echo FAIL)" "$secs" "$closing"
    [ -z "$why" ] || echo "molecule: scenario $s FAILED: $why"
    echo "$closing" >>"$LOGS/pytest-closing-lines.txt"
    if [ "$rc" != 0 ] && [ -z "$why" ]; then
        # CI shows only the tail of this output: name the failed tests and their
        # assertions first; the log's tail is molecule's destroy step.
        if grep -q '^=* FAILURES =*$' "$LOGS/molecule-$s.log"; then
            echo "---- failed tests of $s (from $LOGS/molecule-$s.log) ----"
            sed -n '/^=* FAILURES =*$/,/^=* short test summary info =*$/p' "$LOGS/molecule-$s.log" \
                | grep -E '^(_{3,} .* _{3,}|E  |[^ ].*:[0-9]+: )' | head -n 120
            grep -E '^(FAILED|ERROR) [^ ]+\.py' "$LOGS/molecule-$s.log"
        else
            echo "---- last 80 lines of $LOGS/molecule-$s.log ----"
            tail -n 80 "$LOGS/molecule-$s.log"
        fi
    fi
done
echo "molecule: ${#scenarios[@]} scenarios, $scenario_seconds scenario-seconds in $((finished_all - started_all)) s of wall time ($JOBS side by side)"
exit $status
