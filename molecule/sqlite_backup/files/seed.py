"""Fills the scenario's databases; prints "seeded" when it wrote something.

  seed.py app PATH     the demo app's live database (schema created by the app itself):
                       20000 rows into its items table, so a backup takes a while
  seed.py ledger PATH  a second database in rollback-journal mode, 3000 rows
"""
import os
import sqlite3
import sys

kind, path = sys.argv[1], sys.argv[2]
if kind == "app":
    c = sqlite3.connect(path, timeout=30, isolation_level=None)
    c.execute("PRAGMA busy_timeout=30000")
    if c.execute("SELECT count(*) FROM items").fetchone()[0] < 20000:
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO items(name, description) VALUES ('seed', hex(randomblob(100)))", [()] * 20000)
        c.execute("COMMIT")
        print("seeded")
    c.close()
elif not os.path.exists(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=delete")
    c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT NOT NULL, payload BLOB, created REAL)")
    c.execute("CREATE INDEX items_note ON items(note)")
    c.execute("BEGIN")
    c.executemany("INSERT INTO items(note, payload, created) VALUES ('seed', randomblob(200), 0)", [()] * 3000)
    c.execute("COMMIT")
    c.close()
    print("seeded")
