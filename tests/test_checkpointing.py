"""Restoring a run's checkpoints: only corruption moves a checkpoint aside, other failures retry and stop
with nothing moved, starting over needs to be asked for, and the best checkpoint belongs to its run.

Real Orbax checkpoints of a tiny state; faults are real damaged files or errors raised in-process where
Orbax reads (a storage outage, a permission error, out of memory), as a real fault would raise them."""

import errno
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ferjax import checkpointing
from ferjax.data import pipeline

CONFIG = {'seed': 0, 'dataset': {'holdout_validation': True}, 'train': {'learning_rate': 0.1},
          'eval': {'tta_copies': 0, 'windows': 'one', 'validation_tta_copies': 0}}


def _state(value: float) -> dict:
  # Not constant: a constant array compresses below the size that `_truncate_arrays` damages.
  return {'w': jnp.sin(jnp.arange(4096, dtype=jnp.float32)) * value,
          'b': jnp.arange(3, dtype=jnp.float32) + value}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _iterator():
  return iter(pipeline.TrainLoader(grain.MapDataset.range(40).batch(2), 0))


def _checkpointer(directory):
  return checkpointing.Checkpointer(os.fspath(directory), max_to_keep=5, save_every_steps=1)


@pytest.fixture
def saved(tmp_path, monkeypatch):
  """`<tmp>/checkpoints` with steps 1 and 2 (state values 1.0 and 2.0); no retry delays."""
  monkeypatch.setattr(checkpointing, 'RESTORE_RETRY_DELAYS', (0.0, 0.0, 0.0), raising=False)
  c = _checkpointer(tmp_path / 'checkpoints')
  iterator = _iterator()
  for step in (1, 2):
    next(iterator)
    c.save(step, _state(float(step)), iterator, CONFIG)
  c.close()
  return tmp_path / 'checkpoints'


def _restore_latest(directory, fault=lambda: None, **kwargs):
  c = _checkpointer(directory)
  fault()  # Injected once the manager is open: only the restore meets it.
  try:
    return c.restore_latest(_abstract(_state(0.0)), _iterator(), CONFIG, log=lambda _: None, **kwargs)
  finally:
    c.close()


def _fail_first(monkeypatch, error: BaseException, times: int):
  """(fault, calls): once `fault()` is called, Orbax's reads of a checkpoint's config (the first item a
  restore reads) raise `error` on their first `times` calls, then read as usual."""
  original, calls = ocp.JsonCheckpointHandler.restore, []

  def restore(self, directory, *args, **kwargs):
    if os.path.basename(os.fspath(directory)) == 'config':
      calls.append(1)
      if len(calls) <= times:
        raise error
    return original(self, directory, *args, **kwargs)
  return (lambda: monkeypatch.setattr(ocp.JsonCheckpointHandler, 'restore', restore)), calls


NOT_CORRUPTION = [
    PermissionError(errno.EACCES, 'Permission denied', '/bucket/checkpoints/2/state'),
    OSError(errno.EIO, 'Input/output error'),
    MemoryError(),
    RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB'),
    ValueError('UNAVAILABLE: Error reading "state/d/1f2e" from gs://bucket: 503 Service Unavailable'),
]


@pytest.mark.parametrize('error', NOT_CORRUPTION, ids=lambda e: type(e).__name__)
def test_a_transient_error_is_retried_and_the_checkpoint_restores(saved, monkeypatch, error):
  fault, calls = _fail_first(monkeypatch, error, times=2)
  step, state, _ = _restore_latest(saved, fault)
  assert step == 2 and len(calls) > 2
  np.testing.assert_array_equal(state['b'], np.arange(3) + 2.0)
  assert sorted(os.listdir(saved)) == ['1', '2']
  assert not (saved.parent / 'checkpoints_unreadable').exists()


@pytest.mark.parametrize('error', NOT_CORRUPTION, ids=lambda e: type(e).__name__)
def test_a_lasting_error_stops_with_a_clear_error_and_moves_nothing(saved, monkeypatch, error):
  fault, calls = _fail_first(monkeypatch, error, times=10 ** 6)
  with pytest.raises(checkpointing.CheckpointReadError, match=r'step 2 .* after 4 attempts') as info:
    _restore_latest(saved, fault)
  assert type(error).__name__ in str(info.value) and 'nothing was moved' in str(info.value)
  assert len(calls) == 4  # 1 + len(RESTORE_RETRY_DELAYS), then no fallback to an older step.
  assert sorted(os.listdir(saved)) == ['1', '2']
  assert not (saved.parent / 'checkpoints_unreadable').exists()


def _truncate_arrays(step_dir) -> None:
  damaged = 0
  for root, _, files in os.walk(step_dir / 'state'):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 256 and not name.endswith(('.json', 'METADATA')):
        with open(path, 'r+b') as f:
          f.truncate(64)
        damaged += 1
  assert damaged


@pytest.mark.parametrize('damage', ['truncated arrays', 'missing metadata', 'missing item'])
def test_a_corrupt_checkpoint_is_moved_aside_and_the_previous_one_restores(saved, damage):
  step_dir = saved / '2'
  if damage == 'truncated arrays':
    _truncate_arrays(step_dir)
  elif damage == 'missing metadata':
    (step_dir / 'state' / '_METADATA').unlink()  # Read as a shape mismatch before: not corruption.
  else:
    os.rename(step_dir / 'data', saved.parent / 'data_elsewhere')
  step, state, _ = _restore_latest(saved)
  assert step == 1
  np.testing.assert_array_equal(state['b'], np.arange(3) + 1.0)
  assert sorted(os.listdir(saved)) == ['1']
  assert os.listdir(saved.parent / 'checkpoints_unreadable') == ['2']


def test_when_no_checkpoint_is_readable_starting_over_must_be_asked_for(saved):
  for step in ('1', '2'):
    _truncate_arrays(saved / step)
  with pytest.raises(checkpointing.NoReadableCheckpointError, match='--start_over'):
    _restore_latest(saved)
  assert sorted(os.listdir(saved.parent / 'checkpoints_unreadable')) == ['1', '2']
  # The next attempt finds an empty checkpoints/ but remembers what was moved aside.
  with pytest.raises(checkpointing.NoReadableCheckpointError):
    _restore_latest(saved)
  assert _restore_latest(saved, start_over=True) is None
  assert sorted(os.listdir(saved.parent / 'checkpoints_unreadable')) == ['1', '2']  # Still kept.


def test_a_fresh_workdir_starts_without_being_asked(tmp_path):
  assert _restore_latest(tmp_path / 'checkpoints') is None


def _best(directory, config, fresh_start=False):
  return checkpointing.BestCheckpoint(os.fspath(directory), config, fresh_start=fresh_start,
                                      log=lambda _: None)


def test_the_best_checkpoint_of_another_run_is_moved_aside(tmp_path):
  directory = tmp_path / 'best_checkpoint'
  best = _best(directory, CONFIG)
  assert best.update(8, _state(8.0), {'war': 0.5, 'uar': 0.5, 'macro_f1': 0.5}, scoring='plain')
  best.close()
  # The same run resumed (an allowed change: a longer run): kept.
  longer = {**CONFIG, 'train': {**CONFIG['train'], 'num_steps': 100}}
  best = _best(directory, longer)
  assert best.step == 8 and best.validation()['scoring'] == 'plain'
  best.close()
  # Another config (learning rate): moved aside, and a new result at an earlier step is kept.
  other = {**CONFIG, 'train': {'learning_rate': 0.5}}
  best = _best(directory, other)
  assert best.step is None
  assert best.update(2, _state(2.0), {'war': 0.1, 'uar': 0.1, 'macro_f1': 0.1})
  best.close()
  assert os.listdir(tmp_path / 'best_checkpoint_previous') == ['step_8']
  # The same config, but the run starts from step 0: the old selection is not this run's.
  best = _best(directory, other, fresh_start=True)
  assert best.step is None
  best.close()
  assert sorted(os.listdir(tmp_path / 'best_checkpoint_previous')) == ['step_2', 'step_8']


@pytest.mark.parametrize('holdout', [True, False])
def test_validation_scoring_may_change_on_resume_only_without_validation(holdout):
  saved = {**CONFIG, 'dataset': {'holdout_validation': holdout}}
  for key, value in (('windows', 'all'), ('validation_tta_copies', 10)):
    now = {**saved, 'eval': {**saved['eval'], key: value}}
    refused = [k for k, _, _ in checkpointing.refused_changes(saved, now)]
    assert refused == ([f'eval.{key}'] if holdout else [])
  # The test split's TTA never drives training: it may change either way.
  now = {**saved, 'eval': {**saved['eval'], 'tta_copies': 10}}
  assert checkpointing.refused_changes(saved, now) == []
  # A checkpoint from before validation had its own setting validated with eval.tta_copies.
  old = {**saved, 'eval': {'tta_copies': 10, 'windows': 'one'}}
  assert [k for k, _, _ in checkpointing.refused_changes(old, saved)] == (
      ['eval.validation_tta_copies'] if holdout else [])


# ------------------------------------------------------------------------------------------------
# Two hosts (two processes on this machine, one CPU device each): a fault seen by one host only.

def _host(directory: str, fault: str) -> dict:
  """One host of a two-process job: saves steps 1 and 2 (fault 'none'), or restores with `fault`
  injected on host 1 only; returns what this host saw."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  checkpointing.RESTORE_RETRY_DELAYS = (0.0, 0.0, 0.0)
  mesh = jax.make_mesh((2,), ('data',), devices=jax.devices())
  replicated = NamedSharding(mesh, PartitionSpec())

  def state(value):
    return {k: jax.make_array_from_callback(v.shape, replicated, lambda index, v=v: np.asarray(v)[index])
            for k, v in _state(value).items()}
  c = _checkpointer(directory)
  try:
    if fault == 'none':
      iterator = _iterator()
      for step in (1, 2):
        next(iterator)
        c.save(step, state(float(step)), iterator, CONFIG)
      return {'saved': [1, 2]}
    if jax.process_index() == 1:
      error = {'corrupt': ValueError('OUT_OF_RANGE: Error reading "b/.zarray": Requested byte range '
                                     '[0, 277) is not valid for value of size 64'),
               'transient': PermissionError(errno.EACCES, 'Permission denied')}[fault]
      original = ocp.JsonCheckpointHandler.restore

      def restore(self, directory, *args, **kwargs):
        if os.fspath(directory).endswith(os.path.join('2', 'config')):
          raise error
        return original(self, directory, *args, **kwargs)
      ocp.JsonCheckpointHandler.restore = restore
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state(0.0))
    try:
      step, restored, _ = c.restore_latest(abstract, _iterator(), CONFIG, log=lambda _: None)
    except checkpointing.CheckpointReadError as e:
      return {'error': type(e).__name__}
    return {'step': step, 'b': np.asarray(restored['b'].addressable_data(0)).tolist()}
  finally:
    c.close()


def _two_hosts(directory, fault: str) -> list[dict]:
  import json  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, XLA_FLAGS=' '.join(  # One device per process; the session's other flags.
      f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f))
  env.update(JAX_PLATFORMS='cpu', JAX_ENABLE_COMPILATION_CACHE='false',
             PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get('PYTHONPATH', '')]))
  processes = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(directory), fault,
                                 str(port), str(i)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = []
  try:
    for p in processes:
      out, err = p.communicate(timeout=300)  # A host left alone at a barrier would wait forever.
      assert p.returncode == 0, err[-3000:]
      outputs.append(json.loads(out.strip().splitlines()[-1]))
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return outputs


def test_hosts_agree_before_a_checkpoint_is_moved(tmp_path):
  directory = tmp_path / 'checkpoints'
  assert _two_hosts(directory, 'none') == [{'saved': [1, 2]}] * 2
  # Host 1 alone sees a failure that is not corruption: both hosts retry and stop, nothing moves.
  assert _two_hosts(directory, 'transient') == [{'error': 'CheckpointReadError'}] * 2
  assert sorted(os.listdir(directory)) == ['1', '2']
  # Host 1 alone sees step 2 corrupt: both move it aside (once) and both resume from step 1.
  assert _two_hosts(directory, 'corrupt') == [{'step': 1, 'b': [1.0, 2.0, 3.0]}] * 2
  assert sorted(os.listdir(directory)) == ['1']
  assert os.listdir(tmp_path / 'checkpoints_unreadable') == ['2']


if __name__ == '__main__':
  import json as _json  # pylint: disable=ungrouped-imports
  import sys as _sys
  _directory, _fault, _port, _index = _sys.argv[1:]
  jax.distributed.initialize(f'127.0.0.1:{_port}', num_processes=2, process_id=int(_index))
  from absl import flags as _flags  # pylint: disable=ungrouped-imports
  _flags.FLAGS.mark_as_parsed()
  print(_json.dumps(_host(_directory, _fault)))
