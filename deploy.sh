#!/usr/bin/env bash
# deploy.sh: idempotent production deployment of the DICOM import functions
# (Cloud Run functions, 2nd gen) and everything they need, with gcloud.
#
# Re-running it converges: resources are created only when `describe` says
# they are missing, IAM bindings are added (add-iam-policy-binding is a no-op
# when the binding exists), and `gcloud functions deploy` is an upsert.
# `--dry-run` prints every command as a runnable shell script and runs nothing.
# Reference: docs/deploy.md.
# Single-quoted ${...} below is printed on purpose (dry-run placeholders):
# shellcheck disable=SC2016
set -euo pipefail

SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SOURCE_DIR

readonly FN_INTAKE=dicom-import-intake
readonly FN_FOLLOWUP=dicom-import-followup
readonly FN_EXPORT=dicom-export-request
readonly FN_RECONCILE=dicom-import-reconcile
readonly SCHEDULER_JOB=dicom-import-reconcile   # Cloud Scheduler job that fires ${FN_RECONCILE}
readonly RUNTIME=python312
readonly FUNCTION_TIMEOUT=540s     # the maximum for event-driven functions
readonly SA_NAME=dicom-import-fn
readonly LABELS=app=dicom-import
readonly FINALIZED_EVENT=google.cloud.storage.object.v1.finalized
# The triggers' subscriptions (created by Eventarc). The follow-up and export
# functions fail on purpose while an operation runs, so Pub/Sub redelivers
# with exponential backoff between these bounds; the ack deadline (how long a
# push waits for the function) is above the function timeout.
readonly TRIGGER_ACK_DEADLINE=600
readonly TRIGGER_MIN_RETRY_DELAY=10s
readonly TRIGGER_MAX_RETRY_DELAY=600s
# Eventarc keeps undelivered messages 24 h; a follow-up or export may be
# redelivered until followup.deadline_hours, and an outage may last longer.
readonly TRIGGER_RETENTION=7d
readonly FOLLOWUP_MAX_DELIVERY_ATTEMPTS=100   # Pub/Sub's maximum
# --followup-budget: a delivery needs time after its budget to hand over within FUNCTION_TIMEOUT.
readonly MAX_FOLLOWUP_BUDGET=480
# --failure-logs-wait, --failure-verify: spread over deliveries (each hands over), an hour at most.
readonly MAX_FAILURE_SECONDS=3600
# 100 attempts at most 600 s apart cover at least this many hours of
# redelivery before a follow-up is dead-lettered (more when runs are long).
readonly DEAD_LETTER_RETENTION=7d
# The operators' results subscription (python -m handlers tail): a backlog nobody tails expires.
readonly OPS_RETENTION=1d
readonly STAGING_RETENTION_DAYS=7
readonly STATE_RETENTION_DAYS=30
# The state bucket's folders that expire after STATE_RETENTION_DAYS: every one the function writes
# (handlers/batch/layout.py, handlers/failures/replace.py, handlers/exports/job.py) except staging/
# (its own, shorter rule) and reconcile/: its checkpoint must outlive a month without sweeps, or the
# next sweep would start over at first_window_hours without naming the span it passes over.
readonly STATE_EXPIRING_PREFIXES=(leases/ seals/ claims/ members/ batches/ operations/ failures/ failed/
  replacements/ replaced/ exports/)
# Custom roles holding exactly what the config's failure policies do to the
# inbox (a role per permission, bound only when a rule uses the policy).
readonly TAG_ROLE_ID=dicomImportTagFailed         # on_failure: tag
# The runtime account's role on the DICOM store (in the store's project): what the code calls there.
readonly STORE_ROLE_ID=dicomImportStore
readonly MOVE_ROLE_ID=dicomImportMoveFailed       # on_failure: {quarantine: ..., move: true}
readonly APIS=(
  healthcare.googleapis.com cloudfunctions.googleapis.com run.googleapis.com
  eventarc.googleapis.com pubsub.googleapis.com storage.googleapis.com
  cloudbuild.googleapis.com artifactregistry.googleapis.com logging.googleapis.com
  monitoring.googleapis.com cloudscheduler.googleapis.com
)
# Paths the deployed source keeps (see .gcloudignore); --config must be one.
readonly CONFIG_PATTERN='^(config\.yaml|config\.[A-Za-z0-9_-]+\.yaml|config/[A-Za-z0-9_./-]+\.yaml)$'

usage() {
  cat <<EOF
Usage: ./deploy.sh --project P --region R --inbox-bucket B --state-bucket B --dicom-store NAME [options]

Deploys ${FN_INTAKE}, ${FN_FOLLOWUP}, ${FN_EXPORT} and ${FN_RECONCILE} (fired by the
Cloud Scheduler job ${SCHEDULER_JOB}) with their service account, topics, state bucket and
IAM bindings. Safe to re-run. Details: docs/deploy.md.

Required (flag, or the environment variable in brackets):
  --project ID              project to deploy into            [GOOGLE_CLOUD_PROJECT]
  --region REGION           region of the functions           [FUNCTION_REGION]
  --inbox-bucket NAME       bucket the DICOM files land in; must exist   [INBOX_BUCKET]
  --state-bucket NAME       bucket for staging copies, leases, manifests;
                            created if missing, in the inbox's location  [STATE_BUCKET]
  --dicom-store NAME        projects/P/locations/L/datasets/D/dicomStores/S  [DICOM_STORE]

Options:
  --results-topic ID        results topic (default dicom-import-results)      [RESULTS_TOPIC]
  --followup-topic ID       follow-up topic (default dicom-import-followups)  [FOLLOWUP_TOPIC]
  --export-requests-topic ID  export requests topic (default dicom-export-requests)
                                                                       [EXPORT_REQUESTS_TOPIC]
  --reconcile-topic ID      topic of the reconcile schedule (default dicom-import-reconcile)
                                                                             [RECONCILE_TOPIC]
  --reconcile-schedule CRON when the reconcile sweep runs, 5-field cron in UTC
                            (default "0 * * * *": hourly)                [RECONCILE_SCHEDULE]
  --export-bucket NAME      export destination, created if missing beside the inbox;
                            the Healthcare service agent gets objectAdmin on it
                            (default: none)                                  [EXPORT_BUCKET]
  --concurrency N           requests per instance, 1..1000 (default 80)  [FUNCTION_CONCURRENCY]
  --max-instances N         instances per function (default 10)        [FUNCTION_MAX_INSTANCES]
  --memory SIZE             memory per instance (default 512Mi)              [FUNCTION_MEMORY]
  --cpu N                   vCPUs per instance; >= 1 when concurrency > 1 (default 1)
                                                                                [FUNCTION_CPU]
  --followup-budget SECONDS how long one follow-up, export or reconcile delivery works before
                            handing over to the next, 1..480 (default 240)  [FOLLOWUP_BUDGET_SECONDS]
  --failure-logs-wait SECONDS  how long a batch with failures waits for Cloud Logging to list
                            them, 1..3600 (default 60)            [FAILURE_LOGS_WAIT_SECONDS]
  --failure-verify SECONDS  the budget for finding the failures Cloud Logging does not list,
                            1..3600 (default 120)                    [FAILURE_VERIFY_SECONDS]
  --config PATH             rules file, relative to the repository (default config.yaml);
                            another file is passed as DICOM_IMPORT_CONFIG [DICOM_IMPORT_CONFIG]
  --alert-email ADDR        notify ADDR when an alert policy fires (repeatable; creates an
                            email notification channel per address)  [ALERT_EMAILS, space-separated]
  --alert-channel NAME      also notify projects/P/notificationChannels/ID, an existing
                            channel of any type (repeatable)       [ALERT_CHANNELS, space-separated]
  --kms-key KEY             projects/P/locations/L/keyRings/R/cryptoKeys/K: customer-managed key of
                            the state bucket and the topics; L must be the buckets' location  [KMS_KEY]
  --results-table TABLE     PROJECT:DATASET.TABLE: every result message is written there by a
                            BigQuery subscription; the table is created if missing, the dataset
                            must exist                                       [RESULTS_TABLE]
  --hash-key-secret NAME    Secret Manager secret in --project holding the key of results.hash_key:
                            the functions read its latest version as RESULTS_HASH_KEY (write
                            hash_key: \${RESULTS_HASH_KEY} in the config)   [RESULTS_HASH_KEY_SECRET]
  --dry-run                 print every command (a runnable script) and run nothing  [DRY_RUN=1]
  -h, --help                this help

Topic flags take a topic ID or projects/PROJECT/topics/ID; bucket flags take NAME or gs://NAME.
Before any call the config is checked as the functions load it (python -m handlers check-config
with their environment; Python: \$PYTHON, else .venv/bin/python, else python3).
Flags win over environment variables. Exit status: 0 done, 1 a command failed, 2 bad input.
EOF
}

# ---------------------------------------------------------------- messages

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'deploy.sh: error: %s\n' "$*" >&2; exit 1; }
die_usage() {
  printf 'deploy.sh: error: %s\n' "$*" >&2
  printf 'Run ./deploy.sh --help for usage.\n' >&2
  exit 2
}

# ---------------------------------------------------------------- commands
# Every gcloud call goes through run/ensure/lookup/bind below, so --dry-run
# can print exactly what a real run would execute.

dry() { [[ ${DRY_RUN} == 1 ]]; }

# Quote one argument for a shell. Dry-run placeholders (${NAME}, upper case)
# stay expandable inside double quotes; everything else (including JSON that
# holds a Monitoring template such as ${metric.labels.rule}) is single-quoted.
readonly PLACEHOLDER_RE='\$\{[A-Z_][A-Z0-9_]*[}#%]'
quote() {
  local arg=$1
  if [[ ${arg} =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "${arg}"
  elif [[ ${arg} =~ ${PLACEHOLDER_RE} ]]; then
    arg=${arg//\\/\\\\}; arg=${arg//\"/\\\"}; arg=${arg//\`/\\\`}
    printf '"%s"' "${arg}"
  else
    printf "'%s'" "${arg//\'/\'\\\'\'}"
  fi
}

command_line() {
  local out="" arg
  for arg in "$@"; do out+="${out:+ }$(quote "${arg}")"; done
  printf '%s' "${out}"
}

# run CMD...: run a command, or print it under --dry-run.
run() {
  if dry; then command_line "$@"; printf '\n'; return; fi
  "$@"
}

# ensure WHAT DESCRIBE... -- CREATE...: create only if describe fails.
ensure() {
  local what=$1; shift
  local -a describe=()
  while [[ $1 != -- ]]; do describe+=("$1"); shift; done
  shift
  if dry; then
    printf '%s >/dev/null 2>&1 || %s\n' "$(command_line "${describe[@]}")" "$(command_line "$@")"
    return
  fi
  if "${describe[@]}" >/dev/null 2>&1; then
    say "exists: ${what}"
  else
    say "creating: ${what}"
    "$@"
  fi
}

# converge WHAT DESCRIBE... -- UPDATE... -- CREATE...: update what exists,
# create what does not (settings re-applied on every run).
converge() {
  local what=$1; shift
  local -a describe=() update=()
  while [[ $1 != -- ]]; do describe+=("$1"); shift; done
  shift
  while [[ $1 != -- ]]; do update+=("$1"); shift; done
  shift
  if dry; then
    printf 'if %s >/dev/null 2>&1; then %s; else %s; fi\n' \
      "$(command_line "${describe[@]}")" "$(command_line "${update[@]}")" "$(command_line "$@")"
    return
  fi
  if "${describe[@]}" >/dev/null 2>&1; then
    say "exists: ${what} (updating)"
    "${update[@]}"
  else
    say "creating: ${what}"
    "$@"
  fi
}

# find_or_create VAR FIND... -- CREATE...: VAR=$(FIND), or $(CREATE) when FIND
# prints nothing; first line. Under --dry-run VAR becomes the placeholder ${VAR}.
find_or_create() {
  local var=$1; shift
  local -a find=()
  while [[ $1 != -- ]]; do find+=("$1"); shift; done
  shift
  if dry; then
    printf '%s="$(%s)"; [ -n "${%s}" ] || %s="$(%s)"\n' "${var}" "$(command_line "${find[@]}")" "${var}" "${var}" \
      "$(command_line "$@")"
    printf -v "${var}" '${%s}' "${var}"
    return
  fi
  local out
  out=$("${find[@]}") || die "look-up failed: $(command_line "${find[@]}")"
  if [[ -z ${out} ]]; then
    out=$("$@") || die "create failed: $(command_line "$@")"
  fi
  out=${out%%$'\n'*}
  [[ -n ${out} ]] || die "create printed no name: $(command_line "$@")"
  printf -v "${var}" '%s' "${out}"
}

# must_succeed MESSAGE CMD...: stop with MESSAGE unless CMD succeeds (output hidden).
must_succeed() {
  local message=$1; shift
  if dry; then
    printf '%s >/dev/null 2>&1 || { echo %s >&2; exit 1; }\n' "$(command_line "$@")" "$(quote "deploy.sh: error: ${message}")"
    return
  fi
  "$@" >/dev/null 2>&1 || die "${message}"
}

# lookup VAR [--hint TEXT] CMD...: VAR=$(CMD), first line. Under --dry-run,
# prints the assignment and sets VAR to the placeholder ${VAR} that the
# commands printed after it use.
lookup() {
  local var=$1 hint=""; shift
  if [[ $1 == --hint ]]; then hint=": $2"; shift 2; fi
  if dry; then
    printf '%s="$(%s)"\n' "${var}" "$(command_line "$@")"
    printf -v "${var}" '${%s}' "${var}"
    return
  fi
  local out
  out=$("$@") || die "lookup failed${hint}: $(command_line "$@")"
  out=${out%%$'\n'*}
  [[ -n ${out} ]] || die "lookup returned nothing: $(command_line "$@")"
  printf -v "${var}" '%s' "${out}"
}

# bind CMD...: an add-iam-policy-binding, retried because a service account
# created seconds ago may not be visible to IAM yet.
bind() {
  if dry; then run "$@"; return; fi
  local attempt=1
  until "$@" >/dev/null; do
    if (( attempt >= BIND_ATTEMPTS )); then
      die "IAM binding failed ${attempt} times: $(command_line "$@")"
    fi
    say "retrying in $(( attempt * RETRY_SLEEP ))s: IAM binding"
    sleep $(( attempt * RETRY_SLEEP ))
    attempt=$(( attempt + 1 ))
  done
}

# unbind WHAT CMD...: a remove-iam-policy-binding of a grant an earlier deploy made; a binding
# already absent is fine (gcloud says "... not found!"), any other failure stops the script.
unbind() {
  local what=$1; shift
  local message="removing ${what} failed: $(command_line "$@")"
  if dry; then
    printf 'out="$(%s 2>&1)" || case "${out}" in *"not found!"*) ;; *) printf '"'"'%%s\\n'"'"' "${out}" >&2; echo %s >&2; exit 1 ;; esac\n' \
      "$(command_line "$@")" "$(quote "deploy.sh: error: ${message}")"
    return
  fi
  local out
  if out=$("$@" 2>&1); then
    say "removed: ${what}"
  elif [[ ${out} != *"not found!"* ]]; then
    printf '%s\n' "${out}" >&2
    die "${message}"
  fi
}

# ---------------------------------------------------------------- inputs

parse_args() {
  PROJECT=${GOOGLE_CLOUD_PROJECT:-}
  REGION=${FUNCTION_REGION:-}
  INBOX_BUCKET_IN=${INBOX_BUCKET:-}
  STATE_BUCKET_IN=${STATE_BUCKET:-}
  DICOM_STORE_IN=${DICOM_STORE:-}
  RESULTS_TOPIC_IN=${RESULTS_TOPIC:-dicom-import-results}
  FOLLOWUP_TOPIC_IN=${FOLLOWUP_TOPIC:-dicom-import-followups}
  EXPORT_REQUESTS_TOPIC_IN=${EXPORT_REQUESTS_TOPIC:-dicom-export-requests}
  RECONCILE_TOPIC_IN=${RECONCILE_TOPIC:-dicom-import-reconcile}
  RECONCILE_SCHEDULE=${RECONCILE_SCHEDULE:-0 * * * *}
  EXPORT_BUCKET_IN=${EXPORT_BUCKET:-}
  CONCURRENCY=${FUNCTION_CONCURRENCY:-80}
  MAX_INSTANCES=${FUNCTION_MAX_INSTANCES:-10}
  MEMORY=${FUNCTION_MEMORY:-512Mi}
  CPU=${FUNCTION_CPU:-1}
  FOLLOWUP_BUDGET=${FOLLOWUP_BUDGET_SECONDS:-}
  FAILURE_LOGS_WAIT=${FAILURE_LOGS_WAIT_SECONDS:-}
  FAILURE_VERIFY=${FAILURE_VERIFY_SECONDS:-}
  CONFIG_IN=${DICOM_IMPORT_CONFIG:-config.yaml}
  ALERT_EMAILS_IN=${ALERT_EMAILS:-}
  ALERT_CHANNELS_IN=${ALERT_CHANNELS:-}
  KMS_KEY_IN=${KMS_KEY:-}
  RESULTS_TABLE_IN=${RESULTS_TABLE:-}
  HASH_KEY_SECRET=${RESULTS_HASH_KEY_SECRET:-}
  DRY_RUN=${DRY_RUN:-0}
  [[ ${DRY_RUN} == 1 || ${DRY_RUN} == true ]] && DRY_RUN=1 || DRY_RUN=0

  # Repeatable flags replace their environment variable once given.
  ALERT_EMAILS_FLAG="" ALERT_CHANNELS_FLAG=""
  while (( $# )); do
    local flag=$1 value
    case ${flag} in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      --*=*) value=${flag#*=}; flag=${flag%%=*}; shift ;;
      --*)
        [[ $# -ge 2 && $2 != --* ]] || die_usage "${flag} needs a value"
        value=$2; shift 2 ;;
      *) die_usage "unexpected argument '${flag}'" ;;
    esac
    case ${flag} in
      --project) PROJECT=${value} ;;
      --region) REGION=${value} ;;
      --inbox-bucket) INBOX_BUCKET_IN=${value} ;;
      --state-bucket) STATE_BUCKET_IN=${value} ;;
      --dicom-store) DICOM_STORE_IN=${value} ;;
      --results-topic) RESULTS_TOPIC_IN=${value} ;;
      --followup-topic) FOLLOWUP_TOPIC_IN=${value} ;;
      --export-requests-topic) EXPORT_REQUESTS_TOPIC_IN=${value} ;;
      --reconcile-topic) RECONCILE_TOPIC_IN=${value} ;;
      --reconcile-schedule) RECONCILE_SCHEDULE=${value} ;;
      --export-bucket) EXPORT_BUCKET_IN=${value} ;;
      --concurrency) CONCURRENCY=${value} ;;
      --max-instances) MAX_INSTANCES=${value} ;;
      --memory) MEMORY=${value} ;;
      --cpu) CPU=${value} ;;
      --followup-budget) FOLLOWUP_BUDGET=${value} ;;
      --failure-logs-wait) FAILURE_LOGS_WAIT=${value} ;;
      --failure-verify) FAILURE_VERIFY=${value} ;;
      --config) CONFIG_IN=${value} ;;
      --alert-email) ALERT_EMAILS_FLAG+=" ${value}" ;;
      --alert-channel) ALERT_CHANNELS_FLAG+=" ${value}" ;;
      --kms-key) KMS_KEY_IN=${value} ;;
      --results-table) RESULTS_TABLE_IN=${value} ;;
      --hash-key-secret) HASH_KEY_SECRET=${value} ;;
      --help|--dry-run) die_usage "${flag} takes no value" ;;
      *) die_usage "unknown flag '${flag}'" ;;
    esac
  done
  [[ -z ${ALERT_EMAILS_FLAG} ]] || ALERT_EMAILS_IN=${ALERT_EMAILS_FLAG}
  [[ -z ${ALERT_CHANNELS_FLAG} ]] || ALERT_CHANNELS_IN=${ALERT_CHANNELS_FLAG}
}

require() { # require FLAG ENV VALUE
  [[ -n $3 ]] || die_usage "$1 is required (or set $2), e.g. $1 $(example "$1")"
}

example() {
  case $1 in
    --project) echo my-project ;;
    --region) echo us-central1 ;;
    --inbox-bucket) echo my-dicom-inbox ;;
    --state-bucket) echo my-dicom-import-state ;;
    --dicom-store) echo projects/my-project/locations/us-central1/datasets/my-dataset/dicomStores/my-store ;;
  esac
}

# bucket_name FLAG VALUE -> prints the bare bucket name, or exits 2.
bucket_name() {
  local flag=$1 name=${2#gs://}
  name=${name%/}
  local rule='3-63 characters of a-z, 0-9, -, _ and ., starting and ending with a letter or digit'
  [[ ${name} != */* ]] || die_usage "${flag} '$2' is not a bucket name: give only the bucket, e.g. ${flag} my-bucket (no folder)"
  [[ ${name} =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] || die_usage "${flag} '$2' is not a valid bucket name: use ${rule}"
  if [[ ${name} == *.* ]]; then
    (( ${#name} <= 222 )) || die_usage "${flag} '$2' is too long (dotted names: at most 222 characters)"
    local part
    local -a parts
    IFS=. read -r -a parts <<<"${name}"
    for part in "${parts[@]}"; do
      [[ -n ${part} && ${#part} -le 63 ]] || die_usage "${flag} '$2' is not a valid bucket name: each dot-separated part needs 1-63 characters"
    done
  else
    (( ${#name} >= 3 && ${#name} <= 63 )) || die_usage "${flag} '$2' is not a valid bucket name: use ${rule}"
  fi
  [[ ${name} != goog* && ${name} != *google* ]] || die_usage "${flag} '$2' is not allowed: bucket names cannot start with 'goog' or contain 'google'"
  printf '%s' "${name}"
}

# topic_id FLAG VALUE -> prints the topic ID, or exits 2.
topic_id() {
  local flag=$1 value=$2 id=$2
  if [[ ${value} =~ ^projects/([^/]+)/topics/([^/]+)$ ]]; then
    [[ ${BASH_REMATCH[1]} == "${PROJECT}" ]] || die_usage "${flag} '${value}' is in project ${BASH_REMATCH[1]}, not --project ${PROJECT}: give the topic ID only, e.g. ${flag} ${BASH_REMATCH[2]}"
    id=${BASH_REMATCH[2]}
  fi
  [[ ${id} =~ ^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$ && ${id} != goog* ]] \
    || die_usage "${flag} '${value}' is not a valid topic ID: 3-255 characters, starting with a letter, of letters, digits and - _ . ~ + %, not starting with 'goog'"
  printf '%s' "${id}"
}

positive_int() { # positive_int FLAG VALUE MAX
  if ! [[ $2 =~ ^[1-9][0-9]{0,5}$ ]] || (( $2 > $3 )); then
    die_usage "$1 '$2' must be a whole number from 1 to $3"
  fi
}

validate() {
  require --project GOOGLE_CLOUD_PROJECT "${PROJECT}"
  require --region FUNCTION_REGION "${REGION}"
  require --inbox-bucket INBOX_BUCKET "${INBOX_BUCKET_IN}"
  require --state-bucket STATE_BUCKET "${STATE_BUCKET_IN}"
  require --dicom-store DICOM_STORE "${DICOM_STORE_IN}"

  [[ ${PROJECT} =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] \
    || die_usage "--project '${PROJECT}' is not a project ID: 6-30 characters of a-z, 0-9 and -, starting with a letter (the ID, not the name or number)"
  [[ ${REGION} =~ ^[a-z]+-[a-z]+[0-9]+$ ]] \
    || die_usage "--region '${REGION}' is not a region, e.g. --region us-central1"

  INBOX=$(bucket_name --inbox-bucket "${INBOX_BUCKET_IN}")
  STATE=$(bucket_name --state-bucket "${STATE_BUCKET_IN}")
  EXPORT=""
  [[ -z ${EXPORT_BUCKET_IN} ]] || EXPORT=$(bucket_name --export-bucket "${EXPORT_BUCKET_IN}")
  [[ ${STATE} != "${INBOX}" ]] \
    || die_usage "--state-bucket must differ from --inbox-bucket: its lifecycle deletes objects after ${STATE_RETENTION_DAYS} days"
  if [[ -n ${EXPORT} ]]; then
    [[ ${EXPORT} != "${INBOX}" ]] || die_usage "--export-bucket must differ from --inbox-bucket: exports would be imported again"
    [[ ${EXPORT} != "${STATE}" ]] || die_usage "--export-bucket must differ from --state-bucket: its lifecycle deletes objects"
  fi

  local store_re='^projects/([a-z][a-z0-9-]{4,28}[a-z0-9])/locations/([a-z0-9-]+)/datasets/([A-Za-z0-9_.-]{1,256})/dicomStores/([A-Za-z0-9_.-]{1,256})$'
  [[ ${DICOM_STORE_IN} =~ ${store_re} ]] \
    || die_usage "--dicom-store '${DICOM_STORE_IN}' is not a full DICOM store name: use projects/PROJECT/locations/LOCATION/datasets/DATASET/dicomStores/STORE"
  STORE=${DICOM_STORE_IN}
  STORE_PROJECT=${BASH_REMATCH[1]}
  STORE_LOCATION=${BASH_REMATCH[2]}
  STORE_DATASET=${BASH_REMATCH[3]}
  STORE_ID=${BASH_REMATCH[4]}

  RESULTS_TOPIC_ID=$(topic_id --results-topic "${RESULTS_TOPIC_IN}")
  FOLLOWUP_TOPIC_ID=$(topic_id --followup-topic "${FOLLOWUP_TOPIC_IN}")
  EXPORT_REQUESTS_TOPIC_ID=$(topic_id --export-requests-topic "${EXPORT_REQUESTS_TOPIC_IN}")
  if [[ ${RESULTS_TOPIC_ID} == "${FOLLOWUP_TOPIC_ID}" || ${RESULTS_TOPIC_ID} == "${EXPORT_REQUESTS_TOPIC_ID}" \
        || ${FOLLOWUP_TOPIC_ID} == "${EXPORT_REQUESTS_TOPIC_ID}" ]]; then
    die_usage "--results-topic, --followup-topic and --export-requests-topic must name three different topics"
  fi
  RECONCILE_TOPIC_ID=$(topic_id --reconcile-topic "${RECONCILE_TOPIC_IN}")
  case ${RECONCILE_TOPIC_ID} in
    "${RESULTS_TOPIC_ID}"|"${FOLLOWUP_TOPIC_ID}"|"${EXPORT_REQUESTS_TOPIC_ID}")
      die_usage "--reconcile-topic '${RECONCILE_TOPIC_IN}' is already the results, follow-up or export-requests topic: give it its own" ;;
  esac
  [[ ${RECONCILE_SCHEDULE} =~ ^[0-9A-Za-z*/,-]+( [0-9A-Za-z*/,-]+){4}$ ]] \
    || die_usage "--reconcile-schedule '${RECONCILE_SCHEDULE}' is not a 5-field cron schedule (minute hour day month weekday, UTC), e.g. --reconcile-schedule '0 * * * *' (hourly)"
  RESULTS_DLQ_ID=${RESULTS_TOPIC_ID}-dead-letter
  RESULTS_OPS_SUBSCRIPTION=${RESULTS_TOPIC_ID}-ops
  FOLLOWUP_DLQ_ID=${FOLLOWUP_TOPIC_ID}-dead-letter

  positive_int --concurrency "${CONCURRENCY}" 1000
  positive_int --max-instances "${MAX_INSTANCES}" 1000
  [[ ${MEMORY} =~ ^[0-9]+(k|M|G|Ki|Mi|Gi)[bB]?$ ]] \
    || die_usage "--memory '${MEMORY}' is not a size: use a number and a unit (k, M, G, Ki, Mi, Gi), e.g. --memory 512Mi"
  [[ ${CPU} =~ ^([0-9]+(\.[0-9]+)?|\.[0-9]+|[0-9]+m)$ ]] \
    || die_usage "--cpu '${CPU}' is not a CPU count, e.g. --cpu 1, --cpu 2, --cpu 1000m"
  [[ -z ${FOLLOWUP_BUDGET} ]] || positive_int --followup-budget "${FOLLOWUP_BUDGET}" "${MAX_FOLLOWUP_BUDGET}"
  [[ -z ${FAILURE_LOGS_WAIT} ]] || positive_int --failure-logs-wait "${FAILURE_LOGS_WAIT}" "${MAX_FAILURE_SECONDS}"
  [[ -z ${FAILURE_VERIFY} ]] || positive_int --failure-verify "${FAILURE_VERIFY}" "${MAX_FAILURE_SECONDS}"
  if (( CONCURRENCY > 1 )) && ! cpu_at_least_one "${CPU}"; then
    die_usage "--concurrency ${CONCURRENCY} needs at least 1 vCPU: pass --cpu 1 (or more), or --concurrency 1"
  fi

  [[ -z ${HASH_KEY_SECRET} || ${HASH_KEY_SECRET} =~ ^[A-Za-z0-9_-]{1,255}$ ]] \
    || die_usage "--hash-key-secret '${HASH_KEY_SECRET}' is not a secret ID: give the secret's name in --project ${PROJECT} (letters, digits, - and _), e.g. --hash-key-secret dicom-import-hash-key"
  validate_config
  validate_monitoring
  validate_kms_key
  validate_results_table
  check_config_loads  # last: the flags it reads are checked, and it is the slowest
}

cpu_at_least_one() {
  local cpu=$1
  if [[ ${cpu} == *m ]]; then (( ${cpu%m} >= 1000 )); return; fi
  [[ ${cpu} == .* ]] && return 1
  (( ${cpu%%.*} >= 1 ))
}

validate_config() {
  local rel=${CONFIG_IN}
  if [[ ${rel} == /* ]]; then
    [[ ${rel} == "${SOURCE_DIR}"/* ]] \
      || die_usage "--config '${CONFIG_IN}' is outside the repository (${SOURCE_DIR}): only files in the deployed source reach the function; copy it to ${SOURCE_DIR}/config/NAME.yaml"
    rel=${rel#"${SOURCE_DIR}"/}
  fi
  rel=${rel#./}
  [[ -f ${SOURCE_DIR}/${rel} ]] || die_usage "--config '${CONFIG_IN}' does not exist (paths are relative to ${SOURCE_DIR})"
  [[ ${rel} =~ ${CONFIG_PATTERN} && ${rel} != *..* ]] \
    || die_usage "--config '${CONFIG_IN}' would not be uploaded (.gcloudignore keeps config.yaml, config.NAME.yaml and config/**.yaml): move it to config/NAME.yaml"
  CONFIG_REL=${rel}

  # Every ${NAME} without a default must be set by us, or the function
  # would fail at load. Comments are skipped.
  local provided=" GOOGLE_CLOUD_PROJECT INBOX_BUCKET STATE_BUCKET DICOM_STORE RESULTS_TOPIC FOLLOWUP_TOPIC EXPORT_REQUESTS_TOPIC THREADS "
  [[ -z ${EXPORT} ]] || provided+="EXPORT_BUCKET "
  [[ -z ${HASH_KEY_SECRET} ]] || provided+="RESULTS_HASH_KEY "
  local name
  while read -r name; do
    [[ -n ${name} ]] || continue
    if [[ ${provided} != *" ${name} "* ]]; then
      if [[ ${name} == EXPORT_BUCKET ]]; then
        die_usage "${CONFIG_REL} uses \${EXPORT_BUCKET}: pass --export-bucket NAME"
      fi
      if [[ ${name} == RESULTS_HASH_KEY ]]; then
        die_usage "${CONFIG_REL} uses \${RESULTS_HASH_KEY}: pass --hash-key-secret NAME, a Secret Manager secret holding the key (docs/security.md)"
      fi
      die_usage "${CONFIG_REL} uses \${${name}}, which deploy.sh does not set: give it a default (\${${name}:-value}) or remove it"
    fi
  done < <(sed -e 's/^#.*$//' -e 's/[[:space:]]#.*$//' "${SOURCE_DIR}/${CONFIG_REL}" \
             | grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' | sed -e 's/^\${//' -e 's/}$//' | sort -u)
}

# check_config_loads: the function's own validation of the config (python -m
# handlers check-config), with exactly the environment the functions get, so a
# config they would refuse at load stops the deploy before any call; its
# --policies lines (the same loader's reading) say what the policies need granted.
# Python: $PYTHON, else the repository's .venv, else python3 (PyYAML is all it needs).
check_config_loads() {
  local python=${PYTHON:-python3} policies
  if [[ -z ${PYTHON:-} && -x ${SOURCE_DIR}/.venv/bin/python ]]; then
    python=${SOURCE_DIR}/.venv/bin/python
  fi
  function_env
  # The key itself is read from Secret Manager at run time: any value stands for it here.
  [[ -z ${HASH_KEY_SECRET} ]] || FUNCTION_ENV+=("RESULTS_HASH_KEY=from-secret-${HASH_KEY_SECRET}")
  (cd "${SOURCE_DIR}" && "${python}" -c 'import yaml, handlers.cli' >/dev/null 2>&1) \
    || die_usage "cannot check ${CONFIG_REL}: '${python}' cannot import PyYAML and the handlers package from ${SOURCE_DIR}: run make venv, or set PYTHON to a Python 3 with PyYAML"
  # Its problems (PATH:LINE: message) go to stderr as they are; the policies come on stdout.
  if ! policies=$(cd "${SOURCE_DIR}" && env -i PATH="${PATH}" HOME="${HOME:-/}" "${FUNCTION_ENV[@]}" \
                    "${python}" -m handlers check-config --policies "${CONFIG_REL}"); then
    die_usage "${CONFIG_REL} would not load in the functions (python -m handlers check-config, with their environment, found the problems above): fix them before deploying"
  fi
  read_failure_policies "${policies}"
  say "config: ${CONFIG_REL} is valid with the functions' environment"
}

# read_failure_policies LINES: what the rules' policies need granted, from check-config --policies
# (KEY=VALUE lines, ${...} substituted as the functions do): POLICY_TAG (on_failure: tag),
# POLICY_MOVE (quarantine move: true), POLICY_REPLACE (on_conflict: replace), 1 or empty, and
# QUARANTINE_BUCKETS.
read_failure_policies() {
  local key value
  POLICY_TAG="" POLICY_MOVE="" POLICY_REPLACE="" QUARANTINE_BUCKETS=()
  while IFS='=' read -r key value; do
    case ${key}=${value} in
      tag=true) POLICY_TAG=1 ;;
      move=true) POLICY_MOVE=1 ;;
      replace=true) POLICY_REPLACE=1 ;;
      tag=false | move=false | replace=false) ;;
      quarantine=*)
        # Cloud Storage's rule: 3 to 63 characters, or up to 222 when dotted (each part at most 63: the loader checks)
        [[ ${value} =~ ^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$ && ( ${value} == *.* || ${#value} -le 63 ) ]] \
          || die_usage "${CONFIG_REL}: quarantine bucket '${value}' is not a bucket name deploy.sh can grant on: use a name of 3 to 63 lowercase letters, digits, '-', '_' and '.' (up to 222 with dots)"
        QUARANTINE_BUCKETS+=("${value}") ;;
      *) die "python -m handlers check-config --policies printed '${key}=${value}', which deploy.sh does not know: teach read_failure_policies what it needs granted" ;;
    esac
  done <<<"$1"
}

# ---------------------------------------------------------------- steps

enable_apis() {
  say "enabling APIs"
  run gcloud services enable "${APIS[@]}" --project="${PROJECT}"
}

find_identities() {
  say "looking up project numbers, the inbox location and service agents"
  lookup PROJECT_NUMBER gcloud projects describe "${PROJECT}" --format='value(projectNumber)'
  if [[ ${STORE_PROJECT} == "${PROJECT}" ]]; then
    STORE_PROJECT_NUMBER=${PROJECT_NUMBER}
  else
    lookup STORE_PROJECT_NUMBER gcloud projects describe "${STORE_PROJECT}" --format='value(projectNumber)'
  fi
  if ! dry; then
    [[ ${PROJECT_NUMBER} =~ ^[0-9]+$ && ${STORE_PROJECT_NUMBER} =~ ^[0-9]+$ ]] \
      || die "unexpected project number '${PROJECT_NUMBER}' / '${STORE_PROJECT_NUMBER}'"
  fi
  # The inbox must exist; its location decides the trigger and state bucket location.
  lookup INBOX_LOCATION --hint "--inbox-bucket gs://${INBOX} must exist and be readable by you" \
    gcloud storage buckets describe "gs://${INBOX}" --project="${PROJECT}" \
    --format='value(location.lower())'
  dry || INBOX_LOCATION=$(printf '%s' "${INBOX_LOCATION}" | tr '[:upper:]' '[:lower:]')

  # Service agents are created on first use; these calls get-or-create them.
  run gcloud beta services identity create --service=healthcare.googleapis.com --project="${STORE_PROJECT}"
  run gcloud beta services identity create --service=pubsub.googleapis.com --project="${PROJECT}"
  run gcloud beta services identity create --service=cloudscheduler.googleapis.com --project="${PROJECT}"
  lookup GCS_AGENT gcloud storage service-agent --project="${PROJECT}"

  RUNTIME_SA=${SA_NAME}@${PROJECT}.iam.gserviceaccount.com
  HEALTHCARE_AGENT=service-${STORE_PROJECT_NUMBER}@gcp-sa-healthcare.iam.gserviceaccount.com
  PUBSUB_AGENT=service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com
  SCHEDULER_AGENT=service-${PROJECT_NUMBER}@gcp-sa-cloudscheduler.iam.gserviceaccount.com
}

ensure_topic() {
  if [[ -n ${KMS_KEY} ]]; then
    converge "topic ${1}" \
      gcloud pubsub topics describe "$1" --project="${PROJECT}" -- \
      gcloud pubsub topics update "$1" --project="${PROJECT}" --topic-encryption-key="${KMS_KEY}" -- \
      gcloud pubsub topics create "$1" --project="${PROJECT}" --labels="${LABELS}" --topic-encryption-key="${KMS_KEY}"
    return
  fi
  ensure "topic ${1}" \
    gcloud pubsub topics describe "$1" --project="${PROJECT}" -- \
    gcloud pubsub topics create "$1" --project="${PROJECT}" --labels="${LABELS}"
}

# A pull subscription that keeps dead-lettered messages for inspection:
# messages published to a topic without subscriptions are lost.
ensure_hold_subscription() {
  ensure "subscription ${1}" \
    gcloud pubsub subscriptions describe "$1" --project="${PROJECT}" -- \
    gcloud pubsub subscriptions create "$1" --project="${PROJECT}" --topic="$1" \
    --message-retention-duration="${DEAD_LETTER_RETENTION}" --expiration-period=never --labels="${LABELS}"
}

create_topics() {
  say "topics"
  local t
  for t in "${RESULTS_TOPIC_ID}" "${RESULTS_DLQ_ID}" "${FOLLOWUP_TOPIC_ID}" "${FOLLOWUP_DLQ_ID}" "${EXPORT_REQUESTS_TOPIC_ID}" \
           "${RECONCILE_TOPIC_ID}"; do
    ensure_topic "${t}"
  done
  ensure_hold_subscription "${RESULTS_DLQ_ID}"
  ensure_hold_subscription "${FOLLOWUP_DLQ_ID}"
  ensure_ops_subscription
}

# The operators' own pull subscription on the results topic, for `python -m handlers tail`
# (RESULTS_SUBSCRIPTION): tail acknowledges what it prints, so on a subscription that alerting
# or another consumer reads it would take their messages.
ensure_ops_subscription() {
  ensure "subscription ${RESULTS_OPS_SUBSCRIPTION}" \
    gcloud pubsub subscriptions describe "${RESULTS_OPS_SUBSCRIPTION}" --project="${PROJECT}" -- \
    gcloud pubsub subscriptions create "${RESULTS_OPS_SUBSCRIPTION}" --project="${PROJECT}" --topic="${RESULTS_TOPIC_ID}" \
    --message-retention-duration="${OPS_RETENTION}" --expiration-period=never --labels="${LABELS}"
}

lifecycle_json() {
  local prefixes
  prefixes=$(printf '"%s",' "${STATE_EXPIRING_PREFIXES[@]}")
  printf '{"rule":[{"action":{"type":"Delete"},"condition":{"age":%d,"matchesPrefix":["staging/"]}},{"action":{"type":"Delete"},"condition":{"age":%d,"matchesPrefix":[%s]}}]}' \
    "${STAGING_RETENTION_DAYS}" "${STATE_RETENTION_DAYS}" "${prefixes%,}"
}

write_lifecycle_file() {
  if dry; then
    printf '%s\n' 'LIFECYCLE_FILE="$(mktemp)"; trap '"'"'rm -f "${LIFECYCLE_FILE}"'"'"' EXIT'
    printf "printf '%%s\\\\n' %s > \"\${LIFECYCLE_FILE}\"\n" "$(quote "$(lifecycle_json)")"
    LIFECYCLE_FILE='${LIFECYCLE_FILE}'
    return
  fi
  LIFECYCLE_FILE=$(mktemp "${TMPDIR:-/tmp}/dicom-import-lifecycle.XXXXXX")
  trap 'rm -f "${LIFECYCLE_FILE}"' EXIT
  lifecycle_json >"${LIFECYCLE_FILE}"
}

create_state_bucket() {
  say "state bucket gs://${STATE}"
  write_lifecycle_file
  local -a describe=(gcloud storage buckets describe "gs://${STATE}" --project="${PROJECT}" --format='value(name)')
  local -a create=(gcloud storage buckets create "gs://${STATE}" --project="${PROJECT}"
    --location="${INBOX_LOCATION}" --uniform-bucket-level-access --public-access-prevention
    --lifecycle-file="${LIFECYCLE_FILE}")
  # An existing bucket is converged (lifecycle, uniform access), not recreated.
  local -a update=(gcloud storage buckets update "gs://${STATE}" --project="${PROJECT}"
    --uniform-bucket-level-access --lifecycle-file="${LIFECYCLE_FILE}")
  if [[ -n ${KMS_KEY} ]]; then  # new objects (staging copies, records) are encrypted with it
    create+=(--default-encryption-key="${KMS_KEY}")
    update+=(--default-encryption-key="${KMS_KEY}")
  fi
  if dry; then
    printf 'if %s >/dev/null 2>&1; then %s; else %s; fi\n' \
      "$(command_line "${describe[@]}")" "$(command_line "${update[@]}")" "$(command_line "${create[@]}")"
    return
  fi
  if "${describe[@]}" >/dev/null 2>&1; then
    say "exists: bucket gs://${STATE} (updating lifecycle and uniform access)"
    "${update[@]}"
  else
    say "creating: bucket gs://${STATE} in ${INBOX_LOCATION}"
    "${create[@]}"
  fi
}

# The export bucket holds what exports copy out of the store (patient data): created private,
# beside the inbox and encrypted with --kms-key, when missing; an existing one is the operator's
# and is left as it is (its location, key and retention are theirs to set).
create_export_bucket() {
  [[ -n ${EXPORT} ]] || return 0
  say "export bucket gs://${EXPORT}"
  local -a create=(gcloud storage buckets create "gs://${EXPORT}" --project="${PROJECT}"
    --location="${INBOX_LOCATION}" --uniform-bucket-level-access --public-access-prevention)
  [[ -z ${KMS_KEY} ]] || create+=(--default-encryption-key="${KMS_KEY}")
  ensure "bucket gs://${EXPORT}" \
    gcloud storage buckets describe "gs://${EXPORT}" --project="${PROJECT}" --format='value(name)' -- "${create[@]}"
}

create_service_account() {
  say "runtime service account ${RUNTIME_SA}"
  ensure "service account ${RUNTIME_SA}" \
    gcloud iam service-accounts describe "${RUNTIME_SA}" --project="${PROJECT}" -- \
    gcloud iam service-accounts create "${SA_NAME}" --project="${PROJECT}" \
    --display-name="DICOM import functions" \
    --description="Runtime and trigger identity of ${FN_INTAKE}, ${FN_FOLLOWUP}, ${FN_EXPORT}, ${FN_RECONCILE}"
}

grant_runtime_sa() {
  say "IAM: runtime service account"
  local member=serviceAccount:${RUNTIME_SA}
  # The store: exactly what handlers/clients/healthcare.py calls there (import, export, QIDO and
  # WADO), and DeleteInstance only when a rule replaces re-sent instances; no STOW, no other delete.
  # operations.get is checked on the dataset (datasetViewer below).
  local -a store_permissions=(healthcare.dicomStores.import healthcare.dicomStores.export
    healthcare.dicomStores.dicomWebRead)
  [[ -z ${POLICY_REPLACE} ]] || store_permissions+=(healthcare.dicomStores.dicomWebDelete)
  ensure_custom_role "${STORE_ROLE_ID}" "DICOM import: import, export and read the store" \
    "$(IFS=,; printf '%s' "${store_permissions[*]}")" "${STORE_PROJECT}"
  bind gcloud healthcare dicom-stores add-iam-policy-binding "${STORE_ID}" --project="${STORE_PROJECT}" \
    --dataset="${STORE_DATASET}" --location="${STORE_LOCATION}" \
    --member="${member}" --role="projects/${STORE_PROJECT}/roles/${STORE_ROLE_ID}" --condition=None
  # Earlier deploys granted roles/healthcare.dicomEditor (also STOW and every delete): removed once
  # the custom role is bound.
  unbind "the runtime account's roles/healthcare.dicomEditor on the store" \
    gcloud healthcare dicom-stores remove-iam-policy-binding "${STORE_ID}" --project="${STORE_PROJECT}" \
    --dataset="${STORE_DATASET}" --location="${STORE_LOCATION}" \
    --member="${member}" --role=roles/healthcare.dicomEditor --condition=None
  bind gcloud healthcare datasets add-iam-policy-binding "${STORE_DATASET}" --project="${STORE_PROJECT}" \
    --location="${STORE_LOCATION}" --member="${member}" --role=roles/healthcare.datasetViewer --condition=None
  bind gcloud storage buckets add-iam-policy-binding "gs://${INBOX}" --project="${PROJECT}" \
    --member="${member}" --role=roles/storage.objectViewer --condition=None
  bind gcloud storage buckets add-iam-policy-binding "gs://${STATE}" --project="${PROJECT}" \
    --member="${member}" --role=roles/storage.objectAdmin --condition=None
  local t
  for t in "${RESULTS_TOPIC_ID}" "${FOLLOWUP_TOPIC_ID}"; do
    bind gcloud pubsub topics add-iam-policy-binding "${t}" --project="${PROJECT}" \
      --member="${member}" --role=roles/pubsub.publisher
  done
  # The same account is the triggers' identity (see grant_invoker).
  bind gcloud projects add-iam-policy-binding "${PROJECT}" \
    --member="${member}" --role=roles/eventarc.eventReceiver --condition=None
  # Each failed file is named in its result from the import's Cloud Logging entries (entries.list),
  # which the Healthcare API writes in the store's project.
  bind gcloud projects add-iam-policy-binding "${STORE_PROJECT}" \
    --member="${member}" --role=roles/logging.viewer --condition=None
}

# The key of results.hash_key stays out of the repository and the uploaded source: a Secret
# Manager secret the functions read as RESULTS_HASH_KEY (deploy_function's --set-secrets).
grant_hash_key_secret() {
  [[ -n ${HASH_KEY_SECRET} ]] || return 0
  say "IAM: the runtime service account reads the secret ${HASH_KEY_SECRET} (RESULTS_HASH_KEY)"
  run gcloud services enable secretmanager.googleapis.com --project="${PROJECT}"
  must_succeed "secret ${HASH_KEY_SECRET} of --hash-key-secret does not exist in ${PROJECT} or is not readable: create it first (gcloud secrets create ${HASH_KEY_SECRET} --project=${PROJECT} --data-file=FILE; docs/security.md, hash key)" \
    gcloud secrets describe "${HASH_KEY_SECRET}" --project="${PROJECT}"
  # On the secret only: the account reads no other secret of the project.
  bind gcloud secrets add-iam-policy-binding "${HASH_KEY_SECRET}" --project="${PROJECT}" \
    --member="serviceAccount:${RUNTIME_SA}" --role=roles/secretmanager.secretAccessor --condition=None
}

# grant_failure_policies: what the config's on_failure policies do, and no more.
grant_failure_policies() {
  [[ -n ${POLICY_TAG}${POLICY_MOVE} || ${#QUARANTINE_BUCKETS[@]} -gt 0 ]] || return 0
  say "IAM: failure policies of ${CONFIG_REL}"
  local member=serviceAccount:${RUNTIME_SA} bucket
  if [[ -n ${POLICY_TAG} ]]; then
    # tag: a metadata patch of the failed generation in the inbox
    ensure_custom_role "${TAG_ROLE_ID}" "DICOM import: tag failed files" storage.objects.update
    bind gcloud storage buckets add-iam-policy-binding "gs://${INBOX}" --project="${PROJECT}" \
      --member="${member}" --role="projects/${PROJECT}/roles/${TAG_ROLE_ID}" --condition=None
  fi
  if [[ -n ${POLICY_MOVE} ]]; then
    # quarantine with move: delete the failed generation from the inbox once copied
    ensure_custom_role "${MOVE_ROLE_ID}" "DICOM import: move failed files out of the inbox" storage.objects.delete
    bind gcloud storage buckets add-iam-policy-binding "gs://${INBOX}" --project="${PROJECT}" \
      --member="${member}" --role="projects/${PROJECT}/roles/${MOVE_ROLE_ID}" --condition=None
  fi
  for bucket in "${QUARANTINE_BUCKETS[@]}"; do
    # quarantine: create the copies (never overwritten or deleted: ifGenerationMatch=0) and read an
    # existing copy's metadata (is it this failed generation's?). Predefined roles, not a project's
    # custom role, so a quarantine bucket in another project can be granted too.
    bind gcloud storage buckets add-iam-policy-binding "gs://${bucket}" --project="${PROJECT}" \
      --member="${member}" --role=roles/storage.objectCreator --condition=None
    bind gcloud storage buckets add-iam-policy-binding "gs://${bucket}" --project="${PROJECT}" \
      --member="${member}" --role=roles/storage.objectViewer --condition=None
  done
}

# revoke_unused_failure_policies: the inbox roles of the policies the config no longer uses, taken
# from the runtime account once the functions are deployed (the revisions they replace may still
# tag or move until then). Quarantine buckets earlier configs named cannot be known: only said.
revoke_unused_failure_policies() {
  say "IAM: failure policies ${CONFIG_REL} does not use"
  [[ -n ${POLICY_TAG} ]] || unbind_inbox_role "${TAG_ROLE_ID}"
  [[ -n ${POLICY_MOVE} ]] || unbind_inbox_role "${MOVE_ROLE_ID}"
  say "note: the runtime account keeps its grants on quarantine buckets that earlier configs named and ${CONFIG_REL} does not (deploy.sh cannot know them): remove those by hand (docs/deploy.md, Permissions and why)"
}

# unbind_inbox_role ROLE_ID: the runtime account's binding of that custom role on the inbox removed
# (an earlier config's policy; its absence is fine, and the role, left unbound, grants nothing).
unbind_inbox_role() {
  unbind "the runtime account's $1 on gs://${INBOX} (no rule of ${CONFIG_REL} needs it)" \
    gcloud storage buckets remove-iam-policy-binding "gs://${INBOX}" --project="${PROJECT}" \
    --member="serviceAccount:${RUNTIME_SA}" --role="projects/${PROJECT}/roles/$1" --condition=None
}

# ensure_custom_role ID TITLE PERMISSIONS [PROJECT]: a project role (in --project unless PROJECT is
# given) with exactly those permissions (comma-separated): an existing one is set to them.
ensure_custom_role() {
  local project=${4:-${PROJECT}}
  converge "role ${1} in ${project}" \
    gcloud iam roles describe "$1" --project="${project}" -- \
    gcloud iam roles update "$1" --project="${project}" --title="$2" --permissions="$3" --stage=GA -- \
    gcloud iam roles create "$1" --project="${project}" --title="$2" --permissions="$3" --stage=GA
}

# The IAM condition of the Healthcare agent's read on the state bucket (gcloud's --condition: no
# commas in its values). Listing is checked against the bucket, reading against each object.
readonly STATE_AGENT_PREFIXES=(staging/ exports/)
state_reader_condition() {
  local expression='resource.type == "storage.googleapis.com/Bucket"' prefix
  for prefix in "${STATE_AGENT_PREFIXES[@]}"; do
    expression+=" || resource.name.startsWith(\"projects/_/buckets/${STATE}/objects/${prefix}\")"
  done
  printf 'expression=%s,title=%s,description=%s' "${expression}" "dicom-import-healthcare-agent" \
    "Imports read staging/ and exports read their filter files in exports/ only"
}

grant_service_agents() {
  say "IAM: Google service agents"
  local healthcare=serviceAccount:${HEALTHCARE_AGENT}
  # dicomStores.import reads the inbox and the staging copies in the state bucket.
  bind gcloud storage buckets add-iam-policy-binding "gs://${INBOX}" --project="${PROJECT}" \
    --member="${healthcare}" --role=roles/storage.objectViewer --condition=None
  # The agent is every store's in the project: whoever may import into any of them imports what the
  # agent can read. So on the state bucket it reads only what imports and exports name there
  # (staging copies, export filter files), not replaced/ (full copies of replaced instances) nor the
  # records; listing is checked on the bucket, hence the Bucket clause (object names: hashes, ids).
  # Needs uniform bucket-level access, which create_state_bucket sets.
  bind gcloud storage buckets add-iam-policy-binding "gs://${STATE}" --project="${PROJECT}" \
    --member="${healthcare}" --role=roles/storage.objectViewer --condition="$(state_reader_condition)"
  # Earlier deploys granted the same role on the whole bucket: remove that grant (after the new one,
  # so that running imports keep their read).
  unbind "the Healthcare agent's unconditional read on gs://${STATE}" \
    gcloud storage buckets remove-iam-policy-binding "gs://${STATE}" --project="${PROJECT}" \
    --member="${healthcare}" --role=roles/storage.objectViewer --condition=None
  if [[ -n ${EXPORT} ]]; then
    bind gcloud storage buckets add-iam-policy-binding "gs://${EXPORT}" --project="${PROJECT}" \
      --member="${healthcare}" --role=roles/storage.objectAdmin --condition=None
  fi
  # Eventarc's Cloud Storage triggers: the GCS agent publishes the events.
  bind gcloud projects add-iam-policy-binding "${PROJECT}" \
    --member="serviceAccount:${GCS_AGENT}" --role=roles/pubsub.publisher --condition=None
  # Pub/Sub: dead-lettering, and OIDC tokens for the push to the functions.
  local pubsub=serviceAccount:${PUBSUB_AGENT} t
  for t in "${RESULTS_DLQ_ID}" "${FOLLOWUP_DLQ_ID}"; do
    bind gcloud pubsub topics add-iam-policy-binding "${t}" --project="${PROJECT}" \
      --member="${pubsub}" --role=roles/pubsub.publisher
  done
  bind gcloud iam service-accounts add-iam-policy-binding "${RUNTIME_SA}" --project="${PROJECT}" \
    --member="${pubsub}" --role=roles/iam.serviceAccountTokenCreator --condition=None
  # Cloud Scheduler publishes the reconcile ticks with its own service agent: that topic only.
  bind gcloud pubsub topics add-iam-policy-binding "${RECONCILE_TOPIC_ID}" --project="${PROJECT}" \
    --member="serviceAccount:${SCHEDULER_AGENT}" --role=roles/pubsub.publisher
}

# function_env: FUNCTION_ENV=(KEY=VALUE...), the functions' environment.
function_env() {
  FUNCTION_ENV=(
    "GOOGLE_CLOUD_PROJECT=${PROJECT}"
    "INBOX_BUCKET=${INBOX}"
    "STATE_BUCKET=${STATE}"
    "DICOM_STORE=${STORE}"
    "RESULTS_TOPIC=projects/${PROJECT}/topics/${RESULTS_TOPIC_ID}"
    "FOLLOWUP_TOPIC=projects/${PROJECT}/topics/${FOLLOWUP_TOPIC_ID}"
    "EXPORT_REQUESTS_TOPIC=projects/${PROJECT}/topics/${EXPORT_REQUESTS_TOPIC_ID}"
    # functions-framework serves with this many gunicorn threads (default 4 x CPUs).
    "THREADS=${CONCURRENCY}"
  )
  [[ -z ${EXPORT} ]] || FUNCTION_ENV+=("EXPORT_BUCKET=${EXPORT}")
  [[ ${CONFIG_REL} == config.yaml ]] || FUNCTION_ENV+=("DICOM_IMPORT_CONFIG=${CONFIG_REL}")
  [[ -z ${FOLLOWUP_BUDGET} ]] || FUNCTION_ENV+=("FOLLOWUP_BUDGET_SECONDS=${FOLLOWUP_BUDGET}")
  [[ -z ${FAILURE_LOGS_WAIT} ]] || FUNCTION_ENV+=("FAILURE_LOGS_WAIT_SECONDS=${FAILURE_LOGS_WAIT}")
  [[ -z ${FAILURE_VERIFY} ]] || FUNCTION_ENV+=("FAILURE_VERIFY_SECONDS=${FAILURE_VERIFY}")
}

# env_vars: the functions' environment as --set-env-vars takes it (KEY=VALUE,KEY=VALUE).
env_vars() {
  function_env
  local IFS=,
  printf '%s' "${FUNCTION_ENV[*]}"
}

# deploy_function NAME ENTRY_POINT TRIGGER_FLAGS...
deploy_function() {
  local name=$1 entry_point=$2; shift 2
  say "deploying ${name}"
  # Every function loads the config, so each needs the key its ${RESULTS_HASH_KEY} names.
  [[ -z ${HASH_KEY_SECRET} ]] || set -- "$@" --set-secrets="RESULTS_HASH_KEY=${HASH_KEY_SECRET}:latest"
  run gcloud functions deploy "${name}" --gen2 --project="${PROJECT}" --region="${REGION}" \
    --runtime="${RUNTIME}" --source="${SOURCE_DIR}" --entry-point="${entry_point}" \
    "$@" --retry \
    --service-account="${RUNTIME_SA}" --trigger-service-account="${RUNTIME_SA}" \
    --concurrency="${CONCURRENCY}" --cpu="${CPU}" --memory="${MEMORY}" \
    --max-instances="${MAX_INSTANCES}" --timeout="${FUNCTION_TIMEOUT}" \
    --ingress-settings=internal-only --update-labels="${LABELS}" \
    --set-env-vars="$(env_vars)"
}

deploy_functions() {
  deploy_function "${FN_INTAKE}" on_object_finalized \
    --trigger-event-filters="type=${FINALIZED_EVENT}" \
    --trigger-event-filters="bucket=${INBOX}" \
    --trigger-location="${INBOX_LOCATION}"
  deploy_function "${FN_FOLLOWUP}" on_followup --trigger-topic="${FOLLOWUP_TOPIC_ID}"
  deploy_function "${FN_EXPORT}" on_export_request --trigger-topic="${EXPORT_REQUESTS_TOPIC_ID}"
  deploy_function "${FN_RECONCILE}" on_reconcile --trigger-topic="${RECONCILE_TOPIC_ID}"
}

# The reconcile sweep's clock (docs/reconcile.md): a Cloud Scheduler job publishing to the
# reconcile topic. An existing job is converged (schedule, topic), not recreated.
ensure_scheduler_job() {
  say "Cloud Scheduler job ${SCHEDULER_JOB}: '${RECONCILE_SCHEDULE}' (UTC) -> ${RECONCILE_TOPIC_ID}"
  local -a describe=(gcloud scheduler jobs describe "${SCHEDULER_JOB}" --project="${PROJECT}" --location="${REGION}"
    --format='value(name)')
  local -a job=("${SCHEDULER_JOB}" --project="${PROJECT}" --location="${REGION}" --schedule="${RECONCILE_SCHEDULE}"
    --time-zone=Etc/UTC --topic="projects/${PROJECT}/topics/${RECONCILE_TOPIC_ID}" --message-body='{"kind":"reconcile"}')
  local -a create=(gcloud scheduler jobs create pubsub "${job[@]}"
    --description="Fires ${FN_RECONCILE}: admit the objects whose events were lost")
  local -a update=(gcloud scheduler jobs update pubsub "${job[@]}")
  if dry; then
    printf 'if %s >/dev/null 2>&1; then %s; else %s; fi\n' \
      "$(command_line "${describe[@]}")" "$(command_line "${update[@]}")" "$(command_line "${create[@]}")"
    return
  fi
  if "${describe[@]}" >/dev/null 2>&1; then
    say "exists: scheduler job ${SCHEDULER_JOB} (updating schedule and topic)"
    "${update[@]}"
  else
    say "creating: scheduler job ${SCHEDULER_JOB}"
    "${create[@]}"
  fi
}

grant_invoker() {
  say "IAM: the triggers' identity may invoke the functions"
  local fn
  for fn in "${FN_INTAKE}" "${FN_FOLLOWUP}" "${FN_EXPORT}" "${FN_RECONCILE}"; do
    bind gcloud functions add-invoker-policy-binding "${fn}" --project="${PROJECT}" --region="${REGION}" \
      --member="serviceAccount:${RUNTIME_SA}"
  done
}

# configure_trigger_subscription FUNCTION VAR [DEAD_LETTER_TOPIC]: finds the
# subscription Eventarc created for FUNCTION's trigger (VAR_TRIGGER,
# VAR_SUBSCRIPTION) and sets its ack deadline, backoff, retention and, when
# given, dead-letter policy. Re-applied on every run: a redeploy that
# recreates the trigger also recreates the subscription.
configure_trigger_subscription() {
  local fn=$1 var=$2 dead_letter=${3:-}
  local trigger_var=${var}_TRIGGER subscription_var=${var}_SUBSCRIPTION
  lookup "${trigger_var}" gcloud functions describe "${fn}" --project="${PROJECT}" --region="${REGION}" \
    --v2 --format='value(eventTrigger.trigger)'
  lookup "${subscription_var}" gcloud eventarc triggers describe "${!trigger_var}" --project="${PROJECT}" \
    --format='value(transport.pubsub.subscription)'
  local subscription=${!subscription_var}
  local -a policy=(--ack-deadline="${TRIGGER_ACK_DEADLINE}" --message-retention-duration="${TRIGGER_RETENTION}"
    --min-retry-delay="${TRIGGER_MIN_RETRY_DELAY}" --max-retry-delay="${TRIGGER_MAX_RETRY_DELAY}")
  if [[ -n ${dead_letter} ]]; then
    policy+=(--dead-letter-topic="projects/${PROJECT}/topics/${dead_letter}"
      --max-delivery-attempts="${FOLLOWUP_MAX_DELIVERY_ATTEMPTS}")
  fi
  run gcloud pubsub subscriptions update "${subscription}" --project="${PROJECT}" "${policy[@]}"
  if [[ -n ${dead_letter} ]]; then
    # Dead-lettering acknowledges the message on this subscription.
    bind gcloud pubsub subscriptions add-iam-policy-binding "${subscription}" --project="${PROJECT}" \
      --member="serviceAccount:${PUBSUB_AGENT}" --role=roles/pubsub.subscriber
  fi
}

configure_trigger_subscriptions() {
  say "trigger subscriptions: ack deadline ${TRIGGER_ACK_DEADLINE}s, backoff ${TRIGGER_MIN_RETRY_DELAY}..${TRIGGER_MAX_RETRY_DELAY}, retention ${TRIGGER_RETENTION}; follow-up dead letters to ${FOLLOWUP_DLQ_ID}"
  configure_trigger_subscription "${FN_INTAKE}" INTAKE
  configure_trigger_subscription "${FN_FOLLOWUP}" FOLLOWUP "${FOLLOWUP_DLQ_ID}"
  configure_trigger_subscription "${FN_EXPORT}" EXPORT
  configure_trigger_subscription "${FN_RECONCILE}" RECONCILE
}

# ---------------------------------------------------------------- customer-managed key (--kms-key)
# The state bucket's default key and the topics' key; each Google service agent
# that encrypts with it gets roles/cloudkms.cryptoKeyEncrypterDecrypter on it.
# Reference: docs/deploy.md, "Customer-managed encryption keys".

readonly KMS_ROLE=roles/cloudkms.cryptoKeyEncrypterDecrypter

validate_kms_key() {
  KMS_KEY="" KMS_LOCATION=""
  [[ -n ${KMS_KEY_IN} ]] || return 0
  local re='^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/([a-z0-9-]+)/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}$'
  [[ ${KMS_KEY_IN} =~ ${re} ]] \
    || die_usage "--kms-key '${KMS_KEY_IN}' is not a key name: use projects/PROJECT/locations/LOCATION/keyRings/RING/cryptoKeys/KEY (gcloud kms keys list --keyring RING --location LOCATION --format='value(name)')"
  KMS_KEY=${KMS_KEY_IN}
  KMS_LOCATION=${BASH_REMATCH[1]}
  [[ ${KMS_LOCATION} != global ]] \
    || die_usage "--kms-key is in location global: Cloud Storage only accepts a key in the bucket's own location (e.g. europe-west4, or europe for an EU bucket)"
}

# The Cloud Storage location a key location serves: the same name, except
# that EU multi-region buckets take keys in the KMS multi-region "europe".
bucket_location_of_key() {
  case $1 in europe) printf eu ;; *) printf '%s' "$1" ;; esac
}

# The state bucket is created in the inbox's location, so the key must be there. An existing
# state bucket is updated in place with the key (create_state_bucket), and a bucket never changes
# location: one elsewhere is refused here, before the grants and topics, not at its `buckets update`
# halfway through. (An existing export bucket is left as it is; a new one is created beside the inbox.)
check_kms_key_location() {
  [[ -n ${KMS_KEY} ]] || return 0
  local expected message state_location state_message
  expected=$(bucket_location_of_key "${KMS_LOCATION}")
  message="--kms-key is in ${KMS_LOCATION}, which only encrypts buckets in ${expected}; gs://${INBOX} (and the state bucket, created beside it) is elsewhere: use a key in the inbox's location (gcloud storage buckets describe gs://${INBOX} --format='value(location)'; EU -> europe)"
  local -a describe=(gcloud storage buckets describe "gs://${STATE}" --project="${PROJECT}"
    --format='value(location.lower())')
  if dry; then
    printf 'case "${INBOX_LOCATION}" in %s) ;; *) echo %s >&2; exit 1 ;; esac\n' "${expected}" "$(quote "deploy.sh: error: ${message}")"
    state_message=$(kms_state_bucket_message "${expected}" '${STATE_LOCATION}')
    # A missing state bucket (describe fails) is created beside the inbox: nothing to check.
    printf 'STATE_LOCATION="$(%s 2>/dev/null)" || STATE_LOCATION=""\n' "$(command_line "${describe[@]}")"
    printf 'case "${STATE_LOCATION}" in "" | %s) ;; *) echo %s >&2; exit 1 ;; esac\n' "${expected}" \
      "$(quote "deploy.sh: error: ${state_message}")"
    return
  fi
  [[ ${INBOX_LOCATION} == "${expected}" ]] || die "${message} (inbox location: ${INBOX_LOCATION})"
  state_location=$("${describe[@]}" 2>/dev/null) || return 0  # missing: created beside the inbox
  state_location=$(printf '%s' "${state_location%%$'\n'*}" | tr '[:upper:]' '[:lower:]')
  [[ -z ${state_location} || ${state_location} == "${expected}" ]] \
    || die "$(kms_state_bucket_message "${expected}" "${state_location}")"
}

# kms_state_bucket_message EXPECTED STATE_LOCATION: why an existing state bucket cannot take the key.
kms_state_bucket_message() {
  printf '%s' "--kms-key is in ${KMS_LOCATION}, which only encrypts buckets in $1;" \
    " the existing --state-bucket gs://${STATE} is in $2 (a bucket never changes location):" \
    " name a state bucket in $1, the inbox's location, or a new one (deploy.sh creates it beside the inbox)"
}

grant_kms_key() {
  [[ -n ${KMS_KEY} ]] || return 0
  say "IAM: service agents on the key ${KMS_KEY}"
  # Cloud Storage encrypts the state bucket's objects; Pub/Sub the topics' messages.
  bind gcloud kms keys add-iam-policy-binding "${KMS_KEY}" --member="serviceAccount:${GCS_AGENT}" --role="${KMS_ROLE}"
  bind gcloud kms keys add-iam-policy-binding "${KMS_KEY}" --member="serviceAccount:${PUBSUB_AGENT}" --role="${KMS_ROLE}"
  # A CMEK dataset (encryptionSpec, set at its creation) uses a key in the
  # dataset's own location: only then can this key be the dataset's.
  if [[ ${KMS_LOCATION} == "${STORE_LOCATION}" ]]; then
    bind gcloud kms keys add-iam-policy-binding "${KMS_KEY}" --member="serviceAccount:${HEALTHCARE_AGENT}" --role="${KMS_ROLE}"
  else
    say "not granted to the Healthcare agent: the store's dataset is in ${STORE_LOCATION}, the key in ${KMS_LOCATION}; a CMEK dataset needs a key in its own location (docs/deploy.md)"
  fi
}

# ---------------------------------------------------------------- results in BigQuery (--results-table)
# A BigQuery subscription on the results topic writes every result message
# (imports and exports) into a table whose schema is bigquery/results.schema.json.
# Reference: docs/deploy.md, "Results in BigQuery"; queries: docs/queries.md.

readonly RESULTS_TABLE_SCHEMA=bigquery/results.schema.json
readonly BIGQUERY_MAX_DELIVERY_ATTEMPTS=10

validate_results_table() {
  RESULTS_TABLE=""
  [[ -n ${RESULTS_TABLE_IN} ]] || return 0
  local re='^([a-z][a-z0-9-]{4,28}[a-z0-9])[:.]([A-Za-z0-9_]{1,1024})\.([A-Za-z0-9_-]{1,1024})$'
  [[ ${RESULTS_TABLE_IN} =~ ${re} ]] \
    || die_usage "--results-table '${RESULTS_TABLE_IN}' is not a table name: use PROJECT:DATASET.TABLE, e.g. --results-table ${PROJECT}:dicom_import.results"
  TABLE_PROJECT=${BASH_REMATCH[1]}
  TABLE_DATASET=${BASH_REMATCH[2]}
  RESULTS_TABLE=${TABLE_PROJECT}:${TABLE_DATASET}.${BASH_REMATCH[3]}
  RESULTS_BIGQUERY_SUBSCRIPTION=${RESULTS_TOPIC_ID}-bigquery
  [[ -f ${SOURCE_DIR}/${RESULTS_TABLE_SCHEMA} ]] || die "${SOURCE_DIR}/${RESULTS_TABLE_SCHEMA} is missing: restore it from the repository"
  dry || command -v bq >/dev/null \
    || die "--results-table needs bq, which is not on PATH: it comes with the Google Cloud CLI (gcloud components install bq)"
}

ensure_results_table() {
  [[ -n ${RESULTS_TABLE} ]] || return 0
  say "results table ${RESULTS_TABLE}, written by the subscription ${RESULTS_BIGQUERY_SUBSCRIPTION}"
  local schema=${SOURCE_DIR}/${RESULTS_TABLE_SCHEMA}
  run gcloud services enable bigquery.googleapis.com --project="${TABLE_PROJECT}"
  # The dataset decides the location, retention and default key: its owner creates it.
  must_succeed "dataset ${TABLE_PROJECT}:${TABLE_DATASET} of --results-table does not exist or is not readable: create it where the results may live, e.g. bq --location=EU mk --dataset [--default_kms_key=KEY] ${TABLE_PROJECT}:${TABLE_DATASET}" \
    bq show --format=none "${TABLE_PROJECT}:${TABLE_DATASET}"
  # An existing table gets the columns the repository's schema added since (bq update only adds).
  converge "table ${RESULTS_TABLE}" \
    bq show --format=none "${RESULTS_TABLE}" -- \
    bq update --schema="${schema}" "${RESULTS_TABLE}" -- \
    bq mk --table --schema="${schema}" --time_partitioning_field=publish_time --time_partitioning_type=DAY \
    --clustering_fields=outcome,rule --label=app:dicom-import \
    --description="DICOM import and export results, one row per message on ${RESULTS_TOPIC_ID} (deploy.sh)" \
    "${RESULTS_TABLE}"
  # The subscription writes as the Pub/Sub service agent.
  bind bq add-iam-policy-binding --member="serviceAccount:${PUBSUB_AGENT}" --role=roles/bigquery.dataEditor "${RESULTS_TABLE}"
  # Rows BigQuery refuses (a column missing) go to the results dead-letter topic.
  local -a bigquery=(--bigquery-table="${RESULTS_TABLE}" --use-table-schema --write-metadata
    --dead-letter-topic="projects/${PROJECT}/topics/${RESULTS_DLQ_ID}"
    --max-delivery-attempts="${BIGQUERY_MAX_DELIVERY_ATTEMPTS}")
  converge "subscription ${RESULTS_BIGQUERY_SUBSCRIPTION}" \
    gcloud pubsub subscriptions describe "${RESULTS_BIGQUERY_SUBSCRIPTION}" --project="${PROJECT}" -- \
    gcloud pubsub subscriptions update "${RESULTS_BIGQUERY_SUBSCRIPTION}" --project="${PROJECT}" "${bigquery[@]}" -- \
    gcloud pubsub subscriptions create "${RESULTS_BIGQUERY_SUBSCRIPTION}" --project="${PROJECT}" \
    --topic="${RESULTS_TOPIC_ID}" "${bigquery[@]}" --message-retention-duration="${DEAD_LETTER_RETENTION}" \
    --expiration-period=never --labels="${LABELS}"
  # Dead-lettering acknowledges the message on this subscription.
  bind gcloud pubsub subscriptions add-iam-policy-binding "${RESULTS_BIGQUERY_SUBSCRIPTION}" --project="${PROJECT}" \
    --member="serviceAccount:${PUBSUB_AGENT}" --role=roles/pubsub.subscriber
}

# ---------------------------------------------------------------- monitoring as code (monitoring/)
# Log-based metrics (monitoring/metrics/NAME.json), the dashboard
# (monitoring/dashboard.json) and alert policies (monitoring/alerts/*.json),
# created or updated on every run; --alert-email creates notification channels.
# Reference: docs/deploy.md, "Monitoring".

readonly DASHBOARD_ID=dicom-import
readonly EMAIL_RE='^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'
readonly CHANNEL_RE='^projects/[^/]+/notificationChannels/[0-9]+$'

validate_monitoring() {
  ALERT_EMAIL_LIST="" ALERT_CHANNEL_LIST=""
  local -a items
  local item
  read -r -a items <<<"${ALERT_EMAILS_IN//,/ }"
  for item in ${items[@]+"${items[@]}"}; do
    [[ ${item} =~ ${EMAIL_RE} ]] || die_usage "--alert-email '${item}' is not an email address, e.g. --alert-email imaging-oncall@hospital.example"
    [[ " ${ALERT_EMAIL_LIST} " == *" ${item} "* ]] || ALERT_EMAIL_LIST+="${ALERT_EMAIL_LIST:+ }${item}"
  done
  read -r -a items <<<"${ALERT_CHANNELS_IN//,/ }"
  for item in ${items[@]+"${items[@]}"}; do
    [[ ${item} =~ ${CHANNEL_RE} ]] \
      || die_usage "--alert-channel '${item}' is not a notification channel: use projects/PROJECT/notificationChannels/ID (gcloud beta monitoring channels list --format='value(name)')"
    [[ " ${ALERT_CHANNEL_LIST} " == *" ${item} "* ]] || ALERT_CHANNEL_LIST+="${ALERT_CHANNEL_LIST:+ }${item}"
  done
  local file
  for file in "${SOURCE_DIR}/monitoring/dashboard.json" "${SOURCE_DIR}"/monitoring/metrics/*.json \
              "${SOURCE_DIR}"/monitoring/alerts/*.json; do
    [[ -f ${file} ]] || die "${file} is missing: restore monitoring/ from the repository"
  done
}

# monitoring_json FILE: the file's JSON on one line, with the values deploy.sh
# chose in place of {{PROJECT}}, {{FOLLOWUP_DEAD_LETTER}}, {{RESULTS_DEAD_LETTER}}.
monitoring_json() {
  local line out=""
  while IFS= read -r line || [[ -n ${line} ]]; do
    out+=${line#"${line%%[![:space:]]*}"}   # JSON needs no whitespace between tokens
  done <"$1"
  out=${out//'{{PROJECT}}'/"${PROJECT}"}
  out=${out//'{{FOLLOWUP_DEAD_LETTER}}'/"${FOLLOWUP_DLQ_ID}"}
  out=${out//'{{RESULTS_DEAD_LETTER}}'/"${RESULTS_DLQ_ID}"}
  [[ ${out} != *'{{'* ]] || die "$1 holds a {{PLACEHOLDER}} deploy.sh does not know"
  printf '%s' "${out}"
}

deploy_log_metrics() {
  local file name
  for file in "${SOURCE_DIR}"/monitoring/metrics/*.json; do
    name=$(basename "${file}" .json)
    converge "log-based metric ${name}" \
      gcloud logging metrics describe "${name}" --project="${PROJECT}" -- \
      gcloud logging metrics update "${name}" --project="${PROJECT}" --config-from-file="${file}" -- \
      gcloud logging metrics create "${name}" --project="${PROJECT}" --config-from-file="${file}"
  done
}

deploy_dashboard() {
  local config
  config=$(monitoring_json "${SOURCE_DIR}/monitoring/dashboard.json")
  converge "dashboard ${DASHBOARD_ID}" \
    gcloud monitoring dashboards describe "${DASHBOARD_ID}" --project="${PROJECT}" -- \
    gcloud monitoring dashboards update "${DASHBOARD_ID}" --project="${PROJECT}" --config="${config}" -- \
    gcloud monitoring dashboards create --project="${PROJECT}" --config="${config}"
}

# Sets NOTIFICATION_CHANNELS: one email channel per --alert-email (found by its
# address, or created), then every --alert-channel; comma-separated.
notification_channels() {
  NOTIFICATION_CHANNELS=""
  local email n=0 var
  for email in ${ALERT_EMAIL_LIST}; do
    n=$(( n + 1 ))
    var=ALERT_CHANNEL_${n}
    find_or_create "${var}" \
      gcloud beta monitoring channels list --project="${PROJECT}" \
      --filter="type=\"email\" AND labels.email_address=\"${email}\"" --format='value(name)' --limit=1 -- \
      gcloud beta monitoring channels create --project="${PROJECT}" --type=email \
      --display-name="DICOM import: ${email}" --channel-labels="email_address=${email}" --format='value(name)'
    NOTIFICATION_CHANNELS+="${NOTIFICATION_CHANNELS:+,}${!var}"
  done
  for email in ${ALERT_CHANNEL_LIST}; do
    NOTIFICATION_CHANNELS+="${NOTIFICATION_CHANNELS:+,}${email}"
  done
}

# An alert policy is found by its userLabels (app, policy = the file's name):
# updated in place (its notification channels replaced by this run's), or created.
deploy_alert_policy() {
  local file=$1 key policy var
  key=$(basename "${file}" .json)
  var=ALERT_POLICY_$(printf '%s' "${key//-/_}" | tr '[:lower:]' '[:upper:]')
  policy=$(monitoring_json "${file}")
  local -a find=(gcloud alpha monitoring policies list --project="${PROJECT}"
    --filter="userLabels.app=dicom-import AND userLabels.policy=${key}" --format='value(name)' --limit=1)
  local -a set_channels=(--clear-notification-channels) create_channels=()
  if [[ -n ${NOTIFICATION_CHANNELS} ]]; then
    set_channels=(--set-notification-channels="${NOTIFICATION_CHANNELS}")
    create_channels=(--notification-channels="${NOTIFICATION_CHANNELS}")
  fi
  local -a create=(gcloud alpha monitoring policies create --project="${PROJECT}" --policy="${policy}"
    ${create_channels[@]+"${create_channels[@]}"})
  if dry; then
    local -a update=(gcloud alpha monitoring policies update "\${${var}}" --project="${PROJECT}" --policy="${policy}"
      "${set_channels[@]}")
    printf '%s="$(%s)"\n' "${var}" "$(command_line "${find[@]}")"
    printf 'if [ -n "${%s}" ]; then %s; else %s; fi\n' "${var}" "$(command_line "${update[@]}")" \
      "$(command_line "${create[@]}")"
    return
  fi
  local found
  found=$("${find[@]}") || die "look-up failed: $(command_line "${find[@]}")"
  found=${found%%$'\n'*}
  if [[ -n ${found} ]]; then
    say "exists: alert policy ${key} (updating)"
    gcloud alpha monitoring policies update "${found}" --project="${PROJECT}" --policy="${policy}" "${set_channels[@]}"
  else
    say "creating: alert policy ${key}"
    "${create[@]}"
  fi
}

deploy_monitoring() {
  say "monitoring: log-based metrics, dashboard, alert policies"
  deploy_log_metrics
  deploy_dashboard
  notification_channels
  if [[ -z ${NOTIFICATION_CHANNELS} ]]; then
    say "alert policies get no notification channel (incidents show in the console only): pass --alert-email ADDR or --alert-channel NAME to be notified"
  fi
  local file
  for file in "${SOURCE_DIR}"/monitoring/alerts/*.json; do
    deploy_alert_policy "${file}"
  done
}

summary() {
  dry && return
  say "done: ${FN_INTAKE} (gs://${INBOX} finalize), ${FN_FOLLOWUP} (${FOLLOWUP_TOPIC_ID}), ${FN_EXPORT} (${EXPORT_REQUESTS_TOPIC_ID}), ${FN_RECONCILE} (${SCHEDULER_JOB}: ${RECONCILE_SCHEDULE})"
  say "results on projects/${PROJECT}/topics/${RESULTS_TOPIC_ID}; verify with the commands in docs/deploy.md"
  say "operators: RESULTS_SUBSCRIPTION=projects/${PROJECT}/subscriptions/${RESULTS_OPS_SUBSCRIPTION} for python -m handlers tail (docs/cli.md: against production)"
}

main() {
  parse_args "$@"
  validate
  BIND_ATTEMPTS=${DEPLOY_BIND_ATTEMPTS:-5}
  RETRY_SLEEP=${DEPLOY_RETRY_SLEEP:-5}
  if dry; then
    say "dry run: printing the commands, running nothing"
    printf '#!/usr/bin/env bash\n# deploy.sh --dry-run for project %s: what a real run executes, in order.\n' "${PROJECT}"
    printf '%s\n' '# Save it and run it with bash -eu FILE, or paste the lines into a shell.'
  else
    command -v gcloud >/dev/null || die "gcloud is not on PATH: install the Google Cloud CLI"
  fi
  # Never stop for an interactive prompt; the flags say everything.
  export CLOUDSDK_CORE_DISABLE_PROMPTS=1
  dry && printf 'export CLOUDSDK_CORE_DISABLE_PROMPTS=1\n'

  enable_apis
  find_identities
  check_kms_key_location
  grant_kms_key
  create_topics
  create_state_bucket
  create_export_bucket
  create_service_account
  grant_runtime_sa
  grant_hash_key_secret
  grant_failure_policies
  grant_service_agents
  # The table gets the schema's new columns before functions that write them run.
  ensure_results_table
  deploy_functions
  revoke_unused_failure_policies
  grant_invoker
  configure_trigger_subscriptions
  ensure_scheduler_job
  deploy_monitoring
  summary
}

main "$@"
