"""playbooks/awx_configure.yml: what it defines is runnable the way AWX will run it.

The template list is read from awx_configure.yml itself (never duplicated here). AWX is
not reachable here (it needs Kubernetes and registry images), so the API calls are not
made; the module arguments are checked by ansible-lint's `args` rule against awx.awx's
argument specs (make lint), and these tests check the rest with the real tools.
"""
import glob
import os
import re

import jinja2
import jinja2.nodes
import pytest
import yaml

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


# Keys whose values Ansible evaluates as bare Jinja expressions (no braces).
CONDITIONAL_KEYS = {"when", "changed_when", "failed_when", "until", "that"}
INCLUDE_TASKS = {"ansible.builtin.include_tasks", "ansible.builtin.import_tasks", "include_tasks", "import_tasks"}
INCLUDE_ROLE = {"ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"}
IMPORT_PLAYBOOK = {"ansible.builtin.import_playbook", "import_playbook"}
JINJA = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do"])


def jinja_names(text, bare=False):
    """Variables a Jinja template (or, bare, an expression) reads: its names in load context."""
    if bare and "{{" not in text and "{%" not in text:
        text = "{{ (%s) }}" % text
    elif "{{" not in text and "{%" not in text:
        return set()
    tree = JINJA.parse(text)
    return set(n.name for n in tree.find_all(jinja2.nodes.Name) if n.ctx == "load")


class PlaybookReads(object):
    """The variables a playbook reads, in its own plays and in everything they run, transitively.

    Followed: import_playbook, a play's roles, include_role/import_role (the role's
    tasks_from file, handlers, defaults, vars, templates and meta dependencies) and
    include_tasks/import_tasks (a templated file name matches every file it can name).
    A variable counts as read where a Jinja expression uses it: in {{ }} or {% %} in any
    value, or in a conditional (when, that, ...). Declaring it (a key in vars, defaults or
    a survey) or naming it in a comment, a task name or a message does not count.
    """

    def __init__(self, playbook):
        self.names, self.files, self.roles = set(), set(), set()
        self.playbook(os.path.abspath(playbook))

    def scan(self, value, key=None):
        if isinstance(value, dict):
            for k, v in value.items():
                self.scan(v, k)
        elif isinstance(value, list):
            for v in value:
                self.scan(v, key)
        elif isinstance(value, str):
            self.names |= jinja_names(value, bare=key in CONDITIONAL_KEYS)

    def load(self, path):
        if path in self.files:
            return None
        self.files.add(path)
        with open(path) as f:
            data = yaml.safe_load(f)
        self.scan(data)
        return data

    def playbook(self, path):
        for play in self.load(path) or []:
            imported = [play[k] for k in IMPORT_PLAYBOOK if k in play]
            if imported:
                name = imported[0]
                if re.fullmatch(r"kbxy\.platform\.\w+", name):  # a collection playbook
                    self.playbook(str(ROOT / "playbooks" / (name.split(".")[-1] + ".yml")))
                else:
                    self.playbook(os.path.join(os.path.dirname(path), name))
                continue
            for role in play.get("roles", []):
                self.role(role if isinstance(role, str) else role["role"])
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                self.tasks(play.get(key) or [], os.path.dirname(path))

    def tasks(self, tasks, tasks_dir):
        for task in tasks:
            for key in ("block", "rescue", "always"):
                self.tasks(task.get(key) or [], tasks_dir)
            for key in INCLUDE_TASKS & set(task):
                name = task[key]["file"] if isinstance(task[key], dict) else task[key]
                pattern = re.sub(r"{{.*?}}", "*", os.path.join(tasks_dir, name))
                for path in sorted(glob.glob(pattern)):
                    self.tasks(self.load(path) or [], os.path.dirname(path))
            for key in INCLUDE_ROLE & set(task):
                self.role(task[key]["name"], task[key].get("tasks_from", "main"))

    def role(self, name, tasks_from="main"):
        role_dir = ROOT / "roles" / re.sub(r"^kbxy\.platform\.", "", name)
        assert role_dir.is_dir(), f"role {name} is not in this collection"
        tasks_file = str(role_dir / "tasks" / (tasks_from if tasks_from.endswith(".yml") else tasks_from + ".yml"))
        self.tasks(self.load(tasks_file) or [], os.path.dirname(tasks_file))
        if name in self.roles:
            return
        self.roles.add(name)
        for part in ("defaults", "vars"):
            if (role_dir / part / "main.yml").is_file():
                self.load(str(role_dir / part / "main.yml"))
        if (role_dir / "handlers" / "main.yml").is_file():
            self.tasks(self.load(str(role_dir / "handlers" / "main.yml")) or [], str(role_dir / "handlers"))
        for template in sorted((role_dir / "templates").rglob("*")) if (role_dir / "templates").is_dir() else []:
            if template.is_file():
                self.names |= jinja_names(template.read_text())
        meta = role_dir / "meta" / "main.yml"
        if meta.is_file():
            for dep in (yaml.safe_load(meta.read_text()) or {}).get("dependencies") or []:
                self.role(dep if isinstance(dep, str) else dep.get("role", dep.get("name")))


@pytest.mark.parametrize("tpl", [t for t in TEMPLATES if t["survey"]], ids=lambda t: t["name"])
def test_survey_variables_are_read_by_the_job(tpl):
    """Each survey answer (an extra var) is a variable the template's own playbook reads, itself
    or through the roles and task files it runs; another playbook or role reading it does not count."""
    reads = PlaybookReads(ROOT / tpl["playbook"])
    unread = [q["variable"] for q in tpl["survey"]
              if q["variable"] != "kbxy_awx_confirm"  # enforced by AWX itself (see above)
              and q["variable"] not in reads.names]
    assert unread == [], f"{tpl['playbook']} (and what it runs: {sorted(reads.files)}) never reads survey variables {unread}"


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
