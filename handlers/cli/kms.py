"""Does a customer-managed key fit the buckets? (``check-config --kms-key``, the same rule as deploy.sh).

Cloud Storage encrypts a bucket only with a Cloud KMS key in the bucket's own
location: a bucket in ``EUROPE-WEST4`` needs a key in ``europe-west4``, a
``US`` multi-region bucket one in ``us``, a dual-region such as ``NAM4`` one in
``nam4``; the one name that differs is the ``EU`` multi-region, whose keys live
in the KMS location ``europe``. A ``global`` key never fits a bucket.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from handlers.cli.errors import EXIT_USAGE, CliError

KEY_RE = re.compile(r"projects/[^/]+/locations/(?P<location>[a-z0-9-]+)/keyRings/[^/]+/cryptoKeys/[^/]+")
_KMS_LOCATION_OF_BUCKET = {"eu": "europe"}


def key_location(key: str) -> str:
    """The location part of a full key name; CliError (usage) when it is not one."""
    match = KEY_RE.fullmatch(key)
    if match is None:
        raise CliError(f"--kms-key {key!r} is not a key name: use "
                       "projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY", EXIT_USAGE)
    return match.group("location")


def kms_location_for(bucket_location: str) -> str:
    """The Cloud KMS location whose keys may encrypt a bucket in ``bucket_location`` (as Cloud Storage reports it)."""
    location = bucket_location.lower()
    return _KMS_LOCATION_OF_BUCKET.get(location, location)


def problems(key: str, buckets: Iterable[str], locate: Callable[[str], str | None]) -> list[str]:
    """One line per bucket the key cannot encrypt; ``locate`` returns a bucket's location, or None if missing."""
    location = key_location(key)
    found = []
    for bucket in sorted(set(buckets)):
        bucket_location = locate(bucket)
        if bucket_location is None:
            found.append(f"gs://{bucket} does not exist or is not visible to this account: "
                         "create it, or check the config and the account")
        elif kms_location_for(bucket_location) != location:
            found.append(f"--kms-key is in {location}, gs://{bucket} in {bucket_location}: Cloud Storage encrypts "
                         f"a bucket only with a key in its own location: use a key in "
                         f"{kms_location_for(bucket_location)}")
    return found


def bucket_location(bucket: str) -> str | None:
    """The bucket's location as Cloud Storage reports it (emulator or Google), or None when it does not exist."""
    from handlers.clients.storage import storage_client

    found = storage_client().lookup_bucket(bucket)
    return None if found is None else found.location
