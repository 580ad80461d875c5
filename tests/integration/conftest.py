"""Run the kbxy.platform SQLite modules through real ansible-playbook on localhost."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))

COLLECTIONS = os.path.join(ROOT, ".collections")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def _ensure_collection_link():
    link = os.path.join(COLLECTIONS, "ansible_collections", "kbxy", "platform")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)


class PlaybookRun(object):
    def __init__(self, proc, results):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.results = results  # task name -> result dict (json callback), None for text runs

    def __getitem__(self, task_name):
        return self.results[task_name]


@pytest.fixture
def playbook(tmp_path):
    """playbook(tasks, check=False, diff=False, text=False) -> PlaybookRun."""
    _ensure_collection_link()

    def run(tasks, check=False, diff=False, text=False, timeout=240):
        play = [{"name": "sqlite modules", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
        pb = tmp_path / ("play-%d.yml" % len(list(tmp_path.glob("play-*.yml"))))
        pb.write_text(json.dumps(play, indent=1))  # JSON is YAML
        empty_cfg = tmp_path / "ansible.cfg"
        empty_cfg.write_text("[defaults]\n")
        env = dict(os.environ)
        env.update({
            "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-local"),
            "ANSIBLE_REMOTE_TMP": str(tmp_path / ".ansible-remote"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default" if text else "ansible.posix.json",
            # an empty config, not the repository's ansible.cfg: its profile_tasks table would follow the JSON
            "ANSIBLE_CONFIG": str(empty_cfg),
        })
        cmd = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local",
               "-e", "ansible_python_interpreter=%s" % sys.executable, str(pb)]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        proc = subprocess.run(cmd, env=env, check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=timeout)
        results = None
        if not text:
            try:
                data = json.loads(proc.stdout)
            except ValueError:
                raise AssertionError("ansible-playbook output is not JSON:\n%s\n%s" % (proc.stdout, proc.stderr))
            results = {}
            for p in data["plays"]:
                for t in p["tasks"]:
                    results[t["task"]["name"]] = t["hosts"]["localhost"]
        return PlaybookRun(proc, results)

    return run
