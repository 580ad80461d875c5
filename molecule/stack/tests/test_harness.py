"""The test hosts themselves: real, clean systemd machines (the checks of the former
`harness` scenario, made on the stack's hosts after site.yml converged them).

kbxy-stack-app and kbxy-stack-gpu are two containers of the Debian 12 image (their
machine-ids must differ), kbxy-stack-web one of the Debian 13 image. prepare.yml installs
a package from the Python package index into a venv on the web host, through the
controller's CA bundle (the shared prepare installs it where the controller names one).
"""
import os
import time

import docker
import pytest
import testinfra
import testinfra.utils.ansible_runner

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_hosts("all")
ALL_HOSTS = sorted(testinfra_hosts)
HARNESS_VENV = "/opt/kbxy-harness-venv"  # prepare.yml


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_system_running_without_failed_units(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    failed = host.check_output("systemctl list-units --failed --plain --no-legend")
    assert state in ("running", "degraded"), state
    assert failed == "", f"failed units:\n{failed}"


def test_machine_id_is_unique_per_container(host):
    own = host.file("/etc/machine-id").content_string.strip()
    assert len(own) == 32
    others = {}
    for name in ALL_HOSTS:
        if name == host.backend.get_hostname():
            continue
        others[name] = testinfra.get_host(f"docker://{name}").file("/etc/machine-id").content_string.strip()
    assert own not in others.values(), f"machine-id {own} shared with {others}"


def test_no_host_identity_baked_into_image(host):
    assert host.check_output("hostname") == host.backend.get_hostname()
    # Docker bind-mounts resolv.conf per container: the image itself has none.
    assert host.mount_point("/etc/resolv.conf").exists


def test_apt_sources_include_security_and_updates(host):
    sources = host.file("/etc/apt/sources.list").content_string
    assert "-security" in sources
    assert "-updates" in sources


def test_apt_installed_packages(host):
    assert host.package("ufw").is_installed  # the hardening role's
    # prepare.yml's on the web host, the uvicorn and realesrgan roles' on the others
    assert host.package("python3-venv").is_installed


def test_pip_installed_from_index(host):
    if host.backend.get_hostname() != "kbxy-stack-web":
        pytest.skip("prepare.yml installs from the index on the web host")
    out = host.check_output(f"{HARNESS_VENV}/bin/python -c 'import six; print(six.__version__)'")
    assert out == "1.16.0"


def test_ufw_active_with_ssh_allowed(host):
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming)" in status
    assert any(line.startswith("22/tcp ") and (" ALLOW IN" in line or " LIMIT IN" in line)
               for line in status.splitlines()), status


def test_docker_stop_is_prompt(host):
    """systemd honours SIGRTMIN+3: docker stop returns without the SIGKILL timeout."""
    if host.backend.get_hostname() != ALL_HOSTS[0]:
        pytest.skip("runs once per scenario")
    client = docker.from_env()
    image = client.containers.get(ALL_HOSTS[0]).image
    container = client.containers.run(
        image,
        detach=True,
        cap_add=["SYS_ADMIN", "NET_ADMIN"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        tmpfs={"/run": "", "/run/lock": ""},
        stop_signal="SIGRTMIN+3",
        name=f"kbxy-stack-stoptest-{os.getpid()}",
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _code, out = container.exec_run("systemctl is-system-running")
            if out.decode().strip() in ("running", "degraded"):
                break
            time.sleep(0.5)
        started = time.monotonic()
        container.stop(timeout=10)
        elapsed = time.monotonic() - started
        container.reload()
        print(f"docker stop took {elapsed:.2f} s")
        # 137 would mean docker had to SIGKILL it after the timeout.
        assert container.attrs["State"]["ExitCode"] != 137
        assert elapsed < 10
    finally:
        container.remove(force=True)
