"""Creates the scenario's databases: app.db (WAL, written by the writer) and ledger.db (rollback journal)."""
import os
import sqlite3
import sys

for path, mode, rows in ((sys.argv[1], "wal", 20000), (sys.argv[2], "delete", 3000)):
    if os.path.exists(path):
        continue
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=%s" % mode)
    c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT NOT NULL, payload BLOB, created REAL)")
    c.execute("CREATE INDEX items_note ON items(note)")
    c.execute("BEGIN")
    c.executemany("INSERT INTO items(note, payload, created) VALUES ('seed', randomblob(200), 0)", [()] * rows)
    c.execute("COMMIT")
    c.close()
