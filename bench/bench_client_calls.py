"""Client CPU per Cloud Storage call: the function's session as built, and as requests builds it by default.

Times ``GcsStateStore.read`` of an absent object (the protocol's most frequent
call: an open batch's seal) through ``storage_client()``, against a minimal
Cloud Storage stand-in in another process (so only the client's CPU is
counted), in rounds that alternate two sessions:

* as built: reads the environment once (``environment_read_once`` in
  handlers/clients/rest.py; with a proxy variable set it cannot, and the
  script says so);
* per call: ``trust_env`` back on, requests' default: proxy variables, CA
  bundle variables and ``~/.netrc`` read again for every call.

Prints the median client CPU per call of each, over ``--rounds`` rounds of
``--calls`` calls. Process CPU time, not wall time: other work on the machine
moves it less, but run it on a quiet machine anyway.

    .venv/bin/python bench/bench_client_calls.py [--rounds 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localstack.ports import free_ports, port_is_open  # noqa: E402

STAND_IN = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = b'{"error": {"code": 404, "message": "No such object"}}'
class NotFound(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 404 Not Found\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s"
                         % (len(BODY), BODY))
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), NotFound).serve_forever()
"""


def cpu_ms_per_call(store, calls: int) -> float:
    started = time.process_time()
    for number in range(calls):
        store.read(f"seals/rule/batch-{number}.json")
    return 1000 * (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    if urllib.request.getproxies():
        raise SystemExit("a proxy variable is set: the session reads the environment per call either way; unset it")
    (port,) = free_ports(1)
    server = subprocess.Popen([sys.executable, "-c", STAND_IN, str(port)])
    try:
        while not port_is_open(port):
            time.sleep(0.05)
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        from handlers.clients.storage import GcsStateStore, storage_client

        stores = {}
        for mode, trust_env in (("as built (environment read once)", None), ("per call (requests' default)", True)):
            client = storage_client("bench")
            if trust_env is not None:
                client._http.trust_env = trust_env
            stores[mode] = GcsStateStore("state-bkt", client)
            cpu_ms_per_call(stores[mode], 100)  # connections open, code warm
        samples: dict[str, list[float]] = {mode: [] for mode in stores}
        for _ in range(args.rounds):
            for mode, store in stores.items():
                samples[mode].append(cpu_ms_per_call(store, args.calls))
    finally:
        server.kill()
    print(f"client CPU per Cloud Storage read of an absent object, median of {args.rounds} rounds of {args.calls} calls")
    for mode, values in samples.items():
        print(f"  {mode:34s} {statistics.median(values):.3f} ms  (rounds {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
