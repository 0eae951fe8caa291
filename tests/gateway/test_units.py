"""Gateway units without network: config validation, object names, the spool's durability rules."""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.commitment import JOURNAL_NAME, Ledger
from gateway.config import DEFAULT_OBJECT_NAME, ConfigError, load, parse
from gateway.naming import MissingUid, ObjectNamer, safe_value
from gateway.spool import Record, Spool, SpoolFull
from gateway.stamps import Stamps
from localstack.names import REPO_ROOT

from .helpers import FakeClock, captured_logs, certificate, config_text, make_config


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, "gw.yaml", {})
    return caught.value.problems


def test_example_config_is_valid_and_defaults_apply(tmp_path: Path) -> None:
    config = load(REPO_ROOT / "gateway" / "example.yaml", {"GATEWAY_SPOOL": str(tmp_path)})
    assert (config.ae_title, config.port, config.calling_ae_titles) == ("DICOM-GCS", 11112, ("MODALITY",))
    assert (config.bucket, config.prefix, config.object_name) == ("dicom-inbox", "modalities/", DEFAULT_OBJECT_NAME)


def test_a_config_not_in_utf8_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.__main__ import main

    path = tmp_path / "gw.yaml"
    path.write_bytes(b"dicom:\n  ae_title: \xff\n")
    assert main(["--config", str(path), "--check"]) == 2
    assert capsys.readouterr().err == (f"{path}:2: not UTF-8 text (byte 20 is 0xff): save the gateway config file "
                                       "as UTF-8\n")


def test_config_problems_name_the_line_and_the_fix(tmp_path: Path) -> None:
    text = config_text(tmp_path, "bkt", dicom="dicom:\n  ae_title: THIS-TITLE-IS-TOO-LONG\n  prot: 104\n  calling_ae_titles: []\n",
                       destination="destination: s3://bkt/\nobject_name: '{PatientName}/{SOPInstanceUID}'\n")
    problems = _problems(text)
    assert "gw.yaml:2: ae_title 'THIS-TITLE-IS-TOO-LONG' is not an AE title" in problems[1]
    assert problems[0] == "gw.yaml:3: unknown key 'prot' in dicom: did you mean 'port'?"
    assert any(p.startswith("gw.yaml:4: 'dicom' needs 'calling_ae_titles'") for p in problems)
    assert any(p.startswith("gw.yaml:5: destination 's3://bkt/' must be gs://") for p in problems)
    assert any(p.startswith("gw.yaml:6: object_name uses {PatientName}, which is not a field") for p in problems)


def test_a_key_written_twice_or_a_list_as_a_key_is_refused(tmp_path: Path) -> None:
    # The second dicom: block would silently replace the first (config.yaml's loader, shared).
    twice = config_text(tmp_path, "bkt") + "dicom:\n  ae_title: OTHER\n"
    assert _problems(twice) == ["gw.yaml:19: not valid YAML (duplicate key 'dicom' (first at line 1)): "
                                "fix the indentation or quoting"]
    listed = config_text(tmp_path, "bkt") + "? [a, b]\n: 1\n"
    assert _problems(listed) == ["gw.yaml:19: not valid YAML (a key must be a plain value, not a list or mapping): "
                                 "fix the indentation or quoting"]


def test_additional_sop_classes_must_be_uids(tmp_path: Path) -> None:
    dicom = ("dicom:\n  ae_title: GW\n  calling_ae_titles: [CT1]\n  additional_sop_classes:\n"
             "    - '1.3.12.2.1107.5.9.1'\n    - 1.2\n    - '1.02.3'\n    - '1.3.12.2.1107.5.9.1'\n    - ${PRIVATE_SOP}\n"
             "    - '1.2.840.10008.1.1'\n")
    problems = _problems(config_text(tmp_path, "bkt", dicom=dicom))
    assert problems[0].startswith("gw.yaml:6: 1.2 in additional_sop_classes is not a SOP Class UID")
    assert "quote it in YAML" in problems[0]
    assert problems[1].startswith("gw.yaml:7: '1.02.3' in additional_sop_classes is not a SOP Class UID")
    assert problems[2].startswith("gw.yaml:9: SOP Class UID uses ${PRIVATE_SOP} but the environment does not set it")
    assert problems[3] == ("gw.yaml:10: 1.2.840.10008.1.1 in additional_sop_classes is a SOP class of the "
                           "VerificationServiceClass, not a storage one: remove it (only storage SOP classes can be received)")
    assert len(problems) == 4
    valid = ("dicom:\n  ae_title: GW\n  calling_ae_titles: [CT1]\n  additional_sop_classes:\n"
             "    - '1.3.12.2.1107.5.9.1'\n    - ${PRIVATE_SOP}\n    - '1.3.12.2.1107.5.9.1'\n")
    config = parse(config_text(tmp_path, "bkt", dicom=valid), "gw.yaml", {"PRIVATE_SOP": "1.2.840.113619.4.30"})
    assert config.additional_sop_classes == ("1.3.12.2.1107.5.9.1", "1.2.840.113619.4.30")
    assert parse(config_text(tmp_path, "bkt"), "gw.yaml", {}).additional_sop_classes == ()


def test_config_requires_sop_instance_uid_in_the_name_and_a_spool(tmp_path: Path) -> None:
    text = config_text(tmp_path, "bkt", spool="", destination="destination: gs://bkt\nobject_name: '{StudyInstanceUID}.dcm'\n")
    problems = _problems(text)
    assert any("object_name must contain {SOPInstanceUID}" in p for p in problems)
    assert any(p.endswith("'spool' needs 'directory'") for p in problems)


def test_client_allow_list(tmp_path: Path) -> None:
    dicom = "dicom:\n  ae_title: GW\n  calling_ae_titles: [A]\n  clients: [10.1.0.0/16, 192.0.2.7]\n"
    config = parse(config_text(tmp_path, "bkt", dicom=dicom), "gw.yaml", {})
    assert config.client_allowed("10.1.200.3") and config.client_allowed("::ffff:192.0.2.7")
    assert not config.client_allowed("10.2.0.1") and not config.client_allowed("not-an-ip")


def test_bind_addresses_and_client_entries_are_checked(tmp_path: Path) -> None:
    dicom = ("dicom:\n  ae_title: GW\n  address: 10.0.0.1:104\n  calling_ae_titles: [A]\n"
             "  clients: [10.1.2.3/16, 300.1.2.3, '${CLIENT_NET}', 192.0.2.7]\n")
    health = "health:\n  address: '::'\n"
    problems = _problems(config_text(tmp_path, "bkt", dicom=dicom, health=health))
    assert problems[0].startswith("gw.yaml:3: dicom.address '10.0.0.1:104' is not an IP address or host name to "
                                  "listen on: write e.g. 0.0.0.0 (every interface), :: (IPv6) or 127.0.0.1")
    assert problems[1] == ("gw.yaml:5: client 10.1.2.3/16 has host bits set: write 10.1.0.0/16 (the whole network) "
                           "or 10.1.2.3 (that address only)")
    assert problems[2].startswith("gw.yaml:5: client '300.1.2.3' is not an IP address or network")
    assert problems[3].startswith("gw.yaml:5: client uses ${CLIENT_NET} but the environment does not set it")
    assert problems[4].startswith("gw.yaml:15: health.address '::' is not an IPv4 address or host name to listen on")
    assert len(problems) == 5
    assert _problems(config_text(tmp_path, "bkt", dicom="dicom:\n  ae_title: GW\n  calling_ae_titles: [A]\n"
                                 "  clients: []\n"))[0].endswith("remove it to let every address associate")
    dicom = "dicom:\n  ae_title: GW\n  address: '::'\n  calling_ae_titles: [A]\n  clients: ['${CLIENT_NET}']\n"
    config = parse(config_text(tmp_path, "bkt", dicom=dicom, health="health:\n  address: localhost\n"), "gw.yaml",
                   {"CLIENT_NET": "10.9.0.0/16"})
    assert (config.address, config.health_address, config.clients[0].exploded) == ("::", "localhost", "10.9.0.0/16")
    for host in ("dicom_gateway", "gateway.internal.", "pacs-gw.example.org"):  # Compose names, fully qualified
        dicom = f"dicom:\n  ae_title: GW\n  address: {host}\n  calling_ae_titles: [A]\n"
        assert parse(config_text(tmp_path, "bkt", dicom=dicom), "gw.yaml", {}).address == host


def test_tls_files_that_do_not_parse_are_named_with_their_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.__main__ import main

    from .helpers import certificate

    key, cert = certificate(tmp_path, "server")
    other_key, _ = certificate(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")

    def check(certificate_file: Path, key_file: Path, ca: Path | None = None) -> str:
        tls = f"tls:\n  certificate: {certificate_file}\n  private_key: {key_file}\n"
        path = tmp_path / "gw.yaml"
        path.write_text(config_text(tmp_path, "bkt", tls=tls + (f"  client_ca: {ca}\n" if ca else "")))
        code = main(["--config", str(path), "--check"])
        out, err = capsys.readouterr()
        assert code == (2 if err else 0), out
        return err

    assert check(cert, key, ca=cert) == ""
    assert check(garbage, key).startswith(f"{tmp_path}/gw.yaml:20: tls certificate '{garbage}' holds no certificate "
                                          "that parses ([X509] PEM lib): give a PEM file")
    assert check(cert, key, ca=key).startswith(f"{tmp_path}/gw.yaml:22: tls client_ca '{key}' holds no certificate")
    assert check(cert, other_key).startswith(f"{tmp_path}/gw.yaml:21: tls private_key '{other_key}' is not the key "
                                             f"of tls certificate '{cert}'")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:x", "-out", str(encrypted)],
                   check=True, capture_output=True)
    assert check(cert, encrypted).startswith(f"{tmp_path}/gw.yaml:21: tls private_key '{encrypted}' is encrypted "
                                             "(passphrase-protected): give it decrypted")
    assert check(cert, garbage).startswith(f"{tmp_path}/gw.yaml:21: tls private_key '{garbage}' is not an "
                                           "unencrypted PEM private key")


@pytest.mark.parametrize("passphrase", ["", "secret"])
def test_an_encrypted_key_stops_the_start_as_the_check_in_one_line(tmp_path: Path, passphrase: str) -> None:
    """Before: a key encrypted with an empty passphrase passed --check, and the start had OpenSSL prompt
    ``Enter PEM pass phrase:`` (waiting on a terminal), then failed with ``[Errno 22] Invalid argument``."""
    key, cert = certificate(tmp_path, "server")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", f"pass:{passphrase}", "-out",
                    str(encrypted)], check=True, capture_output=True)
    path = tmp_path / "gw.yaml"
    tls = f"tls:\n  certificate: {cert}\n  private_key: {encrypted}\n"
    path.write_text(config_text(tmp_path / "spool", "bkt", tls=tls))
    env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "GOOGLE_CLOUD_PROJECT": "test",
           "PYTHONPATH": str(REPO_ROOT)}
    for check in (["--check"], []):
        done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(path), *check], env=env, cwd=REPO_ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                              start_new_session=True)  # no terminal, as under systemd: no prompt to wait on
        assert done.returncode == 2 and done.stdout == "", (check, done.stdout)
        assert done.stderr == (f"{path}:21: tls private_key '{encrypted}' is encrypted (passphrase-protected): give it "
                               "decrypted, a -----BEGIN PRIVATE KEY----- file (openssl pkey -in KEY -out PLAIN)\n")


def test_a_key_encrypted_after_the_config_was_read_ends_the_start_in_one_line(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The receiver loads the key as the check does, never prompting; the start names the key and the fix."""
    from gateway.__main__ import main
    from gateway.config import EncryptedKey
    from gateway.scp import Receiver
    from gateway.spool import Spool

    key, cert = certificate(tmp_path, "server")
    config = make_config(tmp_path / "spool", "bkt", tls=f"tls:\n  certificate: {cert}\n  private_key: {key}\n")
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:", "-out", f"{key}.new"],
                   check=True, capture_output=True)
    os.replace(f"{key}.new", key)
    receiver = Receiver(config, Spool(config.spool_directory, max_bytes=2**20), lambda record: None)
    with pytest.raises(EncryptedKey, match=f"tls private_key '{key}' is encrypted"):
        receiver.start()

    class Starting:
        def __init__(self, config: object) -> None:
            self.stopped = False

        def start(self) -> None:
            receiver.start()

        def stop(self) -> None:
            self.stopped = True

    path = tmp_path / "gw.yaml"
    path.write_text(config_text(tmp_path / "spool", "bkt"))
    monkeypatch.setattr("gateway.service.Gateway", Starting)
    with captured_logs() as logs:
        assert main(["--config", str(path)]) == 1
    [failure] = [line for line in logs() if line["message"] == "gateway could not start"]
    assert failure["error"] == f"tls private_key '{key}' is encrypted (passphrase-protected)"
    assert failure["fix"] == EncryptedKey.FIX


def test_names_are_made_safe() -> None:
    namer = ObjectNamer("{CallingAETitle}/{Modality}/{StudyDate}/{SOPInstanceUID}.dcm", "in/")
    values = {"CallingAETitle": "CT 1/../x", "Modality": "..", "StudyDate": "2024*?[3]",
              "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4\n"}
    assert namer.name(values) == "in/CT_1_.._x/__/2024___3_/1.2.3.4.dcm"
    assert safe_value("") == "_" and safe_value("a" * 100) == "a" * 64


@pytest.mark.parametrize("uid", ["1.2.3+4", "1.2.3_4", "1.2.3/4", "1.2.\u00e9", "..", "1.2.", "1" * 65])
def test_names_refuse_uids_that_are_not_uids(uid: str) -> None:
    """Made safe, 1.2.3+4 and 1.2.3_4 would both be 1.2.3_4: two instances, one object."""
    namer = ObjectNamer(DEFAULT_OBJECT_NAME)
    values = {"CallingAETitle": "CT1", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        with pytest.raises(ValueError, match=f"^{key} not a valid UID"):
            namer.name({**values, key: uid})
    assert namer.name({**values, "SOPInstanceUID": "1.2.03." + "9" * 57}).endswith("/1.2.03." + "9" * 57 + ".dcm")


def test_names_need_the_three_uids() -> None:
    with pytest.raises(MissingUid, match="SeriesInstanceUID"):
        ObjectNamer(DEFAULT_OBJECT_NAME).name({"CallingAETitle": "A", "StudyInstanceUID": "1", "SOPInstanceUID": "2"})


def test_spool_round_trip_and_segment_deletion(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=200)
    spool.recover()
    records = [spool.append(f"o/{n}.dcm", bytes([n]) * 200) for n in range(5)]
    assert [record.read() for record in records] == [bytes([n]) * 200 for n in range(5)]
    assert len(list(tmp_path.glob("*.seg"))) == 5  # each record passes 200 bytes: one segment each
    for record in records:
        spool.done(record)
    assert list(tmp_path.glob("*.seg")) == [] and spool.stats().pending == 0


def test_spool_recovery_drops_a_torn_tail_and_keeps_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    first = spool.append("a.dcm", b"A" * 1000, {"callingAETitle": "CT1"})
    spool.append("b.dcm", b"B" * 1000)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    os.truncate(segment, segment.stat().st_size - 10)  # a crash in the middle of the second write

    again = Spool(tmp_path, max_bytes=10_000_000)
    with captured_logs() as logs:
        recovered = again.recover()
    assert [(r.name, r.read(), r.meta) for r in recovered] == [("a.dcm", b"A" * 1000, {"callingAETitle": "CT1"})]
    assert [(line["severity"], line["message"]) for line in logs()] == [
        ("WARNING", "spool: dropping an incomplete record (never acknowledged)")]
    assert recovered[0].crc32 == first.crc32
    again.done(recovered[0])
    assert list(tmp_path.iterdir()) == []


def test_spool_recovery_skips_records_noted_done_and_ignores_a_torn_or_orphan_ack(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    records = [spool.append(f"{n}.dcm", bytes([n]) * 100) for n in range(3)]
    spool.done(records[1])  # the current segment: noted in its .ack file, the segment kept
    spool.close()
    with open(records[0].segment.with_suffix(".ack"), "ab") as ack:
        ack.write(b"\x01\x02\x03")  # a torn note: a crash in the middle of writing it
    (tmp_path / "00000000000000000001-1-000001.ack").write_bytes(b"\x00" * 8)  # its segment already deleted

    again = Spool(tmp_path, max_bytes=10_000_000)
    assert [record.name for record in again.recover()] == ["0.dcm", "2.dcm"]
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".ack", ".seg"]
    assert again.stats().pending == 2


def _flip_a_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x10]))


def test_a_damaged_record_loses_none_of_the_records_after_it(tmp_path: Path) -> None:
    """Before: a bit flipped in the first record's header dropped it and both records after it as "never
    acknowledged", and the segment, counted as uploaded, was deleted: two acknowledged instances lost."""
    from gateway.uploader import Uploader

    from .helpers import wait_for

    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    records = [spool.append(f"{n}.dcm", bytes([65 + n]) * 500) for n in range(3)]
    spool.close()
    [segment] = tmp_path.glob("*.seg")
    _flip_a_bit(segment, 30)  # in the first record's header: its header CRC fails
    damaged = segment.read_bytes()
    second_starts = records[0].offset + records[0].length

    with captured_logs() as logs:
        recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert [(r.name, r.read()) for r in recovered] == [("1.dcm", b"B" * 500), ("2.dcm", b"C" * 500)]
    [error] = [line for line in logs() if line["severity"] == "ERROR"]
    assert (error["segment"], error["offset"], error["bytes"]) == (str(segment), 0, second_starts)
    kept = tmp_path / f"{segment.name}.corrupt"
    assert error["keptAs"] == str(kept) and kept.read_bytes() == damaged
    assert not [line for line in logs() if "never acknowledged" in line["message"]]

    with captured_logs() as logs:  # a restart before they are uploaded still has them, and nothing to report
        again = Spool(tmp_path, max_bytes=10_000_000)
        recovered = again.recover()
    assert [(r.name, r.read()) for r in recovered] == [("1.dcm", b"B" * 500), ("2.dcm", b"C" * 500)]
    assert not [line for line in logs() if line["severity"] in ("ERROR", "WARNING")]
    inbox = _FlakyInbox(failures=0)
    uploader = Uploader(again, lambda: inbox, bucket="bkt", threads=1, processes=0, max_backoff=0.05)
    uploader.start()
    for record in recovered:
        uploader.submit(record)
    wait_for(lambda: again.stats().pending == 0, timeout=10, what="the uploads")
    uploader.stop()
    assert inbox.objects == {"1.dcm": b"B" * 500, "2.dcm": b"C" * 500}
    assert [path.name for path in tmp_path.iterdir()] == [kept.name]  # the damaged file is never deleted
    assert again.append("3.dcm", b"D").segment.name != segment.name  # nor its number given again


def test_a_set_aside_segment_s_ack_notes_do_not_apply_to_its_copy(tmp_path: Path) -> None:
    """The ``.ack`` offsets are the damaged file's: kept beside the copy, they would hit the copy's records and a
    second recovery would skip records never uploaded."""
    clock = FakeClock()
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    spool.recover()
    records = []
    for n in range(4):
        clock.now += 1  # stamps of one length: headers of one length
        records.append(spool.append(f"{n}.dcm", bytes([65 + n]) * 500))
    spool.done(records[0])  # noted in the .ack file: its payload offset is where the copy's first record's is
    spool.close()
    _flip_a_bit(records[2].segment, records[2].offset + 5)
    assert [r.name for r in Spool(tmp_path, max_bytes=10_000_000).recover()] == ["1.dcm", "3.dcm"]
    assert (tmp_path / f"{records[0].segment.name}.corrupt").exists()
    recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert [(r.name, r.read()) for r in recovered] == [("1.dcm", b"B" * 500), ("3.dcm", b"D" * 500)]


def test_a_damaged_segment_that_cannot_be_set_aside_stays_and_is_never_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    records = [spool.append(f"{n}.dcm", bytes([65 + n]) * 500) for n in range(2)]
    spool.close()
    _flip_a_bit(records[0].segment, 30)
    damaged = records[0].segment.read_bytes()

    def refused(*args: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "link", refused)
    monkeypatch.setattr(shutil, "copyfile", refused)
    with captured_logs() as logs:
        again = Spool(tmp_path, max_bytes=10_000_000)
        [recovered] = again.recover()
    assert recovered.read() == b"B" * 500
    [error] = [line for line in logs() if line["severity"] == "ERROR"]
    assert "cannot be set aside" in error["message"] and "Permission denied" in error["error"]
    again.done(recovered)
    assert records[0].segment.read_bytes() == damaged  # every record uploaded, and still not deleted


class _Crash(BaseException):
    """The process dies here."""


@pytest.mark.parametrize("when", ["copying", "after the copy"])
def test_a_crash_while_setting_aside_without_hard_links_leaves_one_whole_corrupt_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """Before: a crash in the middle of the copy left a partial ``NAME.seg.corrupt`` (and the next recovery made
    ``.corrupt.1``); one after it, before the records' copy replaced ``NAME.seg``, a second ``.corrupt.1``."""
    import shutil

    from gateway import spool as spool_module

    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    records = [spool.append(f"{n}.dcm", bytes([65 + n]) * 500) for n in range(3)]
    spool.close()
    _flip_a_bit(records[1].segment, records[1].offset + 5)
    damaged = records[1].segment.read_bytes()

    def no_link(*args: Any) -> None:
        raise OSError(18, "Invalid cross-device link")

    def half_a_copy(source: Path, target: Path) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise _Crash

    def crash(*args: Any) -> None:
        raise _Crash

    monkeypatch.setattr(os, "link", no_link)
    with monkeypatch.context() as patches:
        if when == "copying":
            patches.setattr(shutil, "copyfile", half_a_copy)
        else:
            patches.setattr(spool_module, "_copy_records", crash)
        with pytest.raises(_Crash):
            Spool(tmp_path, max_bytes=10_000_000).recover()
    recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert [r.name for r in recovered] == ["0.dcm", "2.dcm"]
    assert sorted(path.name for path in tmp_path.glob("*.corrupt*")) == [f"{records[1].segment.name}.corrupt"]
    assert (tmp_path / f"{records[1].segment.name}.corrupt").read_bytes() == damaged
    assert not list(tmp_path.glob("*.tmp"))


def test_a_damaged_last_record_of_a_segment_followed_by_others_is_set_aside(tmp_path: Path) -> None:
    """Only the segment written last, or a record cut short, can have a torn tail; elsewhere it is damage."""
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=1000)
    spool.recover()
    first, last = spool.append("a.dcm", b"A" * 600), spool.append("b.dcm", b"B" * 600)  # sealed after b
    spool.append("c.dcm", b"C" * 100)  # the next segment
    spool.close()
    _flip_a_bit(last.segment, last.offset + 100)  # in b's payload: its CRC-32 fails
    with captured_logs() as logs:
        recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert [r.name for r in recovered] == ["a.dcm", "c.dcm"]
    [error] = [line for line in logs() if line["severity"] == "ERROR"]
    assert (error["segment"], error["offset"]) == (str(first.segment), first.offset + first.length)
    assert (tmp_path / f"{first.segment.name}.corrupt").exists()


def test_a_record_cut_short_in_a_segment_before_the_last_is_a_torn_tail(tmp_path: Path) -> None:
    """A crash while a full segment's last flush ran, the next segment already begun (or a failed write whose
    truncation failed): cut short, never acknowledged, dropped with the WARNING, nothing set aside."""
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=1000)
    spool.recover()
    spool.append("a.dcm", b"A" * 600)
    torn = spool.append("b.dcm", b"B" * 600)
    spool.append("c.dcm", b"C" * 100)
    spool.close()
    os.truncate(torn.segment, torn.offset + 10)
    with captured_logs() as logs:
        assert [r.name for r in Spool(tmp_path, max_bytes=10_000_000).recover()] == ["a.dcm", "c.dcm"]
    assert [line["severity"] for line in logs()] == ["WARNING"]
    assert not list(tmp_path.glob("*.corrupt*"))


def test_a_torn_tail_dropped_at_a_restart_is_not_judged_damage_at_the_next(tmp_path: Path) -> None:
    """Before: the tail stayed on disk; once a newer segment existed, the next restart took the same bytes for
    damage (an ERROR, a ``.corrupt`` file). Now recovery cuts it off the segment."""
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    first = spool.append("a.dcm", b"A" * 500)
    spool.close()
    whole = first.segment.stat().st_size
    with open(first.segment, "ab") as segment:
        segment.write(b"\0" * 300)  # a crash: the size grew, the pages of the next record were lost
    with captured_logs() as logs:
        again = Spool(tmp_path, max_bytes=10_000_000)
        assert [r.name for r in again.recover()] == ["a.dcm"]
    assert [line["severity"] for line in logs()] == ["WARNING"]
    assert first.segment.stat().st_size == whole
    again.append("b.dcm", b"B" * 10)  # a newer segment: the first is no longer the one written last
    again.close()
    with captured_logs() as logs:
        assert [r.name for r in Spool(tmp_path, max_bytes=10_000_000).recover()] == ["a.dcm", "b.dcm"]
    assert logs() == []
    assert not list(tmp_path.glob("*.corrupt*"))


@pytest.mark.parametrize("damage", ["payload", "shorter length", "longer length", "longer length, not newest",
                                    "foreign"])
def test_a_damaged_last_record_is_not_taken_for_a_torn_tail(tmp_path: Path, damage: str) -> None:
    """Before: a bit flipped in the last record of the segment written last (or in its payload length field, not
    covered by the header CRC, past the end of any segment) was dropped as "never acknowledged", and the segment
    deleted once the rest was uploaded: an acknowledged instance lost without a trace. A complete record whose
    header checks out is not a crash's partial write: the segment is set aside."""
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=9000)
    spool.recover()
    records = [spool.append(f"{n}.dcm", bytes([65 + n]) * 5000) for n in range(3)]  # 0, 1 | 2
    spool.close()
    last = records[1] if damage == "longer length, not newest" else records[2]
    start = records[0].offset + records[0].length if last is records[1] else 0  # of its prefix
    if damage == "payload":
        _flip_a_bit(last.segment, last.offset + 4000)
    elif damage == "shorter length":
        _flip_a_bit(last.segment, start + 9)  # 5000 = 0x1388: 0x0388
    elif damage in ("longer length", "longer length, not newest"):
        _flip_a_bit(last.segment, start + 10)  # past the end of the file
    else:
        last.segment.unlink()
        last.segment.write_bytes(struct.pack("<4sIQI", b"DGR1", 2**32 - 1, 2**64 - 1, 0) + b"an operator's file")
    damaged = last.segment.read_bytes()
    with captured_logs() as logs:
        again = Spool(tmp_path, max_bytes=10_000_000)
        recovered = again.recover()
    assert [r.name for r in recovered] == [r.name for r in records if r is not last]
    [error] = [line for line in logs() if line["severity"] != "INFO"]
    assert error["severity"] == "ERROR" and error["segment"] == str(last.segment)
    for record in recovered:
        again.done(record)
    assert (tmp_path / f"{last.segment.name}.corrupt").read_bytes() == damaged


def test_a_segment_an_earlier_start_began_to_set_aside_is_never_cut_as_a_torn_tail(tmp_path: Path) -> None:
    """Review: a start that linked a damaged segment as NAME.seg.corrupt but could not copy its records (disk full)
    left it in the spool; the next start, finding it the segment written last, took its damaged tail for a crash's
    and cut it: through the shared file, the kept copy too. A file so linked keeps its bytes: damage, set aside."""
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    spool.append("a.dcm", b"A" * 500)
    spool.append("b.dcm", b"B" * 500)
    long = spool.append("c.dcm", b"C" * 20000)
    spool.close()
    with open(long.segment, "r+b") as segment:  # as a crash's lost pages would look: zeros to the end
        segment.truncate((long.offset // mmap.PAGESIZE + 2) * mmap.PAGESIZE)
        segment.truncate(long.offset + long.length)
    before = long.segment.read_bytes()
    os.link(long.segment, tmp_path / f"{long.segment.name}.corrupt")  # the earlier start's set-aside, begun
    with captured_logs() as logs:
        assert [r.name for r in Spool(tmp_path, max_bytes=10_000_000).recover()] == ["a.dcm", "b.dcm"]
    assert [line["severity"] for line in logs() if line["severity"] != "INFO"] == ["ERROR"]
    assert (tmp_path / f"{long.segment.name}.corrupt").read_bytes() == before


def test_a_last_record_whose_last_pages_a_crash_lost_is_a_torn_tail(tmp_path: Path) -> None:
    """Its header checks out and its payload is all there, but zeros to the end of the file: never flushed."""
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    spool.append("a.dcm", b"A" * 500)
    short = spool.append("b.dcm", b"B" * 500)  # in the first page, with a
    long = spool.append("c.dcm", b"C" * 20000)
    spool.close()
    with open(long.segment, "r+b") as segment:
        page = (long.offset // mmap.PAGESIZE + 2) * mmap.PAGESIZE
        segment.truncate(page)  # its last pages lost: zeros from a page boundary
        segment.truncate(long.offset + long.length)
    with captured_logs() as logs:
        assert [r.name for r in Spool(tmp_path, max_bytes=10_000_000).recover()] == ["a.dcm", "b.dcm"]
    assert [line["severity"] for line in logs()] == ["WARNING"]
    with open(long.segment, "r+b") as segment:
        segment.truncate(short.offset + 200)  # zeros from inside the record's first page, which held a's end
        segment.truncate(short.offset + short.length)
    with captured_logs() as logs:
        assert [r.name for r in Spool(tmp_path, max_bytes=10_000_000).recover()] == ["a.dcm"]
    assert [line["severity"] for line in logs()] == ["WARNING"]
    assert not list(tmp_path.glob("*.corrupt*"))


def test_a_file_that_is_not_a_segment_is_set_aside_not_deleted(tmp_path: Path) -> None:
    (tmp_path / "notes.seg").write_bytes(b"an operator's notes, not a spool segment")
    spool = Spool(tmp_path, max_bytes=10_000_000)
    with captured_logs() as logs:
        assert spool.recover() == []
    [error] = [line for line in logs() if line["severity"] == "ERROR"]
    assert (error["segment"], error["offset"], error["bytes"]) == (str(tmp_path / "notes.seg"), 0, 40)
    assert (tmp_path / "notes.seg.corrupt").read_bytes() == b"an operator's notes, not a spool segment"
    spool.done(spool.append("a.dcm", b"A"))
    spool.close()
    assert Spool(tmp_path, max_bytes=10_000_000).recover() == []
    assert (tmp_path / "notes.seg.corrupt").exists()


def test_odd_entries_in_the_spool_directory_are_left_alone_and_recovery_goes_on(tmp_path: Path) -> None:
    """Before: a directory named ``*.seg``, ``*.tmp`` or ``*.ack`` (IsADirectoryError) or a dangling ``*.seg``
    symlink (FileNotFoundError) stopped recovery, and so the gateway's start."""
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=100)  # a segment each
    spool.recover()
    spool.append("a.dcm", b"A" * 100)
    record = spool.append("b.dcm", b"B" * 100)
    spool.close()
    (tmp_path / "00000000000000000007.seg").mkdir()
    (tmp_path / "x.tmp").mkdir()
    (tmp_path / "x.ack").mkdir()
    record.segment.with_suffix(".ack").mkdir()  # where the segment's notes would be: that segment is kept as it is
    (tmp_path / "00000000000000000005.seg").symlink_to(tmp_path / "nowhere")
    before = sorted(path.name for path in tmp_path.iterdir())
    with captured_logs() as logs:
        again = Spool(tmp_path, max_bytes=10_000_000)
        assert [r.name for r in again.recover()] == ["a.dcm"]
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    errors = sorted((line["message"], line["segment"]) for line in logs() if line["severity"] == "ERROR")
    assert errors == [("spool: cannot read a segment, left where it is", str(record.segment)),
                      ("spool: not a regular file, left where it is", str(tmp_path / "00000000000000000005.seg")),
                      ("spool: not a regular file, left where it is", str(tmp_path / "00000000000000000007.seg"))]
    assert again.append("b.dcm", b"B").segment.name == "00000000000000000008.seg"  # no number given twice


class _SteppedClock:
    """``time`` for the spool, whose wall clock NTP steps back 10 s at each :meth:`step_back`."""

    def __init__(self) -> None:
        self.offset = 0.0

    def step_back(self) -> None:
        self.offset -= 10

    def time(self) -> float:
        return time.time() + self.offset

    def time_ns(self) -> int:
        return time.time_ns() + int(self.offset * 1e9)

    def monotonic(self) -> float:
        return time.monotonic()


def test_spool_recovery_keeps_the_order_of_reception_when_the_clock_steps_back(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: segments were named by the wall clock and recovered in name order, so a segment made after a step
    back came first, and the older version of an instance (submitted last) superseded the newer one."""
    clock = _SteppedClock()
    monkeypatch.setattr("gateway.spool.time", clock)
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=100)  # one segment per record
    spool.recover()
    spool.append("x.dcm", b"v1" * 100)
    clock.step_back()  # while running
    spool.append("x.dcm", b"v2" * 100)
    spool.close()  # a crash: nothing uploaded
    clock.step_back()  # between the crash and the restart
    again = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=100)
    assert [record.read()[:2] for record in again.recover()] == [b"v1", b"v2"]
    again.append("x.dcm", b"v3" * 100)
    again.close()
    assert [record.read()[:2] for record in Spool(tmp_path, max_bytes=10_000_000).recover()] == [b"v1", b"v2", b"v3"]


def test_reception_stamps_increase_when_several_associations_take_them_at_once() -> None:
    """A clock standing still (or stepped back) still gives each reception its own, later stamp."""
    clock = FakeClock()
    stamps = Stamps(clock)
    taken: list[list[float]] = [[] for _ in range(4)]

    def take(mine: list[float]) -> None:
        for _ in range(1000):
            mine.append(stamps.next())

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(mine == sorted(mine) for mine in taken)
    assert len({stamp for mine in taken for stamp in mine}) == 4000
    clock.now -= 60  # NTP steps the clock back a minute
    assert stamps.next() > max(max(mine) for mine in taken)
    clock.now += 120
    assert stamps.next() == clock.now, "a clock ahead of the last stamp is the stamp"


def test_a_restart_stamps_new_receptions_after_the_newest_in_the_spool(tmp_path: Path) -> None:
    """The clock stepped back while the gateway was down: a version received after the restart is still newer."""
    clock = FakeClock()
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    spool.recover()
    before = spool.append("x.dcm", b"v1")
    spool.close()
    clock.now -= 60
    again = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    assert again.recover() == [before]
    assert again.append("x.dcm", b"v2").received > before.received


class _ContendedLock:
    """A lock that sets ``contended`` when a thread has to wait for it."""

    def __init__(self, contended: threading.Event) -> None:
        self.inner = threading.Lock()
        self.contended = contended

    def __enter__(self) -> "_ContendedLock":
        if not self.inner.acquire(blocking=False):
            self.contended.set()
            self.inner.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_two_versions_sent_at_once_are_stamped_in_the_order_they_are_spooled(tmp_path: Path) -> None:
    """Before: the stamp was taken before the lock that gives a record its place in the segment, so an association
    could be stamped first and spooled second: recovery and the uploader took the other version for the newer,
    the bucket (larger stamp) this one. Here A is paused just after taking its stamp until B has appended its
    version or is waiting for the spool's lock (the fix: A then holds it), no sleeping."""
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    b_done, go_on = threading.Event(), threading.Event()  # go_on: B has appended, or waits for the spool's lock
    spool._lock = _ContendedLock(go_on)  # type: ignore[assignment]

    def send_b() -> None:
        spool.append("x.dcm", b"B")
        b_done.set()
        go_on.set()

    class PausingStamps(Stamps):
        first = True

        def next(self) -> float:
            stamp = super().next()
            if self.first:  # association A, stamped: association B sends the same instance now
                self.first = False
                threading.Thread(target=send_b).start()
                assert go_on.wait(10), "B neither appended nor waited for the lock"  # a bound, not a pause
            return stamp

    spool._stamps = PausingStamps(FakeClock())
    spool.append("x.dcm", b"A")
    assert b_done.wait(10)
    spool.close()
    recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert [record.read() for record in recovered] == [b"A", b"B"]
    assert recovered[0].received < recovered[1].received


def test_spool_segments_named_by_an_earlier_version_are_recovered_before_new_ones(tmp_path: Path) -> None:
    """Segments were named ``TIME_NS-PID-N.seg``: the next segment continues from the highest number found."""
    earlier = Spool(tmp_path, max_bytes=10_000_000)
    earlier.recover()
    earlier.append("x.dcm", b"old")
    earlier.close()
    [segment] = tmp_path.glob("*.seg")
    segment.rename(tmp_path / f"{time.time_ns():020d}-4242-000001.seg")
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    spool.append("x.dcm", b"new")
    spool.close()
    names = [path.name for path in sorted(tmp_path.glob("*.seg"))]
    assert len(names) == 2 and names[0].endswith("-4242-000001.seg")
    assert names[1] == f"{int(names[0].split('-')[0]) + 1:020d}.seg"
    assert [record.read() for record in Spool(tmp_path, max_bytes=10_000_000).recover()] == [b"old", b"new"]


def test_a_spool_directory_created_is_fsynced_into_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.spool

    synced: list[Path] = []
    fsync_directory = gateway.spool._fsync_directory
    monkeypatch.setattr(gateway.spool, "_fsync_directory", lambda path: synced.append(path) or fsync_directory(path))
    spool = Spool(tmp_path / "var" / "spool", max_bytes=10_000_000)
    spool.recover()
    assert synced == [tmp_path, tmp_path / "var"]
    spool.append("a.dcm", b"A" * 10)  # a new segment: its name fsynced into the spool directory
    assert synced == [tmp_path, tmp_path / "var", tmp_path / "var" / "spool"]
    Ledger(tmp_path / "commitment" / JOURNAL_NAME).close()  # the Gateway makes the ledger before the spool
    assert synced[-1] == tmp_path


def test_spool_full_refuses_before_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=5000)
    spool.recover()
    spool.append("a.dcm", b"x" * 3000)
    with pytest.raises(SpoolFull):
        spool.append("b.dcm", b"x" * 3000)
    assert spool.stats().pending == 1 and spool.stats().disk_bytes < 5000


def test_group_commit_shares_fdatasync_between_concurrent_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fdatasync
    gate = threading.Event()

    def slow_fdatasync(fd: int) -> None:
        calls.append(fd)
        gate.wait(0.2)  # while one flush runs, the other writers queue behind it
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    threads = [threading.Thread(target=spool.append, args=(f"{n}.dcm", b"z" * 100)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert spool.stats().pending == 8
    assert len(calls) < 8  # fewer flushes than records, and every append returned only after one covering it
    assert (spool.stats().appended, spool.stats().flushes) == (8, len(calls))
    recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert sorted(r.name for r in recovered) == sorted(f"{n}.dcm" for n in range(8))


@pytest.mark.parametrize("sop_instance, source_ae", [("1.2.3.4", "CT1"), ("1.2.33.4", "ODD-AE"), ("1.2.840.1", "A")])
def test_file_meta_is_what_pydicom_writes(sop_instance: str, source_ae: str) -> None:
    from io import BytesIO

    import pydicom
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    from gateway.part10 import file_meta

    meta = pydicom.dataset.FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    meta.SourceApplicationEntityTitle = source_ae
    buffer = BytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    ours = file_meta("1.2.840.10008.5.1.4.1.1.2", sop_instance, "1.2.840.10008.1.2.4.50", source_ae)
    assert ours == b"\x00" * 128 + b"DICM" + buffer.getvalue()
    parsed = pydicom.dcmread(BytesIO(ours + b""), force=True).file_meta
    assert parsed.SourceApplicationEntityTitle == source_ae and parsed.MediaStorageSOPInstanceUID == sop_instance


def test_header_values_of_each_encoding() -> None:
    from io import BytesIO

    import pydicom
    from pynetdicom.dsutils import encode

    from gateway.part10 import header_values
    from localstack import samples

    (uids, data), = samples.make_series(1)
    ds = pydicom.dcmread(BytesIO(data))
    # (implicit VR, little endian, deflated): the dataset as an SCU puts it on the wire in each transfer syntax
    for syntax, flags in (("1.2.840.10008.1.2", (True, True, False)), ("1.2.840.10008.1.2.1", (False, True, False)),
                          ("1.2.840.10008.1.2.2", (False, False, False)), ("1.2.840.10008.1.2.1.99", (False, True, True))):
        encoded = encode(ds, *flags)
        values = header_values(BytesIO(encoded), syntax)
        assert (values["StudyInstanceUID"], values["SeriesInstanceUID"], values["SOPInstanceUID"]) == tuple(uids), syntax
    with pytest.raises(Exception):
        header_values(BytesIO(b"\x08\x00\x16\x00XX\x04\x00abcd"), "1.2.840.10008.1.2.1")


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_rle_2frame.dcm", "CT_small.dcm", "MR_small_bigendian.dcm"])
def test_header_values_refuse_a_dataset_cut_short_and_a_vr_encoding_not_its_transfer_syntax(name: str) -> None:
    """Encapsulated and native pixel data cut anywhere (an item, the delimiter); implicit VR bytes on an explicit VR
    context and the reverse. pydicom reads all of these (the pixel data it never reads, the VR it only warns of)."""
    from io import BytesIO

    import pydicom
    from pydicom.data import get_testdata_file
    from pynetdicom.dsutils import encode

    from gateway.part10 import Undecodable, header_values

    ds = pydicom.dcmread(get_testdata_file(name))
    syntax = ds.file_meta.TransferSyntaxUID
    encoded = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian)
    assert header_values(BytesIO(encoded), syntax)["SOPInstanceUID"] == ds.SOPInstanceUID
    for cut in (2, 9, 100):
        with pytest.raises(Undecodable, match="cut short"):
            header_values(BytesIO(encoded[:-cut]), syntax)
    other = "1.2.840.10008.1.2.1" if syntax.is_implicit_VR else "1.2.840.10008.1.2"
    with pytest.raises(Undecodable, match="VR, but the presentation context's transfer syntax is"):
        header_values(BytesIO(encoded), other)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_header_values_refuse_a_partial_header_after_the_last_element_without_pixel_data(syntax: str) -> None:
    """1 to 7 bytes after the last element are refused as after pixel data; a dataset ending at an element's end
    (a sequence of defined or undefined length, Data Set Trailing Padding) is not. pydicom alone reads them all."""
    from io import BytesIO

    from pydicom.dataset import Dataset
    from pydicom.uid import UID
    from pynetdicom.dsutils import encode

    from gateway.part10 import Undecodable, header_values

    uid = UID(syntax)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.5", "SR"
    ds.ContentSequence = [Dataset()]
    ds.ContentSequence[0].ValueType = "TEXT"
    padded = Dataset()
    padded.DataSetTrailingPadding = b"\x00" * 6
    for undefined in (False, True):
        ds["ContentSequence"].is_undefined_length = undefined
        encoded = encode(ds, uid.is_implicit_VR, uid.is_little_endian)
        for whole in (encoded, encoded + encode(padded, uid.is_implicit_VR, uid.is_little_endian)):
            assert header_values(BytesIO(whole), syntax)["SOPInstanceUID"] == "1.2.3.4"
            for partial in range(1, 8):
                with pytest.raises(Undecodable, match=f"{partial} bytes at the end are not an element"):
                    header_values(BytesIO(whole + whole[:partial]), syntax)


def test_header_values_accept_what_pydicom_reads_from_known_writer_bugs_at_the_end() -> None:
    """A last element pydicom reads despite a writer's bug is no partial header: a final explicit VR sequence whose
    items are implicit VR, and a last element written in implicit VR inside an explicit VR dataset."""
    import struct
    from io import BytesIO

    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    from gateway.part10 import header_values

    head = Dataset()
    head.SOPClassUID, head.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.4"
    head.StudyInstanceUID, head.SeriesInstanceUID = "1.2.3", "1.2.3.5"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.9"
    implicit_item = encode(item, True, True)
    sequence = (struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
                + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + implicit_item
                + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    implicit_last = struct.pack("<HHI", 0x0009, 0x1010, 4) + b"ABCD"
    explicit = encode(head, False, True)
    for whole in (explicit + sequence, explicit + implicit_last):
        assert header_values(BytesIO(whole), "1.2.840.10008.1.2.1")["SOPInstanceUID"] == "1.2.3.4"


def test_a_library_warning_is_one_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom logs an invalid value and warns of it too (two lines before); a warning nobody logged stays one line."""
    import struct
    import uuid
    import warnings
    from io import BytesIO

    from gateway.part10 import header_values
    from gateway.scp import _bridge_library_logs

    def element(tag: int, value: bytes) -> bytes:
        value += b"\x00" * (len(value) % 2)
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"UI", len(value)) + value

    invalid = f"1.2.0{uuid.uuid4().int % 10**9}".encode()  # a leading zero; new text: not in the warnings registry
    dataset = b"".join(element(tag, value) for tag, value in ((0x00080016, b"1.2.840.10008.5.1.4.1.1.2"),
                       (0x00080018, b"1.2.3.4"), (0x0020000D, b"1.2.3"), (0x0020000E, invalid)))
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    _bridge_library_logs(False)
    with captured_logs() as logs:
        assert header_values(BytesIO(dataset), "1.2.840.10008.1.2.1")["SeriesInstanceUID"] == invalid.decode()
        warnings.warn(f"only a warning {uuid.uuid4()}", UserWarning)
    lines = [(line["severity"], line["logger"]) for line in logs()]
    assert lines == [("WARNING", "pydicom"), ("WARNING", "py.warnings")], logs()
    assert invalid.decode() in logs()[0]["message"] and logs()[1]["message"].startswith("UserWarning: only a warning")


class _FlakyInbox:
    """Fails the first ``failures`` puts, then stores in memory."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.objects: dict[str, bytes] = {}

    def put(self, name: str, data: bytes, received: float) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Cloud Storage is down")
        self.objects[name] = data
        return "created"


def test_uploader_retries_until_it_succeeds_then_frees_the_spool(tmp_path: Path) -> None:
    from gateway.uploader import Uploader

    from .helpers import captured_logs, wait_for

    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=100)
    spool.recover()
    inbox = _FlakyInbox(failures=3)
    uploader = Uploader(spool, lambda: inbox, bucket="bkt", threads=1, processes=0, max_backoff=0.05)
    with captured_logs() as logs:
        uploader.start()
        uploader.submit(spool.append("a/b.dcm", b"D" * 500))
        wait_for(lambda: inbox.objects, timeout=10, what="the upload")
        wait_for(lambda: spool.stats().pending == 0, timeout=10, what="the spool freed")
        uploader.stop()
    assert inbox.objects == {"a/b.dcm": b"D" * 500}
    assert [line["attempt"] for line in logs() if line["message"] == "upload failed, will retry"] == [1, 2, 3]
    assert [line["attempts"] for line in logs() if line["message"] == "instance uploaded"] == [4]
    assert list(tmp_path.glob("*.seg")) == []


class _NicenessInbox:
    """Answers each upload with the niceness of the process it ran in (picklable: made in the helper)."""

    def put(self, name: str, data: bytes, received: float) -> str:
        return str(os.nice(0))


def test_upload_helpers_yield_the_cpu_to_the_receiver(tmp_path: Path) -> None:
    from gateway.uploader import HELPER_NICENESS, _Processes

    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=1000)
    spool.recover()
    helpers = _Processes(_NicenessInbox, 1)
    try:
        assert helpers.put(spool.append("a/b.dcm", b"D" * 100)) == str(min(os.nice(0) + HELPER_NICENESS, 19))  # 19: the lowest priority
    finally:
        helpers.close()


def test_a_failed_write_is_not_acknowledged_and_leaves_earlier_records_whole(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from gateway.spool import SpoolError

    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    kept = spool.append("kept.dcm", b"K" * 1000)
    real_writev = os.writev

    def disk_full(fd: int, buffers: list) -> int:
        real_writev(fd, [bytes(buffers[0])[:10]])  # part of the record reaches the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", disk_full)
    with pytest.raises(SpoolError, match="No space left"):
        spool.append("lost.dcm", b"L" * 1000)
    monkeypatch.setattr(os, "writev", real_writev)
    after = spool.append("after.dcm", b"A" * 1000)  # a new segment: never append after a failure
    assert after.segment != kept.segment
    assert spool.stats().pending == 2
    spool.close()
    recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert sorted(r.name for r in recovered) == ["after.dcm", "kept.dcm"]  # the torn bytes were cut off


def _failing_writev(error: int) -> Any:
    def writev(fd: int, buffers: list) -> int:
        raise OSError(error, os.strerror(error))
    return writev


def _files_open_in(directory: Path) -> list[str]:
    """The files this process holds open in ``directory``."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile (by another thread)
            pass
    return [path for path in paths if path.startswith(f"{directory}/")]


def test_a_segment_sealed_by_a_failed_write_is_closed_and_deleted_once_uploaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from gateway.spool import SpoolError

    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=1_000_000)
    spool.recover()
    kept = spool.append("kept.dcm", b"K" * 1000)
    monkeypatch.setattr(os, "writev", _failing_writev(errno.ENOSPC))
    with pytest.raises(SpoolError):
        spool.append("lost.dcm", b"L" * 1000)
    monkeypatch.undo()
    spool.done(kept)  # the only record of the sealed segment is uploaded
    assert not kept.segment.exists()
    assert (spool.stats().pending, spool.stats().disk_bytes, spool.stats().segments) == (0, 0, 0)


def test_writes_refused_while_the_disk_fails_leak_no_segment_nor_file_descriptor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from gateway.spool import SpoolError, SpoolFull

    spool = Spool(tmp_path, max_bytes=30_000, segment_bytes=10_000)
    spool.recover()
    for _ in range(3):  # each time a segment with uploaded records is sealed by a failure
        records = [spool.append("a.dcm", b"a" * 4500) for _ in range(2)]
        monkeypatch.setattr(os, "writev", _failing_writev(errno.EIO))
        for _ in range(20):  # a modality retrying while the disk fails: each try a new segment
            with pytest.raises(SpoolError):
                spool.append("b.dcm", b"b" * 100)
        monkeypatch.undo()
        for record in records:
            spool.done(record)
    assert list(tmp_path.glob("*.seg")) == [] and spool.stats().disk_bytes == 0
    assert _files_open_in(tmp_path) == []
    try:
        spool.append("c.dcm", b"c" * 5000)  # the disk works again: so does the spool
    except SpoolFull:
        pytest.fail("the spool counts segments it no longer holds")


def test_a_failed_fdatasync_is_not_acknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from gateway.spool import SpoolError

    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()

    def io_error(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", io_error)
    with pytest.raises(SpoolError, match="Input/output error"):
        spool.append("a.dcm", b"x" * 100)
    assert spool.stats().pending == 0  # not acknowledged, so not waiting for an upload either
    monkeypatch.undo()
    record = spool.append("b.dcm", b"y" * 100)
    assert record.read() == b"y" * 100 and spool.stats().pending == 1


def _record(uid: str) -> Record:
    return Record(Path("spool.seg"), 0, 1, f"{uid}.dcm", 0, 0.0, {"sopInstanceUID": uid})


def test_commitment_ledger_remembers_uploads_across_a_restart_and_not_what_waited(tmp_path: Path) -> None:
    journal = tmp_path / "spool" / JOURNAL_NAME
    ledger = Ledger(journal)
    for uid in ("1.2.1", "1.2.2", "1.2.3"):
        ledger.spooled(_record(uid))
    ledger.uploaded(_record("1.2.1"))
    ledger.uploaded(_record("1.2.2"))
    ledger.close()
    with open(journal, "a", encoding="ascii") as torn:
        torn.write("1.2.")  # a crash in the middle of an append
    restarted = Ledger(journal)
    assert [restarted.committed(uid) for uid in ("1.2.1", "1.2.2", "1.2.3", "1.2")] == [True, True, None, None]
    restarted.spooled(_record("1.2.2"))  # a copy recovered from the spool at start: pending again until uploaded
    assert restarted.committed("1.2.2") is False
    restarted.close()
    assert journal.read_text() == "1.2.1\n1.2.2\n", "rewritten at start without the torn line"


def test_commitment_journal_is_compacted_to_the_newest_instances(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL_NAME
    ledger = Ledger(journal, size=3)
    for number in range(1, 11):
        ledger.spooled(_record(f"1.3.{number}"))
        ledger.uploaded(_record(f"1.3.{number}"))
        assert len(journal.read_text().splitlines()) <= 6
    ledger.close()
    restarted = Ledger(journal, size=3)
    assert [restarted.committed(f"1.3.{number}") for number in (7, 8, 9, 10)] == [None, True, True, True]
    restarted.close()


def test_a_journal_that_cannot_be_written_is_logged_once_and_instances_still_committed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / JOURNAL_NAME)
    ledger._journal_file = open("/dev/full", "a", encoding="ascii")  # every flush fails: ENOSPC
    with captured_logs() as logs:
        for uid in ("1.4.1", "1.4.2"):
            ledger.spooled(_record(uid))
            ledger.uploaded(_record(uid))
    assert ledger.committed("1.4.1") is True and ledger.committed("1.4.2") is True
    [warning] = [line for line in logs() if line["severity"] == "WARNING"]
    assert warning["message"].startswith("storage commitment journal not written")
    ledger.close()


def test_a_failed_journal_compaction_leaves_the_journal_appended_to(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL_NAME
    ledger = Ledger(journal, size=2)
    (tmp_path / (JOURNAL_NAME + ".tmp")).mkdir()  # stands for any OSError while compacting (ENOSPC, EIO...)
    with captured_logs() as logs:
        for number in range(9):  # compactions due past the 4th line, then 2 lines later...: each fails
            ledger.spooled(_record(f"1.5.{number}"))
            ledger.uploaded(_record(f"1.5.{number}"))  # no ValueError from a journal left closed
    assert [ledger.committed(f"1.5.{number}") for number in (6, 7, 8)] == [None, True, True]  # the newest 2
    warnings = [line for line in logs() if line["severity"] == "WARNING"]
    assert {line["message"] for line in warnings} == {"storage commitment journal not compacted: it grows until a "
                                                       "compaction succeeds"}
    assert len(warnings) == 2  # at the 5th and the 8th line
    ledger.close()
    assert journal.read_text().splitlines() == [f"1.5.{number}" for number in range(9)]
    (tmp_path / (JOURNAL_NAME + ".tmp")).rmdir()
    restarted = Ledger(journal, size=2)
    assert [restarted.committed(f"1.5.{number}") for number in (6, 7, 8)] == [None, True, True]
    restarted.close()


def test_a_journal_compaction_failing_at_start_is_a_warning(tmp_path: Path) -> None:
    journal = tmp_path / JOURNAL_NAME
    journal.write_text("1.7.1\n1.7.")  # the last line cut short by a crash
    (tmp_path / (JOURNAL_NAME + ".tmp")).mkdir()
    with captured_logs() as logs:
        ledger = Ledger(journal)
    assert [line["message"] for line in logs()] == ["storage commitment journal not compacted: it grows until a "
                                                    "compaction succeeds"]
    assert ledger.committed("1.7.1") is True
    ledger.spooled(_record("1.7.2"))
    ledger.uploaded(_record("1.7.2"))
    ledger.close()
    assert journal.read_text() == "1.7.1\n1.7.\n1.7.2\n"  # the torn line ended: no UID 1.7.1.7.2 made up


class _Inbox:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, name: str, data: bytes, received: float) -> str:
        self.objects[name] = data
        return "created"


def test_an_error_after_an_upload_is_logged_and_the_uploader_goes_on(tmp_path: Path) -> None:
    from gateway.uploader import Uploader

    from .helpers import wait_for

    def broken_ledger(record: Record) -> None:
        raise ValueError("I/O operation on closed file.")

    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=100)  # a segment per record: each deleted
    spool.recover()
    inbox = _Inbox()
    uploader = Uploader(spool, lambda: inbox, bucket="bkt", threads=2, processes=0, max_backoff=0.05,
                        on_uploaded=broken_ledger)
    with captured_logs() as logs:
        uploader.start()
        for number in range(10):
            uploader.submit(spool.append(f"o/{number}.dcm", b"x" * 100))
        wait_for(lambda: len(inbox.objects) == 10 and spool.stats().pending == 0, timeout=10, what="uploads")
        assert all(worker.is_alive() for worker in uploader._workers)
        uploader.stop()
    errors = [line for line in logs() if line["severity"] == "ERROR"]
    assert len(errors) == 10 and errors[0]["message"] == "upload bookkeeping failed: the uploader goes on"
    assert errors[0]["error"] == "ValueError: I/O operation on closed file." and errors[0]["object"].startswith("gs://bkt/o/")
    assert list(tmp_path.glob("*.seg")) == []


@pytest.mark.parametrize("taken", ["dicom", "health"])
def test_a_gateway_that_cannot_bind_its_port_exits_1_with_one_json_line(tmp_path: Path, taken: str) -> None:
    """Before: a DICOM port in use left the process hanging in the health server's shutdown (no restart by
    systemd), and a health port in use ended in a traceback."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        dicom = f"dicom:\n  ae_title: GW\n  address: 127.0.0.1\n  port: {port if taken == 'dicom' else 0}\n" \
                "  calling_ae_titles: [CT1]\n"
        health = f"health:\n  address: 127.0.0.1\n  port: {port if taken == 'health' else 0}\n"
        path = tmp_path / "gw.yaml"
        path.write_text(config_text(tmp_path / "spool", "bkt", dicom=dicom, health=health))
        env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "GOOGLE_CLOUD_PROJECT": "test",
               "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(path)], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    [failure] = [line for line in lines if line["message"] == "gateway could not start"]
    assert "Address already in use" in failure["error"] and f"{taken}.port" in failure["fix"]


def test_a_commitment_journal_that_cannot_be_opened_names_the_spool_directory(tmp_path: Path) -> None:
    """Before: the fix sent the operator to health.address and health.port."""
    from gateway.__main__ import main

    (tmp_path / "not-a-directory").write_text("")
    spool = tmp_path / "not-a-directory" / "spool"
    commitment = "commitment:\n  peers:\n    MODALITY1: '127.0.0.1:104'\n"
    path = tmp_path / "gw.yaml"
    path.write_text(config_text(spool, "bkt", destination=f"destination: gs://bkt/in/\n{commitment}"))
    with captured_logs() as logs:
        assert main(["--config", str(path)]) == 1
    [failure] = [line for line in logs() if line["message"] == "gateway could not start"]
    assert failure["fix"].startswith(f"check spool.directory {spool}:") and "health" not in failure["fix"]


@pytest.mark.parametrize("template", ["{StudyInstanceUID}/{SOPInstanceUID:.8}.dcm", "{SOPInstanceUID!r}.dcm"])
def test_object_name_fields_take_no_format_spec_or_conversion(tmp_path: Path, template: str) -> None:
    """``{SOPInstanceUID:.8}`` cut every UID to one name: instances would supersede each other and be lost."""
    text = config_text(tmp_path, "bkt", destination=f"destination: gs://bkt/in/\nobject_name: '{template}'\n")
    assert any(p.startswith("gw.yaml:7: object_name fields take no format spec or conversion: write {SOPInstanceUID}")
               for p in _problems(text))
