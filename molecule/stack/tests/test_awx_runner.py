"""The AWX job templates, run the way AWX runs them, against the converged stack.

AWX (which needs Kubernetes and registry images, not reachable here) executes every job
through ansible-runner. This test builds what AWX's RunJob builds for one job and runs
`ansible-runner run` on it (tests/awx/awxlib.py says which AWX code each piece mirrors):

- project: this repo as a project update checks it out (tracked + untracked files, no
  .git) at <private data dir>/project; the job's cwd, so the project's ansible.cfg applies;
- collections: the collection tarball (ansible-galaxy collection build) installed the way
  execution-environment.yml installs it into the EE, not the repo's .collections link;
- inventory: inventories/local imported as an AWX SCM inventory source does it
  (ansible-inventory --list --export, no vault password), written as the script AWX gives
  the job; one value of it (kbxy_app_name) is inline-vaulted in the project copy with a
  throw-away password generated here, so the job cannot run without the vault credential;
- credentials: the machine credential's SSH key (build/stack/id_ed25519, made by prepare)
  through env/ssh_key -> ssh-agent, user `-u root`; the vault credential (vault id `local`)
  as `--vault-id local@prompt` answered from env/passwords;
- extra vars: the job template's extra_vars from playbooks/awx_configure.yml plus the awx_*
  meta vars AWX adds.

Asserted: status successful and rc 0, every host reached over SSH, no failures, the deploy's
run after molecule's converge changed nothing on any host (the scenario's idempotence proof), the backup job made a new backup that verifies on the app host,
and the backup job without the vault credential fails.
"""
import json
import pathlib
import re
import secrets
import sys
import time

import pytest
import testinfra

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "awx"))
# pylint: disable=wrong-import-position
from awxlib import (awx_inventory_script, build_collection, copy_project, install_collection,  # noqa: E402
                    prepare_awx_job, runner_run, template, tool, vault_inline)

STACK_HOSTS = {"kbxy-stack-web", "kbxy-stack-app", "kbxy-stack-gpu"}
SSH_KEY = ROOT / "build" / "stack" / "id_ed25519"
VAULT_ID = "local"
TIMINGS = {}
# measured numbers for the closing notes (build/ is ignored output)
REPORT = ROOT / "build" / "logs" / "awx-runner.json"
RESULTS = {}


def record(key, value):
    RESULTS[key] = value
    RESULTS["timings_s"] = {k: round(v, 1) for k, v in TIMINGS.items()}
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(RESULTS, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def awx(tmp_path_factory):
    """The pieces every job shares: the project copy (with the vaulted value), the imported
    inventory, the EE's collections, the credentials."""
    base = tmp_path_factory.mktemp("awx-runner")
    assert SSH_KEY.is_file(), f"{SSH_KEY} is made by the stack scenario's prepare step"
    project = copy_project(base / "project")
    inventory_dir = project / "inventories" / "local"
    sources = sorted(p.name for p in inventory_dir.glob("*.yml"))
    assert len(sources) == 1, f"expected one inventory source file in inventories/local: {sources}"
    source_path = f"inventories/local/{sources[0]}"

    # The throw-away vault: kbxy_app_name keeps its value but becomes an inline-vaulted value
    password = secrets.token_urlsafe(24)
    pwfile = base / "vault-pass"
    pwfile.touch(mode=0o600)
    pwfile.write_text(password)
    all_vars = inventory_dir / "group_vars" / "all.yml"
    text = all_vars.read_text()
    match = re.search(r"^kbxy_app_name: (\S+)\n", text, re.M)
    assert match, "inventories/local/group_vars/all.yml no longer sets kbxy_app_name"
    all_vars.write_text(text.replace(match.group(0), vault_inline("kbxy_app_name", match.group(1), VAULT_ID, pwfile)))
    pwfile.unlink()

    started = time.monotonic()
    tarball = build_collection(base / "ee-build")
    collections = install_collection(tarball, base / "ee-collections")
    TIMINGS["collection build + install"] = time.monotonic() - started
    started = time.monotonic()
    script = awx_inventory_script(project, source_path)
    TIMINGS["inventory import"] = time.monotonic() - started
    assert "__ansible_vault" in script and match.group(1) not in script.split("kbxy_app_name", 1)[1][:200]
    return {"base": base, "project": project, "script": script, "collections": collections,
            "password": password, "key": SSH_KEY.read_text(), "counter": [0]}


def launch(awx, name, survey=None, vault=True):
    """Launch the job template `name` of awx_configure.yml (extra vars + survey answers)."""
    tpl = template(name)
    awx["counter"][0] += 1
    job_id = awx["counter"][0]
    ident = f"{job_id}-{name}" + ("" if vault else "-novault")
    job = prepare_awx_job(
        awx["base"] / ident, project_src=awx["project"], playbook=tpl["playbook"], inventory_script=awx["script"],
        extra_vars={**(tpl.get("extra_vars") or {}), **(survey or {})}, job_id=job_id,
        template_name=f"kbxy local {name}", inventory_name="kbxy local", ssh_user="root", ssh_key=awx["key"],
        vault_id=VAULT_ID if vault else None, vault_password=awx["password"] if vault else None,
        ee_collections=awx["collections"])
    started = time.monotonic()
    result = runner_run(job, ident, timeout=1500, path_prefix=str(pathlib.Path(tool("ansible-playbook")).parent))
    TIMINGS[ident] = time.monotonic() - started
    return result


def assert_successful(result, hosts):
    assert (result.status, result.rc) == ("successful", 0), result.stdout[-4000:]
    stats = result.stats()
    assert not stats.get("failures") and not stats.get("dark"), stats
    assert set(stats.get("ok", {})) == hosts, stats
    assert hosts <= result.hosts_ok()
    # the job reached the hosts through the credential's key in ssh-agent, not a key file
    assert result.command["command"][0] == "ssh-agent"
    assert not (result.dir / "ssh_key_data").exists()
    return stats


def test_deploy_template_changes_nothing(awx):
    """The deploy template as AWX runs it, after molecule's converge and idempotence runs:
    it reaches every host over SSH through inventories/local and changes nothing (one run
    only: each full site.yml costs minutes, and converge + idempotence came before)."""
    result = launch(awx, "deploy")
    record("deploy", {"status": result.status, "rc": result.rc, "stats": result.stats() if result.events else None})
    stats = assert_successful(result, STACK_HOSTS)
    changed = {h: n for h, n in stats.get("changed", {}).items() if n}
    print(f"\nAWX deploy via ansible-runner (site.yml over SSH, pipelining, fact cache): "
          f"changed={stats.get('changed', {})} {TIMINGS['1-deploy']:.1f}s")
    assert changed == {}, f"the deploy changed: {changed}"


def newest_backup(app, name):
    out = app.check_output("/usr/local/bin/kbxy-sqlite-backup status %s", name)
    return json.loads(out)


def test_backup_template_makes_a_verified_backup(awx):
    app = testinfra.get_host("docker://kbxy-stack-app")
    db_name = re.search(r"^kbxy_app_name: (\S+)", (ROOT / "inventories/local/group_vars/all.yml").read_text(), re.M).group(1)
    before = newest_backup(app, db_name)
    result = launch(awx, "backup")
    record("backup", {"status": result.status, "rc": result.rc, "stats": result.stats() if result.events else None})
    assert_successful(result, {"kbxy-stack-app"})
    # a looped debug: one result per database under "results"
    shown = [item["msg"] for res in result.results("Show the newest backup of each database") for item in res.get("results", [res])]
    assert [m["database"] for m in shown] == [db_name], shown
    newest = shown[0]["newest"]
    after = newest_backup(app, db_name)
    assert after["newest"] == newest
    assert newest != before.get("newest"), "the backup job did not make a new backup"
    # verified on the host: `extract` checks the manifest's sha256, restores a plain copy
    # and runs a full integrity_check on it; it exits non-zero when any of that fails
    work = f"/root/.kbxy-awx-verify-{secrets.token_hex(4)}.db"
    try:
        out = app.check_output("/usr/local/bin/kbxy-sqlite-backup extract %s --backup %s --to %s", db_name, newest, work)
        extracted = json.loads(out)
        record("backup_verified", extracted)
        assert extracted["integrity"] == "full" and extracted["backup_file"] == newest, out
    finally:
        app.run("rm -f %s", work)
    print(f"\nAWX backup via ansible-runner: {newest} ({after['newest_manifest'].get('size')} bytes) "
          f"in {TIMINGS[next(k for k in TIMINGS if k.endswith('-backup'))]:.1f}s; timings: { {k: round(v, 1) for k, v in TIMINGS.items()} }")


def test_backup_template_needs_the_vault_credential(awx):
    result = launch(awx, "backup", vault=False)
    record("backup_without_vault", {"status": result.status, "rc": result.rc})
    assert result.status == "failed" and result.rc != 0, result.stdout[-2000:]
    assert "no vault secrets" in result.stdout
