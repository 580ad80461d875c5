"""Stand-in for the demo app: inserts a row every 50 ms into a WAL database and
answers GET /api/health on 127.0.0.1:8088 with its counters (errors must stay 0)."""
import http.server
import json
import sqlite3
import sys
import threading
import time

DB = sys.argv[1]
STATE = {"written": 0, "errors": 0, "last_error": None}


def writer():
    conn = sqlite3.connect(DB, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    while True:
        try:
            conn.execute("INSERT INTO items(note, payload, created) VALUES ('writer', randomblob(200), ?)",
                         (time.time(),))
            STATE["written"] += 1
        except sqlite3.Error as e:
            STATE["errors"] += 1
            STATE["last_error"] = str(e)
            sys.stderr.write("ERROR insert failed: %s\n" % e)
            sys.stderr.flush()
        time.sleep(0.05)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        try:
            c = sqlite3.connect(DB, timeout=10)
            rows = c.execute("SELECT count(*) FROM items").fetchone()[0]
            c.close()
            body, code = dict(STATE, status="ok", rows=rows), 200
        except sqlite3.Error as e:
            body, code = dict(STATE, status="error", detail=str(e)), 503
        data = json.dumps(body).encode()
        self.send_response(code if self.path == "/api/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


threading.Thread(target=writer, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", 8088), Health).serve_forever()
