"""What each Cloud Function entry point does, with one policy for outcomes:

* the work is done, or can never be done (bad event, unwatched bucket): return,
  so the delivery is acknowledged, with a log line giving the reason;
* the work can succeed later (quota, a batch being sealed, a broken config
  that a redeploy will fix): answer 503 so the event is redelivered with backoff;
* the request is no CloudEvent at all (functions-framework cannot parse it): 400,
  with a log line (:func:`unreadable_request`).
Nothing reaches the caller as a stack trace.
"""

from __future__ import annotations

import functools
import json
import time
import traceback
from typing import Any, Callable

from handlers import events, log, settings
from handlers.batch import followups
from handlers.events import UnusableEvent
from handlers.privacy import described, error_text
from handlers.retry import Deadline, RetryLater, transient

# handlers.runtime (config, clients, batching, exports) is imported by the first
# event, not at cold start: importing main.py stays cheap.

ADMIT_BUDGET_SECONDS = 60.0
DEFAULT_FOLLOWUP_BUDGET_SECONDS = 240.0


def _respond_503(reason: str) -> None:
    from flask import abort

    abort(503, description=reason)


def guarded(entry: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Apply the outcome policy above to an entry point."""

    def decorate(handler: Callable[[Any], None]) -> Callable[[Any], None]:
        @functools.wraps(handler)
        def run(event: Any) -> None:
            event_id = _event_field(event, "id")
            try:
                handler(event)
            except UnusableEvent as exc:
                log.warning("event acknowledged without action", entry=entry, reason=str(exc), eventId=event_id,
                            eventType=_event_field(event, "type"))
            except RetryLater as exc:
                log.warning("event will be retried", entry=entry, reason=str(exc), eventId=event_id)
                _respond_503(str(exc))
            except Exception as exc:  # noqa: BLE001 - the policy: log, then retry
                from handlers.config import ConfigError

                if isinstance(exc, ConfigError):
                    log.error("config is invalid: events are retried until it is fixed", entry=entry,
                              problems=exc.problems, eventId=event_id)
                    _respond_503("invalid config")
                error = _error_text(exc, event)
                if transient(exc):
                    log.warning("a Google service did not answer: event will be retried", entry=entry,
                                eventId=event_id, error=error[:500])
                    _respond_503("service unavailable")
                log.error("unexpected error: event will be retried", entry=entry, eventId=event_id,
                          error=error, stack_trace=_stack_trace(exc, error))
                _respond_503("unexpected error")

        return run

    return decorate


def _stack_trace(exc: BaseException, error: str) -> str:
    """Where ``exc`` was raised, ending with ``error`` (its text without names) instead of the raw message."""
    return "Traceback (most recent call last):\n" + "".join(traceback.format_tb(exc.__traceback__)) + error


def _error_text(exc: BaseException, event: Any) -> str:
    """What the log says of ``exc``.

    With names shown plain: its text without the event's object name. Otherwise,
    and while no config is loaded: only what can name no object (class, HTTP code,
    error reason; :func:`handlers.privacy.described`), since a follow-up or a
    reconcile tick announces none of the names its calls used.
    """
    from handlers import runtime

    loaded = runtime.loaded()
    if loaded is not None and not loaded.config.names.hashed:
        return error_text(exc, _object_names(event))
    return described(exc)


def _object_names(event: Any) -> list[str]:
    """The Cloud Storage object an event announces, if any: error texts must not carry its name."""
    try:
        return [events.storage_object(event).name]
    except Exception:  # noqa: BLE001 - any other event names no object
        return []


def unreadable_request(error: Exception) -> Any:
    """Flask error handler (registered by main.py) for requests that are no CloudEvent.

    The entry points let nothing but HTTP errors out (:func:`guarded`), so any other
    exception reaching Flask was raised by functions-framework while it parsed the
    body (invalid UTF-8, a JSON list or string, deep nesting...); left alone, Flask
    answers 500 and logs a traceback. Answer 400 instead, as the framework does for
    the malformed bodies it recognises, with one log line. HTTP errors (our 503s,
    the framework's 400 and 415) pass through unchanged.
    """
    from werkzeug.exceptions import HTTPException

    if isinstance(error, HTTPException):
        return error
    log.warning("request refused: the body is not a CloudEvent", status=400,
                error=f"{error.__class__.__name__}: {error}"[:300])
    return "request body is not a CloudEvent\n", 400


def _event_field(event: Any, key: str) -> str | None:
    try:
        return event[key]
    except (KeyError, TypeError):
        return None


@guarded("on_object_finalized")
def object_finalized(event: Any) -> None:
    from handlers import runtime

    obj = events.storage_object(event)
    instance = runtime.get()
    route = instance.config.route(obj.bucket, obj.name)
    names = instance.config.names
    if route.rule is None:
        log.info("object not imported", reason=route.reason, object=names.uri(obj.bucket, obj.name),
                 generation=obj.generation)
        return
    started = time.monotonic()
    verdict = instance.intake.admit(obj, route.rule, Deadline(ADMIT_BUDGET_SECONDS))
    log.info("object admitted", verdict=verdict, rule=route.rule.name, object=names.uri(obj.bucket, obj.name),
             generation=obj.generation, eventId=obj.event_id, seconds=round(time.monotonic() - started, 3))


@guarded("on_followup")
def followup(event: Any) -> None:
    from handlers import runtime

    work = followups.parse(events.pubsub_message(event))
    instance = runtime.get()
    budget = max(_followup_budget(), instance.config.batching.max_wait_seconds + 30)
    instance.driver.drive(work.body["rule"], work.body["batch"], Deadline(budget))


def _followup_budget() -> float:
    return settings.seconds("FOLLOWUP_BUDGET_SECONDS", DEFAULT_FOLLOWUP_BUDGET_SECONDS, minimum=1.0)


@guarded("on_reconcile")
def reconcile(event: Any) -> None:
    """A Cloud Scheduler tick (Pub/Sub): sweep for objects no event announced, or resume the unfinished sweep."""
    from handlers import runtime
    from handlers.reconcile.progress import SweepBusy

    events.pubsub_message(event)  # any body: the schedule carries no parameters
    instance = runtime.get()
    try:
        result = instance.reconciler.run(Deadline(_followup_budget()))
    except SweepBusy as exc:
        log.info("reconcile skipped: another sweep is running", reason=str(exc))
        return
    log.info("reconcile finished", sweep=result["sweep"], outcome=result["outcome"],
             admitted=result["totals"]["admitted"])


@guarded("on_export_request")
def export_request(event: Any) -> None:
    from handlers import config as config_module
    from handlers import runtime
    from handlers.exports import request as export_requests
    from handlers.exports.job import RequestIdConflict

    message = events.pubsub_message(event)
    instance = runtime.get()
    try:
        body = json.loads(message.data or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
        body = None
    deadline = Deadline(_followup_budget())
    try:
        request = export_requests.request_from_message(body, instance.config.stores, message.message_id,
                                                       config_module.shown_path(instance.config.path))
        result = instance.exports.run(request, deadline)
    except export_requests.ExportRequestError as exc:
        fields = body if isinstance(body, dict) else {}
        request_id = fields.get("requestId")
        if not (isinstance(request_id, str) and export_requests.REQUEST_ID_RE.fullmatch(request_id)):
            request_id = message.message_id
        log.warning("export request refused", reason=str(exc), rule=exc.rule, requestId=request_id)
        conflict = exc.tag if isinstance(exc, RequestIdConflict) else None
        refused = export_requests.RefusedMessage(message.data or b"", instance.config.stores)
        instance.exports.reject(request_id, _text(fields.get("store")), _text(fields.get("destination")), str(exc),
                                deadline, exc.rule, conflict, refused)
        return
    log.info("export finished", requestId=request.request_id, outcome=result["outcome"],
             operation=result["operation"], success=result["counter"]["success"],
             failure=result["counter"]["failure"])


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
