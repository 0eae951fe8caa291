"""Follow-up messages: the durable work items that drive batches and follow exports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from handlers.events import PubSubMessage, UnusableEvent

IMPORT_BATCH = "import-batch"
KINDS = (IMPORT_BATCH,)


@dataclass(frozen=True)
class FollowUp:
    kind: str
    body: dict[str, Any]


def batch_message(rule: str, batch: str) -> tuple[dict[str, str], dict[str, str]]:
    body = {"kind": IMPORT_BATCH, "rule": rule, "batch": batch}
    return body, dict(body)


def parse(message: PubSubMessage) -> FollowUp:
    """The follow-up a message carries; UnusableEvent when it is not one of ours."""
    try:
        body = json.loads(message.data or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnusableEvent("follow-up message data is not JSON") from None
    if not isinstance(body, dict) or body.get("kind") not in KINDS:
        raise UnusableEvent(f"follow-up message kind must be one of {', '.join(KINDS)}")
    if body["kind"] == IMPORT_BATCH and not (isinstance(body.get("rule"), str) and isinstance(body.get("batch"), str)):
        raise UnusableEvent("import-batch follow-up needs 'rule' and 'batch' strings")
    return FollowUp(body["kind"], body)
