"""The CLI's environment: ``--env-file``/``--local`` loading, and a quick check that emulators answer.

With an emulator host set (``STORAGE_EMULATOR_HOST``...), the Google clients talk
to it; without, they use Application Default Credentials. A client pointed at a
stopped emulator retries for minutes, so commands check first that each
emulator they need accepts a connection.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from handlers.cli.errors import CliError
from handlers.config import not_utf8

LOCAL_ENV_FILE = Path(__file__).resolve().parents[2] / ".local" / "stack.env"
CONNECT_TIMEOUT = 2.0
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A whole quoted value, then perhaps a comment: 'inbox-b'  # the inbox
_QUOTED_RE = re.compile(r"""(['"])(.*?)\1(?:\s+#.*)?""")
# As in a shell or a .env file, '#' starts a comment after whitespace, outside quotes.
_COMMENT_RE = re.compile(r"\s#.*")

STORAGE, PUBSUB, HEALTHCARE = "storage", "pubsub", "healthcare"
_SERVICES = {
    STORAGE: ("Cloud Storage", "STORAGE_EMULATOR_HOST"),
    PUBSUB: ("Pub/Sub", "PUBSUB_EMULATOR_HOST"),
    HEALTHCARE: ("the Cloud Healthcare API", "HEALTHCARE_EMULATOR_HOST"),
}


def load_env_file(path: Path, *, local: bool = False) -> dict[str, str]:
    """Set ``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional quotes) in ``os.environ``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        if local:
            raise CliError(f"cannot read {path}: the local stack is not up: run make up") from None
        raise CliError(f"cannot read env file {path} ({exc.strerror}): check the path") from None
    except UnicodeDecodeError as exc:
        raise CliError(not_utf8(path, exc, "env file")) from None
    loaded: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.fullmatch(key):
            raise CliError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}: fix or remove the line")
        loaded[key] = _value(value)
    os.environ.update(loaded)
    return loaded


def _value(raw: str) -> str:
    """The text after ``=`` without its `` # comment`` and enclosing quotes: ``'a # b'  # note`` -> ``a # b``."""
    quoted = _QUOTED_RE.fullmatch(raw.strip())
    if quoted:
        return quoted.group(2)
    return _COMMENT_RE.sub("", raw, count=1).strip()


def require(*services: str) -> None:
    """Raise CliError unless every named emulator that is configured accepts a TCP connection."""
    for service in services:
        label, key = _SERVICES[service]
        address = os.environ.get(key)
        if not address:
            continue
        host, port = _host_port(address)
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError:
            raise CliError(f"cannot reach {label} at {address} ({key}): is the local stack up? run make up") from None


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"http://{address}")
    default = 443 if parts.scheme == "https" else 80
    try:
        return parts.hostname or "127.0.0.1", parts.port or default
    except ValueError:
        raise CliError(f"{address!r} is not a host:port address: fix the emulator host variable") from None

