"""Benchmark of the kbxy.platform.uvicorn demo deployment, inside a test container.

Needs the hosts of the molecule scenario `uvicorn` (molecule converge -s uvicorn) and
MOLECULE_INVENTORY_FILE / ANSIBLE_CONFIG as molecule sets them (or pass --inventory).

1. For 1, 2 and 4 uvicorn workers: redeploy with uvicorn_workers=N (health-gated),
   then drive GET /api/items on instance 1's unix socket from inside the container
   with a bounded multi-process client (--seconds, --max-requests) and report req/s.
2. The wall time of a health-gated deploy of a new release to 2 instances.

Traffic stays on the container's loopback/unix socket; every loop is bounded.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "molecule" / "uvicorn" / "deploy.yml"

LOAD = r'''
import http.client, json, multiprocessing as mp, socket, sys, time
sock, seconds, max_requests, procs, conns = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def worker(q):
    import threading
    counts = [0, 0]
    stop = time.monotonic() + seconds
    def loop():
        while time.monotonic() < stop and counts[0] < max_requests // (procs * conns):
            try:
                c = http.client.HTTPConnection("localhost", timeout=10)
                s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sock); c.sock = s
                for _ in range(50):  # keep-alive
                    c.request("GET", "/api/items?limit=10"); r = c.getresponse(); r.read()
                    counts[0 if r.status == 200 else 1] += 1
                    if time.monotonic() >= stop: break
                c.close()
            except OSError:
                counts[1] += 1
    ts = [threading.Thread(target=loop) for _ in range(conns)]
    [t.start() for t in ts]; [t.join() for t in ts]
    q.put(counts)
q = mp.Queue(); started = time.monotonic()
ps = [mp.Process(target=worker, args=(q,)) for _ in range(procs)]
[p.start() for p in ps]; res = [q.get() for _ in ps]; [p.join() for p in ps]
elapsed = time.monotonic() - started
ok = sum(r[0] for r in res); err = sum(r[1] for r in res)
print(json.dumps({"ok": ok, "errors": err, "seconds": round(elapsed, 2), "rps": round(ok / elapsed, 1)}))
'''


def playbook(inventory, limit, **extra_vars):
    # JSON extra vars keep their types (the role also casts key=value strings such as "-e uvicorn_workers=4")
    args = ["ansible-playbook", "-i", inventory, "-l", limit, str(DEPLOY), "-e", json.dumps(extra_vars)]
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-2000:])
    return time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", default=os.environ.get("MOLECULE_INVENTORY_FILE"))
    parser.add_argument("--host", default="kbxy-uvicorn-debian12")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--max-requests", type=int, default=200000)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--client-conns", type=int, default=8)
    args = parser.parse_args()
    if not args.inventory:
        sys.exit("set MOLECULE_INVENTORY_FILE or --inventory")
    results = {"host": args.host, "rps": {}}
    for workers in [int(w) for w in args.workers.split(",")]:
        playbook(args.inventory, args.host, uvicorn_workers=workers)
        out = subprocess.run(
            ["docker", "exec", args.host, "python3", "-c", LOAD, "/run/kbxy-demo/1.sock", str(args.seconds),
             str(args.max_requests), str(args.client_procs), str(args.client_conns)],
            capture_output=True, text=True, timeout=args.seconds + 60, check=True).stdout
        results["rps"][workers] = json.loads(out)
        print(f"workers={workers}: {results['rps'][workers]}", flush=True)
    version = f"9.{int(time.time())}"
    results["deploy_seconds_2_instances"] = round(
        playbook(args.inventory, args.host, uvicorn_app_version=version, uvicorn_instances=2), 1)
    print(f"health-gated deploy of release {version} to 2 instances: {results['deploy_seconds_2_instances']} s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
