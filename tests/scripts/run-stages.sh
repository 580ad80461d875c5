#!/usr/bin/env bash
# Run named stages and always print a per-stage timing summary, the critical path and one
# closing line that adds up every pytest run.
#
# usage: tests/scripts/run-stages.sh "name:command" ... "lane/name:command" ...
#
# Stages without a lane run first, one after another; the first failure stops the run.
# Then every lane runs at the same time as the others, its stages one after another: a
# failed stage stops its own lane only, and the run fails naming it. A lane's output goes
# to build/logs/lane-<lane>.log and is printed whole when the lane ends.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
mkdir -p build/logs
: >build/logs/pytest-closing-lines.txt
TIMES=build/logs/stage-times.tsv
: >"$TIMES"
started_all=$(date +%s)

# shellcheck disable=SC2317  # (run by the EXIT trap)
summary() {
    echo
    echo "================ make test: per-stage timing ================"
    local failed=()
    while IFS=$'\t' read -r lane name result secs; do
        printf '  %-10s %-10s %-5s %6ss\n' "$name" "$lane" "$result" "$secs"
        [ "$result" = ok ] || failed+=("$name$([ "$lane" = - ] || echo " (lane $lane)")")
    done <"$TIMES"
    printf '  %-10s %-10s %-5s %6ss\n' total "" "" "$(($(date +%s) - started_all))"
    python3 - "$TIMES" build/logs/molecule-times.tsv <<'PY'
import collections, os, sys
serial, lanes = 0, collections.Counter()
for line in open(sys.argv[1]):
    lane, name, result, secs = line.rstrip("\n").split("\t")
    if lane != "-":
        lanes[lane] += int(secs)
    else:
        serial += int(secs)
if lanes:
    lane, secs = lanes.most_common(1)[0]
    print(f"critical path: {serial + secs} s = serial stages {serial} s + lane {lane} {secs} s "
          f"(lanes: {', '.join(f'{k} {v} s' for k, v in sorted(lanes.items()))})")
if os.path.exists(sys.argv[2]):
    scenarios = [line.split("\t") for line in open(sys.argv[2]) if line.strip()]
    total = sum(int(s[2]) for s in scenarios if s[2].strip().isdigit())
    print(f"molecule: {len(scenarios)} scenarios, {total} scenario-seconds")
PY
    python3 - build/logs/pytest-closing-lines.txt <<'PY'
import re, sys
totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
for line in open(sys.argv[1]):
    for count, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", line):
        totals["error" if word.startswith("error") else word] += int(count)
failed = totals["failed"] + totals["error"]
print(f"pytest total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
PY
    if [ ${#failed[@]} -gt 0 ]; then
        echo "make test FAILED: ${failed[*]}"
    fi
}
trap summary EXIT

# run_stage LANE NAME CMD: runs one stage, records its time; returns its exit status
run_stage() {
    local lane=$1 name=$2 cmd=$3 t0 rc
    echo "==== stage $name${lane:+ (lane $lane)}: $cmd"
    t0=$(date +%s)
    bash -c "$cmd"
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "${lane:--}" "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
        "$(($(date +%s) - t0))" >>"$TIMES"
    [ $rc -eq 0 ] || echo "==== stage $name FAILED (exit $rc)"
    return $rc
}

lanes=()
declare -A lane_stages=()
for spec in "$@"; do
    name=${spec%%:*}
    cmd=${spec#*:}
    if [[ $name == */* ]]; then
        lane=${name%%/*}
        [[ -v "lane_stages[$lane]" ]] || lanes+=("$lane")
        lane_stages[$lane]+="${name#*/}:$cmd"$'\n'
        continue
    fi
    run_stage "" "$name" "$cmd" || exit 1
done

run_lane() {
    local lane=$1 spec
    while IFS= read -r spec; do
        [ -n "$spec" ] || continue
        run_stage "$lane" "${spec%%:*}" "${spec#*:}" || return 1
    done <<<"${lane_stages[$lane]}"
}

declare -A lane_pid=()
for lane in "${lanes[@]}"; do
    echo "==== lane $lane started (output: build/logs/lane-$lane.log)"
    run_lane "$lane" >"build/logs/lane-$lane.log" 2>&1 &
    lane_pid[$lane]=$!
done
status=0
for lane in "${lanes[@]}"; do
    wait "${lane_pid[$lane]}" || status=1
    echo
    echo "==================== lane $lane ===================="
    cat "build/logs/lane-$lane.log"
done
exit $status
