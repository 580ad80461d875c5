"""Helpers shared by the unit and integration tests of the SQLite modules."""
import hashlib
import os
import sqlite3
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "sqlite_writer.py")

SCHEMA = (
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, body BLOB);"
    "CREATE TABLE writes(id INTEGER PRIMARY KEY, ts REAL, payload TEXT);"
    "CREATE INDEX items_name ON items(name);"
)


def make_db(path, rows=200, tag="old", wal=True, page_size=4096, user_version=1, body_size=200, schema=SCHEMA):
    """Create a database with ``rows`` items named ``<tag>-<n>``; returns the path."""
    for s in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + s):
            os.unlink(path + s)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA page_size=%d" % page_size)
    if wal:
        c.execute("PRAGMA journal_mode=WAL")
    c.executescript(schema)
    c.execute("BEGIN")
    if rows:
        c.executemany("INSERT INTO items(name, body) VALUES (?, ?)",
                      (("%s-%d" % (tag, i), os.urandom(body_size)) for i in range(rows)))
    c.execute("COMMIT")
    c.execute("PRAGMA user_version=%d" % user_version)
    c.close()
    return path


def open_with_wal_frames(path, rows, tag, body_size):
    """Commit ``rows`` items that stay in the -wal (no checkpoint) and return the open
    connection: closing the last connection would checkpoint them into the database."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO items(name, body) VALUES (?, ?)",
                     (("%s-%d" % (tag, i), b"x" * body_size) for i in range(rows)))
    conn.execute("COMMIT")
    return conn


def file_state(path):
    """(sha256, size, mtime_ns) of path and its -wal.

    A missing and an empty -wal both give None: a read-only connection to a WAL
    database whose -wal does not exist creates an empty one (SQLite needs it; it
    gets the database's owner and mode and holds no frames).
    """
    out = {}
    for s in ("", "-wal"):
        p = path + s
        if os.path.exists(p) and (s == "" or os.path.getsize(p) > 0):
            st = os.stat(p)
            with open(p, "rb") as f:
                out[s] = (hashlib.sha256(f.read()).hexdigest(), st.st_size, st.st_mtime_ns)
        else:
            out[s] = None
    return out


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def corrupt_btree_page(path):
    """Damage the root page of table items (valid header stays)."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=DELETE")
    root = c.execute("SELECT rootpage FROM sqlite_master WHERE name='items'").fetchone()[0]
    ps = c.execute("PRAGMA page_size").fetchone()[0]
    c.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * ps)
        f.write(b"\x07" + os.urandom(63))  # invalid b-tree page type and garbage cell pointers
    return path


def corrupt_inputs(tmpdir):
    """dict kind -> path of a broken database file."""
    d = str(tmpdir)
    out = {}
    p = make_db(os.path.join(d, "truncated.db"), rows=400, wal=False)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    out["truncated"] = p
    p = os.path.join(d, "random.db")
    with open(p, "wb") as f:
        f.write(os.urandom(16384))
    out["random"] = p
    out["btree"] = corrupt_btree_page(make_db(os.path.join(d, "btree.db"), rows=400, wal=False))
    p = os.path.join(d, "notsqlite.db")
    with open(p, "w") as f:
        f.write("this is a text file, not a database\n" * 10)
    out["not_sqlite"] = p
    out["missing"] = os.path.join(d, "missing.db")
    return out


class Writer(object):
    """A writer process committing rows to table ``writes`` (bounded in count and time)."""

    def __init__(self, db, workdir, count=3000, duration=20.0, interval=0.005):
        self.db = db
        self.log = os.path.join(str(workdir), "writer-%d.log" % id(self))
        self.summary_path = self.log + ".json"
        self.stop_file = self.log + ".stop"
        self.proc = subprocess.Popen([sys.executable, WRITER, db, "--log", self.log, "--summary", self.summary_path,
                                      "--count", str(count), "--duration", str(duration), "--interval", str(interval),
                                      "--stop-file", self.stop_file])

    def committed(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [int(x) for x in f.read().split()]

    def wait_for(self, n, timeout=15.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.committed()) >= n:
                return
            if self.proc.poll() is not None:
                raise AssertionError("writer exited early with %s" % self.proc.returncode)
            time.sleep(0.01)
        raise AssertionError("writer did not commit %d rows in %.0f s" % (n, timeout))

    def stop(self, timeout=30):
        with open(self.stop_file, "w"):
            pass
        rc = self.proc.wait(timeout=timeout)
        import json
        with open(self.summary_path) as f:
            summary = json.load(f)
        summary["rc"] = rc
        return summary


def writer_ids(path):
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return [r[0] for r in c.execute("SELECT id FROM writes ORDER BY id")]
    finally:
        c.close()


def item_tags(path):
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return sorted(set(r[0].split("-")[0] for r in c.execute("SELECT name FROM items")))
    finally:
        c.close()


class Holder(object):
    """A process that keeps a database open (and reads it) until stopped."""

    CODE = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('SELECT count(*) FROM sqlite_master').fetchall()\n"
        "print('ready', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
    )

    def __init__(self, db, seconds=30):
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, db, str(seconds)], stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == b"ready"
        self.pid = self.proc.pid

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
