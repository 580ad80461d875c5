"""Bounded HTTP client for the uvicorn scenario: GET a path in a loop, over unix
sockets or TCP on loopback, and report failures and the versions seen as JSON.

Stops after --max-requests requests, --max-seconds seconds, or when --stop-file exists.
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
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", action="append", default=[], help="unix socket path (repeatable)")
    parser.add_argument("--tcp", action="append", default=[], help="127.0.0.1:port (repeatable)")
    parser.add_argument("--path", default="/api/version")
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--stop-file", default="")
    parser.add_argument("--ready-file", default="")
    args = parser.parse_args()
    targets = [("unix", s) for s in args.socket] + [("tcp", t) for t in args.tcp]
    if not targets:
        parser.error("give --socket or --tcp")

    total, ok, failures, versions = 0, 0, [], []
    started = time.monotonic()
    if args.ready_file:
        open(args.ready_file, "w").close()
    while total < args.max_requests and time.monotonic() - started < args.max_seconds:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        kind, target = targets[total % len(targets)]
        total += 1
        try:
            if kind == "unix":
                conn = UnixConnection(target, args.timeout)
            else:
                host, port = target.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
            conn.request("GET", args.path)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status != 200:
                failures.append(f"{target}: HTTP {resp.status}")
            else:
                ok += 1
                try:
                    version = json.loads(body).get("version")
                except ValueError:
                    version = None
                if version is not None and (not versions or versions[-1] != version):
                    versions.append(version)
        except (OSError, http.client.HTTPException) as exc:
            failures.append(f"{target}: {type(exc).__name__}: {exc}")
        if args.interval:
            time.sleep(args.interval)
    print(json.dumps({"total": total, "ok": ok, "failures": failures[:50], "failure_count": len(failures),
                      "versions": versions, "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    main()
