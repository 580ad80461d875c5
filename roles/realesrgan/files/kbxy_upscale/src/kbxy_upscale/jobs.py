"""Asynchronous jobs: results kept on disk under KBXY_UPSCALE_JOBS_DIR for KBXY_UPSCALE_JOB_TTL s."""
import json
import os
import re
import tempfile
import threading
import time
import uuid

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def write_atomic(path, data):
    """temp file in the same directory -> fsync -> verify -> rename -> fsync the directory."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with open(tmp, "rb") as handle:
            if handle.read() != data:
                raise OSError(f"{tmp}: read-back differs from what was written")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class JobStore:
    """Job states in memory, results and their metadata on disk (a restart keeps finished ones)."""

    def __init__(self, directory, ttl):
        self.directory = directory
        self.ttl = ttl
        self._lock = threading.Lock()
        self._jobs = {}
        self._expired = set()
        os.makedirs(directory, mode=0o750, exist_ok=True)
        for entry in os.listdir(directory):
            if entry.endswith(".json") and JOB_ID.match(entry[:-5]):
                try:
                    with open(os.path.join(directory, entry), encoding="utf-8") as handle:
                        meta = json.load(handle)
                    self._jobs[meta["id"]] = meta
                except (OSError, ValueError, KeyError):
                    continue
            elif entry.startswith(".tmp-"):
                os.unlink(os.path.join(directory, entry))
        self.expire()

    def create(self, params):
        job_id = uuid.uuid4().hex
        now = time.time()
        meta = {"id": job_id, "status": "queued", "created": now, "finished": None, "expires": None, "params": params,
                "error": None, "media_type": None, "size": None}
        with self._lock:
            self._jobs[job_id] = meta
        return job_id

    def update(self, job_id, **fields):
        with self._lock:
            if job_id in self._jobs:
                self._jobs[job_id].update(fields)

    def finish(self, job_id, data, media_type, width, height):
        result = os.path.join(self.directory, job_id + ".result")
        write_atomic(result, data)
        now = time.time()
        with self._lock:
            meta = self._jobs[job_id]
            meta.update(status="done", finished=now, expires=now + self.ttl, media_type=media_type, size=[width, height],
                        bytes=len(data))
            snapshot = dict(meta)
        write_atomic(os.path.join(self.directory, job_id + ".json"), json.dumps(snapshot).encode())

    def fail(self, job_id, status, message):
        now = time.time()
        self.update(job_id, status="failed", error={"status": status, "detail": message}, finished=now, expires=now + self.ttl)

    def get(self, job_id):
        """The job's metadata, ``"expired"``, or None when unknown."""
        self.expire()
        with self._lock:
            if job_id in self._expired:
                return "expired"
            meta = self._jobs.get(job_id)
            return dict(meta) if meta else None

    def result_path(self, job_id):
        return os.path.join(self.directory, job_id + ".result")

    def expire(self):
        """Delete every job whose result has outlived the TTL; returns how many."""
        now = time.time()
        with self._lock:
            gone = [j for j, m in self._jobs.items() if m.get("expires") is not None and m["expires"] <= now]
            for job_id in gone:
                del self._jobs[job_id]
                self._expired.add(job_id)
        for job_id in gone:
            for suffix in (".result", ".json"):
                try:
                    os.unlink(os.path.join(self.directory, job_id + suffix))
                except FileNotFoundError:
                    pass
        return len(gone)
