"""playbooks/awx_configure.yml: what it defines is runnable the way AWX will run it.

The template list is read from awx_configure.yml itself (never duplicated here). AWX is
not reachable here (it needs Kubernetes and registry images), so the API calls are not
made; the module arguments are checked by ansible-lint's `args` rule against awx.awx's
argument specs (make lint), and these tests check the rest with the real tools.
"""
import os
import re

import pytest

from awxlib import AWX_CONFIGURE, ROOT, awx_inventory_script, configure_play, environments, job_templates, run, tool

SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
TEMPLATES = job_templates()
ENVIRONMENTS = [e["name"] for e in environments()]
SOURCES = {e["name"]: e["source_path"] for e in environments()}


def ansible_env():
    env = dict(os.environ)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".collections")
    env["ANSIBLE_ROLES_PATH"] = str(ROOT / "roles")
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    return env


def test_configure_playbook_syntax():
    res = run([tool("ansible-playbook"), "--syntax-check", str(AWX_CONFIGURE)], env=ansible_env(), cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_templates_cover_the_required_jobs():
    names = [t["name"] for t in TEMPLATES]
    assert len(names) == len(set(names)), names
    assert {"deploy", "backup", "restore", "db_swap", "rollback"} <= set(names)
    assert {"dev", "staging", "prod"} <= set(ENVIRONMENTS)
    assert dict((t["name"], t["playbook"]) for t in TEMPLATES)["deploy"] == "site.yml"


@pytest.mark.parametrize("env_name", ENVIRONMENTS)
@pytest.mark.parametrize("tpl", TEMPLATES, ids=[t["name"] for t in TEMPLATES])
def test_template_playbook_syntax(tpl, env_name):
    """Every job template's playbook passes --syntax-check with the inventory it gets in AWX."""
    playbook = ROOT / tpl["playbook"]
    assert playbook.is_file(), f"{tpl['name']}: {tpl['playbook']} does not exist"
    assert (ROOT / SOURCES[env_name]).is_file(), SOURCES[env_name]
    res = run([tool("ansible-playbook"), "--syntax-check", "-i", str(ROOT / SOURCES[env_name]), str(playbook)],
              env=ansible_env(), cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"playbook: {playbook}" in res.stdout


@pytest.mark.parametrize("env_name", ENVIRONMENTS)
def test_inventory_source_imports_without_vault_password(env_name, tmp_path):
    """AWX imports inventories/<env>/hosts.yml with ansible-inventory --list --export and no
    vault password: only inline-vaulted values may be encrypted there (they stay encrypted
    in AWX and are decrypted in the job by the vault credential)."""
    source = SOURCES[env_name]
    tasks = configure_play()["tasks"]
    sources = [t for t in tasks if "awx.awx.inventory_source" in t]
    assert sources and sources[0]["awx.awx.inventory_source"]["source_path"] == "{{ item.source_path }}"
    assert (ROOT / source).is_file(), source
    script = awx_inventory_script(ROOT, source, env=ansible_env())
    assert "_meta" in script


@pytest.mark.parametrize("tpl", [t for t in TEMPLATES if t["survey"]], ids=lambda t: t["name"])
def test_survey_follows_awx_rules(tpl):
    seen = set()
    for question in tpl["survey"]:
        var = question["variable"]
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var), var
        assert var not in seen, f"duplicate survey variable {var}"
        seen.add(var)
        assert question["type"] in SURVEY_TYPES, question
        assert question["question_name"]
        default = question.get("default", "")
        if question["type"] in ("multiplechoice", "multiselect"):
            assert question["choices"], question
            assert default in ("", *question["choices"]), question
        if question["type"] in ("text", "textarea", "password") and default:
            assert question.get("min", 0) <= len(default) <= question.get("max", 1024), question


@pytest.mark.parametrize("tpl", [t for t in TEMPLATES if t["name"] in ("db_swap", "restore")], ids=lambda t: t["name"])
def test_destructive_templates_ask_for_confirmation(tpl):
    """A confirmation AWX enforces itself: a required choice with no default cannot be
    launched without someone picking it."""
    confirm = [q for q in tpl["survey"] if q["type"] == "multiplechoice" and q["required"]]
    assert confirm, tpl["survey"]
    assert all(not q.get("default") for q in confirm)


@pytest.mark.parametrize("tpl", [t for t in TEMPLATES if t["survey"]], ids=lambda t: t["name"])
def test_survey_variables_are_read_by_the_job(tpl):
    """Each survey answer (an extra var) is a variable the playbook or a role it runs reads."""
    texts = [(ROOT / tpl["playbook"]).read_text()]
    for path in (ROOT / "roles").glob("*/tasks/*.yml"):
        texts.append(path.read_text())
    corpus = "\n".join(texts)
    for question in tpl["survey"]:
        if question["variable"] == "kbxy_awx_confirm":
            continue  # enforced by AWX itself (see above)
        assert re.search(r"\b%s\b" % re.escape(question["variable"]), corpus), (
            f"{tpl['playbook']} does not read survey variable {question['variable']}")


def test_configure_refuses_to_run_without_connection_settings():
    """Runs the play for real: without host, token and SCM URL it stops at its first task,
    before any API call."""
    env = ansible_env()
    for key in ("CONTROLLER_HOST", "CONTROLLER_OAUTH_TOKEN"):
        env.pop(key, None)
    res = run([tool("ansible-playbook"), str(AWX_CONFIGURE)], env=env, cwd=ROOT)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Set kbxy_awx_host" in res.stdout
    assert "Create the organization" not in res.stdout
