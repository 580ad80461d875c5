"""Bounded write load for the sqlite_backup scenario: POST /api/items to the demo app's
instances (unix sockets, round robin) in a loop, and count every answer.

Runs inside a test host (systemd-run, see the tests). Stops after --max-requests
requests, --max-seconds seconds, or when --stop-file exists. While it runs it rewrites
--progress (JSON: total, ok) every 10 requests; at the end it writes --out (JSON: total,
ok, failure_count, failures, first_id, last_id, seconds). Each write is one row named
"<--tag>-<n>"; a write counts as ok only when the app answered 201 with the row.
"""
import argparse
import http.client
import json
import os
import socket
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def write_json(path, data):
    """temp file, fsync, rename: a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", action="append", required=True, help="unix socket of an instance (repeatable)")
    parser.add_argument("--tag", required=True, help="rows are named <tag>-<n>")
    parser.add_argument("--progress", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--max-requests", type=int, default=20000)
    parser.add_argument("--max-seconds", type=float, default=240)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()

    total, ok, failures, ids = 0, 0, [], []
    started = time.monotonic()
    while total < args.max_requests and time.monotonic() - started < args.max_seconds:
        if os.path.exists(args.stop_file):
            break
        sock = args.socket[total % len(args.socket)]
        total += 1
        name = "%s-%d" % (args.tag, total)
        try:
            conn = UnixConnection(sock, args.timeout)
            conn.request("POST", "/api/items", body=json.dumps({"name": name, "description": "load " * 40}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            row = json.loads(body) if resp.status == 201 else {}
            if resp.status == 201 and row.get("name") == name:
                ok += 1
                ids.append(row["id"])
            else:
                failures.append("%s: HTTP %d %s" % (sock, resp.status, body[:200]))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append("%s: %s: %s" % (sock, type(exc).__name__, exc))
        if total % 10 == 0:
            write_json(args.progress, {"total": total, "ok": ok})
        if args.interval:
            time.sleep(args.interval)
    write_json(args.out, {"total": total, "ok": ok, "failure_count": len(failures), "failures": failures[:20],
                          "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None,
                          "seconds": round(time.monotonic() - started, 2)})


if __name__ == "__main__":
    main()
