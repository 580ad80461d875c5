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
  kbxy-sqlite-backup notify-failure UNIT log a unit's failure at err priority
  kbxy-sqlite-backup publish-metrics NAME backup|drill   (root, ExecStopPost=+) publish the staged metrics

The services run sandboxed as the application's user and cannot write the
node_exporter textfile directory: they stage their metrics in their
RuntimeDirectory and ExecStopPost=+ publishes the file atomically (and marks
the run failed when systemd says so, for example after a timeout or a kill).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

LIB_DIR = os.environ.get("KBXY_SQLITE_LIB", "/usr/local/lib/kbxy")
CONF_DIR = os.environ.get("KBXY_SQLITE_CONF", "/etc/kbxy/sqlite-backup")
sys.path.insert(0, LIB_DIR)
import sqlite_ops  # noqa: E402  pylint: disable=wrong-import-position


def load_conf(name):
    with open(os.path.join(CONF_DIR, "%s.json" % name)) as f:
        return json.load(f)


def err(msg):
    # "<3>" is the err priority for journald (SyslogLevelPrefix=yes, systemd's default).
    sys.stderr.write("<3>%s\n" % msg)
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
    error, out = None, {"backup_file": backup_file, "query": conf["drill_query"]}
    if backup_file is None:
        error = "no backup of %s in %s" % (conf["name"], conf["dest_dir"])
    else:
        work = tempfile.mkdtemp(prefix="kbxy-drill-")
        dest = os.path.join(work, "drill.db")
        try:
            man, check = _plain_copy(backup_file, dest)
            out.update(created=man.get("created"), integrity=check["check"], page_count=check["page_count"])
            if conf["drill_query"]:
                conn = sqlite_ops.open_ro(dest)
                try:
                    row = conn.execute(conf["drill_query"]).fetchone()
                finally:
                    conn.close()
                out["query_result"] = row[0] if row else None
                if not row or not row[0]:
                    error = "sanity query %r returned %r" % (conf["drill_query"], row)
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
    conf = load_conf(a.name)
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
