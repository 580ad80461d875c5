# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

import datetime
import gzip
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from ansible_collections.kbxy.platform.plugins.module_utils import sqlite_ops as so

import sqlite_testlib as lib

FINAL = re.compile(r"^[^.].*-\d{8}T\d{6}(\.\d{6})?Z\.db(\.gz)?$")


def _restore_to(path, backup_file):
    if backup_file.endswith(".gz"):
        with gzip.open(backup_file, "rb") as f, open(path, "wb") as out:
            out.write(f.read())
    else:
        with open(backup_file, "rb") as f, open(path, "wb") as out:
            out.write(f.read())
    return path


@pytest.mark.parametrize("compress", ["gzip", "none"])
def test_backup_manifest_and_content(tmp_path, compress):
    db = lib.make_db(str(tmp_path / "app.db"), rows=100, user_version=5)
    out = tmp_path / "bk"
    r = so.backup_database(db, str(out), compress=compress)
    assert r["changed"] is True
    name = os.path.basename(r["backup_file"])
    assert re.match(r"^app-\d{8}T\d{6}Z\.db%s$" % (r"\.gz" if compress == "gzip" else ""), name)
    st = os.stat(r["backup_file"])
    assert oct(st.st_mode & 0o777) == "0o600"
    assert r["size_bytes"] == st.st_size
    assert r["sha256"] == lib.sha256(r["backup_file"])
    man = json.loads((out / (name + ".json")).read_text())
    assert man["sha256"] == r["sha256"] and man["size"] == r["size_bytes"]
    assert man["source"] == db and man["user_version"] == 5 and man["page_count"] == r["page_count"]
    assert man["created"].endswith("Z")
    so.verify_backup_file(r["backup_file"])
    copy = _restore_to(str(tmp_path / "restored.db"), r["backup_file"])
    assert so.check_integrity(copy)["ok"]
    assert so.check_integrity(copy)["journal_mode"] == "delete"  # self-contained file
    with sqlite3.connect(copy) as c, sqlite3.connect(db) as d:
        assert so.same_content(c, d)
    # only the backup, its manifest and the lock file: no temp files, no -wal/-shm
    assert sorted(os.listdir(str(out))) == sorted([".app.lock", name, name + ".json"])


def test_backup_with_concurrent_writer_loses_nothing(tmp_path):
    db = lib.make_db(str(tmp_path / "live.db"), rows=3000, body_size=1000)
    w = lib.Writer(db, tmp_path, count=4000, duration=20, interval=0.002)
    try:
        w.wait_for(50)
        backups = []
        for _round in range(3):
            seen_before = len(w.committed())
            r = so.backup_database(db, str(tmp_path / "bk"), compress="none", keep={"last": 2})
            backups.append((seen_before, r["backup_file"]))
            w.wait_for(seen_before + 20)
    finally:
        summary = w.stop()
    assert summary["rc"] == 0 and summary["errors"] == []
    committed = w.committed()
    # the live database has every row the writer saw committed
    assert lib.writer_ids(db) == committed
    for seen_before, bf in backups[-2:]:
        ids = lib.writer_ids(bf)
        # consistent snapshot: a gap-free prefix, including all rows committed before the backup started
        assert ids == list(range(1, len(ids) + 1))
        assert len(ids) >= seen_before
        assert so.check_integrity(bf)["ok"]
    assert not os.path.exists(backups[0][1])  # pruned by last: 2
    assert len(so.list_backups(str(tmp_path / "bk"), "live")) == 2


def test_retention_prunes_old_backups_and_manifests_never_the_new_one(tmp_path):
    db = lib.make_db(str(tmp_path / "app.db"), rows=10)
    out = tmp_path / "bk"
    out.mkdir()
    old = ["app-20200101T000000Z.db.gz", "app-20200102T000000Z.db.gz", "app-20200102T120000Z.db.gz"]
    for n in old:
        (out / n).write_bytes(b"old")
        (out / (n + ".json")).write_text("{}")
    (out / "other-20200101T000000Z.db.gz").write_bytes(b"keep me")
    r = so.backup_database(db, str(out), keep={"daily": 2})
    assert r["kept"] == [r["backup_file"], str(out / "app-20200102T120000Z.db.gz")]
    assert sorted(r["pruned"]) == [str(out / "app-20200101T000000Z.db.gz"), str(out / "app-20200102T000000Z.db.gz")]
    assert not (out / "app-20200101T000000Z.db.gz.json").exists()
    assert (out / "other-20200101T000000Z.db.gz").exists()
    # a policy that would not keep the newest (it is in the past) still keeps the one just made
    future = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    (out / "app-20300101T000000Z.db.gz").write_bytes(b"from the future")
    r2 = so.backup_database(db, str(out), keep={"last": 1}, now=future - datetime.timedelta(days=1))
    assert os.path.exists(r2["backup_file"]) and r2["backup_file"] in r2["kept"]


def test_check_mode_creates_nothing(tmp_path):
    db = lib.make_db(str(tmp_path / "app.db"), rows=10)
    out = tmp_path / "bk"
    r = so.backup_database(db, str(out), check_mode=True, keep={"last": 1})
    assert r["changed"] is True and r["pruned"] == [] and r["kept"] == [r["backup_file"]]
    assert not out.exists()
    out.mkdir()
    (out / "app-20200101T000000Z.db.gz").write_bytes(b"old")
    before = sorted(os.listdir(str(out)))
    r = so.backup_database(db, str(out), check_mode=True, keep={"last": 1})
    assert r["pruned"] == [str(out / "app-20200101T000000Z.db.gz")]
    assert sorted(os.listdir(str(out))) == before
    with pytest.raises(so.NotADatabase):
        (tmp_path / "x.db").write_text("nope")
        so.backup_database(str(tmp_path / "x.db"), str(out), check_mode=True)


def test_backup_errors_name_the_problem(tmp_path):
    bad = lib.corrupt_inputs(tmp_path)
    out = tmp_path / "bk"
    with pytest.raises(so.DatabaseMissing, match="missing.db: no such file"):
        so.backup_database(bad["missing"], str(out))
    with pytest.raises(so.NotADatabase):
        so.backup_database(bad["not_sqlite"], str(out))
    with pytest.raises((so.BackupFailed, so.DatabaseCorrupt), match="btree.db"):
        so.backup_database(bad["btree"], str(out))
    # nothing published, no temp left
    assert not out.exists() or [n for n in os.listdir(str(out)) if not n.endswith(".lock")] == []


def test_owner_group_mode(tmp_path):
    db = lib.make_db(str(tmp_path / "app.db"), rows=10)
    r = so.backup_database(db, str(tmp_path / "bk"), owner=str(os.getuid()), group=str(os.getgid()), mode="0640")
    assert oct(os.stat(r["backup_file"]).st_mode & 0o777) == "0o640"
    assert oct(os.stat(r["manifest_file"]).st_mode & 0o777) == "0o640"
    with pytest.raises(so.SqliteOpsError, match="no such user"):
        so.backup_database(db, str(tmp_path / "bk"), owner="no-such-user-xyz")
    with pytest.raises(so.SqliteOpsError, match="octal"):
        so.backup_database(db, str(tmp_path / "bk"), mode="rw-r")


def test_lock_timeout_on_locked_rollback_database(tmp_path):
    db = lib.make_db(str(tmp_path / "j.db"), rows=10, wal=False)
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        t = time.monotonic()
        with pytest.raises(so.SqliteOpsError, match="locked"):
            so.backup_database(db, str(tmp_path / "bk"), lock_timeout=0.5)
        assert time.monotonic() - t < 10
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert [n for n in os.listdir(str(tmp_path / "bk")) if not n.endswith(".lock")] == []


KILL_SRC = str(os.path.join(os.path.dirname(so.__file__), "sqlite_ops.py"))


def test_kill_9_mid_backup_leaves_no_file_under_the_final_name(tmp_path):
    db = lib.make_db(str(tmp_path / "big.db"), rows=6000, body_size=4000, wal=True)  # ~25 MB, random: gzip is slow
    out = tmp_path / "bk"
    out.mkdir()
    killed_mid_way = 0
    for delay in (0.0, 0.15, 0.4, 0.8):
        p = subprocess.Popen([sys.executable, KILL_SRC, "backup", "--src", db, "--dest-dir", str(out),
                              "--compress", "gzip"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while not any(n.endswith(".tmp") for n in os.listdir(str(out))) and p.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        time.sleep(delay)
        if p.poll() is None:
            killed_mid_way += 1
        p.send_signal(signal.SIGKILL)
        p.wait()
        for n in os.listdir(str(out)):
            if FINAL.match(n):  # only possible if the kill came after the rename: then it must be complete
                with gzip.open(str(out / n)) as f:
                    data = f.read()
                assert data.startswith(so.SQLITE_MAGIC)
                copy = tmp_path / "check.db"
                copy.write_bytes(data)
                assert so.check_integrity(str(copy))["ok"]
                os.unlink(str(out / n))
                if os.path.exists(str(out / (n + ".json"))):
                    os.unlink(str(out / (n + ".json")))
    assert killed_mid_way >= 2
    # the next run removes the temp files the killed runs left
    r = so.backup_database(db, str(out), compress="none", check="quick")
    assert r["stale_removed"]
    assert sorted(os.listdir(str(out))) == sorted([".big.lock", os.path.basename(r["backup_file"]),
                                                   os.path.basename(r["manifest_file"])])


def test_cli_backup_and_restore(tmp_path):
    db = lib.make_db(str(tmp_path / "app.db"), rows=20)
    out = subprocess.run([sys.executable, KILL_SRC, "backup", "--src", db, "--dest-dir", str(tmp_path / "bk"),
                          "--keep-daily", "7"], stdout=subprocess.PIPE, check=True)
    res = json.loads(out.stdout)
    target = lib.make_db(str(tmp_path / "target.db"), rows=3, tag="other")
    subprocess.run([sys.executable, KILL_SRC, "restore", "--backup", res["backup_file"], "--dest", target],
                   stdout=subprocess.PIPE, check=True)
    assert lib.item_tags(target) == ["old"]
    bad = subprocess.run([sys.executable, KILL_SRC, "integrity", str(tmp_path / "nope.db")],
                         stderr=subprocess.PIPE, check=False)
    assert bad.returncode == 1 and b"no such file" in bad.stderr
