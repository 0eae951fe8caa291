# Every target first makes sure .venv exists with requirements-dev.txt installed
# (a fresh machine has only Python, Java 17 and the Pub/Sub emulator).
# Others add their targets below (demo, bench, chaos): depend on $(STAMP).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv up down status test demo bench bench-e2e

venv: $(STAMP)

$(STAMP): requirements.txt requirements-tools.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

# Start the local stack in the background; writes .local/stack.env.
up: $(STAMP)
	$(PY) -m localstack up

# Stop every process `make up` started.
down: $(STAMP)
	$(PY) -m localstack down

status: $(STAMP)
	$(PY) -m localstack status

test: $(STAMP) dcmtk orthanc
	$(PY) -m pytest -q

# DCMTK (storescu, echoscu, storescp) from Debian, for the gateway's interoperability tests and benchmark.
.PHONY: dcmtk
dcmtk:
	@command -v storescu >/dev/null && command -v echoscu >/dev/null && command -v storescp >/dev/null || \
	  apt-get install -y -q dcmtk || (apt-get update -q && apt-get install -y -q dcmtk)

# Orthanc from Debian, with its DICOMweb plugin: the modality (C-STORE, then storage commitment) of the gateway's
# interoperability tests, and a DICOMweb client of the emulator's. Its package does not start a service where
# there is no init system; the tests run their own on free ports.
.PHONY: orthanc
orthanc:
	@command -v Orthanc >/dev/null && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || \
	  apt-get install -y -q orthanc orthanc-dicomweb || (apt-get update -q && apt-get install -y -q orthanc orthanc-dicomweb)

# A realistic drop through the whole local stack, then the results table (starts and stops its own stack).
demo: $(STAMP)
	$(PY) -m localstack.demo

# The fault-injection suite at full scale (docs/chaos.md): hundreds of objects per scenario, more kills,
# longer Pub/Sub outages. `make test` runs the same scenarios short. One line per scenario at the end.
.PHONY: chaos
chaos: $(STAMP)
	CHAOS_SCALE=long $(PY) -m pytest -q -m chaos tests/chaos

# Benchmarks that take a minute: rule matching, cold start, cost model (bench/RESULTS.md has all four tables).
bench: $(STAMP)
	$(PY) bench/bench_matching.py
	$(PY) bench/bench_coldstart.py
	$(PY) bench/bench_cost.py
	$(PY) bench/bench_partial.py

# The DICOM gateway: a 500-instance study from storescu, acknowledged and landed, beside DCMTK's storescp (about 25 s).
.PHONY: bench-gateway
bench-gateway: $(STAMP) dcmtk
	$(PY) bench/bench_gateway.py

# The end-to-end benchmark: 10,000 objects against one import per object (about 20 minutes on 2 cores).
bench-e2e: $(STAMP)
	$(PY) bench/bench_e2e.py --objects 10000 --folders 100
