"""The failure policies over the real Cloud Storage client, against a stand-in answering as the JSON API.

tests/unit/gcs_stand_in.py: preconditions, 404s and 403s the way Cloud Storage
words them, so what reaches ``action.error`` is what production would show.
"""

import json
from typing import Iterator

import pytest

from handlers.clients.storage import GcsStateStore, storage_client
from handlers.config import FailurePolicy
from handlers.failures import policies
from handlers.failures.model import Failure
from handlers.privacy import NamePolicy
from tests.unit.gcs_stand_in import GcsStandIn, gcs_stand_in

NAME = "incoming/DOE_JOHN_1960/img 1.dcm"
COPY = FailurePolicy("quarantine", "quar-bkt", "failed/")
MOVE = FailurePolicy("quarantine", "quar-bkt", "failed/", move=True)


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
    assert action["error"].startswith("Forbidden 403: svc@p.iam.gserviceaccount.com does not have storage.objects.")
    assert action["error"].endswith("-bkt/[object name].")
    shown = json.dumps(failed.with_action(action).shown(NamePolicy("hashed")))
    for spelling in ("DOE_JOHN_1960", "img 1", "img%201", "img+1"):
        assert spelling not in shown, spelling
