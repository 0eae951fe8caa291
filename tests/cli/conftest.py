"""Running the CLI in-process (``handlers.cli.main``) with its output captured, and an isolated environment."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from handlers.cli import main

# What config.yaml's ${...} need, for tests that make no call.
CONFIG_ENV = {
    "DICOM_STORE": "projects/p/locations/l/datasets/d/dicomStores/s",
    "INBOX_BUCKET": "inbox-bkt",
    "STATE_BUCKET": "state-bkt",
    "RESULTS_TOPIC": "projects/p/topics/results",
    "FOLLOWUP_TOPIC": "projects/p/topics/followups",
}
EMULATOR_KEYS = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "HEALTHCARE_EMULATOR_HOST")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def isolated_environ() -> Iterator[None]:
    """``--env-file`` writes os.environ: give it back as it was after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``cli("explain", "gs://...")`` -> Result(exit code, stdout, stderr)."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def config_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment config.yaml needs, and no emulator (unit tests make no call)."""
    for key, value in CONFIG_ENV.items():
        monkeypatch.setenv(key, value)
    for key in (*EMULATOR_KEYS, "DICOM_IMPORT_CONFIG", "RESULTS_SUBSCRIPTION"):
        monkeypatch.delenv(key, raising=False)
    return dict(CONFIG_ENV)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, rules: str, *, ignore: str = "[]", names: str = "plain",
                 stores: str = "main: ${DICOM_STORE}", extra: str = "") -> Path:
    """A config file with the given rules (YAML list text), the usual other sections, and ``extra`` sections."""
    path.write_text(f"""\
stores:
  {stores}
rules:
{rules}
ignore: {ignore}
batching:
  max_objects: 500
  max_wait_seconds: 10
state:
  bucket: ${{STATE_BUCKET}}
results:
  topic: ${{RESULTS_TOPIC}}
  object_names: {names}
followup:
  topic: ${{FOLLOWUP_TOPIC}}
{extra}""")
    return path


@pytest.fixture(scope="session")
def stack_env_file(local_stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session stack's environment as an ``--env-file``."""
    path = tmp_path_factory.mktemp("cli") / "stack.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in local_stack.env.items()))
    return path


@pytest.fixture
def scenario(local_stack, stack_env_file: Path, tmp_path: Path):
    """A test's own source bucket, DICOM store, rule name and results subscription on the session stack."""
    from tests.cli.stack_helpers import Scenario

    return Scenario(local_stack, stack_env_file, tmp_path)
