"""The whole local stack: emulators, functions, resources and the bridge, started and stopped together.

>>> stack = Stack(Path(".local"))
>>> env = stack.start()          # every key of docs/contracts.md, plus BRIDGE_URL
>>> stack.functions["function"].kill(); stack.functions["function"].start()
>>> stack.stop()

Files in ``workdir``: ``stack.env`` (KEY=VALUE lines), ``stack.json`` (services,
ports, PIDs, timings), ``bridge.json`` (the bridge's routes), ``logs/NAME.log``
and ``run/NAME.pid``. A start first stops whatever ``run/`` still records, so
a second start, or a start after a crash, leaves no orphan and finds free ports.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import requests

from . import gcloud
from .bridge import PUBSUB_PUSH, STORAGE_CLOUDEVENT, Backoff, BridgeConfig, Route
from .interrupts import uninterrupted
from .names import CONTRACT_KEYS, REPO_ROOT, Names
from .ports import HOST, free_ports, port_is_free
from .process import read_record, stop_record
from .resources import ensure_buckets, ensure_dicom_store, ensure_pubsub
from .services import (
    Service,
    _python_env,
    start_bridge,
    start_fake_gcs,
    start_function,
    start_gateway,
    start_gcs_proxy,
    start_healthcare_emulator,
    start_pubsub_emulator,
)

__all__ = ["DEFAULT_FUNCTIONS", "FunctionSpec", "Ports", "Stack", "read_env_file", "stop_workdir"]


@dataclass(frozen=True)
class FunctionSpec:
    """One functions-framework process and the bridge route that feeds it."""

    role: str  # the Service's name
    target: str  # the entry point in the source file
    url_key: str  # its key in stack.env
    subscription: str  # attribute of Names naming the subscription the bridge reads
    format: str  # bridge route format


DEFAULT_FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("function", "on_object_finalized", "FUNCTION_URL", "notifications_bridge_subscription", STORAGE_CLOUDEVENT),
    FunctionSpec("followup", "on_followup", "FOLLOWUP_URL", "followup_bridge_subscription", PUBSUB_PUSH),
    FunctionSpec("export", "on_export_request", "EXPORT_URL", "export_bridge_subscription", PUBSUB_PUSH),
)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``stack.env`` (KEY=VALUE lines, values unquoted)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


@uninterrupted
def stop_workdir(workdir: Path, timeout: float = 10.0) -> dict[str, list[int]]:
    """Stop every daemon that ``workdir/run/*.pid`` records (if still ours), all at once; Ctrl-C waits for it.

    Returns name -> PIDs signalled (empty lists for daemons already gone).
    """
    pid_paths = sorted((Path(workdir) / "run").glob("*.pid"))

    def stop_one(pid_path: Path) -> tuple[str, list[int]]:
        record = read_record(pid_path)
        signalled = stop_record(record, timeout) if record is not None else []
        pid_path.unlink(missing_ok=True)
        return (record.name if record else pid_path.stem), signalled

    if not pid_paths:
        return {}
    with ThreadPoolExecutor(max_workers=len(pid_paths)) as pool:
        return dict(pool.map(stop_one, pid_paths))


def _url(port: int) -> str:
    return f"http://{HOST}:{port}"


@dataclass(frozen=True)
class Ports:
    """The stack's ports, picked free together before anything starts (the config is checked with them)."""

    pubsub: int
    gcs: int
    proxy: int
    healthcare: int
    bridge: int
    dicom: int  # the gateway's DICOM port
    gateway: int  # the gateway's health port
    commitment: int  # where the local modality hears storage commitment reports
    functions: tuple[int, ...]  # one per FunctionSpec, in order

    @classmethod
    def pick(cls, functions: int) -> "Ports":
        """Free ports for the fixed services and ``functions`` functions."""
        ports = free_ports(8 + functions)
        return cls(*ports[:8], functions=tuple(ports[8:]))

    def all_free(self) -> bool:
        """Whether every one of these ports is still free (another program may have taken one since the pick)."""
        fixed = (self.pubsub, self.gcs, self.proxy, self.healthcare, self.bridge, self.dicom, self.gateway,
                 self.commitment)
        return all(port_is_free(port) for port in (*fixed, *self.functions))


class Stack:
    """Pub/Sub emulator, fake-gcs-server, Healthcare emulator, the functions and the bridge.

    Options: ``config`` (the function's config file, default the repository's
    config.yaml), ``source`` (the functions' source file, default main.py),
    ``functions`` (which entry points to run, default :data:`DEFAULT_FUNCTIONS`),
    ``function_env`` (extra environment for the functions), ``faults`` (the
    Healthcare emulator's fault injection environment), ``backoff``,
    ``max_in_flight`` and ``request_timeout`` (the bridge's delivery), ``threads``
    (per function process), ``names`` (resource names), ``owner`` (see
    :func:`localstack.services.owner_of_this_process`), ``gcs_backend``
    (fake-gcs-server's ``memory`` or ``filesystem``: see
    :func:`localstack.services.start_fake_gcs`), ``gcs_write_interval`` (the Cloud
    Storage proxy's seconds between two writes of one object name: 1, Cloud
    Storage's limit; 0 turns it off).

    Clients (functions, tools, ``stack.env``) reach Cloud Storage through the
    fault-injecting proxy (``gcs-proxy``, ``STORAGE_EMULATOR_HOST``); the Healthcare
    emulator, which stands for a Google service, reads fake-gcs-server directly
    (``FAKE_GCS_URL``), as do observers that must see through injected faults.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        config: Path | str | None = None,
        source: Path | str = "main.py",
        functions: tuple[FunctionSpec, ...] = DEFAULT_FUNCTIONS,
        function_env: Mapping[str, str] | None = None,
        faults: Mapping[str, str] | None = None,
        backoff: Backoff = Backoff(),
        max_in_flight: int = 32,
        request_timeout: float = 600.0,
        threads: int = 64,
        names: Names = Names(),
        owner: tuple[int, int] | None = None,
        gcs_backend: str = "memory",
        gcs_write_interval: float = 1.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.gcs_backend = gcs_backend
        self.gcs_write_interval = gcs_write_interval
        self.config = Path(config).resolve() if config else REPO_ROOT / "config.yaml"
        self.source = source
        self.function_specs = functions
        self.function_env = dict(function_env or {})
        self.faults = dict(faults or {})
        self.backoff = backoff
        self.max_in_flight = max_in_flight
        self.request_timeout = request_timeout
        self.threads = threads
        self.names = names
        self.owner = owner
        self.services: dict[str, Service] = {}
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    # -- access -------------------------------------------------------------------
    @property
    def pubsub(self) -> Service:
        """The Pub/Sub emulator."""
        return self.services["pubsub"]

    @property
    def gcs(self) -> Service:
        """fake-gcs-server."""
        return self.services["gcs"]

    @property
    def gcs_proxy(self) -> Service:
        """The fault-injecting proxy in front of fake-gcs-server (``/proxy/...`` admin endpoints)."""
        return self.services["gcs-proxy"]

    @property
    def healthcare(self) -> Service:
        """The Healthcare API emulator."""
        return self.services["healthcare"]

    @property
    def bridge(self) -> Service:
        """The bridge (``url`` serves ``/status``)."""
        return self.services["bridge"]

    @property
    def functions(self) -> dict[str, Service]:
        """role -> functions-framework Service (``function``, ``followup``, ``export``)."""
        return {spec.role: self.services[spec.role] for spec in self.function_specs if spec.role in self.services}

    @property
    def env_path(self) -> Path:
        """``workdir/stack.env``."""
        return self.workdir / "stack.env"

    @property
    def state_path(self) -> Path:
        """``workdir/stack.json``."""
        return self.workdir / "stack.json"

    def bridge_status(self) -> dict[str, Any]:
        """The bridge's counters (``GET /status``): per route pulled, delivered, failed_attempts..."""
        response = requests.get(f"{self.bridge.url}/status", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> dict[str, str]:
        """Start everything on free ports, create the resources, write stack.env; return the env.

        On failure everything started so far is stopped and the error is raised. A config
        the functions could not load raises :class:`handlers.config.ConfigError` before
        anything is stopped or started.
        """
        started = time.monotonic()
        ports, env = self._pick_ports()
        stop_workdir(self.workdir)  # a previous stack's stop can take seconds: a picked port may be taken by then
        if not ports.all_free():
            ports, env = self._pick_ports()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(started, ports, env)
        except BaseException:
            self.stop()
            raise
        return dict(self.env)

    def _pick_ports(self) -> tuple[Ports, dict[str, str]]:
        """Free ports and the functions' environment on them, the config checked with it (ConfigError)."""
        ports = Ports.pick(len(self.function_specs))
        env = self._service_env(ports)
        self.check_config(env)
        return ports, env

    def _service_env(self, ports: Ports) -> dict[str, str]:
        """The environment the stack gives the functions on ``ports``: stack.env but the gateway and bridge keys."""
        env = self.names.resource_env()
        env.update({
            "PUBSUB_EMULATOR_HOST": f"{HOST}:{ports.pubsub}",
            "STORAGE_EMULATOR_HOST": _url(ports.proxy),  # clients go through the fault proxy
            "FAKE_GCS_URL": _url(ports.gcs),
            "HEALTHCARE_EMULATOR_HOST": _url(ports.healthcare),
            "LOGGING_EMULATOR_HOST": _url(ports.healthcare),  # the Healthcare emulator serves entries.list
            "DICOM_IMPORT_CONFIG": str(self.config),
        })
        for spec, port in zip(self.function_specs, ports.functions):
            env[spec.url_key] = f"{_url(port)}/"
        return env

    def check_config(self, env: Mapping[str, str]) -> None:
        """Load the functions' config file as they will on their first event; raise ConfigError if it does not.

        Otherwise every delivery would fail on it and the bridge would retry forever. The
        environment is the functions' own: the caller's, ``env`` (:meth:`_service_env`, with the
        addresses they will have, so a message quoting one names the real one), ``function_env``.
        """
        from handlers.config import load

        load(self.config, _python_env(env, self.function_env, {"THREADS": str(self.threads)}))

    def _start(self, started: float, ports: Ports, env: dict[str, str]) -> None:
        names, workdir, owner = self.names, self.workdir, self.owner
        pubsub = start_pubsub_emulator(workdir, port=ports.pubsub, wait=False, owner=owner)
        self.services["pubsub"] = pubsub
        gcs = start_fake_gcs(
            workdir,
            port=ports.gcs,
            pubsub_host=pubsub.host,
            project=names.project,
            topic=names.notifications_topic,
            event_bucket=names.inbox_bucket,
            backend=self.gcs_backend,
            external_url=_url(ports.proxy),
            wait=False,
            owner=owner,
        )
        self.services["gcs"] = gcs
        self.services["gcs-proxy"] = start_gcs_proxy(
            workdir, upstream=gcs.url, port=ports.proxy, write_interval=self.gcs_write_interval, wait=False,
            owner=owner)
        healthcare = start_healthcare_emulator(
            workdir, storage_host=gcs.url, faults=self.faults, port=ports.healthcare, wait=False, owner=owner
        )
        self.services["healthcare"] = healthcare
        for spec, port in zip(self.function_specs, ports.functions):
            self.services[spec.role] = start_function(
                workdir,
                target=spec.target,
                source=self.source,
                env={**env, **self.function_env},
                port=port,
                name=spec.role,
                threads=self.threads,
                wait=False,
                owner=owner,
            )
        env.update(self._start_gateway(env, ports.dicom, ports.gateway, ports.commitment))
        for service in list(self.services.values()):
            self.timings[f"{service.name}_ready_s"] = round(service.wait_ready(), 2)
        resources_started = time.monotonic()
        self.ensure_resources()
        self.timings["resources_s"] = round(time.monotonic() - resources_started, 2)
        config_path = self.bridge_config().write(workdir / "bridge.json")
        bridge = start_bridge(workdir, config_path=config_path, port=ports.bridge, owner=owner)
        self.services["bridge"] = bridge
        env.update(bridge.env)
        overrides = gcloud.endpoint_overrides(healthcare.url, pubsub.host, self.gcs_proxy.url,
                                              env.get("LOGGING_EMULATOR_HOST"))
        env["CLOUDSDK_CONFIG"] = str(gcloud.write_config(workdir, names.project, overrides))
        self.env = {key: env[key] for key in (*CONTRACT_KEYS, "BRIDGE_URL", "FAKE_GCS_URL") if key in env}
        self.timings["start_s"] = round(time.monotonic() - started, 2)
        self._write_state()

    def _start_gateway(self, env: Mapping[str, str], dicom_port: int, health_port: int,
                       commitment_port: int) -> dict[str, str]:
        """Start the DICOM gateway (not waiting) against the Cloud Storage the functions use; its stack.env keys.

        Its config is ``workdir/gateway.yaml``, its spool ``workdir/gateway-spool``
        (emptied here: a new stack's buckets are empty too), kept across a restart
        of the service, as on a real host. Storage commitment reports for the local
        modality go to ``commitment_port`` (``GATEWAY_COMMITMENT_PORT``), where the
        demo listens while it asks.
        """
        names = self.names
        spool = self.workdir / "gateway-spool"
        shutil.rmtree(spool, ignore_errors=True)
        config_path = self.workdir / "gateway.yaml"
        config_path.write_text(
            "# Written by localstack.stack for the local stack (docs/gateway.md explains each key).\n"
            f"dicom:\n  ae_title: {names.gateway_ae_title}\n  address: 127.0.0.1\n  port: {dicom_port}\n"
            f"  calling_ae_titles: [{names.gateway_calling_ae_title}]\n"
            f"commitment:\n  peers:\n    {names.gateway_calling_ae_title}: '127.0.0.1:{commitment_port}'\n"
            "  wait_seconds: 60\n"
            f"destination: gs://{names.inbox_bucket}/{names.gateway_prefix}\n"
            f"spool:\n  directory: {spool}\n  max_megabytes: 4096\n"
            "uploads:\n  threads: 4\n  max_backoff_seconds: 2\n"
            f"health:\n  address: 127.0.0.1\n  port: {health_port}\n  stuck_after_seconds: 300\n"
            "  stats_every_seconds: 30\n"
        )
        dicom_env = {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(dicom_port),
            "GATEWAY_AE_TITLE": names.gateway_ae_title,
            "GATEWAY_CALLING_AE_TITLE": names.gateway_calling_ae_title,
            "GATEWAY_COMMITMENT_PORT": str(commitment_port),
        }
        storage_env = {key: env[key] for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
        self.services["gateway"] = start_gateway(self.workdir, config_path=config_path, health_port=health_port,
                                                 env=storage_env, dicom_env=dicom_env, wait=False, owner=self.owner)
        return dicom_env

    @property
    def gateway(self) -> Service:
        """The DICOM gateway (``url`` serves ``/healthz``; ``env`` has ``GATEWAY_HOST``, ``GATEWAY_PORT``...)."""
        return self.services["gateway"]

    def bridge_config(self) -> BridgeConfig:
        """The bridge's routes: each function's subscription to its URL."""
        routes = tuple(
            Route(
                name=spec.role,
                subscription=self.names.subscription_path(getattr(self.names, spec.subscription)),
                endpoint=self.services[spec.role].url,
                format=spec.format,
                max_in_flight=self.max_in_flight,
                timeout=self.request_timeout,
            )
            for spec in self.function_specs
        )
        return BridgeConfig(pubsub_host=self.pubsub.host, routes=routes, backoff=self.backoff)

    def ensure_resources(self, only: str | None = None) -> list[str]:
        """Create (idempotently) the topics and subscriptions, buckets, dataset and store.

        ``only`` limits it to one service's resources (``pubsub``, ``gcs`` or ``healthcare``).
        """
        created: list[str] = []
        if only in (None, "pubsub"):
            created += ensure_pubsub(self.pubsub.host, self.names)
        if only in (None, "gcs"):
            created += [f"gs://{b}" for b in ensure_buckets(self.gcs.url, self.names.project, self.names.buckets)]
        if only in (None, "healthcare"):
            created += ensure_dicom_store(self.healthcare.url, self.names)
        return created

    def stop_service(self, name: str) -> None:
        """Stop one service (e.g. ``pubsub`` for an outage); :meth:`start_service` brings it back."""
        self.services[name].stop()

    def start_service(self, name: str) -> Service:
        """Start a stopped service on its port; for an emulator, create its resources again.

        The emulators keep everything in memory: a restarted Pub/Sub emulator has
        lost its unacknowledged messages, a restarted fake-gcs-server its objects.
        """
        service = self.services[name].start(port_wait=15.0)
        if name in ("pubsub", "gcs", "healthcare"):  # the proxy keeps no state
            self.ensure_resources(only=name)
        return service

    def restart_service(self, name: str) -> Service:
        """:meth:`stop_service` then :meth:`start_service`."""
        self.stop_service(name)
        return self.start_service(name)

    @uninterrupted
    def stop(self) -> None:
        """Stop every service (all at once) and whatever else ``run/`` records; remove stack.env. Ctrl-C waits."""
        stopping = time.monotonic()
        services = list(self.services.values())
        if services:
            with ThreadPoolExecutor(max_workers=len(services)) as pool:
                list(pool.map(lambda service: service.stop(), services))
        stop_workdir(self.workdir)
        self.env_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)
        gcloud.remove_config(self.workdir)
        self.timings["stop_s"] = round(time.monotonic() - stopping, 2)

    def __enter__(self) -> "Stack":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_state(self) -> None:
        lines = [f"{key}={value}" for key, value in self.env.items()]
        tmp = self.env_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.env_path)
        state = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "env": self.env,
            "services": [service.describe() for service in self.services.values()],
            "timings": self.timings,
        }
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")
