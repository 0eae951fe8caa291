"""Gateway fixtures: a fresh bucket on the session's fake-gcs-server for each test."""

from __future__ import annotations

import uuid
from typing import Any

import pytest


@pytest.fixture
def bucket(storage_client: Any) -> str:
    """A new, empty bucket on ``fake_gcs``."""
    name = f"gw-{uuid.uuid4().hex[:12]}"
    storage_client.create_bucket(name)
    return name
