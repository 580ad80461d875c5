"""Helpers shared by the AWX tests (tests/awx) and the stack scenario's runner test.

Nothing here imitates AWX: it reads what awx_configure.yml defines, and lays out an
ansible-runner private data directory the way AWX's RunJob does (awx/main/tasks/jobs.py:
build_private_data_dir, build_project_dir, build_inventory, build_extra_vars_file,
build_args, build_passwords/get_password_prompts, the `ssh_key` runner parameter).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
AWX_CONFIGURE = ROOT / "playbooks" / "awx_configure.yml"
EE_FILE = ROOT / "execution-environment.yml"
# where tests/awx looks for ansible-runner and ansible-builder when .venv lacks them
AWX_VENV = pathlib.Path(os.environ.get("KBXY_AWX_VENV", pathlib.Path.home() / ".cache" / "kbxy" / "awx-venv"))


def tool(name):
    """Path of a console script: next to this Python first (.venv), else the AWX tools venv."""
    for candidate in (pathlib.Path(sys.executable).parent / name, AWX_VENV / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(
        f"{name} not found in {pathlib.Path(sys.executable).parent} or {AWX_VENV / 'bin'}: "
        f"pip install ansible-runner ansible-builder (see docs/awx.md)"
    )


def configure_play():
    plays = yaml.safe_load(AWX_CONFIGURE.read_text())
    assert len(plays) == 1, "awx_configure.yml is expected to hold one play"
    return plays[0]


def job_templates():
    """The job template list exactly as awx_configure.yml defines it."""
    return configure_play()["vars"]["kbxy_awx_job_templates"]


def environments():
    return configure_play()["vars"]["kbxy_awx_environments"]


def template(name):
    for item in job_templates():
        if item["name"] == name:
            return item
    raise KeyError(name)


def run(argv, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(argv, check=False, **kwargs)


def build_collection(dest):
    """ansible-galaxy collection build of this repo into dest; returns the tarball path.

    Built from a checkout-like copy (copy_project: what git would ship), as CI or an EE
    build would from a clone: local virtual environments and build output in the work
    tree (some of them gigabytes) are not part of the collection.
    """
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    src = copy_project(dest / "src")
    res = run([tool("ansible-galaxy"), "collection", "build", "--force", "--output-path", str(dest), str(src)])
    assert res.returncode == 0, res.stdout + res.stderr
    shutil.rmtree(src)
    tarballs = sorted(dest.glob("kbxy-platform-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    return tarballs[0]


def install_collection(tarball, collections_dir):
    """Install the built tarball the way the EE build does (ansible-galaxy collection install)."""
    res = run([tool("ansible-galaxy"), "collection", "install", "--force", "--offline", "--no-deps",
               "-p", str(collections_dir), str(tarball)])
    assert res.returncode == 0, res.stdout + res.stderr
    return pathlib.Path(collections_dir)


def awx_inventory_script(project_dir, source_path, env=None):
    """What AWX does with an SCM inventory source, then with the imported inventory.

    Inventory update: `ansible-inventory -i project/<source_path> --list --export
    --playbook-dir <its dir>` (RunInventoryUpdate.build_args), no vault password.
    Job: the imported inventory is written as an executable script printing the JSON
    (BaseTask.write_inventory_file). Returns the script's text.
    """
    source = pathlib.Path(project_dir) / source_path
    playbook_dir = source if source.is_dir() else source.parent
    res = run([tool("ansible-inventory"), "-i", str(source), "--list", "--export",
               "--playbook-dir", str(playbook_dir)], env=env)
    assert res.returncode == 0, f"inventory import of {source_path} failed:\n{res.stderr}"
    data = json.loads(res.stdout)
    return "#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint(%r)\n" % json.dumps(data)


def copy_project(dest):
    """The project as AWX checks it out: the repo's tracked and untracked (not ignored)
    files, without .git (RunProjectUpdate.make_local_copy ignores .git)."""
    res = run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    assert res.returncode == 0, res.stderr
    dest = pathlib.Path(dest)
    for rel in filter(None, res.stdout.split("\0")):
        src = ROOT / rel
        if not src.is_file():
            continue  # deleted in the work tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    return dest


# RunJob.get_password_prompts(): every prompt AWX answers, mapped to the password it uses.
_BECOME_METHODS = ("sudo", "su", "pbrun", "pfexec", "dzdo", "pmrun", "runas", "enable", "doas", "ksu", "machinectl", "sesu")


def awx_expect_passwords(passwords):
    """The `passwords` runner parameter AWX builds: prompt regex -> answer ('' when unknown)."""
    prompts = {
        r"Enter passphrase for .*:\s*?$": "ssh_key_unlock",
        r"Bad passphrase, try again for .*:\s*?$": "",
    }
    for method in _BECOME_METHODS:
        prompts[r"%s password.*:\s*?$" % method] = "become_password"
        prompts[r"%s password.*:\s*?$" % method.upper()] = "become_password"
    prompts[r"BECOME password.*:\s*?$"] = "become_password"
    prompts[r"SSH password:\s*?$"] = "ssh_password"
    prompts[r"Password:\s*?$"] = "ssh_password"
    prompts[r"Vault password:\s*?$"] = "vault_password"
    for key in passwords:
        if key.startswith("vault_password."):
            prompts[r"Vault password \({}\):\s*?$".format(key.split(".", 1)[1])] = key
    return {prompt: passwords.get(key, "") or "" for prompt, key in prompts.items()}


def awx_meta_vars(job_id, template_name, inventory_name, scm_branch="main"):
    """Job.awx_meta_vars(): the awx_* / tower_* extra vars every AWX job carries (a subset)."""
    meta = {}
    for prefix in ("awx", "tower"):
        meta.update({
            f"{prefix}_job_id": job_id,
            f"{prefix}_job_launch_type": "manual",
            f"{prefix}_job_template_id": 1,
            f"{prefix}_job_template_name": template_name,
            f"{prefix}_inventory_id": 1,
            f"{prefix}_inventory_name": inventory_name,
            f"{prefix}_project_scm_branch": scm_branch,
            f"{prefix}_user_id": 1,
            f"{prefix}_user_name": "admin",
        })
    return meta


def clean_env():
    """The test process's environment without Ansible/molecule settings: a job sees only
    what AWX gives it (and the project's ansible.cfg)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("ANSIBLE_", "MOLECULE_", "PYTEST_", "SSH_AUTH_SOCK", "SSH_AGENT_PID"))}


def vault_inline(name, value, vault_id, password_file):
    """`name: !vault |` block for value, as ansible-vault encrypt_string writes it."""
    res = run([tool("ansible-vault"), "encrypt_string", "--vault-id", f"{vault_id}@{password_file}",
               "--encrypt-vault-id", vault_id, "--name", name, value], env=clean_env())
    assert res.returncode == 0, res.stderr
    return res.stdout


def prepare_awx_job(pdd, *, project_src, playbook, inventory_script, extra_vars, job_id, template_name,
                    inventory_name, ssh_user=None, ssh_key=None, vault_id=None, vault_password=None,
                    ee_collections=None, timeout=1800):
    """Lay out an ansible-runner private data dir as AWX's RunJob does for one job.

    pdd/project        the project copy (RunProjectUpdate.make_local_copy)
    pdd/inventory/hosts the imported inventory as a script (build_inventory)
    pdd/env/extravars  template extra vars + survey answers + meta vars (build_extra_vars_file)
    pdd/env/cmdline    -u <machine user>, --vault-id <id>@prompt (build_args)
    pdd/env/passwords  prompt -> answer (get_password_prompts / create_expect_passwords_data_struct)
    pdd/env/ssh_key    the machine credential's key: runner feeds it to ssh-agent through a
                       fifo (AWX passes the same data as the `ssh_key` runner parameter)
    pdd/env/envvars    JOB_ID, ANSIBLE_* as RunJob.build_env sets them
    pdd/env/settings   job_timeout and output settings (AWX writes this file too)
    """
    pdd = pathlib.Path(pdd)
    for sub in ("inventory", "env"):
        (pdd / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(pdd, 0o700)
    shutil.copytree(project_src, pdd / "project", symlinks=True)
    (pdd / "cp").mkdir(mode=0o700)

    hosts = pdd / "inventory" / "hosts"
    hosts.write_text(inventory_script)
    os.chmod(hosts, 0o700)

    def write(name, content):
        path = pdd / "env" / name
        path.touch(mode=0o600)
        path.write_text(content)

    write("extravars", yaml.safe_dump({**extra_vars, **awx_meta_vars(job_id, template_name, inventory_name)}))
    args = ["-u", ssh_user or "root"]
    passwords = {}
    if vault_password is not None:
        passwords[f"vault_password.{vault_id}" if vault_id else "vault_password"] = vault_password
        args += ["--vault-id", f"{vault_id}@prompt"] if vault_id else ["--ask-vault-pass"]
    write("cmdline", " ".join(args))
    write("passwords", yaml.safe_dump(awx_expect_passwords(passwords)))
    if ssh_key is not None:
        write("ssh_key", ssh_key if ssh_key.endswith("\n") else ssh_key + "\n")
    collections = [str(pdd / "requirements_collections")] + ([str(ee_collections)] if ee_collections else [])
    envvars = {
        "JOB_ID": str(job_id),
        "INVENTORY_ID": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "MAX_EVENT_RES": "700000",
        "AWX_PRIVATE_DATA_DIR": str(pdd),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(pdd / "cp"),
        "ANSIBLE_COLLECTIONS_PATH": ":".join(collections + ["~/.ansible/collections", "/usr/share/ansible/collections"]),
        "ANSIBLE_ROLES_PATH": ":".join([str(pdd / "requirements_roles"), "~/.ansible/roles", "/usr/share/ansible/roles"]),
    }
    write("envvars", yaml.safe_dump(envvars))
    write("settings", json.dumps({"job_timeout": timeout, "suppress_ansible_output": True, "suppress_output_file": False}))
    return {"pdd": pdd, "playbook": playbook}


class RunnerResult:
    """What ansible-runner left in artifacts/<ident>/."""

    def __init__(self, pdd, ident, proc):
        self.dir = pathlib.Path(pdd) / "artifacts" / ident
        self.proc = proc
        self.status = (self.dir / "status").read_text().strip() if (self.dir / "status").exists() else None
        self.rc = int((self.dir / "rc").read_text()) if (self.dir / "rc").exists() else None
        self.stdout = (self.dir / "stdout").read_text() if (self.dir / "stdout").exists() else ""
        self.events = []
        events_dir = self.dir / "job_events"
        if events_dir.is_dir():
            for path in events_dir.glob("*.json"):
                self.events.append(json.loads(path.read_text()))
        self.events.sort(key=lambda e: e.get("counter", 0))
        self.command = json.loads((self.dir / "command").read_text()) if (self.dir / "command").exists() else {}

    def stats(self):
        found = [e["event_data"] for e in self.events if e.get("event") == "playbook_on_stats"]
        assert found, f"no playbook_on_stats event; status={self.status}\n{self.stdout[-3000:]}"
        return found[-1]

    def hosts_ok(self):
        return {e["event_data"]["host"] for e in self.events if e.get("event") == "runner_on_ok"}

    def results(self, task_name):
        return [e["event_data"]["res"] for e in self.events
                if e.get("event") == "runner_on_ok" and e["event_data"].get("task") == task_name]


def runner_run(job, ident, timeout=1800, path_prefix=None):
    """`ansible-runner run <pdd> -p <playbook> --ident <ident>`: the job as AWX's worker runs it."""
    env = clean_env()
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env.get('PATH', '')}"
    proc = run([tool("ansible-runner"), "run", str(job["pdd"]), "-p", job["playbook"], "--ident", ident],
               env=env, timeout=timeout)
    return RunnerResult(job["pdd"], ident, proc)
