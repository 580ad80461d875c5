# -*- coding: utf-8 -*-
# Copyright: kbxy.platform developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT
"""The one implementation of the SQLite operations of kbxy.platform.

Used by the ``sqlite_integrity``, ``sqlite_backup`` and ``sqlite_swap`` modules
and by the backup tool that the ``sqlite_backup`` role installs on hosts
(``python3 sqlite_ops.py backup --src ... --dest-dir ...``).  Python standard
library only (the ``sqlite3`` module, Python 3.7+ for ``Connection.backup``), no Ansible imports.

Decisions worth knowing (details next to the code):

* Read-only access opens ``file:<path>?mode=ro``, never ``immutable=1``:
  ``immutable`` ignores the ``-wal`` file, so committed frames not yet
  checkpointed would be neither read nor checked.  A ``mode=ro`` connection
  reads the ``-wal`` but never writes the database or the ``-wal`` and never
  checkpoints (it cannot).  It does need the ``-shm`` (wal-index): if the
  ``-shm`` is missing and the directory is writable SQLite creates it, and if
  no other process has the database open it rebuilds the wal-index there.  The
  ``-shm`` is a scratch index, not data; the database bytes, the ``-wal`` bytes
  and both mtimes stay unchanged.
* Copies use the online backup API in ONE step (``pages=-1``): a step-wise
  copy restarts whenever another connection writes and may never finish.
  In WAL mode the one-step copy does not block writers; in rollback-journal
  mode it holds a shared lock (writers wait) for its duration.
* The backup API into a WAL destination fails when the page sizes differ
  (SQLite reports "attempt to write a readonly database"): it is checked first
  and reported as :class:`PageSizeMismatch`.
* A busy database is waited for at most ``lock_timeout`` seconds, never forever
  (Python's ``Connection.backup`` retries BUSY without limit on its own).
"""

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

import argparse
import contextlib
import datetime
import errno
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import sys
import tempfile
import time

try:  # pragma: no cover - always present on Linux
    import grp
    import pwd
except ImportError:  # pragma: no cover
    grp = pwd = None

try:
    from urllib.parse import quote as _url_quote
except ImportError:  # pragma: no cover - Python 2 is not supported
    _url_quote = None


SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
DEFAULT_LOCK_TIMEOUT = 30.0
COPY_CHUNK = 4 * 1024 * 1024
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
RETENTION_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class SqliteOpsError(Exception):
    """Base class: every error message names the file and the problem."""

    def __init__(self, msg, **details):
        super(SqliteOpsError, self).__init__(msg)
        self.msg = msg
        self.details = details


class DatabaseMissing(SqliteOpsError):
    """The file does not exist (or is not a regular file)."""


class NotADatabase(SqliteOpsError):
    """The file exists but is not an SQLite 3 database."""


class DatabaseCorrupt(SqliteOpsError):
    """integrity_check / quick_check / foreign_key_check did not return ok."""

    def __init__(self, msg, result=None):
        super(DatabaseCorrupt, self).__init__(msg, result=result)
        self.result = result or {}


class PageSizeMismatch(SqliteOpsError):
    """The backup API cannot copy into a WAL database with another page size."""


class SchemaMismatch(SqliteOpsError):
    """Tables or columns of two databases differ."""

    def __init__(self, msg, diff=None):
        super(SchemaMismatch, self).__init__(msg, diff=diff)
        self.diff = diff or {}


class FileInUse(SqliteOpsError):
    """A process holds the database (or its -wal/-shm/-journal) open."""

    def __init__(self, msg, holders=None):
        super(FileInUse, self).__init__(msg, holders=holders)
        self.holders = holders or []


class LockTimeout(SqliteOpsError):
    """The database stayed locked by another connection for too long."""


class BackupFailed(SqliteOpsError):
    """The backup could not be made or did not verify; nothing was published."""


class SwapFailed(SqliteOpsError):
    """The swap failed; ``restored`` says whether dest was restored."""


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def utcnow():
    return datetime.datetime.now(tz=datetime.timezone.utc)


def iso_utc(dt):
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path, chunk=COPY_CHUNK):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _unlink_quiet(path):
    try:
        os.unlink(path)
        return True
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
        return False


def db_base_name(path):
    """``/srv/app/app.db`` -> ``app`` (default backup prefix)."""
    name = os.path.basename(path)
    for ext in (".sqlite3", ".sqlite", ".db3", ".db"):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def resolve_uid(owner):
    if owner is None or owner == "" or owner == -1:
        return -1
    if isinstance(owner, int) or str(owner).isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise SqliteOpsError("owner %r: no such user" % owner)


def resolve_gid(group):
    if group is None or group == "" or group == -1:
        return -1
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SqliteOpsError("group %r: no such group" % group)


def parse_mode(mode):
    """``'0600'``/``'600'``/``0o600`` -> int; None stays None."""
    if mode is None or mode == "":
        return None
    if isinstance(mode, int):
        return mode
    text = str(mode).strip()
    if not re.match(r"^0?[0-7]{3,4}$", text):
        raise SqliteOpsError("mode %r: give an octal mode such as '0600'" % (mode,))
    return int(text, 8)


def apply_ownership(path, uid=-1, gid=-1, mode=None):
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)


def _uri_ro(path):
    abspath = os.path.abspath(path)
    return "file:%s?mode=ro" % _url_quote(abspath, safe="/")


def _deadline_progress(deadline, what):
    """Progress callback for Connection.backup that gives up at ``deadline``.

    Python retries SQLITE_BUSY/SQLITE_LOCKED forever; raising from the
    callback aborts the backup (sqlite3_backup_finish rolls the dest back).
    """
    def progress(status, remaining, total):
        if status in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
            if time.monotonic() > deadline:
                raise LockTimeout("%s: still locked by another connection after the lock timeout" % what)
    return progress


# ---------------------------------------------------------------------------
# Opening and inspecting
# ---------------------------------------------------------------------------

def check_header(path):
    """Raise DatabaseMissing / NotADatabase unless ``path`` looks like SQLite 3."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DatabaseMissing("%s: no such file" % path)
        raise SqliteOpsError("%s: cannot stat: %s" % (path, e.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise DatabaseMissing("%s: not a regular file" % path)
    if st.st_size == 0:
        raise NotADatabase("%s: file is empty (0 bytes), not an SQLite database" % path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except (IOError, OSError) as e:
        raise SqliteOpsError("%s: cannot read: %s" % (path, e.strerror))
    if not head.startswith(SQLITE_MAGIC):
        raise NotADatabase("%s: not an SQLite database (no 'SQLite format 3' header)" % path)
    if len(head) < HEADER_SIZE:
        raise DatabaseCorrupt("%s: file is truncated (%d bytes, shorter than the 100-byte SQLite header)" % (path, len(head)))
    return st


def open_ro(path, timeout=DEFAULT_LOCK_TIMEOUT):
    """Open ``path`` read-only (``mode=ro`` URI, reads frames in ``-wal``)."""
    check_header(path)
    conn = sqlite3.connect(_uri_ro(path), uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only=1")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        conn.close()
        raise _classify(path, e)
    return conn


def open_rw(path, timeout=DEFAULT_LOCK_TIMEOUT):
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    return conn


def _classify(path, exc):
    text = str(exc)
    low = text.lower()
    if "file is not a database" in low or "file is encrypted" in low:
        return NotADatabase("%s: not an SQLite database (%s)" % (path, text))
    if "malformed" in low or "corrupt" in low or "disk i/o" in low:
        return DatabaseCorrupt("%s: database is corrupt: %s" % (path, text))
    if "locked" in low or "busy" in low:
        return LockTimeout("%s: database is locked: %s" % (path, text))
    return SqliteOpsError("%s: %s" % (path, text))


def _pragma1(conn, name):
    row = conn.execute("PRAGMA %s" % name).fetchone()
    return row[0] if row else None


def db_info(conn):
    """journal_mode, page_size, page_count, freelist_count, user_version, application_id."""
    return {
        "journal_mode": str(_pragma1(conn, "journal_mode")).lower(),
        "page_size": int(_pragma1(conn, "page_size")),
        "page_count": int(_pragma1(conn, "page_count")),
        "freelist_count": int(_pragma1(conn, "freelist_count")),
        "user_version": int(_pragma1(conn, "user_version")),
        "application_id": int(_pragma1(conn, "application_id")),
    }


def _file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------------
# Integrity
# ---------------------------------------------------------------------------

def check_integrity(path, check="full", foreign_keys=True, max_errors=100, timeout=DEFAULT_LOCK_TIMEOUT):
    """Check ``path`` without writing it.

    Returns a dict: ok, errors, foreign_key_violations, journal_mode, page_size,
    page_count, freelist_count, size_bytes, wal_size_bytes, user_version,
    application_id, sqlite_version.  Raises DatabaseMissing / NotADatabase;
    a corrupt database gives ``ok: False`` with the errors, not an exception.
    """
    if check not in ("full", "quick"):
        raise ValueError("check must be 'full' or 'quick'")
    max_errors = int(max_errors) if max_errors else 100
    result = {
        "path": path,
        "ok": False,
        "check": check,
        "errors": [],
        "foreign_key_violations": [],
        "journal_mode": None,
        "page_size": None,
        "page_count": None,
        "freelist_count": None,
        "size_bytes": None,
        "wal_size_bytes": None,
        "user_version": None,
        "application_id": None,
        "sqlite_version": sqlite3.sqlite_version,
    }
    try:
        conn = open_ro(path, timeout=timeout)
    except DatabaseCorrupt as e:
        result["size_bytes"] = _file_size(path)
        result["errors"] = [e.msg]
        return result
    try:
        try:
            conn.execute("BEGIN")  # one snapshot for every pragma below
            result.update(db_info(conn))
            pragma = "integrity_check" if check == "full" else "quick_check"
            rows = conn.execute("PRAGMA %s(%d)" % (pragma, max_errors)).fetchall()
            messages = [r[0] for r in rows]
            if messages != ["ok"]:
                result["errors"] = messages[:max_errors]
            if foreign_keys:
                cur = conn.execute("PRAGMA foreign_key_check")
                for row in cur:
                    result["foreign_key_violations"].append(
                        {"table": row[0], "rowid": row[1], "parent": row[2], "fkid": row[3]})
                    if len(result["foreign_key_violations"]) >= max_errors:
                        break
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            err = _classify(path, e)
            if not isinstance(err, DatabaseCorrupt):
                raise err
            result["errors"].append(err.msg)
    finally:
        conn.close()
    result["size_bytes"] = _file_size(path)
    result["wal_size_bytes"] = _file_size(path + "-wal")
    result["ok"] = not result["errors"] and not result["foreign_key_violations"]
    return result


def integrity_message(result):
    """One line that says why an integrity result is not ok."""
    path = result.get("path")
    parts = []
    if result.get("errors"):
        errs = result["errors"]
        more = " (and %d more)" % (len(errs) - 3) if len(errs) > 3 else ""
        pragma = "integrity_check" if result.get("check") != "quick" else "quick_check"
        parts.append("%s failed: %s%s" % (pragma, "; ".join(str(e) for e in errs[:3]), more))
    if result.get("foreign_key_violations"):
        v = result["foreign_key_violations"]
        first = v[0]
        parts.append("%d foreign key violation(s), first: table %s rowid %s -> %s"
                     % (len(v), first["table"], first["rowid"], first["parent"]))
    return "%s: database is not ok: %s" % (path, "; ".join(parts) or "unknown problem")


def require_ok(path, check="full", foreign_keys=True, max_errors=100, timeout=DEFAULT_LOCK_TIMEOUT):
    result = check_integrity(path, check=check, foreign_keys=foreign_keys, max_errors=max_errors, timeout=timeout)
    if not result["ok"]:
        raise DatabaseCorrupt(integrity_message(result), result=result)
    return result


# ---------------------------------------------------------------------------
# Schema and content
# ---------------------------------------------------------------------------

def _qi(name):
    return '"%s"' % name.replace('"', '""')


def read_schema(conn):
    """{table: [(column, declared type), ...]} for the user tables (not sqlite_*)."""
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")]
    schema = {}
    for t in tables:
        cols = conn.execute("PRAGMA table_info(%s)" % _qi(t)).fetchall()
        schema[t] = [(c[1], (c[2] or "").upper()) for c in cols]
    return schema


def schema_text(conn):
    """The CREATE statements of the database, sorted, one per line (for --diff)."""
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, name").fetchall()
    return "".join("%s;\n" % " ".join(r[2].split()) for r in rows)


def compare_schemas(src_schema, dest_schema):
    """Differences in tables and columns; empty dict when equal.

    Columns are compared by name and declared type (case-insensitive); their
    order, indexes, views and triggers are not compared.
    """
    diff = {}
    only_src = sorted(set(src_schema) - set(dest_schema))
    only_dest = sorted(set(dest_schema) - set(src_schema))
    if only_src:
        diff["tables_only_in_src"] = only_src
    if only_dest:
        diff["tables_only_in_dest"] = only_dest
    columns = {}
    for t in sorted(set(src_schema) & set(dest_schema)):
        s = dict(src_schema[t])
        d = dict(dest_schema[t])
        entry = {}
        cs = sorted(set(s) - set(d))
        cd = sorted(set(d) - set(s))
        changed = dict((c, {"dest": d[c], "src": s[c]}) for c in sorted(set(s) & set(d)) if s[c] != d[c])
        if cs:
            entry["only_in_src"] = cs
        if cd:
            entry["only_in_dest"] = cd
        if changed:
            entry["type_changed"] = changed
        if entry:
            columns[t] = entry
    if columns:
        diff["columns"] = columns
    return diff


def describe_schema_diff(diff):
    parts = []
    if diff.get("tables_only_in_src"):
        parts.append("tables only in src: %s" % ", ".join(diff["tables_only_in_src"]))
    if diff.get("tables_only_in_dest"):
        parts.append("tables only in dest: %s" % ", ".join(diff["tables_only_in_dest"]))
    for t, e in sorted(diff.get("columns", {}).items()):
        sub = []
        if e.get("only_in_src"):
            sub.append("columns only in src: %s" % ", ".join(e["only_in_src"]))
        if e.get("only_in_dest"):
            sub.append("columns only in dest: %s" % ", ".join(e["only_in_dest"]))
        for c, ty in sorted(e.get("type_changed", {}).items()):
            sub.append("column %s type %s in dest, %s in src" % (c, ty["dest"] or "(none)", ty["src"] or "(none)"))
        parts.append("table %s: %s" % (t, ", ".join(sub)))
    return "; ".join(parts)


def _typed(row):
    return tuple((type(v).__name__, v) for v in row)


def _table_rows(conn, table):
    try:
        return conn.execute("SELECT * FROM %s ORDER BY rowid" % _qi(table))
    except sqlite3.OperationalError:  # WITHOUT ROWID table
        ncols = len(conn.execute("PRAGMA table_info(%s)" % _qi(table)).fetchall())
        order = ", ".join(str(i + 1) for i in range(ncols))
        return conn.execute("SELECT * FROM %s ORDER BY %s" % (_qi(table), order))


def same_content(conn_a, conn_b):
    """True when two databases hold the same schema, user_version, application_id and rows.

    Both connections must be inside a read transaction for a consistent
    answer.  Stops at the first difference.
    """
    for pragma in ("user_version", "application_id"):
        if _pragma1(conn_a, pragma) != _pragma1(conn_b, pragma):
            return False
    if schema_text(conn_a) != schema_text(conn_b):
        return False
    tables = [r[0] for r in conn_a.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")]
    for t in tables:
        if t == "sqlite_sequence" or not t.startswith("sqlite_"):
            ca = _table_rows(conn_a, t)
            cb = _table_rows(conn_b, t)
            while True:
                ra = ca.fetchmany(1000)
                rb = cb.fetchmany(1000)
                if len(ra) != len(rb):
                    return False
                if not ra:
                    break
                for x, y in zip(ra, rb):
                    if x != y or _typed(x) != _typed(y):
                        return False
    return True


# ---------------------------------------------------------------------------
# Retention (restic forget --keep-* semantics)
# ---------------------------------------------------------------------------

def _bucket(rule, dt, nr):
    if rule == "last":
        return nr
    if rule == "hourly":
        return (dt.year, dt.month, dt.day, dt.hour)
    if rule == "daily":
        return (dt.year, dt.month, dt.day)
    if rule == "weekly":
        iso = dt.isocalendar()
        return (iso[0], iso[1])  # ISO year and week, as restic (Go ISOWeek)
    if rule == "monthly":
        return (dt.year, dt.month)
    if rule == "yearly":
        return dt.year
    raise ValueError("unknown retention rule %r" % rule)


def normalize_keep(keep):
    """Validate a keep dict; 0/None = rule off, -1 = unlimited."""
    out = {}
    for k, v in (keep or {}).items():
        if k not in RETENTION_RULES:
            raise SqliteOpsError("keep: unknown rule %r (use %s)" % (k, ", ".join(RETENTION_RULES)))
        if v is None:
            continue
        v = int(v)
        if v < -1:
            raise SqliteOpsError("keep.%s: %d is not allowed (use a count, 0 for off or -1 for unlimited)" % (k, v))
        if v != 0:
            out[k] = v
    return out


def apply_retention(items, keep, protect=()):
    """Split backups into (kept, pruned) names with restic's forget semantics.

    ``items``: iterable of (name, datetime).  ``keep``: dict of counts for
    last/hourly/daily/weekly/monthly/yearly (0 or missing: rule off, -1:
    unlimited).  Walking the backups newest first, each rule keeps the newest
    backup of each of its last n periods (hour, day, ISO week, month, year)
    that hold a backup; ``last`` keeps the n newest.  A rule with count left
    when it reaches the oldest backup keeps that one too (restic >= 0.17).
    Rules are ORed.  An empty policy keeps everything.  Names in ``protect``
    are always kept.  Both lists come newest first.
    """
    keep = normalize_keep(keep)
    ordered = sorted(items, key=lambda it: (it[1], it[0]), reverse=True)
    if not keep:
        return [it[0] for it in ordered], []
    counts = dict((r, keep.get(r, 0)) for r in RETENTION_RULES)
    last_val = dict((r, None) for r in RETENTION_RULES)
    kept, pruned = [], []
    n_items = len(ordered)
    for nr, (name, dt) in enumerate(ordered):
        keep_it = name in protect
        for rule in RETENTION_RULES:
            if counts[rule] > 0 or counts[rule] == -1:
                val = _bucket(rule, dt, nr)
                if val != last_val[rule] or nr == n_items - 1:
                    keep_it = True
                    last_val[rule] = val
                    if counts[rule] > 0:
                        counts[rule] -= 1
        (kept if keep_it else pruned).append(name)
    return kept, pruned


def backup_name_regex(prefix):
    return re.compile(r"^%s-(\d{8}T\d{6})(?:\.(\d{6}))?Z\.db(\.gz)?$" % re.escape(prefix))


def list_backups(dest_dir, prefix):
    """[(file name, datetime UTC)] of the published backups of ``prefix``."""
    rx = backup_name_regex(prefix)
    out = []
    try:
        names = os.listdir(dest_dir)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return out
        raise
    for name in names:
        m = rx.match(name)
        if not m:
            continue
        dt = datetime.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=datetime.timezone.utc)
        if m.group(2):
            dt = dt.replace(microsecond=int(m.group(2)))
        out.append((name, dt))
    return out


# ---------------------------------------------------------------------------
# Backup
# ---------------------------------------------------------------------------

def copy_database(src_conn, dest_path, lock_timeout=DEFAULT_LOCK_TIMEOUT, what=None):
    """Copy an open source database into a NEW file ``dest_path`` in one step.

    The destination is written without journal (it is a private temp file,
    verified before anyone uses it); the copy is left in rollback-journal
    (DELETE) mode so that it is one self-contained file.
    """
    dst = open_rw(dest_path, timeout=lock_timeout)
    try:
        dst.execute("PRAGMA journal_mode=OFF")
        dst.execute("PRAGMA synchronous=OFF")
        deadline = time.monotonic() + lock_timeout
        try:
            src_conn.backup(dst, pages=-1, progress=_deadline_progress(deadline, what or dest_path))
        except sqlite3.DatabaseError as e:
            raise BackupFailed("%s: backup API copy failed: %s" % (what or dest_path, e))
        # The copy carries the source's header; make it a standalone file.
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
    for s in SIDE_SUFFIXES:
        _unlink_quiet(dest_path + s)


def _gzip_file(src_path, gz_path, level=6):
    """Compress src_path into gz_path; returns sha256 of the raw input."""
    h = hashlib.sha256()
    with open(src_path, "rb") as fin:
        with open(gz_path, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0) as gz:
                while True:
                    block = fin.read(COPY_CHUNK)
                    if not block:
                        break
                    h.update(block)
                    gz.write(block)
            raw.flush()
            os.fsync(raw.fileno())
    return h.hexdigest()


def _gunzip_sha256(gz_path):
    h = hashlib.sha256()
    with gzip.open(gz_path, "rb") as gz:  # checks CRC and length at the end
        while True:
            block = gz.read(COPY_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path, text, uid=-1, gid=-1, mode=None):
    """Temp file in the same directory, fsync, ownership/mode, rename."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        apply_ownership(tmp, uid, gid, mode)
        os.rename(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _write_json_atomic(path, data, uid=-1, gid=-1, mode=None):
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", uid, gid, mode)


@contextlib.contextmanager
def _prefix_lock(dest_dir, prefix):
    """Serialise backups/pruning of one prefix in one directory (flock)."""
    path = os.path.join(dest_dir, ".%s.lock" % prefix)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


def remove_stale_temps(dest_dir, prefix):
    """Remove temp files of ``prefix`` left by a killed backup (call under the prefix lock)."""
    removed = []
    rx = re.compile(r"^\.%s-\d{8}T\d{6}(?:\.\d{6})?Z\.db(?:\.gz)?\.\d+\.tmp(?:-journal|-wal|-shm)?$" % re.escape(prefix))
    for name in os.listdir(dest_dir):
        if rx.match(name):
            _unlink_quiet(os.path.join(dest_dir, name))
            removed.append(name)
    return removed


def backup_file_name(prefix, now, compress, dest_dir=None):
    base = "%s-%s" % (prefix, now.strftime(TIMESTAMP_FORMAT))
    ext = ".db.gz" if compress == "gzip" else ".db"
    name = base + ext
    if dest_dir is not None and any(os.path.exists(os.path.join(dest_dir, base + e)) for e in (".db", ".db.gz")):
        # A second backup in the same second: add microseconds.
        name = "%s-%s.%06dZ%s" % (prefix, now.strftime("%Y%m%dT%H%M%S"), now.microsecond, ext)
    return name


def plan_retention(dest_dir, prefix, keep, new_name=None):
    """(kept, pruned) file names for ``prefix`` in ``dest_dir`` if ``new_name`` were added."""
    items = list_backups(dest_dir, prefix)
    protect = ()
    if new_name:
        m = backup_name_regex(prefix).match(new_name)
        if m is None:
            raise SqliteOpsError("internal error: %s does not match the backup name pattern" % new_name)
        names = [it[0] for it in items]
        if new_name not in names:
            dt = datetime.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=datetime.timezone.utc)
            if m.group(2):
                dt = dt.replace(microsecond=int(m.group(2)))
            items.append((new_name, dt))
        protect = (new_name,)
    return apply_retention(items, keep, protect=protect)


def prune_backups(dest_dir, names):
    """Delete backups (and their manifests); returns the paths removed."""
    removed = []
    for name in names:
        p = os.path.join(dest_dir, name)
        if _unlink_quiet(p):
            removed.append(p)
        _unlink_quiet(p + ".json")
    if names:
        fsync_dir(dest_dir)
    return removed


def backup_database(src, dest_dir, prefix=None, compress="gzip", compress_level=6, verify=True, check="full",
                    keep=None, owner=None, group=None, mode=0o600, lock_timeout=DEFAULT_LOCK_TIMEOUT,
                    check_mode=False, now=None, create_dest_dir=True):
    """Make a verified online backup of ``src`` in ``dest_dir`` and apply retention.

    Order: one-step backup-API copy into a temp file in dest_dir -> integrity
    check of the copy -> (gzip -> verify the gzip stream) -> fsync -> rename to
    ``<prefix>-<UTC timestamp>.db[.gz]`` -> fsync dir -> manifest
    ``<backup>.json`` (temp, fsync, rename) -> prune by retention, never the
    new backup.  A kill at any point leaves no file under a final name that is
    not complete and verified (temp names start with a dot and end in .tmp and
    are removed by the next run).
    """
    t0 = time.monotonic()
    if compress not in ("none", "gzip"):
        raise SqliteOpsError("compress must be 'none' or 'gzip'")
    if check not in ("full", "quick"):
        raise SqliteOpsError("check must be 'full' or 'quick'")
    keep = normalize_keep(keep)
    src = os.path.abspath(src)
    dest_dir = os.path.abspath(dest_dir)
    prefix = prefix or db_base_name(src)
    if "/" in prefix or prefix.startswith("."):
        raise SqliteOpsError("prefix %r: must not contain '/' or start with '.'" % prefix)
    uid, gid, fmode = resolve_uid(owner), resolve_gid(group), parse_mode(mode)
    now = now or utcnow()
    check_header(src)
    if os.path.exists(dest_dir) and not os.path.isdir(dest_dir):
        raise BackupFailed("dest_dir %s: exists and is not a directory" % dest_dir)
    result = {"src": src, "dest_dir": dest_dir, "prefix": prefix, "compress": compress, "changed": True,
              "backup_file": None, "manifest_file": None, "sha256": None, "size_bytes": None, "kept": [],
              "pruned": [], "stale_removed": [], "elapsed_s": None}

    if check_mode:
        # Read-only: make sure src opens, then say what would happen.
        open_ro(src, timeout=lock_timeout).close()
        name = backup_file_name(prefix, now, compress, dest_dir if os.path.isdir(dest_dir) else None)
        kept, pruned = plan_retention(dest_dir, prefix, keep, new_name=name)
        result.update(backup_file=os.path.join(dest_dir, name), manifest_file=os.path.join(dest_dir, name) + ".json",
                      kept=[os.path.join(dest_dir, n) for n in kept], pruned=[os.path.join(dest_dir, n) for n in pruned],
                      elapsed_s=round(time.monotonic() - t0, 3))
        return result

    if not os.path.isdir(dest_dir):
        if not create_dest_dir:
            raise BackupFailed("dest_dir %s: no such directory" % dest_dir)
        os.makedirs(dest_dir, 0o700)

    with _prefix_lock(dest_dir, prefix):
        result["stale_removed"] = remove_stale_temps(dest_dir, prefix)
        name = backup_file_name(prefix, now, compress, dest_dir)
        final = os.path.join(dest_dir, name)
        stem = name[: -len(".db.gz")] if name.endswith(".gz") else name[: -len(".db")]
        tmp_db = os.path.join(dest_dir, ".%s.db.%d.tmp" % (stem, os.getpid()))
        tmp_gz = os.path.join(dest_dir, ".%s.db.gz.%d.tmp" % (stem, os.getpid()))
        temps = [tmp_db, tmp_gz] + [tmp_db + s for s in SIDE_SUFFIXES]
        try:
            fd = os.open(tmp_db, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            src_conn = open_ro(src, timeout=lock_timeout)
            try:
                src_info = db_info(src_conn)
                copy_database(src_conn, tmp_db, lock_timeout=lock_timeout, what=src)
            finally:
                src_conn.close()
            copy_check = check_integrity(tmp_db, check=check if verify else "quick", foreign_keys=False)
            if verify and not copy_check["ok"]:
                raise BackupFailed("%s: the backup copy did not verify (%s); nothing was published"
                                   % (src, integrity_message(copy_check)))
            raw_sha = sha256_file(tmp_db)
            raw_size = os.stat(tmp_db).st_size
            if compress == "gzip":
                gz_raw_sha = _gzip_file(tmp_db, tmp_gz, level=compress_level)
                if gz_raw_sha != raw_sha:
                    raise BackupFailed("%s: the copy changed while it was compressed" % src)
                if verify and _gunzip_sha256(tmp_gz) != raw_sha:
                    raise BackupFailed("%s: the gzip stream did not decompress to the verified copy" % src)
                _unlink_quiet(tmp_db)
                publish = tmp_gz
            else:
                publish = tmp_db
            fsync_file(publish)
            apply_ownership(publish, uid, gid, fmode)
            sha = sha256_file(publish) if publish != tmp_db else raw_sha
            size = os.stat(publish).st_size
            if os.path.exists(final):
                raise BackupFailed("%s: already exists; refusing to overwrite a backup" % final)
            os.rename(publish, final)
            fsync_dir(dest_dir)
        except BaseException:
            for t in temps:
                _unlink_quiet(t)
            raise
        manifest = {
            "file": name,
            "sha256": sha,
            "size": size,
            "source": src,
            "page_count": copy_check["page_count"],
            "page_size": copy_check["page_size"],
            "user_version": copy_check["user_version"],
            "source_journal_mode": src_info["journal_mode"],
            "created": iso_utc(now),
            "compress": compress,
            "db_sha256": raw_sha,
            "db_size": raw_size,
            "verified": copy_check["check"] if verify else None,
            "sqlite_version": sqlite3.sqlite_version,
        }
        _write_json_atomic(final + ".json", manifest, uid, gid, fmode)
        fsync_dir(dest_dir)
        kept, pruned = plan_retention(dest_dir, prefix, keep, new_name=name)
        removed = prune_backups(dest_dir, pruned)
    result.update(backup_file=final, manifest_file=final + ".json", sha256=sha, size_bytes=size,
                  page_count=copy_check["page_count"], user_version=copy_check["user_version"],
                  created=manifest["created"], kept=[os.path.join(dest_dir, n) for n in kept], pruned=removed,
                  elapsed_s=round(time.monotonic() - t0, 3))
    return result


def read_manifest(backup_file):
    with open(backup_file + ".json") as f:
        return json.load(f)


def verify_backup_file(backup_file):
    """Check a published backup against its manifest (sha256 and size)."""
    man = read_manifest(backup_file)
    st = os.stat(backup_file)
    if st.st_size != man["size"] or sha256_file(backup_file) != man["sha256"]:
        raise BackupFailed("%s: does not match its manifest (size or sha256 differ)" % backup_file)
    return man


# ---------------------------------------------------------------------------
# Processes holding a file open
# ---------------------------------------------------------------------------

def _proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            raw = f.read()
        text = raw.replace(b"\x00", b" ").decode("utf-8", "replace").strip()
        if text:
            return text[:200]
        with open("/proc/%d/comm" % pid) as f:
            return "[%s]" % f.read().strip()
    except (IOError, OSError):
        return "?"


def find_holders(paths, proc="/proc"):
    """Processes that have one of ``paths`` open (via /proc/<pid>/fd).

    Returns (holders, uninspectable): holders is a list of dicts
    {pid, cmdline, path}; uninspectable is the list of PIDs whose fd table
    could not be read (permission), so a non-root caller cannot be sure.
    Files are matched by device and inode, so any name (or a deleted one)
    counts.  The calling process is ignored.
    """
    targets = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        targets[(st.st_dev, st.st_ino)] = p
    holders, uninspectable = [], []
    if not targets:
        return holders, uninspectable
    me = os.getpid()
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        fd_dir = os.path.join(proc, entry, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                uninspectable.append(pid)
            continue
        found = set()
        for fd in fds:
            try:
                st = os.stat(os.path.join(fd_dir, fd))
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in targets and targets[key] not in found:
                found.add(targets[key])
                holders.append({"pid": pid, "cmdline": _proc_cmdline(pid), "path": targets[key]})
    return holders, uninspectable


def require_not_open(path):
    paths = [path] + [path + s for s in SIDE_SUFFIXES]
    holders, uninspectable = find_holders(paths)
    if holders:
        pids = sorted(set(h["pid"] for h in holders))
        desc = ", ".join("PID %d (%s) has %s open" % (h["pid"], h["cmdline"], h["path"]) for h in holders)
        raise FileInUse("%s: refusing to replace by rename while processes hold it open: PIDs %s: %s. "
                        "Stop them first or use method=online"
                        % (path, ", ".join(str(p) for p in pids), desc), holders=holders)
    if uninspectable and os.geteuid() != 0:
        raise FileInUse("%s: cannot tell whether it is open: %d processes could not be inspected "
                        "(not root); run with become: true or use method=online" % (path, len(uninspectable)))
    return holders


# ---------------------------------------------------------------------------
# Swap
# ---------------------------------------------------------------------------

def _describe_state(conn):
    return "user_version = %d\n%s" % (int(_pragma1(conn, "user_version")), schema_text(conn))


def _page_size_msg(dest, dest_ps, src_ps):
    return ("%s: page size %d differs from src's %d and dest is in WAL mode: the backup API cannot copy into it. "
            "Rebuild src with PRAGMA page_size=%d; VACUUM; (in rollback-journal mode) or use method=rename"
            % (dest, dest_ps, src_ps, dest_ps))


def online_copy(src_conn, dest_path, lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """Copy src into the live dest in ONE write transaction (backup API, one step).

    Connections that have dest open see the new content at their next
    transaction; in WAL mode the new pages go through dest's own -wal, so the
    -wal/-shm always match the database.  Returns seconds the write lock was
    held (approximately: the duration of the single backup step).
    """
    dest_conn = open_rw(dest_path, timeout=lock_timeout)
    try:
        dest_mode = str(_pragma1(dest_conn, "journal_mode")).lower()
        src_ps = int(_pragma1(src_conn, "page_size"))
        dest_ps = int(_pragma1(dest_conn, "page_size"))
        if dest_mode == "wal" and src_ps != dest_ps:
            raise PageSizeMismatch(_page_size_msg(dest_path, dest_ps, src_ps))
        if dest_mode == "wal":
            # Do not fsync the -wal while holding the write lock: the commit is atomic
            # either way, and the -wal is synced right after the lock is released,
            # before this function returns (so the swap is durable when we report it).
            dest_conn.execute("PRAGMA synchronous=NORMAL")
            dest_conn.execute("PRAGMA wal_autocheckpoint=0")
        deadline = time.monotonic() + lock_timeout
        t = time.monotonic()
        try:
            src_conn.backup(dest_conn, pages=-1, progress=_deadline_progress(deadline, dest_path))
        except sqlite3.DatabaseError as e:
            raise _classify(dest_path, e)
        held = time.monotonic() - t
        if dest_mode == "wal":
            # Checkpoint at once (it syncs the -wal first): the application's writers,
            # waiting for the lock, would otherwise find a -wal as large as the database
            # at their next commit and run that checkpoint in their own commit.
            try:
                dest_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.DatabaseError:
                pass
            if os.path.exists(dest_path + "-wal"):
                fsync_file(dest_path + "-wal")
    finally:
        dest_conn.close()
    return held


def rename_copy(src_conn, dest_path, lock_timeout=DEFAULT_LOCK_TIMEOUT, keep_journal_mode=None):
    """Replace dest by a fresh copy of src via rename(2); no process may hold dest open."""
    dest_dir = os.path.dirname(os.path.abspath(dest_path))
    exists = os.path.exists(dest_path)
    st = os.stat(dest_path) if exists else None
    require_not_open(dest_path)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(dest_path), suffix=".swap.tmp", dir=dest_dir)
    os.close(fd)
    try:
        copy_database(src_conn, tmp, lock_timeout=lock_timeout, what=dest_path)
        if keep_journal_mode == "wal":
            c = open_rw(tmp)
            try:
                c.execute("PRAGMA journal_mode=WAL").fetchall()
            finally:
                c.close()
            for s in SIDE_SUFFIXES:
                _unlink_quiet(tmp + s)
        fsync_file(tmp)
        if st is not None:
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        else:
            os.chmod(tmp, 0o644 & ~_umask())
        if exists:
            require_not_open(dest_path)  # again, just before the point of no return
            # Fold the old -wal into the old file (it is backed up already) so that
            # removing the -wal never loses anything, even if we die right here.
            old = open_rw(dest_path, timeout=lock_timeout)
            try:
                old.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.DatabaseError:
                pass
            finally:
                old.close()
            for s in SIDE_SUFFIXES:
                _unlink_quiet(dest_path + s)
        os.rename(tmp, dest_path)
        fsync_dir(dest_dir)
    except BaseException:
        for t in [tmp] + [tmp + s for s in SIDE_SUFFIXES]:
            _unlink_quiet(t)
        raise


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def restore_backup(backup_file, dest, method="online", lock_timeout=DEFAULT_LOCK_TIMEOUT):
    """Put a backup (.db or .db.gz, made by backup_database) back into ``dest``."""
    work = None
    path = backup_file
    try:
        if backup_file.endswith(".gz"):
            fd, work = tempfile.mkstemp(prefix=".restore.", suffix=".tmp", dir=os.path.dirname(os.path.abspath(dest)))
            with os.fdopen(fd, "wb") as out:
                with gzip.open(backup_file, "rb") as gz:
                    shutil.copyfileobj(gz, out, COPY_CHUNK)
            path = work
        src_conn = open_ro(path, timeout=lock_timeout)
        try:
            if method == "online":
                online_copy(src_conn, dest, lock_timeout=lock_timeout)
            else:
                rename_copy(src_conn, dest, lock_timeout=lock_timeout)
        finally:
            src_conn.close()
    finally:
        if work:
            _unlink_quiet(work)


def swap_database(src, dest, method="online", backup=True, backup_dir=None, check="full", foreign_keys=False,
                  allow_schema_change=False, backup_compress="none", lock_timeout=DEFAULT_LOCK_TIMEOUT,
                  check_mode=False):
    """Replace the content of live database ``dest`` by ``src`` without losing writes.

    Returns a dict: changed, method, backup_file, src_sha256, elapsed_s,
    lock_held_s, schema_diff, diff (before/after text), created.
    """
    t0 = time.monotonic()
    if method not in ("online", "rename"):
        raise SqliteOpsError("method must be 'online' or 'rename'")
    src = os.path.abspath(src)
    dest = os.path.abspath(dest)
    if src == dest:
        raise SqliteOpsError("src and dest are the same file: %s" % src)
    result = {"changed": False, "method": method, "backup_file": None, "src_sha256": None, "elapsed_s": None,
              "lock_held_s": None, "schema_diff": {}, "created": False, "src": src, "dest": dest,
              "diff": {"before": "", "after": "", "before_header": "%s (before)" % dest,
                       "after_header": "%s (after, from %s)" % (dest, src)}}
    src_check = require_ok(src, check=check, foreign_keys=foreign_keys)  # a bad src never touches dest
    result["src_sha256"] = sha256_file(src)
    src_conn = open_ro(src, timeout=lock_timeout)
    try:
        src_conn.execute("BEGIN")
        result["diff"]["after"] = _describe_state(src_conn)
        src_schema = read_schema(src_conn)
        dest_exists = os.path.exists(dest)
        if not dest_exists:
            if not os.path.isdir(os.path.dirname(dest)):
                raise SqliteOpsError("%s: directory of dest does not exist" % dest)
            result.update(changed=True, created=True)
            if check_mode:
                return _finish(result, t0)
            src_conn.execute("COMMIT")
            rename_copy(src_conn, dest, lock_timeout=lock_timeout)
            require_ok(dest, check=check, foreign_keys=foreign_keys)
            return _finish(result, t0)
        dest_conn = open_ro(dest, timeout=lock_timeout)
        try:
            dest_conn.execute("BEGIN")
            result["diff"]["before"] = _describe_state(dest_conn)
            diff = compare_schemas(src_schema, read_schema(dest_conn))
            result["schema_diff"] = diff
            if diff and not allow_schema_change:
                raise SchemaMismatch("%s: schema of src %s differs from dest (%s); refusing to swap. Set "
                                     "allow_schema_change: true if this is intended" % (dest, src, describe_schema_diff(diff)),
                                     diff=diff)
            if same_content(src_conn, dest_conn):
                return _finish(result, t0)
            dest_mode = str(_pragma1(dest_conn, "journal_mode")).lower()
            dest_ps = int(_pragma1(dest_conn, "page_size"))
            if method == "online" and dest_mode == "wal" and int(src_check["page_size"]) != dest_ps:
                raise PageSizeMismatch(_page_size_msg(dest, dest_ps, int(src_check["page_size"])))
        finally:
            dest_conn.close()
        result["changed"] = True
        if method == "rename":
            require_not_open(dest)  # refuse early, also in check mode
        if check_mode:
            return _finish(result, t0)
        src_conn.execute("COMMIT")
        if backup:
            b = backup_database(dest, backup_dir or os.path.dirname(dest), prefix="%s-preswap" % db_base_name(dest),
                                compress=backup_compress, verify=True, check=check, lock_timeout=lock_timeout)
            result["backup_file"] = b["backup_file"]
        try:
            if method == "online":
                result["lock_held_s"] = round(online_copy(src_conn, dest, lock_timeout=lock_timeout), 3)
            else:
                rename_copy(src_conn, dest, lock_timeout=lock_timeout, keep_journal_mode=dest_mode)
        except SqliteOpsError:
            raise  # nothing was replaced: the copy is one transaction / one rename
        after = check_integrity(dest, check=check, foreign_keys=foreign_keys)
        if not after["ok"]:
            restored = False
            if result["backup_file"]:
                try:
                    restore_backup(result["backup_file"], dest, method=method, lock_timeout=lock_timeout)
                    restored = True
                except SqliteOpsError as e:
                    raise SwapFailed("%s: not ok after the swap (%s) and restoring %s failed: %s"
                                     % (dest, integrity_message(after), result["backup_file"], e.msg),
                                     restored=False, backup_file=result["backup_file"])
            raise SwapFailed("%s: not ok after the swap (%s); %s" % (
                dest, integrity_message(after),
                "restored from %s" % result["backup_file"] if restored else "no backup was taken (backup: false)"),
                restored=restored, backup_file=result["backup_file"])
    finally:
        src_conn.close()
    return _finish(result, t0)


def _finish(result, t0):
    result["elapsed_s"] = round(time.monotonic() - t0, 3)
    return result


# ---------------------------------------------------------------------------
# Command line (the backup tool the sqlite_backup role installs)
# ---------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="sqlite_ops", description="SQLite integrity check, online backup, swap.")
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("integrity", help="check a database (read-only)")
    p.add_argument("path")
    p.add_argument("--check", choices=("full", "quick"), default="full")
    p.add_argument("--no-foreign-keys", action="store_true")
    p = sub.add_parser("backup", help="verified online backup with retention")
    p.add_argument("--src", required=True)
    p.add_argument("--dest-dir", required=True)
    p.add_argument("--prefix")
    p.add_argument("--compress", choices=("none", "gzip"), default="gzip")
    p.add_argument("--check", choices=("full", "quick"), default="full")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--mode", default="0600")
    p.add_argument("--owner")
    p.add_argument("--group")
    for r in RETENTION_RULES:
        p.add_argument("--keep-%s" % r, type=int, default=0)
    p = sub.add_parser("restore", help="restore a backup into a database")
    p.add_argument("--backup", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--method", choices=("online", "rename"), default="online")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "integrity":
            out = check_integrity(args.path, check=args.check, foreign_keys=not args.no_foreign_keys)
            rc = 0 if out["ok"] else 1
        elif args.cmd == "backup":
            keep = dict((r, getattr(args, "keep_%s" % r)) for r in RETENTION_RULES)
            out = backup_database(args.src, args.dest_dir, prefix=args.prefix, compress=args.compress,
                                  verify=not args.no_verify, check=args.check, keep=keep, owner=args.owner,
                                  group=args.group, mode=args.mode)
            rc = 0
        elif args.cmd == "restore":
            restore_backup(args.backup, args.dest, method=args.method)
            out = require_ok(args.dest, foreign_keys=False)
            rc = 0
        else:
            parser.print_usage(sys.stderr)
            return 2
    except SqliteOpsError as e:
        sys.stderr.write("error: %s\n" % e.msg)
        return 1
    sys.stdout.write(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
