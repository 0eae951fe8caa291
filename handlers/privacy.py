"""What of an object's name may appear in logs and result messages.

Object names often carry patient data (names, accession numbers). With
``results.object_names: hashed`` every name that leaves the function as a log
field or message field becomes ``sha256:<hex>`` of ``gs://bucket/name``
(optionally keyed with ``results.hash_key`` so short names cannot be guessed).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

PLAIN = "plain"
HASHED = "hashed"
MODES = (PLAIN, HASHED)


@dataclass(frozen=True)
class NamePolicy:
    mode: str = PLAIN
    hash_key: str = ""

    @property
    def hashed(self) -> bool:
        return self.mode == HASHED

    def uri(self, bucket: str, name: str) -> str:
        """The object's ``gs://`` URI as the config allows it to be shown."""
        uri = f"gs://{bucket}/{name}"
        if not self.hashed:
            return uri
        if self.hash_key:
            digest = hmac.new(self.hash_key.encode(), uri.encode(), hashlib.sha256).hexdigest()
        else:
            digest = hashlib.sha256(uri.encode()).hexdigest()
        return f"sha256:{digest}"
