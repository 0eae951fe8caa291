"""deploy.sh against a fake ``gcloud`` that records every call.

The fake (a small bash script written into tmp_path, first on PATH) logs each
argv, answers the look-ups deploy.sh makes (project number, inbox location,
service agent, the follow-up trigger and its subscription) in the output format
the ``--format`` flag asks for, and answers ``describe`` with success or NOT_FOUND
according to the scenario: ``fresh`` (only the inbox bucket exists) or
``existing`` (everything exists). Nothing here reaches Google.

One test also hands every recorded command to the real gcloud CLI (when it is
installed) with an empty configuration: gcloud parses all flags before it looks
for credentials, so an unknown flag or a bad choice fails there, and a good
command stops at "no active account" without any network call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import google_sdk

REPO = Path(__file__).resolve().parents[2]
PROJECT = "dicom-prod-1"
PROJECT_NUMBER = "123456789012"
OTHER_PROJECT_NUMBER = "210987654321"
REGION = "europe-west4"
INBOX = "rad-inbox"
STATE = "rad-import-state"
STORE = f"projects/{PROJECT}/locations/europe-west4/datasets/radiology/dicomStores/main"
GCS_AGENT = f"service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"
FUNCTIONS = ("dicom-import-intake", "dicom-import-followup", "dicom-export-request", "dicom-import-reconcile")
SCHEDULER_AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-cloudscheduler.iam.gserviceaccount.com"


def trigger(function: str) -> str:  # what the fake's `functions describe` reports
    return f"projects/{PROJECT}/locations/{REGION}/triggers/{function}-483920"


def subscription(function: str) -> str:  # what the fake's `eventarc triggers describe` reports
    return f"projects/{PROJECT}/subscriptions/eventarc-{REGION}-{function}-483920-sub-221"


RUNTIME_SA = f"dicom-import-fn@{PROJECT}.iam.gserviceaccount.com"
HEALTHCARE_AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-healthcare.iam.gserviceaccount.com"
PUBSUB_AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
REQUIRED = [
    "--project", PROJECT, "--region", REGION, "--inbox-bucket", INBOX,
    "--state-bucket", STATE, "--dicom-store", STORE,
]
# Not the defaults, so a test can tell the flags were used.
TUNING = ["--concurrency", "7", "--max-instances", "3", "--memory", "1Gi"]
KMS_KEY = "projects/dicom-keys-1/locations/europe/keyRings/imaging/cryptoKeys/dicom"  # the fake inbox is in EU
KMS_ROLE = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
TABLE = f"{PROJECT}:dicom_import.results"
BIGQUERY_SUBSCRIPTION = "dicom-import-results-bigquery"
EMAILS = ["imaging-oncall@hospital.example", "pacs-team@hospital.example"]
GIVEN_CHANNEL = f"projects/{PROJECT}/notificationChannels/42"
HASH_KEY_SECRET = "dicom-import-hash-key"
# Every optional feature: the alert, key and table options, and the hash key's secret.
OPTIONS = ["--alert-email", EMAILS[0], "--alert-email", EMAILS[1], "--alert-channel", GIVEN_CHANNEL,
           "--kms-key", KMS_KEY, "--results-table", TABLE, "--hash-key-secret", HASH_KEY_SECRET]
SEP = "\x1f"

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Fake gcloud for tests/unit/test_deploy.py: records argv, answers look-ups.
set -u
log=${FAKE_GCLOUD_LOG:?}
n=$(( $(cat "$log" 2>/dev/null | wc -l) + 1 ))
{ printf '%s\x1f' "$@"; printf '\n'; } >>"$log"
format=""
for arg in "$@"; do
  case $arg in
    --lifecycle-file=*) cp -- "${arg#--lifecycle-file=}" "$log.lifecycle.$n" ;;
    --config-from-file=*) cp -- "${arg#--config-from-file=}" "$log.config.$n" ;;
    --format=*) format=${arg#--format=} ;;
  esac
done
if [[ -n ${FAKE_GCLOUD_FAIL:-} && " $* " =~ $FAKE_GCLOUD_FAIL ]]; then
  count=$(( $(cat "$log.failures" 2>/dev/null || echo 0) + 1 ))
  echo "$count" >"$log.failures"
  if (( count <= ${FAKE_GCLOUD_FAIL_TIMES:-1000000} )); then
    echo "${FAKE_GCLOUD_FAIL_MESSAGE:-ERROR: (fake gcloud) failing on purpose: $*}" >&2
    exit 1
  fi
fi
not_found() { echo "ERROR: (fake gcloud) NOT_FOUND: $*" >&2; exit 1; }
existing=${FAKE_GCLOUD_EXISTING:-0}
case "$1 ${2:-}" in
  "projects describe")
    if [[ $3 == "$FAKE_MAIN_PROJECT" ]]; then number=123456789012; else number=210987654321; fi
    if [[ $format == 'value(projectNumber)' ]]; then echo "$number"
    else printf "lifecycleState: ACTIVE\nprojectId: %s\nprojectNumber: '%s'\n" "$3" "$number"; fi ;;
  "storage buckets")
    if [[ $3 == describe ]]; then
      if [[ $4 == "gs://$FAKE_GCLOUD_INBOX" ]]; then
        case $format in
          'value(location.lower())') echo "${FAKE_INBOX_LOCATION:-eu}" ;;
          'value(location)') echo EU ;;
          *) printf 'name: %s\nlocation: EU\n' "${4#gs://}" ;;
        esac
      else
        # FAKE_BUCKET_LOCATIONS="NAME=location ...": buckets that exist, where; in the existing
        # scenario every other bucket exists beside the inbox.
        location=""
        for entry in ${FAKE_BUCKET_LOCATIONS:-}; do [[ ${entry%%=*} == "${4#gs://}" ]] && location=${entry#*=}; done
        [[ -n $location || $existing != 1 ]] || location=${FAKE_INBOX_LOCATION:-eu}
        [[ -n $location ]] || not_found "$4"
        case $format in
          'value(location.lower())') echo "$location" ;;
          'value(location)') echo "${location^^}" ;;
          *) echo "${4#gs://}" ;;
        esac
      fi
    fi ;;
  "pubsub topics"|"pubsub subscriptions"|"iam service-accounts"|"iam roles"|"scheduler jobs")
    if [[ $3 == describe && $existing != 1 ]]; then not_found "$4"; fi ;;
  "storage service-agent") echo "service-123456789012@gs-project-accounts.iam.gserviceaccount.com" ;;
  "logging metrics"|"monitoring dashboards")
    if [[ $3 == describe && $existing != 1 ]]; then not_found "$4"; fi ;;
  "beta monitoring")  # notification channels: found when existing, else created
    if [[ $3 == channels && $4 == list && $existing == 1 ]]; then echo "projects/$FAKE_MAIN_PROJECT/notificationChannels/$n"; fi
    if [[ $3 == channels && $4 == create ]]; then echo "projects/$FAKE_MAIN_PROJECT/notificationChannels/$n"; fi ;;
  "alpha monitoring")  # alert policies: found (by their labels) when existing
    if [[ $3 == policies && $4 == list && $existing == 1 ]]; then echo "projects/$FAKE_MAIN_PROJECT/alertPolicies/$n"; fi ;;
  "functions describe")
    trigger="projects/$FAKE_MAIN_PROJECT/locations/$FAKE_REGION/triggers/$3-483920"
    if [[ $format == 'value(eventTrigger.trigger)' ]]; then echo "$trigger"
    else printf 'name: %s\neventTrigger:\n  trigger: %s\n' "$3" "$trigger"; fi ;;
  "eventarc triggers")
    if [[ $3 == describe ]]; then
      prefix="projects/$FAKE_MAIN_PROJECT/locations/$FAKE_REGION/triggers/"
      [[ $4 == "$prefix"*-483920 ]] || not_found "$4"
      function=${4#"$prefix"}; function=${function%-483920}
      subscription="projects/$FAKE_MAIN_PROJECT/subscriptions/eventarc-$FAKE_REGION-$function-483920-sub-221"
      if [[ $format == 'value(transport.pubsub.subscription)' ]]; then echo "$subscription"
      else printf 'transport:\n  pubsub:\n    subscription: %s\n' "$subscription"; fi
    fi ;;
esac
exit 0
"""


FAKE_BQ = r"""#!/usr/bin/env bash
# Fake bq for tests/unit/test_deploy.py: records argv (after "bq") in the gcloud log.
set -u
log=${FAKE_GCLOUD_LOG:?}
{ printf '%s\x1f' bq "$@"; printf '\n'; } >>"$log"
if [[ $1 == show ]]; then
  target=${!#}
  if [[ $target == *.* ]]; then  # a table
    [[ ${FAKE_GCLOUD_EXISTING:-0} == 1 ]] || { echo "BigQuery error in show operation: Not found: Table $target" >&2; exit 2; }
  else                           # a dataset
    [[ -z ${FAKE_BQ_NO_DATASET:-} ]] || { echo "BigQuery error in show operation: Not found: Dataset $target" >&2; exit 2; }
  fi
fi
exit 0
"""


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, log: Path):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.log = log
        self.calls: list[list[str]] = []
        if log.exists():
            for line in log.read_text().splitlines():
                self.calls.append(line.split(SEP)[:-1])

    def matching(self, *prefix: str) -> list[list[str]]:
        return [c for c in self.calls if c[: len(prefix)] == list(prefix)]

    def index(self, *prefix: str) -> int:
        for i, c in enumerate(self.calls):
            if c[: len(prefix)] == list(prefix):
                return i
        raise AssertionError(f"no call starts with {prefix}; calls:\n{self.dump()}")

    def lifecycle(self, call_index: int) -> dict:
        return json.loads(Path(f"{self.log}.lifecycle.{call_index + 1}").read_text())

    def bindings(self) -> set[tuple[str, str, str, str]]:
        """(command group, resource, member, role) of every add-iam-policy-binding."""
        out = set()
        for c in self.calls:
            if "add-iam-policy-binding" in c:
                i = c.index("add-iam-policy-binding")
                resource = c[-1] if c[0] == "bq" else c[i + 1]  # bq names the resource last
                out.add((" ".join(c[:i]), resource, flag(c, "--member"), flag(c, "--role")))
        return out

    def dump(self) -> str:
        return "\n".join(" ".join(c) for c in self.calls)


def flag(argv: list[str], name: str) -> str | None:
    values = flags(argv, name)
    assert len(values) <= 1, f"{name} given {len(values)} times in {argv}"
    return values[0] if values else None


def flags(argv: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]


@pytest.fixture
def env(tmp_path: Path) -> dict:
    """A source tree (deploy.sh, .gcloudignore, config.yaml), a fake gcloud, a clean environment."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("deploy.sh", ".gcloudignore", "config.yaml"):
        shutil.copy2(REPO / name, src / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("bq", FAKE_BQ)):
        fake = bin_dir / name
        fake.write_text(text)
        fake.chmod(0o755)
    for directory in ("monitoring", "bigquery"):
        shutil.copytree(REPO / directory, src / directory)
    (src / "handlers").symlink_to(REPO / "handlers")  # deploy.sh checks the config with python -m handlers
    home = tmp_path / "home"
    home.mkdir()
    return {
        "src": src,
        "log": tmp_path / "gcloud.log",
        "vars": {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(tmp_path),
            "LANG": "C.UTF-8",
            "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
            "FAKE_MAIN_PROJECT": PROJECT,
            "FAKE_GCLOUD_INBOX": INBOX,
            "FAKE_REGION": REGION,
            "DEPLOY_RETRY_SLEEP": "0",
            "PYTHON": sys.executable,
        },
    }


def deploy(env: dict, *args: str, scenario: str = "fresh", script: Path | None = None, **extra: str) -> Run:
    variables = dict(env["vars"], FAKE_GCLOUD_EXISTING="1" if scenario == "existing" else "0", **extra)
    proc = subprocess.run(
        ["bash", str(script or env["src"] / "deploy.sh"), *args],
        env=variables, capture_output=True, text=True, timeout=60,
    )
    return Run(proc, env["log"])


def ok(run: Run) -> Run:
    assert run.returncode == 0, f"exit {run.returncode}\nstderr:\n{run.stderr}\ncalls:\n{run.dump()}"
    return run


def deploys(run: Run) -> dict[str, list[str]]:
    out = {}
    for c in run.matching("functions", "deploy"):
        assert c[2] not in out, f"{c[2]} deployed twice"
        out[c[2]] = c
    return out


def env_vars(argv: list[str]) -> dict[str, str]:
    (value,) = flags(argv, "--set-env-vars")
    return dict(item.split("=", 1) for item in value.split(","))


def is_create(argv: list[str]) -> bool:
    return "create" in argv[:4]


def is_monitoring(argv: list[str]) -> bool:
    """Log-based metrics, dashboards, notification channels, alert policies."""
    return argv[:2] == ["logging", "metrics"] or "monitoring" in argv[:2]


# ---------------------------------------------------------------- dry run


def test_dry_run_runs_nothing_and_prints_every_command(env):
    run = ok(deploy(env, *REQUIRED, "--dry-run"))

    assert run.calls == [] and not env["log"].exists()
    assert "config: config.yaml is valid with the functions' environment" in run.stderr
    lines = run.stdout.splitlines()
    commands = [line for line in lines if line and not line.startswith("#")]
    for expected in (
        "gcloud services enable healthcare.googleapis.com",
        f"gcloud pubsub topics describe dicom-import-results --project={PROJECT} >/dev/null 2>&1 || gcloud pubsub topics create dicom-import-results",
        "gcloud pubsub topics create dicom-import-followups-dead-letter",
        f"gcloud storage buckets create gs://{STATE}",
        "gcloud iam service-accounts create dicom-import-fn",
        "gcloud healthcare dicom-stores add-iam-policy-binding main",
        f"gcloud storage buckets add-iam-policy-binding gs://{INBOX} --project={PROJECT} "
        '"--member=serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-healthcare.iam.gserviceaccount.com" '
        "--role=roles/storage.objectViewer",
        "gcloud functions deploy dicom-import-intake",
        "gcloud functions deploy dicom-import-followup",
        "gcloud functions deploy dicom-export-request",
        'gcloud pubsub subscriptions update "${FOLLOWUP_SUBSCRIPTION}"',
    ):
        assert any(expected in line for line in commands), f"not printed: {expected}\n{run.stdout}"
    # One command per line, and the whole output is valid shell.
    assert all(line.count("gcloud functions deploy") <= 1 for line in lines)
    syntax = subprocess.run(["bash", "-n"], input=run.stdout, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


@pytest.mark.parametrize("options", [[], OPTIONS], ids=["plain", "alerts-kms-bigquery"])
def test_dry_run_output_executes_exactly_the_calls_of_a_real_run(env, tmp_path, options):
    script = tmp_path / "printed.sh"
    script.write_text(ok(deploy(env, *REQUIRED, *TUNING, *options, "--dry-run")).stdout)

    printed = ok(deploy(env, script=script))
    printed_calls, printed_lifecycle = printed.calls, printed.lifecycle(printed.index("storage", "buckets", "create"))
    env["log"].unlink()
    real = ok(deploy(env, *REQUIRED, *TUNING, *options))

    def normal(calls):
        return [[a if not a.startswith("--lifecycle-file=") else "--lifecycle-file=F" for a in c] for c in calls]

    assert normal(printed_calls) == normal(real.calls)
    assert printed_lifecycle == real.lifecycle(real.index("storage", "buckets", "create"))


def test_the_repository_config_deploys(env):
    """The real config.yaml only uses ${VARS} deploy.sh sets (fails when someone adds one)."""
    run = deploy(env, *REQUIRED, "--dry-run", script=REPO / "deploy.sh")
    assert run.returncode == 0, run.stderr
    assert run.calls == []


# ---------------------------------------------------------------- fresh project


def test_fresh_project_creates_topics_bucket_and_service_account(env):
    run = ok(deploy(env, *REQUIRED, *TUNING))

    topics = {c[3] for c in run.matching("pubsub", "topics", "create")}
    assert topics == {
        "dicom-import-results", "dicom-import-results-dead-letter",
        "dicom-import-followups", "dicom-import-followups-dead-letter", "dicom-export-requests",
        "dicom-import-reconcile",
    }
    subscriptions = {c[3]: flag(c, "--topic") for c in run.matching("pubsub", "subscriptions", "create")}
    assert subscriptions == {**{t: t for t in ("dicom-import-results-dead-letter", "dicom-import-followups-dead-letter")},
                             "dicom-import-results-ops": "dicom-import-results"}

    (bucket,) = run.matching("storage", "buckets", "create")
    assert bucket[3] == f"gs://{STATE}"
    assert flag(bucket, "--location") == "eu"  # the inbox's location, not --region
    assert "--uniform-bucket-level-access" in bucket
    lifecycle = run.lifecycle(run.index("storage", "buckets", "create"))
    rules = {(r["action"]["type"], r["condition"]["age"]) for r in lifecycle["rule"]}
    assert rules == {("Delete", 7), ("Delete", 30)}  # which folders: the next test

    (sa,) = run.matching("iam", "service-accounts", "create")
    assert sa[3] == "dicom-import-fn" and flag(sa, "--project") == PROJECT
    assert run.matching("services", "enable")[0][2:11] == [
        "healthcare.googleapis.com", "cloudfunctions.googleapis.com", "run.googleapis.com",
        "eventarc.googleapis.com", "pubsub.googleapis.com", "storage.googleapis.com",
        "cloudbuild.googleapis.com", "artifactregistry.googleapis.com", "logging.googleapis.com",
    ]
    # Everything the functions use exists, with its bindings, before the first deploy
    # (monitoring, which reads their logs, and the schedule that fires one, come after).
    prepared = [i for i, c in enumerate(run.calls) if not is_monitoring(c) and c[:2] != ["scheduler", "jobs"]
                and (is_create(c) or ("add-iam-policy-binding" in c and c[:2] != ["pubsub", "subscriptions"]))]
    assert max(prepared) < run.index("functions", "deploy")


def state_paths_written() -> list[str]:
    """A path of each kind the function writes in the state bucket, from the code's own path builders."""
    from handlers.batch import layout
    from handlers.exports.job import operation_note_path
    from handlers.failures.replace import marker_path, saved_copy_path

    return [layout.lease_path("r"), layout.seal_path("r", "b"), layout.claim_path("r", "i"),
            layout.member_path("r", "b", "i"), layout.staging_path("r", "b", "i"), layout.record_path("r", "b"),
            layout.operation_path("r", "b", "w"), layout.failures_manifest_path("r", "b"),
            layout.failed_index_path("r", "b"), marker_path("r", "i"), saved_copy_path("r", "b", "i"),
            operation_note_path("q", "w")]


def test_the_state_bucket_lifecycle_expires_every_protocol_folder_and_never_the_reconcile_checkpoint(env):
    from handlers.config import MAX_RECONCILE_WINDOW_HOURS
    from handlers.reconcile.progress import CHECKPOINT_PATH, CLOCK_PATH, SWEEP_PATH

    run = ok(deploy(env, *REQUIRED))
    rules = run.lifecycle(run.index("storage", "buckets", "create"))["rule"]
    assert all(rule["condition"].get("matchesPrefix") for rule in rules), "no catch-all rule"

    def age(path: str) -> int | None:
        ages = [rule["condition"]["age"] for rule in rules
                if any(path.startswith(prefix) for prefix in rule["condition"]["matchesPrefix"])]
        return min(ages) if ages else None

    assert {path.split("/")[0]: age(path) for path in state_paths_written()} == {
        "leases": 30, "seals": 30, "claims": 30, "members": 30, "staging": 7, "batches": 30, "operations": 30,
        "failures": 30, "failed": 30, "replacements": 30, "replaced": 30, "exports": 30}
    # A month without sweeps must not lose the checkpoint: the next sweep would silently start over.
    assert [age(path) for path in (CHECKPOINT_PATH, SWEEP_PATH, CLOCK_PATH)] == [None, None, None]
    assert MAX_RECONCILE_WINDOW_HOURS < 24 * age("claims/r/i.json"), "no sweep looks back to objects whose claims went"

def test_fresh_project_grants_least_privilege(env):
    run = ok(deploy(env, *REQUIRED))
    sa = f"serviceAccount:{RUNTIME_SA}"

    assert run.bindings() == {
        # runtime (and trigger) identity
        ("healthcare dicom-stores", "main", sa, f"projects/{PROJECT}/roles/dicomImportStore"),
        ("healthcare datasets", "radiology", sa, "roles/healthcare.datasetViewer"),
        ("storage buckets", f"gs://{INBOX}", sa, "roles/storage.objectViewer"),
        ("storage buckets", f"gs://{STATE}", sa, "roles/storage.objectAdmin"),
        ("pubsub topics", "dicom-import-results", sa, "roles/pubsub.publisher"),
        ("pubsub topics", "dicom-import-followups", sa, "roles/pubsub.publisher"),
        ("projects", PROJECT, sa, "roles/eventarc.eventReceiver"),
        ("projects", PROJECT, sa, "roles/logging.viewer"),  # failed files named from Cloud Logging
        # the Healthcare API reads the inbox and the staging copies
        ("storage buckets", f"gs://{INBOX}", HEALTHCARE_AGENT, "roles/storage.objectViewer"),
        ("storage buckets", f"gs://{STATE}", HEALTHCARE_AGENT, "roles/storage.objectViewer"),
        # Eventarc's Cloud Storage source
        ("projects", PROJECT, f"serviceAccount:{GCS_AGENT}", "roles/pubsub.publisher"),
        # Pub/Sub: dead letters, push tokens
        ("pubsub topics", "dicom-import-results-dead-letter", PUBSUB_AGENT, "roles/pubsub.publisher"),
        ("pubsub topics", "dicom-import-followups-dead-letter", PUBSUB_AGENT, "roles/pubsub.publisher"),
        ("iam service-accounts", RUNTIME_SA, PUBSUB_AGENT, "roles/iam.serviceAccountTokenCreator"),
        ("pubsub subscriptions", subscription("dicom-import-followup"), PUBSUB_AGENT, "roles/pubsub.subscriber"),
        # Cloud Scheduler publishes the reconcile ticks
        ("pubsub topics", "dicom-import-reconcile", SCHEDULER_AGENT, "roles/pubsub.publisher"),
    }
    (store_binding,) = run.matching("healthcare", "dicom-stores", "add-iam-policy-binding")
    assert (flag(store_binding, "--dataset"), flag(store_binding, "--location"), flag(store_binding, "--project")) == (
        "radiology", "europe-west4", PROJECT)
    invokers = {(c[2], flag(c, "--region"), flag(c, "--member"))
                for c in run.matching("functions", "add-invoker-policy-binding")}
    assert invokers == {(fn, REGION, sa) for fn in FUNCTIONS}
    assert min(run.calls.index(c) for c in run.matching("functions", "add-invoker-policy-binding")) > max(
        run.calls.index(c) for c in run.matching("functions", "deploy"))
    # Bindings that may hit a policy with conditions say so, or gcloud refuses without a prompt.
    for c in run.calls:
        if "iam-policy-binding" in " ".join(c) and c[0] in ("projects", "storage", "healthcare", "iam"):
            assert len(flags(c, "--condition")) == 1, c


def state_agent_condition(run: Run) -> str:
    (binding,) = [c for c in run.matching("storage", "buckets", "add-iam-policy-binding", f"gs://{STATE}")
                  if flag(c, "--member") == HEALTHCARE_AGENT]
    condition = dict(part.split("=", 1) for part in flag(binding, "--condition").split(","))
    assert set(condition) == {"expression", "title", "description"}, condition
    return condition["expression"]


def test_the_healthcare_agent_reads_only_staging_copies_and_filter_files_in_the_state_bucket(env):
    """The agent is shared by every store of the project: whoever may import into one of them
    imports what it can read. Not replaced/ (full copies of replaced instances), nor the records."""
    from handlers.batch import layout
    from handlers.exports import job
    from handlers.failures import replace

    run = ok(deploy(env, *REQUIRED))
    expression = state_agent_condition(run)
    prefixes = [part.split('startsWith("', 1)[1].split('")', 1)[0]
                for part in expression.split(" || ") if "startsWith" in part]
    assert expression.split(" || ")[0] == 'resource.type == "storage.googleapis.com/Bucket"'  # listing
    assert prefixes == [f"projects/_/buckets/{STATE}/objects/staging/", f"projects/_/buckets/{STATE}/objects/exports/"]

    def readable(path: str) -> bool:
        return any(f"projects/_/buckets/{STATE}/objects/{path}".startswith(prefix) for prefix in prefixes)

    # What the Healthcare API reads: an import's staging copies, an export's filter file.
    uri = layout.import_uri(STATE, "r", "b").removeprefix(f"gs://{STATE}/")
    assert readable(uri.rstrip("*") + "0123.dcm")
    request = type("Request", (), {"request_id": "req-1", "tag": "abc123"})()
    assert readable(job.filter_path(request))
    # What it must not read: patient data kept for other reasons, and the records.
    for path in (replace.saved_copy_path("r", "b", "0123"), replace.marker_path("r", "0123"),
                 layout.record_path("r", "b"), layout.member_path("r", "b", "0123")):
        assert not readable(path), path
    # An earlier deploy's unconditional read is removed, after the conditional one is in place.
    (removal,) = run.matching("storage", "buckets", "remove-iam-policy-binding", f"gs://{STATE}")
    assert (flag(removal, "--member"), flag(removal, "--role"), flag(removal, "--condition")) == (
        HEALTHCARE_AGENT, "roles/storage.objectViewer", "None")
    assert run.calls.index(removal) > run.index("storage", "buckets", "add-iam-policy-binding", f"gs://{STATE}")
    # The condition needs uniform bucket-level access: set on creation and on every later run.
    assert "--uniform-bucket-level-access" in run.matching("storage", "buckets", "create", f"gs://{STATE}")[0]
    env["log"].unlink()
    existing = ok(deploy(env, *REQUIRED, scenario="existing"))
    assert "--uniform-bucket-level-access" in existing.matching("storage", "buckets", "update", f"gs://{STATE}")[0]


# The grants earlier deploys made and deploy.sh now removes: (the calls' pattern, what its error names, the
# first call of the step after the removal, which a failed removal must prevent).
REMOVED_GRANTS = [(f"storage buckets remove-iam-policy-binding gs://{STATE} ",
                   "the Healthcare agent's unconditional read", ("functions", "deploy")),
                  ("dicom-stores remove-iam-policy-binding", "the runtime account's roles/healthcare.dicomEditor",
                   ("functions", "deploy")),
                  (f"remove-iam-policy-binding gs://{INBOX} .*roles/dicomImportTagFailed",
                   f"the runtime account's dicomImportTagFailed on gs://{INBOX}",
                   ("functions", "add-invoker-policy-binding")),
                  (f"remove-iam-policy-binding gs://{INBOX} .*roles/dicomImportMoveFailed",
                   f"the runtime account's dicomImportMoveFailed on gs://{INBOX}",
                   ("functions", "add-invoker-policy-binding"))]


@pytest.mark.parametrize("removed", REMOVED_GRANTS, ids=["state-bucket-read", "dicom-editor", "tag-role", "move-role"])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["real", "dry-run"])
def test_removing_an_old_grant_tolerates_only_its_absence(env, tmp_path, dry_run, removed):
    pattern, named, after = removed

    def run_with(message: str) -> Run:
        if env["log"].exists():
            env["log"].unlink()
        failing = dict(FAKE_GCLOUD_FAIL=pattern, FAKE_GCLOUD_FAIL_MESSAGE=message)
        if not dry_run:
            return deploy(env, *REQUIRED, **failing)
        script = tmp_path / "printed.sh"
        script.write_text(ok(deploy(env, *REQUIRED, "--dry-run")).stdout)
        return deploy(env, script=script, **failing)

    absent = ok(run_with("ERROR: (gcloud.storage.buckets.remove-iam-policy-binding) Policy binding with the "
                         "specified principal, role, and condition not found!"))
    assert absent.matching(*after)
    denied = run_with("ERROR: (gcloud.storage.buckets.remove-iam-policy-binding) HTTPError 403: denied")
    assert denied.returncode == 1 and not denied.matching(*after)
    assert "HTTPError 403: denied" in denied.stderr
    assert f"deploy.sh: error: removing {named}" in denied.stderr
    assert "Traceback" not in denied.stderr


def test_functions_are_deployed_with_entry_points_triggers_and_flags(env):
    run = ok(deploy(env, *REQUIRED, *TUNING))
    functions = deploys(run)
    assert set(functions) == set(FUNCTIONS)

    for name, argv in functions.items():
        assert "--gen2" in argv and "--retry" in argv, name
        assert flag(argv, "--runtime") == "python312"
        assert flag(argv, "--region") == REGION and flag(argv, "--project") == PROJECT
        assert flag(argv, "--source") == str(env["src"])
        assert flag(argv, "--concurrency") == "7" and flag(argv, "--max-instances") == "3"
        assert flag(argv, "--memory") == "1Gi" and flag(argv, "--cpu") == "1"
        assert flag(argv, "--service-account") == RUNTIME_SA
        assert flag(argv, "--trigger-service-account") == RUNTIME_SA
        assert env_vars(argv) == {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "INBOX_BUCKET": INBOX,
            "STATE_BUCKET": STATE,
            "DICOM_STORE": STORE,
            "RESULTS_TOPIC": f"projects/{PROJECT}/topics/dicom-import-results",
            "FOLLOWUP_TOPIC": f"projects/{PROJECT}/topics/dicom-import-followups",
            "EXPORT_REQUESTS_TOPIC": f"projects/{PROJECT}/topics/dicom-export-requests",
            "THREADS": "7",
        }

    intake = functions["dicom-import-intake"]
    assert flag(intake, "--entry-point") == "on_object_finalized"
    assert flags(intake, "--trigger-event-filters") == [
        "type=google.cloud.storage.object.v1.finalized", f"bucket={INBOX}"]
    assert flag(intake, "--trigger-location") == "eu"  # the inbox's location, not --region
    assert flag(intake, "--trigger-topic") is None

    followup = functions["dicom-import-followup"]
    assert flag(followup, "--entry-point") == "on_followup"
    assert flag(followup, "--trigger-topic") == "dicom-import-followups"
    assert flag(followup, "--timeout") == "540s"

    export = functions["dicom-export-request"]
    assert flag(export, "--entry-point") == "on_export_request"
    assert flag(export, "--trigger-topic") == "dicom-export-requests"

    reconcile = functions["dicom-import-reconcile"]
    assert flag(reconcile, "--entry-point") == "on_reconcile"
    assert flag(reconcile, "--trigger-topic") == "dicom-import-reconcile"


def test_an_hourly_scheduler_job_fires_the_reconcile_function(env):
    run = ok(deploy(env, *REQUIRED))
    (job,) = run.matching("scheduler", "jobs", "create", "pubsub")
    assert job[4] == "dicom-import-reconcile"
    assert flag(job, "--schedule") == "0 * * * *" and flag(job, "--time-zone") == "Etc/UTC"
    assert flag(job, "--topic") == f"projects/{PROJECT}/topics/dicom-import-reconcile"
    assert flag(job, "--location") == REGION and flag(job, "--project") == PROJECT
    assert json.loads(flag(job, "--message-body")) == {"kind": "reconcile"}
    assert "cloudscheduler.googleapis.com" in run.matching("services", "enable")[0]
    assert run.calls.index(job) > run.calls.index(deploys(run)["dicom-import-reconcile"]), "no tick before the function"

    env["log"].unlink()
    again = ok(deploy(env, *REQUIRED, "--reconcile-schedule", "*/15 * * * *", scenario="existing"))
    assert not again.matching("scheduler", "jobs", "create")
    (update,) = again.matching("scheduler", "jobs", "update", "pubsub")
    assert update[4] == "dicom-import-reconcile" and flag(update, "--schedule") == "*/15 * * * *"


def test_followup_subscription_gets_backoff_ack_deadline_and_dead_letters(env):
    run = ok(deploy(env, *REQUIRED))

    describe_fn = run.index("functions", "describe", "dicom-import-followup")
    assert describe_fn > run.calls.index(deploys(run)["dicom-import-followup"])
    assert run.calls[describe_fn + 1][:4] == ["eventarc", "triggers", "describe", trigger("dicom-import-followup")]
    (update,) = [c for c in run.matching("pubsub", "subscriptions", "update") if c[3] == subscription("dicom-import-followup")]
    assert flag(update, "--ack-deadline") == "600"
    assert flag(update, "--message-retention-duration") == "7d"  # Eventarc's 24 h would drop long follow-ups
    assert flag(update, "--min-retry-delay") == "10s"
    assert flag(update, "--max-retry-delay") == "600s"
    assert flag(update, "--dead-letter-topic") == f"projects/{PROJECT}/topics/dicom-import-followups-dead-letter"
    assert 5 <= int(flag(update, "--max-delivery-attempts")) <= 100


def test_every_trigger_subscription_waits_for_the_function_and_backs_off(env):
    run = ok(deploy(env, *REQUIRED))
    updates = {c[3]: c for c in run.matching("pubsub", "subscriptions", "update")}
    assert set(updates) == {subscription(fn) for fn in FUNCTIONS}
    for fn in FUNCTIONS:
        update = updates[subscription(fn)]
        assert int(flag(update, "--ack-deadline")) > 540  # the functions' timeout
        assert (flag(update, "--min-retry-delay"), flag(update, "--max-retry-delay")) == ("10s", "600s")
        assert (flag(update, "--dead-letter-topic") is None) == (fn != "dicom-import-followup")


# ---------------------------------------------------------------- second run


def test_second_run_creates_nothing_but_still_deploys_and_converges(env):
    run = ok(deploy(env, *REQUIRED, *TUNING, scenario="existing"))

    # The only "create" left is get-or-create of Google's service agents.
    creates = [c for c in run.calls if is_create(c)]
    assert all(c[:4] == ["beta", "services", "identity", "create"] for c in creates), creates
    assert len(creates) == 3  # healthcare, pubsub, cloudscheduler
    for kind in (("pubsub", "topics"), ("pubsub", "subscriptions"), ("iam", "service-accounts")):
        assert run.matching(*kind, "describe"), kind
    (update,) = run.matching("storage", "buckets", "update")
    assert update[3] == f"gs://{STATE}" and "--uniform-bucket-level-access" in update
    assert run.lifecycle(run.index("storage", "buckets", "update"))["rule"]
    assert set(deploys(run)) == set(FUNCTIONS)
    assert run.matching("pubsub", "subscriptions", "update")
    assert ("storage buckets", f"gs://{INBOX}", HEALTHCARE_AGENT, "roles/storage.objectViewer") in run.bindings()


# ---------------------------------------------------------------- variants


def test_export_bucket_gives_the_healthcare_agent_object_admin(env):
    with_export = ok(deploy(env, *REQUIRED, "--export-bucket", "gs://rad-exports"))
    (created,) = [c for c in with_export.matching("storage", "buckets", "create") if c[3] == "gs://rad-exports"]
    assert flag(created, "--location") == "eu"  # beside the inbox, as the state bucket
    assert "--uniform-bucket-level-access" in created and "--public-access-prevention" in created
    assert flag(created, "--default-encryption-key") is None
    assert with_export.index("storage", "buckets", "create") < with_export.index("functions", "deploy")
    assert ("storage buckets", "gs://rad-exports", HEALTHCARE_AGENT, "roles/storage.objectAdmin") in with_export.bindings()
    assert all(env_vars(c)["EXPORT_BUCKET"] == "rad-exports" for c in deploys(with_export).values())

    env["log"].unlink()
    without = ok(deploy(env, *REQUIRED))
    assert not [b for b in without.bindings() if b[3] == "roles/storage.objectAdmin" and b[2] == HEALTHCARE_AGENT]
    assert all("EXPORT_BUCKET" not in env_vars(c) for c in deploys(without).values())


def test_export_bucket_is_created_with_the_kms_key_and_an_existing_one_is_left_as_it_is(env):
    run = ok(deploy(env, *REQUIRED, "--export-bucket", "rad-exports", "--kms-key", KMS_KEY))
    (created,) = [c for c in run.matching("storage", "buckets", "create") if c[3] == "gs://rad-exports"]
    assert flag(created, "--default-encryption-key") == KMS_KEY

    env["log"].unlink()
    again = ok(deploy(env, *REQUIRED, "--export-bucket", "rad-exports", "--kms-key", KMS_KEY, scenario="existing"))
    assert not again.matching("storage", "buckets", "create")
    assert all(c[3] != "gs://rad-exports" for c in again.matching("storage", "buckets", "update"))
    assert "exists: bucket gs://rad-exports" in again.stderr


def test_store_in_another_project_uses_that_projects_healthcare_agent(env):
    store = "projects/imaging-hub-7/locations/us/datasets/shared/dicomStores/inbound"
    run = ok(deploy(env, "--project", PROJECT, "--region", REGION, "--inbox-bucket", INBOX,
                    "--state-bucket", STATE, "--dicom-store", store))

    agent = f"serviceAccount:service-{OTHER_PROJECT_NUMBER}@gcp-sa-healthcare.iam.gserviceaccount.com"
    assert ("storage buckets", f"gs://{INBOX}", agent, "roles/storage.objectViewer") in run.bindings()
    assert not [b for b in run.bindings() if b[2] == HEALTHCARE_AGENT]
    (store_binding,) = run.matching("healthcare", "dicom-stores", "add-iam-policy-binding")
    assert (store_binding[3], flag(store_binding, "--project"), flag(store_binding, "--location")) == (
        "inbound", "imaging-hub-7", "us")
    assert ["--service=healthcare.googleapis.com", "--project=imaging-hub-7"] in [
        c[4:] for c in run.matching("beta", "services", "identity", "create")]


def test_values_come_from_the_environment_and_flags_win(env):
    run = ok(deploy(
        env, "--concurrency", "9",
        GOOGLE_CLOUD_PROJECT=PROJECT, FUNCTION_REGION=REGION, INBOX_BUCKET=INBOX, STATE_BUCKET=STATE,
        DICOM_STORE=STORE, RESULTS_TOPIC=f"projects/{PROJECT}/topics/radiology-results",
        FUNCTION_CONCURRENCY="5", FUNCTION_MAX_INSTANCES="4",
    ))
    intake = deploys(run)["dicom-import-intake"]
    assert flag(intake, "--concurrency") == "9" and flag(intake, "--max-instances") == "4"
    assert env_vars(intake)["RESULTS_TOPIC"] == f"projects/{PROJECT}/topics/radiology-results"
    assert "radiology-results" in {c[3] for c in run.matching("pubsub", "topics", "create")}


def test_operators_get_their_own_results_subscription_for_tail(env):
    """tail acknowledges what it prints: it must not share a subscription with alerting or BigQuery."""
    run = ok(deploy(env, *REQUIRED, "--results-topic", "radiology-results", "--results-table", TABLE))
    (ops,) = [c for c in run.matching("pubsub", "subscriptions", "create") if c[3] == "radiology-results-ops"]
    assert flag(ops, "--topic") == "radiology-results" and flag(ops, "--message-retention-duration") == "1d"
    assert flag(ops, "--expiration-period") == "never" and "--push-endpoint" not in " ".join(ops)
    assert f"RESULTS_SUBSCRIPTION=projects/{PROJECT}/subscriptions/radiology-results-ops" in run.stderr

    env["log"].unlink()
    again = ok(deploy(env, *REQUIRED, "--results-topic", "radiology-results", scenario="existing"))
    assert not [c for c in again.matching("pubsub", "subscriptions", "create") if c[3] == "radiology-results-ops"]


def hashed_config(env: dict) -> str:
    """config/hashed.yaml: the repository's config with its key read from the environment."""
    (env["src"] / "config").mkdir(exist_ok=True)
    text = (REPO / "config.yaml").read_text().replace("results:\n", "results:\n  hash_key: ${RESULTS_HASH_KEY}\n", 1)
    assert "${RESULTS_HASH_KEY}" in text
    (env["src"] / "config" / "hashed.yaml").write_text(text)
    return "config/hashed.yaml"


def test_the_hash_key_comes_from_a_secret_only_the_runtime_account_reads(env):
    run = ok(deploy(env, *REQUIRED, "--config", hashed_config(env), "--hash-key-secret", HASH_KEY_SECRET))
    for name, argv in deploys(run).items():
        assert flags(argv, "--set-secrets") == [f"RESULTS_HASH_KEY={HASH_KEY_SECRET}:latest"], name
        assert "RESULTS_HASH_KEY" not in env_vars(argv), "a key in --set-env-vars is readable by any viewer"
    assert ("secrets", HASH_KEY_SECRET, f"serviceAccount:{RUNTIME_SA}", "roles/secretmanager.secretAccessor") \
        in run.bindings()
    assert run.index("secrets", "describe", HASH_KEY_SECRET) < run.index("secrets", "add-iam-policy-binding")
    assert run.index("services", "enable", "secretmanager.googleapis.com") < run.index("secrets", "describe")
    assert run.index("secrets", "add-iam-policy-binding") < run.index("functions", "deploy")

    env["log"].unlink()
    plain = ok(deploy(env, *REQUIRED))
    assert not [c for c in plain.calls if "secrets" in c[:1] or any(a.startswith("--set-secrets") for a in c)]


def test_a_config_using_the_hash_key_needs_the_secret(env):
    run = deploy(env, *REQUIRED, "--config", hashed_config(env))
    assert run.returncode == 2 and run.calls == []
    assert "uses ${RESULTS_HASH_KEY}: pass --hash-key-secret NAME" in run.stderr


def test_a_missing_hash_key_secret_stops_before_the_functions(env):
    run = deploy(env, *REQUIRED, "--hash-key-secret", HASH_KEY_SECRET, FAKE_GCLOUD_FAIL="secrets describe")
    assert run.returncode == 1 and not deploys(run)
    assert f"secret {HASH_KEY_SECRET} of --hash-key-secret does not exist in {PROJECT}" in run.stderr


def test_another_config_file_is_passed_as_dicom_import_config(env):
    (env["src"] / "config").mkdir()
    (env["src"] / "config" / "site-b.yaml").write_text((REPO / "config.yaml").read_text())
    run = ok(deploy(env, *REQUIRED, "--config", "config/site-b.yaml"))
    assert {env_vars(c).get("DICOM_IMPORT_CONFIG") for c in deploys(run).values()} == {"config/site-b.yaml"}

    env["log"].unlink()
    default = ok(deploy(env, *REQUIRED))
    assert all("DICOM_IMPORT_CONFIG" not in env_vars(c) for c in deploys(default).values())


def test_followup_budget_reaches_every_function_and_survives_redeploys(env):
    """--set-env-vars replaces the whole set: a budget set by hand would be lost at the next deploy."""
    run = ok(deploy(env, *REQUIRED, "--followup-budget", "400"))
    assert {env_vars(c).get("FOLLOWUP_BUDGET_SECONDS") for c in deploys(run).values()} == {"400"}

    env["log"].unlink()
    from_env = ok(deploy(env, *REQUIRED, FOLLOWUP_BUDGET_SECONDS="120"))
    assert {env_vars(c).get("FOLLOWUP_BUDGET_SECONDS") for c in deploys(from_env).values()} == {"120"}

    env["log"].unlink()
    default = ok(deploy(env, *REQUIRED))
    assert all("FOLLOWUP_BUDGET_SECONDS" not in env_vars(c) for c in deploys(default).values())


def test_failure_budgets_reach_every_function_and_survive_redeploys(env):
    run = ok(deploy(env, *REQUIRED, "--failure-logs-wait", "300", FAILURE_VERIFY_SECONDS="600"))
    for command in deploys(run).values():
        assert (env_vars(command).get("FAILURE_LOGS_WAIT_SECONDS"), env_vars(command).get("FAILURE_VERIFY_SECONDS")) \
            == ("300", "600")
    env["log"].unlink()
    default = ok(deploy(env, *REQUIRED))
    assert all({"FAILURE_LOGS_WAIT_SECONDS", "FAILURE_VERIFY_SECONDS"}.isdisjoint(env_vars(c))
               for c in deploys(default).values())


# ---------------------------------------------------------------- monitoring (monitoring/)

MONITORING = REPO / "monitoring"
METRIC_NAMES = sorted(path.stem for path in (MONITORING / "metrics").glob("*.json"))
POLICY_NAMES = sorted(path.stem for path in (MONITORING / "alerts").glob("*.json"))


def monitoring_file(path: Path, followups: str = "dicom-import-followups", results: str = "dicom-import-results") -> dict:
    """The file as deploy.sh must send it: placeholders filled for these topics."""
    text = (path.read_text().replace("{{PROJECT}}", PROJECT)
            .replace("{{FOLLOWUP_DEAD_LETTER}}", f"{followups}-dead-letter")
            .replace("{{RESULTS_DEAD_LETTER}}", f"{results}-dead-letter"))
    return json.loads(text)


def policy_key(argv: list[str]) -> str:
    return json.loads(flag(argv, "--policy"))["userLabels"]["policy"]


def test_monitoring_is_created_from_the_repository_files_after_the_functions(env):
    run = ok(deploy(env, *REQUIRED))

    metrics = run.matching("logging", "metrics", "create")
    assert [c[3] for c in metrics] == METRIC_NAMES
    for c in metrics:  # the file itself (static): the fake keeps a copy of what it was given
        assert json.loads(Path(f"{run.log}.config.{run.calls.index(c) + 1}").read_text()) == json.loads(
            (MONITORING / "metrics" / f"{c[3]}.json").read_text())
    (dashboard,) = run.matching("monitoring", "dashboards", "create")
    assert json.loads(flag(dashboard, "--config")) == monitoring_file(MONITORING / "dashboard.json")
    policies = run.matching("alpha", "monitoring", "policies", "create")
    assert sorted(policy_key(c) for c in policies) == POLICY_NAMES
    for c in policies:
        assert json.loads(flag(c, "--policy")) == monitoring_file(MONITORING / "alerts" / f"{policy_key(c)}.json")
        assert flag(c, "--notification-channels") is None
    assert "no notification channel" in run.stderr and "--alert-email" in run.stderr
    assert not run.matching("beta", "monitoring", "channels", "create")
    first_monitoring = min(i for i, c in enumerate(run.calls) if is_monitoring(c))
    assert first_monitoring > max(run.calls.index(c) for c in run.matching("functions", "deploy"))


def test_custom_topic_names_reach_the_dead_letter_alert(env):
    run = ok(deploy(env, *REQUIRED, "--followup-topic", "rad-followups", "--results-topic", "rad-results"))
    (policy,) = [c for c in run.matching("alpha", "monitoring", "policies", "create") if policy_key(c) == "dead-letters"]
    assert json.loads(flag(policy, "--policy")) == monitoring_file(MONITORING / "alerts" / "dead-letters.json",
                                                                    "rad-followups", "rad-results")
    assert "rad-followups-dead-letter" in flag(policy, "--policy")


def test_second_run_updates_metrics_dashboard_and_policies_in_place(env):
    run = ok(deploy(env, *REQUIRED, scenario="existing"))

    assert not [c for c in run.calls if is_monitoring(c) and is_create(c)]
    assert [c[3] for c in run.matching("logging", "metrics", "update")] == METRIC_NAMES
    (dashboard,) = run.matching("monitoring", "dashboards", "update")
    assert dashboard[3] == "dicom-import" and json.loads(flag(dashboard, "--config"))["displayName"]
    lists = run.matching("alpha", "monitoring", "policies", "list")
    updates = run.matching("alpha", "monitoring", "policies", "update")
    assert len(lists) == len(updates) == len(POLICY_NAMES)
    for found, update in zip(lists, updates):
        # found by the labels in its file, updated under the name the list printed
        key = policy_key(update)
        assert flag(found, "--filter") == f"userLabels.app=dicom-import AND userLabels.policy={key}"
        assert update[4] == f"projects/{PROJECT}/alertPolicies/{run.calls.index(found) + 1}"
        assert "--clear-notification-channels" in update  # no --alert-email: this run's channels are none


def test_alert_emails_become_channels_that_every_policy_notifies(env):
    run = ok(deploy(env, *REQUIRED, "--alert-email", EMAILS[0], "--alert-email", EMAILS[1],
                    "--alert-email", EMAILS[0], "--alert-channel", GIVEN_CHANNEL))

    created = run.matching("beta", "monitoring", "channels", "create")
    assert [(flag(c, "--type"), flag(c, "--channel-labels")) for c in created] == [
        ("email", f"email_address={EMAILS[0]}"), ("email", f"email_address={EMAILS[1]}")]  # once per address
    channels = [f"projects/{PROJECT}/notificationChannels/{run.calls.index(c) + 1}" for c in created]
    policies = run.matching("alpha", "monitoring", "policies", "create")
    assert len(policies) == len(POLICY_NAMES)
    assert {flag(c, "--notification-channels") for c in policies} == {",".join([*channels, GIVEN_CHANNEL])}
    assert "no notification channel" not in run.stderr

    env["log"].unlink()
    again = ok(deploy(env, *REQUIRED, "--alert-email", EMAILS[0], scenario="existing"))
    assert not again.matching("beta", "monitoring", "channels", "create")  # found by its address
    (found,) = again.matching("beta", "monitoring", "channels", "list")
    assert flag(found, "--filter") == f'type="email" AND labels.email_address="{EMAILS[0]}"'
    assert {flag(c, "--set-notification-channels") for c in again.matching("alpha", "monitoring", "policies", "update")} == {
        f"projects/{PROJECT}/notificationChannels/{again.calls.index(found) + 1}"}


def test_alert_emails_can_come_from_the_environment(env):
    run = ok(deploy(env, *REQUIRED, ALERT_EMAILS=f"{EMAILS[0]} {EMAILS[1]}"))
    assert len(run.matching("beta", "monitoring", "channels", "create")) == 2


# ---------------------------------------------------------------- customer-managed key (--kms-key)

TOPICS = {"dicom-import-results", "dicom-import-results-dead-letter", "dicom-import-followups",
          "dicom-import-followups-dead-letter", "dicom-export-requests", "dicom-import-reconcile"}


def test_kms_key_encrypts_the_state_bucket_and_topics_and_the_agents_may_use_it(env):
    run = ok(deploy(env, *REQUIRED, "--kms-key", KMS_KEY))

    assert {b for b in run.bindings() if b[0] == "kms keys"} == {
        ("kms keys", KMS_KEY, f"serviceAccount:{GCS_AGENT}", KMS_ROLE),
        ("kms keys", KMS_KEY, PUBSUB_AGENT, KMS_ROLE),
    }
    # The store's dataset is in europe-west4, the key in europe: it cannot be the dataset's key.
    assert "not granted to the Healthcare agent" in run.stderr
    creates = run.matching("pubsub", "topics", "create")
    assert {c[3] for c in creates} == TOPICS
    assert {flag(c, "--topic-encryption-key") for c in creates} == {KMS_KEY}
    (bucket,) = run.matching("storage", "buckets", "create")
    assert flag(bucket, "--default-encryption-key") == KMS_KEY
    # The agents may use the key before anything is created with it.
    grants = [i for i, c in enumerate(run.calls) if c[:2] == ["kms", "keys"]]
    assert max(grants) < min(run.calls.index(c) for c in creates + [bucket])

    env["log"].unlink()
    again = ok(deploy(env, *REQUIRED, "--kms-key", KMS_KEY, scenario="existing"))
    updates = again.matching("pubsub", "topics", "update")
    assert {c[3] for c in updates} == TOPICS and {flag(c, "--topic-encryption-key") for c in updates} == {KMS_KEY}
    (bucket,) = again.matching("storage", "buckets", "update")
    assert flag(bucket, "--default-encryption-key") == KMS_KEY

    env["log"].unlink()
    plain = ok(deploy(env, *REQUIRED))
    assert not plain.matching("kms") and not plain.matching("pubsub", "topics", "update")
    assert not [c for c in plain.calls if any(a.startswith(("--topic-encryption-key", "--default-encryption-key")) for a in c)]


def test_kms_key_in_the_store_s_location_is_granted_to_the_healthcare_agent(env):
    key = "projects/dicom-keys-1/locations/europe-west4/keyRings/imaging/cryptoKeys/dicom"
    run = ok(deploy(env, *REQUIRED, "--kms-key", key, FAKE_INBOX_LOCATION="europe-west4"))
    assert ("kms keys", key, HEALTHCARE_AGENT, KMS_ROLE) in run.bindings()
    assert "not granted to the Healthcare agent" not in run.stderr


def test_kms_key_in_another_location_than_the_buckets_is_refused_before_anything_is_created(env, tmp_path):
    key = "projects/dicom-keys-1/locations/us-central1/keyRings/imaging/cryptoKeys/dicom"
    run = deploy(env, *REQUIRED, "--kms-key", key)
    assert run.returncode == 1
    assert "--kms-key is in us-central1" in run.stderr and f"gs://{INBOX}" in run.stderr and "(inbox location: eu)" in run.stderr
    assert not run.matching("kms") and not run.matching("pubsub", "topics", "create")
    assert not run.matching("storage", "buckets", "create") and not run.matching("functions", "deploy")

    # The dry run's script refuses the same way when run.
    script = tmp_path / "printed.sh"
    script.write_text(ok(deploy(env, *REQUIRED, "--kms-key", key, "--dry-run")).stdout)
    env["log"].unlink()
    printed = deploy(env, script=script)
    assert printed.returncode == 1 and "--kms-key is in us-central1" in printed.stderr
    assert not printed.matching("kms") and not printed.matching("pubsub", "topics", "create")


def test_kms_key_in_another_location_than_an_existing_state_bucket_is_refused_before_anything_is_keyed(env, tmp_path):
    """deploy.sh updates an existing state bucket with the key; a bucket elsewhere would refuse it halfway."""
    run = deploy(env, *REQUIRED, "--kms-key", KMS_KEY, FAKE_BUCKET_LOCATIONS=f"{STATE}=us-central1")
    assert run.returncode == 1
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("deploy.sh: error:")]
    assert f"--state-bucket gs://{STATE} is in us-central1" in line and "--kms-key is in europe" in line
    assert "name a state bucket in eu" in line
    assert not run.matching("kms") and not run.matching("pubsub", "topics")
    # Only look-ups before the refusal (and the get-or-create of the service agents, as for the inbox's check).
    changes = [c for c in run.calls if is_create(c) or "update" in c[:4] or "add-iam-policy-binding" in c]
    assert all(c[:3] == ["beta", "services", "identity"] for c in changes), changes

    # The dry run's script refuses the same way when run, with the bucket's location.
    script = tmp_path / "printed.sh"
    script.write_text(ok(deploy(env, *REQUIRED, "--kms-key", KMS_KEY, "--dry-run")).stdout)
    env["log"].unlink()
    printed = deploy(env, script=script, FAKE_BUCKET_LOCATIONS=f"{STATE}=us-central1")
    assert printed.returncode == 1 and f"--state-bucket gs://{STATE} is in us-central1" in printed.stderr
    assert not printed.matching("kms") and not printed.matching("pubsub", "topics")


def test_kms_key_in_the_location_of_an_existing_state_bucket_keys_it_in_place(env):
    run = ok(deploy(env, *REQUIRED, "--kms-key", KMS_KEY, FAKE_BUCKET_LOCATIONS=f"{STATE}=eu"))
    assert not run.matching("storage", "buckets", "create")
    (bucket,) = run.matching("storage", "buckets", "update")
    assert bucket[3] == f"gs://{STATE}" and flag(bucket, "--default-encryption-key") == KMS_KEY


def test_an_eu_key_fits_an_eu_inbox_only(env):
    run = deploy(env, *REQUIRED, "--kms-key", KMS_KEY, FAKE_INBOX_LOCATION="europe-west4")
    assert run.returncode == 1 and "only encrypts buckets in eu" in run.stderr


# ---------------------------------------------------------------- results in BigQuery (--results-table)


def test_results_table_is_created_and_filled_by_a_bigquery_subscription(env):
    run = ok(deploy(env, *REQUIRED, "--results-table", TABLE))

    assert ["services", "enable", "bigquery.googleapis.com", f"--project={PROJECT}"] in run.calls
    assert [c[-1] for c in run.matching("bq", "show")] == [f"{PROJECT}:dicom_import", TABLE]
    (mk,) = run.matching("bq", "mk")
    assert mk[-1] == TABLE and "--table" in mk
    assert flag(mk, "--schema") == str(env["src"] / "bigquery" / "results.schema.json")
    assert (flag(mk, "--time_partitioning_field"), flag(mk, "--time_partitioning_type")) == ("publish_time", "DAY")
    grant = ("bq", TABLE, PUBSUB_AGENT, "roles/bigquery.dataEditor")
    assert grant in run.bindings()
    (subscription,) = [c for c in run.matching("pubsub", "subscriptions", "create") if c[3] == BIGQUERY_SUBSCRIPTION]
    assert flag(subscription, "--topic") == "dicom-import-results"
    assert flag(subscription, "--bigquery-table") == TABLE
    assert "--use-table-schema" in subscription and "--write-metadata" in subscription
    assert "--drop-unknown-fields" not in subscription  # a missing column is dead-lettered, not silently dropped
    assert flag(subscription, "--dead-letter-topic") == f"projects/{PROJECT}/topics/dicom-import-results-dead-letter"
    assert 5 <= int(flag(subscription, "--max-delivery-attempts")) <= 100
    assert ("pubsub subscriptions", BIGQUERY_SUBSCRIPTION, PUBSUB_AGENT, "roles/pubsub.subscriber") in run.bindings()
    # Pub/Sub checks on creation that it may write the table.
    assert run.index("bq", "add-iam-policy-binding") < run.calls.index(subscription)
    assert run.calls.index(mk) < run.index("bq", "add-iam-policy-binding")

    env["log"].unlink()
    again = ok(deploy(env, *REQUIRED, "--results-table", TABLE.replace(":", "."), scenario="existing"))
    assert not again.matching("bq", "mk")
    (update,) = again.matching("bq", "update")
    assert update[-1] == TABLE and flag(update, "--schema") == str(env["src"] / "bigquery" / "results.schema.json")
    assert again.index("bq", "update") < again.index("functions", "deploy"), \
        "new columns exist before functions that write them run (else their rows are dead-lettered)"
    (subscription,) = [c for c in again.matching("pubsub", "subscriptions", "update") if c[3] == BIGQUERY_SUBSCRIPTION]
    assert flag(subscription, "--bigquery-table") == TABLE and "--use-table-schema" in subscription


def test_results_table_needs_an_existing_dataset(env):
    run = deploy(env, *REQUIRED, "--results-table", TABLE, FAKE_BQ_NO_DATASET="1")
    assert run.returncode == 1
    assert f"dataset {PROJECT}:dicom_import" in run.stderr and "bq --location=" in run.stderr
    assert not run.matching("bq", "mk")
    assert not [c for c in run.calls if BIGQUERY_SUBSCRIPTION in c]


def test_results_table_without_bq_stops_before_any_call(env, tmp_path):
    tools = tmp_path / "tools"  # the commands deploy.sh and the fake use, and no bq
    tools.mkdir()
    for name in ("bash", "dirname", "basename", "tr", "sed", "grep", "sort", "mktemp", "cat", "rm", "wc", "cp", "env"):
        (tools / name).symlink_to(shutil.which(name))
    (env["src"].parent / "bin" / "bq").unlink()
    run = deploy(env, *REQUIRED, "--results-table", TABLE, PATH=f"{env['src'].parent / 'bin'}:{tools}")
    assert run.returncode == 1 and "needs bq" in run.stderr
    assert run.calls == []
    assert ok(deploy(env, *REQUIRED, PATH=f"{env['src'].parent / 'bin'}:{tools}")).calls  # the tools suffice


def test_without_results_table_nothing_touches_bigquery(env):
    run = ok(deploy(env, *REQUIRED))
    assert not run.matching("bq") and not [c for c in run.calls if BIGQUERY_SUBSCRIPTION in c]
    assert not [c for c in run.calls if "bigquery.googleapis.com" in c]


# ---------------------------------------------------------------- docs/security.md


def security_sections() -> dict[str, str]:
    """docs/security.md's identity sections: heading -> text."""
    text = (REPO / "docs" / "security.md").read_text()
    found = {}
    for part in text.split("\n### ")[1:]:
        heading, _, body = part.partition("\n")
        found[heading.strip()] = body.split("\n## ")[0]
    return found


def test_security_md_names_every_role_deploy_sh_grants_under_its_identity(env):
    runs = [
        ok(deploy(env, *REQUIRED, *OPTIONS, "--export-bucket", "rad-exports")),
        # a key in the store's location: the Healthcare agent's grant too
        ok(deploy(env, *REQUIRED, "--kms-key", "projects/dicom-keys-1/locations/europe-west4/keyRings/r/cryptoKeys/k",
                  FAKE_INBOX_LOCATION="europe-west4")),
    ]
    granted = {(member, role) for run in runs for _, _, member, role in run.bindings()}
    granted |= {(flag(c, "--member"), "roles/run.invoker")
                for run in runs for c in run.matching("functions", "add-invoker-policy-binding")}
    identities = {f"serviceAccount:{RUNTIME_SA}": "Runtime service account",
                  HEALTHCARE_AGENT: "Cloud Healthcare service agent",
                  PUBSUB_AGENT: "Pub/Sub service agent",
                  f"serviceAccount:{GCS_AGENT}": "Cloud Storage service agent",
                  SCHEDULER_AGENT: "Cloud Scheduler service agent"}
    sections = security_sections()
    missing = []
    for member, role in sorted(granted):
        assert member in identities, f"deploy.sh grants {role} to {member}: add the identity to docs/security.md"
        if f"`{role.replace(f'projects/{PROJECT}/roles/', 'projects/P/roles/')}`" not in sections[identities[member]]:
            missing.append(f"{role} ({identities[member]})")
    assert not missing, f"docs/security.md does not list: {missing}"
    assert len(granted) >= 15


def test_security_md_names_every_function_and_every_topic_deploy_sh_creates(env):
    run = ok(deploy(env, *REQUIRED))
    runtime = security_sections()["Runtime service account"]
    assert [fn for fn in deploys(run) if f"`{fn}`" not in runtime] == [], "the runtime account runs every function"
    text = (REPO / "docs" / "security.md").read_text()
    publishers = text.split("\n## Who may publish to each topic\n")[1].split("\n## ")[0]
    topics = {c[3] for c in run.matching("pubsub", "topics", "create")}
    assert len(topics) >= 6 and [t for t in sorted(topics) if f"`{t}`" not in publishers] == []


def test_security_md_names_every_state_bucket_folder_and_its_retention():
    """Each folder the function writes in the state bucket (deploy.sh's lifecycle list) has its row in
    "Where patient data and object names rest", and the rows under the 30-day rule say 30 days."""
    script = (REPO / "deploy.sh").read_text()
    listed = script.split("readonly STATE_EXPIRING_PREFIXES=(", 1)[1].split(")", 1)[0].split()
    assert "replaced/" in listed and "replacements/" in listed
    text = (REPO / "docs" / "security.md").read_text()
    table = text.split("\n## Where patient data and object names rest\n")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    missing = [prefix for prefix in [*listed, "staging/", "reconcile/"]
               if not [row for row in rows if f"`{prefix}" in row.split(" | ")[0]]]
    assert not missing, f"docs/security.md's data table has no row for the state bucket's {missing}"
    for prefix in ("replaced/", "replacements/"):
        row = next(row for row in rows if f"`{prefix}" in row.split(" | ")[0])
        assert "30 days" in row, row


# ---------------------------------------------------------------- failure policies (config on_failure)

QUARANTINE = "rad-quarantine"


def policies_config(env: dict) -> str:
    """config/policies.yaml: the repository's config with a tag rule and a quarantine-and-move rule."""
    (env["src"] / "config").mkdir(exist_ok=True)
    text = (REPO / "config.yaml").read_text().replace("rules:\n", f"""rules:
  - name: tagged
    match: gs://${{INBOX_BUCKET}}/tagged/**.dcm
    store: main
    on_failure: tag   # on_failure: {{quarantine: gs://commented-out-bucket/}}
  - name: moved
    match: gs://${{INBOX_BUCKET}}/moved/**.dcm
    store: main
    on_failure: {{quarantine: "gs://{QUARANTINE}/failed/", move: true}}
    on_conflict: replace
""", 1)
    (env["src"] / "config" / "policies.yaml").write_text(text)
    return "config/policies.yaml"


def test_failure_policies_get_exactly_their_permissions(env):
    sa = f"serviceAccount:{RUNTIME_SA}"
    default = ok(deploy(env, *REQUIRED))
    default_bindings, default_roles = default.bindings(), default.matching("iam", "roles")
    env["log"].unlink()
    run = ok(deploy(env, *REQUIRED, "--config", policies_config(env)))
    added = run.bindings() - default_bindings
    assert added == {
        ("storage buckets", f"gs://{INBOX}", sa, f"projects/{PROJECT}/roles/dicomImportTagFailed"),
        ("storage buckets", f"gs://{INBOX}", sa, f"projects/{PROJECT}/roles/dicomImportMoveFailed"),
        ("storage buckets", f"gs://{QUARANTINE}", sa, "roles/storage.objectCreator"),
        ("storage buckets", f"gs://{QUARANTINE}", sa, "roles/storage.objectViewer"),
    }
    roles = {c[3]: flag(c, "--permissions") for c in run.matching("iam", "roles", "create")}
    assert roles == {"dicomImportTagFailed": "storage.objects.update", "dicomImportMoveFailed": "storage.objects.delete",
                     "dicomImportStore": STORE_PERMISSIONS + ",healthcare.dicomStores.dicomWebDelete"}  # on_conflict: replace
    assert {c[3] for c in default_roles if c[2] == "create"} == {"dicomImportStore"}, \
        "the default config (on_failure: report, on_conflict: keep) needs no role on the inbox, nor DeleteInstance"
    assert ("projects", PROJECT, sa, "roles/logging.viewer") in default_bindings


# Valid YAML the functions' loader reads as tag, quarantine with move, and replace, which a grep for
# "on_failure: tag" or "move: true" misses: quoted keys, a flow mapping over two lines, an alias.
SPELLED_POLICIES = """rules:
  - name: held
    match: gs://${INBOX_BUCKET}/held/**.dcm
    store: main
    "on_failure": {"quarantine": "gs://${HELD_BUCKET:-rad-held}/x/", 'move':
       yes}
  - name: tagged
    match: gs://${INBOX_BUCKET}/tagged/**.dcm
    store: main
    on_failure: &tagged "tag"
    'on_conflict': "replace"
  - {name: also-tagged, match: "gs://${INBOX_BUCKET}/also/**.dcm", store: main, on_failure: *tagged}
"""


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["real", "dry-run"])
def test_policies_are_granted_as_the_functions_loader_reads_them(env, tmp_path, dry_run):
    """A policy the function performs without its grant fails with 403 at run time."""
    sa = f"serviceAccount:{RUNTIME_SA}"
    (env["src"] / "config").mkdir()
    config = env["src"] / "config" / "spelled.yaml"
    config.write_text((REPO / "config.yaml").read_text().replace("rules:\n", SPELLED_POLICIES, 1))
    run = ok(deploy(env, *REQUIRED, "--config", "config/spelled.yaml", *dry_run))
    if dry_run:  # what the printed script runs
        script = tmp_path / "printed.sh"
        script.write_text(run.stdout)
        run = ok(deploy(env, script=script))
    assert {
        ("storage buckets", f"gs://{INBOX}", sa, f"projects/{PROJECT}/roles/dicomImportTagFailed"),
        ("storage buckets", f"gs://{INBOX}", sa, f"projects/{PROJECT}/roles/dicomImportMoveFailed"),
        ("storage buckets", "gs://rad-held", sa, "roles/storage.objectCreator"),
        ("storage buckets", "gs://rad-held", sa, "roles/storage.objectViewer"),
    } <= run.bindings()
    assert store_role_permissions(run) == {
        ("create", PROJECT): STORE_PERMISSIONS + ",healthcare.dicomStores.dicomWebDelete"}
    assert not run.matching("storage", "buckets", "remove-iam-policy-binding", f"gs://{INBOX}")


def test_a_policy_the_config_no_longer_uses_loses_its_inbox_role(env):
    """tag and move taken out of the config: their roles' bindings on the inbox are removed; a quarantine
    bucket's are not (deploy.sh cannot know the buckets earlier configs named), and deploy.sh says so."""
    sa = f"serviceAccount:{RUNTIME_SA}"
    using = ok(deploy(env, *REQUIRED, "--config", policies_config(env), scenario="existing"))
    assert not using.matching("storage", "buckets", "remove-iam-policy-binding", f"gs://{INBOX}")
    env["log"].unlink()
    dropped = ok(deploy(env, *REQUIRED, scenario="existing"))
    removed = {(flag(c, "--member"), flag(c, "--role"), flag(c, "--condition"))
               for c in dropped.matching("storage", "buckets", "remove-iam-policy-binding", f"gs://{INBOX}")}
    assert removed == {(sa, f"projects/{PROJECT}/roles/{role}", "None")
                       for role in ("dicomImportTagFailed", "dicomImportMoveFailed")}
    # After the functions: the revisions they replace may still tag or move until then.
    assert dropped.index("storage", "buckets", "remove-iam-policy-binding", f"gs://{INBOX}") > max(
        dropped.calls.index(call) for call in dropped.matching("functions", "deploy"))
    assert not any("dicomImport" in role and "Failed" in role for _, _, _, role in dropped.bindings())
    assert "quarantine buckets that earlier configs named and config.yaml does not" in dropped.stderr


# YAML 1.1's true in its three cases, and near misses (PyYAML reads y, tRUE and off as no true).
MOVE_SPELLINGS = [*(spelling for word in ("true", "yes", "on") for spelling in (word, word.title(), word.upper())),
                  "y", "Y", "tRUE", "off"]


@pytest.mark.parametrize("spelling", MOVE_SPELLINGS)
def test_move_is_granted_for_every_spelling_the_functions_loader_reads_as_true(env, spelling):
    """A move the function performs without dicomImportMoveFailed fails its delete with 403."""
    from handlers.config import ConfigError, load
    from tests.unit.config_env import CONFIG_ENV

    config = env["src"] / policies_config(env)
    config.write_text(config.read_text().replace("move: true}", f"move: {spelling}}}"))
    try:
        moves = load(config, {**CONFIG_ENV, "EXPORT_BUCKET": "rad-exports"}).rule_named("moved").on_failure.move
    except ConfigError:  # the function would refuse the config: so does deploy.sh, before any call
        run = deploy(env, *REQUIRED, "--config", "config/policies.yaml", "--dry-run")
        assert run.returncode == 2 and "would not load in the functions" in run.stderr
        return
    run = ok(deploy(env, *REQUIRED, "--config", "config/policies.yaml", "--dry-run"))
    granted = [line for line in run.stdout.splitlines() if "add-iam-policy-binding" in line]
    assert any("roles/dicomImportMoveFailed" in line for line in granted) == moves


STORE_PERMISSIONS = "healthcare.dicomStores.import,healthcare.dicomStores.export,healthcare.dicomStores.dicomWebRead"


def store_role_permissions(run: Run) -> dict[tuple[str, str], str]:
    """(verb, project) -> --permissions of each create or update of the store's custom role."""
    return {(c[2], flag(c, "--project")): flag(c, "--permissions")
            for c in run.calls if c[:2] == ["iam", "roles"] and c[3:4] == ["dicomImportStore"] and c[2] != "describe"}


REPLACING_RULES = [
    "  - name: resent\n    match: gs://${INBOX_BUCKET}/resent/**.dcm\n    store: main\n    on_conflict: replace\n",
    "  - name: resent\n    match: gs://${INBOX_BUCKET}/resent/**.dcm\n    store: main\n    on_conflict: \"replace\"  # re-sends\n",
    "  - {name: resent, match: \"gs://${INBOX_BUCKET}/resent/**.dcm\", store: main, on_conflict: 'replace'}\n",
]


@pytest.mark.parametrize("replacing", REPLACING_RULES, ids=["block", "quoted", "flow"])
def test_the_store_role_has_delete_only_when_a_rule_replaces(env, replacing):
    """The intake runs on untrusted uploads: it holds import, export and read, never STOW, and
    DeleteInstance only for on_conflict: replace (the one caller of delete_instance)."""
    sa = f"serviceAccount:{RUNTIME_SA}"
    default = ok(deploy(env, *REQUIRED))
    assert store_role_permissions(default) == {("create", PROJECT): STORE_PERMISSIONS}
    assert ("healthcare dicom-stores", "main", sa, "roles/healthcare.dicomEditor") not in default.bindings()
    (removal,) = default.matching("healthcare", "dicom-stores", "remove-iam-policy-binding")
    assert (removal[3], flag(removal, "--member"), flag(removal, "--role"), flag(removal, "--condition")) == (
        "main", sa, "roles/healthcare.dicomEditor", "None")
    assert default.calls.index(removal) > default.index("healthcare", "dicom-stores", "add-iam-policy-binding")

    (env["src"] / "config").mkdir(exist_ok=True)
    text = (REPO / "config.yaml").read_text().replace("rules:\n", "rules:\n" + replacing, 1)
    (env["src"] / "config" / "replace.yaml").write_text(text)
    env["log"].unlink()
    replacing = ok(deploy(env, *REQUIRED, "--config", "config/replace.yaml", scenario="existing"))
    assert store_role_permissions(replacing) == {
        ("update", PROJECT): STORE_PERMISSIONS + ",healthcare.dicomStores.dicomWebDelete"}
    # Back to keep: the role is set back to its three permissions (update replaces the set).
    env["log"].unlink()
    assert store_role_permissions(ok(deploy(env, *REQUIRED, scenario="existing"))) == {("update", PROJECT): STORE_PERMISSIONS}


def test_a_commented_out_replace_grants_no_delete(env):
    (env["src"] / "config").mkdir(exist_ok=True)
    text = (REPO / "config.yaml").read_text().replace("rules:\n", """rules:
  - name: kept
    match: gs://${INBOX_BUCKET}/kept/**.dcm
    store: main
#   on_conflict: replace
""", 1)
    (env["src"] / "config" / "keep.yaml").write_text(text)
    assert store_role_permissions(ok(deploy(env, *REQUIRED, "--config", "config/keep.yaml"))) == {
        ("create", PROJECT): STORE_PERMISSIONS}


def test_a_store_in_another_project_gets_the_role_from_that_project(env):
    """A project's custom role can be granted only on that project's resources."""
    store = STORE.replace(f"projects/{PROJECT}/", "projects/store-proj/")
    run = ok(deploy(env, *[store if arg == STORE else arg for arg in REQUIRED]))
    assert store_role_permissions(run) == {("create", "store-proj"): STORE_PERMISSIONS}
    assert ("healthcare dicom-stores", "main", f"serviceAccount:{RUNTIME_SA}",
            "projects/store-proj/roles/dicomImportStore") in run.bindings()


def test_a_store_in_another_project_gets_the_log_reader_where_its_import_logs_are(env):
    """The Healthcare API writes an import's per-file entries in the store's project: read there, not here."""
    store = STORE.replace(f"projects/{PROJECT}/", "projects/store-proj/")
    run = ok(deploy(env, *[store if arg == STORE else arg for arg in REQUIRED]))
    sa = f"serviceAccount:{RUNTIME_SA}"
    assert ("projects", "store-proj", sa, "roles/logging.viewer") in run.bindings()
    assert ("projects", PROJECT, sa, "roles/logging.viewer") not in run.bindings()


def test_a_quarantine_bucket_is_read_through_defaults_and_a_bad_one_exits_2(env):
    (env["src"] / "config").mkdir()
    base = (REPO / "config.yaml").read_text()
    (env["src"] / "config" / "defaulted.yaml").write_text(base.replace(
        "    store: main\n", "    store: main\n    on_failure: {quarantine: 'gs://${QUARANTINE_BUCKET:-rad-held}/x/'}\n", 1))
    run = ok(deploy(env, *REQUIRED, "--config", "config/defaulted.yaml"))
    assert {("storage buckets", "gs://rad-held", f"serviceAccount:{RUNTIME_SA}", role)
            for role in ("roles/storage.objectCreator", "roles/storage.objectViewer")} <= run.bindings()
    (env["src"] / "config" / "odd.yaml").write_text(base.replace(
        "    store: main\n", "    store: main\n    on_failure: {quarantine: 'gs://Rad_Held/x/'}\n", 1))
    env["log"].unlink()
    run = deploy(env, *REQUIRED, "--config", "config/odd.yaml")
    assert run.returncode == 2 and run.calls == []  # the functions' loader refuses it
    assert "bucket 'Rad_Held' in 'gs://Rad_Held/x/' is not a valid bucket name" in run.stderr
    # A dotted name may have 222 characters (each part at most 63): deploy.sh grants on it as the loader reads it.
    long_name = "rad." * 16 + "held"
    (env["src"] / "config" / "long.yaml").write_text(base.replace(
        "    store: main\n", f"    store: main\n    on_failure: {{quarantine: 'gs://{long_name}/x/'}}\n", 1))
    run = ok(deploy(env, *REQUIRED, "--config", "config/long.yaml"))
    assert ("storage buckets", f"gs://{long_name}", f"serviceAccount:{RUNTIME_SA}",
            "roles/storage.objectCreator") in run.bindings()


# ---------------------------------------------------------------- failures


def test_iam_binding_is_retried_while_a_new_service_account_propagates(env):
    run = ok(deploy(env, *REQUIRED, FAKE_GCLOUD_FAIL="healthcare dicom-stores add-iam-policy-binding",
                    FAKE_GCLOUD_FAIL_TIMES="2"))
    assert len(run.matching("healthcare", "dicom-stores", "add-iam-policy-binding")) == 3
    assert len(deploys(run)) == len(FUNCTIONS)


def test_missing_inbox_stops_before_creating_anything(env):
    run = deploy(env, *REQUIRED, FAKE_GCLOUD_FAIL=f"storage buckets describe gs://{INBOX} ")
    assert run.returncode == 1
    assert "--inbox-bucket" in run.stderr and f"gs://{INBOX}" in run.stderr
    assert not [c for c in run.calls if is_create(c) or "add-iam-policy-binding" in c]
    assert not run.matching("functions", "deploy")


def test_a_failed_deploy_stops_the_script(env):
    run = deploy(env, *REQUIRED, FAKE_GCLOUD_FAIL="functions deploy dicom-import-followup ")
    assert run.returncode == 1
    assert set(deploys(run)) == {"dicom-import-intake", "dicom-import-followup"}
    assert not run.matching("pubsub", "subscriptions", "update")


def without(args: list[str], name: str) -> list[str]:
    i = args.index(name)
    return args[:i] + args[i + 2:]


def replace(args: list[str], name: str, value: str) -> list[str]:
    i = args.index(name)
    return args[:i + 1] + [value] + args[i + 2:]


BAD_INPUT = [
    pytest.param(without(REQUIRED, "--project"), "--project", id="no-project"),
    pytest.param(without(REQUIRED, "--region"), "--region", id="no-region"),
    pytest.param(without(REQUIRED, "--inbox-bucket"), "--inbox-bucket", id="no-inbox"),
    pytest.param(without(REQUIRED, "--state-bucket"), "--state-bucket", id="no-state"),
    pytest.param(without(REQUIRED, "--dicom-store"), "--dicom-store", id="no-store"),
    pytest.param(replace(REQUIRED, "--dicom-store", "projects/p/datasets/d/dicomStores/s"), "--dicom-store", id="store-no-location"),
    pytest.param(replace(REQUIRED, "--dicom-store", "main"), "--dicom-store", id="store-short-name"),
    pytest.param(replace(REQUIRED, "--inbox-bucket", "Rad_Inbox"), "--inbox-bucket", id="bucket-uppercase"),
    pytest.param(replace(REQUIRED, "--inbox-bucket", "gs://rad-inbox/incoming"), "--inbox-bucket", id="bucket-with-folder"),
    pytest.param(replace(REQUIRED, "--state-bucket", "ab"), "--state-bucket", id="bucket-too-short"),
    pytest.param(replace(REQUIRED, "--state-bucket", INBOX), "--state-bucket", id="state-is-inbox"),
    pytest.param(REQUIRED + ["--export-bucket", INBOX], "--export-bucket", id="export-is-inbox"),
    pytest.param(replace(REQUIRED, "--project", "Dicom Prod"), "--project", id="project-name"),
    pytest.param(replace(REQUIRED, "--region", "europe"), "--region", id="region"),
    pytest.param(REQUIRED + ["--results-topic", "projects/other-proj/topics/r"], "--results-topic", id="topic-other-project"),
    pytest.param(REQUIRED + ["--followup-topic", "dicom-import-results"], "--followup-topic", id="topics-collide"),
    pytest.param(REQUIRED + ["--concurrency", "0"], "--concurrency", id="concurrency-zero"),
    pytest.param(REQUIRED + ["--concurrency", "lots"], "--concurrency", id="concurrency-word"),
    pytest.param(REQUIRED + ["--max-instances", "-1"], "--max-instances", id="max-instances-negative"),
    pytest.param(REQUIRED + ["--concurrency", "8", "--cpu", ".5"], "--cpu", id="concurrency-needs-cpu"),
    pytest.param(REQUIRED + ["--memory", "512"], "--memory", id="memory-no-unit"),
    pytest.param(REQUIRED + ["--config", "nope.yaml"], "--config", id="config-missing"),
    pytest.param(REQUIRED + ["--config", "/etc/hostname"], "--config", id="config-outside-source"),
    pytest.param(REQUIRED + ["--alert-email", "oncall"], "--alert-email", id="alert-email-not-an-address"),
    pytest.param(REQUIRED + ["--alert-channel", "oncall-slack"], "--alert-channel", id="alert-channel-not-a-name"),
    pytest.param(REQUIRED + ["--kms-key", "projects/dicom-keys-1/keyRings/r/cryptoKeys/k"], "--kms-key", id="kms-key-no-location"),
    pytest.param(REQUIRED + ["--kms-key", "projects/dicom-keys-1/locations/global/keyRings/r/cryptoKeys/k"], "--kms-key",
                 id="kms-key-global"),
    pytest.param(REQUIRED + ["--results-table", "dicom_import.results"], "--results-table", id="results-table-no-project"),
    pytest.param(REQUIRED + ["--results-table", f"{PROJECT}:dicom-import.results"], "--results-table",
                 id="results-table-dataset-with-dash"),
    pytest.param(REQUIRED + ["--reconcile-schedule", "hourly"], "--reconcile-schedule", id="schedule-not-cron"),
    pytest.param(REQUIRED + ["--reconcile-schedule", "0 * * *"], "--reconcile-schedule", id="schedule-four-fields"),
    pytest.param(REQUIRED + ["--reconcile-topic", "dicom-import-results"], "--reconcile-topic",
                 id="reconcile-topic-collides"),
    pytest.param(REQUIRED + ["--followup-budget", "4m"], "--followup-budget", id="followup-budget-unit"),
    pytest.param(REQUIRED + ["--failure-logs-wait", "0"], "--failure-logs-wait", id="failure-logs-wait-zero"),
    pytest.param(REQUIRED + ["--failure-verify", "7200"], "--failure-verify", id="failure-verify-above-an-hour"),
    pytest.param(REQUIRED + ["--followup-budget", "600"], "--followup-budget", id="followup-budget-over-timeout"),
    pytest.param(REQUIRED + ["--hash-key-secret", f"projects/{PROJECT}/secrets/k"], "--hash-key-secret",
                 id="hash-key-secret-not-an-id"),
    pytest.param(REQUIRED + ["--regoin", "x"], "--regoin", id="unknown-flag"),
    pytest.param(REQUIRED + ["--project"], "--project", id="flag-without-value"),
]


@pytest.mark.parametrize("args,named", BAD_INPUT)
def test_bad_input_exits_2_naming_the_flag_before_any_call(env, args, named):
    run = deploy(env, *args)
    assert run.returncode == 2, run.stderr
    assert named in run.stderr
    assert run.stderr.startswith("deploy.sh: error: ")
    assert run.calls == [] and run.stdout == ""


@pytest.mark.parametrize("args,named", [p for p in BAD_INPUT if p.id in ("no-store", "bucket-uppercase", "concurrency-needs-cpu")])
def test_dry_run_validates_too(env, args, named):
    run = deploy(env, *args, "--dry-run")
    assert run.returncode == 2 and named in run.stderr
    assert run.stdout == ""


def test_config_using_a_variable_deploy_does_not_set_exits_2(env):
    config = env["src"] / "config.yaml"
    config.write_text(config.read_text() + "\n# ${IGNORED_IN_A_COMMENT}\nextra: ${SITE_CODE}\n")
    run = deploy(env, *REQUIRED)
    assert run.returncode == 2 and run.calls == []
    assert "${SITE_CODE}" in run.stderr and "IGNORED_IN_A_COMMENT" not in run.stderr


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["real", "dry-run"])
def test_a_config_the_functions_would_refuse_stops_before_any_call(env, dry_run):
    """deploy.sh's own checks read only ${VARS} and policies; python -m handlers check-config reads the rest."""
    config = env["src"] / "config.yaml"
    config.write_text(config.read_text().replace("max_objects: 500", "max_objects: 0"))
    run = deploy(env, *REQUIRED, *dry_run)
    assert run.returncode == 2 and run.calls == [] and run.stdout == ""
    assert "config.yaml:23: max_objects must be between 1 and 100000, got 0\n" in run.stderr
    assert "deploy.sh: error: config.yaml would not load in the functions" in run.stderr


def test_the_config_is_checked_with_the_functions_environment_only(env):
    """The operator's shell (a local stack's variables, KMS_KEY) does not reach the check: the function's would not."""
    config = env["src"] / "config.yaml"
    config.write_text(config.read_text().replace("max_objects: 500", "max_objects: ${SITE_MAX:-500}"))
    ok(deploy(env, *REQUIRED, "--dry-run", SITE_MAX="0", STORAGE_EMULATOR_HOST="127.0.0.1:9"))


def test_without_a_python_to_check_the_config_nothing_is_called(env):
    run = deploy(env, *REQUIRED, PYTHON="/nonexistent/python3")
    assert run.returncode == 2 and run.calls == []
    assert "cannot check config.yaml: '/nonexistent/python3' cannot import PyYAML" in run.stderr
    assert "run make venv, or set PYTHON" in run.stderr


def test_help_exits_0_and_lists_every_flag(env):
    without_python = {key: value for key, value in env["vars"].items() if key != "PYTHON"}
    assert ok(deploy({**env, "vars": without_python}, "--help")).stdout.count("$PYTHON") == 1  # set -u: not expanded
    run = ok(deploy(env, "--help"))
    for name in ("--project", "--region", "--inbox-bucket", "--state-bucket", "--dicom-store", "--results-topic",
                 "--followup-topic", "--export-requests-topic", "--reconcile-topic", "--reconcile-schedule",
                 "--export-bucket", "--concurrency",
                 "--max-instances", "--memory", "--cpu", "--followup-budget", "--failure-logs-wait", "--failure-verify",
                 "--config", "--alert-email", "--alert-channel", "--kms-key",
                 "--results-table", "--hash-key-secret", "--dry-run"):
        assert name in run.stdout, name
    assert run.calls == []


# ---------------------------------------------------------------- against the real gcloud CLI


def real_gcloud() -> str:
    """The installed gcloud: these tests fail, never skip, without it."""
    found = shutil.which("gcloud")
    assert found, google_sdk.NOT_INSTALLED
    return found


# Parses commands with the installed SDK's own CLI, in one process: starting
# gcloud once per command would take about a second each.
PARSE_WITH_GCLOUD = r"""
import json, sys
try:
    from googlecloudsdk import gcloud_main
    cli = gcloud_main.CreateCLI([])
except Exception as error:
    print("cannot load the gcloud CLI:", repr(error))
    sys.exit(99)
for line in sys.stdin:
    argv = json.loads(line)
    sys.stderr.write("\n@@@ " + json.dumps(argv) + "\n")
    sys.stderr.flush()
    try:
        cli.Execute(argv)
    except SystemExit:
        pass
    except BaseException as error:
        sys.stderr.write(repr(error) + "\n")
    sys.stderr.flush()
"""


def parse_with_gcloud(commands: list[list[str]], tmp_path: Path) -> dict[tuple[str, ...], str]:
    """gcloud's output for each command, run with an empty configuration (no account)."""
    sdk = Path(os.path.realpath(real_gcloud())).parent.parent
    bundled = sdk / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = str(bundled) if bundled.exists() else sys.executable
    config = tmp_path / "gcloud-config"
    config.mkdir()
    isolated = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8",
        "PYTHONPATH": f"{sdk / 'lib' / 'third_party'}{os.pathsep}{sdk / 'lib'}",
        "CLOUDSDK_CONFIG": str(config),  # no account, so nothing can reach Google
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    }
    proc = subprocess.run([python, "-c", PARSE_WITH_GCLOUD], input="".join(json.dumps(c) + "\n" for c in commands),
                          env=isolated, capture_output=True, text=True, timeout=300)
    if proc.returncode == 99:
        pytest.fail(proc.stdout.strip())
    outputs = {}
    for section in proc.stderr.split("\n@@@ ")[1:]:
        argv, _, output = section.partition("\n")
        outputs[tuple(json.loads(argv))] = output
    assert set(outputs) == {tuple(c) for c in commands}, proc.stderr[-2000:]
    return outputs


def parse_with_bq(commands: list[tuple[str, ...]], tmp_path: Path) -> dict[tuple[str, ...], str]:
    """bq's output for each command, run as the SDK's bq.py with an empty configuration: it parses
    its flags (an unknown one is fatal) before it asks gcloud for credentials, which fails."""
    sdk = Path(os.path.realpath(real_gcloud())).parent.parent
    bundled = sdk / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = str(bundled) if bundled.exists() else sys.executable
    config = tmp_path / "bq-gcloud-config"
    config.mkdir(exist_ok=True)
    isolated = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", "CLOUDSDK_CONFIG": str(config),
                "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false"}
    outputs = {}
    for argv in commands:
        proc = subprocess.run([python, str(sdk / "platform" / "bq" / "bq.py"), *argv[1:]], env=isolated,
                              capture_output=True, text=True, timeout=120)
        outputs[argv] = " ".join((proc.stdout + proc.stderr).split())  # bq wraps its messages
    return outputs


def test_real_gcloud_accepts_every_command_and_flag(env, tmp_path):
    """Every recorded command parses with the installed gcloud: it stops at the credential check,
    which comes after argument parsing (an unknown flag or bad choice fails before it)."""
    printed = tmp_path / "printed.sh"
    printed.write_text(ok(deploy(env, *REQUIRED, *OPTIONS, "--export-bucket", "rad-exports", "--dry-run")).stdout)
    runs = [
        ok(deploy(env, *REQUIRED, *TUNING, "--export-bucket", "rad-exports")),
        ok(deploy(env, *REQUIRED, scenario="existing")),
        ok(deploy(env, script=printed)),  # what --dry-run with the alert, key and table options prints
        ok(deploy(env, *REQUIRED, *OPTIONS, scenario="existing")),
        ok(deploy(env, *REQUIRED, "--config", policies_config(env))),
        ok(deploy(env, *REQUIRED, "--config", policies_config(env), scenario="existing")),
    ]
    lifecycle = tmp_path / "lifecycle.json"
    lifecycle.write_text('{"rule": []}')
    everything = {tuple(a if not a.startswith("--lifecycle-file=") else f"--lifecycle-file={lifecycle}" for a in c)
                  for run in runs for c in run.calls}
    commands = sorted(c for c in everything if c[0] != "bq")
    assert len(commands) >= 40
    for group in (("kms", "keys"), ("logging", "metrics"), ("monitoring", "dashboards"), ("alpha", "monitoring"),
                  ("beta", "monitoring"), ("pubsub", "topics", "update"), ("iam", "roles", "create"),
                  ("iam", "roles", "update")):
        assert any(c[:len(group)] == group for c in commands), group
    bq_outputs = parse_with_bq(sorted(c for c in everything if c[0] == "bq") + [("bq", "mk", "--tabel", "p:d.t")], tmp_path)
    assert "Unknown command line flag 'tabel'" in bq_outputs[("bq", "mk", "--tabel", "p:d.t")]
    bq_rejected = [f"{' '.join(argv)}\n  -> {output.strip()[:300]}" for argv, output in bq_outputs.items()
                   if "--tabel" not in argv and "Error retrieving auth credentials" not in output]
    assert not bq_rejected, "\n".join(bq_rejected)
    outputs = parse_with_gcloud([list(c) for c in commands] + [["pubsub", "topics", "create", "t", "--retry"]], tmp_path)

    # The check itself can fail: a flag gcloud does not know is reported.
    assert "unrecognized arguments: --retry" in outputs[("pubsub", "topics", "create", "t", "--retry")]
    rejected = [f"gcloud {' '.join(argv)}\n  -> {(outputs[argv].strip().splitlines() or ['(no output)'])[0]}"
                for argv in commands if "do not currently have an active account" not in outputs[argv]]
    assert not rejected, "\n".join(rejected)


def test_gcloudignore_uploads_only_what_the_function_needs(tmp_path):
    tree = tmp_path / "tree"
    files = [
        "main.py", "requirements.txt", "config.yaml", "config.site-b.yaml", "config/site-c.yaml",
        "handlers/__init__.py", "handlers/batch/intake.py", "handlers/__pycache__/intake.cpython-312.pyc",
        "handlers/__main__.py", "handlers/cli/__init__.py", "handlers/cli/export.py", "requirements-dev.txt", "deploy.sh", "README.md", "Makefile", ".gitignore",
        "tests/unit/test_x.py", "emulator/server.py", "localstack/up.py", "bench/run.py", "docs/deploy.md",
        ".venv/lib/site.py", ".local/stack.env", ".pytest_cache/v/x", ".ci/run", "schema/result.json",
    ]
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    shutil.copy2(REPO / ".gcloudignore", tree / ".gcloudignore")
    proc = subprocess.run([real_gcloud(), "meta", "list-files-for-upload", str(tree)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "cfg")})
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == {
        "main.py", "requirements.txt", "config.yaml", "config.site-b.yaml", "config/site-c.yaml",
        "handlers/__init__.py", "handlers/batch/intake.py",
    }
