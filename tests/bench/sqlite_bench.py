"""Benchmark of the kbxy.platform SQLite operations (not a test; pytest does not collect it).

Builds a WAL database of --size-mb (default 1024), starts a writer process that
commits one row every --interval seconds (default 0.01) and keeps it running
while it measures, in the same run:

* our one-step backup-API copy (+fsync), the full ``backup_database`` (quick and
  full verification, no compression), ``sqlite3 src ".backup dst"`` and ``cp``;
* the writer's p50/p99/max commit latency alone and during our backup;
* an ``online`` swap of a same-size database into the live one: how long the
  write lock was held (s and s per GiB), the writer's max latency during the swap,
  and the number of lost writes (rows the writer saw committed after the swap
  that are missing).

Every loop is bounded (writer count and duration, subprocess timeouts).  Prints a
table and writes JSON (--json).

    .venv/bin/python tests/bench/sqlite_bench.py --size-mb 1024 --json build/bench/sqlite.json
"""
import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, ".collections"))
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))

from ansible_collections.kbxy.platform.plugins.module_utils import sqlite_ops as so  # noqa: E402

WRITER = os.path.join(ROOT, "tests", "helpers", "sqlite_writer.py")
ROW_BYTES = 3000


def build_db(path, size_mb, user_version=1):
    rows = max(1, int(size_mb * 1024 * 1024 / 4096))  # a 3000-byte row fills a 4 KiB page
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA page_size=4096")
    c.execute("PRAGMA journal_mode=OFF")
    c.execute("PRAGMA synchronous=OFF")
    c.executescript("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, body BLOB);"
                    "CREATE TABLE writes(id INTEGER PRIMARY KEY, ts REAL, payload TEXT);")
    c.execute("BEGIN")
    c.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT ?) "
              "INSERT INTO items(name, body) SELECT 'item-' || x, randomblob(?) FROM n", (rows, ROW_BYTES))
    c.execute("CREATE INDEX items_name ON items(name)")
    c.execute("COMMIT")
    c.execute("PRAGMA user_version=%d" % user_version)
    c.execute("PRAGMA journal_mode=WAL")
    c.close()
    return rows


def pct(values, p):
    v = sorted(values)
    if not v:
        return None
    return v[min(len(v) - 1, int(len(v) * p))]


def latencies(lat_log, t0=None, t1=None):
    out = []
    with open(lat_log) as f:
        for line in f:
            start, lat = line.split()
            start, lat = float(start), float(lat)
            if (t0 is None or start + lat >= t0) and (t1 is None or start <= t1):
                out.append(lat)
    return out


def lat_stats(values):
    return {"n": len(values), "p50_ms": round(1000 * pct(values, 0.5), 2) if values else None,
            "p99_ms": round(1000 * pct(values, 0.99), 2) if values else None,
            "max_ms": round(1000 * max(values), 2) if values else None}


def timed(fn):
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def committed_ids(log):
    with open(log) as f:
        return [int(x) for x in f.read().split()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024)
    ap.add_argument("--interval", type=float, default=0.01, help="writer: seconds between commits")
    ap.add_argument("--workdir", help="directory for the databases (default: a temp dir under /var/tmp)")
    ap.add_argument("--json", default=os.path.join(ROOT, "build", "bench", "sqlite_bench.json"))
    ap.add_argument("--cli-timeout", type=float, default=180, help="give sqlite3 .backup at most this long")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    a = ap.parse_args(argv)

    work = a.workdir or tempfile.mkdtemp(prefix="sqlite-bench-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    db = os.path.join(work, "live.db")
    res = {"size_mb_requested": a.size_mb, "writer_interval_s": a.interval, "sqlite_version": sqlite3.sqlite_version,
           "python": sys.version.split()[0], "workdir": work}
    writer = None
    try:
        print("building %.0f MB WAL database in %s ..." % (a.size_mb, work), flush=True)
        t, rows = timed(lambda: build_db(db, a.size_mb))
        size = os.path.getsize(db)
        gib = size / float(1 << 30)
        res.update(rows=rows, db_bytes=size, db_gib=round(gib, 3), build_s=round(t, 1))

        log = os.path.join(work, "writer.log")
        lat_log = os.path.join(work, "writer.lat")
        stop = os.path.join(work, "writer.stop")
        writer = subprocess.Popen([sys.executable, WRITER, db, "--log", log, "--latency-log", lat_log,
                                   "--summary", log + ".json", "--count", "200000", "--duration", "1500",
                                   "--interval", str(a.interval), "--stop-file", stop])
        time.sleep(3.0)
        base = latencies(lat_log)
        res["writer_alone"] = lat_stats(base)

        # 1. our one-step copy (+ fsync): what .backup and cp compare with
        out = os.path.join(work, "ours.db")
        t0 = time.time()

        def ours_copy():
            fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            src = so.open_ro(db)
            try:
                so.copy_database(src, out)
            finally:
                src.close()
            so.fsync_file(out)
        t = timed(ours_copy)[0]
        t1 = time.time()
        res["ours_copy_s"] = round(t, 2)
        res["writer_during_ours_copy"] = lat_stats(latencies(lat_log, t0, t1))
        print("our copy: %.2f s" % t, flush=True)

        # 2. the full backup (copy, verify, fsync, rename, manifest), quick and full verification
        bk = os.path.join(work, "backups")
        for check, pragma in (("quick", "quick_check"), ("full", "integrity_check")):
            t0 = time.time()
            t, r = timed(lambda: so.backup_database(db, bk, compress="none", check=check, keep={"last": 1}))
            t1 = time.time()
            res["ours_backup_%s_s" % check] = round(t, 2)
            res["writer_during_ours_backup_%s" % check] = lat_stats(latencies(lat_log, t0, t1))
            print("our backup (%s): %.2f s" % (pragma, t), flush=True)

        # 3. sqlite3 CLI .backup (steps of 100 pages: restarts when the writer commits)
        cli = shutil.which("sqlite3")
        if cli:
            dst = os.path.join(work, "cli.db")
            t0 = time.time()
            try:
                p = subprocess.run([cli, db, ".backup '%s'" % dst], timeout=a.cli_timeout, check=False,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                t1 = time.time()
                res["sqlite3_backup_s"] = round(t1 - t0, 2)
                res["sqlite3_backup_rc"] = p.returncode
            except subprocess.TimeoutExpired:
                t1 = time.time()
                res["sqlite3_backup_s"] = None
                res["sqlite3_backup_note"] = "did not finish in %.0f s (killed)" % a.cli_timeout
            res["writer_during_sqlite3_backup"] = lat_stats(latencies(lat_log, t0, t1))
            print("sqlite3 .backup: %s" % (res.get("sqlite3_backup_s") or res.get("sqlite3_backup_note")), flush=True)
        else:
            res["sqlite3_backup_note"] = "sqlite3 CLI not installed"

        # 4. cp of the same file (not a consistent backup of a live WAL db: comparison only)
        dst = os.path.join(work, "cp.db")
        t = timed(lambda: subprocess.run(["cp", db, dst], check=True, timeout=600))[0]
        res["cp_s"] = round(t, 2)
        t2 = timed(lambda: so.fsync_file(dst))[0]
        res["cp_fsync_s"] = round(t + t2, 2)
        print("cp: %.2f s (+fsync %.2f s)" % (t, t2), flush=True)
        res["ratio_ours_copy_vs_sqlite3"] = (round(res["ours_copy_s"] / res["sqlite3_backup_s"], 2)
                                             if res.get("sqlite3_backup_s") else None)
        res["ratio_ours_copy_vs_cp"] = round(res["ours_copy_s"] / res["cp_s"], 2)
        res["ratio_ours_copy_vs_cp_fsync"] = round(res["ours_copy_s"] / res["cp_fsync_s"], 2)
        for f in ("cli.db", "cp.db"):
            if os.path.exists(os.path.join(work, f)):
                os.unlink(os.path.join(work, f))

        # 5. online swap of a same-size database (our copy, with another user_version) into the live db
        c = sqlite3.connect(out, isolation_level=None)
        c.execute("PRAGMA user_version=99")
        c.execute("DELETE FROM writes")  # so that every writer row in the live db after the swap is a new one
        c.execute("INSERT INTO writes(id, ts, payload) VALUES (0, 0, 'from-src')")
        c.close()
        n_before = len(committed_ids(log))
        window = {}
        real_online_copy = so.online_copy

        def online_copy(*args, **kwargs):
            window["start"] = time.time()
            try:
                return real_online_copy(*args, **kwargs)
            finally:
                window["end"] = time.time()
        so.online_copy = online_copy
        t0 = time.time()
        t, r = timed(lambda: so.swap_database(out, db, method="online", backup=False, check="quick"))
        t1 = time.time()
        res["swap_total_s"] = round(t, 2)
        res["swap_lock_held_s"] = r["lock_held_s"]
        res["swap_lock_s_per_gib"] = round(r["lock_held_s"] / gib, 2)
        so.online_copy = real_online_copy
        res["writer_during_swap"] = lat_stats(latencies(lat_log, t0, t1))
        res["writer_during_swap_lock"] = lat_stats(latencies(lat_log, window["start"], window["end"]))
        time.sleep(1.0)
        res["writer_after_swap_lock"] = lat_stats(latencies(lat_log, window["end"] + 0.001, time.time()))
        print("online swap: lock held %.2f s (%.2f s/GiB), total %.2f s" % (r["lock_held_s"], r["lock_held_s"] / gib, t),
              flush=True)
        # let the writer commit a few more rows, then stop it and count lost writes
        end = time.monotonic() + 10
        while len(committed_ids(log)) < n_before + 50 and time.monotonic() < end:
            time.sleep(0.05)
        open(stop, "w").close()
        writer.wait(timeout=120)
        writer = None
        ids = committed_ids(log)
        live = [x[0] for x in sqlite3.connect(db).execute("SELECT id FROM writes WHERE id > 0 ORDER BY id")]
        # rows the writer committed to the old content are replaced by design; every row after the
        # first one that landed in the new content must be there, up to the last one committed
        first_new = live[0] if live else None
        expected = [i for i in ids if first_new is not None and i >= first_new]
        res["swap_lost_writes"] = len(set(expected) - set(live)) if live else len(ids)
        res["swap_rows_after_swap"] = len(expected)
        res["writer_total_commits"] = len(ids)
        with open(log + ".json") as f:
            res["writer_errors"] = json.load(f)["errors"]
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("database", "%.2f GiB, %d rows, WAL" % (res["db_gib"], res["rows"])),
        ("our copy (backup API, 1 step, +fsync)", "%.2f s" % res["ours_copy_s"]),
        ("our backup_database, quick_check", "%.2f s" % res["ours_backup_quick_s"]),
        ("our backup_database, integrity_check", "%.2f s" % res["ours_backup_full_s"]),
        ("sqlite3 .backup", "%s" % (("%.2f s" % res["sqlite3_backup_s"]) if res.get("sqlite3_backup_s")
                                    else res.get("sqlite3_backup_note"))),
        ("cp / cp+fsync", "%.2f s / %.2f s" % (res["cp_s"], res["cp_fsync_s"])),
        ("ratio our copy : sqlite3 .backup", str(res["ratio_ours_copy_vs_sqlite3"])),
        ("ratio our copy : cp / cp+fsync", "%s / %s" % (res["ratio_ours_copy_vs_cp"], res["ratio_ours_copy_vs_cp_fsync"])),
        ("writer p99 alone", "%s ms" % res["writer_alone"]["p99_ms"]),
        ("writer p99 during our copy", "%s ms" % res["writer_during_ours_copy"]["p99_ms"]),
        ("writer p99 during our backup (full)", "%s ms" % res["writer_during_ours_backup_full"]["p99_ms"]),
        ("online swap: write lock held", "%.2f s = %.2f s/GiB" % (res["swap_lock_held_s"], res["swap_lock_s_per_gib"])),
        ("online swap: writer max latency", "%s ms (commits started after the lock: max %s ms)"
         % (res["writer_during_swap"]["max_ms"], res["writer_after_swap_lock"]["max_ms"])),
        ("online swap: lost writes", "%d of %d rows committed after the swap" % (res["swap_lost_writes"],
                                                                                 res["swap_rows_after_swap"])),
    ]
    w = max(len(row[0]) for row in rows)
    for k, v in rows:
        sys.stdout.write("%-*s  %s\n" % (w, k, v))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
        sys.stdout.write("JSON: %s\n" % a.json)
    return 0 if res["swap_lost_writes"] == 0 and not res["writer_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
