"""Compare two sets of test-id lists written by tests/scripts/collect-test-ids.sh.

usage: python3 tests/scripts/compare-test-ids.py BEFORE_DIR AFTER_DIR

A restructured suite moves tests between files and scenarios and renames the hosts
they run on, so a plain diff shows every moved test as one line gone and one line new.
This pairs them up, best effort, by test function name (exact parameters first, then
the parameters with the testinfra host swapped, then the name alone) and leaves the
rest as "dropped" (for a human to review) or "new". A report: exits 0 unless an input
directory is missing.
"""
import pathlib
import sys


def load(d):
    suites = {p.stem: set(p.read_text().splitlines()) - {""} for p in sorted(d.glob("*.txt"))}
    skipped = (d / "SKIPPED").read_text().splitlines() if (d / "SKIPPED").exists() else []
    return suites, skipped


def split(test_id):
    """(file, function name, parameters) of a pytest id."""
    path, rest = test_id.split("::", 1) if "::" in test_id else (test_id, "")
    name, params = rest.split("[", 1) if "[" in rest else (rest, "")
    return path, name.split("::")[-1], params.rstrip("]")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    for a in sys.argv[1:]:
        if not pathlib.Path(a).is_dir():
            sys.exit(f"compare-test-ids: no directory {a}")
    (before, skipped_b), (after, skipped_a) = (load(pathlib.Path(a)) for a in sys.argv[1:])
    for label, skipped in (("BEFORE", skipped_b), ("AFTER", skipped_a)):
        for line in skipped:
            print(f"WARNING: not collected in {label}: {line}")

    print(f"{'suite':<26}{'before':>7}{'after':>7}{'only before':>13}{'only after':>12}")
    for s in sorted(before.keys() | after.keys()):
        b, a = before.get(s), after.get(s)
        note = "" if b is not None and a is not None else f"   (no list in {'BEFORE' if b is None else 'AFTER'})"
        b, a = b or set(), a or set()
        print(f"{s:<26}{len(b) if s in before else '-':>7}{len(a) if s in after else '-':>7}"
              f"{len(b - a):>13}{len(a - b):>12}{note}")
    all_b, all_a = set().union(*before.values()), set().union(*after.values())
    gone, new = sorted(all_b - all_a), sorted(all_a - all_b)
    print(f"{'all':<26}{len(all_b):>7}{len(all_a):>7}{len(gone):>13}{len(new):>12}")

    # testinfra's host ids: "ansible://HOST", alone or followed by "-<other parameters>".
    # A host is such a parameter that does not extend another one; the longest first.
    tagged = {p[len("ansible://"):] for p in (split(i)[2] for i in all_b | all_a) if p.startswith("ansible://")}
    hosts = sorted((h for h in tagged if not any(h.startswith(o + "-") for o in tagged)), key=len, reverse=True)

    def hostless(params):
        for h in hosts:
            if params.startswith(f"ansible://{h}"):
                return "ansible://HOST" + params[len(f"ansible://{h}"):]
        return params

    moved, unmatched = [], set(new)
    for how, key in (("same parameters", lambda i: split(i)[1:]),
                     ("other host", lambda i: (split(i)[1], hostless(split(i)[2]))),
                     ("function name only", lambda i: split(i)[1])):
        for old in list(gone):
            # among candidates, one in a file of the same name first (test_x.py moved to stack/)
            cands = sorted((n for n in unmatched if key(n) == key(old)),
                           key=lambda n: (pathlib.Path(split(n)[0]).name != pathlib.Path(split(old)[0]).name, n))
            if cands:
                moved.append((old, cands[0], how))
                unmatched.discard(cands[0])
                gone.remove(old)

    print(f"\nmoved ({len(moved)}): matched by function name")
    for old, nw, how in moved:
        print(f"  {old}\n    -> {nw}   [{how}]")
    print(f"\ndropped ({len(gone)}): in BEFORE, no match in AFTER -- REVIEW")
    for i in gone:
        print(f"  DROPPED {i}")
    print(f"\nnew ({len(unmatched)}): in AFTER only")
    for i in sorted(unmatched):
        print(f"  NEW {i}")


if __name__ == "__main__":
    main()
