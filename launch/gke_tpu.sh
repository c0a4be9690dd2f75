#!/usr/bin/env bash
# Train ferjax on a multi-host TPU slice in GKE: ship the committed code (a `git archive` of HEAD, uploaded
# next to the run as gs://<workdir>/code/ferjax-<commit>.tar.gz; a checkout with uncommitted changes is
# refused) and submit a JobSet that runs the same training command on every host of the slice, with the
# jax.distributed environment set (coordinator = host 0, process count, process id = the pod's index).
# Requeue contract, as on the other paths: ferjax saves on SIGTERM and exits 143; that exit (or the pod's
# node being preempted) fails the Job through its pod failure policy, and the JobSet restarts every host,
# which resume from the gs:// workdir's last checkpoint (at most --max-restarts times). Any other failure
# (a user error, exit 1) fails the JobSet at once instead of looping.
#
#   bash launch/gke_tpu.sh --tpu v6e --topology 4x4 --workdir gs://my-bucket/runs/ck0 \
#       -- --config configs/res_rbg.py:ck_plus,fold=0 --config.dataset.data_dir=gs://my-bucket/tfds
#
# Everything after `--` goes to `python -m ferjax.train`. `--dry-run` prints the commands and the JobSet
# manifest instead of running them. Needs kubectl pointed at a GKE cluster with a TPU node pool of that
# generation and topology, the JobSet controller installed, and a Kubernetes service account that can read
# and write the bucket (Workload Identity); see docs/clusters.md.
set -euo pipefail

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --tpu G              TPU generation: v4, v5e, v5p, v6e, tpu7x (required)
  --topology T         slice topology, e.g. 2x4, 4x4 (v5e, v6e), 2x2x4 (v4, v5p, tpu7x) (required)
  --workdir gs://...   run directory, must be on GCS (required)
  --chips-per-host N   TPU chips per host (default: all of a slice of <= 8 chips for v5e/v6e, else 4)
  --image I            container image with Python >= 3.11 (default python:3.11-slim)
  --service-account S  Kubernetes service account of the pods (default: default)
  --namespace NS       Kubernetes namespace (default: kubectl's)
  --name N             JobSet name (default: ferjax-<user>-<tpu>-<topology>)
  --spot               run on spot TPU nodes (cheaper, preemptible)
  --max-restarts K     restart the JobSet at most K times after preemption (default 10)
  --source DIR         git checkout of ferjax to ship (default: the one holding this script)
  --dry-run            print the commands and the manifest, run nothing
EOF
}

die() {
  echo "error: $*" >&2
  exit 2
}

tpu='' topology='' workdir='' chips_per_host='' image=python:3.11-slim service_account=default namespace=''
name='' spot=0 max_restarts=10 source_dir='' dry_run=0
train_args=()
while (($#)); do
  case "$1" in
    --tpu) tpu=$2; shift 2 ;;
    --topology) topology=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --chips-per-host) chips_per_host=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --service-account) service_account=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --max-restarts) max_restarts=$2; shift 2 ;;
    --source) source_dir=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

missing=()
for required in tpu topology workdir; do
  [[ -n "${!required}" ]] || missing+=("--${required}")
done
((${#missing[@]} == 0)) || die "missing ${missing[*]} (see --help)"
[[ "$workdir" == gs://* ]] || die "--workdir must be a gs:// path that every host can reach; found $workdir"
((${#train_args[@]})) ||
  die "no training arguments; pass them after --, e.g. -- --config configs/res_rbg.py:ck_plus"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number; found $max_restarts"
# GKE's node label for each generation (cloud.google.com/gke-tpu-accelerator).
case "$tpu" in
  v4) accelerator='tpu-v4-podslice' ;;
  v5e) accelerator='tpu-v5-lite-podslice' ;;
  v5p) accelerator='tpu-v5p-slice' ;;
  v6e) accelerator='tpu-v6e-slice' ;;
  tpu7x) accelerator=tpu7x ;;
  *) die "--tpu must be one of v4, v5e, v5p, v6e, tpu7x; found $tpu" ;;
esac
[[ "$topology" =~ ^[1-9][0-9]*(x[1-9][0-9]*){1,2}$ ]] || die "--topology must look like 4x4 or 2x2x4; found $topology"
chips=$((${topology//x/*}))
if [[ -z "$chips_per_host" ]]; then
  chips_per_host=4
  [[ ($tpu == v5e || $tpu == v6e) && $chips -le 8 ]] && chips_per_host=$chips
fi
if [[ ! "$chips_per_host" =~ ^[1-9][0-9]*$ ]] || ((chips % chips_per_host)); then
  die "--chips-per-host must divide the slice's $chips chips; found $chips_per_host"
fi
hosts=$((chips / chips_per_host))
# Strings go into the manifest as JSON/YAML double-quoted scalars; control characters would need escapes.
for value in "$image" "$workdir" "${train_args[@]}"; do
  [[ "$value" != *[[:cntrl:]]* ]] || die "arguments must not contain control characters (newlines, tabs)"
done

name=${name:-ferjax-${USER:-user}-${tpu}-${topology}}
name=$(echo "$name" | tr 'A-Z_.' 'a-z--')
[[ "$name" =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "--name must be a DNS label of at most 40 characters (it names the pods' hostnames); found $name"

# The code shipped: exactly the committed tree of HEAD.
source_dir=${source_dir:-$(cd "$(dirname "$0")/.." && pwd)}
commit=$(git -C "$source_dir" rev-parse --verify -q HEAD 2>/dev/null) ||
  die "--source $source_dir is not a git checkout with a commit; launch/ ships committed code only"
if ! git -C "$source_dir" diff --quiet HEAD --; then
  changed=$(git -C "$source_dir" diff --name-only HEAD -- | head -5 | tr '\n' ' ')
  die "uncommitted changes in $source_dir (${changed% }); commit (or stash) them: only committed code is shipped"
fi

archive="ferjax-${commit}.tar.gz"
code_uri="${workdir%/}/code/$archive"
local_archive="${TMPDIR:-/tmp}/$archive"
kubectl=(kubectl)
[[ -z "$namespace" ]] || kubectl+=(--namespace="$namespace")

# A string as a YAML double-quoted scalar (also a JSON string).
q() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# What every host runs: check the image's Python, unpack the archive, install ferjax with the lock
# (libtpu from PyPI), then become the trainer (exec: SIGTERM reaches it, its exit code is the pod's).
host_script() {
  cat <<'EOF'
set -eu
python -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 11) else "error: ferjax needs Python >= 3.11; the image has %d.%d" % v[:2])'
mkdir -p /ferjax && tar -xzf "/code/$FERJAX_ARCHIVE" -C /ferjax && cd /ferjax
python -m pip install --quiet --root-user-action=ignore -e '.[tpu]' -c constraints.txt
exec python -m ferjax.train --workdir="$FERJAX_WORKDIR" "$@"
EOF
}

manifest() {
  local spot_selector='' arg
  ((spot)) && spot_selector=$'\n'"              cloud.google.com/gke-spot: \"true\""
  cat <<EOF
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $name
  labels:
    app.kubernetes.io/name: ferjax
    ferjax/commit: "$commit"
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: $max_restarts
    rules:
    # Exit 143 (saved after SIGTERM) or a preempted node: restart every host; they resume from the workdir.
    - name: preempted
      action: RestartJobSet
      onJobFailureReasons: [PodFailurePolicy]
    # Any other failure (e.g. a user error, exit 1): stop; rerunning would fail the same way.
    - name: failed
      action: FailJobSet
      onJobFailureReasons: [BackoffLimitExceeded]
  replicatedJobs:
  - name: slice
    replicas: 1
    template:
      spec:
        parallelism: $hosts
        completions: $hosts
        completionMode: Indexed
        backoffLimit: 0
        podFailurePolicy:
          rules:
          - action: FailJob
            onExitCodes:
              containerName: ferjax
              operator: In
              values: [143]
          - action: FailJob
            onPodConditions:
            - type: DisruptionTarget
              status: "True"
        template:
          spec:
            restartPolicy: Never
            serviceAccountName: $(q "$service_account")
            terminationGracePeriodSeconds: 120
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: $accelerator
              cloud.google.com/gke-tpu-topology: "$topology"$spot_selector
            initContainers:
            - name: fetch-code
              image: gcr.io/google.com/cloudsdktool/google-cloud-cli:slim
              command: [gcloud, storage, cp, $(q "$code_uri"), /code/]
              volumeMounts:
              - {name: code, mountPath: /code}
            containers:
            - name: ferjax
              image: $(q "$image")
              command:
              - bash
              - -c
              - |
$(host_script | sed 's/^/                /')
              - ferjax
EOF
  for arg in "${train_args[@]}"; do
    echo "              - $(q "$arg")"
  done
  cat <<EOF
              env:
              - {name: FERJAX_ARCHIVE, value: "$archive"}
              - {name: FERJAX_WORKDIR, value: $(q "$workdir")}
              - {name: JAX_COORDINATOR_ADDRESS, value: "$name-slice-0-0.$name:8476"}
              - {name: JAX_NUM_PROCESSES, value: "$hosts"}
              - name: JAX_PROCESS_ID
                valueFrom:
                  fieldRef: {fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
              ports:
              - {containerPort: 8476, name: coordinator}
              - {containerPort: 8471, name: tpu-runtime}
              resources:
                requests: {google.com/tpu: "$chips_per_host"}
                limits: {google.com/tpu: "$chips_per_host"}
              volumeMounts:
              - {name: code, mountPath: /code}
            volumes:
            - {name: code, emptyDir: {}}
EOF
}

echo "# ferjax commit $commit -> GKE $accelerator $topology ($hosts host(s) x $chips_per_host chips), workdir $workdir"
if ((dry_run)); then
  quoted() { printf '%q ' "$@" | sed 's/ $//'; echo; }
  quoted git -C "$source_dir" archive --format=tar.gz -o "$local_archive" "$commit"
  quoted gcloud storage cp "$local_archive" "$code_uri"
  echo "$(quoted "${kubectl[@]}" create -f -) <<'MANIFEST'"
  manifest
  echo MANIFEST
  echo "# follow host 0: ${kubectl[*]} logs -f -l jobset.sigs.k8s.io/jobset-name=$name,batch.kubernetes.io/job-completion-index=0"
  exit 0
fi
git -C "$source_dir" archive --format=tar.gz -o "$local_archive" "$commit"
gcloud storage cp "$local_archive" "$code_uri"
rm -f "$local_archive"
manifest | "${kubectl[@]}" create -f -  # create, not apply: an existing JobSet of that name is an error
echo "Submitted JobSet $name. Follow host 0 with:"
echo "  ${kubectl[*]} logs -f -l jobset.sigs.k8s.io/jobset-name=$name,batch.kubernetes.io/job-completion-index=0"
echo "Status: ${kubectl[*]} get jobset $name   (Restarts counts the requeues after preemption)"
