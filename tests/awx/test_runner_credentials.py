"""The AWX job plumbing of tests/awx/awxlib.py, run for real with ansible-runner on the
controller itself (connection local), so that it is proven without the stack:

- an inline-vaulted inventory value survives AWX's inventory import (ansible-inventory
  --list --export, no vault password) still encrypted, and the job decrypts it with the
  vault credential's `--vault-id <id>@prompt`, answered from env/passwords;
- without the vault credential the same job fails on that value;
- the machine credential's key reaches the job only through ssh-agent (env/ssh_key ->
  fifo -> ssh-add): `ssh-add -l` inside the job lists exactly its fingerprint, and no
  copy of the key is left in the artifacts.

The stack scenario (molecule/stack/tests/test_awx_runner.py) runs the real deploy and
backup templates the same way over SSH.
"""
import pathlib
import secrets
import textwrap

import pytest

from awxlib import awx_inventory_script, prepare_awx_job, run, runner_run, tool, vault_inline

PLAYBOOK = """\
- name: Show what the job received
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the vaulted inventory value
      ansible.builtin.debug:
        msg: "{{ kbxy_probe_secret }}"
    - name: List the keys in the job's ssh-agent
      ansible.builtin.command: ssh-add -l
      changed_when: false
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("awxjob")
    secret = secrets.token_hex(16)
    password = secrets.token_urlsafe(24)
    pwfile = base / "vault-pass"
    pwfile.write_text(password)
    proj = base / "project-src"
    (proj / "inv" / "group_vars").mkdir(parents=True)
    (proj / "inv" / "hosts.yml").write_text(textwrap.dedent("""\
        all:
          hosts:
            probe:
              ansible_connection: local
              ansible_python_interpreter: "{{ ansible_playbook_python }}"
        """))
    (proj / "inv" / "group_vars" / "all.yml").write_text(
        "---\n" + vault_inline("kbxy_probe_secret", secret, "local", pwfile))
    (proj / "probe.yml").write_text(PLAYBOOK)
    pwfile.unlink()
    key = base / "id_ed25519"
    res = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kbxy-awx-probe", "-f", str(key)])
    assert res.returncode == 0, res.stderr
    fingerprint = run(["ssh-keygen", "-l", "-f", str(key)]).stdout.split()[1]
    return {"base": base, "src": proj, "secret": secret, "password": password,
            "key": key.read_text(), "fingerprint": fingerprint}


def _job(project, name, **creds):
    script = awx_inventory_script(project["src"], "inv/hosts.yml")
    job = prepare_awx_job(project["base"] / name, project_src=project["src"], playbook="probe.yml",
                          inventory_script=script, extra_vars={}, job_id=7, template_name="probe",
                          inventory_name="probe", **creds)
    return runner_run(job, name, timeout=300, path_prefix=str(pathlib.Path(tool("ansible-playbook")).parent))


def test_import_keeps_the_inline_vault_encrypted(project):
    script = awx_inventory_script(project["src"], "inv/hosts.yml")
    assert "__ansible_vault" in script
    assert "$ANSIBLE_VAULT;1.2;AES256;local" in script
    assert project["secret"] not in script


def test_job_with_both_credentials(project):
    result = _job(project, "with-creds", ssh_key=project["key"], vault_id="local", vault_password=project["password"])
    assert (result.status, result.rc) == ("successful", 0), result.stdout[-3000:]
    assert result.hosts_ok() == {"probe"}
    assert [r["msg"] for r in result.results("Read the vaulted inventory value")] == [project["secret"]]
    agent_keys = result.results("List the keys in the job's ssh-agent")[0]["stdout_lines"]
    assert len(agent_keys) == 1 and agent_keys[0].split()[1] == project["fingerprint"], agent_keys
    # AWX's command line: -u from the machine credential, the vault id answered by prompt
    cmd = result.command["command"]
    assert cmd[0] == "ssh-agent", cmd
    assert "--vault-id local@prompt" in " ".join(cmd) and "-u root" in " ".join(cmd)
    # the key went through a fifo that ssh-add consumed; nothing of it stays in artifacts
    assert not (result.dir / "ssh_key_data").exists()
    leftovers = [p for p in result.dir.rglob("*") if p.is_file() and "PRIVATE KEY" in p.read_text(errors="replace")]
    assert not leftovers, leftovers


def test_job_without_vault_credential_fails(project):
    result = _job(project, "no-vault", ssh_key=project["key"])
    assert result.status == "failed" and result.rc != 0
    assert "no vault secrets" in result.stdout
    assert project["secret"] not in result.stdout


def test_job_with_wrong_vault_password_fails(project):
    result = _job(project, "bad-vault", ssh_key=project["key"], vault_id="local", vault_password="not-" + project["password"])
    assert result.status == "failed" and result.rc != 0
    assert project["secret"] not in result.stdout
