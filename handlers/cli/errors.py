"""Errors the CLI reports as one line: what went wrong, and the fix. Never a traceback."""

from __future__ import annotations

import os
import select
from typing import IO

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # stdout's reader went away (| head): as a shell tool SIGPIPE ended (128 + 13)


class CliError(Exception):
    """A failure the operator can fix; ``str(exc)`` names the thing and the fix."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def stdout_closed(stream: IO[str]) -> bool:
    """Whether ``stream`` is a pipe whose reader has gone (``| head`` done): poll reports an error on its write end."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # a test's capture, a closed stream
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def closed_stdout_exit(stream: IO[str]) -> int | None:
    """:data:`EXIT_CLOSED_PIPE` once ``stream``, whose reader has gone, is silenced; None if its reader is there.

    Silenced (pointed at /dev/null) so that the interpreter's last flush of what is still buffered does not
    fail again: the command stops quietly, as a shell tool does.
    """
    if not stdout_closed(stream):
        return None
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return EXIT_CLOSED_PIPE


def describe(exc: BaseException) -> str:
    """One line for an exception raised by the shared code or the Google libraries."""
    import requests
    from google.api_core import exceptions as google_exceptions
    from google.auth import exceptions as auth_exceptions

    from handlers.clients.healthcare import ApiError
    from handlers.exports.request import ExportRequestError
    from handlers.wildcard import WildcardError

    if isinstance(exc, (WildcardError, ExportRequestError)):
        return str(exc)
    if isinstance(exc, ApiError):
        hint = {403: ": check the account's roles on the store (deploy.sh's custom role dicomImportStore, "
                     "or roles/healthcare.dicomEditor)",
                404: ": check the store name"}.get(exc.code, "")
        return f"the Cloud Healthcare API answered {exc}{hint}"
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return ("no Google credentials: run `gcloud auth application-default login`, "
                "or add --local to use the local stack")
    if isinstance(exc, google_exceptions.Forbidden):
        return f"permission denied: {exc.message}: grant the account the role it needs, or use another account"
    if isinstance(exc, google_exceptions.GoogleAPICallError):
        return f"Google Cloud answered {exc.code}: {exc.message}"
    if isinstance(exc, (requests.ConnectionError, google_exceptions.RetryError)):
        return f"cannot reach Google Cloud ({exc.__class__.__name__}): check the network, or add --local"
    return f"unexpected error: {exc.__class__.__name__}: {exc}"
