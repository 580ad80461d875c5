"""Benchmark: nginx (kbxy.platform.nginx) HTTPS keep-alive -> uvicorn, against uvicorn direct.

Not a test: run it by hand inside a host converged by the role (e.g. the molecule
nginx scenario's container), as root. All traffic goes to 127.0.0.1 and every
load run is bounded (wrk, --duration seconds, at most 30).

It measures a small JSON endpoint served by uvicorn (1 worker by default): a FastAPI
route (--app fastapi, the default: what the collection deploys) or the same bytes from a
bare ASGI callable (--app asgi: nginx's own cost per request is then about the app's, the
proxy's worst case):
  - direct:   plain HTTP keep-alive to uvicorn on 127.0.0.1:<port>
  - nginx:    HTTPS keep-alive (HTTP/1.1, TLS session set up once per
              connection) to nginx, which proxies to uvicorn over a unix socket
              or TCP with the role's upstream keepalive
alternating the two for --rounds rounds (>= 3) so that drifting machine load
hits both alike, and reports per-round requests/s and p99, the median ratio
nginx/direct, its spread (min..max) and the median p99s; plus nginx's static
file throughput for a hashed asset. With --pin, uvicorn runs on CPU 0 and nginx
and the load generator on CPU 1 (steadier numbers under hypervisor steal).

Requests/s swing with whatever else the host runs; the CPU time a request
costs hardly does. Each round also reads from /proc the CPU time nginx and
uvicorn spent per request, and reports the server CPU ratio: uvicorn's cost
of a direct request / (nginx's + uvicorn's cost of a proxied one). That is
the throughput ratio a host whose every core is busy serving would reach
(the load generator's own work left out). The 1-minute load average is
recorded with every round.

The nginx side uses the role's own rendered site: the existing
/etc/nginx/kbxy/<site>/site.conf is copied to a temporary "kbxybench" site
whose upstream is the benchmark's uvicorn and whose rate limit is removed
(100 r/m would otherwise be the figure measured); everything else (TLS
profile, http2, headers, proxy settings, upstream keepalive) is the role's.
The temporary site is validated with nginx -t, reloaded, and removed at the
end.

Needs wrk (apt install wrk) and uvicorn with the role's app server stack, uvloop
and httptools, and FastAPI (a venv: pip install uvicorn uvloop httptools fastapi; --python
/opt/kbxy-bench/bin/python). uvicorn gets its listening socket like the uvicorn
role gives it (systemd socket activation, --fd; TCP with TCP_NODELAY), with
--workers N; --pin only applies to 1 worker (N workers need every core).
--instances N is the role's horizontal scaling instead: N uvicorn instances of one
worker, each on its own socket (/run/kbxy-bench/<i>.sock, or ports 8091..), and
nginx's least_conn spreading requests over them, against one uvicorn with N workers
sharing one listening socket direct (a client of one address gets no better).

usage: nginx_bench.py [--site shop] [--upstream unix|tcp|both] [--rounds 3]
                      [--duration 5] [--connections 16] [--workers 1 | --instances 1] [--pin]
                      [--loop auto|asyncio|uvloop] [--http auto|h11|httptools]
                      [--app fastapi|asgi]
                      [--python PATH] [--json OUT]
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# The default endpoint: a FastAPI route returning a small JSON document, the kind of app this
# collection deploys (seed 000_*). --app asgi serves the same bytes from a bare ASGI callable,
# the cheapest thing uvicorn can run: the worst case for any proxy in front of it.
FASTAPI_APP = '''
from fastapi import FastAPI

app = FastAPI()


@app.get("/api/bench")
async def bench():
    return {"status": "ok", "items": [{"id": 1, "name": "slime"}, {"id": 2, "name": "dragon"}]}
'''

ASGI_APP = '''
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
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    return {"rps": rps, "requests": requests, "p99_ms": round(float(p99.group(1)) * scale, 3),
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
    """uvicorn serving the benchmark app, started the way the uvicorn role starts it.

    The listening socket is made here and handed over by --fd, as the
    role's systemd socket unit does. A TCP listener gets TCP_NODELAY, like the
    unit's NoDelay=true (accepted connections inherit it): uvicorn writes the
    response head and body separately, and without TCP_NODELAY Nagle's algorithm
    holds the body until the client's delayed ACK, ~40 ms a response. uvicorn sets
    TCP_NODELAY itself only on sockets that it made with getaddrinfo (1 worker,
    --host/--port, or uvloop); with --workers N under the asyncio loop, or --fd
    under either loop, nobody does: that is what made the old --workers 2 mode
    measure ~360 req/s direct.
    """

    def __init__(self, args, appdir, bind, workers=None, address=None):
        self.argv = [args.python, "-m", "uvicorn", "benchapp:app", "--app-dir", appdir,
                     "--workers", str(workers or args.workers), "--log-level", "warning", "--no-access-log"]
        if args.loop != "auto":
            self.argv += ["--loop", args.loop]
        if args.http != "auto":
            self.argv += ["--http", args.http]
        if args.pin:
            self.argv = ["taskset", "-c", "0"] + self.argv
        self.bind = bind
        # a unix socket path or a TCP port
        self.address = address or (SOCKET if bind == "unix" else DIRECT_PORT)
        self.proc = None
        self.sock = None

    def listen(self):
        if self.bind == "unix":
            if os.path.exists(self.address):
                os.unlink(self.address)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.address)
            os.chmod(self.address, 0o666)  # nginx's workers (www-data) connect
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(("127.0.0.1", self.address))
        sock.listen(1024)
        return sock

    def __enter__(self):
        self.sock = self.listen()
        fd = self.sock.fileno()
        self.proc = subprocess.Popen(self.argv + ["--fd", str(fd)], start_new_session=True, pass_fds=(fd,))
        probe = (["curl", "-sf", "--unix-socket", self.address, f"http://localhost{PATH}"] if self.bind == "unix"
                 else ["curl", "-sf", f"http://127.0.0.1:{self.address}{PATH}"])
        for _attempt in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}: {self.argv}")
            if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not answer: {self.argv}")

    @property
    def upstream_server(self):
        # the address as an nginx upstream "server" names it
        return f"unix:{self.address}" if self.bind == "unix" else f"127.0.0.1:{self.address}"

    def cpu_seconds(self):
        return uvicorn_cpu_seconds([self])

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=15)
        self.sock.close()
        if self.bind == "unix" and os.path.exists(self.address):
            os.unlink(self.address)


def install_site(source_site, servers):
    conf = open(f"/etc/nginx/kbxy/{source_site}/site.conf", encoding="utf-8").read()
    conf = conf.replace(f"kbxy_{source_site}", f"kbxy_{BENCH_SITE}")
    upstream = re.search(r"upstream kbxy_%s \{.*?\n\}" % BENCH_SITE, conf, re.S).group(0)
    lines = "".join(f"    server {server};\n" for server in servers)
    new_upstream = re.sub(r"^    server .*;\n", "", upstream, flags=re.M).replace("{\n", "{\n" + lines, 1)
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


def nginx_pids():
    # no procps in a minimal host: read /proc
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as comm:
                if comm.read().strip() == "nginx":
                    pids.append(pid)
        except OSError:
            continue
    return pids


def cpu_seconds(match):
    """CPU time (user + system) used so far by the processes for which match(comm, pgrp) holds."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
                comm, fields = stat.read().split(" (", 1)[1].rsplit(")", 1)
        except OSError:
            continue
        fields = fields.split()
        if match(comm, int(fields[2])):
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def uvicorn_cpu_seconds(instances):
    """CPU time used so far by these uvicorns: each supervisor and its workers are one
    process group (start_new_session), so one pass over /proc serves them all."""
    groups = {item.proc.pid for item in instances}
    return cpu_seconds(lambda comm, pgrp: pgrp in groups)


def nginx_cpu_seconds():
    """CPU time (user + system) used so far by every nginx process.

    nginx's CPU time per proxied request is the load-independent part of the
    comparison: requests/s swing with what else runs on a shared host, the
    work nginx does for one request hardly does.
    """
    return cpu_seconds(lambda comm, pgrp: comm == "nginx")


def pin_nginx(cpu):
    for pid in nginx_pids():
        subprocess.run(["taskset", "-p", "-c", str(cpu), pid], capture_output=True, check=False)


def bench_upstream(args, appdir, bind):
    nginx_url = f"https://127.0.0.1{PATH}"
    direct_url = f"http://127.0.0.1:{DIRECT_PORT}{PATH}"
    if args.instances > 1:
        # the role's horizontal scaling: N instances of 1 worker, each on its own socket, nginx
        # balancing requests across them (least_conn); direct: one uvicorn with N workers sharing
        # one listening socket, the most a single address gives a client
        direct = Uvicorn(args, appdir, "tcp", workers=args.instances)
        proxied = [Uvicorn(args, appdir, bind, workers=1,
                           address=f"{SOCKET_DIR}/{number}.sock" if bind == "unix" else DIRECT_PORT + number)
                   for number in range(1, args.instances + 1)]
    else:
        direct = Uvicorn(args, appdir, "tcp")
        proxied = [Uvicorn(args, appdir, "unix")] if bind == "unix" else []
    install_site(args.site, [item.upstream_server for item in (proxied or [direct])])
    if args.pin:
        pin_nginx(1)
    load_cpu = 1 if args.pin else None
    rounds = []
    with contextlib.ExitStack() as running:
        running.enter_context(direct)
        for instance in proxied:
            running.enter_context(instance)
        proxied = proxied or [direct]
        # the request really reaches the benchmark's uvicorn through nginx
        body = run(["curl", "-sk", "--resolve", f"{BENCH_NAME}:443:127.0.0.1", f"https://{BENCH_NAME}{PATH}"]).stdout
        if '"slime"' not in body:
            raise RuntimeError(f"nginx did not proxy to the benchmark app: {body[:200]!r}")
        # warm-up of both sides: TLS sessions, upstream keepalive pool, every uvicorn worker
        # (the probe above answers as soon as the first of several workers is up)
        warm = argparse.Namespace(connections=args.connections, duration=2)
        wrk(nginx_url, warm, load_cpu, BENCH_NAME)
        wrk(direct_url, warm, load_cpu)
        for number in range(args.rounds):
            order = ["nginx", "direct"] if number % 2 == 0 else ["direct", "nginx"]
            result = {}
            for side in order:
                if side == "nginx":
                    cpu_before = nginx_cpu_seconds(), uvicorn_cpu_seconds(proxied)
                    result["nginx"] = wrk(nginx_url, args, load_cpu, BENCH_NAME)
                    requests = max(result["nginx"]["requests"], 1)
                    result["nginx"]["nginx_cpu_us_per_request"] = round((nginx_cpu_seconds() - cpu_before[0]) * 1e6 / requests, 1)
                    result["nginx"]["uvicorn_cpu_us_per_request"] = round((uvicorn_cpu_seconds(proxied) - cpu_before[1]) * 1e6 / requests, 1)
                else:
                    cpu_before = direct.cpu_seconds()
                    result["direct"] = wrk(direct_url, args, load_cpu)
                    result["direct"]["uvicorn_cpu_us_per_request"] = round(
                        (direct.cpu_seconds() - cpu_before) * 1e6 / max(result["direct"]["requests"], 1), 1)
            result["ratio"] = round(result["nginx"]["rps"] / result["direct"]["rps"], 3)
            # server CPU a request costs, direct / through nginx: the throughput ratio a host whose
            # cores are all busy serving would see (wrk's own work left out), steadier than req/s
            result["server_cpu_ratio"] = round(result["direct"]["uvicorn_cpu_us_per_request"] / max(
                result["nginx"]["uvicorn_cpu_us_per_request"] + result["nginx"]["nginx_cpu_us_per_request"], 0.1), 3)
            with open("/proc/loadavg", encoding="utf-8") as loadavg:
                result["loadavg_1m"] = float(loadavg.read().split()[0])  # the host's, shared with other work
            rounds.append(result)
            print(f"  {bind:4} round {number + 1}: nginx {result['nginx']['rps']:8.0f} req/s p99 "
                  f"{result['nginx']['p99_ms']:6.2f} ms {result['nginx']['nginx_cpu_us_per_request']:5.1f} us cpu | direct "
                  f"{result['direct']['rps']:8.0f} req/s p99 {result['direct']['p99_ms']:6.2f} ms | ratio {result['ratio']:.3f} "
                  f"| cpu ratio {result['server_cpu_ratio']:.3f} | load {result['loadavg_1m']}", flush=True)
    ratios = [r["ratio"] for r in rounds]
    return {
        "upstream": bind,
        "instances": args.instances,
        "rounds": rounds,
        "median_ratio": round(statistics.median(ratios), 3),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "median_nginx_rps": round(statistics.median(r["nginx"]["rps"] for r in rounds)),
        "median_direct_rps": round(statistics.median(r["direct"]["rps"] for r in rounds)),
        "median_nginx_p99_ms": statistics.median(r["nginx"]["p99_ms"] for r in rounds),
        "median_direct_p99_ms": statistics.median(r["direct"]["p99_ms"] for r in rounds),
        "median_nginx_cpu_us_per_request": statistics.median(r["nginx"]["nginx_cpu_us_per_request"] for r in rounds),
        "median_uvicorn_cpu_us_per_request_proxied": statistics.median(r["nginx"]["uvicorn_cpu_us_per_request"] for r in rounds),
        "median_uvicorn_cpu_us_per_request_direct": statistics.median(r["direct"]["uvicorn_cpu_us_per_request"] for r in rounds),
        "median_server_cpu_ratio": statistics.median(r["server_cpu_ratio"] for r in rounds),
        "errors": sum(r["nginx"]["non_2xx"] + r["direct"]["non_2xx"] for r in rounds),
    }


def static_throughput(args):
    # the role's own site, a hashed asset (no rate limit on static files)
    asset = args.asset
    load_cpu = 1 if args.pin else None
    cpu_before = nginx_cpu_seconds()
    result = wrk(f"https://127.0.0.1{asset}", args, load_cpu, args.site_name)
    result["nginx_cpu_us_per_request"] = round((nginx_cpu_seconds() - cpu_before) * 1e6 / max(result["requests"], 1), 1)
    return {"asset": asset, **result}


def server_stack(args):
    # what uvicorn runs on: versions of uvicorn and of uvloop/httptools when installed
    code = ("import importlib.metadata as m\n"
            "for name in ('uvicorn', 'uvloop', 'httptools', 'h11'):\n"
            "    try:\n"
            "        print(name, m.version(name))\n"
            "    except m.PackageNotFoundError:\n"
            "        pass\n")
    versions = dict(line.split() for line in run([args.python, "-c", code]).stdout.splitlines())
    versions["loop"] = args.loop
    versions["http"] = args.http
    versions["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
    return versions


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--site", default="shop", help="role-rendered site to copy the settings from")
    parser.add_argument("--site-name", default="shop.kbxy.test", help="its host name (static check)")
    parser.add_argument("--asset", default="/assets/index-3f9a1c2b.js")
    parser.add_argument("--upstream", choices=["unix", "tcp", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (one instance, one socket)")
    parser.add_argument("--instances", type=int, default=1,
                        help="N > 1: N uvicorn instances of 1 worker, each on its own socket, behind nginx's least_conn "
                             "(the role's horizontal scaling), against one uvicorn with N workers direct")
    parser.add_argument("--pin", action="store_true",
                        help="uvicorn on CPU 0, nginx and wrk on CPU 1 (1 worker only: ignored with --workers > 1)")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                        help="uvicorn's event loop (auto: uvloop when installed, as the role's app has it)")
    parser.add_argument("--http", choices=["auto", "h11", "httptools"], default="auto",
                        help="uvicorn's HTTP parser (auto: httptools when installed, as the role's app has it)")
    parser.add_argument("--app", choices=["fastapi", "asgi"], default="fastapi",
                        help="the endpoint: a FastAPI route (default) or a bare ASGI callable (the proxy's worst case)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.rounds = min(max(args.rounds, 3), 15)
    args.duration = min(max(args.duration, 1), 30)
    if args.instances > 1:
        args.workers = 1
    if args.pin and (args.workers > 1 or args.instances > 1):
        print("--pin ignored: several uvicorn workers need every core", file=sys.stderr)
        args.pin = False
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    appdir = tempfile.mkdtemp(prefix="kbxy-bench.")
    with open(f"{appdir}/benchapp.py", "w", encoding="utf-8") as out:
        out.write(FASTAPI_APP if args.app == "fastapi" else ASGI_APP)
    os.makedirs(SOCKET_DIR, exist_ok=True)
    report = {"app": args.app, "workers": args.workers, "instances": args.instances, "connections": args.connections, "duration_s": args.duration,
              "pinned": args.pin, "cpus": os.cpu_count(), "stack": server_stack(args), "upstreams": []}
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
              f"direct {item['median_direct_rps']} req/s p99 {item['median_direct_p99_ms']} ms; "
              f"nginx cpu {item['median_nginx_cpu_us_per_request']} us/request; uvicorn cpu "
              f"{item['median_uvicorn_cpu_us_per_request_proxied']} (proxied) / {item['median_uvicorn_cpu_us_per_request_direct']} "
              f"(direct) us/request; server cpu ratio {item['median_server_cpu_ratio']}; errors {item['errors']}")
    static = report["static"]
    print(f"  static {static['asset']}: {static['rps']:.0f} req/s p99 {static['p99_ms']} ms; "
          f"nginx cpu {static['nginx_cpu_us_per_request']} us/request")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
