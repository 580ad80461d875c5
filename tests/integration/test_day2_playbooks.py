# -*- coding: utf-8 -*-
"""The day-2 playbooks run the way the README shows them: against a whole inventory.

Each of playbooks/{backup,restore,db_swap,db_download,rollback,maintenance}.yml passes
--syntax-check and runs, through real ansible-playbook, against a generated inventory of
local-connection hosts (one in web, one in gpu, one in app) that carry none of the roles'
data (no sqlite_backup_databases, no uvicorn_* variables, no release on disk): every host
ends with the skip message, nothing changes, the run succeeds. What the operator names must
exist: a database or host named explicitly that lacks the data fails the play. A mixed
inventory (hosts with and without databases) shows the hosts with databases go on to the
real work (which fails here, with no units) while the others skip.
"""
from __future__ import absolute_import, division, print_function

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS = os.path.join(ROOT, ".collections")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
PLAYBOOKS = ["backup", "restore", "db_swap", "db_download", "rollback", "maintenance"]
SKIP_TASK = "Say why the host is skipped"
NO_DATABASES = "no databases configured on this host (sqlite_backup_databases is empty): skipped"

BARE_HOSTS = {"web": "bare-web", "gpu": "bare-gpu", "app": "bare-app"}
DATA_DB = {"name": "app", "path": "/nonexistent/kbxy-test/app.db", "user": "nobody"}


def inventory_text(conf_dir, extra_app_hosts=None):
    """YAML inventory: the bare hosts, plus app hosts with host variables (name -> vars).

    conf_dir: where the playbooks look for the host tool's configuration files (an empty
    directory: /etc/kbxy/sqlite-backup of this machine is none of the test's business).
    """
    app_hosts = {BARE_HOSTS["app"]: None}
    app_hosts.update(extra_app_hosts or {})
    inv = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
                 "sqlite_backup_conf_dir": str(conf_dir)},
        "children": {
            "web": {"hosts": {BARE_HOSTS["web"]: None}},
            "gpu": {"hosts": {BARE_HOSTS["gpu"]: None}},
            "app": {"hosts": app_hosts},
        },
    }}
    return json.dumps(inv, indent=1)  # JSON is YAML


class Run(object):
    def __init__(self, proc):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        try:
            data = json.loads(proc.stdout[proc.stdout.index("{"):]) if "{" in proc.stdout else None
        except ValueError:
            data = None
        assert data is not None, "ansible-playbook output is not JSON:\n%s\n%s" % (proc.stdout, proc.stderr)
        self.stats = data["stats"]
        self.tasks = []  # (task name, host, result)
        for play in data["plays"]:
            for task in play["tasks"]:
                for host, result in task["hosts"].items():
                    self.tasks.append((task["task"]["name"], host, result))

    def results(self, host):
        return [(name, res) for name, h, res in self.tasks if h == host]

    def skip_message(self, host):
        msgs = [res.get("msg") for name, res in self.results(host) if name == SKIP_TASK]
        return msgs[0] if msgs else None

    def failure(self, host):
        """(task name, msg) of the host's failed task, or None."""
        failed = [(name, res.get("msg", "")) for name, res in self.results(host) if res.get("failed")]
        return failed[0] if failed else None

    def text(self):
        return self.stdout + self.stderr


@pytest.fixture
def day2(tmp_path):
    """day2(playbook, *extra_args, inventory=None) -> Run (json callback)."""
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    (tmp_path / "no-conf").mkdir()
    default_inv = tmp_path / "hosts.yml"
    default_inv.write_text(inventory_text(tmp_path / "no-conf"))

    def run(playbook, *args, **kw):
        inv = kw.get("inventory") or default_inv
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(cfg),  # not the repository's: its callbacks would follow the JSON
            # KBXY_ANSIBLE_PLAYBOOK: another ansible-core's ansible-playbook, with the collections it
            # lacks (ansible.posix, community.general) in KBXY_EXTRA_COLLECTIONS_PATH
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join([COLLECTIONS] + [p for p in [os.environ.get("KBXY_EXTRA_COLLECTIONS_PATH")] if p]),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-local"),
            "ANSIBLE_REMOTE_TMP": str(tmp_path / ".ansible-remote"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        })
        playbook_cmd = os.environ.get("KBXY_ANSIBLE_PLAYBOOK", ANSIBLE_PLAYBOOK)
        cmd = [playbook_cmd, "-i", str(inv), os.path.join(ROOT, "playbooks", playbook + ".yml")] + list(args)
        proc = subprocess.run(cmd, env=env, check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=240)
        return Run(proc) if not kw.get("raw") else proc

    run.tmp = tmp_path
    return run


def required_args(playbook, tmp_path):
    """What each playbook needs on its command line (README), whatever the inventory."""
    if playbook == "db_swap":
        upload = tmp_path / "upload.db"
        upload.write_bytes(b"")
        return ["-e", "db_swap_src=%s" % upload, "-e", "db_swap_confirm=yes"]
    if playbook == "db_download":
        return ["-e", "db_download_dest=%s" % (tmp_path / "downloads")]
    return []


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(day2, playbook):
    proc = day2(playbook, "--syntax-check", raw=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# restore.yml needs a restore_database that some host has: see test_mixed_inventory.
@pytest.mark.parametrize("playbook", [p for p in PLAYBOOKS if p != "restore"])
def test_hosts_without_data_skip(day2, playbook):
    if playbook == "rollback" and os.path.exists("/opt/kbxy-demo/releases"):
        pytest.skip("this machine has a kbxy-demo release in /opt")
    run = day2(playbook, *required_args(playbook, day2.tmp))
    assert run.rc == 0, run.text()
    # backup.yml and restore.yml default to all hosts, the others to the app group
    hosts = sorted(BARE_HOSTS.values()) if playbook == "backup" else [BARE_HOSTS["app"]]
    assert sorted(run.stats) == hosts
    for host in hosts:
        assert run.stats[host]["changed"] == 0 and run.stats[host]["failures"] == 0, run.stats
        expected = ("no release of kbxy-demo installed on this host (/opt/kbxy-demo/releases does not exist): skipped"
                    if playbook == "rollback" else NO_DATABASES)
        assert run.skip_message(host) == expected, run.results(host)
        # the skip is the last thing the host did
        assert run.results(host)[-1][0] == SKIP_TASK


@pytest.mark.parametrize("playbook,args,host,fragment", [
    ("backup", ["-e", '{"backup_databases": ["nosuch"]}'], "bare-web", 'named ["nosuch"]'),
    ("backup", ["-e", 'backup_databases=["nosuch"]'], "bare-gpu", 'named ["nosuch"]'),
    ("backup", ["-e", "backup_databases=nosuch"], "bare-app", 'named ["nosuch"]'),
    ("backup", ["-e", "backup_hosts=bare-web"], "bare-web",
     "backup_hosts=bare-web selects bare-web: no databases configured on this host"),
    ("restore", [], "bare-web", "Set restore_database"),
    ("restore", ["-e", "restore_database=nosuch"], "bare-gpu", "restore_database=nosuch: no host of this play has it"),
    ("db_swap", ["-e", "db_swap_database=nosuch"], "bare-app", "db_swap_database (one of []"),
    ("db_swap", ["-e", "db_swap_hosts=bare-gpu"], "bare-gpu", "db_swap_hosts=bare-gpu selects bare-gpu: no databases"),
    ("db_download", ["-e", "db_download_database=nosuch"], "bare-app", "No database nosuch"),
    ("db_download", ["-e", "db_download_hosts=bare-web"], "bare-web", "db_download_hosts=bare-web selects bare-web"),
    ("maintenance", ["-e", 'maintenance_databases=["nosuch"]'], "bare-app", 'maintenance_databases (["nosuch"])'),
    ("maintenance", ["-e", "maintenance_hosts=all"], "bare-gpu", "maintenance_hosts=all selects bare-gpu"),
    ("rollback", ["-e", "kbxy_rollback_hosts=bare-web"], "bare-web", "No release to roll back to"),
])
def test_explicit_names_that_do_not_exist_fail(day2, playbook, args, host, fragment):
    run = day2(playbook, *(required_args(playbook, day2.tmp) + args))
    assert run.rc == 2, run.text()
    failure = run.failure(host)
    assert failure is not None, run.results(host)
    assert fragment in failure[1], failure
    assert run.skip_message(host) is None
    assert all(s["changed"] == 0 for s in run.stats.values()), run.stats


def test_mixed_inventory(day2):
    """Hosts with the database go on to the real work (no units here: it fails), the others skip.

    data-app has the database app, data-other the database other: in the inventory
    (sqlite_backup_databases) and on the host (the host tool's configuration file).
    """
    hosts = {}
    for host, name in (("data-app", "app"), ("data-other", "other")):
        conf = day2.tmp / ("conf-" + host)
        conf.mkdir()
        (conf / ("%s.json" % name)).write_text("{}")
        hosts[host] = {"sqlite_backup_databases": [dict(DATA_DB, name=name)], "sqlite_backup_conf_dir": str(conf)}
    inv = day2.tmp / "mixed.yml"
    inv.write_text(inventory_text(day2.tmp / "no-conf", hosts))
    no_conf = str(day2.tmp / "no-conf")

    def check(run, skipped, workers, first_real_task):
        assert run.rc == 2, run.text()
        for host, message in skipped.items():
            assert run.stats[host]["failures"] == 0 and run.stats[host]["changed"] == 0, run.stats
            assert run.skip_message(host) == message, run.results(host)
        for host in workers:
            assert run.skip_message(host) is None
            assert run.failure(host) is not None and run.failure(host)[0] == first_real_task, run.results(host)

    bare = dict((host, NO_DATABASES) for host in BARE_HOSTS.values())
    # as the README shows it: every database of every host
    check(day2("backup", inventory=inv), bare, ["data-app", "data-other"], "Run the backup services")

    def conf_of(host):
        return hosts[host]["sqlite_backup_conf_dir"] if host in hosts else no_conf

    others = list(BARE_HOSTS.values()) + ["data-other"]
    run = day2("backup", "-e", '{"backup_databases": ["app"]}', inventory=inv)
    check(run, dict((h, 'none of backup_databases ["app"] is configured on this host (no %s/<name>.json): skipped' % conf_of(h))
                    for h in others), ["data-app"], "Run the backup services")
    run = day2("restore", "-e", "restore_database=app", inventory=inv)
    check(run, dict((h, "database app is not configured on this host (no %s/app.json): skipped" % conf_of(h)) for h in others),
          ["data-app"], "Read the database's configuration and backups")
    run = day2("maintenance", "-e", "maintenance_databases=other", inventory=inv)
    check(run, {"bare-app": NO_DATABASES,
                "data-app": 'none of maintenance_databases ["other"] is configured on this host (it has ["app"]): skipped'},
          ["data-other"], "Check the integrity of each database")
