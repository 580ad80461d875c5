"""execution-environment.yml: `ansible-builder create` makes a build context that installs
this collection, and the build's introspection step finds this collection's Python and
system needs (meta/execution-environment.yml), not the developer requirements.txt.

Runs `ansible-builder create` and the context's own introspect.py for real; no image is
built (no container registry is reachable here for the base image).
"""
import pathlib
import shutil

import pytest
import yaml

from awxlib import EE_FILE, ROOT, build_collection, install_collection, run, tool


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """A copy of the EE definition and its files, the collection tarball where the
    definition expects it (build/ee/), and the context ansible-builder creates from them."""
    work = tmp_path_factory.mktemp("ee")
    shutil.copy2(EE_FILE, work / EE_FILE.name)
    definition = yaml.safe_load(EE_FILE.read_text())
    galaxy = definition["dependencies"]["galaxy"]
    (work / galaxy).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / galaxy, work / galaxy)
    tarball = build_collection(work / "build" / "ee")
    res = run([tool("ansible-builder"), "create", "-f", str(work / EE_FILE.name), "-c", str(work / "context"),
               "--output-filename", "Containerfile", "-v3"], cwd=work)
    assert res.returncode == 0, res.stdout + res.stderr
    return {"dir": work / "context", "tarball": tarball, "log": res.stdout + res.stderr, "definition": definition}


def test_definition_is_version_3():
    definition = yaml.safe_load(EE_FILE.read_text())
    assert definition["version"] == 3
    assert definition["dependencies"]["ansible_core"]["package_pip"].startswith("ansible-core")
    assert definition["dependencies"]["ansible_runner"]["package_pip"].startswith("ansible-runner")


def test_context_holds_the_collection_tarball(context):
    copied = context["dir"] / "_build" / "collections" / context["tarball"].name
    assert copied.is_file(), context["log"]
    assert copied.read_bytes() == context["tarball"].read_bytes()
    # ansible-builder only warns when an additional_build_files glob matches nothing
    assert "No matches" not in context["log"]


def test_containerfile_installs_the_collection_after_its_dependencies(context):
    text = (context["dir"] / "Containerfile").read_text()
    galaxy_stage = text.split("FROM base AS galaxy", 1)[1].split("FROM base AS builder", 1)[0]
    deps = galaxy_stage.index("-r requirements.yml --collections-path")
    own = galaxy_stage.index("/build/collections/kbxy-platform-")
    assert deps < own, galaxy_stage
    assert "ansible-core>=2.19,<2.20" in text
    assert "ansible-runner" in text
    # the Galaxy requirements the context carries are the ones the definition names
    copied = yaml.safe_load((context["dir"] / "_build" / "requirements.yml").read_text())
    names = {c["name"] for c in copied["collections"]}
    assert {"community.general", "community.crypto", "ansible.posix", "awx.awx"} <= names


def test_galaxy_requirements_cover_the_collection_dependencies(context):
    galaxy_yml = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    copied = yaml.safe_load((context["dir"] / "_build" / "requirements.yml").read_text())
    names = {c["name"] for c in copied["collections"]}
    missing = set(galaxy_yml.get("dependencies") or {}) - names
    # `install --offline` of the tarball needs every dependency installed before it
    assert not missing, f"galaxy.yml dependencies missing from the EE requirements: {missing}"


def test_introspection_finds_this_collections_needs(context, tmp_path):
    """The builder stage runs introspect.py over /usr/share/ansible/collections; run the
    same script over the tarball installed the way the galaxy stage installs it."""
    collections = install_collection(context["tarball"], tmp_path / "collections")
    out_pip, out_bindep = tmp_path / "pip.txt", tmp_path / "bindep.txt"
    script = context["dir"] / "_build" / "scripts" / "introspect.py"
    res = run([str(pathlib.Path(tool("ansible-builder")).parent / "python"), str(script), "introspect",
               "--write-pip", str(out_pip), "--write-bindep", str(out_bindep), str(collections)])
    assert res.returncode == 0, res.stdout + res.stderr
    pip_lines = out_pip.read_text().splitlines()
    bindep_lines = out_bindep.read_text().splitlines()
    own_pip = (ROOT / "meta" / "ee-requirements.txt").read_text().splitlines()
    expected = [line.strip() for line in own_pip if line.strip() and not line.startswith("#")]
    for req in expected:
        assert f"{req}  # from collection kbxy.platform" in pip_lines, pip_lines
    assert any(line.startswith("openssh-clients [platform:rpm]") for line in bindep_lines), bindep_lines
    # the controller's development tools must not end up in the image
    dev_tools = ("molecule", "ansible-lint", "pytest", "yamllint")
    assert not [line for line in pip_lines if line.split()[0].lower().startswith(dev_tools)], pip_lines
