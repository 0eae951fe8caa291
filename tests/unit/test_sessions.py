"""HTTP sessions of the Google clients read the environment once (handlers/clients/rest.py, environment_read_once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.clients.rest import open_session
from handlers.clients.storage import GcsStateStore, storage_client

from tests.unit.not_found_server import NotFoundEverywhere, not_found_server

_PROXY_AND_BUNDLE_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE",
                               "CURL_CA_BUNDLE")


@pytest.fixture
def recorder():
    with not_found_server() as address:
        yield address


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in _PROXY_AND_BUNDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    return tmp_path


def test_with_nothing_for_requests_in_the_environment_no_call_reads_it(clean_environment, recorder, monkeypatch):
    """No proxy or CA bundle variable: ~/.netrc is not read either, so its basic auth never replaces a token."""
    (clean_environment / ".netrc").write_text("machine 127.0.0.1 login someone password secret\n")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{recorder}")
    monkeypatch.setenv("HEALTHCARE_EMULATOR_HOST", f"http://{recorder}")
    client = storage_client("p")
    session, _ = open_session("HEALTHCARE_EMULATOR_HOST", "https://healthcare.googleapis.com/v1")
    assert client._http.trust_env is False and session.trust_env is False
    assert GcsStateStore("state-bkt", client).read("seals/rule/b.json") is None
    assert NotFoundEverywhere.seen and NotFoundEverywhere.seen[0][1] is None  # with requests' default: "Basic c29tZW9uZTpzZWNyZXQ="


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "https_proxy", "NO_PROXY"])
def test_a_proxy_variable_keeps_the_session_reading_the_environment(clean_environment, monkeypatch, variable):
    monkeypatch.setenv(variable, "http://127.0.0.1:9" if variable != "NO_PROXY" else "example.org")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    assert storage_client("p")._http.trust_env is True
    assert open_session("STORAGE_EMULATOR_HOST", "")[0].trust_env is True


@pytest.mark.parametrize("variables, expected", [
    ({"REQUESTS_CA_BUNDLE": "/etc/r.pem", "CURL_CA_BUNDLE": "/etc/c.pem"}, "/etc/r.pem"),
    ({"CURL_CA_BUNDLE": "/etc/c.pem"}, "/etc/c.pem"),
    ({}, True),
])
def test_the_ca_bundle_variable_is_read_once_with_requests_precedence(clean_environment, monkeypatch, variables,
                                                                        expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    http = storage_client("p")._http
    session, _ = open_session("STORAGE_EMULATOR_HOST", "")
    assert (http.trust_env, http.verify) == (False, expected)
    assert (session.trust_env, session.verify) == (False, expected)


def test_a_proxy_variable_is_still_obeyed(clean_environment, recorder, monkeypatch):
    """The proxy from HTTP_PROXY carries the call, as requests does by default."""
    monkeypatch.setenv("HTTP_PROXY", f"http://{recorder}")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://storage.invalid:8080")
    assert GcsStateStore("state-bkt", storage_client("p")).read("seals/rule/b.json") is None
    assert NotFoundEverywhere.seen[0][0].startswith("http://storage.invalid:8080/")  # a proxy's request line: the full URL
