"""The ``dicom-reconcile-result/v1`` message: one per sweep (schemas/dicom-reconcile-result.v1.json).

``outcome`` is ``SUCCEEDED`` when every matched object in the window was
already covered, ``RECOVERED`` when the sweep admitted objects no event had
announced (their events were lost: worth an alert; the objects are reported by
their batches' own results). Object names follow ``results.object_names``.
``checkpoint`` is there only when the sweep did not move the checkpoint as
usual: kept (the window does not join it), or moved past an ``unswept`` span
(the window's cap, MAX_RECONCILE_WINDOW_HOURS).
"""

from __future__ import annotations

from typing import Any, Mapping

from handlers.batch.results import rfc3339
from handlers.config import MAX_RECONCILE_WINDOW_HOURS
from handlers.privacy import NamePolicy
from handlers.reconcile.progress import COUNTERS

SCHEMA = "dicom-reconcile-result/v1"
SUCCEEDED, RECOVERED = "SUCCEEDED", "RECOVERED"
MAX_LISTED_OBJECTS = 100
CHECKPOINT_KEPT = ("the window starts after the checkpoint minus the overlap, so the checkpoint stays where it is "
                   "and the next scheduled sweep starts there (run reconcile without --since to sweep from it now)")
UNSWEPT_ADVICE = (f"the window never looks back further than {MAX_RECONCILE_WINDOW_HOURS // 24} days (claims are "
                  "deleted after 30, so an object imported then would be imported again); if events may have been "
                  "lost in this span, import the prefixes its objects were written under with "
                  "`python -m handlers backfill gs://BUCKET/PREFIX` (the API ignores an instance already stored)")


def reconcile_message(sweep: Mapping[str, Any], names: NamePolicy, finished_at: float,
                      checkpoint_moved: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The message and its attributes for a finished sweep document (``checkpoint_moved``: by this sweep)."""
    rules = []
    for rule, state in sweep["rules"].items():
        rules.append({"rule": rule, "source": f"gs://{state['bucket']}/{state['prefix']}",
                      **{name: state[name] for name in COUNTERS}, "batches": list(state["batches"])})
    totals = {name: sum(rule[name] for rule in rules) for name in COUNTERS}
    admitted = sweep["admitted"]
    listed = None
    if totals["admitted"] <= MAX_LISTED_OBJECTS:
        listed = [{"uri": names.uri(entry["bucket"], entry["name"]), "generation": entry["generation"],
                   "rule": entry["rule"], "batch": entry["batch"]} for entry in admitted]
    outcome = RECOVERED if totals["admitted"] else SUCCEEDED
    message = {
        "schema": SCHEMA,
        "outcome": outcome,
        "sweep": sweep["sweep"],
        "window": {"from": rfc3339(sweep["window"]["from"]), "to": rfc3339(sweep["window"]["to"])},
        "since": sweep.get("since"),
        "rules": rules,
        "totals": totals,
        "admitted": listed,
        "objectNames": names.mode,
        "resumed": sweep["resumed"],
        "timings": {"startedAt": rfc3339(sweep["startedAt"]), "concludedAt": rfc3339(finished_at),
                    "totalSeconds": round(max(0.0, finished_at - sweep["startedAt"]), 3)},
    }
    checkpoint = checkpoint_note(sweep, checkpoint_moved)
    if checkpoint is not None:
        message["checkpoint"] = checkpoint
    attributes = {"schema": SCHEMA, "outcome": outcome, "sweep": sweep["sweep"],
                  "admittedCount": str(totals["admitted"])}
    return message, attributes


def checkpoint_note(sweep: Mapping[str, Any], moved: bool) -> dict[str, Any] | None:
    """The message's ``checkpoint``: None when the sweep moved it to its window's end as usual."""
    if not moved:
        return {"moved": False}
    unswept = sweep.get("unswept")
    if unswept is None:
        return None
    return {"moved": True, "unswept": {"from": rfc3339(unswept["from"]), "to": rfc3339(unswept["to"])}}
