"""Benchmark: nginx (kbxy.platform.nginx) HTTPS keep-alive -> uvicorn, against uvicorn direct.

Not a test: run it by hand inside a host converged by the role (e.g. the molecule
nginx scenario's container), as root. All traffic goes to 127.0.0.1 and every
load run is bounded (wrk, --duration seconds, at most 30).

It measures a small JSON endpoint served by uvicorn (1 worker by default):
  - direct:   plain HTTP keep-alive to uvicorn on 127.0.0.1:<port>
  - nginx:    HTTPS keep-alive (HTTP/1.1, TLS session set up once per
              connection) to nginx, which proxies to uvicorn over a unix socket
              or TCP with the role's upstream keepalive
alternating the two for --rounds rounds (>= 3) so that drifting machine load
hits both alike, and reports per-round requests/s and p99, the median ratio
nginx/direct, its spread (min..max) and the median p99s; plus nginx's static
file throughput for a hashed asset. With --pin, uvicorn runs on CPU 0 and nginx
and the load generator on CPU 1 (steadier numbers under hypervisor steal).

The nginx side uses the role's own rendered site: the existing
/etc/nginx/kbxy/<site>/site.conf is copied to a temporary "kbxybench" site
whose upstream is the benchmark's uvicorn and whose rate limit is removed
(100 r/m would otherwise be the figure measured); everything else (TLS
profile, http2, headers, proxy settings, upstream keepalive) is the role's.
The temporary site is validated with nginx -t, reloaded, and removed at the
end.

Needs wrk (apt install wrk) and uvicorn (a venv: --python /opt/kbxy-bench/bin/python).

usage: nginx_bench.py [--site shop] [--upstream unix|tcp|both] [--rounds 3]
                      [--duration 5] [--connections 16] [--workers 1] [--pin]
                      [--python PATH] [--json OUT]
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

APP = '''
BODY = b'{"status":"ok","items":[{"id":1,"name":"slime"},{"id":2,"name":"dragon"}]}'


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
'''

BENCH_SITE = "kbxybench"
BENCH_NAME = "bench.kbxy.test"
SOCKET_DIR = "/run/kbxy-bench"
SOCKET = f"{SOCKET_DIR}/uvicorn.sock"
DIRECT_PORT = 8090
PATH = "/api/bench"


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kwargs)


def parse_wrk(output):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*", output)
    return {"rps": rps, "p99_ms": round(float(p99.group(1)) * scale, 3),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(0) if socket_errors else ""}


def wrk(url, args, cpu, host_header=None):
    argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", url]
    if host_header:
        argv[1:1] = ["-H", f"Host: {host_header}"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    return parse_wrk(run(argv, timeout=args.duration + 30).stdout)


class Uvicorn:
    def __init__(self, args, appdir, bind):
        self.argv = [args.python, "-m", "uvicorn", "benchapp:app", "--app-dir", appdir,
                     "--workers", str(args.workers), "--log-level", "warning", "--no-access-log"]
        self.argv += ["--uds", SOCKET] if bind == "unix" else ["--host", "127.0.0.1", "--port", str(DIRECT_PORT)]
        if args.pin:
            self.argv = ["taskset", "-c", "0"] + self.argv
        self.bind = bind
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv, start_new_session=True)
        probe = (["curl", "-sf", "--unix-socket", SOCKET, f"http://localhost{PATH}"] if self.bind == "unix"
                 else ["curl", "-sf", f"http://127.0.0.1:{DIRECT_PORT}{PATH}"])
        for _attempt in range(100):
            if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not answer: {self.argv}")

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=15)


def install_site(source_site, bind):
    conf = open(f"/etc/nginx/kbxy/{source_site}/site.conf", encoding="utf-8").read()
    conf = conf.replace(f"kbxy_{source_site}", f"kbxy_{BENCH_SITE}")
    server = f"unix:{SOCKET}" if bind == "unix" else f"127.0.0.1:{DIRECT_PORT}"
    upstream = re.search(r"upstream kbxy_%s \{.*?\n\}" % BENCH_SITE, conf, re.S).group(0)
    new_upstream = re.sub(r"^    server .*;\n", "", upstream, flags=re.M).replace("{\n", "{\n    server %s;\n" % server, 1)
    conf = conf.replace(upstream, new_upstream)
    conf = re.sub(r"^\s*limit_req .*\n", "", conf, flags=re.M)
    conf = re.sub(r"server_name [^;]*;", f"server_name {BENCH_NAME};", conf)
    os.makedirs(f"/etc/nginx/kbxy/{BENCH_SITE}", exist_ok=True)
    with open(f"/etc/nginx/kbxy/{BENCH_SITE}/site.conf", "w", encoding="utf-8") as out:
        out.write(conf)
    reload_nginx()


def remove_site():
    if os.path.isdir(f"/etc/nginx/kbxy/{BENCH_SITE}"):
        shutil.rmtree(f"/etc/nginx/kbxy/{BENCH_SITE}")
        reload_nginx()


def reload_nginx():
    run(["nginx", "-t", "-q"])
    run(["systemctl", "reload", "nginx"])
    time.sleep(1.5)  # old workers finish


def pin_nginx(cpu):
    # no procps in a minimal host: read /proc
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as comm:
                if comm.read().strip() != "nginx":
                    continue
        except OSError:
            continue
        subprocess.run(["taskset", "-p", "-c", str(cpu), pid], capture_output=True, check=False)


def bench_upstream(args, appdir, bind):
    nginx_url = f"https://127.0.0.1{PATH}"
    direct_url = f"http://127.0.0.1:{DIRECT_PORT}{PATH}"
    install_site(args.site, bind)
    if args.pin:
        pin_nginx(1)
    load_cpu = 1 if args.pin else None
    rounds = []
    unix_upstream = Uvicorn(args, appdir, "unix") if bind == "unix" else _nullcontext()
    with Uvicorn(args, appdir, "tcp"), unix_upstream:
        # the request really reaches the benchmark's uvicorn through nginx
        body = run(["curl", "-sk", "--resolve", f"{BENCH_NAME}:443:127.0.0.1", f"https://{BENCH_NAME}{PATH}"]).stdout
        if '"slime"' not in body:
            raise RuntimeError(f"nginx did not proxy to the benchmark app: {body[:200]!r}")
        # warm-up: TLS sessions, upstream keepalive pool, uvicorn
        wrk(nginx_url, argparse.Namespace(connections=args.connections, duration=1), load_cpu, BENCH_NAME)
        for number in range(args.rounds):
            order = ["nginx", "direct"] if number % 2 == 0 else ["direct", "nginx"]
            result = {}
            for side in order:
                if side == "nginx":
                    result["nginx"] = wrk(nginx_url, args, load_cpu, BENCH_NAME)
                else:
                    result["direct"] = wrk(direct_url, args, load_cpu)
            result["ratio"] = round(result["nginx"]["rps"] / result["direct"]["rps"], 3)
            rounds.append(result)
            print(f"  {bind:4} round {number + 1}: nginx {result['nginx']['rps']:8.0f} req/s p99 "
                  f"{result['nginx']['p99_ms']:6.2f} ms | direct {result['direct']['rps']:8.0f} req/s p99 "
                  f"{result['direct']['p99_ms']:6.2f} ms | ratio {result['ratio']:.3f}", flush=True)
    ratios = [r["ratio"] for r in rounds]
    return {
        "upstream": bind,
        "rounds": rounds,
        "median_ratio": round(statistics.median(ratios), 3),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "median_nginx_rps": round(statistics.median(r["nginx"]["rps"] for r in rounds)),
        "median_direct_rps": round(statistics.median(r["direct"]["rps"] for r in rounds)),
        "median_nginx_p99_ms": statistics.median(r["nginx"]["p99_ms"] for r in rounds),
        "median_direct_p99_ms": statistics.median(r["direct"]["p99_ms"] for r in rounds),
        "errors": sum(r["nginx"]["non_2xx"] + r["direct"]["non_2xx"] for r in rounds),
    }


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def static_throughput(args):
    # the role's own site, a hashed asset (no rate limit on static files)
    asset = args.asset
    load_cpu = 1 if args.pin else None
    result = wrk(f"https://127.0.0.1{asset}", args, load_cpu, args.site_name)
    return {"asset": asset, **result}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--site", default="shop", help="role-rendered site to copy the settings from")
    parser.add_argument("--site-name", default="shop.kbxy.test", help="its host name (static check)")
    parser.add_argument("--asset", default="/assets/index-3f9a1c2b.js")
    parser.add_argument("--upstream", choices=["unix", "tcp", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.rounds = min(max(args.rounds, 3), 15)
    args.duration = min(max(args.duration, 1), 30)
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    appdir = tempfile.mkdtemp(prefix="kbxy-bench.")
    with open(f"{appdir}/benchapp.py", "w", encoding="utf-8") as out:
        out.write(APP)
    os.makedirs(SOCKET_DIR, exist_ok=True)
    report = {"workers": args.workers, "connections": args.connections, "duration_s": args.duration,
              "pinned": args.pin, "cpus": os.cpu_count(), "upstreams": []}
    try:
        for bind in (["unix", "tcp"] if args.upstream == "both" else [args.upstream]):
            report["upstreams"].append(bench_upstream(args, appdir, bind))
        report["static"] = static_throughput(args)
    finally:
        remove_site()
        shutil.rmtree(appdir, ignore_errors=True)
    print("\nsummary (ratio = nginx HTTPS / uvicorn direct, median of rounds):")
    for item in report["upstreams"]:
        print(f"  {item['upstream']:4}: ratio {item['median_ratio']:.3f} (min {item['ratio_min']:.3f}, max "
              f"{item['ratio_max']:.3f}); nginx {item['median_nginx_rps']} req/s p99 {item['median_nginx_p99_ms']} ms; "
              f"direct {item['median_direct_rps']} req/s p99 {item['median_direct_p99_ms']} ms; errors {item['errors']}")
    static = report["static"]
    print(f"  static {static['asset']}: {static['rps']:.0f} req/s p99 {static['p99_ms']} ms")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
