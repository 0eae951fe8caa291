"""One failed file of a batch, as the batch record keeps it and as messages and manifests show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from handlers.privacy import NamePolicy

LOGGING, VERIFIED = "logging", "verified"
SOURCES = (LOGGING, VERIFIED)
# Not in results: a member of a batch that failed as a whole, as the failures and retry tools see it.
WHOLE_BATCH = "batch"


@dataclass(frozen=True)
class Failure:
    """A member of a batch (``id``: its object id) that the import did not store, and why."""

    id: str
    bucket: str
    name: str
    generation: str
    kind: str
    code: int | None
    message: str
    source: str
    """``logging`` (a Cloud Logging entry named it) or ``verified`` (found by reading the object and the store);
    ``batch`` for a member of a batch that failed as a whole (handlers.failures.history)."""
    action: Mapping[str, Any] | None = field(default=None)
    """What the rule's policy did with it (tag, quarantine, replace), once done."""

    @classmethod
    def of_member(cls, member: Mapping[str, Any], kind: str, code: int | None, message: str, source: str) -> "Failure":
        return cls(member["id"], member["bucket"], member["name"], member["generation"], kind, code, message, source)

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> "Failure":
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def to_record(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items()}

    def with_action(self, action: Mapping[str, Any]) -> "Failure":
        return replace(self, action=dict(action))

    def shown(self, names: NamePolicy) -> dict[str, Any]:
        """The failure in a result message or manifest: every name through the name policy."""
        out: dict[str, Any] = {
            "uri": names.uri(self.bucket, self.name),
            "generation": self.generation,
            "kind": self.kind,
            "error": {"code": self.code, "message": self.message},
            "source": self.source,
        }
        if self.action:
            out["action"] = {key: (names.uri(*_split(value)) if key == "to" and isinstance(value, str) else value)
                             for key, value in self.action.items()}
        return out


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    return bucket, name
