"""The receiver's supported presentation contexts, copied cheaply for each association.

pynetdicom gives every association its own ``deepcopy`` of the server's supported
contexts. The gateway supports every storage SOP class in every transfer syntax
(about 7,000 UIDs), and deep-copying a pydicom ``UID`` builds and validates a new
one: tens of milliseconds of CPU per association before its first PDU is read,
which a modality opening one association per instance pays per instance
(``bench/bench_gateway.py``, association row). A UID is an immutable string, so
the copy here shares them and copies what negotiation could change (each
context object and its list of transfer syntaxes), as pynetdicom's copy isolates.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.presentation import PresentationContext

__all__ = ["SharedUidContexts"]


class SharedUidContexts(list):
    """A list of supported contexts whose deep copy is a new context per entry, sharing the immutable UIDs."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return [_context_copy(context) for context in self]


def _context_copy(context: PresentationContext) -> PresentationContext:
    duplicate = PresentationContext.__new__(PresentationContext)
    duplicate.__dict__.update(context.__dict__)  # the same attributes: the UIDs, ids, roles and result
    duplicate._transfer_syntax = list(context._transfer_syntax)
    return duplicate
