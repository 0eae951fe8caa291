"""The local stack: Google Cloud stand-ins on 127.0.0.1 for the demo, the tests and the benchmarks.

* :mod:`localstack.services` starts one daemon (Pub/Sub emulator, fake-gcs-server,
  Healthcare emulator, a function under functions-framework, the bridge);
* :mod:`localstack.stack` composes them (``Stack(workdir).start()``);
* :mod:`localstack.bridge` is the Eventarc / Pub/Sub push stand-in;
* ``python -m localstack up|down|status|env`` is the command line (``make up``).

Nothing heavy is imported here: ``python -m localstack down`` needs only the stdlib.
"""
