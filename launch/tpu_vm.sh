#!/usr/bin/env bash
# Train ferjax on a Cloud TPU VM or pod slice: create it (queued resources, optionally spot), ship the
# committed code (a `git archive` of HEAD; a checkout with uncommitted changes is refused) to every worker,
# provision a Python >= 3.11 there (uv from PyPI installs a managed CPython: the TPU runtimes are Ubuntu 22.04
# with Python 3.10, which the locked jax/flax/grain do not support), install ferjax with the lock, start the
# same training command on all workers with a gs:// workdir, stream the log, and delete the TPU at the end.
# Preemption is survived by requeueing: when the TPU is preempted, or the run exits with ferjax's preemption
# code (143: it saved on SIGTERM), the TPU is recreated and the same command resumes from the workdir.
#
#   bash launch/tpu_vm.sh --project my-proj --zone us-central2-b --accelerator v4-32 \
#       --workdir gs://my-bucket/runs/ck0 -- --config configs/res_rbg.py:ck_plus,fold=0
#
# Everything after `--` goes to `python -m ferjax.train`. `--dry-run` prints every command (gcloud, git,
# and what runs on the workers) instead of running it. Needs the gcloud CLI, logged in, with the TPU API
# enabled; the dataset must be readable from the workers (e.g. --config.dataset.data_dir=gs://bucket/tfds).
# The Cloud TPU API serves TPU v2 to v6e; TPU7x and later are managed through GKE (launch/gke_tpu.sh).
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --project P          Google Cloud project (required)
  --zone Z             TPU zone (required)
  --accelerator A      TPU type, e.g. v4-8, v4-32, v5litepod-16, v5p-32, v6e-8 (required)
  --workdir gs://...   run directory, must be on GCS (required)
  --runtime V          TPU software version (default: Google's for the generation: v2-v4
                       tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --python X.Y         Python for the workers' virtualenv, >= 3.11 (default 3.11, the lock's Python)
  --source DIR         git checkout of ferjax to ship (default: the one holding this script)
  --name N             TPU node name (default: ferjax-<user>-<accelerator>)
  --spot               use spot capacity (cheaper, preemptible)
  --max-restarts K     requeue at most K times after preemption (default 10)
  --keep               do not delete the TPU at the end
  --dry-run            print the commands, run nothing
EOF
}

die() {
  echo "error: $*" >&2
  exit 2
}

# uv from PyPI provisions the workers' Python; pinned so that every launch provisions the same way.
UV_VERSION=0.13.9

project='' zone='' accelerator='' workdir='' runtime='' python=3.11 name='' spot=0 max_restarts=10 keep=0
dry_run=0 source_dir=''
train_args=()
while (($#)); do
  case "$1" in
    --project) project=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --accelerator) accelerator=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --source) source_dir=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --max-restarts) max_restarts=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

missing=()
for required in project zone accelerator workdir; do
  [[ -n "${!required}" ]] || missing+=("--${required}")
done
((${#missing[@]} == 0)) || die "missing ${missing[*]} (see --help)"
[[ "$workdir" == gs://* ]] || die "--workdir must be a gs:// path that every worker can reach; found $workdir"
((${#train_args[@]})) ||
  die "no training arguments; pass them after --, e.g. -- --config configs/res_rbg.py:ck_plus"
if [[ ! "$python" =~ ^3\.([0-9]+)$ ]] || ((BASH_REMATCH[1] < 11)); then
  die "--python must be 3.11 or newer (jax, flax and grain publish no wheels for older Pythons); found $python"
fi
if [[ -z "$runtime" ]]; then
  # Google's table of TPU software versions for JAX (Cloud TPU API, "TPU software versions").
  case "$accelerator" in
    v2-* | v3-* | v4-*) runtime=tpu-ubuntu2204-base ;;
    v5litepod-*) runtime=v2-alpha-tpuv5-lite ;;
    v5p-*) runtime=v2-alpha-tpuv5 ;;
    v6e-*) runtime=v2-alpha-tpuv6e ;;
    tpu7* | v7*) die "the Cloud TPU API does not serve $accelerator (TPU7x and later); use GKE: launch/gke_tpu.sh" ;;
    *) die "no default --runtime for accelerator $accelerator; pass --runtime" ;;
  esac
fi

# The code shipped: exactly the committed tree of HEAD.
source_dir=${source_dir:-$(cd "$(dirname "$0")/.." && pwd)}
commit=$(git -C "$source_dir" rev-parse --verify -q HEAD 2>/dev/null) ||
  die "--source $source_dir is not a git checkout with a commit; launch/ ships committed code only"
if ! git -C "$source_dir" diff --quiet HEAD --; then
  changed=$(git -C "$source_dir" diff --name-only HEAD -- | head -5 | tr '\n' ' ')
  die "uncommitted changes in $source_dir (${changed% }); commit (or stash) them: only committed code is shipped"
fi

name=${name:-ferjax-${USER:-user}-${accelerator}}
queued="${name}-qr"
where=(--project="$project" --zone="$zone")
archive="ferjax-${commit}.tar.gz"
local_archive="${TMPDIR:-/tmp}/$archive"

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
  local state
  while state=$(gcloud compute tpus queued-resources describe "$queued" "${where[@]}" --format='value(state.state)')
        [[ "$state" != ACTIVE ]]; do
    echo "queued resource $queued: ${state:-unknown}"
    if [[ "$state" == FAILED || "$state" == SUSPENDED ]]; then
      echo "error: queued resource $queued is $state" >&2
      return 1
    fi
    sleep 30
  done
}

delete_tpu() {
  run gcloud compute tpus queued-resources delete "$queued" "${where[@]}" --force --quiet
}

on_all_workers() {
  if ((dry_run)) && [[ "$1" == *$'\n'* ]]; then  # A multi-line worker script, printed readably as a here-document.
    printf '%q ' gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all
    printf -- "--command=\"\$(cat <<'WORKER'\n%s\nWORKER\n)\"\n" "$1"
    return
  fi
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$1"
}

# What every worker runs before training: unpack the archive into a fresh ~/ferjax, install uv (PyPI) and
# with it a managed CPython $python (the image's python3 is 3.10), make the virtualenv, check its Python,
# install ferjax with the lock. libtpu comes from PyPI: the lock's jax[tpu] pins a libtpu release published
# there for Python 3.11-3.13 (CI checks it: scripts/check_install_resolves.sh).
worker_setup() {
  cat <<EOF
set -euo pipefail
rm -rf ~/ferjax && mkdir -p ~/ferjax && tar -xzf ~/$archive -C ~/ferjax && cd ~/ferjax
python3 -m pip install --user --quiet --upgrade uv==$UV_VERSION
~/.local/bin/uv python install $python
~/.local/bin/uv venv --seed --python $python .venv
.venv/bin/python -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else "error: ferjax needs Python >= 3.11; ~/ferjax/.venv has %d.%d" % v[:2])'
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[tpu]' -c constraints.txt
echo "\$(hostname): ferjax $commit on Python \$(.venv/bin/python -c 'import platform; print(platform.python_version())')"
EOF
}

train_command() {
  local quoted
  quoted=$(printf '%q ' "${train_args[@]}")
  echo "cd ~/ferjax && .venv/bin/python -m ferjax.train --workdir=$(printf '%q' "$workdir") ${quoted% }"
}

ship_code() {
  run git -C "$source_dir" archive --format=tar.gz -o "$local_archive" "$commit"
  run gcloud compute tpus tpu-vm scp "$local_archive" "$name:~/$archive" "${where[@]}" --worker=all
}

echo "# ferjax commit $commit -> $accelerator ($runtime), Python $python, workdir $workdir"
attempt=0
status=1
while :; do
  create_tpu
  ship_code
  on_all_workers "$(worker_setup)"
  set +e
  on_all_workers "$(train_command)"  # Streams every worker's output; JAX finds the other hosts itself.
  status=$?
  set -e
  if ((dry_run)); then
    echo "# on exit 143 (ferjax saved after SIGTERM) or 255 (ssh lost the workers: the TPU was preempted):" \
         "delete the TPU and repeat from the create, at most $max_restarts times; the rerun resumes from $workdir"
    break
  fi
  # 143: ferjax saved after SIGTERM (preemption notice); 255: ssh lost the workers (the TPU went away).
  if [[ $status -ne 143 && $status -ne 255 ]] || ((attempt >= max_restarts)); then
    break
  fi
  attempt=$((attempt + 1))
  echo "preempted (exit $status); requeue $attempt of $max_restarts: recreating $name and resuming from $workdir"
  delete_tpu
done
((keep)) || delete_tpu
((dry_run)) || rm -f "$local_archive"
exit "$status"
