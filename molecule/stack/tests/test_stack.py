"""The whole site on kbxy-stack-web (nginx) and kbxy-stack-app (uvicorn, backups).

HTTP goes from the controller to the web container's address only (HTTPS, verified
against the self-signed CA the nginx role made); the day-2 playbooks and the rerun of
site.yml run through inventories/local over SSH, as an operator or AWX would run them.
Tests run in file order: the swap's rows are what download and maintenance then see.
"""
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
import uuid
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

testinfra_hosts = ["kbxy-stack-web", "kbxy-stack-app"]


def docker_ip(name):
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def run_playbook(playbook, *args):
    """ansible-playbook through inventories/local over SSH; returns (process, seconds, recap)."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(EPHEMERAL / "facts-ssh"),
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
def tls(tmp_path_factory):
    """An SSL context trusting only the nginx role's self-signed CA of the web host."""
    ca = subprocess.run(["docker", "exec", "kbxy-stack-web", "cat", f"/etc/nginx/tls/{APP_NAME}/ca.crt"],
                        capture_output=True, text=True, check=True).stdout
    path = tmp_path_factory.mktemp("ca") / "ca.crt"
    path.write_text(ca)
    ctx = ssl.create_default_context(cafile=str(path))
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
    """The wall times converge.yml recorded: check mode on the fresh hosts, the first
    converge, the idempotent second run (molecule's docker connection)."""
    runs = [json.loads(line) for line in (EPHEMERAL / "converge-times.jsonl").read_text().splitlines() if line]
    real = [r for r in runs if not r["check_mode"]]
    checks = [r for r in runs if r["check_mode"]]
    print(f"\nstack timing: check mode on fresh hosts {checks[0]['seconds'] if checks else '-'} s, "
          f"first converge {real[0]['seconds']} s, second run (idempotence) "
          f"{real[1]['seconds'] if len(real) > 1 else '-'} s")
    assert checks, "the check-mode run on the fresh hosts did not complete"
    assert real, runs


def test_web_host_runs_no_app(host):
    if host.backend.get_hostname() != "kbxy-stack-web":
        pytest.skip("web host only")
    assert host.service("nginx").is_running
    assert not host.file(f"/opt/{APP_NAME}").exists
    assert host.file(f"/var/www/{APP_NAME}/index.html").exists


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
