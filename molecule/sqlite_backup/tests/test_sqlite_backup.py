"""kbxy.platform.sqlite_backup, seen from inside each test host.

prepare.yml deployed the demo app with kbxy.platform.uvicorn (kbxy-demo@1 and @2,
socket-activated on /run/kbxy-demo/<n>.sock, database /var/lib/kbxy-demo/kbxy-demo.db
in WAL mode, seeded with 20000 rows). The tests write through its HTTP API with a
bounded client (files/api_writer.py) while the backup service runs. ledger.db (a second
user, rollback journal) carries the retention, off-site, corruption and drill tests.
side_effect.yml retired the database "retired" and ran playbooks/backup.yml and
playbooks/restore.yml around two marker rows written through the API.

The restore test must run before any other test writes through the API (the ids of
rows written after the restore could reuse the id of the marker that was rolled back).
"""

import datetime
import hashlib
import json
import os
import re
import shlex
import time

APP_DB = "/var/lib/kbxy-demo/kbxy-demo.db"
APP_USER = "kbxy-demo"
SOCKETS = ["/run/kbxy-demo/1.sock", "/run/kbxy-demo/2.sock"]
LEDGER_DB = "/var/lib/kbxyapp/ledger.db"
APP_DIR = "/var/backups/kbxy-sqlite/app"
LEDGER_DIR = "/var/backups/ledger"
RETIRED_DIR = "/var/backups/kbxy-sqlite/retired"
METRICS = "/var/lib/prometheus/node-exporter"
UNITS = [f"kbxy-sqlite-{kind}-{db}.{ext}" for kind in ("backup", "drill") for db in ("app", "ledger")
         for ext in ("service", "timer")]
REPO = os.path.join(os.path.dirname(__file__), "..", "..", "..")


def py(host, code, user="kbxyapp"):
    """Run a python3 snippet on the host (no sqlite3 CLI, no curl in the images)."""
    cmd = f"python3 -c {shlex.quote(code)}"
    if user:
        cmd = f"runuser -u {user} -- {cmd}"
    return host.run(cmd)


def api(host, method, path, sock=SOCKETS[0]):
    """One request to a demo app instance over its unix socket, from inside the host: (status, JSON body)."""
    out = py(host, f"""
import http.client, json, socket
c = http.client.HTTPConnection('localhost', timeout=30)
s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect({sock!r}); c.sock = s
c.request({method!r}, {path!r}); r = c.getresponse(); body = r.read().decode()
print(r.status); print(body)
""", user=None)
    assert out.rc == 0, out.stderr
    status, _sep, body = out.stdout.partition("\n")
    return int(status), (json.loads(body) if body.strip() else None)


def start(host, unit):
    return host.run(f"systemctl start {unit}")


def backups(host, directory, prefix):
    names = host.check_output(f"ls -1 {directory}").splitlines()
    return sorted(n for n in names if re.match(rf"^{prefix}-\d{{8}}T\d{{6}}(\.\d{{6}})?Z\.db(\.gz)?$", n))


def metrics(host, path):
    out = {}
    for line in host.file(path).content_string.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key.split("{")[0]] = float(value)
    return out


def rows_named(host, path, like, user=APP_USER):
    """count(*) of items whose name is LIKE `like` in a database file (gzip or plain), opened read-only."""
    out = py(host, f"""
import gzip, os, sqlite3, tempfile
path = {path!r}
if path.endswith('.gz'):
    fd, tmp = tempfile.mkstemp(suffix='.db')
    with os.fdopen(fd, 'wb') as f:
        f.write(gzip.open(path).read())
    path = tmp
c = sqlite3.connect('file:' + path + '?mode=ro', uri=True, timeout=30)
print(c.execute('select count(*) from items where name like ?', ({like!r},)).fetchone()[0])
c.close()
if path != {path!r}:
    os.unlink(path)
""", user=user)
    assert out.rc == 0, out.stderr
    return int(out.stdout)


def test_units_verify_without_warnings_and_print_security(host):
    paths = " ".join(f"/etc/systemd/system/{u}" for u in UNITS)
    result = host.run(f"systemd-analyze verify {paths} /etc/systemd/system/kbxy-sqlite-backup-failure@x.service")
    assert result.rc == 0 and result.stderr == "", result.stderr
    # ledger has an off-site command: its backup service may use the network
    for unit, most in (("kbxy-sqlite-backup-app.service", 1.0), ("kbxy-sqlite-drill-app.service", 1.0),
                       ("kbxy-sqlite-backup-ledger.service", 2.0)):
        sec = host.check_output(f"systemd-analyze security --no-pager {unit}")
        print(f"\n{host.backend.get_hostname()}: systemd-analyze security {unit}:\n{sec}")
        level = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec).group(1))
        assert level <= most, sec


def test_timers_are_scheduled(host):
    for db, user in (("app", APP_USER), ("ledger", "kbxyapp")):
        timer = host.service(f"kbxy-sqlite-backup-{db}.timer")
        assert timer.is_enabled and timer.is_running
        assert host.service(f"kbxy-sqlite-drill-{db}.timer").is_enabled
        unit = host.file(f"/etc/systemd/system/kbxy-sqlite-backup-{db}.timer").content_string
        assert "OnCalendar=*-*-* 02:00:00" in unit and "Persistent=true" in unit and "RandomizedDelaySec=900" in unit
        service = host.file(f"/etc/systemd/system/kbxy-sqlite-backup-{db}.service").content_string
        assert f"User={user}" in service and "OnFailure=kbxy-sqlite-backup-failure@%n.service" in service


def test_host_tool_is_the_collections_module_utils(host):
    with open(os.path.join(REPO, "plugins", "module_utils", "sqlite_ops.py"), "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    assert host.file("/usr/local/lib/kbxy/sqlite_ops.py").sha256sum == want


def test_retired_database_was_pruned(host):
    """side_effect.yml backed up "retired", then ran the role without it."""
    for kind in ("backup", "drill"):
        for ext in ("service", "timer"):
            unit = f"kbxy-sqlite-{kind}-retired.{ext}"
            assert not host.file(f"/etc/systemd/system/{unit}").exists, unit
            state = host.check_output(f"systemctl show --property=LoadState,ActiveState {unit}")
            assert sorted(state.split()) == ["ActiveState=inactive", "LoadState=not-found"], (unit, state)
    assert "retired" not in host.check_output("systemctl list-timers --all --no-pager")
    assert "retired" not in host.check_output("systemctl list-units --all --failed --no-pager --plain")
    assert not host.file("/etc/kbxy/sqlite-backup/retired.json").exists
    assert not host.file(f"{METRICS}/kbxy_sqlite_backup_retired.prom").exists
    assert not host.file(f"{METRICS}/kbxy_sqlite_restore_drill_retired.prom").exists
    # the data stays (a backup made as kbxyapp in a directory beside the one of kbxy-demo)
    assert len(backups(host, RETIRED_DIR, "retired")) == 1
    root = host.file(os.path.dirname(RETIRED_DIR))
    assert root.user == "root" and root.mode == 0o755
    # the databases still listed keep their units
    assert host.file("/etc/kbxy/sqlite-backup/app.json").exists and host.file("/etc/kbxy/sqlite-backup/ledger.json").exists


def test_restore_playbook_brought_back_the_newest_backup(host):
    """side_effect.yml: marker (API), playbooks/backup.yml, marker (API), playbooks/restore.yml."""
    markers = json.loads(host.file("/root/kbxy-restore-markers.json").content_string)
    before, after = markers["before"], markers["after"]
    assert after["id"] > before["id"]
    status, body = api(host, "GET", f"/api/items/{before['id']}")
    assert status == 200 and body["name"] == "marker-before-backup", body
    status, body = api(host, "GET", f"/api/items/{after['id']}", sock=SOCKETS[1])
    assert status == 404, body
    # the instances were restarted by restore.yml and answer healthy on both sockets
    now = host.check_output("systemctl show --property=InvocationID --value kbxy-demo@1.service kbxy-demo@2.service").split()
    assert len(now) == 2 and not set(now) & set(markers["invocations"]), (now, markers["invocations"])
    for sock in SOCKETS:
        status, body = api(host, "GET", "/api/health", sock=sock)
        assert status == 200 and body["status"] == "ok" and body["journal_mode"] == "wal", body
    # sqlite_swap kept the database as it was before the swap (with the second marker)
    saved = [n for n in host.check_output(f"ls -1 {APP_DIR}").split()
             if n.startswith("kbxy-demo-preswap-") and not n.endswith(".json")]
    assert len(saved) == 1, saved
    assert rows_named(host, f"{APP_DIR}/{saved[0]}", "marker-after-backup") == 1


def wait_for(host, path, predicate, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        f = host.file(path)
        if f.exists:
            data = json.loads(f.content_string)
            if predicate(data):
                return data
        assert time.monotonic() < deadline, f"{path}: not there in {seconds} s"
        time.sleep(0.5)


def test_backup_while_app_writes(host):
    """Writes through the API (round robin over both instances) before, during and after two backup runs."""
    tag = f"load{time.time_ns()}"
    run = f"/run/kbxy-test-{tag}"
    cursor = re.search(r"cursor: (\S+)", host.check_output("journalctl -n 0 --show-cursor --no-pager")).group(1)
    host.check_output(f"mkdir -m 0700 {run}")
    host.check_output(
        f"systemd-run --unit=kbxy-test-{tag} --collect --property=RuntimeMaxSec=300 /usr/bin/python3 "
        f"/usr/local/lib/api_writer.py --socket {SOCKETS[0]} --socket {SOCKETS[1]} --tag {tag} "
        f"--progress {run}/progress.json --out {run}/out.json --stop-file {run}/stop --max-seconds 240")
    before = set(backups(host, APP_DIR, "app"))
    wait_for(host, f"{run}/progress.json", lambda p: p["ok"] >= 50)
    try:
        for attempt in range(2):
            result = start(host, "kbxy-sqlite-backup-app.service")
            assert result.rc == 0, host.run("journalctl -u kbxy-sqlite-backup-app.service -n 30 --no-pager").stdout
        mid = json.loads(host.file(f"{run}/progress.json").content_string)["total"]
        wait_for(host, f"{run}/progress.json", lambda p: p["total"] >= mid + 50)
    finally:
        host.check_output(f"touch {run}/stop")
    out = wait_for(host, f"{run}/out.json", lambda o: True)
    print(f"\n{host.backend.get_hostname()}: {out['ok']} of {out['total']} writes through the API answered 201 "
          f"in {out['seconds']} s while 2 backups ran; failures: {out['failures']}")
    assert out["failure_count"] == 0 and out["ok"] == out["total"] and out["ok"] >= 100, out
    # every answered write is in the live database, and the last one reads back through the API
    assert rows_named(host, APP_DB, f"{tag}-%") == out["ok"]
    status, body = api(host, "GET", f"/api/items/{out['last_id']}")
    assert status == 200 and body["name"] == f"{tag}-{out['total']}", body
    # the app logged no error while the backups ran
    log = host.check_output(f"journalctl --after-cursor={shlex.quote(cursor)} -u kbxy-demo@1.service -u kbxy-demo@2.service -o cat --no-pager")
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    newest = backups(host, APP_DIR, "app")[-1]
    assert newest not in before
    # the backup was made while the writes went on: it holds some of them, not all
    in_backup = rows_named(host, f"{APP_DIR}/{newest}", f"{tag}-%")
    assert 50 <= in_backup < out["ok"], (in_backup, out)
    d = host.file(APP_DIR)
    assert d.mode == 0o700 and d.user == APP_USER
    for name in (newest, newest + ".json"):
        f = host.file(f"{APP_DIR}/{name}")
        assert f.mode == 0o600 and f.user == APP_USER, name
    manifest = json.loads(host.file(f"{APP_DIR}/{newest}.json").content_string)
    assert manifest["verified"] == "full" and manifest["source_journal_mode"] == "wal"
    check = py(host, f"""
import gzip, hashlib, os, sqlite3, tempfile
raw = gzip.open('{APP_DIR}/{newest}').read()
assert hashlib.sha256(raw).hexdigest() == '{manifest["db_sha256"]}'
fd, p = tempfile.mkstemp(suffix='.db'); os.write(fd, raw); os.close(fd)
c = sqlite3.connect(p); print(c.execute('PRAGMA integrity_check').fetchone()[0], c.execute('select count(*) from items').fetchone()[0])
c.close(); os.unlink(p)
""", user=APP_USER)
    assert check.rc == 0, check.stderr
    ok, rows = check.stdout.split()
    assert ok == "ok" and int(rows) >= 20000 + 50
    m = metrics(host, f"{METRICS}/kbxy_sqlite_backup_app.prom")
    assert m["kbxy_sqlite_backup_last_success"] == 1
    assert m["kbxy_sqlite_backup_last_size_bytes"] == host.file(f"{APP_DIR}/{newest}").size
    assert m["kbxy_sqlite_backup_last_success_timestamp_seconds"] > 0


def expected_kept(stamps, keep):
    """restic forget --keep-* written out independently: per rule, the newest backup of each
    of the n newest periods that hold one; a rule with count left also keeps the oldest."""
    period = {
        "daily": lambda d: d.date(),
        "weekly": lambda d: d.isocalendar()[:2],
        "monthly": lambda d: (d.year, d.month),
    }
    newest_first = sorted(stamps, reverse=True)
    kept = {newest_first[0]}
    for rule, n in keep.items():
        periods = {}
        for d in newest_first:
            periods.setdefault(period[rule](d), d)  # first seen = newest of the period
        chosen = sorted(periods.values(), reverse=True)[:n]
        kept.update(chosen)
        if len(periods) < n:
            kept.add(newest_first[-1])
    return kept


def name_of(d):
    return "ledger-" + d.strftime("%Y%m%dT%H%M%SZ") + ".db.gz"


def test_retention_over_400_days(host):
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    stamps = []
    for i in range(1, 401):
        if i % 3 == 2:
            continue  # some days without a backup
        day = (now - datetime.timedelta(days=i)).replace(hour=2, minute=17, second=5)
        stamps.append(day)
        if i % 5 == 0:
            stamps.append(day.replace(hour=14, minute=45))  # two on some days
    files = [name_of(d) for d in stamps]
    fill = py(host, f"""
import os, glob
for p in glob.glob('{LEDGER_DIR}/ledger-*'):
    os.unlink(p)
for n in {files!r}:
    with open(os.path.join('{LEDGER_DIR}', n), 'wb') as f:
        f.write(b'placeholder')
""")
    assert fill.rc == 0, fill.stderr
    result = start(host, "kbxy-sqlite-backup-ledger.service")
    assert result.rc == 0, host.run("journalctl -u kbxy-sqlite-backup-ledger.service -n 30 --no-pager").stdout
    left = backups(host, LEDGER_DIR, "ledger")
    new = [n for n in left if n not in files]
    assert len(new) == 1, new
    new_dt = datetime.datetime.strptime(new[0][len("ledger-"):-len("Z.db.gz")], "%Y%m%dT%H%M%S").replace(
        tzinfo=datetime.timezone.utc)
    want = sorted(name_of(d) for d in expected_kept(stamps + [new_dt], {"daily": 7, "weekly": 4, "monthly": 12}))
    assert left == want
    # the off-site command got the new backup
    shipped = host.file(f"/var/lib/kbxyapp/offsite/{new[0]}")
    assert shipped.exists and shipped.sha256sum == host.file(f"{LEDGER_DIR}/{new[0]}").sha256sum
    m = metrics(host, f"{METRICS}/kbxy_sqlite_backup_ledger.prom")
    assert m["kbxy_sqlite_backup_last_success"] == 1 and m["kbxy_sqlite_backup_offsite_last_success"] == 1
    assert m["kbxy_sqlite_backup_backups"] == len(want)
    assert 7 + 4 + 12 >= len(left) >= 12
    # the oldest kept is the newest backup of the month 11 months back
    assert min(left) < name_of(now - datetime.timedelta(days=300))


def test_restore_drill_passes_on_good_and_fails_on_tampered_backup(host):
    assert start(host, "kbxy-sqlite-drill-app.service").rc == 0
    log = host.check_output("journalctl -u kbxy-sqlite-drill-app.service -n 5 -o cat --no-pager")
    assert '"ok": true' in log and '"query_result": 1' in log
    assert metrics(host, f"{METRICS}/kbxy_sqlite_restore_drill_app.prom")["kbxy_sqlite_restore_drill_last_success"] == 1
    newest = f"{LEDGER_DIR}/{backups(host, LEDGER_DIR, 'ledger')[-1]}"
    assert start(host, "kbxy-sqlite-drill-ledger.service").rc == 0
    host.check_output(f"cp -p {newest} /root/ledger-good.gz")
    try:
        tamper = py(host, f"""
f = open('{newest}', 'r+b'); f.seek(200); b = f.read(1); f.seek(200); f.write(bytes([b[0] ^ 0xff])); f.close()
""")
        assert tamper.rc == 0, tamper.stderr
        assert start(host, "kbxy-sqlite-drill-ledger.service").rc != 0
        err = host.check_output("journalctl -u kbxy-sqlite-drill-ledger.service -p err -o cat --no-pager")
        assert "RESTORE DRILL FAILED for ledger" in err
        m = metrics(host, f"{METRICS}/kbxy_sqlite_restore_drill_ledger.prom")
        assert m["kbxy_sqlite_restore_drill_last_success"] == 0
    finally:
        host.check_output(f"cp -p /root/ledger-good.gz {newest} && systemctl reset-failed kbxy-sqlite-drill-ledger.service")
    assert start(host, "kbxy-sqlite-drill-ledger.service").rc == 0


def test_corrupt_database_fails_loudly_and_keeps_backups(host):
    before = backups(host, LEDGER_DIR, "ledger")
    host.check_output(f"cp -p {LEDGER_DB} /root/ledger-good.db")
    try:
        corrupt = py(host, f"""
f = open('{LEDGER_DB}', 'r+b'); f.seek(4096 * 3); f.write(b'\\xde\\xad\\xbe\\xef' * 1024 * 4); f.close()
""")
        assert corrupt.rc == 0, corrupt.stderr
        assert start(host, "kbxy-sqlite-backup-ledger.service").rc != 0
        assert host.service("kbxy-sqlite-backup-ledger.service").is_running is False
        state = host.check_output("systemctl show -P Result kbxy-sqlite-backup-ledger.service")
        assert state == "exit-code"
        hook = "kbxy-sqlite-backup-failure@kbxy-sqlite-backup-ledger.service.service"
        log = ""
        for attempt in range(50):  # the OnFailure= unit runs right after the failure, asynchronously
            log = host.check_output(f"journalctl -u {hook} -p err -o cat --no-pager")
            if "failed" in log:
                break
            time.sleep(0.1 + attempt * 0.01)
        assert "kbxy-sqlite-backup-ledger.service failed" in log
        assert backups(host, LEDGER_DIR, "ledger") == before
        m = metrics(host, f"{METRICS}/kbxy_sqlite_backup_ledger.prom")
        assert m["kbxy_sqlite_backup_last_success"] == 0
        assert m["kbxy_sqlite_backup_last_success_timestamp_seconds"] > 0
    finally:
        host.check_output(f"cp -p /root/ledger-good.db {LEDGER_DB} && systemctl reset-failed kbxy-sqlite-backup-ledger.service")
