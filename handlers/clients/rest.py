"""Google REST APIs through google-auth's ``AuthorizedSession``: sessions, bounded retries, errors.

Shared by the Healthcare and Cloud Logging clients. With an emulator variable
set (``HEALTHCARE_EMULATOR_HOST``, ``LOGGING_EMULATOR_HOST``) requests go to
that base URL with a plain session, no credentials. 429, 5xx and connection
errors are retried with exponential backoff and full jitter within the
caller's budget (and at most ``max_attempts`` times when given); other 4xx are
not retried.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from handlers.retry import Backoff, Deadline

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
REQUEST_TIMEOUT = 60.0


class ApiError(Exception):
    """An error answer from the API (Google JSON error body), or no answer at all (code 0)."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(f"{code} {status}: {message}")
        self.code = code
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code == 429 or self.code >= 500 or self.code == 0


def open_session(emulator_variable: str, api_root: str) -> tuple[Any, str]:
    """(session, base URL): a plain session on the emulator when ``emulator_variable`` is set, else ADC."""
    emulator = os.environ.get(emulator_variable)
    if emulator:
        import requests

        return environment_read_once(requests.Session()), emulator.rstrip("/")
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=[SCOPE])
    return environment_read_once(AuthorizedSession(credentials)), api_root


def environment_read_once(session: Any) -> Any:
    """``session``, made to read the environment once instead of before every call, where that changes no call.

    A requests session that trusts the environment reads the proxy variables, the CA bundle
    variables and ``~/.netrc`` again for every call: 0.16 ms of client CPU on a Cloud Storage
    call that costs 0.60 ms without them (bench/bench_client_calls.py). With no proxy
    variable set, the CA bundle variable is read here, once (``REQUESTS_CA_BUNDLE``, else
    ``CURL_CA_BUNDLE``, as requests would), and the per-call reads stop. With a proxy variable
    set, the session keeps reading the environment (``NO_PROXY`` depends on each URL).
    ``~/.netrc`` is then not read at all: an entry for a Google host there would have replaced
    the OAuth header with its basic auth.
    """
    import urllib.request

    if urllib.request.getproxies():
        return session
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False
    return session


def send(session: Any, method: str, url: str, deadline: Deadline, body: Mapping[str, Any] | None = None,
         headers: Mapping[str, str] | None = None, max_attempts: int | None = None) -> Any:
    """The response of ``method url``; retries what can succeed later; raises :class:`ApiError`."""
    import requests

    backoff = Backoff()
    attempts = 0
    extra = {"headers": dict(headers)} if headers else {}
    while True:
        attempts += 1
        try:
            response = session.request(method, url, json=body, timeout=min(REQUEST_TIMEOUT, max(1.0, deadline.remaining())),
                                       **extra)
        except requests.RequestException as exc:
            failure = ApiError(0, "UNAVAILABLE", f"no answer from {url.split('/v', 1)[0]}: {exc.__class__.__name__}")
        else:
            if response.status_code < 400:
                return response
            failure = api_error(response)
        if not failure.retryable or (max_attempts is not None and attempts >= max_attempts) or not backoff.sleep(deadline):
            raise failure


def api_error(response: Any) -> ApiError:
    """The Google JSON error body of a non-2xx response as an :class:`ApiError`."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return ApiError(
        int(error.get("code") or response.status_code),
        str(error.get("status") or response.reason or "UNKNOWN"),
        str(error.get("message") or response.text[:200] or "no message"),
    )
