"""The gateway's YAML config: load, interpolate ``${ENV}``, validate.

Problems are reported like config.yaml's, ``PATH:LINE: what is wrong, and how to fix
it``, all at once, with the same line-tracking loader and checks
(:mod:`handlers.config`), so both files behave the same for an operator.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

# The loader and the problem collector of config.yaml: one implementation of
# "FILE:LINE: problem and fix", ${NAME} interpolation and "did you mean" hints.
from handlers.config import ConfigError, _LineLoader, _List, _Map, _Reader, _names, read_source
from handlers.privacy import NamePolicy

__all__ = ["ConfigError", "EncryptedKey", "GatewayConfig", "NAME_FIELDS", "DEFAULT_OBJECT_NAME", "load",
           "load_key_pair", "parse"]

DEFAULT_OBJECT_NAME = "{CallingAETitle}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
#: Fields an object name template may use. Nothing that names a patient is offered:
#: object names show up in logs, listings and result messages.
NAME_FIELDS = (
    "CallingAETitle",
    "CalledAETitle",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "StudyDate",
    "ReceivedDate",
)
_TOP_LEVEL = ("dicom", "tls", "commitment", "destination", "object_name", "spool", "uploads", "health", "logs")
# AE titles: 1-16 characters of the default repertoire, no backslash, no control characters.
_AE_TITLE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# A DICOM UID (PS3.5 9.1): numeric components without leading zeros, dot-separated, at most 64 characters.
_SOP_CLASS_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
# A host name: dot-separated labels of letters, digits, inner hyphens (RFC 1123) and underscores (the resolvers
# accept them: Docker Compose service names), optionally fully qualified with one trailing dot.
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME_RE = re.compile(rf"(?=.{{1,254}}$){_LABEL}(\.{_LABEL})*\.?")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Tls:
    """DICOM TLS: the server's certificate chain and key; with ``client_ca``, clients must present a certificate it signed."""

    certificate: str
    private_key: str
    client_ca: str | None = None


class EncryptedKey(ValueError):
    """The TLS private key is passphrase-protected: the gateway has no passphrase to give."""

    FIX = "give it decrypted, a -----BEGIN PRIVATE KEY----- file (openssl pkey -in KEY -out PLAIN)"

    def __init__(self, private_key: str) -> None:
        super().__init__(f"tls private_key {private_key!r} is encrypted (passphrase-protected)")


def load_key_pair(context: ssl.SSLContext, certificate: str, private_key: str) -> None:
    """``context.load_cert_chain`` that never asks for a passphrase: an encrypted key raises :class:`EncryptedKey`.

    Without a callback OpenSSL prompts on the terminal (waiting there, or failing with an unrelated error);
    one that answers an empty passphrase would take a key encrypted with it.
    """
    def refuse() -> bytes:
        raise EncryptedKey(private_key)

    context.load_cert_chain(certificate, private_key, password=refuse)


@dataclass(frozen=True)
class Commitment:
    """Storage Commitment: where each calling AE title takes its N-EVENT-REPORT, and how long an instance may wait."""

    peers: Mapping[str, tuple[str, int]]  # calling AE title -> (host, port)
    wait_seconds: float


@dataclass(frozen=True)
class GatewayConfig:
    path: str
    ae_title: str
    address: str
    port: int
    calling_ae_titles: tuple[str, ...]
    clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    max_associations: int
    max_pdu_bytes: int
    #: Storage SOP classes accepted beside the standard ones pynetdicom knows (vendors' private ones).
    additional_sop_classes: tuple[str, ...]
    reactor_wakeups: bool  # gateway.wakeups: pynetdicom's reactors woken by work, not only by their 1 ms polls
    tls: Tls | None
    commitment: Commitment | None  # None: no Storage Commitment SCP
    bucket: str
    prefix: str  # "" or ending with "/"
    object_name: str
    spool_directory: str
    spool_max_bytes: int
    segment_bytes: int
    upload_threads: int
    upload_processes: int
    max_backoff_seconds: float
    health_address: str
    health_port: int
    stuck_after_seconds: float
    stats_every_seconds: float
    names: NamePolicy = NamePolicy()  # how object names (and the UIDs in them) appear in log lines

    def client_allowed(self, ip: str) -> bool:
        """True when no client list is configured, or ``ip`` is in one of its networks."""
        if not self.clients:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.clients)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a gateway config file; raise :class:`ConfigError` listing every problem."""
    return parse(read_source(path, "gateway config file"), str(path), os.environ if env is None else env)


def parse(source: str, path: str, env: Mapping[str, str]) -> GatewayConfig:
    """Validate gateway config text; ``path`` only labels the messages."""
    reader = _Reader(path, env)
    try:
        document = yaml.load(source, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}:{mark.line + 1 if mark else 0}: not valid YAML ({reason}): fix the indentation or quoting"]) from None
    if not isinstance(document, _Map):
        raise ConfigError([f"{path}:1: the file must be a mapping with 'dicom' and 'destination' at the top level"])
    reader.unknown_keys(document, _TOP_LEVEL, "the top level")

    dicom = reader.section(document, "dicom", ("ae_title", "address", "port", "calling_ae_titles", "clients",
                                               "max_associations", "max_pdu_bytes", "additional_sop_classes",
                                               "reactor_wakeups"))
    dicom_line = document.lines.get("dicom", 1)
    ae_title = _ae_title(reader, dicom, "ae_title", dicom_line)
    address = _bind_address(reader, dicom, "dicom", ipv6=True)
    port = int(reader.number(dicom, "port", 11112, 0, 65535, True))  # 0: any free port
    calling = _calling_titles(reader, dicom, dicom_line)
    clients = _clients(reader, dicom)
    max_associations = int(reader.number(dicom, "max_associations", 10, 1, 1000, True))
    max_pdu = int(reader.number(dicom, "max_pdu_bytes", 65536, 0, 2**32 - 1, True))
    additional = _sop_classes(reader, dicom, "additional_sop_classes")
    wakeups = dicom.get("reactor_wakeups", True)
    if not isinstance(wakeups, bool):
        reader.problem(dicom.lines["reactor_wakeups"], f"reactor_wakeups must be true (pynetdicom's reactors are woken "
                                                       f"when there is work) or false (they only poll), got {wakeups!r}")
        wakeups = True
    tls = _tls(reader, document)
    commitment = _commitment(reader, document, calling)
    bucket, prefix = _destination(reader, document)
    object_name = _object_name(reader, document)

    spool = reader.section(document, "spool", ("directory", "max_megabytes", "segment_megabytes"))
    spool_directory = _string(reader, spool, "directory", None, required_line=document.lines.get("spool", 1),
                              where="'spool'")
    max_mb = reader.number(spool, "max_megabytes", 10240, 0.01, 10**8, False)
    segment_mb = reader.number(spool, "segment_megabytes", 64, 0.001, 4096, False)
    if segment_mb > max_mb:
        reader.problem(spool.lines.get("segment_megabytes", document.lines.get("spool", 1)),
                       f"segment_megabytes ({segment_mb:g}) is larger than max_megabytes ({max_mb:g}): "
                       "make segments a small fraction of the spool (the default, 64, suits spools of a few GB)")
    uploads = reader.section(document, "uploads", ("threads", "processes", "max_backoff_seconds"))
    threads = int(reader.number(uploads, "threads", 4, 1, 64, True))
    processes = int(reader.number(uploads, "processes", 2, 0, 64, True))
    max_backoff = float(reader.number(uploads, "max_backoff_seconds", 60, 0.01, 3600, False))
    health = reader.section(document, "health", ("address", "port", "stuck_after_seconds", "stats_every_seconds"))
    health_address = _bind_address(reader, health, "health", ipv6=False)  # http.server listens on IPv4 only
    health_port = int(reader.number(health, "port", 8080, 0, 65535, True))
    stuck = float(reader.number(health, "stuck_after_seconds", 600, 1, 7 * 86400, False))
    stats_every = float(reader.number(health, "stats_every_seconds", 60, 0.1, 86400, False))
    names = _names(reader, reader.section(document, "logs", ("object_names", "hash_key")))

    if reader.problems:
        raise ConfigError(reader.problems)
    return GatewayConfig(
        path=path, ae_title=ae_title, address=address, port=port, calling_ae_titles=calling, clients=clients,
        max_associations=max_associations, max_pdu_bytes=max_pdu, additional_sop_classes=additional,
        reactor_wakeups=wakeups, tls=tls, commitment=commitment,
        bucket=bucket, prefix=prefix, object_name=object_name, spool_directory=spool_directory,
        spool_max_bytes=int(max_mb * _MIB),
        segment_bytes=max(1, int(segment_mb * _MIB)), upload_threads=threads, upload_processes=processes,
        max_backoff_seconds=max_backoff,
        health_address=health_address, health_port=health_port, stuck_after_seconds=stuck,
        stats_every_seconds=stats_every, names=names,
    )


def _string(reader: _Reader, section: _Map, key: str, default: str | None, *, required_line: int = 0,
            where: str = "") -> str:
    if key not in section:
        if default is None:
            reader.problem(required_line, f"{where} needs '{key}'")
            return ""
        return default
    return reader.text(section, key, section.lines[key], key) or ""


def _bind_address(reader: _Reader, section: _Map, where: str, *, ipv6: bool) -> str:
    """``address`` of ``section`` (default 0.0.0.0): an IP address (IPv6 only if ``ipv6``) or a host name."""
    address = _string(reader, section, "address", "0.0.0.0")
    try:
        version: int | None = ipaddress.ip_address(address).version
    except ValueError:
        version = None
        numeric_end = address.rstrip(".").rsplit(".", 1)[-1].isdigit()  # 10.0.0.300 is a bad address, not a name
        if not address or (_HOST_NAME_RE.fullmatch(address) and not numeric_end):
            return address  # empty: a problem already reported; a host name is resolved at start
    if version == 4 or (version == 6 and ipv6):
        return address
    what = "an IP address or host name" if version is None else "an IPv4 address or host name"
    reader.problem(section.lines["address"], f"{where}.address {address!r} is not {what} to listen on: write e.g. "
                                             f"0.0.0.0 (every interface){', :: (IPv6)' if ipv6 else ''} or 127.0.0.1 "
                                             "(this host only), without a port")
    return address


def _ae_title(reader: _Reader, section: _Map, key: str, line: int) -> str:
    if key not in section:
        reader.problem(line, "'dicom' needs 'ae_title': the AE title modalities call, e.g. DICOM-GCS (1-16 characters)")
        return ""
    return _check_ae(reader, section[key], section.lines[key], "ae_title")


def _check_ae(reader: _Reader, value: Any, line: int, what: str) -> str:
    text = reader.interpolate(value, line, what) if isinstance(value, str) else None
    if text is None or not _AE_TITLE_RE.fullmatch(text) or not text.strip():
        reader.problem(line, f"{what} {value!r} is not an AE title: use 1-16 printable ASCII characters, no backslash")
        return ""
    return text.strip()


def _calling_titles(reader: _Reader, section: _Map, line: int) -> tuple[str, ...]:
    value = section.get("calling_ae_titles")
    if not isinstance(value, _List) or not value:
        reader.problem(section.lines.get("calling_ae_titles", line),
                       "'dicom' needs 'calling_ae_titles': the list of AE titles allowed to send (e.g. [CT_SCANNER_1]); "
                       "associations from any other AE title are rejected")
        return ()
    titles = [_check_ae(reader, item, item_line, "calling AE title") for item, item_line in zip(value, value.lines)]
    return tuple(title for title in titles if title)


def _clients(reader: _Reader, section: _Map) -> tuple[Any, ...]:
    value = section.get("clients")
    if value is None:
        return ()
    if not isinstance(value, _List) or not value:
        reader.problem(section.lines["clients"], "clients must be a list of IP addresses or networks, e.g. "
                                                 "[10.1.2.0/24]; remove it to let every address associate")
        return ()
    networks = []
    for item, line in zip(value, value.lines):
        text = reader.interpolate(item, line, "client") if isinstance(item, str) else str(item)
        if text is None:
            continue  # an unset ${NAME}: already reported
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                reader.problem(line, f"client {item!r} is not an IP address or network: write e.g. 10.1.2.3 or "
                                     "10.1.2.0/24")
                continue
            reader.problem(line, f"client {text} has host bits set: write {network} (the whole network) or "
                                 f"{text.partition('/')[0]} (that address only)")
    return tuple(networks)


def _sop_classes(reader: _Reader, section: _Map, key: str) -> tuple[str, ...]:
    """A list of SOP Class UIDs, each checked (a UID, not a non-storage class pynetdicom knows); duplicates kept once."""
    value = section.get(key)
    if value is None:
        return ()
    if not isinstance(value, _List):
        reader.problem(section.lines[key], f"{key} must be a list of SOP Class UIDs, e.g. [1.3.12.2.1107.5.9.1]")
        return ()
    from pynetdicom.service_class import ServiceClass, StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    uids: list[str] = []
    for item, line in zip(value, value.lines):
        uid = reader.interpolate(item, line, "SOP Class UID") if isinstance(item, str) else str(item)
        if uid is None:
            continue  # an unset ${NAME}: already reported
        if not isinstance(item, str) or len(uid) > 64 or not _SOP_CLASS_UID_RE.fullmatch(uid):
            reader.problem(line, f"{item!r} in {key} is not a SOP Class UID: digits and dots, no leading zeros, "
                                 "at most 64 characters (quote it in YAML, e.g. '1.3.12.2.1107.5.9.1')")
        elif (service := uid_to_service_class(uid)) not in (ServiceClass, StorageServiceClass):
            reader.problem(line, f"{uid} in {key} is a SOP class of the {service.__name__}, not a storage one: "
                                 "remove it (only storage SOP classes can be received)")
        elif uid not in uids:
            uids.append(uid)
    return tuple(uids)


def _commitment(reader: _Reader, document: _Map, calling: tuple[str, ...]) -> Commitment | None:
    """``commitment``: ``peers`` (AE title: host:port, each an allowed calling AE title) and ``wait_seconds``."""
    if "commitment" not in document:
        return None
    section = reader.section(document, "commitment", ("peers", "wait_seconds"))
    line = document.lines["commitment"]
    wait = float(reader.number(section, "wait_seconds", 600, 1, 86400, False))
    value = section.get("peers")
    if not isinstance(value, _Map) or not value:
        reader.problem(section.lines.get("peers", line), "'commitment' needs 'peers': where each modality takes its "
                                                         "commitment reports, e.g. {CT_SCANNER_1: '10.20.0.15:104'}")
        return None
    peers: dict[str, tuple[str, int]] = {}
    for title, address in value.items():
        item_line = value.lines[title]
        ae = _check_ae(reader, title, item_line, "commitment peer")
        if ae and ae not in calling:
            reader.problem(item_line, f"commitment peer {ae} is not in dicom.calling_ae_titles: it could never "
                                      "associate to ask; add it there or remove it here")
        text = reader.interpolate(address, item_line, f"commitment peer {title}") if isinstance(address, str) else None
        host, _, port = (text or "").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            if text is not None or not isinstance(address, str):
                reader.problem(item_line, f"commitment peer {title}: {address!r} is not HOST:PORT (where the modality "
                                          "listens for storage commitment reports, e.g. '10.20.0.15:104')")
            continue
        if ae:
            peers[ae] = (host.strip("[]"), int(port))
    return Commitment(peers, wait)


def _tls(reader: _Reader, document: _Map) -> Tls | None:
    if "tls" not in document:
        return None
    section = reader.section(document, "tls", ("certificate", "private_key", "client_ca"))
    line = document.lines["tls"]
    files: dict[str, str | None] = {}
    for key in ("certificate", "private_key", "client_ca"):
        if key not in section:
            if key != "client_ca":
                reader.problem(line, f"'tls' needs '{key}' (a PEM file), or remove 'tls' to listen without TLS")
            files[key] = None
            continue
        path = reader.text(section, key, section.lines[key], f"tls {key}")
        if path and not Path(path).is_file():
            reader.problem(section.lines[key], f"tls {key} {path!r} is not a readable file: check the path (PEM format)")
            path = None
        files[key] = path
    _check_pem_files(reader, section, files)
    if not files["certificate"] or not files["private_key"]:
        return None
    return Tls(files["certificate"], files["private_key"], files["client_ca"])  # type: ignore[arg-type]


def _check_pem_files(reader: _Reader, section: _Map, files: dict[str, str | None]) -> None:
    """Report TLS files that do not parse, and a key that is not the certificate's, as the receiver would at start."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certificate_parses = False
    for key, holds in (("certificate", "the server's certificate chain"), ("client_ca", "the CA certificates")):
        if files[key]:
            try:
                context.load_verify_locations(cafile=files[key])  # parses every certificate in the file
                certificate_parses = certificate_parses or key == "certificate"
            except (ssl.SSLError, OSError) as exc:
                reader.problem(section.lines[key], f"tls {key} {files[key]!r} holds no certificate that parses "
                                                   f"({_ssl_reason(exc)}): give a PEM file of {holds} "
                                                   "(-----BEGIN CERTIFICATE-----)")
    if not (certificate_parses and files["private_key"]):
        return
    try:
        load_key_pair(context, files["certificate"], files["private_key"])  # type: ignore[arg-type]
    except EncryptedKey as exc:
        reader.problem(section.lines["private_key"], f"{exc}: {exc.FIX}")
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            problem = f"is not the key of tls certificate {files['certificate']!r}: give the key it was made with"
        else:
            problem = (f"is not an unencrypted PEM private key ({_ssl_reason(exc)}): give the key file (-----BEGIN "
                       "PRIVATE KEY-----), decrypted if need be (openssl pkey -in KEY -out PLAIN)")
        reader.problem(section.lines["private_key"], f"tls private_key {files['private_key']!r} {problem}")


def _ssl_reason(exc: OSError) -> str:
    """OpenSSL's reason, without the ``(_ssl.c:NNNN)`` of where it was raised."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))


def _destination(reader: _Reader, document: _Map) -> tuple[str, str]:
    if "destination" not in document:
        reader.problem(1, "the file needs 'destination: gs://BUCKET/PREFIX/': where received instances are written")
        return "", ""
    line = document.lines["destination"]
    uri = reader.text(document, "destination", line, "destination")
    if uri is None:
        return "", ""
    if not uri.startswith("gs://"):
        reader.problem(line, f"destination {uri!r} must be gs://BUCKET or gs://BUCKET/PREFIX/")
        return "", ""
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        reader.problem(line, f"destination bucket {bucket!r} is not a bucket name: 3-222 of a-z 0-9 . _ -")
        return "", ""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if any(char in prefix for char in "*?[") or "//" in prefix:
        reader.problem(line, f"destination prefix {prefix!r} must be a plain folder path (no wildcards, no empty segments)")
    return bucket, prefix


def _object_name(reader: _Reader, document: _Map) -> str:
    if "object_name" not in document:
        return DEFAULT_OBJECT_NAME
    line = document.lines["object_name"]
    template = document["object_name"]
    if not isinstance(template, str) or not template.strip():
        reader.problem(line, f"object_name must be a template string such as {DEFAULT_OBJECT_NAME!r}")
        return DEFAULT_OBJECT_NAME
    try:
        parsed = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as exc:
        reader.problem(line, f"object_name {template!r} is not a valid template ({exc}): write fields as {{Name}}, a literal brace as {{{{")
        return DEFAULT_OBJECT_NAME
    fields = [field for field, _, _ in parsed]
    for field, spec, conversion in parsed:
        if spec or conversion:  # {SOPInstanceUID:.8} would give every instance one name
            reader.problem(line, f"object_name fields take no format spec or conversion: write {{{field}}}")
    for field in fields:
        if field not in NAME_FIELDS:
            reader.problem(line, f"object_name uses {{{field}}}, which is not a field: use {', '.join(NAME_FIELDS)}")
    if "SOPInstanceUID" not in fields:
        reader.problem(line, "object_name must contain {SOPInstanceUID}: without it, instances of a series overwrite each other")
    if template.startswith("/"):
        reader.problem(line, "object_name must not start with '/': the destination prefix already ends the folder path")
    return template
