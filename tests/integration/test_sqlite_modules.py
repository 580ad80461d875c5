# -*- coding: utf-8 -*-
"""kbxy.platform.sqlite_integrity / sqlite_backup / sqlite_swap through ansible-playbook."""
from __future__ import absolute_import, division, print_function

import datetime
import gzip
import json
import os
import re
import sqlite3
import threading
import time

import pytest

import sqlite_testlib as lib

pytestmark = pytest.mark.integration


def task(name, module, ignore_errors=False, **args):
    t = {"name": name, "kbxy.platform.%s" % module: args, "register": "r"}
    if ignore_errors:
        t["ignore_errors"] = True
    return t


def task_seconds(run, name):
    """Wall time the controller measured for task `name` (the json callback's task duration).

    It encloses the module's whole run (transfer, interpreter start-up, the work): an upper
    bound of the elapsed_s a module reports.
    """
    stamp = "%Y-%m-%dT%H:%M:%S.%fZ"
    for play in json.loads(run.stdout)["plays"]:
        for t in play["tasks"]:
            if t["task"]["name"] == name:
                d = t["task"]["duration"]
                return (datetime.datetime.strptime(d["end"], stamp) - datetime.datetime.strptime(d["start"], stamp)).total_seconds()
    raise KeyError(name)


class LockHolder(threading.Thread):
    """Holds an SQLite lock on `db` from now until `hold_s` seconds after `watch_dir` gets its first entry.

    The backup and swap functions start their clock first and only then create files in
    their backup directory (the prefix lock, the temp copy); when the module then needs the
    lock held here, it cannot finish before the lock is released, so its elapsed_s is at
    least `self.held` (first entry seen to release) >= hold_s.
    """

    def __init__(self, db, begin, watch_dir, hold_s, timeout=120.0):
        super(LockHolder, self).__init__()
        self.daemon = True
        self.conn = sqlite3.connect(db, timeout=5, isolation_level=None, check_same_thread=False)
        self.conn.execute(begin)  # taken before the playbook starts
        self.watch_dir, self.hold_s, self.timeout = watch_dir, hold_s, timeout
        self.held = None

    def run(self):
        end = time.monotonic() + self.timeout
        while not os.listdir(self.watch_dir) and time.monotonic() < end:
            time.sleep(0.005)
        seen = time.monotonic()
        time.sleep(self.hold_s)
        self.conn.execute("ROLLBACK")
        self.conn.close()
        self.held = time.monotonic() - seen


def test_integrity_ok_wal_frames_and_corrupt_inputs(playbook, tmp_path):
    db = lib.make_db(str(tmp_path / "live.db"), rows=0)
    writer = lib.open_with_wal_frames(db, rows=1500, tag="w", body_size=400)
    bad = lib.corrupt_inputs(tmp_path)
    try:
        before = lib.file_state(db)
        tasks = [task("ok", "sqlite_integrity", path=db),
                 task("ok quick", "sqlite_integrity", path=db, check="quick", foreign_keys=False)]
        tasks += [task(kind, "sqlite_integrity", ignore_errors=True, path=p) for kind, p in sorted(bad.items())]
        bad_before = dict((k, lib.file_state(p)) for k, p in bad.items() if os.path.exists(p))
        run = playbook(tasks)
        assert lib.file_state(db) == before  # db, -wal bytes and mtimes unchanged
        check_run = playbook(tasks[:1], check=True)
    finally:
        writer.close()
    ok = run["ok"]
    assert ok["ok"] is True and ok["changed"] is False and ok["errors"] == []
    assert ok["journal_mode"] == "wal" and ok["page_size"] == 4096
    assert ok["page_count"] * ok["page_size"] > before[""][1] * 10  # pages still in the -wal were checked
    for key in ("foreign_key_violations", "freelist_count", "size_bytes", "user_version", "sqlite_version"):
        assert key in ok
    assert run["ok quick"]["ok"] is True
    assert check_run["ok"]["ok"] is True and check_run["ok"]["changed"] is False
    msgs = dict((k, run[k]["msg"]) for k in bad)
    for k in bad:
        assert run[k]["failed"] is True, k
    assert msgs["missing"].endswith("missing.db: no such file")
    assert "not an SQLite database" in msgs["random"] and "not an SQLite database" in msgs["not_sqlite"]
    assert "database is not ok" in msgs["btree"] and "btree.db" in msgs["btree"]
    assert "database is not ok" in msgs["truncated"]
    assert run["btree"]["errors"]
    for k, st in bad_before.items():
        assert lib.file_state(bad[k]) == st, k


def test_backup_with_writer_retention_and_check_mode(playbook, tmp_path):
    db = lib.make_db(str(tmp_path / "app.db"), rows=2000, body_size=1000)
    out = tmp_path / "backups"
    out.mkdir()
    old = ["app-20200105T000000Z.db.gz", "app-20200104T120000Z.db.gz", "app-20200104T000000Z.db.gz",
           "app-20200101T000000Z.db.gz"]
    for n in old:
        (out / n).write_bytes(b"old backup")
        (out / (n + ".json")).write_text("{}")
    keep = {"last": 1, "daily": 3}
    # check mode first: creates nothing, says what would be pruned
    before = sorted(os.listdir(str(out)))
    plan = playbook([task("plan", "sqlite_backup", src=db, dest_dir=str(out), keep=keep)], check=True)["plan"]
    assert sorted(os.listdir(str(out))) == before
    assert plan["changed"] is True
    # newest first: the new one (last + daily), 01-05 (daily), 01-04 12:00 (daily); the rest is pruned
    assert plan["pruned"] == [str(out / "app-20200104T000000Z.db.gz"), str(out / "app-20200101T000000Z.db.gz")]
    w = lib.Writer(db, tmp_path, count=5000, duration=30, interval=0.002)
    try:
        w.wait_for(50)
        seen_before = len(w.committed())
        run = playbook([task("backup", "sqlite_backup", src=db, dest_dir=str(out), keep=keep, mode="0640")])
        after = len(w.committed())
        w.wait_for(after + 20)
    finally:
        summary = w.stop()
    assert summary["rc"] == 0 and summary["errors"] == []
    assert after > seen_before, "the writer did not write while the backup ran"
    r = run["backup"]
    assert r["changed"] is True and not r.get("failed")
    assert re.match(r"^app-\d{8}T\d{6}Z\.db\.gz$", os.path.basename(r["backup_file"]))
    assert sorted(r["pruned"]) == sorted([str(out / "app-20200104T000000Z.db.gz"), str(out / "app-20200101T000000Z.db.gz")])
    assert r["kept"] == [r["backup_file"], str(out / "app-20200105T000000Z.db.gz"), str(out / "app-20200104T120000Z.db.gz")]
    assert r["sha256"] == lib.sha256(r["backup_file"]) and r["size_bytes"] == os.path.getsize(r["backup_file"])
    # the module's own clock: within the time the controller saw the task take
    assert 0 < r["elapsed_s"] <= task_seconds(run, "backup")
    assert oct(os.stat(r["backup_file"]).st_mode & 0o777) == "0o640"
    # zero lost writes: live db has every committed row; the backup a gap-free prefix incl. all rows before it started
    assert lib.writer_ids(db) == w.committed()
    restored = tmp_path / "restored.db"
    with gzip.open(r["backup_file"]) as f:
        restored.write_bytes(f.read())
    ids = lib.writer_ids(str(restored))
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= seen_before
    assert not [n for n in os.listdir(str(out)) if n.endswith(".tmp")]


def test_swap_online_with_writer_zero_lost_writes(playbook, tmp_path):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=500, tag="old", user_version=3)
    src = lib.make_db(str(tmp_path / "app.db.new"), rows=200, tag="new", wal=False, user_version=4)
    w = lib.Writer(dest, tmp_path, count=6000, duration=40, interval=0.003)
    try:
        w.wait_for(30)
        run = playbook([task("swap", "sqlite_swap", src=src, dest=dest, backup_dir=str(tmp_path / "bk"))])
        n = len(w.committed())
        w.wait_for(n + 30)
    finally:
        summary = w.stop()
    assert summary["rc"] == 0 and summary["errors"] == []
    r = run["swap"]
    assert r["changed"] is True and r["method"] == "online" and r["backup_file"]
    assert r["src_sha256"] == lib.sha256(src)
    assert 0 < r["elapsed_s"] <= task_seconds(run, "swap")
    assert lib.item_tags(dest) == ["new"]
    ids = lib.writer_ids(dest)
    committed = w.committed()
    assert ids == list(range(ids[0], committed[-1] + 1)), "a committed write is missing after the swap"
    assert ids[0] > 1
    assert lib.item_tags(r["backup_file"]) == ["old"]


def test_elapsed_s_is_the_time_the_module_took(playbook, tmp_path):
    """elapsed_s of sqlite_backup and sqlite_swap, bounded on both sides by clocks outside the module.

    Each module runs twice in one playbook: once freely, once while this test holds a lock
    the module needs (an EXCLUSIVE lock on a rollback-journal source for the backup, the
    write lock of the live database for the swap) for HOLD_S seconds after the module
    started. The held run must report at least the time it was held, each run at most the
    task's wall time, so a constant, a wrong unit or a clock started late all fail.
    """
    hold_s = 1.5
    dirs = dict((k, tmp_path / k) for k in ("free", "held", "free-bk", "held-bk"))
    for d in dirs.values():
        d.mkdir()
    src = {"free": lib.make_db(str(tmp_path / "free.db"), rows=300),
           "held": lib.make_db(str(tmp_path / "held.db"), rows=300, wal=False)}
    dest = {"free": lib.make_db(str(tmp_path / "app-free.db"), rows=300),
            "held": lib.make_db(str(tmp_path / "app-held.db"), rows=300)}
    new = lib.make_db(str(tmp_path / "new.db"), rows=100, tag="new", wal=False)
    holders = [LockHolder(src["held"], "BEGIN EXCLUSIVE", str(dirs["held"]), hold_s),
               LockHolder(dest["held"], "BEGIN IMMEDIATE", str(dirs["held-bk"]), hold_s)]
    for h in holders:
        h.start()
    try:
        run = playbook([
            task("backup free", "sqlite_backup", src=src["free"], dest_dir=str(dirs["free"])),
            task("backup held", "sqlite_backup", src=src["held"], dest_dir=str(dirs["held"])),
            task("swap free", "sqlite_swap", src=new, dest=dest["free"], backup_dir=str(dirs["free-bk"])),
            task("swap held", "sqlite_swap", src=new, dest=dest["held"], backup_dir=str(dirs["held-bk"])),
        ])
    finally:
        for h in holders:
            h.join(150)
    for module, holder in zip(("backup", "swap"), holders):
        free, held = run[module + " free"], run[module + " held"]
        assert free["changed"] is True and held["changed"] is True, (free, held)
        assert holder.held is not None and holder.held >= hold_s
        assert 0 < free["elapsed_s"] <= task_seconds(run, module + " free"), free["elapsed_s"]
        assert holder.held - 0.001 <= held["elapsed_s"] <= task_seconds(run, module + " held"), (holder.held, held["elapsed_s"])
        assert free["elapsed_s"] < held["elapsed_s"]  # the same work, once made to wait


def test_swap_rename_refused_with_pid(playbook, tmp_path):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=50)
    src = lib.make_db(str(tmp_path / "new.db"), rows=10, tag="new", wal=False)
    holder = lib.Holder(dest)
    try:
        before = lib.file_state(dest)
        run = playbook([task("rename", "sqlite_swap", ignore_errors=True, src=src, dest=dest, method="rename")])
        assert lib.file_state(dest) == before
    finally:
        holder.stop()
    r = run["rename"]
    assert r["failed"] is True and r["changed"] is False
    assert "PID %d" % holder.pid in r["msg"] and "refusing" in r["msg"]
    assert set(h["pid"] for h in r["holders"]) == {holder.pid}
    assert dest in [h["path"] for h in r["holders"]]
    # nobody holds it any more: now it works, and keeps the mode
    os.chmod(dest, 0o640)
    run = playbook([task("rename", "sqlite_swap", src=src, dest=dest, method="rename", backup=False)])
    assert run["rename"]["changed"] is True and lib.item_tags(dest) == ["new"]
    assert oct(os.stat(dest).st_mode & 0o777) == "0o640"


def test_swap_schema_mismatch_same_content_and_diff(playbook, tmp_path):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=50, user_version=7)
    src = lib.make_db(str(tmp_path / "new.db"), rows=20, tag="new", wal=False, user_version=8)
    wrong = lib.make_db(str(tmp_path / "other_app.db"), rows=0,
                        schema="CREATE TABLE monsters(id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE writes(id INTEGER PRIMARY KEY);")
    before = lib.file_state(dest)
    # --check --diff with the default text callback: shows user_version and schema before/after, changes nothing
    text = playbook([task("preview", "sqlite_swap", src=src, dest=dest)], check=True, diff=True, text=True)
    assert text.rc == 0, text.stdout + text.stderr
    assert "-user_version = 7" in text.stdout and "+user_version = 8" in text.stdout
    assert lib.file_state(dest) == before
    run = playbook([
        task("wrong app", "sqlite_swap", ignore_errors=True, src=wrong, dest=dest),
        task("swap", "sqlite_swap", src=src, dest=dest, backup_dir=str(tmp_path / "bk")),
        task("again", "sqlite_swap", src=src, dest=dest, backup_dir=str(tmp_path / "bk")),
    ], diff=True)
    wr = run["wrong app"]
    assert wr["failed"] is True and wr["changed"] is False
    assert "schema of src" in wr["msg"] and "tables only in src: monsters" in wr["msg"]
    assert "tables only in dest: items" in wr["msg"] and "allow_schema_change" in wr["msg"]
    assert wr["schema_diff"]["tables_only_in_src"] == ["monsters"]
    s = run["swap"]
    assert s["changed"] is True
    assert s["diff"]["before"].startswith("user_version = 7") and s["diff"]["after"].startswith("user_version = 8")
    again = run["again"]
    assert again["changed"] is False and again["backup_file"] is None
    assert lib.item_tags(dest) == ["new"]
    assert len([n for n in os.listdir(str(tmp_path / "bk")) if n.endswith(".db")]) == 1


def test_swap_bad_src_leaves_dest_untouched(playbook, tmp_path):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=50)
    bad = lib.corrupt_inputs(tmp_path / "..")
    before = lib.file_state(dest)
    kinds = ["btree", "missing", "not_sqlite"]
    run = playbook([task(k, "sqlite_swap", ignore_errors=True, src=bad[k], dest=dest) for k in kinds])
    assert lib.file_state(dest) == before
    assert "database is not ok" in run["btree"]["msg"]
    assert "no such file" in run["missing"]["msg"]
    assert "not an SQLite database" in run["not_sqlite"]["msg"]
