"""The deployable's files: what the Dockerfile copies is enough to run the gateway, and its pins match the repository's
(it installs with constraints.txt, which pins every package the gateway pulls in).

Docker cannot build images on this machine; these tests check what can be checked without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from localstack.names import REPO_ROOT

DOCKERFILE = REPO_ROOT / "gateway" / "Dockerfile"


def _instructions(keyword: str) -> list[list[str]]:
    """The arguments of each of the Dockerfile's ``keyword`` instructions, continued lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.split()[1:] for line in text.splitlines() if line.startswith(keyword + " ")]


def _copied_paths() -> list[str]:
    return [path for arguments in _instructions("COPY") for path in arguments[:-1]]


def test_the_files_the_image_copies_run_the_gateway(tmp_path: Path) -> None:
    for path in _copied_paths():
        source = REPO_ROOT / path
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    env = {"PYTHONPATH": str(tmp_path), "GATEWAY_SPOOL": str(tmp_path / "spool"), "PATH": "/usr/bin:/bin"}
    check = subprocess.run([sys.executable, "-m", "gateway", "--config", "gateway/example.yaml", "--check"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    imports = subprocess.run([sys.executable, "-c", "import gateway.service, handlers; print(handlers.__file__)"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.strip().startswith(str(tmp_path))  # the copy, not the repository


def _pins(path: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), flags=re.MULTILINE)
    return {canonicalize_name(name): version for name, version in found}


def test_gateway_pins_match_the_repository() -> None:
    gateway = _pins(REPO_ROOT / "requirements-gateway.txt")
    repository = {**_pins(REPO_ROOT / "requirements.txt"), **_pins(REPO_ROOT / "requirements-dev.txt")}
    assert {"pynetdicom", "pydicom", "google-cloud-storage", "pyyaml"} <= set(gateway)
    assert {name: version for name, version in gateway.items() if repository.get(name) != version} == {}


def test_the_image_installs_the_gateways_requirements_with_the_repositorys_constraints() -> None:
    """As make does (-c constraints.txt): without them a build takes the newest dependencies of the day."""
    assert {"requirements-gateway.txt", "constraints.txt"} <= set(_copied_paths())
    installs = [arguments for arguments in _instructions("RUN") if arguments[:2] == ["pip", "install"]]
    assert installs and all(" -c constraints.txt" in " ".join(arguments) for arguments in installs), installs


def test_every_package_the_gateway_installs_is_pinned_in_the_constraints() -> None:
    """Its requirements and theirs, on this Python (the image's 3.11), as installed here: -c pins only what it names."""
    constraints = _pins(REPO_ROOT / "constraints.txt")
    pending = [Requirement(f"{name}=={pin}") for name, pin in _pins(REPO_ROOT / "requirements-gateway.txt").items()]
    installed: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name not in installed and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            installed.add(name)
            pending += [Requirement(line) for line in metadata.distribution(name).requires or []]
    assert {"pynetdicom", "google-api-core", "protobuf"} <= installed
    assert sorted(installed - set(constraints)) == []
