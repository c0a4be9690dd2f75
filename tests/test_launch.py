"""launch/: the three cluster paths, checked without a cloud.

Each dry run prints the real commands; the tests run the parts that can run here (the `git archive` of the
code shipped, the workers' Python check, the shell scripts' syntax) and validate the GKE JobSet manifest
against JobSet's API schema and Kubernetes' own (kubernetes-validate, strict). The TPU VM requeue loop runs
against a stand-in `gcloud` on PATH that records its calls (no Google Cloud is reachable from a test).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, 'launch', 'tpu_vm.sh')
GKE = os.path.join(REPO, 'launch', 'gke_tpu.sh')
SLURM = os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')
BASE = ['--project', 'proj', '--zone', 'us-central2-b', '--accelerator', 'v4-32',
        '--workdir', 'gs://bucket/runs/ck0']
TRAIN = ['--config', 'configs/res_rbg.py:ck_plus,fold=0', '--config.train.note=a "quoted" arg']
JOBSET_SCHEMA = os.path.join(REPO, 'tests', 'data', 'jobset_v1alpha2.schema.json')
PYTHON_CHECK = re.compile(r"python -c ('import sys; v = sys.version_info; .*')")


def _run(script, *args, env=None, timeout=60):
  return subprocess.run(['bash', script, *args], capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'USER': 'alice', **(env or {})})


@pytest.fixture(scope='module')
def checkout(tmp_path_factory):
  """A clone of this repository's HEAD (a clean checkout) with untracked files a user might have around."""
  if not os.path.isdir(os.path.join(REPO, '.git')) and not os.path.isfile(os.path.join(REPO, '.git')):
    pytest.skip('not a git checkout')
  path = str(tmp_path_factory.mktemp('checkout') / 'ferjax')
  subprocess.run(['git', 'clone', '--quiet', REPO, path], check=True, timeout=60)
  for junk in ('runs/ck0/checkpoint.bin', '.venv/bin/python', 'data/raw/video.mp4', 'notes.txt'):
    os.makedirs(os.path.dirname(os.path.join(path, junk)), exist_ok=True)
    with open(os.path.join(path, junk), 'w') as f:
      f.write('not committed')
  commit = subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          check=True).stdout.strip()
  return path, commit


def _python310():
  """A working Python 3.10 interpreter, or None."""
  candidates = [shutil.which('python3.10')]
  pyenv = os.path.expanduser('~/.pyenv/versions')
  if os.path.isdir(pyenv):
    candidates += [os.path.join(pyenv, v, 'bin', 'python3.10') for v in sorted(os.listdir(pyenv))
                   if v.startswith('3.10')]
  for exe in filter(None, candidates):
    try:
      out = subprocess.run([exe, '-c', 'import sys; print(sys.version_info[:2])'], capture_output=True,
                           text=True, timeout=30)
    except OSError:
      continue
    if out.returncode == 0 and out.stdout.strip() == '(3, 10)':
      return exe
  return None


def _check_shipped_archive(command, commit, tmp_path):
  """Runs the dry run's `git archive` command; the archive holds exactly the committed tree of `commit`."""
  argv = shlex.split(command)
  archive = str(tmp_path / os.path.basename(argv[argv.index('-o') + 1]))
  argv[argv.index('-o') + 1] = archive
  assert argv[-1] == commit and os.path.basename(archive) == f'ferjax-{commit}.tar.gz'
  subprocess.run(argv, check=True, timeout=60)
  with tarfile.open(archive) as tar:
    names = {m.name for m in tar.getmembers() if not m.isdir()}
    assert tar.extractfile('ferjax/source_commit.txt').read().decode().strip() == commit
  committed = subprocess.run(['git', '-C', argv[2], 'ls-files', '-z'], capture_output=True, text=True,
                             check=True).stdout.strip('\0').split('\0')
  assert names == set(committed)
  assert not any(n.startswith(('runs/', '.venv/', 'data/', 'notes.txt')) for n in names)
  return archive


def _check_recorded_commit(archive, commit, tmp_path):
  """ferjax run from the unpacked archive (no .git) records the archive's commit as its provenance."""
  unpacked = tmp_path / 'unpacked'
  unpacked.mkdir()
  with tarfile.open(archive) as tar:
    tar.extractall(unpacked, filter='data')
  code = 'from ferjax import provenance; print(provenance.code_version())'
  out = subprocess.run([sys.executable, '-c', code], cwd=unpacked, capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'PYTHONPATH': str(unpacked)}, check=True).stdout
  assert out.strip() == str({'git_commit': commit, 'git_dirty': False})


def _check_python_line(script):
  """The script's Python check passes on this Python (>= 3.11) and stops a Python 3.10 with one message."""
  check = shlex.split(PYTHON_CHECK.search(script).group(1))[0]
  assert subprocess.run([sys.executable, '-c', check], timeout=30).returncode == 0
  if (python310 := _python310()) is not None:
    result = subprocess.run([python310, '-c', check], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and 'ferjax needs Python >= 3.11' in result.stderr
    assert '3.10' in result.stderr


# --- Cloud TPU VM ---------------------------------------------------------------------------------------

def test_tpu_dry_run_ships_the_commit_provisions_python_and_requeues(checkout, tmp_path):
  path, commit = checkout
  result = _run(TPU, *BASE, '--spot', '--source', path, '--dry-run', '--', *TRAIN)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  where = '--project=proj --zone=us-central2-b'
  ssh = f'gcloud compute tpus tpu-vm ssh ferjax-alice-v4-32 {where} --worker=all --command='
  lines = [line for line in out.splitlines() if not line.startswith('#')]
  assert lines[0] == (f'gcloud compute tpus queued-resources create ferjax-alice-v4-32-qr {where} '
                      '--node-id=ferjax-alice-v4-32 --accelerator-type=v4-32 '
                      '--runtime-version=tpu-ubuntu2204-base --spot')
  assert lines[1].startswith(f'git -C {path} archive --format=tar.gz -o ')
  _check_recorded_commit(_check_shipped_archive(lines[1], commit, tmp_path), commit, tmp_path)
  archive = f'ferjax-{commit}.tar.gz'
  assert lines[2].startswith('gcloud compute tpus tpu-vm scp ') and lines[2].endswith(f'{where} --worker=all')
  assert f'ferjax-alice-v4-32:\\~/{archive}' in lines[2]

  # The workers' set-up, in order: the archive into a fresh ~/ferjax, uv from PyPI, a managed CPython 3.11,
  # the virtualenv on it, the Python check, the locked install.
  setup = re.search(r"--command=\"\$\(cat <<'WORKER'\n(.*?)\nWORKER\n\)\"", out, re.S).group(1)
  assert lines[3] == ssh + '"$(cat <<\'WORKER\''
  steps = [f'tar -xzf ~/{archive} -C ~/ferjax', 'pip install --user --quiet --upgrade uv==',
           '~/.local/bin/uv python install 3.11', '~/.local/bin/uv venv --seed --python 3.11 .venv',
           '.venv/bin/python -c \'import sys; v = sys.version_info',
           ".venv/bin/python -m pip install --quiet -e '.[tpu]' -c constraints.txt"]
  positions = [setup.find(step) for step in steps]
  assert -1 not in positions and positions == sorted(positions), positions
  assert subprocess.run(['bash', '-n', '-c', setup], timeout=30).returncode == 0
  _check_python_line(setup)

  train = next(line for line in lines if 'ferjax.train' in line)
  assert train.startswith(ssh)
  remote = shlex.split(shlex.split(train)[-1].removeprefix('--command='))
  assert remote[:5] == ['cd', '~/ferjax', '&&', '.venv/bin/python', '-m']
  assert remote[5:] == ['ferjax.train', '--workdir=gs://bucket/runs/ck0', *TRAIN]
  assert lines[-1] == f'gcloud compute tpus queued-resources delete ferjax-alice-v4-32-qr {where} --force --quiet'
  assert f'commit {commit}' in out and 'state.state' in out
  requeue = next(line for line in out.splitlines() if line.startswith('# on exit 143'))
  assert '255' in requeue and 'at most 10 times' in requeue and 'gs://bucket/runs/ck0' in requeue


@pytest.mark.parametrize('accelerator,runtime', [
    ('v4-8', 'tpu-ubuntu2204-base'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'), ('v5p-32', 'v2-alpha-tpuv5'),
    ('v6e-8', 'v2-alpha-tpuv6e')])
def test_tpu_runtime_follows_the_generation(checkout, accelerator, runtime):
  result = _run(TPU, *BASE[:4], '--accelerator', accelerator, *BASE[6:], '--python', '3.12', '--source',
                checkout[0], '--name', 'mine', '--keep', '--dry-run', '--', '--config', 'c.py')
  assert result.returncode == 0, result.stderr
  assert f'--runtime-version={runtime}' in result.stdout and '--spot' not in result.stdout
  assert 'uv python install 3.12' in result.stdout and '--python 3.12 .venv' in result.stdout
  assert 'queued-resources delete' not in result.stdout  # --keep
  assert 'tpu-vm ssh mine ' in result.stdout


def test_tpu_refuses_uncommitted_changes(checkout, tmp_path):
  path = str(tmp_path / 'dirty')
  subprocess.run(['git', 'clone', '--quiet', checkout[0], path], check=True, timeout=60)
  with open(os.path.join(path, 'constraints.txt'), 'a') as f:
    f.write('# local edit\n')
  for script, args in ((TPU, BASE), (GKE, ['--tpu', 'v6e', '--topology', '4x4', '--workdir', 'gs://b/r'])):
    result = _run(script, *args, '--source', path, '--dry-run', '--', '--config', 'c.py')
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.startswith('error: uncommitted changes') and 'constraints.txt' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


FAKE_GCLOUD = r'''#!/usr/bin/env bash
# Stand-in for the gcloud CLI: records each call; the training ssh exits with the next code in $EXIT_CODES.
args="$*"
echo "${args//$'\n'/ }" >> "$GCLOUD_LOG"
case "$*" in
  *"queued-resources describe"*) echo ACTIVE ;;
  *ferjax.train*)
    n=$(grep -c ferjax.train "$GCLOUD_LOG")
    codes=($EXIT_CODES)
    exit "${codes[$((n - 1))]}" ;;
esac
'''


@pytest.mark.parametrize('codes,expected_runs,expected_status', [
    ('143 255 0', 3, 0),   # Preempted twice (saved after SIGTERM; then the workers went away), then done.
    ('1', 1, 1),           # A user error is not requeued.
    ('143 143 143', 2, 143),  # --max-restarts 1.
])
def test_tpu_requeues_on_preemption_and_stops_on_other_failures(checkout, tmp_path, codes, expected_runs,
                                                                expected_status):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'gcloud').write_text(FAKE_GCLOUD)
  (bin_dir / 'gcloud').chmod(0o755)
  log = tmp_path / 'gcloud.log'
  env = {'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'GCLOUD_LOG': str(log), 'EXIT_CODES': codes,
         'TMPDIR': str(tmp_path)}
  result = _run(TPU, *BASE, '--max-restarts', '1' if codes == '143 143 143' else '5', '--source',
                checkout[0], '--', '--config', 'c.py', env=env)
  assert result.returncode == expected_status, result.stderr
  calls = log.read_text().splitlines()
  kinds = [next(k for k in ('create', 'describe', 'scp', 'ssh', 'delete') if k in call) for call in calls]
  attempt = ['create', 'describe', 'scp', 'ssh', 'ssh']
  expected = (attempt + ['delete']) * (expected_runs - 1) + attempt + ['delete']
  assert kinds == expected
  assert sum('ferjax.train' in call for call in calls) == expected_runs
  assert not list(tmp_path.glob('ferjax-*.tar.gz'))  # The local archive is removed at the end.


# --- GKE TPU slice (JobSet) -----------------------------------------------------------------------------

def _render_gke(checkout, *args):
  result = _run(GKE, '--tpu', 'v6e', '--topology', '4x4', '--workdir', 'gs://bucket/runs/ck0', '--spot',
                '--source', checkout[0], *args, '--dry-run', '--', *TRAIN)
  assert result.returncode == 0, result.stderr
  manifest = re.search(r"<<'MANIFEST'\n(.*?)\nMANIFEST\n", result.stdout, re.S).group(1)
  return result.stdout, yaml.safe_load(manifest)


def _validate_jobset(jobset):
  """Validates a JobSet against JobSet's v1alpha2 API and its Job template against Kubernetes' schema."""
  jsonschema = pytest.importorskip('jsonschema')
  kubernetes_validate = pytest.importorskip('kubernetes_validate')
  with open(JOBSET_SCHEMA) as f:
    jsonschema.validate(jobset, json.load(f))
  for replicated in jobset['spec']['replicatedJobs']:
    job = {'apiVersion': 'batch/v1', 'kind': 'Job', 'metadata': {'name': replicated['name']},
           **replicated['template']}
    kubernetes_validate.validate(job, '1.32.0', strict=True)


@pytest.mark.parametrize('args', [['--tpu', 'v6e', '--topology', '4x4', '--spot'],
                                  ['--tpu', 'v5p', '--topology', '2x2x4', '--max-restarts', '0'],
                                  ['--tpu', 'tpu7x', '--topology', '2x2x1', '--namespace', 'ml']])
def test_gke_manifest_validates_against_the_jobset_and_kubernetes_schemas(checkout, args):
  result = _run(GKE, *args, '--workdir', 'gs://b/r', '--source', checkout[0], '--dry-run', '--', *TRAIN)
  assert result.returncode == 0, result.stderr
  _validate_jobset(yaml.safe_load(re.search(r"<<'MANIFEST'\n(.*?)\nMANIFEST\n", result.stdout, re.S).group(1)))


def test_gke_manifest_runs_the_training_command_on_every_host(checkout, tmp_path):
  path, commit = checkout
  out, jobset = _render_gke(checkout)

  lines = out.splitlines()
  _check_shipped_archive(lines[1], commit, tmp_path)
  code_uri = f'gs://bucket/runs/ck0/code/ferjax-{commit}.tar.gz'
  assert lines[2] == f'gcloud storage cp {shlex.split(lines[1])[6]} {code_uri}'
  assert lines[3] == "kubectl create -f - <<'MANIFEST'"

  name = jobset['metadata']['name']
  assert name == 'ferjax-alice-v6e-4x4' and jobset['metadata']['labels']['ferjax/commit'] == commit
  (replicated,) = jobset['spec']['replicatedJobs']
  job = replicated['template']['spec']
  pod = job['template']['spec']
  assert replicated['replicas'] == 1 and job['parallelism'] == job['completions'] == 4  # 16 chips, 4 a host.
  assert job['completionMode'] == 'Indexed'
  assert pod['nodeSelector'] == {'cloud.google.com/gke-tpu-accelerator': 'tpu-v6e-slice',
                                 'cloud.google.com/gke-tpu-topology': '4x4', 'cloud.google.com/gke-spot': 'true'}
  (init,) = pod['initContainers']
  assert init['command'] == ['gcloud', 'storage', 'cp', code_uri, '/code/']
  (container,) = pod['containers']
  assert container['resources']['limits'] == {'google.com/tpu': '4'}

  # The same training command on every host, with the jax.distributed environment: host 0 (the pod of
  # completion index 0, reached through the JobSet's headless service) coordinates.
  env = {e['name']: e.get('value', e.get('valueFrom')) for e in container['env']}
  assert env['JAX_COORDINATOR_ADDRESS'] == f'{name}-{replicated["name"]}-0-0.{name}:8476'
  assert env['JAX_NUM_PROCESSES'] == '4'
  assert env['JAX_PROCESS_ID'] == {
      'fieldRef': {'fieldPath': "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
  assert env['FERJAX_WORKDIR'] == 'gs://bucket/runs/ck0' and env['FERJAX_ARCHIVE'] == f'ferjax-{commit}.tar.gz'
  command = container['command']
  assert command[:2] == ['bash', '-c'] and command[3:] == ['ferjax', *TRAIN]
  script = command[2]
  assert subprocess.run(['bash', '-n', '-c', script], timeout=30).returncode == 0
  _check_python_line(script)
  assert script.index('python -c') < script.index('tar -xzf') < script.index("-e '.[tpu]' -c constraints.txt")
  assert script.rstrip().endswith('exec python -m ferjax.train --workdir="$FERJAX_WORKDIR" "$@"')

  # Requeue contract: exit 143 (or a preempted node) fails the Job by its pod failure policy, which restarts
  # the whole JobSet; any other failure exhausts backoffLimit 0 and fails the JobSet.
  assert pod['restartPolicy'] == 'Never' and job['backoffLimit'] == 0
  rules = job['podFailurePolicy']['rules']
  assert {'action': 'FailJob', 'onExitCodes': {'containerName': 'ferjax', 'operator': 'In', 'values': [143]}} in rules
  assert {'action': 'FailJob', 'onPodConditions': [{'type': 'DisruptionTarget', 'status': 'True'}]} in rules
  policy = jobset['spec']['failurePolicy']
  assert policy['maxRestarts'] == 10
  actions = {tuple(r['onJobFailureReasons']): r['action'] for r in policy['rules']}
  assert actions == {('PodFailurePolicy',): 'RestartJobSet', ('BackoffLimitExceeded',): 'FailJobSet'}


def test_gke_validator_rejects_what_a_cluster_would_reject(checkout):
  pytest.importorskip('kubernetes_validate')
  jsonschema = pytest.importorskip('jsonschema')
  _, jobset = _render_gke(checkout)
  broken = json.loads(json.dumps(jobset))
  broken['spec']['failurePolicy']['rules'][0]['onJobFailureReasons'] = ['Preempted']
  with pytest.raises(jsonschema.ValidationError):
    _validate_jobset(broken)
  broken = json.loads(json.dumps(jobset))
  broken['spec']['replicatedJobs'][0]['template']['spec']['template']['spec']['containers'][0]['resource'] = {}
  with pytest.raises(Exception, match='resource'):
    _validate_jobset(broken)


@pytest.mark.parametrize('topology,tpu,hosts,chips', [('2x4', 'v6e', 1, 8), ('2x2x4', 'v5p', 4, 4),
                                                      ('4x8', 'v5e', 8, 4)])
def test_gke_hosts_follow_the_topology(checkout, topology, tpu, hosts, chips):
  result = _run(GKE, '--tpu', tpu, '--topology', topology, '--workdir', 'gs://b/r', '--source', checkout[0],
                '--dry-run', '--', '--config', 'c.py')
  assert result.returncode == 0, result.stderr
  jobset = yaml.safe_load(re.search(r"<<'MANIFEST'\n(.*?)\nMANIFEST\n", result.stdout, re.S).group(1))
  job = jobset['spec']['replicatedJobs'][0]['template']['spec']
  assert job['completions'] == hosts
  assert job['template']['spec']['containers'][0]['resources']['limits'] == {'google.com/tpu': str(chips)}
  assert 'gke-spot' not in result.stdout


@pytest.mark.parametrize('args,message', [
    (['--topology', '4x4', '--workdir', 'gs://b/r'], 'missing --tpu'),
    (['--tpu', 'v9', '--topology', '4x4', '--workdir', 'gs://b/r'], '--tpu must be one of'),
    (['--tpu', 'v6e', '--topology', '4by4', '--workdir', 'gs://b/r'], '--topology must look like'),
    (['--tpu', 'v6e', '--topology', '4x4', '--workdir', '/local'], 'must be a gs://'),
    (['--tpu', 'v6e', '--topology', '4x4', '--workdir', 'gs://b/r', '--chips-per-host', '3'], 'must divide'),
    (['--tpu', 'v6e', '--topology', '4x4', '--workdir', 'gs://b/r', '--name', 'x' * 41], 'DNS label'),
])
def test_gke_bad_arguments_are_one_line(args, message):
  result = _run(GKE, *args, '--dry-run', '--', '--config', 'c.py')
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('error: ') and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('args,message', [
    (BASE[:6] + ['--dry-run', '--', '--config', 'c.py'], 'missing --workdir'),
    (BASE[:6] + ['--workdir', '/local/run', '--dry-run', '--', '--config', 'c.py'], 'must be a gs://'),
    (BASE + ['--dry-run'], 'no training arguments'),
    (BASE + ['--bogus'], 'unknown option --bogus'),
    (BASE[:4] + ['--accelerator', 'v9-8'] + BASE[6:] + ['--dry-run', '--', 'x'], 'no default --runtime'),
    (BASE[:4] + ['--accelerator', 'tpu7x-8'] + BASE[6:] + ['--dry-run', '--', 'x'], 'launch/gke_tpu.sh'),
    (BASE + ['--python', '3.10', '--dry-run', '--', 'x'], '--python must be 3.11 or newer'),
])
def test_tpu_bad_arguments_are_one_line(args, message):
  result = _run(TPU, *args)
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('error: ') and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


# --- SLURM GPU nodes ------------------------------------------------------------------------------------

def test_slurm_script_requeues_on_the_preemption_exit_code():
  text = open(SLURM).read()
  assert '#SBATCH --requeue' in text and '#SBATCH --signal=TERM@' in text
  assert 'srun --kill-on-bad-exit=1 python -m ferjax.train --multiprocess "$@"' in text
  assert 'status == 143' in text and 'scontrol requeue' in text
  assert text.index('sys.version_info') < text.index('srun ')  # The Python check comes first.
  result = subprocess.run(['bash', SLURM], capture_output=True, text=True, timeout=30)
  assert result.returncode == 2 and 'no training arguments' in result.stderr


def test_slurm_script_stops_on_a_missing_virtualenv_or_an_old_python(tmp_path):
  args = ['--config', 'c.py', '--workdir', str(tmp_path / 'run')]
  result = _run(SLURM, *args, env={'FERJAX_VENV': str(tmp_path / 'none')})
  assert result.returncode == 2 and result.stderr.startswith('error: no virtualenv at')
  python310 = _python310()
  if python310 is None:
    pytest.skip('no Python 3.10 interpreter here')
  subprocess.run([python310, '-m', 'venv', '--without-pip', str(tmp_path / 'venv310')], check=True, timeout=60)
  result = _run(SLURM, *args, env={'FERJAX_VENV': str(tmp_path / 'venv310')})
  assert result.returncode == 2
  assert result.stderr.strip() == f'error: ferjax needs Python >= 3.11; {tmp_path}/venv310/bin/python is 3.10'


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck is not installed')
def test_launch_scripts_pass_shellcheck():
  result = subprocess.run(['shellcheck', TPU, GKE, SLURM, os.path.join(REPO, '.ci', 'run'),
                           os.path.join(REPO, 'scripts', 'check_install_resolves.sh')],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout
