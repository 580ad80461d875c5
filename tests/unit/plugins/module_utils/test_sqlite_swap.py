# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

import os
import sqlite3
import time

import pytest

from ansible_collections.kbxy.platform.plugins.module_utils import sqlite_ops as so

import sqlite_testlib as lib


@pytest.fixture
def pair(tmp_path):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=300, tag="old", user_version=1)
    src = lib.make_db(str(tmp_path / "new.db"), rows=120, tag="new", wal=False, user_version=2)
    return src, dest


def assert_suffix_of_writes(dest_ids, committed):
    """Writer rows in dest = a gap-free run ending at the last row the writer saw committed."""
    assert dest_ids, "no writer rows after the swap"
    assert dest_ids == list(range(dest_ids[0], committed[-1] + 1))


def test_online_swap_with_a_writer_process_loses_no_write(pair, tmp_path):
    src, dest = pair
    reader = sqlite3.connect(dest, isolation_level=None)
    assert lib.item_tags(dest) == ["old"]
    w = lib.Writer(dest, tmp_path, count=3000, duration=20, interval=0.003)
    try:
        w.wait_for(30)
        r = so.swap_database(src, dest, method="online", backup_dir=str(tmp_path / "bk"))
        n_at_swap = len(w.committed())
        w.wait_for(n_at_swap + 30)
    finally:
        summary = w.stop()
    assert summary["rc"] == 0 and summary["errors"] == []
    assert r["changed"] is True and r["method"] == "online"
    assert r["lock_held_s"] is not None and r["backup_file"]
    assert r["src_sha256"] == lib.sha256(src)
    assert lib.item_tags(dest) == ["new"]
    ids = lib.writer_ids(dest)
    assert_suffix_of_writes(ids, w.committed())
    assert ids[0] > 1  # the rows written before the swap were replaced with src's content
    # a connection opened before the swap sees the new content at its next transaction
    assert reader.execute("SELECT count(*) FROM items WHERE name LIKE 'new-%'").fetchone()[0] == 120
    assert reader.execute("PRAGMA user_version").fetchone()[0] == 2
    reader.close()
    # the backup holds the old content
    assert lib.item_tags(r["backup_file"]) == ["old"]
    assert so.check_integrity(dest)["journal_mode"] == "wal"
    assert so.check_integrity(dest)["ok"]


def test_same_content_is_not_changed(pair, tmp_path):
    src, dest = pair
    r = so.swap_database(src, dest, backup_dir=str(tmp_path / "bk"))
    assert r["changed"] is True
    before = lib.file_state(dest)
    r = so.swap_database(src, dest, backup_dir=str(tmp_path / "bk"))
    assert r["changed"] is False and r["backup_file"] is None
    assert lib.file_state(dest) == before
    assert len(os.listdir(str(tmp_path / "bk"))) == 3  # one backup + manifest + lock


def test_schema_mismatch_is_refused_and_dest_untouched(tmp_path):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=30)
    other = lib.make_db(str(tmp_path / "other.db"), rows=5, schema="CREATE TABLE monsters(id INTEGER PRIMARY KEY, hp INT);"
                        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, body BLOB, extra TEXT);")
    before = lib.file_state(dest)
    with pytest.raises(so.SchemaMismatch) as ei:
        so.swap_database(other, dest)
    msg = ei.value.msg
    assert "tables only in src: monsters" in msg and "tables only in dest: writes" in msg
    assert "columns only in src: extra" in msg and "allow_schema_change" in msg
    assert ei.value.diff["tables_only_in_src"] == ["monsters"]
    assert lib.file_state(dest) == before
    assert not [n for n in os.listdir(str(tmp_path)) if "preswap" in n]
    r = so.swap_database(other, dest, allow_schema_change=True, check_mode=True)
    assert r["changed"] is True and lib.file_state(dest) == before
    r = so.swap_database(other, dest, allow_schema_change=True)
    assert r["changed"] is True and r["schema_diff"]["tables_only_in_src"] == ["monsters"]


@pytest.mark.parametrize("kind,exc", [("missing", so.DatabaseMissing), ("random", so.NotADatabase),
                                      ("not_sqlite", so.NotADatabase), ("truncated", so.DatabaseCorrupt),
                                      ("btree", so.DatabaseCorrupt)])
def test_bad_src_leaves_dest_byte_for_byte(tmp_path, kind, exc):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=30)
    bad = lib.corrupt_inputs(tmp_path / "..")  # separate dir from dest's backups
    before = lib.file_state(dest)
    with pytest.raises(exc) as ei:
        so.swap_database(bad[kind], dest)
    assert os.path.basename(bad[kind]) in ei.value.msg
    assert lib.file_state(dest) == before


def test_page_size_mismatch_with_wal_dest(tmp_path):
    dest = lib.make_db(str(tmp_path / "app.db"), rows=30, page_size=4096)
    src = lib.make_db(str(tmp_path / "new.db"), rows=30, tag="new", page_size=8192, wal=False)
    before = lib.file_state(dest)
    with pytest.raises(so.PageSizeMismatch, match="page size 4096 differs from src's 8192"):
        so.swap_database(src, dest)
    assert lib.file_state(dest) == before
    # rename does not care about page sizes
    r = so.swap_database(src, dest, method="rename", backup=False)
    assert r["changed"] and so.check_integrity(dest)["page_size"] == 8192


def test_rename_refused_while_a_process_holds_the_file(pair, tmp_path):
    src, dest = pair
    holder = lib.Holder(dest)
    try:
        before = lib.file_state(dest)
        with pytest.raises(so.FileInUse) as ei:
            so.swap_database(src, dest, method="rename", backup_dir=str(tmp_path / "bk"))
        assert "PID %d" % holder.pid in ei.value.msg
        assert holder.pid in [h["pid"] for h in ei.value.holders]
        assert lib.file_state(dest) == before
        with pytest.raises(so.FileInUse, match="PIDs %d" % holder.pid):
            so.swap_database(src, dest, method="rename", check_mode=True)
    finally:
        holder.stop()


def test_rename_keeps_owner_and_mode_and_removes_stale_side_files(pair, tmp_path):
    src, dest = pair
    os.chmod(dest, 0o640)
    os.chown(dest, os.getuid(), os.getgid())
    # leave a hot -wal behind, as a killed application would
    c = sqlite3.connect(dest, isolation_level=None)
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("INSERT INTO writes(id, ts, payload) VALUES (1, 0, 'pre-swap')")
    import subprocess
    import sys
    c.close()
    subprocess.run([sys.executable, "-c", "import sqlite3,os,sys; c=sqlite3.connect(sys.argv[1]);"
                    "c.execute('PRAGMA wal_autocheckpoint=0');"
                    "c.execute(\"INSERT INTO writes(id, ts, payload) VALUES (2, 0, 'in-wal')\"); c.commit(); os._exit(0)", dest],
                   check=True)
    assert os.path.getsize(dest + "-wal") > 0
    r = so.swap_database(src, dest, method="rename", backup_dir=str(tmp_path / "bk"))
    assert r["changed"] is True
    st = os.stat(dest)
    assert oct(st.st_mode & 0o777) == "0o640"
    # the old -wal is gone (the check afterwards may have created a fresh, empty one)
    assert not os.path.exists(dest + "-wal") or os.path.getsize(dest + "-wal") == 0
    assert lib.item_tags(dest) == ["new"]
    assert so.check_integrity(dest)["journal_mode"] == "wal"  # dest's journal mode is kept
    # the backup has the row that was only in the old -wal
    assert lib.writer_ids(r["backup_file"]) == [1, 2]
    assert not [n for n in os.listdir(os.path.dirname(dest)) if n.endswith(".tmp")]


def test_swap_into_missing_dest_installs_src(tmp_path):
    src = lib.make_db(str(tmp_path / "new.db"), rows=10, tag="new", wal=False)
    dest = str(tmp_path / "fresh.db")
    r = so.swap_database(src, dest, check_mode=True)
    assert r["changed"] and r["created"] and not os.path.exists(dest)
    r = so.swap_database(src, dest)
    assert r["created"] and lib.item_tags(dest) == ["new"]


def test_diff_text(pair):
    src, dest = pair
    r = so.swap_database(src, dest, check_mode=True)
    assert r["diff"]["before"].startswith("user_version = 1\n")
    assert r["diff"]["after"].startswith("user_version = 2\n")
    assert "CREATE TABLE items" in r["diff"]["after"]


def test_failed_check_after_swap_restores_the_backup(pair, tmp_path, monkeypatch):
    src, dest = pair
    real = so.check_integrity
    calls = {"n": 0}

    def fake(path, *a, **kw):
        res = real(path, *a, **kw)
        if os.path.abspath(path) == os.path.abspath(dest) and calls["n"] == 0:
            calls["n"] += 1
            res = dict(res, ok=False, errors=["injected failure"])
        return res

    monkeypatch.setattr(so, "check_integrity", fake)
    with pytest.raises(so.SwapFailed, match="injected failure.*restored from") as ei:
        so.swap_database(src, dest, backup_dir=str(tmp_path / "bk"))
    assert ei.value.details["restored"] is True
    assert lib.item_tags(dest) == ["old"]


def test_online_swap_gives_up_when_dest_stays_locked(pair, tmp_path):
    src, dest = pair
    locker = sqlite3.connect(dest, isolation_level=None)
    try:
        before = lib.file_state(dest)
        locker.execute("BEGIN IMMEDIATE")
        t = time.monotonic()
        with pytest.raises(so.LockTimeout):
            so.swap_database(src, dest, backup=False, lock_timeout=0.5)
        assert time.monotonic() - t < 10
        locker.execute("ROLLBACK")
        assert lib.item_tags(dest) == ["old"]
        assert lib.file_state(dest)[""] == before[""]
    finally:
        locker.close()
