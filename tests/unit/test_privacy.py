"""Error texts that leave the function never carry an object name (handlers/privacy.py)."""

import pytest
import requests
from google.api_core import exceptions as google_errors

from handlers.privacy import NAME_REMOVED, NameFree, described, error_text, without_names

NAME = "incoming/DOE_JOHN 1960/Müller+1.dcm"


@pytest.mark.parametrize("spelled", [
    NAME,
    "incoming%2FDOE_JOHN%201960%2FM%C3%BCller%2B1.dcm",  # google-cloud-storage's path quoting
    "incoming%2fDOE_JOHN%201960%2fM%c3%bcller%2b1.dcm",  # lower-case escapes
    "incoming/DOE_JOHN+1960/M%C3%BCller%2B1.dcm",  # a query string's + for the space, / kept
])
def test_every_spelling_of_a_name_is_removed(spelled):
    assert without_names(f"POST https://h/b/inbox/o/{spelled}/rewriteTo: refused", [NAME]) == (
        f"POST https://h/b/inbox/o/{NAME_REMOVED}/rewriteTo: refused")


def test_the_longest_name_goes_first_so_no_part_of_it_is_left():
    text = "copy to quar/failed/incoming/x.dcm of inbox/incoming/x.dcm"
    assert without_names(text, ["incoming/x.dcm", "failed/incoming/x.dcm"]) == (
        f"copy to quar/{NAME_REMOVED} of inbox/{NAME_REMOVED}")


def test_a_google_api_error_keeps_class_code_and_server_message_but_not_the_request_url():
    url = "https://storage.googleapis.com/storage/v1/b/inbox/o/incoming%2FDOE_JOHN%201960%2FM%C3%BCller%2B1.dcm"
    server = f"svc@p.iam.gserviceaccount.com does not have storage.objects.delete access to inbox/{NAME}."
    exc = google_errors.Forbidden(f"DELETE {url}: {server}", errors=[{"message": server, "reason": "forbidden"}])
    assert "DOE_JOHN" in str(exc), "what the text was before"
    assert error_text(exc, [NAME]) == (f"Forbidden 403: svc@p.iam.gserviceaccount.com does not have "
                                       f"storage.objects.delete access to inbox/{NAME_REMOVED}.")


def test_without_the_servers_errors_list_the_message_after_the_request_url_is_kept():
    exc = google_errors.NotFound("GET https://storage.googleapis.com/storage/v1/b/inbox/o/incoming%2FDOE%2Fx: No "
                                 "such object: inbox/incoming/DOE/x")
    assert error_text(exc, ["incoming/DOE/x"]) == f"NotFound 404: No such object: inbox/{NAME_REMOVED}"
    assert error_text(google_errors.NotFound("no request in this text"), []) == "NotFound 404: the server gave no reason"


def test_any_other_error_keeps_its_text_without_the_names():
    exc = ConnectionError("Max retries exceeded with url: /storage/v1/b/inbox/o/incoming%2FDOE_JOHN%201960%2FM"
                          "%C3%BCller%2B1.dcm")
    assert error_text(exc, [NAME]) == f"ConnectionError: Max retries exceeded with url: /storage/v1/b/inbox/o/{NAME_REMOVED}"


def test_described_keeps_class_code_and_error_reason_only():
    server = f"svc@p.iam.gserviceaccount.com does not have storage.objects.get access to inbox/{NAME}."
    forbidden = google_errors.Forbidden(f"GET https://h/b/inbox/o/x: {server}", errors=[{"message": server,
                                                                                         "reason": "forbidden"}])
    assert described(forbidden) == "Forbidden 403 forbidden"
    not_a_word = google_errors.NotFound("x", errors=[{"reason": f"gone: {NAME}"}])
    assert described(not_a_word) == "NotFound 404 Not Found"


def test_described_unwraps_a_retry_error_and_drops_a_requests_errors_url():
    url = "/storage/v1/b/inbox/o?startOffset=incoming%2FDOE_JOHN+1960%2FM%C3%BCller%2B1.dcm"
    cause = requests.ConnectionError(f"HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries "
                                     f"exceeded with url: {url}")
    retried = google_errors.RetryError("Timeout of 120.0s exceeded", cause)
    assert described(retried) == "RetryError (last attempt: ConnectionError)"
    assert described(google_errors.RetryError("Timeout", google_errors.ServiceUnavailable("x"))) == (
        "RetryError (last attempt: ServiceUnavailable 503 Service Unavailable)")


def test_a_name_free_error_is_shown_as_it_is():
    error = NameFree("Cloud Storage copy failed: Forbidden 403: denied")
    assert described(error) == error_text(error, ["denied"]) == "Cloud Storage copy failed: Forbidden 403: denied"
