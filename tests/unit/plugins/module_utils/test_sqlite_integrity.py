# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from ansible_collections.kbxy.platform.plugins.module_utils import sqlite_ops as so

import sqlite_testlib as lib


def test_ok_database(tmp_path):
    db = lib.make_db(str(tmp_path / "a.db"), rows=50, user_version=7)
    r = so.check_integrity(db)
    assert r["ok"] is True
    assert r["errors"] == [] and r["foreign_key_violations"] == []
    assert r["journal_mode"] == "wal"
    assert r["page_size"] == 4096
    assert r["user_version"] == 7
    assert r["page_count"] > 1
    assert r["sqlite_version"] == sqlite3.sqlite_version
    assert so.check_integrity(db, check="quick")["ok"] is True


def test_wal_with_uncheckpointed_frames_is_checked_and_left_unchanged(tmp_path):
    db = lib.make_db(str(tmp_path / "w.db"), rows=0)
    writer = lib.open_with_wal_frames(db, rows=2000, tag="wal", body_size=500)
    try:
        before = lib.file_state(db)
        assert before["-wal"] is not None and before["-wal"][1] > 100000
        r = so.check_integrity(db)
        assert r["ok"] is True
        # the pages in the -wal were read: the db file alone is much smaller
        assert r["page_count"] * r["page_size"] > before[""][1] * 10
        assert r["wal_size_bytes"] == before["-wal"][1]
        assert lib.file_state(db) == before
    finally:
        writer.close()


CRASH = """
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute('PRAGMA wal_autocheckpoint=0')
c.execute('BEGIN')
c.executemany('INSERT INTO items(name, body) VALUES (?, ?)', (('crash-%d' % i, b'y' * 300) for i in range(1000)))
c.execute('COMMIT')
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("drop_shm", [False, True], ids=["with-shm", "without-shm"])
def test_hot_wal_after_a_crash_is_read_not_checkpointed(tmp_path, drop_shm):
    """Nobody has the db open and the -wal holds committed frames (a killed app)."""
    db = lib.make_db(str(tmp_path / "c.db"), rows=0)
    p = subprocess.run([sys.executable, "-c", CRASH, db], check=False)
    assert p.returncode == -signal.SIGKILL
    if drop_shm:
        os.unlink(db + "-shm")
    before = lib.file_state(db)
    assert before["-wal"] is not None
    r = so.check_integrity(db)
    assert r["ok"] is True
    assert lib.file_state(db) == before  # bytes and mtime of db and -wal
    # the committed rows only exist in the -wal, and the check saw them
    c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 1000
    c.close()
    immutable = sqlite3.connect("file:%s?immutable=1" % db, uri=True)
    assert immutable.execute("SELECT count(*) FROM items").fetchone()[0] == 0  # why we do not use immutable=1
    immutable.close()
    assert lib.file_state(db) == before


def test_corrupt_inputs(tmp_path):
    bad = lib.corrupt_inputs(tmp_path)
    with pytest.raises(so.DatabaseMissing, match="no such file"):
        so.check_integrity(bad["missing"])
    with pytest.raises(so.NotADatabase, match="not an SQLite database"):
        so.check_integrity(bad["random"])
    with pytest.raises(so.NotADatabase, match="not an SQLite database"):
        so.check_integrity(bad["not_sqlite"])
    for kind in ("truncated", "btree"):
        before = lib.file_state(bad[kind])
        r = so.check_integrity(bad[kind])
        assert r["ok"] is False, kind
        assert r["errors"], kind
        assert lib.file_state(bad[kind]) == before
        with pytest.raises(so.DatabaseCorrupt, match="database is not ok"):
            so.require_ok(bad[kind])
    r = so.check_integrity(bad["btree"], check="quick")
    assert r["ok"] is False


def test_empty_and_directory(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(so.NotADatabase, match="empty"):
        so.check_integrity(str(empty))
    with pytest.raises(so.DatabaseMissing, match="not a regular file"):
        so.check_integrity(str(tmp_path))


def test_short_header_is_corrupt(tmp_path):
    p = tmp_path / "short.db"
    p.write_bytes(so.SQLITE_MAGIC + b"\x10\x00")
    r = so.check_integrity(str(p))
    assert r["ok"] is False and "truncated" in r["errors"][0]


def test_foreign_key_violations(tmp_path):
    db = str(tmp_path / "fk.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.executescript("CREATE TABLE p(id INTEGER PRIMARY KEY); CREATE TABLE ch(id INTEGER PRIMARY KEY, p REFERENCES p(id));"
                    "INSERT INTO p VALUES (1); INSERT INTO ch VALUES (1, 1), (2, 99), (3, 98);")
    c.close()
    r = so.check_integrity(db)
    assert r["ok"] is False and r["errors"] == []
    assert r["foreign_key_violations"] == [{"table": "ch", "rowid": 2, "parent": "p", "fkid": 0},
                                           {"table": "ch", "rowid": 3, "parent": "p", "fkid": 0}]
    assert "foreign key violation" in so.integrity_message(r)
    assert so.check_integrity(db, foreign_keys=False)["ok"] is True
    assert len(so.check_integrity(db, max_errors=1)["foreign_key_violations"]) == 1


def test_schema_compare():
    a = {"users": [("id", "INTEGER"), ("name", "TEXT")], "cards": [("id", "INTEGER")]}
    b = {"users": [("id", "INTEGER"), ("name", "VARCHAR"), ("email", "TEXT")], "monsters": [("id", "INTEGER")]}
    d = so.compare_schemas(a, b)
    assert d == {"tables_only_in_src": ["cards"], "tables_only_in_dest": ["monsters"],
                 "columns": {"users": {"only_in_dest": ["email"], "type_changed": {"name": {"dest": "VARCHAR", "src": "TEXT"}}}}}
    text = so.describe_schema_diff(d)
    assert "tables only in src: cards" in text and "columns only in dest: email" in text
    assert so.compare_schemas(a, dict(a)) == {}


def test_same_content(tmp_path):
    a = lib.make_db(str(tmp_path / "a.db"), rows=30, tag="x")
    b = str(tmp_path / "b.db")
    src = sqlite3.connect(a)
    dst = sqlite3.connect(b)
    src.backup(dst)
    dst.execute("PRAGMA journal_mode=DELETE")
    assert so.same_content(src, dst)
    dst.execute("UPDATE items SET body = x'00' WHERE id = 30")
    dst.commit()
    assert not so.same_content(src, dst)
    src.close()
    dst.close()
