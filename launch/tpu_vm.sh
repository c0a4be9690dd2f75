#!/usr/bin/env bash
# Train ferjax on a Cloud TPU VM or pod slice: create it (queued resources, optionally spot), copy this
# repository to every worker, install it, start the same training command on all workers with a gs://
# workdir, stream the log, and delete the TPU at the end. Preemption is survived by requeueing: when the
# TPU is preempted, or the run exits with ferjax's preemption code (143: it saved on SIGTERM), the TPU is
# recreated and the same command resumes from the workdir's last checkpoint.
#
#   bash launch/tpu_vm.sh --project my-proj --zone us-central2-b --accelerator v4-32 \
#       --workdir gs://my-bucket/runs/ck0 -- --config configs/res_rbg.py:ck_plus,fold=0
#
# Everything after `--` goes to `python -m ferjax.train`. `--dry-run` prints the gcloud commands instead of
# running them. Needs the gcloud CLI, logged in, with the TPU API enabled; the dataset must be readable from
# the workers (e.g. --config.dataset.data_dir=gs://my-bucket/tensorflow_datasets).
set -euo pipefail

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --project P          Google Cloud project (required)
  --zone Z             TPU zone (required)
  --accelerator A      TPU type, e.g. v4-8, v4-32, v5litepod-16, v6e-8 (required)
  --workdir gs://...   run directory, must be on GCS (required)
  --runtime V          TPU software version (default: by accelerator generation)
  --name N             TPU node name (default: ferjax-<user>-<accelerator>)
  --spot               use spot capacity (cheaper, preemptible)
  --max-restarts K     requeue at most K times after preemption (default 10)
  --keep               do not delete the TPU at the end
  --dry-run            print the commands, run nothing
EOF
}

project='' zone='' accelerator='' workdir='' runtime='' name='' spot=0 max_restarts=10 keep=0 dry_run=0
train_args=()
while (($#)); do
  case "$1" in
    --project) project=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --accelerator) accelerator=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --max-restarts) max_restarts=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

missing=()
for required in project zone accelerator workdir; do
  [[ -n "${!required}" ]] || missing+=("--${required}")
done
if ((${#missing[@]})); then
  echo "error: missing ${missing[*]} (see --help)" >&2
  exit 2
fi
if [[ "$workdir" != gs://* ]]; then
  echo "error: --workdir must be a gs:// path that every worker can reach; found $workdir" >&2
  exit 2
fi
if ((${#train_args[@]} == 0)); then
  echo "error: no training arguments; pass them after --, e.g. -- --config configs/res_rbg.py:ck_plus" >&2
  exit 2
fi
if [[ -z "$runtime" ]]; then
  case "$accelerator" in
    v4-*) runtime=tpu-ubuntu2204-base ;;
    v5litepod-*) runtime=v2-alpha-tpuv5-lite ;;
    v5p-*) runtime=v2-alpha-tpuv5 ;;
    v6e-*) runtime=v2-alpha-tpuv6e ;;
    *) echo "error: no default --runtime for accelerator $accelerator; pass --runtime" >&2; exit 2 ;;
  esac
fi
name=${name:-ferjax-${USER:-user}-${accelerator}}
queued="${name}-qr"
where=(--project="$project" --zone="$zone")

# Runs a command, or prints it (shell-quoted, one line) under --dry-run.
run() {
  if ((dry_run)); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

create_tpu() {
  local spot_flag=()
  ((spot)) && spot_flag=(--spot)
  run gcloud compute tpus queued-resources create "$queued" "${where[@]}" --node-id="$name" \
    --accelerator-type="$accelerator" --runtime-version="$runtime" "${spot_flag[@]}"
  if ((dry_run)); then
    echo "# wait until: gcloud compute tpus queued-resources describe $queued --project=$project --zone=$zone --format='value(state.state)' prints ACTIVE"
    return
  fi
  local state=''
  until [[ "$state" == ACTIVE ]]; do
    sleep 30
    state=$(gcloud compute tpus queued-resources describe "$queued" "${where[@]}" --format='value(state.state)')
    echo "queued resource $queued: ${state:-unknown}"
    if [[ "$state" == FAILED || "$state" == SUSPENDED ]]; then
      echo "error: queued resource $queued is $state" >&2
      return 1
    fi
  done
}

delete_tpu() {
  run gcloud compute tpus queued-resources delete "$queued" "${where[@]}" --force --quiet
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

install_ferjax() {
  local repo
  repo=$(cd "$(dirname "$0")/.." && pwd)
  on_all_workers 'rm -rf ~/ferjax && mkdir -p ~/ferjax'
  run gcloud compute tpus tpu-vm scp --recurse "$repo/." "$name:~/ferjax" "${where[@]}" --worker=all
  on_all_workers "cd ~/ferjax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e '.[tpu]' -c constraints.txt"
}

train_command() {
  local quoted
  quoted=$(printf '%q ' "${train_args[@]}")
  echo "cd ~/ferjax && .venv/bin/python -m ferjax.train --workdir=$(printf '%q' "$workdir") ${quoted% }"
}

attempt=0
status=1
while :; do
  create_tpu
  install_ferjax
  set +e
  on_all_workers "$(train_command)"  # Streams every worker's output; JAX finds the other hosts itself.
  status=$?
  set -e
  ((dry_run)) && break
  # 143: ferjax saved after SIGTERM (preemption notice); 255: ssh lost the workers (the TPU went away).
  if [[ $status -ne 143 && $status -ne 255 ]] || ((attempt >= max_restarts)); then
    break
  fi
  attempt=$((attempt + 1))
  echo "preempted (exit $status); requeue $attempt of $max_restarts: recreating $name and resuming from $workdir"
  delete_tpu
done
((keep)) || delete_tpu
exit "$status"
