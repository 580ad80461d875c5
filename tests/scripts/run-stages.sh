#!/usr/bin/env bash
# Run named stages in order, stop at the first failure, and always print a per-stage
# timing summary plus one closing line that adds up every pytest run.
#
# usage: tests/scripts/run-stages.sh "name:command" ...
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
mkdir -p build/logs
: >build/logs/pytest-closing-lines.txt
names=() secs=() results=()
started_all=$(date +%s)

summary() {
    echo
    echo "================ make test: per-stage timing ================"
    for i in "${!names[@]}"; do
        printf '  %-10s %-5s %6ss\n' "${names[$i]}" "${results[$i]}" "${secs[$i]}"
    done
    printf '  %-10s %-5s %6ss\n' total "" "$(($(date +%s) - started_all))"
    python3 - build/logs/pytest-closing-lines.txt <<'PY'
import re, sys
totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
for line in open(sys.argv[1]):
    for count, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", line):
        totals["error" if word.startswith("error") else word] += int(count)
failed = totals["failed"] + totals["error"]
print(f"pytest total: {totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
PY
}
trap summary EXIT

for spec in "$@"; do
    name=${spec%%:*}
    cmd=${spec#*:}
    echo "==== stage $name: $cmd"
    t0=$(date +%s)
    bash -c "$cmd"
    rc=$?
    names+=("$name") secs+=($(($(date +%s) - t0)))
    if [ $rc -ne 0 ]; then
        results+=(FAIL)
        echo "==== stage $name FAILED (exit $rc)"
        exit $rc
    fi
    results+=(ok)
done
