"""Faults and bad input around a training run: one-line errors, preemption, locks, corrupt checkpoints,
changed configs on resume, orphan processes. Tiny models on the built-in dataset.

Faults are injected in this process where the behaviour is in-process (a step hook that raises, a SIGTERM
delivered to this process); one real SIGKILL and one real SIGTERM of the CLI check what only a separate
process shows (no orphans, the exit code a scheduler requeues on)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jax

from ferjax import checkpointing, train, workdir as workdir_lib

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
    ('config_arg', ["'foo=1'", 'fold', 'ablation']),
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
  env = {**os.environ,
         'XLA_FLAGS': f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"}
  result = _run(_cli_args(data_dir, tmp_path / 'w', **{'input.batch_size': 3}), env=env)
  _one_line_error(result, 'input.batch_size', 'multiple of the 2 devices', 'found 3')


@pytest.mark.skipif(os.access('/proc/sys', os.W_OK) or not os.path.isdir('/proc/sys'),
                    reason='needs a directory this user cannot write')
def test_read_only_workdir_is_one_line(data_dir, tmp_path):
  # /proc/sys refuses new files even to root (tests run as root in CI, where chmod alone would not do).
  _one_line_error(_run(_cli_args(data_dir, '/proc/sys')), 'not writable', '/proc/sys')
  _one_line_error(_run(_cli_args(data_dir, '/proc/sys/ferjax_run')), 'cannot create --workdir')


def test_resume_refuses_a_changed_trajectory_and_keeps_config_history(data_dir, tmp_path, capsys):
  # Lengths 6 and then 12 (the length, the learning rate and the seed are arguments of the compiled
  # train step and init: every run here uses TINY's programs).
  steps = {'train.num_steps': 6}
  train.train_and_evaluate(_config(data_dir, **steps), str(tmp_path))
  # Four fields that change the trajectory, changed in one rerun: the error names each one, as the
  # resume refuses every one of them.
  refused = (('train.learning_rate', 0.5, 0.001), ('dataset.image_size', 48, 32), ('seed', 3, 0),
             ('augment.flip', False, True))
  changed = _config(data_dir, **steps, **{k: v for k, v, _ in refused if k != 'seed'})
  changed.seed = 3
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r'\(4 field\(s\) differ') as info:
    train.train_and_evaluate(changed, str(tmp_path))
  for key, value, old in refused:
    assert f'{key}: {old!r} in the checkpoint, {value!r} now' in str(info.value)
  # Cadences, worker counts and a longer run are allowed; each start is kept in the history.
  capsys.readouterr()
  allowed = {'train.num_steps': 12, 'train.log_every_steps': 1, 'input.worker_count': 1}
  train.train_and_evaluate(_config(data_dir, **allowed), str(tmp_path))
  assert 'train.num_steps: 6 -> 12' in capsys.readouterr().out
  history = [json.loads(line) for line in (tmp_path / 'config_history.jsonl').read_text().splitlines()]
  assert [h['resumed_from_step'] for h in history] == [None, 6]
  assert history[0]['config']['train']['num_steps'] == 6
  assert json.loads((tmp_path / 'config.json').read_text())['train']['num_steps'] == 12


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path, capsys):
  config = _config(data_dir, **{'train.num_steps': 6, 'train.checkpoint_every_steps': 2,
                                'train.max_to_keep': 3})
  train.train_and_evaluate(config, str(tmp_path))
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
  # The same call again: step 6 cannot be read, so the run resumes from step 4 and trains again.
  capsys.readouterr()
  report = train.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert 'checkpoint at step 6 cannot be read' in out and 'OUT_OF_RANGE' in out
  assert 'Resumed from' in out and 'at step 4' in out
  assert (tmp_path / 'checkpoints_unreadable' / '6').is_dir()  # Moved aside, not deleted.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4', '6']
  assert report['step'] == 6


def test_a_second_run_on_a_workdir_in_use_stops_and_a_stale_lock_is_taken_over(data_dir, tmp_path,
                                                                                 capsys):
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
  capsys.readouterr()
  train.train_and_evaluate(_config(data_dir), str(tmp_path))
  out = capsys.readouterr().out
  assert 'took over the lock' in out and 'process 999999' in out
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


# The reference run of the exact-resume tests: 12 steps of the tiny config, uninterrupted. Checkpoint and
# log cadences and worker counts do not change the trajectory, so every test below compares with it.
RESUME = {'train.num_steps': 12}


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  report = train.train_and_evaluate(_config(data_dir, **RESUME), str(workdir))
  return _final_state(workdir, 12), report


def _assert_same_run(reference, workdir, report):
  state, expected = reference
  leaves_a, leaves_b = jax.tree.leaves(state), jax.tree.leaves(_final_state(workdir, 12))
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  # The same report, but for the commit, which moves when someone commits between the two runs.
  drop = ('git_commit', 'git_dirty')
  for r in (expected, report):
    r['provenance'] = {k: v for k, v in r['provenance'].items() if k not in drop}
  assert report == expected


def test_sigkill_leaves_no_orphans_and_the_run_resumes_exactly(data_dir, tmp_path, reference):
  """A real SIGKILL (nothing runs on the way out): grain workers end with the trainer, and the same
  command resumes from the last complete checkpoint to the uninterrupted run's parameters and report."""
  args = _cli_args(data_dir, tmp_path, **RESUME, **{'input.worker_count': 2,
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
  assert not (tmp_path / 'report.json').exists(), 'killed too late to test resume'
  report = train.train_and_evaluate(_config(data_dir, **RESUME), str(tmp_path))
  _assert_same_run(reference, tmp_path, report)


def _stop(process) -> None:
  """Kills a process a failed test left running."""
  if process.poll() is None:
    process.kill()
  process.communicate()


def test_sigterm_saves_exits_for_requeue_and_resumes_exactly(data_dir, tmp_path, reference):
  """A real SIGTERM to the CLI: the step is saved at once (not at a cadence) and the exit code asks the
  scheduler to requeue; the rerun resumes exactly."""
  run = {**RESUME, 'train.checkpoint_every_steps': 1000, 'train.log_every_steps': 1}
  process = subprocess.Popen(_cli_args(data_dir, tmp_path, **run), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(tmp_path / 'metrics.jsonl', process)  # Training has started: step 1 was logged.
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
  finally:
    _stop(process)
  assert process.returncode == train.EXIT_PREEMPTED, err[-3000:]
  saved = [int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()]
  logged = [json.loads(line)['step'] for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert saved == [max(logged)] and saved[0] < 12, (saved, logged)
  assert 'Preempted: saved step' in out
  report = train.train_and_evaluate(_config(data_dir, **run), str(tmp_path))
  _assert_same_run(reference, tmp_path, report)


def test_a_crash_and_a_preemption_in_process_resume_exactly(data_dir, tmp_path, reference):
  """Faults injected by step hooks: an exception at step 5 (a crash: checkpoints 2 and 4 remain), then,
  resumed, a SIGTERM delivered to this process at step 7 (the handler's flag: saved at once, Preempted);
  the third start finishes the run exactly as the uninterrupted one."""
  def crash(step, state):
    del state
    if step == 5:
      raise RuntimeError('injected crash')

  def sigterm(step, state):
    del state
    if step == 7:
      os.kill(os.getpid(), signal.SIGTERM)

  config = _config(data_dir, **RESUME)
  with pytest.raises(RuntimeError, match='injected crash'):
    train.train_and_evaluate(config, str(tmp_path), step_hooks=[crash])
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  assert (tmp_path / 'run.lock').read_text() == ''  # The lock is released on the way out.
  with pytest.raises(train.Preempted) as info:
    train.train_and_evaluate(config, str(tmp_path), step_hooks=[sigterm])
  assert info.value.step == 7
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['6', '7']  # train.max_to_keep = 2
  report = train.train_and_evaluate(config, str(tmp_path))
  _assert_same_run(reference, tmp_path, report)


def test_sigterm_handler_is_restored_after_training(data_dir, tmp_path):
  def mine(signum, frame):
    del signum, frame
  previous = signal.signal(signal.SIGTERM, mine)
  try:
    train.train_and_evaluate(_config(data_dir), str(tmp_path))
    assert signal.getsignal(signal.SIGTERM) is mine
  finally:
    signal.signal(signal.SIGTERM, previous)
