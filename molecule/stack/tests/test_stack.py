"""The whole site on kbxy-stack-web (nginx), kbxy-stack-app (uvicorn, backups) and
kbxy-stack-gpu (the upscaling service on the CPU).

End-to-end traffic comes from an outside client: kbxy-stack-client, a plain container
(no systemd, not in the inventory) started here on the same Docker network, which
resolves kbxy-stack.localhost to the web host and trusts only the CA the nginx role made:
HTTPS with full certificate verification, the SPA, the API, an upscale through /ai/, and
a TCP probe of every host's ports (only 22, 80 and 443 on the web host, 22 elsewhere).
The day-2 playbooks run through inventories/local over SSH, as an operator or AWX would
run them. Tests run in file order: restore, then the swap, whose rows are what download
and maintenance then see.
"""
import base64
import json
import os
import re
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import struct
import uuid
import zlib
from pathlib import Path

import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[3]
APP_NAME = "kbxy-demo"
DB_PATH = f"/var/lib/{APP_NAME}/{APP_NAME}.db"
SERVER_NAME = "kbxy-stack.localhost"
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ROOT / "build" / "stack"))
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
)
"""

testinfra_hosts = ["kbxy-stack-web", "kbxy-stack-app", "kbxy-stack-gpu"]
STACK = ("kbxy-stack-web", "kbxy-stack-app", "kbxy-stack-gpu")
CLIENT_NAME = "kbxy-stack-client"
GPU_MODEL = "general-x4v3"  # inventories/local/group_vars/gpu.yml
# TCP ports probed on every host from the client; what each host may answer on
PROBED_PORTS = (22, 80, 443, 5432, 8000, 8001, 8080, 8100)
OPEN_PORTS = {"kbxy-stack-web": {22, 80, 443}, "kbxy-stack-app": {22}, "kbxy-stack-gpu": {22}}

# Runs inside the client: reads one JSON request from stdin, prints one JSON answer.
#   {"op": "http", "url", "method", "headers", "body" (base64), "timeout"} -> status, headers, body (base64)
#   {"op": "probe", "targets": [[address, port], ...]} -> open: [true|false, ...] (2 s connect timeout)
CLIENT = r"""
import base64, json, socket, ssl, sys, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
spec = json.load(sys.stdin)
if spec["op"] == "probe":
    def is_open(target):
        try:
            socket.create_connection((target[0], target[1]), timeout=2).close()
            return True
        except OSError:
            return False
    with ThreadPoolExecutor(16) as pool:
        print(json.dumps({"open": list(pool.map(is_open, spec["targets"]))}))
    sys.exit(0)
ctx = ssl.create_default_context(cafile="/root/stack-ca.crt")
req = urllib.request.Request(spec["url"], method=spec.get("method", "GET"), headers=spec.get("headers", {}),
                             data=base64.b64decode(spec["body"]) if spec.get("body") else None)
try:
    with urllib.request.urlopen(req, context=ctx, timeout=spec.get("timeout", 30)) as resp:
        status, headers, data = resp.status, resp.headers, resp.read()
except urllib.error.HTTPError as err:
    status, headers, data = err.code, err.headers, err.read()
print(json.dumps({"status": status, "headers": dict(headers), "body": base64.b64encode(data).decode()}))
"""


def docker_ip(name):
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def run_playbook(playbook, *args, fact_cache=None):
    """ansible-playbook through inventories/local over SSH; returns (process, seconds, recap).
    The fact cache is shared by these runs unless fact_cache names another directory."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(fact_cache or EPHEMERAL / "facts-ssh"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    })
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / ".collections"))
    cmd = ["ansible-playbook", "-i", str(ROOT / "inventories" / "local"),
           "--private-key", str(ROOT / "build" / "stack" / "id_ed25519"), str(ROOT / playbook), *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.monotonic() - started
    recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
             for m in RECAP.findall(proc.stdout)}
    return proc, seconds, recap


def tail(proc, lines=60):
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-lines:])


@pytest.fixture(scope="module")
def web_ip():
    return docker_ip("kbxy-stack-web")


@pytest.fixture(scope="module")
def app_ip():
    return docker_ip("kbxy-stack-app")


@pytest.fixture(scope="module")
def stack_ca(tmp_path_factory):
    """The nginx role's self-signed CA of the web host, copied to a local file."""
    pem = subprocess.run(["docker", "exec", "kbxy-stack-web", "cat", f"/etc/nginx/tls/{APP_NAME}/ca.crt"],
                         capture_output=True, text=True, check=True).stdout
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_text(pem)
    return path


@pytest.fixture(scope="module")
def client(web_ip, stack_ca, tmp_path_factory):
    """The outside client: a container of the test image running only `sleep`, on the
    default network, with kbxy-stack.localhost -> the web host and the stack's CA. Removed
    at the end (--rm, and `sleep` ends by itself after an hour at the latest)."""
    subprocess.run(["docker", "rm", "-f", CLIENT_NAME], capture_output=True, check=False)
    subprocess.run(["docker", "run", "-d", "--rm", "--name", CLIENT_NAME, "--add-host", f"{SERVER_NAME}:{web_ip}",
                    "--entrypoint", "sleep", "kbxy/test-debian:12", "3600"], capture_output=True, check=True)
    try:
        work = tmp_path_factory.mktemp("client")
        (work / "client.py").write_text(CLIENT)
        subprocess.run(["docker", "cp", str(work / "client.py"), f"{CLIENT_NAME}:/root/stack-client.py"], check=True)
        subprocess.run(["docker", "cp", str(stack_ca), f"{CLIENT_NAME}:/root/stack-ca.crt"], check=True)

        def call(spec):
            proc = subprocess.run(["docker", "exec", "-i", CLIENT_NAME, "python3", "/root/stack-client.py"],
                                  input=json.dumps(spec), capture_output=True, text=True, timeout=600, check=False)
            assert proc.returncode == 0, proc.stderr
            answer = json.loads(proc.stdout)
            if "body" in answer:
                answer["body"] = base64.b64decode(answer["body"])
            return answer
        yield call
    finally:
        subprocess.run(["docker", "rm", "-f", CLIENT_NAME], capture_output=True, check=False)


def client_get(client, path, **spec):
    return client({"op": "http", "url": f"https://{SERVER_NAME}{path}", **spec})


def png_rgb(width, height):
    """A real 8-bit RGB PNG: a gradient with a diagonal line."""
    rows = b"".join(
        b"\x00" + b"".join(bytes(((x * 255) // (width - 1), (y * 255) // (height - 1), 255 if x == y else 0))
                           for x in range(width))
        for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:32]
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tls(stack_ca):
    """An SSL context trusting only the nginx role's self-signed CA of the web host."""
    ctx = ssl.create_default_context(cafile=str(stack_ca))
    # the certificate names SERVER_NAME; the request goes to the container's address
    ctx.check_hostname = False
    return ctx


@pytest.fixture(scope="module")
def api(web_ip, tls):
    def call(method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"https://{web_ip}{path}", data=data, method=method,
                                     headers={"Host": SERVER_NAME, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=tls, timeout=10) as resp:
                raw = resp.read()
                return resp.status, dict(resp.headers), (json.loads(raw) if raw and path.startswith("/api/") else raw)
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()
    return call


def make_db(path, names, filler=0):
    """A database with the demo app's schema holding the given item names (and, with
    filler, that many deleted 4 KiB rows: a large free-list)."""
    con = sqlite3.connect(path)
    con.execute(SCHEMA)
    con.executemany("INSERT INTO items (name, description) VALUES (?, ?)", [(n, "uploaded") for n in names])
    if filler:
        con.executemany("INSERT INTO items (name, description) VALUES ('filler', ?)", [("x" * 4096,)] * filler)
        con.execute("DELETE FROM items WHERE name = 'filler'")
    con.commit()
    con.close()


def live_stats(host):
    """page_count, freelist_count and item count of the live database, read-only."""
    out = host.check_output(
        "python3 -c \"import json, sqlite3; c = sqlite3.connect('file:%s?mode=ro', uri=True); "
        "print(json.dumps([c.execute(q).fetchone()[0] for q in ('PRAGMA page_count', 'PRAGMA freelist_count', "
        "'SELECT count(*) FROM items')]))\"" % DB_PATH)
    return json.loads(out)


def test_converge_times():
    """The wall times converge.yml recorded, in order: check mode on the fresh hosts, then
    the converge. A line is written only when every play of site.yml before it completed,
    so a check-mode run that stopped half-way leaves no line; the idempotent run is AWX's
    deploy template (test_awx_runner.py)."""
    runs = [json.loads(line) for line in (EPHEMERAL / "converge-times.jsonl").read_text().splitlines() if line]
    print(f"\nstack timing: {', '.join(('check mode' if r['check_mode'] else 'converge') + ' ' + str(r['seconds']) + ' s' for r in runs)}")
    assert [r["check_mode"] for r in runs] == [True, False], runs
    assert runs[0]["finished"] < runs[1]["finished"], runs
    assert all(r["seconds"] > 0 for r in runs), runs


def test_web_host_runs_no_app(host):
    if host.backend.get_hostname() != "kbxy-stack-web":
        pytest.skip("web host only")
    assert host.service("nginx").is_running
    assert not host.file(f"/opt/{APP_NAME}").exists
    assert host.file(f"/var/www/{APP_NAME}/index.html").exists
    # its upstreams are on the app host: nginx has the cores to itself, one worker per core
    assert "worker_processes auto;" in host.check_output("nginx -T 2>/dev/null")


def test_gpu_host_runs_the_upscaling_service_on_the_cpu(host):
    if host.backend.get_hostname() != "kbxy-stack-gpu":
        pytest.skip("gpu host only")
    assert host.service("kbxy-upscale.socket").is_running
    assert "KBXY_UPSCALE_DEVICE=cpu" in host.file("/etc/kbxy-upscale/kbxy-upscale.env").content_string
    assert not host.service("nginx").is_running and not host.file(f"/opt/{APP_NAME}").exists


def test_client_gets_the_spa_with_a_verified_certificate(client):
    """Full verification: the client trusts only the stack's CA and checks the name."""
    answer = client_get(client, "/some/deep/link")
    assert answer["status"] == 200, answer
    assert answer["headers"]["Content-Type"].startswith("text/html")
    assert b"<html" in answer["body"].lower()
    assert "max-age=" in answer["headers"].get("Strict-Transport-Security", "")


def test_client_writes_through_the_api(client):
    name = f"client-{uuid.uuid4().hex[:8]}"
    answer = client_get(client, "/api/items", method="POST", headers={"Content-Type": "application/json"},
                        body=base64.b64encode(json.dumps({"name": name, "description": "from the client"}).encode()).decode())
    assert answer["status"] == 201, answer
    item = json.loads(answer["body"])
    answer = client_get(client, f"/api/items/{item['id']}")
    assert answer["status"] == 200 and json.loads(answer["body"])["name"] == name


def test_client_upscales_an_image_through_nginx_on_the_gpu_host(client, upscale_reference):
    """POST /ai/v1/upscale on the web host reaches kbxy-upscale on kbxy-stack-gpu; the
    answer is a PNG four times the size whose pixels are the model's upscale of the picture
    sent (compared with the service's own code on the controller: a black answer fails)."""
    started = time.monotonic()
    source = png_rgb(24, 16)
    answer = client_get(client, f"/ai/v1/upscale?model={GPU_MODEL}&format=png", method="POST",
                        headers={"Content-Type": "image/png"}, body=base64.b64encode(source).decode(),
                        timeout=300)
    print(f"\nupscale 24x16 -> PNG through nginx from the client: {time.monotonic() - started:.1f} s")
    assert answer["status"] == 200, answer["body"][:300]
    assert answer["headers"]["Content-Type"] == "image/png"
    assert png_size(answer["body"]) == (96, 64)
    gpu_env = testinfra.get_host("ansible://kbxy-stack-gpu", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]).file(
        "/etc/kbxy-upscale/kbxy-upscale.env").content_string
    compared = upscale_reference(source, answer["body"], int(re.search(r"^KBXY_UPSCALE_TILE=(\d+)$", gpu_env, re.M).group(1)))
    assert compared["max_abs_diff"] <= 2 and float(compared["psnr_db"]) >= 45, compared
    models = client_get(client, "/ai/v1/models")
    assert models["status"] == 200 and GPU_MODEL in models["body"].decode()


def test_client_reaches_only_the_published_ports(client):
    """From outside, UFW leaves 22/80/443 on the web host and 22 on the others; the app
    and upscaling ports answer the web host only (see test_app_port_only_from_web)."""
    addresses = {name: docker_ip(name) for name in STACK}
    targets = [[addresses[name], port] for name in STACK for port in PROBED_PORTS]
    answer = client({"op": "probe", "targets": targets})
    found = {name: set() for name in STACK}
    for (address, port), is_open in zip(targets, answer["open"]):
        if is_open:
            found[next(n for n, a in addresses.items() if a == address)].add(port)
    print(f"\nopen ports seen from the client: { {n: sorted(p) for n, p in found.items()} }")
    assert found == OPEN_PORTS


def test_health_through_nginx_over_https(api):
    status, headers, body = api("GET", "/api/health")
    assert status == 200, body
    assert body["status"] == "ok" and body["database"] == "ok"
    assert "max-age=" in headers.get("Strict-Transport-Security", "")


def test_spa_over_https(api):
    status, headers, body = api("GET", "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"<html" in body.lower()


def test_http_redirects_to_https(web_ip):
    conn = socket.create_connection((web_ip, 80), timeout=5)
    conn.sendall(f"GET /api/health HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode())
    head = conn.recv(4096).decode(errors="replace")
    conn.close()
    assert head.split()[1] in ("301", "308"), head
    assert f"Location: https://{SERVER_NAME}/api/health" in head


def test_crud_round_trip_through_nginx(api):
    name = f"stack-{uuid.uuid4().hex[:8]}"
    status, _headers, created = api("POST", "/api/items", {"name": name, "description": "via nginx"})
    assert status == 201, created
    item_id = created["id"]
    status, _headers, got = api("GET", f"/api/items/{item_id}")
    assert status == 200 and got["name"] == name
    status, _headers, updated = api("PUT", f"/api/items/{item_id}", {"name": name + "-2", "description": "updated"})
    assert status == 200 and updated["name"] == name + "-2"
    status, _headers, _body = api("DELETE", f"/api/items/{item_id}")
    assert status == 204
    status, _headers, _body = api("GET", f"/api/items/{item_id}")
    assert status == 404


def test_app_port_only_from_web(host, app_ip, web_ip):
    """UFW on the app host: the uvicorn ports answer the web host, not the controller."""
    if host.backend.get_hostname() != "kbxy-stack-app":
        pytest.skip("app host only")
    rules = host.check_output("ufw status")
    assert re.search(rf"8000:8001/tcp\s+ALLOW\s+{re.escape(web_ip)}", rules), rules
    web = testinfra.get_host("ansible://kbxy-stack-web", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])
    for port in (8000, 8001):
        probe = web.run(
            "python3 -c \"import socket; s = socket.create_connection(('%s', %d), timeout=5); "
            "s.sendall(b'GET /api/health HTTP/1.0\\r\\n\\r\\n'); print(s.recv(64).decode())\"" % (app_ip, port))
        assert probe.rc == 0 and "200" in probe.stdout, probe.stderr
    for port in (8000, 8001):
        with pytest.raises(OSError):
            socket.create_connection((app_ip, port), timeout=3).close()


def test_backup_timer(host):
    if host.backend.get_hostname() != "kbxy-stack-app":
        pytest.skip("app host only")
    timer = host.service(f"kbxy-sqlite-backup-{APP_NAME}.timer")
    assert timer.is_enabled and timer.is_running


def test_one_layer_with_limit_and_tags(tmp_path):
    """site.yml --limit web --tags web, with an empty fact cache: only the web host runs,
    it learns the app and gpu addresses by gathering their facts, and changes nothing."""
    proc, seconds, recap = run_playbook("site.yml", "--limit", "web", "--tags", "web", fact_cache=tmp_path / "facts")
    print(f"\nsite.yml --limit web --tags web: {seconds:.1f} s, recap {recap}")
    assert proc.returncode == 0, tail(proc)
    assert set(recap) == {"kbxy-stack-web"}, recap
    assert recap["kbxy-stack-web"]["failed"] == 0 and recap["kbxy-stack-web"]["changed"] == 0, tail(proc)
    # the facts of the hosts outside the limit were gathered by delegation
    for backend in ("kbxy-stack-app", "kbxy-stack-gpu"):
        assert re.search(rf"ok: \[kbxy-stack-web -> {backend}[](]", proc.stdout), tail(proc, 200)


def test_uvicorn_keepalive_below_nginx_refused_before_any_change(tmp_path):
    """An app whose uvicorn would drop idle connections before nginx does (502s on reuse) stops
    site.yml on the web host with a message naming both settings, before any change."""
    proc, _seconds, recap = run_playbook("site.yml", "--limit", "web", "--tags", "web", "-e",
                                         '{"uvicorn_extra_args": ["--timeout-keep-alive", "3"]}',
                                         fact_cache=tmp_path / "facts")
    assert proc.returncode != 0, tail(proc)
    assert "nginx_upstream_keepalive_timeout (4 s) must be below the --timeout-keep-alive of uvicorn" in proc.stdout, tail(proc)
    assert recap["kbxy-stack-web"]["failed"] == 1 and recap["kbxy-stack-web"]["changed"] == 0, recap


def test_backup_then_restore_brings_the_backup_back(api):
    """backup.yml run as the README shows it (the whole inventory: the web and gpu hosts,
    which have no database, say so and end), a row written after it, restore.yml
    (health-gated restart of both instances): the row from before the backup is there,
    the later one is gone."""
    status, _headers, kept = api("POST", "/api/items", {"name": f"kept-{uuid.uuid4().hex[:6]}"})
    assert status == 201, kept
    proc, seconds, recap = run_playbook("playbooks/backup.yml")
    print(f"\nbackup.yml: {seconds:.1f} s")
    assert proc.returncode == 0, tail(proc)
    assert set(recap) == set(STACK) and all(r["failed"] == 0 and r["unreachable"] == 0 for r in recap.values()), recap
    assert recap["kbxy-stack-web"]["changed"] == recap["kbxy-stack-gpu"]["changed"] == 0, recap
    assert proc.stdout.count("no databases configured on this host") >= 2, tail(proc)
    status, _headers, lost = api("POST", "/api/items", {"name": f"after-backup-{uuid.uuid4().hex[:6]}"})
    assert status == 201, lost
    proc, seconds, recap = run_playbook("playbooks/restore.yml", "-e", "restore_hosts=app", "-e", f"restore_database={APP_NAME}",
                                        "-e", "restore_uvicorn=true")
    print(f"restore.yml: {seconds:.1f} s")
    assert proc.returncode == 0 and recap["kbxy-stack-app"]["failed"] == 0, tail(proc)
    assert api("GET", f"/api/items/{kept['id']}")[0] == 200
    assert api("GET", f"/api/items/{lost['id']}")[0] == 404
    assert api("GET", "/api/health")[0] == 200


def test_db_swap(api, tmp_path):
    names = [f"swapped-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    upload = tmp_path / "upload.db"
    make_db(upload, names)
    proc, seconds, recap = run_playbook("playbooks/db_swap.yml", "-e", f"db_swap_src={upload}", "-e", "db_swap_confirm=yes")
    print(f"\ndb_swap: {seconds:.1f} s")
    assert proc.returncode == 0, tail(proc)
    assert recap["kbxy-stack-app"]["failed"] == 0
    status, _headers, items = api("GET", "/api/items")
    assert status == 200
    assert [i["name"] for i in items] == names


def test_db_swap_without_confirmation_changes_nothing(api, tmp_path):
    before = api("GET", "/api/items")[2]
    upload = tmp_path / "upload.db"
    make_db(upload, ["never-swapped"])
    proc, _seconds, _recap = run_playbook("playbooks/db_swap.yml", "-e", f"db_swap_src={upload}")
    assert proc.returncode != 0
    assert "db_swap_confirm" in proc.stdout
    assert api("GET", "/api/items")[2] == before


def test_db_swap_refuses_a_corrupt_upload(api, tmp_path):
    before = api("GET", "/api/items")[2]
    assert before, "the swapped rows should be there"
    upload = tmp_path / "corrupt.db"
    make_db(upload, ["corrupt-1", "corrupt-2"])
    con = sqlite3.connect(upload)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'items'").fetchone()[0]
    con.close()
    with open(upload, "r+b") as f:  # overwrite the items table's b-tree page
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
    proc, _seconds, _recap = run_playbook("playbooks/db_swap.yml", "-e", f"db_swap_src={upload}", "-e", "db_swap_confirm=yes")
    assert proc.returncode != 0, tail(proc)
    assert "The live database was not changed" in proc.stdout, tail(proc)
    assert api("GET", "/api/items")[2] == before
    assert api("GET", "/api/health")[0] == 200


def test_db_download(api, tmp_path):
    proc, seconds, _recap = run_playbook("playbooks/db_download.yml", "-e", f"db_download_dest={tmp_path}")
    print(f"\ndb_download: {seconds:.1f} s")
    assert proc.returncode == 0, tail(proc)
    files = list((tmp_path / "kbxy-stack-app").glob(f"{APP_NAME}-*.db"))
    assert len(files) == 1, files
    con = sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    names = [r[0] for r in con.execute("SELECT name FROM items ORDER BY id")]
    con.close()
    assert names == [i["name"] for i in api("GET", "/api/items")[2]]


def test_maintenance_vacuums_a_large_free_list(host, api):
    if host.backend.get_hostname() != "kbxy-stack-app":
        pytest.skip("app host only")
    items = api("GET", "/api/items")[2]
    # fill and empty the live database as the app's user, while the app runs
    host.check_output(
        "runuser -u %s -- python3 -c \"import sqlite3; c = sqlite3.connect('%s', timeout=30); "
        "c.executemany('INSERT INTO items (name, description) VALUES (?, ?)', [('filler', 'x' * 4096)] * 1500); "
        "c.commit(); c.execute(\\\"DELETE FROM items WHERE name = 'filler'\\\"); c.commit()\"" % (APP_NAME, DB_PATH))
    pages, free, count = live_stats(host)
    assert free > pages * 0.5, (pages, free)
    proc, seconds, _recap = run_playbook("playbooks/maintenance.yml")
    print(f"\nmaintenance: {seconds:.1f} s, pages {pages} -> ", end="")
    assert proc.returncode == 0, tail(proc)
    assert re.search(r"""vacuumed["']?:\s*true""", proc.stdout), tail(proc)
    pages_after, free_after, count_after = live_stats(host)
    print(pages_after)
    assert free_after == 0 and pages_after < pages / 2
    assert count_after == count == len(items)
    assert api("GET", "/api/items")[2] == items
    # the backup taken before the VACUUM
    assert host.file(f"/var/backups/kbxy-sqlite/{APP_NAME}").exists
