"""The deployable's files: what the Dockerfile copies is enough to run the gateway, and its pins match the repository's.

Docker cannot build images on this machine; these tests check what can be checked without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from localstack.names import REPO_ROOT

DOCKERFILE = REPO_ROOT / "gateway" / "Dockerfile"


def _copied_paths() -> list[str]:
    paths: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            paths += line.split()[1:-1]
    return paths


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
    return {name.lower(): version for name, version in found}


def test_gateway_pins_match_the_repository() -> None:
    gateway = _pins(REPO_ROOT / "requirements-gateway.txt")
    repository = {**_pins(REPO_ROOT / "requirements.txt"), **_pins(REPO_ROOT / "requirements-dev.txt")}
    assert {"pynetdicom", "pydicom", "google-cloud-storage", "pyyaml"} <= set(gateway)
    assert {name: version for name, version in gateway.items() if repository.get(name) != version} == {}
