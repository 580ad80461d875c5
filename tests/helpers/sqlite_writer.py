"""Bounded test writer: commits one row into table ``writes`` every --interval seconds.

After each commit it appends the id to --log (flushed), so the test knows
exactly which rows the writer saw committed.  Stops after --count rows,
--duration seconds, or when --stop-file appears.  At the end it writes a JSON
summary (commit latencies, errors) to --summary.
"""
import argparse
import json
import os
import sqlite3
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--log", required=True)
    ap.add_argument("--summary")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--busy-timeout", type=float, default=60.0)
    ap.add_argument("--stop-file")
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--latency-log", help="append '<unix start time> <latency s>' per commit")
    a = ap.parse_args(argv)
    conn = sqlite3.connect(a.db, timeout=a.busy_timeout, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    start = time.monotonic()
    latencies = []
    errors = []
    payload = "w" * a.payload
    next_id = 1
    lat_log = open(a.latency_log, "a") if a.latency_log else None
    with open(a.log, "a") as log:
        while next_id <= a.count and time.monotonic() - start < a.duration:
            if a.stop_file and os.path.exists(a.stop_file):
                break
            t = time.monotonic()
            wall = time.time()
            try:
                conn.execute("INSERT INTO writes(id, ts, payload) VALUES (?, ?, ?)", (next_id, time.time(), payload))
            except sqlite3.Error as e:
                errors.append("%d: %s" % (next_id, e))
                if len(errors) > 20:
                    break
                time.sleep(a.interval)
                continue
            latencies.append(time.monotonic() - t)
            if lat_log:
                lat_log.write("%.6f %.6f\n" % (wall, latencies[-1]))
                lat_log.flush()
            log.write("%d\n" % next_id)
            log.flush()
            next_id += 1
            time.sleep(a.interval)
    conn.close()
    if lat_log:
        lat_log.close()
    lat = sorted(latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(len(lat) * p))] if lat else None

    summary = {"committed": next_id - 1, "errors": errors, "p50_s": pct(0.50), "p99_s": pct(0.99),
               "max_s": lat[-1] if lat else None, "elapsed_s": time.monotonic() - start}
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump(summary, f)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
