"""Idle upstream keep-alive across uvicorn's 5 s boundary must never give a 502.

nginx keeps idle upstream connections for keepalive_timeout (the role: 4 s);
the stand-in upstream, like uvicorn (--timeout-keep-alive 5), closes an idle
connection after 5 s. If nginx kept them longer, a request sent as the
upstream closes its end fails with a 502 that nginx does not retry for POST.

Several clients (half GET, half POST, each on its own short connection to
nginx) send a request, stay quiet for each of --gaps seconds and send again,
so the upstream connections nginx caches sit idle for less than, about, and
more than 5 s. The stand-in reports which upstream connection answered, so the
summary also shows that nginx really reused cached connections, and how long
the longest-idle one it reused had been quiet (it must be below 5 s). Clients connect from 127.0.0.2, a source address of their own, so the
site's per-IP rate limit of 127.0.0.1 is left to the other checks.
Bounded: len(--gaps) + 1 requests per client, at most 60 s.
"""
import argparse
import http.client
import json
import ssl
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="shop.kbxy.test")
parser.add_argument("--clients", type=int, default=4)
parser.add_argument("--gaps", default="3.0,5.0,6.0", help="idle seconds between a client's requests")
parser.add_argument("--out", required=True)
args = parser.parse_args()
gaps = [min(float(g), 15.0) for g in args.gaps.split(",")]

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
lock = threading.Lock()
results = []


def request(method, index):
    conn = http.client.HTTPSConnection("127.0.0.1", 443, timeout=10, context=context,
                                       source_address=("127.0.0.2", 0))
    try:
        body = json.dumps({"client": index}).encode() if method == "POST" else None
        conn.request(method, f"/api/idle?client={index}", body=body,
                     headers={"Host": args.host, "Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        upstream = json.loads(payload).get("connection") if response.status == 200 else None
        return response.status, upstream
    except Exception as exc:  # noqa: BLE001 - recorded as a failure
        return repr(exc), None
    finally:
        conn.close()


started = time.monotonic()


def client(index):
    method = "POST" if index % 2 else "GET"
    time.sleep(0.2 * index)
    for step, gap in enumerate([None] + gaps):
        if gap is not None:
            time.sleep(gap)
        status, upstream = request(method, index)
        with lock:
            results.append({"client": index, "method": method, "gap": gap, "status": status,
                            "upstream_connection": upstream, "at": round(time.monotonic() - started, 2)})


threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(timeout=max(1.0, 60 - (time.monotonic() - started)))
results.sort(key=lambda r: r["at"])
last_answer = {}
idle_before_reuse = []
for r in results:
    if r["upstream_connection"] in last_answer:
        idle_before_reuse.append(round(r["at"] - last_answer[r["upstream_connection"]], 2))
    if r["upstream_connection"]:
        last_answer[r["upstream_connection"]] = r["at"]
summary = {
    "requests": len(results),
    "expected": args.clients * (len(gaps) + 1),
    "statuses": sorted({str(r["status"]) for r in results}),
    "bad": [r for r in results if r["status"] != 200],
    # answers over an upstream connection that had answered before: nginx's cache at work
    "reused_upstream_connections": len(idle_before_reuse),
    # the longest a reused upstream connection had been idle: must stay below 5 s
    "longest_idle_before_reuse_s": max(idle_before_reuse, default=None),
    "methods": sorted({r["method"] for r in results}),
    "gaps": gaps,
    "seconds": round(time.monotonic() - started, 2),
    "results": results,
}
with open(args.out, "w", encoding="utf-8") as out:
    json.dump(summary, out)
print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
