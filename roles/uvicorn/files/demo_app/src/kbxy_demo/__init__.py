"""kbxy-demo: the demo FastAPI + SQLite application of the kbxy.platform collection."""
