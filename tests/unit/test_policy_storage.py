"""The failure policies over the real Cloud Storage client, against a stand-in answering as the JSON API.

tests/unit/gcs_stand_in.py: preconditions, 404s and 403s the way Cloud Storage
words them, so what reaches ``action.error`` is what production would show.
"""

import json
from typing import Iterator

import pytest

from handlers.clients.storage import BucketMissing, Conflict, GcsStateStore, storage_client
from handlers.config import FailurePolicy
from handlers.failures import policies
from handlers.failures.model import Failure
from handlers.privacy import NamePolicy
from tests.unit.gcs_stand_in import GcsStandIn, gcs_stand_in

NAME = "incoming/DOE_JOHN_1960/img 1.dcm"
COPY = FailurePolicy("quarantine", "quar-bkt", "failed/")
MOVE = FailurePolicy("quarantine", "quar-bkt", "failed/", move=True)
CALLS = {("tag", False): "metadata update", ("quarantine", False): "quarantine copy",
         ("quarantine", True): "quarantine copy"}


@pytest.fixture
def gcs() -> Iterator[tuple[GcsStandIn, GcsStateStore]]:
    with gcs_stand_in("inbox-bkt", "quar-bkt", "state-bkt") as (stand_in, url):
        yield stand_in, GcsStateStore("state-bkt", storage_client(endpoint=url))


def failure(generation: str) -> Failure:
    return Failure("id1", "inbox-bkt", NAME, generation, "not-dicom", 3, "not a DICOM file", "logging")


@pytest.mark.parametrize("policy", [FailurePolicy("tag"), COPY, MOVE], ids=["tag", "copy", "move"])
def test_a_refusal_says_why_but_names_the_object_nowhere_when_names_are_hashed(gcs, policy):
    stand_in, store = gcs
    failed = failure(stand_in.add("inbox-bkt", NAME))
    stand_in.deny = True
    action = policies.apply(store, policy, failed, "B1")
    assert action["done"] is False
    assert action["error"].startswith(f"Cloud Storage {CALLS[policy.action, policy.move]} failed: Forbidden 403: "
                                      "svc@p.iam.gserviceaccount.com does not have storage.objects.")
    assert action["error"].endswith("-bkt/[object name].")
    shown = json.dumps(failed.with_action(action).shown(NamePolicy("hashed")))
    for spelling in ("DOE_JOHN_1960", "img 1", "img%201", "img+1"):
        assert spelling not in shown, spelling


def test_a_copy_never_replaces_an_object(gcs):
    stand_in, store = gcs
    generation = stand_in.add("inbox-bkt", NAME, b"new")
    stand_in.add("quar-bkt", "failed/x.dcm", b"kept")
    with pytest.raises(Conflict):
        store.copy_source("inbox-bkt", NAME, generation, "quar-bkt", "failed/x.dcm", {})
    assert stand_in.objects[("quar-bkt", "failed/x.dcm")].data == b"kept"
    assert "ifGenerationMatch=0" in stand_in.requests[-1]


def test_a_missing_quarantine_bucket_is_reported_as_such_and_the_failed_file_stays(gcs):
    stand_in, store = gcs
    generation = stand_in.add("inbox-bkt", NAME)
    with pytest.raises(BucketMissing):
        store.copy_source("inbox-bkt", NAME, generation, "quar-bkt-typo", "failed/x.dcm", {})
    action = policies.apply(store, FailurePolicy("quarantine", "quar-bkt-typo", "failed/", move=True),
                            failure(generation), "B1")
    assert action == {"policy": "quarantine", "to": f"gs://quar-bkt-typo/failed/{NAME}", "done": False,
                      "error": "the quarantine bucket gs://quar-bkt-typo does not exist: create it, or correct "
                               "the rule's on_failure quarantine URI in the config"}
    assert ("inbox-bkt", NAME) in stand_in.objects, "nothing deleted"


def test_a_generation_gone_before_the_copy_is_still_reported_gone(gcs):
    stand_in, store = gcs
    stale = stand_in.add("inbox-bkt", NAME)
    stand_in.add("inbox-bkt", NAME, b"a newer file under the same name")
    action = policies.apply(store, MOVE, failure(stale), "B1")
    assert action["done"] is False and action["error"] == policies.GONE
    assert stand_in.objects[("inbox-bkt", NAME)].data == b"a newer file under the same name", "never touched"


def test_a_name_that_fails_again_gets_a_copy_of_its_own_and_the_first_copy_survives(gcs):
    stand_in, store = gcs
    first = stand_in.add("inbox-bkt", NAME, b"first")
    assert policies.apply(store, MOVE, failure(first), "B1")["moved"]
    second = stand_in.add("inbox-bkt", NAME, b"second")  # the modality sends the same name again; it fails again
    action = policies.apply(store, MOVE, failure(second), "B2")
    second_copy = f"failed/incoming/DOE_JOHN_1960/img 1.g{second}.dcm"
    assert action == {"policy": "quarantine", "to": f"gs://quar-bkt/{second_copy}", "moved": True, "done": True}
    copies = {name: (stored.data, stored.metadata["dicom-import-source"])
              for (bucket, name), stored in stand_in.objects.items() if bucket == "quar-bkt"}
    assert copies == {f"failed/{NAME}": (b"first", f"gs://inbox-bkt/{NAME}#{first}"),
                      second_copy: (b"second", f"gs://inbox-bkt/{NAME}#{second}")}
    assert ("inbox-bkt", NAME) not in stand_in.objects
    assert policies.apply(store, MOVE, failure(second), "B2") == action, "a redelivery after the move: same action"
    assert len(copies) == len([key for key in stand_in.objects if key[0] == "quar-bkt"]), "and no other copy"


def test_a_quarantine_bucket_granted_create_but_not_delete_still_tells_taken_names_apart(gcs):
    """deploy.sh grants roles/storage.objectCreator there: a taken name may be answered 403, not 412."""
    stand_in, store = gcs
    stand_in.no_delete = {"quar-bkt"}
    first = stand_in.add("inbox-bkt", NAME, b"first")
    done = {"policy": "quarantine", "to": f"gs://quar-bkt/failed/{NAME}", "done": True}
    assert policies.apply(store, COPY, failure(first), "B1") == done
    assert policies.apply(store, COPY, failure(first), "B1") == done, "a redelivery finds its own copy"
    second = stand_in.add("inbox-bkt", NAME, b"second")
    assert policies.apply(store, COPY, failure(second), "B2") == {
        "policy": "quarantine", "to": f"gs://quar-bkt/failed/incoming/DOE_JOHN_1960/img 1.g{second}.dcm", "done": True}
    assert stand_in.objects[("quar-bkt", f"failed/{NAME}")].data == b"first"
