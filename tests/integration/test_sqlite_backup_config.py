# -*- coding: utf-8 -*-
"""The per-database configuration of the sqlite_backup role's host tool: its types and its checks.

1. The real host tool (roles/sqlite_backup/files/kbxy_sqlite_backup.py, run as a subprocess
   next to the collection's sqlite_ops.py, with KBXY_SQLITE_CONF pointing at a temporary
   configuration directory) refuses a configuration it cannot use with one line naming the
   key and the file and a non-zero exit, never a traceback: `check-config` (which touches no
   database) and the commands the units run (`backup`, `drill`) alike.
2. The role's configuration, rendered by ansible-playbook itself from the role's own task,
   has numbers where the tool reads numbers, whatever the templating engine (ansible-core
   2.17/2.18 rendered `| float` in `vars:` to the string "30.0", and every backup died).
"""
from __future__ import absolute_import, division, print_function

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(ROOT, "roles", "sqlite_backup", "files", "kbxy_sqlite_backup.py")
SQLITE_OPS = os.path.join(ROOT, "plugins", "module_utils", "sqlite_ops.py")
ROLE_TASKS = os.path.join(ROOT, "roles", "sqlite_backup", "tasks", "main.yml")
COLLECTIONS = os.path.join(ROOT, ".collections")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")

# What the role writes for a database with the defaults (ansible-core 2.19).
VALID = {
    "name": "app",
    "path": "/var/lib/app/app.db",
    "user": "app",
    "group": "app",
    "dest_dir": "/var/backups/kbxy-sqlite/app",
    "prefix": "app",
    "keep": {"daily": 7, "weekly": 4, "monthly": 12},
    "on_calendar": "*-*-* 02:00:00",
    "randomized_delay_sec": 900,
    "compress": "gzip",
    "check": "full",
    "lock_timeout": 30.0,
    "offsite_command": "",
    "drill_enabled": True,
    "drill_on_calendar": "Sun *-*-* 04:00:00",
    "drill_query": "",
    "metrics_file": "/var/lib/prometheus/node-exporter/kbxy_sqlite_backup_app.prom",
    "drill_metrics_file": "/var/lib/prometheus/node-exporter/kbxy_sqlite_restore_drill_app.prom",
}


@pytest.fixture
def tool(tmp_path):
    """tool(*args, conf=None, raw=None, name='app') -> CompletedProcess of the host tool.

    conf: the dict written as <conf dir>/<name>.json; raw: the file's text instead.
    """
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(SQLITE_OPS, str(lib / "sqlite_ops.py"))
    shutil.copy(TOOL, str(lib / "kbxy_sqlite_backup.py"))
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()

    def run(*args, **kw):
        name = kw.get("name", "app")
        if kw.get("raw") is not None:
            (conf_dir / ("%s.json" % name)).write_bytes(kw["raw"] if isinstance(kw["raw"], bytes) else kw["raw"].encode())
        elif kw.get("conf") is not None:
            (conf_dir / ("%s.json" % name)).write_text(json.dumps(kw["conf"], indent=2))
        env = dict(os.environ, KBXY_SQLITE_LIB=str(lib), KBXY_SQLITE_CONF=str(conf_dir))
        for var in ("RUNTIME_DIRECTORY", "JOURNAL_STREAM", "INVOCATION_ID"):  # as on a terminal, not under systemd
            env.pop(var, None)
        return subprocess.run([sys.executable, str(lib / "kbxy_sqlite_backup.py")] + list(args), env=env, check=False,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)

    run.conf_file = lambda name="app": str(conf_dir / ("%s.json" % name))
    run.tmp = tmp_path
    return run


def config(**changes):
    out = dict(VALID)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def assert_refused(proc, conf_file, *fragments):
    """Non-zero exit, no traceback, one line on stderr naming the file and every fragment."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert conf_file in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_valid_config_passes_check_config(tool):
    proc = tool("check-config", "app", conf=VALID)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout) == {"ok": True, "configs": {"app": tool.conf_file()}}


def test_check_config_without_names_checks_every_file(tool):
    tool("check-config", conf=config(name="other"), name="other")
    proc = tool("check-config", conf=VALID)
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["configs"]) == ["app", "other"]


def test_minimal_hand_written_config_passes(tool):
    required = ("name", "path", "user", "dest_dir", "prefix", "keep", "compress", "check", "lock_timeout")
    minimal = dict((k, VALID[k]) for k in required)
    proc = tool("check-config", "app", conf=dict(minimal, lock_timeout=5))  # an int is a number too
    assert proc.returncode == 0, proc.stderr


def real_database(tool):
    """Changes to VALID for a real database, backup directory and metrics files under tmp."""
    import sqlite3  # pylint: disable=import-outside-toplevel
    db = tool.tmp / "app.db"
    if not db.exists():
        con = sqlite3.connect(str(db))
        con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        con.execute("INSERT INTO items VALUES (1)")
        con.commit()
        con.close()
        (tool.tmp / "backups").mkdir()
    return {"path": str(db), "dest_dir": str(tool.tmp / "backups"), "metrics_file": str(tool.tmp / "backup.prom"),
            "drill_metrics_file": str(tool.tmp / "drill.prom"), "drill_query": "SELECT count(*) > 0 FROM items"}


# ansible-core 2.17/2.18 wrote this: the backup died in sqlite3.connect(timeout="30.0") with a TypeError traceback.
@pytest.mark.parametrize("command", ["check-config", "backup", "drill", "status"])
def test_lock_timeout_as_a_string_is_refused(tool, command):
    proc = tool(command, "app", conf=config(lock_timeout="30.0", **real_database(tool)))
    line = assert_refused(proc, tool.conf_file(), "lock_timeout", '"30.0"')
    assert "number" in line
    assert not os.listdir(str(tool.tmp / "backups"))


def test_randomized_delay_as_a_string_is_refused(tool):
    assert_refused(tool("check-config", "app", conf=config(randomized_delay_sec="900")), tool.conf_file(),
                   "randomized_delay_sec", '"900"')


@pytest.mark.parametrize("key", ["name", "path", "user", "dest_dir", "prefix", "keep", "compress", "check", "lock_timeout"])
def test_missing_required_key_is_refused(tool, key):
    line = assert_refused(tool("check-config", "app", conf=config(**{key: None})), tool.conf_file(), '"%s"' % key)
    assert "missing" in line


@pytest.mark.parametrize("changes,fragments", [
    ({"lock_timeout": -1}, ("lock_timeout", ">= 0")),
    ({"lock_timeout": True}, ("lock_timeout", "true")),
    ({"randomized_delay_sec": -5}, ("randomized_delay_sec", ">= 0")),
    ({"randomized_delay_sec": 1.5}, ("randomized_delay_sec", "integer")),
    ({"compress": "zstd"}, ("compress", "gzip", "none")),
    ({"check": "thorough"}, ("check", "full", "quick")),
    ({"keep": 7}, ("keep", "object")),
    ({"keep": {"daily": "7"}}, ("keep.daily", '"7"')),
    ({"keep": {"daily": -2}}, ("keep.daily", ">= -1")),
    ({"keep": {"fortnightly": 2}}, ("keep.fortnightly", "last, hourly")),
    ({"drill_enabled": "True"}, ("drill_enabled", "true or false")),
    ({"path": "app.db"}, ("path", "absolute")),
    ({"dest_dir": ""}, ("dest_dir", "absolute")),
    ({"metrics_file": "metrics.prom"}, ("metrics_file", "absolute")),
    ({"user": ""}, ("user", "empty")),
    ({"prefix": "a/b"}, ("prefix", "/")),
    ({"offsite_command": "push 'unclosed"}, ("offsite_command", "quotation")),
    ({"name": "other"}, ("name", "file's name app")),
    ({"lock_timout": 30}, ("lock_timout", "not a known key", 'did you mean "lock_timeout"')),
])
def test_wrong_value_is_refused(tool, changes, fragments):
    assert_refused(tool("check-config", "app", conf=config(**changes)), tool.conf_file(), *fragments)


def test_negative_timeout_fails_the_backup_command_too(tool):
    assert_refused(tool("backup", "app", conf=config(lock_timeout=-1)), tool.conf_file(), "lock_timeout", ">= 0")


def test_every_problem_is_one_line(tool):
    proc = tool("check-config", "app", conf=config(lock_timeout="30.0", randomized_delay_sec="900", path=None))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert all(tool.conf_file() in ln for ln in lines), lines


@pytest.mark.parametrize("raw,fragment", [
    ('{"name": "app", "path": ', "not valid JSON"),
    ("", "not valid JSON"),
    (b"\xff\xfe garbage", "not UTF-8"),
    ('["app"]', "JSON object"),
])
def test_non_json_file_is_refused(tool, raw, fragment):
    assert_refused(tool("check-config", "app", raw=raw), tool.conf_file(), fragment)


def test_missing_config_file_is_refused(tool):
    assert_refused(tool("check-config", "nosuchdb"), tool.conf_file("nosuchdb"), "no such file")
    assert_refused(tool("backup", "nosuchdb"), tool.conf_file("nosuchdb"), "no such file")


def test_database_name_cannot_leave_the_config_dir(tool):
    proc = tool("check-config", "../app")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "../app" in proc.stderr


def test_valid_config_still_backs_up(tool):
    """The validation lets a real backup and a restore drill through."""
    proc = tool("backup", "app", conf=config(lock_timeout=5, **real_database(tool)))
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(json.loads(proc.stdout)["backup_file"])
    assert "kbxy_sqlite_backup_last_success{database=\"app\"} 1" in (tool.tmp / "backup.prom").read_text()
    proc = tool("drill", "app")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def role_task(name):
    with open(ROLE_TASKS) as f:
        found = [t for t in yaml.safe_load(f) if t.get("name") == name]
    assert len(found) == 1, "tasks/main.yml: no task %r" % name
    return found[0]


@pytest.mark.integration
def test_role_renders_typed_config(tmp_path):
    """The role's own task, run by ansible-playbook, gives the JSON the tool accepts (typed numbers).

    Runs the tasks of tasks/main.yml that complete the entries and write the files, as they
    are (less owner and group), with the role's defaults; the tool's check-config must accept
    the files. KBXY_ANSIBLE_PLAYBOOK runs them with another ansible-playbook (another core).
    """
    with open(os.path.join(ROOT, "roles", "sqlite_backup", "defaults", "main.yml")) as f:
        defaults = yaml.safe_load(f)
    play_vars = dict(defaults)
    play_vars["sqlite_backup_databases"] = [
        {"name": "app", "path": "/var/lib/app/app.db", "user": "app"},
        {"name": "ledger", "path": "/srv/ledger.db", "user": "ledger", "lock_timeout": 5, "randomized_delay_sec": "60",
         "keep": {"last": 2}, "drill_enabled": "yes"},
    ]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # The role's write task as it is, less the owner and group (root and the database's group).
    write = role_task("Write the per-database configuration of the host command")
    write["ansible.builtin.copy"] = dict((k, v) for k, v in write["ansible.builtin.copy"].items() if k not in ("owner", "group"))
    tasks = [role_task("Start from an empty list of completed entries"),
             role_task("Complete each database entry with the role defaults"),
             write]
    play_vars["sqlite_backup_conf_dir"] = str(out_dir)
    play = [{"name": "render", "hosts": "localhost", "gather_facts": False, "vars": play_vars, "tasks": tasks}]
    pb = tmp_path / "play.yml"
    pb.write_text(json.dumps(play, indent=1))
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(cfg), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / ".ansible-local"), ANSIBLE_REMOTE_TMP=str(tmp_path / ".ansible-remote"),
               ANSIBLE_RETRY_FILES_ENABLED="0")
    playbook = os.environ.get("KBXY_ANSIBLE_PLAYBOOK", ANSIBLE_PLAYBOOK)
    proc = subprocess.run([playbook, "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
                           str(pb)], env=env, check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    app = json.loads((out_dir / "app.json").read_text())
    assert app == VALID
    ledger = json.loads((out_dir / "ledger.json").read_text())
    assert ledger["lock_timeout"] == 5.0 and isinstance(ledger["lock_timeout"], float)
    assert ledger["randomized_delay_sec"] == 60 and isinstance(ledger["randomized_delay_sec"], int)
    assert ledger["keep"] == {"last": 2} and ledger["drill_enabled"] is True

    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(SQLITE_OPS, str(lib / "sqlite_ops.py"))
    env = dict(os.environ, KBXY_SQLITE_LIB=str(lib), KBXY_SQLITE_CONF=str(out_dir))
    check = subprocess.run([sys.executable, TOOL, "check-config", "app", "ledger"], env=env, check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert check.returncode == 0, check.stderr
