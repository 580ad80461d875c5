"""kbxy-demo, the demo application of the kbxy.platform collection.

FastAPI on SQLite in WAL mode (busy_timeout, synchronous=NORMAL):

- GET /api/health: 200 {"status": "ok"} when the database answers, 503 otherwise
- GET /api/version: application name, release (APP_RELEASE, written by the role into
  each release) and package version
- GET/POST /api/items, GET/PUT/DELETE /api/items/{id}: a small CRUD resource
- GET /: static/index.html (nginx serves the same file from its web root)
- GET /api/_diagnostics: sandbox self-test, only when KBXY_DEMO_DIAGNOSTICS=1

Settings (environment): DATABASE_URL (sqlite:////var/lib/kbxy-demo/kbxy-demo.db),
APP_RELEASE, KBXY_DEMO_DIAGNOSTICS.
"""
import os
import sqlite3
import threading
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

APP_NAME = "kbxy-demo"

# --- SQLite: one connection per thread ----------------------------------------------

DEFAULT_URL = "sqlite:////var/lib/kbxy-demo/kbxy-demo.db"
BUSY_TIMEOUT_MS = 5000
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
)
"""

_local = threading.local()
_schema_lock = threading.Lock()
_schema_ready = False


def database_path() -> Path:
    """The file named by DATABASE_URL (sqlite:///relative or sqlite:////absolute)."""
    url = os.environ.get("DATABASE_URL", DEFAULT_URL)
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"DATABASE_URL must start with {prefix!r}: {url!r}")
    return Path(url[len(prefix):])


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(database_path(), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def connection() -> sqlite3.Connection:
    """The calling thread's connection; the schema is created once per process."""
    global _schema_ready  # noqa: PLW0603 - process-wide flag
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _connect()
        _local.conn = conn
    if not _schema_ready:
        with _schema_lock:
            if not _schema_ready:
                conn.execute(SCHEMA)
                _schema_ready = True
    return conn


@contextmanager
def transaction():
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error."""
    conn = connection()
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


STATIC_DIR = Path(__file__).parent / "static"

app = FastAPI(title=APP_NAME, docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)


def package_version() -> str:
    try:
        return metadata.version(APP_NAME)
    except metadata.PackageNotFoundError:
        return "0+unknown"


class ItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)


class Item(ItemIn):
    id: int
    created_at: str


@app.get("/api/health")
def health():
    try:
        conn = connection()
        conn.execute("SELECT count(*) FROM items").fetchone()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    except (sqlite3.Error, OSError, ValueError) as exc:
        return JSONResponse(status_code=503, content={"status": "error", "database": str(exc)})
    return {"status": "ok", "database": "ok", "journal_mode": mode}


@app.get("/api/version")
def version():
    return {
        "app": APP_NAME,
        "version": os.environ.get("APP_RELEASE") or package_version(),
        "package_version": package_version(),
    }


@app.get("/api/items", response_model=list[Item])
def list_items(limit: int = 100, offset: int = 0):
    rows = connection().execute(
        "SELECT * FROM items ORDER BY id LIMIT ? OFFSET ?", (min(max(limit, 0), 1000), max(offset, 0))
    )
    return [dict(row) for row in rows]


@app.post("/api/items", response_model=Item, status_code=201)
def create_item(item: ItemIn):
    with transaction() as conn:
        cur = conn.execute("INSERT INTO items (name, description) VALUES (?, ?)", (item.name, item.description))
        row = conn.execute("SELECT * FROM items WHERE id = ?", (cur.lastrowid,)).fetchone()
    return dict(row)


@app.get("/api/items/{item_id}", response_model=Item)
def get_item(item_id: int):
    row = connection().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        raise HTTPException(status_code=404, detail="item not found")
    return dict(row)


@app.put("/api/items/{item_id}", response_model=Item)
def update_item(item_id: int, item: ItemIn):
    with transaction() as conn:
        cur = conn.execute(
            "UPDATE items SET name = ?, description = ? WHERE id = ?", (item.name, item.description, item_id)
        )
        if cur.rowcount == 0:
            raise HTTPException(status_code=404, detail="item not found")
        row = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
    return dict(row)


@app.delete("/api/items/{item_id}", status_code=204)
def delete_item(item_id: int):
    with transaction() as conn:
        if conn.execute("DELETE FROM items WHERE id = ?", (item_id,)).rowcount == 0:
            raise HTTPException(status_code=404, detail="item not found")


def _attempt(action):
    try:
        action()
    except OSError as exc:
        return f"denied: {exc.strerror}"
    return "allowed"


def _write_probe(directory: str):
    path = Path(directory) / f".kbxy-demo-probe-{os.getpid()}"

    def write():
        path.write_text("probe")
        path.unlink()

    return write


if os.environ.get("KBXY_DEMO_DIAGNOSTICS") == "1":

    @app.get("/api/_diagnostics")
    def diagnostics():
        """What the sandbox allows, seen from inside the service (tests enable it)."""
        status = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
        )
        return {
            "uid": os.getuid(),
            "cap_eff": status["CapEff"].strip(),
            "cap_bnd": status["CapBnd"].strip(),
            "no_new_privs": status.get("NoNewPrivs", "").strip(),
            "seccomp": status.get("Seccomp", "").strip(),
            "write_etc": _attempt(_write_probe("/etc")),
            "write_opt": _attempt(_write_probe("/opt")),
            "write_usr": _attempt(_write_probe("/usr")),
            "write_data": _attempt(_write_probe(str(database_path().parent))),
            "list_home": _attempt(lambda: os.listdir("/home")),
            "list_root": _attempt(lambda: os.listdir("/root")),
        }


@app.get("/", include_in_schema=False)
def index():
    return FileResponse(STATIC_DIR / "index.html")
