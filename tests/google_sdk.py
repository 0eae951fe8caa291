"""The installed Google Cloud SDK as a judge of our JSON: its generated API message classes.

gcloud converts a dashboard, alert policy or log-based metric file into the API's
message class (apitools, generated from Google's discovery documents) before it
sends anything; a field or enum value the API does not define is kept aside as
"unrecognized". :func:`unrecognized_fields` does that conversion for our files
and reports every such field, so a misspelt key or value fails a test offline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

MONITORING_V1 = "googlecloudsdk.generated_clients.apis.monitoring.v1.monitoring_v1_messages"
MONITORING_V3 = "googlecloudsdk.generated_clients.apis.monitoring.v3.monitoring_v3_messages"
LOGGING_V2 = "googlecloudsdk.generated_clients.apis.logging.v2.logging_v2_messages"
BIGQUERY_V2 = "googlecloudsdk.generated_clients.apis.bigquery.v2.bigquery_v2_messages"

_CONVERT = r"""
import importlib, json, sys
from apitools.base.py import encoding
from apitools.base.protorpclite import messages

def walk(message, path, found):
    found.extend(f"{path}.{name}" for name in message.all_unrecognized_fields())
    for field in message.all_fields():
        value = message.get_assigned_value(field.name)
        if value is None:
            continue
        for index, item in enumerate(value if field.repeated else [value]):
            if isinstance(item, messages.Message):
                walk(item, f"{path}.{field.name}" + (f"[{index}]" if field.repeated else ""), found)

for line in sys.stdin:
    request = json.loads(line)
    message_class = getattr(importlib.import_module(request["module"]), request["message"])
    found = []
    try:
        walk(encoding.PyValueToMessage(message_class, request["document"]), request["message"], found)
    except Exception as error:
        found.append(f"{type(error).__name__}: {error}")
    print(json.dumps(found), flush=True)
"""


#: Why a test that needs the SDK fails (never skips: CI has it, and so must every machine running the stack).
NOT_INSTALLED = "the Google Cloud SDK (gcloud) is not installed: install it (it ships the Pub/Sub emulator the local stack runs)"


def sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    return Path(os.path.realpath(gcloud)).parent.parent if gcloud else None


def sdk_python(sdk: Path) -> str:
    bundled = sdk / "platform" / "bundledpythonunix" / "bin" / "python3"
    return str(bundled) if bundled.exists() else sys.executable


def unrecognized_fields(documents: list[tuple[str, str, Any]]) -> list[list[str]]:
    """For each (module, message class, JSON document): the paths the API's message class does not define."""
    sdk = sdk_root()
    assert sdk is not None, NOT_INSTALLED
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
           "PYTHONPATH": f"{sdk / 'lib' / 'third_party'}{os.pathsep}{sdk / 'lib'}"}
    stdin = "".join(json.dumps({"module": module, "message": message, "document": document}) + "\n"
                    for module, message, document in documents)
    proc = subprocess.run([sdk_python(sdk), "-c", _CONVERT], input=stdin, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]
