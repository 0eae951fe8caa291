"""The published schemas accept what we publish and refuse what subscribers must not receive."""

import jsonschema
import pytest

from handlers.privacy import NamePolicy
from handlers.batch.results import import_message
from tests.message_schemas import validate

RECORD = {"batch": "20261125T100000Z-0a1b2c3d", "rule": "all-dicom",
          "store": "projects/p/locations/l/datasets/d/dicomStores/s", "openedAt": 1.0, "sealedAt": 11.0,
          "importUri": "gs://state-bkt/staging/all-dicom/20261125T100000Z-0a1b2c3d/*",
          "members": [{"id": "a" * 32, "bucket": "inbox-bkt", "name": "x.dcm", "generation": "7"}]}


def message(**changes):
    data, attributes = import_message(RECORD, outcome="REJECTED", names=NamePolicy(), manifest_uri="gs://state-bkt/m.json",
                                      error={"code": 403, "status": "PERMISSION_DENIED", "message": "no"},
                                      hint="grant", concluded_at=12.0)
    data.update(changes)
    return data, attributes


def test_rejected_import_message_is_valid():
    data, attributes = message()
    validate(data, attributes)
    assert data["counter"] == {"success": 0, "failure": 1}


@pytest.mark.parametrize("changes", [
    {"counter": {"success": "1", "failure": 0}},
    {"outcome": "OK"},
    {"objects": [{"uri": "gs://b/x", "generation": 7}]},
    {"extra": True},
])
def test_schema_refuses_malformed_messages(changes):
    data, _ = message(**changes)
    with pytest.raises(jsonschema.ValidationError):
        validate(data)


def test_attributes_must_agree_with_the_message():
    data, attributes = message()
    with pytest.raises(AssertionError):
        validate(data, {**attributes, "failureCount": "0"})
