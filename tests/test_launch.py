"""launch/: the TPU VM script's --dry-run prints the documented gcloud sequence; both scripts are
shellcheck-clean and refuse bad arguments with one line."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, 'launch', 'tpu_vm.sh')
SLURM = os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')
BASE = ['--project', 'proj', '--zone', 'us-central2-b', '--accelerator', 'v4-32',
        '--workdir', 'gs://bucket/runs/ck0']


def _tpu(*args, env=None):
  return subprocess.run(['bash', TPU, *args], capture_output=True, text=True, timeout=60,
                        env={**os.environ, 'USER': 'alice', **(env or {})})


def test_tpu_dry_run_prints_the_whole_gcloud_sequence():
  result = _tpu(*BASE, '--spot', '--dry-run', '--', '--config', 'configs/res_rbg.py:ck_plus')
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if not line.startswith('#')]
  where = '--project=proj --zone=us-central2-b'
  assert lines[0] == (f'gcloud compute tpus queued-resources create ferjax-alice-v4-32-qr {where} '
                      '--node-id=ferjax-alice-v4-32 --accelerator-type=v4-32 '
                      '--runtime-version=tpu-ubuntu2204-base --spot')
  ssh = f'gcloud compute tpus tpu-vm ssh ferjax-alice-v4-32 {where} --worker=all --command='
  assert lines[1].startswith(ssh) and 'mkdir' in lines[1]
  assert lines[2].startswith('gcloud compute tpus tpu-vm scp --recurse ') and '--worker=all' in lines[2]
  assert lines[3].startswith(ssh) and "pip\\ install\\ -q\\ -e\\ \\'.\\[tpu\\]\\'" in lines[3]
  assert lines[4].startswith(ssh) and 'ferjax.train\\ --workdir=gs://bucket/runs/ck0' in lines[4]
  assert 'configs/res_rbg.py:ck_plus' in lines[4]
  assert lines[5] == f'gcloud compute tpus queued-resources delete ferjax-alice-v4-32-qr {where} --force --quiet'
  assert len(lines) == 6
  assert 'state.state' in result.stdout  # The wait for ACTIVE is shown as a comment.


def test_tpu_defaults_and_options():
  result = _tpu(*BASE[:4], '--accelerator', 'v5litepod-16', *BASE[6:], '--name', 'mine', '--keep',
                '--dry-run', '--', '--config', 'c.py')
  assert result.returncode == 0, result.stderr
  assert '--runtime-version=v2-alpha-tpuv5-lite' in result.stdout and '--spot' not in result.stdout
  assert 'queued-resources delete' not in result.stdout  # --keep
  assert 'tpu-vm ssh mine ' in result.stdout


@pytest.mark.parametrize('args,message', [
    (BASE[:6] + ['--dry-run', '--', '--config', 'c.py'], 'missing --workdir'),
    (BASE[:6] + ['--workdir', '/local/run', '--dry-run', '--', '--config', 'c.py'], 'must be a gs://'),
    (BASE + ['--dry-run'], 'no training arguments'),
    (BASE + ['--bogus'], 'unknown option --bogus'),
    (BASE[:4] + ['--accelerator', 'v9-8'] + BASE[6:] + ['--dry-run', '--', 'x'], 'no default --runtime'),
])
def test_tpu_bad_arguments_are_one_line(args, message):
  result = _tpu(*args)
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('error: ') and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_slurm_script_requeues_on_the_preemption_exit_code():
  text = open(SLURM).read()
  assert '#SBATCH --requeue' in text and '#SBATCH --signal=TERM@' in text
  assert 'srun --kill-on-bad-exit=1 python -m ferjax.train --multiprocess "$@"' in text
  assert 'status == 143' in text and 'scontrol requeue' in text
  result = subprocess.run(['bash', SLURM], capture_output=True, text=True, timeout=30)
  assert result.returncode == 2 and 'no training arguments' in result.stderr


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck is not installed')
def test_launch_scripts_pass_shellcheck():
  result = subprocess.run(['shellcheck', TPU, SLURM, os.path.join(REPO, '.ci', 'run')],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout
