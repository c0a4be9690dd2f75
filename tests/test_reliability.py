"""Faults and bad input around a training run: one-line errors, preemption, locks, corrupt checkpoints,
changed configs on resume, orphan processes. Tiny models on the built-in dataset, real processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ferjax import train, workdir as workdir_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import REPO, TINY, _cli_args, _config, _final_state  # noqa: E402


@pytest.fixture(scope='module')
def data_dir(synthetic_tiny):
  return synthetic_tiny


def _run(args, timeout=300, **kwargs):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def _one_line_error(result, *fragments):
  assert result.returncode not in (0, None), result.stdout[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


@pytest.mark.parametrize('case,fragments', [
    ('fold', ['dataset.fold', '[0, 9]', '12']),
    ('config_arg', ["'foo'", 'fold', 'ablation']),
    ('config_file', ['no such config file', 'nope.py']),
    ('unknown_override', ['--config.train.foo', "unknown key 'foo'", 'learning_rate']),
    ('workdir_is_file', ['is a file']),
])
def test_user_errors_are_one_line(data_dir, tmp_path, case, fragments):
  args = _cli_args(data_dir, tmp_path / 'w')
  if case == 'fold':
    args.append('--config.dataset.fold=12')
  elif case == 'config_arg':
    args[args.index('configs/res_rbg.py:synthetic')] = 'configs/res_rbg.py:synthetic,foo=1'
  elif case == 'config_file':
    args[args.index('configs/res_rbg.py:synthetic')] = 'configs/nope.py'
  elif case == 'unknown_override':
    args.append('--config.train.foo=1')
  elif case == 'workdir_is_file':
    (tmp_path / 'w').write_text('not a directory')
  _one_line_error(_run(args), *fragments)


def test_batch_not_divisible_by_devices_is_one_line(data_dir, tmp_path):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  result = _run(_cli_args(data_dir, tmp_path / 'w', **{'input.batch_size': 3}), env=env)
  _one_line_error(result, 'input.batch_size', 'multiple of the 2 devices', 'found 3')


@pytest.mark.skipif(os.access('/proc/sys', os.W_OK) or not os.path.isdir('/proc/sys'),
                    reason='needs a directory this user cannot write')
def test_read_only_workdir_is_one_line(data_dir, tmp_path):
  # /proc/sys refuses new files even to root (tests run as root in CI, where chmod alone would not do).
  _one_line_error(_run(_cli_args(data_dir, '/proc/sys')), 'not writable', '/proc/sys')
  _one_line_error(_run(_cli_args(data_dir, '/proc/sys/ferjax_run')), 'cannot create --workdir')


def test_resume_refuses_a_changed_trajectory_and_keeps_config_history(data_dir, tmp_path):
  steps = {'train.num_steps': 2}
  assert _run(_cli_args(data_dir, tmp_path, **steps)).returncode == 0
  # Four fields that change the trajectory, changed in one rerun (one process start, not four): the
  # error names each one, as the resume refuses every one of them.
  refused = (('train.learning_rate', 0.5, 0.001), ('dataset.image_size', 48, 32), ('seed', 3, 0),
             ('augment.flip', False, True))
  line = _one_line_error(_run(_cli_args(data_dir, tmp_path, **steps,
                                        **{key: value for key, value, _ in refused})),
                         '(4 field(s) differ')
  for key, value, old in refused:
    assert f'{key}: {old!r} in the checkpoint, {value!r} now' in line
  # Cadences, worker counts and a longer run are allowed; each start is kept in the history.
  allowed = {'train.num_steps': 6, 'train.log_every_steps': 1, 'input.worker_count': 1}
  result = _run(_cli_args(data_dir, tmp_path, **allowed))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'train.num_steps: 2 -> 6' in result.stdout
  history = [json.loads(line) for line in (tmp_path / 'config_history.jsonl').read_text().splitlines()]
  assert [h['resumed_from_step'] for h in history] == [None, 2]
  assert history[0]['config']['train']['num_steps'] == 2
  assert json.loads((tmp_path / 'config.json').read_text())['train']['num_steps'] == 6


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path):
  config = {'train.num_steps': 6, 'train.checkpoint_every_steps': 2, 'train.max_to_keep': 3}
  assert _run(_cli_args(data_dir, tmp_path, **config)).returncode == 0
  # Truncate every array data file of the step-6 (final) checkpoint.
  damaged = 0
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '6' / 'state'):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 256 and not name.endswith(('.json', 'METADATA')):
        with open(path, 'r+b') as f:
          f.truncate(64)
        damaged += 1
  assert damaged
  (tmp_path / 'report.json').unlink()
  # The same command again: step 6 cannot be read, so the run resumes from step 4 and trains again.
  result = _run(_cli_args(data_dir, tmp_path, **config))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'checkpoint at step 6 cannot be read' in result.stdout
  assert 'Resumed from' in result.stdout and 'at step 4' in result.stdout
  assert (tmp_path / 'checkpoints_unreadable' / '6').is_dir()  # Moved aside, not deleted.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4', '6']
  assert json.loads((tmp_path / 'report.json').read_text())['step'] == 6


def test_a_second_run_on_a_workdir_in_use_stops_and_a_stale_lock_is_taken_over(data_dir, tmp_path):
  tmp_path.mkdir(exist_ok=True)
  lock = workdir_lib.RunLock(tmp_path).acquire()
  try:
    line = _one_line_error(_run(_cli_args(data_dir, tmp_path)), 'in use by', f'process {os.getpid()}')
    assert 'another --workdir' in line
  finally:
    lock.release()
  assert not (tmp_path / 'checkpoints').exists()
  # A lock file left by a process that died (no flock held any more) is taken over with a note.
  (tmp_path / 'run.lock').write_text('process 999999 on elsewhere (started yesterday)')
  result = _run(_cli_args(data_dir, tmp_path, **{'train.num_steps': 2}))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'took over the lock' in result.stdout and 'process 999999' in result.stdout
  assert (tmp_path / 'run.lock').read_text() == ''  # Released at the end.


def _descendants(pid: int) -> set[int]:
  parents = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        pass
  found, frontier = set(), {pid}
  while frontier:
    frontier = {p for p, parent in parents.items() if parent in frontier} - found
    found |= frontier
  return found


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def _wait_for(path, process, timeout=240):
  deadline = time.time() + timeout
  while not path.exists():
    assert process.poll() is None, 'training ended too early'
    assert time.time() < deadline, f'{path} did not appear'
    time.sleep(0.05)


def test_no_orphan_processes_after_sigkill(data_dir, tmp_path):
  args = _cli_args(data_dir, tmp_path, **{'input.worker_count': 2, 'train.num_steps': 12,
                                          'train.checkpoint_every_steps': 2})
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for(tmp_path / 'checkpoints' / '2', process)
    children = _descendants(process.pid)
  finally:
    process.kill()
    process.wait()
  assert len(children) >= 2, 'expected grain worker processes'
  deadline = time.time() + 20
  while any(_alive(p) for p in children) and time.time() < deadline:
    time.sleep(0.2)
  assert not [p for p in children if _alive(p)], 'processes outlived the killed trainer'


def _stop(process) -> None:
  """Kills a process a failed test left running."""
  if process.poll() is None:
    process.kill()
  process.communicate()


def test_sigterm_saves_exits_for_requeue_and_resumes_exactly(data_dir, tmp_path):
  num_steps = 12  # SIGTERM comes once step 1 is logged: it is handled well before step 12.
  run = {'train.num_steps': num_steps, 'train.checkpoint_every_steps': 1000,
         'train.log_every_steps': 1}
  reference = _run(_cli_args(data_dir, tmp_path / 'a', **run))
  assert reference.returncode == 0, reference.stderr[-3000:]

  workdir = tmp_path / 'b'
  process = subprocess.Popen(_cli_args(data_dir, workdir, **run), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(workdir / 'metrics.jsonl', process)  # Training has started: step 1 was logged.
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
  finally:
    _stop(process)
  assert process.returncode == train.EXIT_PREEMPTED, err[-3000:]
  saved = [int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit()]
  logged = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  # Saved at once, not at a cadence.
  assert saved == [max(logged)] and saved[0] < num_steps, (saved, logged)
  assert 'Preempted: saved step' in out

  resumed = _run(_cli_args(data_dir, workdir, **run))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'at step {saved[0]}' in resumed.stdout
  a, b = _final_state(tmp_path / 'a', num_steps), _final_state(workdir, num_steps)
  for x, y in zip(*map(lambda s: __import__('jax').tree.leaves(s), (a, b))):
    np.testing.assert_array_equal(x, y)


TRAIN_STEP_CACHE_ENTRY = 'jit_train_step-'  # jax names a cached program after the jitted function.


def test_sigterm_while_compiling_still_saves(data_dir, tmp_path, compilation_cache):
  # The session's compilation cache minus the train step: the model's initialisers load from it, and
  # the first step compiles for real, as in a fresh run, when the signal comes (or just before it).
  cache = tmp_path / 'jax_cache'
  shutil.copytree(compilation_cache, cache,
                  ignore=lambda _, names: [n for n in names if n.startswith(TRAIN_STEP_CACHE_ENTRY)])
  workdir = tmp_path / 'w'
  process = subprocess.Popen(_cli_args(data_dir, workdir, **{'train.num_steps': 12}), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(cache)})
  try:
    _wait_for(workdir / 'config.json', process)  # Set up; the first step compiles now.
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
  finally:
    _stop(process)
  assert process.returncode == train.EXIT_PREEMPTED, err[-3000:]
  saved = [int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit()]
  assert len(saved) == 1 and saved[0] <= 2, saved


def test_sigterm_handler_is_restored_after_training(data_dir, tmp_path):
  def mine(signum, frame):
    del signum, frame
  previous = signal.signal(signal.SIGTERM, mine)
  try:
    train.train_and_evaluate(_config(data_dir, **{'train.num_steps': 2}), str(tmp_path))
    assert signal.getsignal(signal.SIGTERM) is mine
  finally:
    signal.signal(signal.SIGTERM, previous)
