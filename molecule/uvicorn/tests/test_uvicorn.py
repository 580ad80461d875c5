"""kbxy.platform.uvicorn: releases, hardened socket-activated units, health-gated deploys.

converge deployed release 1.0.0 of the demo app. The deploy tests run
molecule/uvicorn/deploy.yml with ansible-playbook against molecule's inventory (both
hosts at once), so they can read the play's output and exit status: 2.0.0 while a
bounded client loops requests inside each host, then a broken 3.0.0 that must be
rolled back. All traffic goes to the instances' unix sockets inside the containers.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = Path(__file__).resolve().parent.parent
DEMO_SOURCE = SCENARIO_DIR.parents[1] / "roles" / "uvicorn" / "files" / "demo_app"
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")
HOSTS = sorted(testinfra_hosts)

APP = "kbxy-demo"
SOCKETS = [f"/run/{APP}/1.sock", f"/run/{APP}/2.sock"]
SECRET = "molecule-secret-9f4c2e7a1b"  # uvicorn_secret_env in molecule.yml
RESTART_SEC = 5  # the role's default uvicorn_restart_sec
V3_ERROR = "kbxy-demo 3.0.0 refuses to start: database migration 0003 is missing"


def run_playbook(*extra_vars, timeout=420):
    args = ["ansible-playbook", "-v", "-i", INVENTORY, str(SCENARIO_DIR / "deploy.yml")]
    for var in extra_vars:
        args += ["-e", var]
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=os.environ.copy(), check=False)
    print(f"{' '.join(args)}: rc={proc.returncode} in {time.monotonic() - started:.1f} s")
    return proc


class Client:
    """The bounded client (molecule/uvicorn/files/kbxy_client.py) running inside a host."""

    def __init__(self, container, *args, max_seconds=240):
        self.container = container
        self.stop_file = f"/tmp/kbxy-client-stop-{os.getpid()}-{time.monotonic_ns()}"
        ready = self.stop_file + ".ready"
        cmd = ["docker", "exec", container, "python3", "/usr/local/bin/kbxy-client", "--stop-file", self.stop_file,
               "--ready-file", ready, "--max-seconds", str(max_seconds), "--max-requests", "20000", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while subprocess.run(["docker", "exec", container, "test", "-e", ready], check=False).returncode != 0:
            assert time.monotonic() < deadline, "client did not start"
            time.sleep(0.2)

    def stop(self):
        subprocess.run(["docker", "exec", self.container, "touch", self.stop_file], check=True)
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return json.loads(out)


def http_get(host, path, sock=SOCKETS[0]):
    """GET over the instance's unix socket from inside the host; returns (status, body)."""
    script = (
        "import http.client,socket,sys\n"
        "c=http.client.HTTPConnection('localhost',timeout=30)\n"
        "s=socket.socket(socket.AF_UNIX);s.settimeout(30);s.connect(sys.argv[1]);c.sock=s\n"
        "c.request('GET',sys.argv[2]);r=c.getresponse();print(r.status);print(r.read().decode())\n"
    )
    out = host.check_output(f"python3 -c \"{script}\" {sock} {path}")
    status, _sep, body = out.partition("\n")
    return int(status), body


def current_release(host):
    return os.path.basename(host.file(f"/opt/{APP}/current").linked_to)


def main_pid(host, unit):
    return int(host.check_output(f"systemctl show -p MainPID --value {unit}"))


@pytest.fixture(scope="session")
def deploy_v2():
    """Deploy 2.0.0 on both hosts while a client loops requests over both sockets."""
    for name in HOSTS:
        if current_release(testinfra.get_host(f"docker://{name}")) != "1.0.0":
            assert run_playbook("uvicorn_app_version=1.0.0").returncode == 0
            break
    clients = {name: Client(name, *sum((["--socket", s] for s in SOCKETS), [])) for name in HOSTS}
    proc = run_playbook("uvicorn_app_version=2.0.0")
    results = {name: client.stop() for name, client in clients.items()}
    print(json.dumps(results, indent=1))
    return proc, results


@pytest.fixture(scope="session")
def deploy_v3_broken(deploy_v2):
    """Deploy a 3.0.0 that raises at import: its health check never answers."""
    workdir = Path(tempfile.mkdtemp(prefix="kbxy-demo-v3-"))
    try:
        source = workdir / "demo_app"
        shutil.copytree(DEMO_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
        with open(source / "src" / "kbxy_demo" / "main.py", "a", encoding="utf-8") as main:
            main.write(f"\nraise RuntimeError({V3_ERROR!r})\n")
        proc = run_playbook("uvicorn_app_version=3.0.0", "uvicorn_app_source_type=directory",
                            f"uvicorn_app_source={source}")
    finally:
        shutil.rmtree(workdir)
    return proc


def test_layout_and_user(host):
    user = host.user(APP)
    assert user.shell == "/usr/sbin/nologin"
    assert user.group == APP
    data = host.file(f"/var/lib/{APP}")
    assert (data.user, data.group, data.mode) == (APP, APP, 0o750)
    release = host.file(f"/opt/{APP}/releases/1.0.0")
    assert release.user == "root" and release.mode == 0o755
    assert host.file(f"/opt/{APP}/releases/1.0.0/venv/bin/uvicorn").is_file
    static = host.file(f"/var/www/{APP}/index.html")
    assert static.is_file and "kbxy-demo" in static.content_string


def test_env_file_is_private(host):
    env = host.file(f"/etc/{APP}/{APP}.env")
    assert (env.user, env.group, env.mode) == ("root", APP, 0o600)
    assert SECRET in env.content_string


def test_installed_units_verify_cleanly(host):
    cmd = host.run(f"systemd-analyze verify {APP}@1.service {APP}@1.socket")
    assert cmd.rc == 0 and cmd.stdout.strip() + cmd.stderr.strip() == "", cmd.stdout + cmd.stderr


def test_units_enabled_and_socket_activated(host):
    for unit in (f"{APP}@1.socket", f"{APP}@2.socket", f"{APP}@1.service", f"{APP}@2.service"):
        assert host.service(unit).is_enabled, unit
        assert host.service(unit).is_running, unit
    execstart = host.check_output(f"systemctl show -p ExecStart --value {APP}@1.service")
    for flag in ("--fd 3", "--workers 2", "--proxy-headers", "--forwarded-allow-ips"):
        assert flag in execstart
    assert host.check_output(f"systemctl show -p Restart --value {APP}@1.service") == "always"
    assert host.check_output(f"systemctl show -p LimitNOFILE --value {APP}@1.service") == "65535"


def test_security_exposure_at_most_1_0(host):
    out = host.check_output(f"systemd-analyze security --no-pager {APP}@1.service")
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"{host.backend.get_hostname()}: systemd-analyze security {APP}@1.service exposure {score}")
    assert score <= 1.0


def test_sandbox_seen_from_inside_the_service(host):
    status, body = http_get(host, "/api/_diagnostics")
    assert status == 200, body
    diag = json.loads(body)
    print(diag)
    assert diag["uid"] != 0
    assert diag["cap_eff"] == "0000000000000000" and diag["cap_bnd"] == "0000000000000000"
    assert diag["no_new_privs"] == "1" and diag["seccomp"] == "2"
    assert diag["write_etc"].startswith("denied") and diag["write_usr"].startswith("denied")
    assert diag["write_opt"].startswith("denied")
    assert diag["list_home"].startswith("denied") and diag["list_root"].startswith("denied")
    assert diag["write_data"] == "allowed"
    # the master process too, seen from outside
    proc_status = host.file(f"/proc/{main_pid(host, f'{APP}@1.service')}/status").content_string
    assert re.search(r"^CapEff:\s+0+$", proc_status, re.M)


def test_demo_app_crud_and_health(host):
    status, body = http_get(host, "/api/health")
    assert status == 200 and json.loads(body)["journal_mode"] == "wal"
    script = (
        "import http.client,socket,json\n"
        "def req(m,p,b=None):\n"
        " c=http.client.HTTPConnection('localhost',timeout=30);s=socket.socket(socket.AF_UNIX)\n"
        f" s.connect('{SOCKETS[1]}');c.sock=s\n"
        " c.request(m,p,body=json.dumps(b) if b else None,headers={'Content-Type':'application/json'})\n"
        " r=c.getresponse();return r.status,r.read()\n"
        "st,b=req('POST','/api/items',{'name':'probe'});assert st==201,(st,b);i=json.loads(b)['id']\n"
        "assert req('PUT',f'/api/items/{i}',{'name':'probe2'})[0]==200\n"
        "assert json.loads(req('GET',f'/api/items/{i}')[1])['name']=='probe2'\n"
        "assert req('DELETE',f'/api/items/{i}')[0]==204\n"
        "assert req('GET',f'/api/items/{i}')[0]==404\n"
        "print('crud ok')\n"
    )
    assert host.check_output(f"python3 -c \"{script}\"") == "crud ok"


def test_kill_9_of_master_is_restarted(host):
    unit = f"{APP}@2.service"
    old = main_pid(host, unit)
    assert old > 0
    host.run(f"kill -9 {old}")
    started = time.monotonic()
    deadline = started + RESTART_SEC + 5
    while True:
        pid = main_pid(host, unit)
        if pid not in (0, old) and http_get(host, "/api/health", SOCKETS[1])[0] == 200:
            break
        assert time.monotonic() < deadline, f"{unit} not back within RestartSec+5 s"
        time.sleep(0.5)
    print(f"{unit} back after {time.monotonic() - started:.1f} s (new MainPID {pid})")
    assert host.service(unit).is_enabled


def test_restart_under_load_refuses_no_connection(host):
    unit = f"{APP}@1.service"
    client = Client(host.backend.get_hostname(), "--socket", SOCKETS[0], "--interval", "0.01", max_seconds=90)
    try:
        for _attempt in range(2):
            time.sleep(1)
            host.run_expect([0], f"systemctl restart {unit}")
            assert http_get(host, "/api/health")[0] == 200
        time.sleep(1)
    finally:
        result = client.stop()
    print(result)
    assert result["failure_count"] == 0, result["failures"]
    assert result["ok"] > 20


def test_deploy_v2_under_load_is_seamless(host, deploy_v2):
    proc, results = deploy_v2
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = results[host.backend.get_hostname()]
    assert result["failure_count"] == 0, result["failures"]
    assert result["versions"][0] == "1.0.0" and result["versions"][-1] == "2.0.0", result["versions"]
    assert SECRET not in proc.stdout + proc.stderr


def test_deploy_v3_broken_is_rolled_back(host, deploy_v3_broken):
    proc = deploy_v3_broken
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert V3_ERROR in output, output[-4000:]
    assert "Rolled back" in output
    assert SECRET not in output
    assert current_release(host) == "2.0.0"
    assert not host.file(f"/opt/{APP}/releases/3.0.0").exists
    for sock in SOCKETS:
        status, body = http_get(host, "/api/version", sock)
        assert status == 200 and json.loads(body)["version"] == "2.0.0"


def test_wrong_variable_stops_before_any_change(deploy_v3_broken):
    proc = run_playbook("uvicorn_listen=udp")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "uvicorn_listen" in output
    assert "changed=0" in output and "changed=1" not in output
