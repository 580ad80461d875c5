# -*- coding: utf-8 -*-
# Copyright: kbxy.platform developers
# SPDX-License-Identifier: MIT
"""Host command of the kbxy.platform.sqlite_backup role (/usr/local/bin/kbxy-sqlite-backup).

Installed as /usr/local/lib/kbxy/kbxy_sqlite_backup.py; the command in /usr/local/bin
is a two-line launcher the role writes.

A thin wrapper around the collection's sqlite_ops.py (installed next to it in
/usr/local/lib/kbxy): every SQLite operation (backup, verification, retention,
restore) is sqlite_ops' own code.  This file only adds what a service needs:
the per-database configuration file, the node_exporter textfile metrics, the
off-site command, the restore drill's sanity query and failure reporting.

  kbxy-sqlite-backup backup NAME         verified backup + retention + metrics + off-site
  kbxy-sqlite-backup drill NAME [--backup FILE]   restore newest (or FILE) into a temp dir and check it
  kbxy-sqlite-backup extract NAME --backup FILE --to PATH   verified plain copy of a backup
  kbxy-sqlite-backup status NAME         configuration, backups and newest manifest (JSON)
  kbxy-sqlite-backup check-config [NAME...]  check the configuration files (default: all), touch no database
  kbxy-sqlite-backup notify-failure UNIT log a unit's failure at err priority
  kbxy-sqlite-backup publish-metrics NAME backup|drill   (root, ExecStopPost=+) publish the staged metrics

The services run sandboxed as the application's user and cannot write the
node_exporter textfile directory: they stage their metrics in their
RuntimeDirectory and ExecStopPost=+ publishes the file atomically (and marks
the run failed when systemd says so, for example after a timeout or a kill).

Every command that reads a configuration checks it first (CONF_SCHEMA below: types,
ranges, required and unknown keys): a file it cannot use is one line on stderr per
problem, naming the file and the key, and exit status 78 (EX_CONFIG), never a traceback.
"""
import argparse
import difflib
import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

LIB_DIR = os.environ.get("KBXY_SQLITE_LIB", "/usr/local/lib/kbxy")
CONF_DIR = os.environ.get("KBXY_SQLITE_CONF", "/etc/kbxy/sqlite-backup")
sys.path.insert(0, LIB_DIR)
import sqlite_ops  # noqa: E402  pylint: disable=wrong-import-position


EX_CONFIG = 78  # sysexits.h: configuration error
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(Exception):
    """A configuration the tool cannot use; ``problems``: one line each (file and key named)."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = problems


def _shown(value):
    """A value as the JSON file has it, with its kind (for messages)."""
    text = json.dumps(value, sort_keys=True)
    text = text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, bool) or value is None:
        return text
    kind = {str: "the string", int: "the integer", float: "the number", list: "the list", dict: "the object"}
    return "%s %s" % (kind.get(type(value), type(value).__name__), text)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value, empty_ok=True):
    if not isinstance(value, str):
        return "must be a string, not %s" % _shown(value)
    if not empty_ok and not value:
        return "must not be empty"
    return None


def _nonempty(value):
    return _text(value, empty_ok=False)


def _absolute(value, empty_ok=False):
    problem = _text(value)
    if problem is None and not (value.startswith("/") or (empty_ok and value == "")):
        problem = "must be an absolute path%s, not %s" % (" or empty" if empty_ok else "", _shown(value))
    return problem


def _path_or_empty(value):
    return _absolute(value, empty_ok=True)


def _name(value):
    if not isinstance(value, str) or not NAME_RE.match(value):
        return "must be letters, digits, _ and - only, not %s" % _shown(value)
    return None


def _prefix(value):
    problem = _nonempty(value)
    if problem is None and "/" in value:
        problem = "must not contain /, not %s" % _shown(value)
    return problem


def _choice(*choices):
    def check(value):
        if value not in choices or not isinstance(value, str):
            return "must be one of %s, not %s" % (", ".join('"%s"' % c for c in choices), _shown(value))
        return None
    return check


def _seconds(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "must be a number of seconds (JSON number, not quoted), not %s" % _shown(value)
    if not math.isfinite(value) or value < 0:
        return "must be a number of seconds >= 0, not %s" % _shown(value)
    return None


def _count_seconds(value):
    if not _is_int(value):
        return "must be an integer number of seconds (JSON integer, not quoted), not %s" % _shown(value)
    if value < 0:
        return "must be an integer >= 0, not %s" % _shown(value)
    return None


def _flag(value):
    if not isinstance(value, bool):
        return "must be true or false (JSON boolean, not quoted), not %s" % _shown(value)
    return None


def _command(value):
    problem = _text(value)
    if problem is None:
        try:
            shlex.split(value)
        except ValueError as e:
            problem = "cannot be split into arguments (%s): %s" % (e, _shown(value))
    return problem


def _keep(value):
    """Retention counts: the problems as (key, message); empty when fine."""
    if not isinstance(value, dict):
        return [("keep", "must be an object of retention counts (%s), not %s"
                 % (", ".join(sqlite_ops.RETENTION_RULES), _shown(value)))]
    problems = []
    for rule in sorted(value):
        count = value[rule]
        if rule not in sqlite_ops.RETENTION_RULES:
            problems.append(("keep.%s" % rule, "is not a retention rule (use %s)" % ", ".join(sqlite_ops.RETENTION_RULES)))
        elif count is not None and not _is_int(count):
            problems.append(("keep.%s" % rule, "must be an integer (JSON integer, not quoted), not %s" % _shown(count)))
        elif count is not None and count < -1:
            problems.append(("keep.%s" % rule, "must be >= -1 (0 turns the rule off, -1 keeps all), not %s" % _shown(count)))
    return problems


# key: (required, check). Required: what the commands and the day-2 playbooks read
# unconditionally; the others are written by the role and read with a default or not at all
# (the timers have them as unit settings) but, when present, must have the right type.
CONF_SCHEMA = {
    "name": (True, _name),
    "path": (True, _absolute),
    "user": (True, _nonempty),
    "group": (False, _nonempty),
    "dest_dir": (True, _absolute),
    "prefix": (True, _prefix),
    "keep": (True, None),  # checked by _keep (its own keys are named keep.<rule>)
    "on_calendar": (False, _nonempty),
    "randomized_delay_sec": (False, _count_seconds),
    "compress": (True, _choice("gzip", "none")),
    "check": (True, _choice("full", "quick")),
    "lock_timeout": (True, _seconds),
    "offsite_command": (False, _command),
    "drill_enabled": (False, _flag),
    "drill_on_calendar": (False, _nonempty),
    "drill_query": (False, _text),
    "metrics_file": (False, _path_or_empty),
    "drill_metrics_file": (False, _path_or_empty),
}


def conf_path(name):
    return os.path.join(CONF_DIR, "%s.json" % name)


def check_conf(conf, path, name=None):
    """The problems of a parsed configuration, one line each (empty: usable)."""
    if not isinstance(conf, dict):
        return ["%s: the configuration must be a JSON object, not %s" % (path, _shown(conf))]
    found = []
    for key in sorted(CONF_SCHEMA):
        required, check = CONF_SCHEMA[key]
        if key not in conf:
            if required:
                found.append((key, "is missing (a required key)"))
            continue
        if key == "keep":
            found.extend(_keep(conf[key]))
            continue
        problem = check(conf[key])
        if problem:
            found.append((key, problem))
    if name is not None and conf.get("name") != name and not any(problem[0] == "name" for problem in found):
        found.append(("name", "must be the file's name %s, not %s" % (name, _shown(conf.get("name")))))
    for key in sorted(k for k in conf if k not in CONF_SCHEMA):
        close = difflib.get_close_matches(key, list(CONF_SCHEMA), n=1)
        found.append((key, "is not a known key%s" % (' (did you mean "%s"?)' % close[0] if close else "")))
    return ['%s: "%s" %s' % (path, key, msg) for key, msg in found]


def load_conf(name):
    """The checked configuration of database NAME; ConfigError when it cannot be used."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(["database name %s: letters, digits, _ and - only (the name of a file in %s)"
                           % (json.dumps(name), CONF_DIR)])
    path = conf_path(name)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(["%s: no such file (is %s in sqlite_backup_databases?)" % (path, name)]) from None
    except OSError as e:
        raise ConfigError(["%s: cannot read it: %s" % (path, e.strerror or e)]) from None
    try:
        conf = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(["%s: not valid JSON (not UTF-8 text: %s at byte %d)" % (path, e.reason, e.start)]) from None
    except ValueError as e:
        raise ConfigError(["%s: not valid JSON (%s)" % (path, e)]) from None
    problems = check_conf(conf, path, name)
    if problems:
        raise ConfigError(problems)
    return conf


def err(msg):
    # "<3>" is the err priority for journald (SyslogLevelPrefix=yes, systemd's default), written
    # when run by systemd (it sets INVOCATION_ID, and JOURNAL_STREAM when stderr goes to the
    # journal); elsewhere (a terminal, an Ansible task) the message alone.
    by_systemd = os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID")
    sys.stderr.write("%s%s\n" % ("<3>" if by_systemd else "", msg))
    sys.stderr.flush()


def newest_backup(conf):
    items = sqlite_ops.list_backups(conf["dest_dir"], conf["prefix"])
    if not items:
        return None, None
    name, dt = max(items, key=lambda it: (it[1], it[0]))
    return os.path.join(conf["dest_dir"], name), dt


def metrics_target(conf, kind):
    """Staged file in the unit's RuntimeDirectory when run by systemd, else the textfile itself."""
    final = conf.get("metrics_file" if kind == "backup" else "drill_metrics_file")
    if not final:
        return None
    run_dir = os.environ.get("RUNTIME_DIRECTORY")
    return os.path.join(run_dir.split(":")[0], "metrics.prom") if run_dir else final


def write_metrics(path, metrics, labels):
    """node_exporter textfile format, written atomically."""
    if not path:
        return
    lab = ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"')) for k, v in sorted(labels.items()))
    lines = []
    for key, (help_text, value) in sorted(metrics.items()):
        lines.append("# HELP %s %s" % (key, help_text))
        lines.append("# TYPE %s gauge" % key)
        lines.append("%s{%s} %s" % (key, lab, repr(float(value)) if isinstance(value, float) else value))
    sqlite_ops.write_text_atomic(path, "\n".join(lines) + "\n", mode=0o644)


def cmd_backup(conf):
    t0 = time.time()
    result, error, offsite_ok = None, None, None
    try:
        result = sqlite_ops.backup_database(conf["path"], conf["dest_dir"], prefix=conf["prefix"],
                                            compress=conf["compress"], check=conf["check"], keep=conf["keep"],
                                            mode=0o600, lock_timeout=conf["lock_timeout"], create_dest_dir=False)
    except sqlite_ops.SqliteOpsError as e:
        error = e.msg
    except (OSError, ValueError) as e:
        error = "%s: %s" % (conf["path"], e)
    if result and conf.get("offsite_command"):
        argv = shlex.split(conf["offsite_command"]) + [result["backup_file"]]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
        offsite_ok = proc.returncode == 0
        if not offsite_ok:
            error = "off-site command %s exited with %d for %s" % (argv[0], proc.returncode, result["backup_file"])
    newest, newest_dt = newest_backup(conf)
    metrics = {
        "kbxy_sqlite_backup_last_run_timestamp_seconds": ("Start of the last backup run (Unix time).", round(t0, 3)),
        "kbxy_sqlite_backup_last_duration_seconds": ("Duration of the last backup run.", round(time.time() - t0, 3)),
        "kbxy_sqlite_backup_last_success": ("1 if the last backup run succeeded, 0 if it failed.", 0 if error else 1),
        "kbxy_sqlite_backup_last_success_timestamp_seconds": (
            "Time of the newest verified backup on disk (Unix time, 0 if none).",
            round(newest_dt.timestamp(), 3) if newest_dt else 0),
        "kbxy_sqlite_backup_last_size_bytes": (
            "Size of the newest verified backup file.", os.stat(newest).st_size if newest else 0),
        "kbxy_sqlite_backup_backups": (
            "Number of backups kept on disk.", len(sqlite_ops.list_backups(conf["dest_dir"], conf["prefix"]))),
    }
    if conf.get("offsite_command"):
        metrics["kbxy_sqlite_backup_offsite_last_success"] = (
            "1 if the last off-site copy succeeded, 0 if it failed or was not attempted.", 1 if offsite_ok else 0)
    write_metrics(metrics_target(conf, "backup"), metrics, {"database": conf["name"]})
    if result:
        sys.stdout.write(json.dumps({"backup_file": result["backup_file"], "size_bytes": result["size_bytes"],
                                     "sha256": result["sha256"], "elapsed_s": result["elapsed_s"],
                                     "kept": len(result["kept"]), "pruned": [os.path.basename(p) for p in result["pruned"]],
                                     "offsite": offsite_ok}, sort_keys=True) + "\n")
    if error:
        err("backup of %s failed: %s" % (conf["path"], error))
        return 1
    return 0


def _plain_copy(backup_file, dest):
    """Checks the backup against its manifest, then restores it into the new file dest (sqlite_ops)."""
    man = sqlite_ops.verify_backup_file(backup_file)
    sqlite_ops.restore_backup(backup_file, dest, method="rename")
    check = sqlite_ops.check_integrity(dest, check="full", foreign_keys=False)
    if not check["ok"]:
        raise sqlite_ops.DatabaseCorrupt(sqlite_ops.integrity_message(check))
    return man, check


def cmd_drill(conf, backup_file=None):
    t0 = time.time()
    if backup_file is None:
        backup_file = newest_backup(conf)[0]
    query = conf.get("drill_query", "")
    error, out = None, {"backup_file": backup_file, "query": query}
    if backup_file is None:
        error = "no backup of %s in %s" % (conf["name"], conf["dest_dir"])
    else:
        work = tempfile.mkdtemp(prefix="kbxy-drill-")
        dest = os.path.join(work, "drill.db")
        try:
            man, check = _plain_copy(backup_file, dest)
            out.update(created=man.get("created"), integrity=check["check"], page_count=check["page_count"])
            if query:
                conn = sqlite_ops.open_ro(dest)
                try:
                    row = conn.execute(query).fetchone()
                finally:
                    conn.close()
                out["query_result"] = row[0] if row else None
                if not row or not row[0]:
                    error = "sanity query %r returned %r" % (query, row)
        except sqlite_ops.SqliteOpsError as e:
            error = e.msg
        except (OSError, ValueError, KeyError, sqlite_ops.sqlite3.Error) as e:
            error = "%s: %s" % (backup_file, e)
        finally:
            for n in os.listdir(work):
                os.unlink(os.path.join(work, n))
            os.rmdir(work)
    write_metrics(metrics_target(conf, "drill"), {
        "kbxy_sqlite_restore_drill_last_run_timestamp_seconds": ("Start of the last restore drill (Unix time).", round(t0, 3)),
        "kbxy_sqlite_restore_drill_last_success": ("1 if the last restore drill passed, 0 if it failed.", 0 if error else 1),
        "kbxy_sqlite_restore_drill_last_duration_seconds": ("Duration of the last restore drill.", round(time.time() - t0, 3)),
    }, {"database": conf["name"]})
    out["ok"] = error is None
    sys.stdout.write(json.dumps(out, sort_keys=True, default=str) + "\n")
    if error:
        err("RESTORE DRILL FAILED for %s: %s" % (conf["name"], error))
        return 1
    return 0


def cmd_extract(conf, backup_file, to):
    if os.path.dirname(os.path.abspath(backup_file)) != os.path.abspath(conf["dest_dir"]):
        backup_file = os.path.join(conf["dest_dir"], os.path.basename(backup_file))
    try:
        man, check = _plain_copy(backup_file, to)
    except sqlite_ops.SqliteOpsError as e:
        err("%s: %s" % (backup_file, e.msg))
        return 1
    sys.stdout.write(json.dumps({"backup_file": backup_file, "path": to, "created": man.get("created"),
                                 "integrity": check["check"]}, sort_keys=True) + "\n")
    return 0


def cmd_publish_metrics(conf, kind):
    final = conf.get("metrics_file" if kind == "backup" else "drill_metrics_file")
    run_dir = os.environ.get("RUNTIME_DIRECTORY")
    if not final or not run_dir:
        return 0
    staged = os.path.join(run_dir.split(":")[0], "metrics.prom")
    if not os.path.exists(staged):
        # Killed before it wrote anything: still tell monitoring that the run failed.
        metric = "kbxy_sqlite_backup_last_success" if kind == "backup" else "kbxy_sqlite_restore_drill_last_success"
        text = '# TYPE %s gauge\n%s{database="%s"} 0\n' % (metric, metric, conf["name"])
    else:
        with open(staged) as f:
            text = f.read()
        if os.environ.get("SERVICE_RESULT", "success") != "success":
            text = "\n".join(
                (ln[: ln.rindex(" ")] + " 0") if ln.startswith(("kbxy_sqlite_backup_last_success{",
                                                                "kbxy_sqlite_restore_drill_last_success{")) else ln
                for ln in text.split("\n"))
    sqlite_ops.write_text_atomic(final, text, mode=0o644)
    return 0


def cmd_status(conf):
    items = sorted(sqlite_ops.list_backups(conf["dest_dir"], conf["prefix"]), key=lambda it: (it[1], it[0]), reverse=True)
    newest = os.path.join(conf["dest_dir"], items[0][0]) if items else None
    manifest = None
    if newest and os.path.exists(newest + ".json"):
        manifest = sqlite_ops.read_manifest(newest)
    sys.stdout.write(json.dumps({"config": conf, "backups": [it[0] for it in items], "newest": newest,
                                 "newest_manifest": manifest}, sort_keys=True, indent=2) + "\n")
    return 0


def cmd_check_config(names):
    """Checks the named configurations (default: every file in CONF_DIR); touches no database."""
    if not names:
        names = sorted(os.path.basename(p)[:-len(".json")] for p in glob.glob(os.path.join(CONF_DIR, "*.json")))
    configs, problems = {}, []
    for name in names:
        try:
            load_conf(name)
        except ConfigError as e:
            problems.extend(e.problems)
        else:
            configs[name] = conf_path(name)
    for line in problems:
        err(line)
    sys.stdout.write(json.dumps({"ok": not problems, "configs": configs}, sort_keys=True) + "\n")
    return EX_CONFIG if problems else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="kbxy-sqlite-backup")
    sub = p.add_subparsers(dest="cmd")
    for c in ("backup", "status"):
        sub.add_parser(c).add_argument("name")
    s = sub.add_parser("drill")
    s.add_argument("name")
    s.add_argument("--backup")
    s = sub.add_parser("extract")
    s.add_argument("name")
    s.add_argument("--backup", required=True)
    s.add_argument("--to", required=True)
    sub.add_parser("check-config").add_argument("names", nargs="*", metavar="NAME")
    sub.add_parser("notify-failure").add_argument("unit")
    s = sub.add_parser("publish-metrics")
    s.add_argument("name")
    s.add_argument("kind", choices=("backup", "drill"))
    a = p.parse_args(argv)
    if a.cmd == "notify-failure":
        err("%s failed; see: journalctl -u %s" % (a.unit, a.unit))
        return 0
    if a.cmd is None:
        p.print_usage(sys.stderr)
        return 2
    if a.cmd == "check-config":
        return cmd_check_config(a.names)
    try:
        conf = load_conf(a.name)
    except ConfigError as e:
        for line in e.problems:
            err(line)
        return EX_CONFIG
    if a.cmd == "backup":
        return cmd_backup(conf)
    if a.cmd == "drill":
        return cmd_drill(conf, a.backup)
    if a.cmd == "publish-metrics":
        return cmd_publish_metrics(conf, a.kind)
    if a.cmd == "extract":
        return cmd_extract(conf, a.backup, a.to)
    return cmd_status(conf)


if __name__ == "__main__":
    sys.exit(main())
