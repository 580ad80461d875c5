# -*- coding: utf-8 -*-
"""Every role's variable validation, case by case, through real ansible-playbook on localhost.

Each role has a `validate` entry point (meta/argument_specs.yml: main's options through a
YAML alias; tasks/validate.yml: the checks main makes before it changes anything). For each
role, one ansible-playbook run includes that entry point on an inventory of one host per case
(case_001, ...: connection local, the case's variables as host vars); each host passes or
fails on its own, and the json callback says which and with what message. A failing case
must fail with a message naming the offending variable (for an assert, the condition that
failed as well); a valid case must pass; no host may change.
"""
from __future__ import absolute_import, division, print_function

import collections
import fcntl
import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COLLECTIONS = os.path.join(ROOT, ".collections")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
ARGSPEC_TASK = "Validating arguments against arg spec 'validate'"

Case = collections.namedtuple("Case", "name vars expect groups")


def case(name, expect=None, base=None, without=(), groups=(), **variables):
    """A case: base variables (minus `without`) updated by `variables`.

    expect: None when validation must pass, else a fragment (or a tuple of fragments) that
    must all be in the failure text (the failing task's msg and, for an assert, the failed
    condition). `groups`: inventory groups the case's host joins.
    """
    merged = dict((k, v) for k, v in (base or {}).items() if k not in without)
    merged.update(variables)
    if isinstance(expect, str):
        expect = (expect,)
    return Case(name, merged, expect, tuple(groups))


NGINX = {"nginx_app_name": "demo", "nginx_server_names": ["example.com", "www.example.com"]}
AI_PROXY = {"name": "ai", "path": "/ai/", "servers": ["127.0.0.1:8100"]}
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
DB = {"name": "app", "path": "/var/lib/app/app.db", "user": "app"}
MODEL = {"name": "realesr-general-x4v3", "src": "/srv/models/realesr-general-x4v3.pth"}
SHA = "0" * 64

CASES = {
    "nginx": [
        case("valid_minimal", base=NGINX),
        case("valid_everything_set", base=NGINX, nginx_tls_mode="provided", nginx_tls_certificate=PEM_CERT,
             nginx_tls_private_key=PEM_KEY, nginx_extra_proxies=[dict(AI_PROXY, proxy_read_timeout=300)],
             nginx_websocket_locations=["/api/v1/ws"], nginx_gzip_comp_level=9, nginx_rate_limit_status=503),
        case("app_name_missing", "'nginx_app_name' is undefined", base=NGINX, without=["nginx_app_name"]),
        case("server_names_missing", "missing required arguments: nginx_server_names", base=NGINX,
             without=["nginx_server_names"]),
        case("gzip_not_a_bool", ("argument 'nginx_gzip' is of type", "convert to bool"), base=NGINX, nginx_gzip="sometimes"),
        case("worker_connections_not_an_int", ("argument 'nginx_worker_connections' is of type", "convert to int"), base=NGINX,
             nginx_worker_connections="many"),
        case("gzip_comp_level_not_a_choice", "value of nginx_gzip_comp_level must be one of", base=NGINX,
             nginx_gzip_comp_level=12),
        case("keepalive_timeout_not_below_uvicorn", "value of nginx_upstream_keepalive_timeout must be one of",
             base=NGINX, nginx_upstream_keepalive_timeout=5),
        case("tls_mode_not_a_choice", "value of nginx_tls_mode must be one of", base=NGINX, nginx_tls_mode="letsencrypt"),
        case("extra_proxy_without_servers", "missing required arguments: servers found in nginx_extra_proxies",
             base=NGINX, nginx_extra_proxies=[{"name": "ai", "path": "/ai/"}]),
        case("extra_proxy_timeout_not_an_int", ("argument 'proxy_read_timeout' is of type str found in 'nginx_extra_proxies'", "convert to int"), base=NGINX,
             nginx_extra_proxies=[dict(AI_PROXY, proxy_read_timeout="five minutes")]),
        case("app_name_with_a_space", "nginx_app_name is match", base=NGINX, nginx_app_name="my app"),
        case("api_prefix_without_trailing_slash", "nginx_api_prefix is match", base=NGINX, nginx_api_prefix="/api"),
        case("tls_1_1", "nginx_ssl_protocols | difference", base=NGINX, nginx_ssl_protocols=["TLSv1.1", "TLSv1.2"]),
        case("rate_not_per_second_or_minute", "nginx_rate_limit_rate is match", base=NGINX, nginx_rate_limit_rate="100/h"),
        case("provided_mode_without_key", ("nginx_tls_mode != 'provided'", "nginx_tls_private_key"), base=NGINX,
             nginx_tls_mode="provided", nginx_tls_certificate=PEM_CERT),
        case("acme_mode_with_ftp_directory", ("nginx_tls_mode != 'acme'", "nginx_acme_directory"), base=NGINX,
             nginx_tls_mode="acme", nginx_acme_directory="ftp://acme.example.com/directory"),
        case("extra_proxy_on_the_api_prefix", ("nginx_extra_proxies item ai", "item.path != nginx_api_prefix"),
             base=NGINX, nginx_extra_proxies=[dict(AI_PROXY, path="/api/")]),
        case("extra_proxy_on_a_websocket_path", ("nginx_extra_proxies item ai", "item.path not in nginx_websocket_locations"),
             base=NGINX, nginx_websocket_locations=["/ai/"], nginx_extra_proxies=[AI_PROXY]),
        case("extra_proxies_with_one_name", ("nginx_extra_proxies item ai", "selectattr('name', 'equalto', item.name)"),
             base=NGINX, nginx_extra_proxies=[AI_PROXY, dict(AI_PROXY, path="/ai2/")]),
        case("extra_proxy_server_without_port", ("nginx_extra_proxies item ai", "item.servers | select('match'"),
             base=NGINX, nginx_extra_proxies=[dict(AI_PROXY, servers=["backend.internal"])]),
    ],
    "uvicorn": [
        case("valid_defaults"),
        case("valid_tcp_git", uvicorn_listen="tcp", uvicorn_port=9000, uvicorn_instances=4, uvicorn_app_source_type="git",
             uvicorn_app_source="https://git.example.com/app.git", uvicorn_secret_env={"API_TOKEN": "x"}),
        case("valid_unix_ignores_the_port", uvicorn_listen="unix", uvicorn_port=65535, uvicorn_instances=8),
        case("source_type_not_a_choice", "value of uvicorn_app_source_type must be one of", uvicorn_app_source_type="zip"),
        case("listen_not_a_choice", "value of uvicorn_listen must be one of", uvicorn_listen="udp"),
        case("log_level_not_a_choice", "value of uvicorn_log_level must be one of", uvicorn_log_level="verbose"),
        case("instances_not_an_int", ("argument 'uvicorn_instances' is of type", "convert to int"), uvicorn_instances="two"),
        case("drain_seconds_not_a_float", ("argument 'uvicorn_drain_seconds' is of type", "convert to float"), uvicorn_drain_seconds="soon"),
        case("socket_activation_not_a_bool", ("argument 'uvicorn_socket_activation' is of type", "convert to bool"), uvicorn_socket_activation="perhaps"),
        case("env_not_a_dict", ("argument 'uvicorn_env' is of type", "convert to dict"), uvicorn_env=["ENVIRONMENT=production"]),
        case("app_name_uppercase", "uvicorn_app_name is match", uvicorn_app_name="KbxyDemo"),
        case("app_module_without_attribute", "uvicorn_app_module is match", uvicorn_app_module="kbxy_demo.main"),
        case("instances_above_64", "uvicorn_instances | int >= 1 and uvicorn_instances | int <= 64", uvicorn_instances=65),
        case("keep_one_release", "uvicorn_keep_releases | int >= 2", uvicorn_keep_releases=1),
        case("socket_mode_three_digits", "uvicorn_socket_mode is match", uvicorn_socket_mode="660"),
        case("health_path_relative", "uvicorn_health_path is match", uvicorn_health_path="api/health"),
        case("tcp_ports_past_65535", "uvicorn_listen == 'unix' or (uvicorn_port", uvicorn_listen="tcp", uvicorn_port=65535,
             uvicorn_instances=2),
        case("git_without_source", "uvicorn_app_source is required when uvicorn_app_source_type is git",
             uvicorn_app_source_type="git"),
        case("secret_env_name_with_a_dash", "uvicorn_env and uvicorn_secret_env keys", uvicorn_secret_env={"API-TOKEN": "x"}),
    ],
    "sqlite_backup": [
        case("valid_no_databases"),
        case("valid_one_database", sqlite_backup_databases=[DB]),
        case("valid_every_key", sqlite_backup_databases=[dict(
            DB, group="www-data", dest_dir="/srv/backups/app", prefix="app", keep={"last": 2, "daily": 7},
            on_calendar="hourly", randomized_delay_sec=60, compress="none", check="quick", lock_timeout=5,
            offsite_command="rclone copyto", drill_enabled=False, drill_on_calendar="weekly", drill_query="SELECT 1")]),
        case("database_without_user", "missing required arguments: user found in sqlite_backup_databases",
             sqlite_backup_databases=[dict((k, v) for k, v in DB.items() if k != "user")]),
        case("database_compress_not_a_choice", ("value of compress must be one of", "sqlite_backup_databases"),
             sqlite_backup_databases=[dict(DB, compress="zstd")]),
        case("database_delay_not_an_int", ("argument 'randomized_delay_sec' is of type str found in 'sqlite_backup_databases'", "convert to int"),
             sqlite_backup_databases=[dict(DB, randomized_delay_sec="15 minutes")]),
        case("database_keep_not_a_dict", ("argument 'keep' is of type int found in 'sqlite_backup_databases'", "convert to dict"),
             sqlite_backup_databases=[dict(DB, keep=7)]),
        case("database_unknown_key", "sqlite_backup_databases.schedule. Supported parameters include",
             sqlite_backup_databases=[dict(DB, schedule="daily")]),
        case("compress_not_a_choice", "value of sqlite_backup_compress must be one of", sqlite_backup_compress="xz"),
        case("check_not_a_choice", "value of sqlite_backup_check must be one of", sqlite_backup_check="thorough"),
        case("lock_timeout_not_a_float", ("argument 'sqlite_backup_lock_timeout' is of type", "convert to float"), sqlite_backup_lock_timeout="forever"),
        case("keep_not_a_dict", ("argument 'sqlite_backup_keep' is of type", "convert to dict"), sqlite_backup_keep=[7, 4, 12]),
        case("prune_not_a_bool", ("argument 'sqlite_backup_prune' is of type", "convert to bool"), sqlite_backup_prune="sometimes"),
        case("database_name_with_a_slash", ("sqlite_backup_databases: each entry", "item.name is match"),
             sqlite_backup_databases=[dict(DB, name="app/main")]),
        case("database_path_relative", ("sqlite_backup_databases: each entry", "item.path is match"),
             sqlite_backup_databases=[dict(DB, path="app.db")]),
        case("database_user_empty", ("sqlite_backup_databases: each entry", "item.user | length > 0"),
             sqlite_backup_databases=[dict(DB, user="")]),
        case("database_keep_unknown_rule", ("sqlite_backup_databases: each entry", "difference(['last'"),
             sqlite_backup_databases=[dict(DB, keep={"days": 7})]),
    ],
    "hardening": [
        case("valid_defaults"),
        case("valid_rules", hardening_ufw_host_rules=[{"port": "5432", "proto": "tcp", "rule": "allow", "from": "10.0.0.0/8"}],
             hardening_limits=[{"domain": "app", "type": "-", "item": "nofile", "value": 4096}]),
        case("ufw_logging_not_a_choice", "value of hardening_ufw_logging must be one of", hardening_ufw_logging="loud"),
        case("permit_root_login_yes", "value of hardening_sshd_permit_root_login must be one of",
             hardening_sshd_permit_root_login="yes"),
        case("sshd_backend_not_a_choice", "value of hardening_fail2ban_sshd_backend must be one of",
             hardening_fail2ban_sshd_backend="journald"),
        case("aide_update_not_a_choice", "value of hardening_aide_database_update must be one of",
             hardening_aide_database_update="never"),
        case("ssh_port_not_an_int", ("argument 'hardening_ssh_port' is of type", "convert to int"), hardening_ssh_port="ssh"),
        case("web_port_not_an_int", ("Elements value for option 'hardening_ufw_web_ports'", "convert to int"), hardening_ufw_web_ports=[80, "https"]),
        case("sshd_enabled_not_a_bool", ("argument 'hardening_sshd_enabled' is of type", "convert to bool"), hardening_sshd_enabled="perhaps"),
        case("sysctl_settings_not_a_dict", ("argument 'hardening_sysctl_settings' is of type", "convert to dict"),
             hardening_sysctl_settings=["kernel.sysrq=0"]),
        case("internal_port_without_port", "missing required arguments: port found in hardening_ufw_internal_ports",
             hardening_ufw_internal_ports=[{"proto": "tcp", "comment": "app"}]),
        case("internal_port_proto_not_a_choice", ("value of proto must be one of", "hardening_ufw_internal_ports"),
             hardening_ufw_internal_ports=[{"port": "8000", "proto": "sctp"}]),
        case("host_rule_not_a_choice", ("value of rule must be one of", "hardening_ufw_host_rules"),
             hardening_ufw_host_rules=[{"port": "22", "rule": "permit"}]),
        case("limit_type_not_a_choice", ("value of type must be one of", "hardening_limits"),
             hardening_limits=[{"domain": "*", "type": "medium", "item": "nofile", "value": 1024}]),
        case("limit_without_value", "missing required arguments: value found in hardening_limits",
             hardening_limits=[{"domain": "*", "type": "soft", "item": "nofile"}]),
        # the web group's member is a host whose facts nobody gathered: its address is unknown
        case("web_host_address_unknown", ("have no known address", "__hardening_web_hosts_without_address | length == 0"),
             groups=["web_unknown_1"], hardening_web_group="web_unknown_1"),
        case("valid_web_host_unknown_but_sources_given", groups=["web_unknown_2"], hardening_web_group="web_unknown_2",
             hardening_internal_sources=["10.0.0.0/24"]),
        case("valid_web_host_unknown_without_ufw", groups=["web_unknown_3"], hardening_web_group="web_unknown_3",
             hardening_ufw_enabled=False),
        case("valid_web_host_unknown_no_internal_ports", groups=["web_unknown_4"], hardening_web_group="web_unknown_4",
             hardening_ufw_internal_ports=[]),
    ],
    "realesrgan": [
        case("valid_src_model", realesrgan_models=[MODEL]),
        case("valid_url_model", realesrgan_models=[
            {"name": "x4plus", "url": "https://example.com/RealESRGAN_x4plus.pth", "sha256": SHA}],
            realesrgan_env={"OMP_NUM_THREADS": "2"}, realesrgan_tile=0),
        case("no_model", "realesrgan_models is empty"),
        case("log_level_not_a_choice", "value of realesrgan_log_level must be one of", realesrgan_models=[MODEL],
             realesrgan_log_level="verbose"),
        case("port_not_an_int", ("argument 'realesrgan_port' is of type", "convert to int"), realesrgan_models=[MODEL], realesrgan_port="http"),
        case("allow_cpu_not_a_bool", ("argument 'realesrgan_allow_cpu' is of type", "convert to bool"), realesrgan_models=[MODEL],
             realesrgan_allow_cpu="maybe"),
        case("env_not_a_dict", ("argument 'realesrgan_env' is of type", "convert to dict"), realesrgan_models=[MODEL], realesrgan_env=["OMP_NUM_THREADS=2"]),
        case("model_without_name", "missing required arguments: name found in realesrgan_models",
             realesrgan_models=[{"src": "/srv/models/x4.pth"}]),
        case("model_unknown_key", "realesrgan_models.path. Supported parameters include",
             realesrgan_models=[dict(MODEL, path="/srv/x4.pth")]),
        case("service_name_uppercase", "realesrgan_service_name is match", realesrgan_models=[MODEL],
             realesrgan_service_name="Upscale"),
        case("port_above_65535", "realesrgan_port >= 1 and realesrgan_port <= 65535", realesrgan_models=[MODEL],
             realesrgan_port=70000),
        case("tile_negative", "realesrgan_tile >= 0", realesrgan_models=[MODEL], realesrgan_tile=-1),
        case("no_torch_requirement", "realesrgan_torch_requirements | length >= 1", realesrgan_models=[MODEL],
             realesrgan_torch_requirements=[]),
        case("env_sets_the_roles_own_variable", "select('match', '^KBXY_UPSCALE_')", realesrgan_models=[MODEL],
             realesrgan_env={"KBXY_UPSCALE_TILE": "0"}),
        case("model_with_src_and_url", ("realesrgan_models item x4", "(item.src | default('') | length > 0) !="),
             realesrgan_models=[{"name": "x4", "src": "/srv/x4.pth", "url": "https://example.com/x4.pth", "sha256": SHA}]),
        case("model_url_without_sha256", ("realesrgan_models item x4", "(item.sha256 | default(''))"),
             realesrgan_models=[{"name": "x4", "url": "https://example.com/x4.pth"}]),
        case("model_url_s3", ("realesrgan_models item x4", "item.url is match"),
             realesrgan_models=[{"name": "x4", "url": "s3://bucket/x4.pth", "sha256": SHA}]),
        case("models_with_one_name", ("realesrgan_models item x4", "selectattr('name', 'equalto', item.name)"),
             realesrgan_models=[{"name": "x4", "src": "/srv/a.pth"}, {"name": "x4", "src": "/srv/b.pth"}]),
    ],
}


def host_name(index):
    return "case_%03d" % (index + 1)


def inventory(role):
    """One host per case, its variables as host vars; case hosts join the groups they name."""
    hosts, children = {}, {}
    for i, c in enumerate(CASES[role]):
        hosts[host_name(i)] = c.vars
        for group in c.groups:
            children.setdefault(group, {"hosts": {}})["hosts"][host_name(i)] = None
    return {"all": {"hosts": hosts, "children": children,
                    "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}


class RoleRun(object):
    """One ansible-playbook run of a role's validate entry point over all its cases."""

    def __init__(self, rc, data, stderr):
        self.rc = rc
        self.stderr = stderr
        self.stats = data["stats"]
        self.tasks = data["plays"][0]["tasks"]

    def host_results(self, host):
        """(task name, result) of every task that ran for the host, in order."""
        return [(t["task"]["name"], t["hosts"][host]) for t in self.tasks if host in t["hosts"]]

    def failure(self, host):
        """Text of the host's failed task (name, msg, failed assert condition), or None."""
        for name, result in self.host_results(host):
            if not result.get("failed"):
                continue
            parts = [name]
            for r in [x for x in result.get("results", []) if x.get("failed")] or [result]:
                parts += [str(r.get("msg", "")), str(r.get("assertion", ""))]
            return "\n".join(parts)
        return None


def run_validation(role, workdir):
    """Write the inventory and the play, run ansible-playbook once, return a RoleRun."""
    inv = os.path.join(workdir, "inventory.yml")
    with open(inv, "w") as f:
        yaml.safe_dump(inventory(role), f, default_flow_style=False)
    play = [{"name": "Validate kbxy.platform.%s, one host per case" % role, "hosts": "all", "gather_facts": False,
             "tasks": [{"name": "Include the validate entry point",
                        "ansible.builtin.include_role": {"name": "kbxy.platform.%s" % role, "tasks_from": "validate"}}]}]
    playbook = os.path.join(workdir, "validate.yml")
    with open(playbook, "w") as f:
        json.dump(play, f, indent=1)  # JSON is YAML
    cfg = os.path.join(workdir, "ansible.cfg")
    with open(cfg, "w") as f:
        f.write("[defaults]\n")
    env = dict(os.environ)
    env.update({
        # an empty config, not the repository's: no fact cache (a cached fact would change what
        # the checks see), no profile_tasks output after the JSON
        "ANSIBLE_CONFIG": cfg,
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, ".ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # the checks run on the controller (action plugins): more forks only add processes
        "ANSIBLE_FORKS": "8",
    })
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "-i", inv, playbook], env=env, check=False, timeout=600,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible-playbook output is not JSON:\n%s\n%s" % (proc.stdout, proc.stderr))
    return RoleRun(proc.returncode, data, proc.stderr)


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    """validation(role) -> RoleRun: one run per role, shared by the tests of that role.

    Under pytest-xdist the tests of one role may land on both workers: the first worker to
    get there runs the playbook and writes the result under the session's temporary root,
    the other one reads it (a file lock orders them).
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's directory, common to the workers
    runs = {}

    def get(role):
        if role not in runs:
            with open(str(shared / ("role-validation-%s.lock" % role)), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                saved = shared / ("role-validation-%s.json" % role)
                if saved.exists():
                    rc, data, stderr = json.loads(saved.read_text())
                    runs[role] = RoleRun(rc, data, stderr)
                else:
                    workdir = tmp_path_factory.mktemp("validate-%s" % role)
                    run = run_validation(role, str(workdir))
                    data = {"stats": run.stats, "plays": [{"tasks": run.tasks}]}
                    saved.write_text(json.dumps([run.rc, data, run.stderr]))
                    runs[role] = run
        return runs[role]

    return get


ALL_CASES = [(role, i, c) for role in CASES for i, c in enumerate(CASES[role])]


@pytest.mark.parametrize("role, index, entry", ALL_CASES, ids=["%s-%s" % (r, c.name) for r, _i, c in ALL_CASES])
def test_validation_case(validation, role, index, entry):
    """One case: its host passes, or fails with a message naming the offending variable."""
    run = validation(role)
    host = host_name(index)
    results = run.host_results(host)
    assert results, "%s: no task ran for %s (%s)\n%s" % (entry.name, host, role, run.stderr)
    # the argument spec was checked on this host, whatever the outcome
    assert any(name.startswith("kbxy.platform.%s : %s" % (role, ARGSPEC_TASK)) for name, _r in results), results
    failure = run.failure(host)
    if entry.expect is None:
        assert failure is None, "%s must pass validation, it failed:\n%s" % (entry.name, failure)
        assert run.stats[host]["failures"] == 0 and run.stats[host]["unreachable"] == 0
    else:
        assert failure is not None, "%s must fail validation (%s), it passed" % (entry.name, " / ".join(entry.expect))
        missing = [fragment for fragment in entry.expect if fragment not in failure]
        assert not missing, "%s failed, but the failure does not say %s:\n%s" % (entry.name, missing, failure)


@pytest.mark.parametrize("role", sorted(CASES))
def test_validation_changes_nothing(validation, role):
    """Every case's host ran, none changed, and the cases that must pass are the ones that did."""
    run = validation(role)
    hosts = [host_name(i) for i in range(len(CASES[role]))]
    assert sorted(run.stats) == hosts
    assert [h for h in hosts if run.stats[h]["changed"] != 0] == []
    assert [h for h in hosts if run.stats[h]["unreachable"] != 0] == []
    should_fail = [host_name(i) for i, c in enumerate(CASES[role]) if c.expect is not None]
    assert [h for h in hosts if run.stats[h]["failures"] != 0] == should_fail
    assert run.rc == (2 if should_fail else 0), run.stderr


def role_file(role, *parts):
    return os.path.join(ROOT, "roles", role, *parts)


def leaf_tasks(path):
    """The tasks a task file runs, with static import_tasks/include_tasks and blocks expanded."""
    with open(path) as f:
        return expand_tasks(yaml.safe_load(f) or [], os.path.dirname(path))


def expand_tasks(tasks, tasks_dir):
    leaves = []
    for task in tasks:
        include = [task[k] for k in ("ansible.builtin.import_tasks", "ansible.builtin.include_tasks",
                                     "import_tasks", "include_tasks") if k in task]
        if include:
            name = include[0]["file"] if isinstance(include[0], dict) else include[0]
            if "{{" not in name:  # a templated file name is chosen at run time: not a pre-change check
                leaves += leaf_tasks(os.path.join(tasks_dir, name))
        elif "block" in task:
            for key in ("block", "rescue", "always"):
                leaves += expand_tasks(task.get(key, []), tasks_dir)
        else:
            leaves.append(task)
    return leaves


@pytest.mark.parametrize("role", sorted(CASES))
def test_validate_entry_point_checks_what_main_checks(role):
    """The validate entry point has main's argument spec, and each of its tasks is a task main runs.

    Where main keeps its own copy of a check (sqlite_backup, hardening), the copy in
    tasks/validate.yml must stay identical to it, or this test fails.
    """
    with open(role_file(role, "meta", "argument_specs.yml")) as f:
        specs = yaml.safe_load(f)["argument_specs"]
    assert specs["validate"]["options"] == specs["main"]["options"]
    main = leaf_tasks(role_file(role, "tasks", "main.yml"))
    checks = leaf_tasks(role_file(role, "tasks", "validate.yml"))
    assert checks, "tasks/validate.yml runs no check"
    not_in_main = [t.get("name") for t in checks if t not in main]
    assert not_in_main == [], "tasks/validate.yml runs tasks main does not: %s" % not_in_main
