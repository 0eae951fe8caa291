"""A gcloud configuration directory (``CLOUDSDK_CONFIG``) whose endpoints are the local stack's.

``gcloud healthcare ...``, ``gcloud pubsub ...``, ``gcloud storage ...`` and ``gcloud logging read``
then talk to the Healthcare emulator, the Pub/Sub emulator, fake-gcs-server and the Healthcare
emulator's Cloud Logging ``entries.list``, without credentials
(``auth/disable_credentials``): a command for any other service goes to Google
unauthenticated and is refused there, so nothing real can be touched by mistake.
The files are written directly (``gcloud config set`` takes a second or two per
property): ``active_config`` names the configuration, ``configurations/config_default``
holds its properties, the same files ``gcloud config configurations create`` writes.
"""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path
from typing import Mapping

__all__ = ["CONFIG_DIR", "CONFIGURATION", "endpoint_overrides", "remove_config", "write_config"]

#: The directory under the stack's workdir (``.local/gcloud`` for ``make up``).
CONFIG_DIR = "gcloud"
#: The configuration's name (``gcloud config configurations list`` shows it).
CONFIGURATION = "default"


def endpoint_overrides(healthcare_url: str, pubsub_host: str, storage_url: str,
                       logging_url: str | None = None) -> dict[str, str]:
    """``api_endpoint_overrides/SERVICE`` values: the base URL each API's paths are appended to.

    ``pubsub_host`` is ``HOST:PORT`` (as ``PUBSUB_EMULATOR_HOST``), the others URLs.
    gcloud appends ``v1/projects/...`` to the Healthcare and Pub/Sub bases (``v2/entries:list``
    to Cloud Logging's), and ``b/BUCKET/o`` to the Cloud Storage JSON API's base, which carries
    its version (``/storage/v1/``).
    """
    overrides = {
        "healthcare": f"{healthcare_url.rstrip('/')}/",
        "pubsub": f"http://{pubsub_host}/",
        "storage": f"{storage_url.rstrip('/')}/storage/v1/",
    }
    if logging_url:
        overrides["logging"] = f"{logging_url.rstrip('/')}/"
    return overrides


def write_config(workdir: Path, project: str, overrides: Mapping[str, str]) -> Path:
    """Write ``workdir/gcloud`` (replacing an older one) and return it: the ``CLOUDSDK_CONFIG`` value."""
    directory = workdir / CONFIG_DIR
    remove_config(workdir)
    (directory / "configurations").mkdir(parents=True)
    properties = configparser.ConfigParser(interpolation=None)
    properties["core"] = {"project": project, "disable_usage_reporting": "true"}
    properties["auth"] = {"disable_credentials": "true"}
    properties["api_endpoint_overrides"] = dict(overrides)
    properties["component_manager"] = {"disable_update_check": "true"}
    properties["survey"] = {"disable_prompts": "true"}
    with (directory / "configurations" / f"config_{CONFIGURATION}").open("w", encoding="utf-8") as handle:
        properties.write(handle)
    # gcloud reads the whole file as the name: no trailing newline.
    (directory / "active_config").write_text(CONFIGURATION, encoding="utf-8")
    return directory


def remove_config(workdir: Path) -> None:
    """Remove ``workdir/gcloud`` (with the logs and caches gcloud wrote there), if present."""
    shutil.rmtree(workdir / CONFIG_DIR, ignore_errors=True)
