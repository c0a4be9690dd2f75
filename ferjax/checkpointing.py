"""Orbax checkpoints of a whole run: train state, the grain iterator's position, and the config.

One composite checkpoint per saved step under `<workdir>/checkpoints/<step>/` with items `state` (params,
batch statistics, optimizer state, step, RNG), `data` (per-process grain iterator state, so a resumed run sees
exactly the batches it would have seen) and `config` (JSON). Saves are asynchronous; `max_to_keep` old ones
are pruned. Restoring takes abstract targets with shardings, so a checkpoint written on one mesh restores onto
another.

Before restoring, the saved model config and array shapes are compared with the current ones: a workdir that
holds another model's checkpoint is a clear error, not a shape traceback.

Restoring never loses a good checkpoint: only real corruption (a missing or truncated file, an undecodable
one) moves a checkpoint aside to `<directory>_unreadable/`; any other failure (a storage outage, a permission
error, out of memory) is retried and then stops the run with an error, leaving every checkpoint in place. On
several hosts the hosts agree on the outcome before anything is moved. A run whose checkpoints all turned
out unreadable starts over only when asked (`start_over=True`, the CLI's `--start_over`).

The best checkpoint (`BestCheckpoint`) records the config of the run that selected it; a run of another
config, or a run that starts from step 0, moves the old one aside to `best_checkpoint_previous/` instead of
comparing its results with another run's.
"""

from collections.abc import Mapping
import json
import signal
import time
from typing import Any

from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from ferjax import config as config_lib


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint belongs to a different model or config."""


class CheckpointReadError(RuntimeError):
  """A checkpoint could not be read for a reason other than corruption (storage, permissions, memory)."""


class NoReadableCheckpointError(RuntimeError):
  """Checkpoints existed but none could be read; starting over needs `start_over=True`."""


class _Corrupt(Exception):
  """A checkpoint's files are missing, truncated or undecodable."""


# Seconds to wait before each new attempt of a restore that failed for a reason other than corruption.
RESTORE_RETRY_DELAYS = (2.0, 10.0, 30.0)

# Status codes of tensorstore / Orbax errors that mean "the bytes are not there or not valid". Everything
# else (PERMISSION_DENIED, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...) may pass.
_CORRUPTION_MARKS = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS', 'Data corruption', 'is not valid for value',
                     'was not found in the checkpoint', 'Error decoding', 'not a valid checkpoint',
                     'does not exist')
_TRANSIENT_MARKS = ('PERMISSION_DENIED', 'UNAVAILABLE', 'DEADLINE_EXCEEDED', 'RESOURCE_EXHAUSTED',
                    'ABORTED', 'INTERNAL', 'UNKNOWN', 'CANCELLED', 'Permission denied')


def is_corruption(error: BaseException) -> bool:
  """Whether a restore error means the checkpoint's files are missing, truncated or undecodable.

  Conservative: an error that is not recognisably corruption (an OSError other than a missing file, a
  MemoryError, an XLA out-of-memory, an unknown exception) is not, so the checkpoint is never moved for it.
  """
  if isinstance(error, _Corrupt):
    return True
  if isinstance(error, FileNotFoundError):
    return True
  if isinstance(error, (OSError, MemoryError)):  # PermissionError, EIO, ENOSPC, a stale mount...
    return False
  if isinstance(error, json.JSONDecodeError):
    return True
  text = str(error)
  if any(mark in text for mark in _TRANSIENT_MARKS):
    return False
  return isinstance(error, (ValueError, KeyError)) and any(mark in text for mark in _CORRUPTION_MARKS)


def _agree(code: int) -> int:
  """The largest of every host's `code` (0 read, 1 corrupt, 2 failed otherwise); all hosts get it."""
  if jax.process_count() == 1:
    return code
  return int(np.max(multihost_utils.process_allgather(np.int32(code))))


def _describe(error: BaseException) -> str:
  return f'{type(error).__name__}: {" ".join(str(error).split())[:300]}'


def move_aside(path: epath.Path, target_dir: epath.Path, name: str | None = None) -> epath.Path:
  """Renames `path` to `target_dir/<name>` (default: its own name; `<name>.1`, `.2`, ... when taken) on
  process 0; all hosts wait for it. Nothing is deleted."""
  name = name or path.name
  target = target_dir / name
  n = 1
  while target.exists():
    target, n = target_dir / f'{name}.{n}', n + 1
  if jax.process_index() == 0:
    target_dir.mkdir(parents=True, exist_ok=True)
    path.rename(target)
  multihost_utils.sync_global_devices(f'ferjax_move_aside_{path.name}')
  return target


def refused_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """The fields of `current` that differ from `saved` and may not change on resume.

  config.RESUMABLE_CHANGES lists the fields that may; of those, the ones validation is scored with
  (`VALIDATION_SCORING`) may change only when nothing follows the validation scores (no hold-out
  validation split: no plateau schedule, early stopping or best-checkpoint selection).
  """
  validated = bool(current.get('dataset', {}).get('holdout_validation', False)) or bool(
      saved.get('dataset', {}).get('holdout_validation', False))
  saved = with_validation_tta(saved)
  return [(k, a, b) for k, a, b in config_lib.changed_fields(dict(saved), dict(current))
          if k not in config_lib.RESUMABLE_CHANGES or (validated and k in VALIDATION_SCORING)]


def with_validation_tta(config: Mapping[str, Any]) -> dict[str, Any]:
  """`config` with `eval.validation_tta_copies` filled in where it predates that field: validation then
  used `eval.tta_copies`."""
  config = dict(config)
  evaluation = dict(config.get('eval', {}))
  if evaluation and 'validation_tta_copies' not in evaluation:
    evaluation['validation_tta_copies'] = evaluation.get('tta_copies', 0)
    config['eval'] = evaluation
  return config


# Fields that change validation scores (not the training trajectory itself).
VALIDATION_SCORING = ('eval.windows', 'eval.validation_tta_copies')


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  """'params/backbone/conv1/kernel/value' -> shape; the same names for live and saved trees."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(map(_key_name, path)): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in leaves}


_flat_shapes = flat_shapes  # Older name, for callers not yet on flat_shapes.


class Checkpointer:
  """Saves and restores a run's state, data position and config in `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int, save_every_steps: int):
    self.directory = epath.Path(directory)
    self._every = save_every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers={
            'state': ocp.StandardCheckpointHandler(),
            'data': grain.checkpoint.CheckpointHandler(),
            'config': ocp.JsonCheckpointHandler(),
        })
    self._preempted = False
    self._closed = False
    self._install_sigterm_handler()

  def _install_sigterm_handler(self) -> None:
    """Cloud VMs send SIGTERM before preemption: finish the step, save, exit for a requeue.

    Single process only. In a multi-process run JAX's preemption service (started by
    `jax.distributed.initialize()`) catches SIGTERM on any host and makes every process reach the same
    sync step (`reached_preemption`), so a Python handler here would only hide the signal from it.
    The previous handler is put back by `close()`.
    """
    self._previous_handler = None
    if jax.process_count() > 1:
      return
    try:
      self._previous_handler = signal.getsignal(signal.SIGTERM)
      signal.signal(signal.SIGTERM, self._on_sigterm)
    except ValueError:  # Not the main thread (e.g. run from a worker thread): no handler.
      self._previous_handler = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._preempted = True

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def preempted(self, step: int) -> bool:
    """True when this host got SIGTERM or JAX's multi-host preemption notice reached `step`."""
    return self._preempted or self._manager.reached_preemption(step)

  def should_save(self, step: int) -> bool:
    return step % self._every == 0 or self.preempted(step)

  def save(self, step: int, state, data_iterator, config: Mapping[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(dict(config))), force=True)

  def check_compatible(self, step: int, abstract_state, config: Mapping[str, Any]) -> list[str]:
    """Raises CheckpointMismatchError unless the checkpoint at `step` was made by this config.

    Every field that changes the computed trajectory must be equal (config.RESUMABLE_CHANGES lists
    those that may change). Returns the allowed changes, as 'key: old -> new' lines.
    """
    saved_config = ocp.JsonCheckpointHandler().restore(self._item(step, 'config'),
                                                       args=ocp.args.JsonRestore())
    if not isinstance(saved_config, dict):
      raise _Corrupt(f'the config item of step {step} is not a JSON object')
    where = f'{self.directory} (step {step})'
    changes = config_lib.changed_fields(saved_config, dict(config))
    refused = [f'{k}: {a!r} in the checkpoint, {b!r} now'
               for k, a, b in refused_changes(saved_config, config)]
    if refused:
      raise CheckpointMismatchError(
          f'{where} was made with another config ({len(refused)} field(s) differ: '
          f'{"; ".join(refused[:6])}{"; ..." if len(refused) > 6 else ""}). Resuming would not continue '
          'the same run: use the config it was saved with, or a new --workdir.')
    if not (self._item(step, 'state') / '_METADATA').exists():
      raise _Corrupt(f'the state item of step {step} has no metadata file')
    metadata = ocp.StandardCheckpointHandler().metadata(self._item(step, 'state'))
    saved_shapes = flat_shapes(metadata.tree if hasattr(metadata, 'tree') else metadata)
    current_shapes = flat_shapes(abstract_state)
    bad = [f'{k}: {saved_shapes.get(k)} in the checkpoint, {current_shapes.get(k)} now'
           for k in sorted(set(saved_shapes) | set(current_shapes))
           if saved_shapes.get(k) != current_shapes.get(k)]
    if bad:
      raise CheckpointMismatchError(
          f'{where} does not fit this model ({len(bad)} arrays differ, e.g. {"; ".join(bad[:3])}). '
          'Use a new --workdir, or the config it was trained with.')
    return [f'{k}: {a!r} -> {b!r}' for k, a, b in changes]

  def _item(self, step: int, name: str) -> epath.Path:
    return self.directory / str(step) / name

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores the train state onto the shardings in `abstract_state`, and the iterator in place.

    Reads through the items' handlers, not the manager: the manager ends a restore with a barrier of
    every host, where the other hosts would wait forever for a host whose read failed. Here every host
    returns, and `restore_latest` lets them agree on what to do.
    """
    state = ocp.StandardCheckpointHandler().restore(
        self._item(step, 'state'), args=ocp.args.StandardRestore(abstract_state))
    grain.checkpoint.CheckpointHandler().restore(
        self._item(step, 'data'), args=grain.checkpoint.CheckpointRestore(data_iterator))
    return state

  def restore_latest(self, abstract_state, data_iterator, config: Mapping[str, Any], log=print, *,
                     start_over: bool = False):
    """(step, state, allowed config changes) of the newest readable checkpoint, or None to start at step 0.

    A corrupt checkpoint (a missing, truncated or undecodable file; see `is_corruption`) is reported with
    its step and reason and moved aside to `<directory>_unreadable/<step>`, never deleted; the next older
    one is tried. Any other failure is retried (`RESTORE_RETRY_DELAYS`) and then raises
    CheckpointReadError with nothing moved. A readable checkpoint of another config raises
    CheckpointMismatchError. Every host takes the same decision (the worst outcome of any host).

    Returns None only when there is nothing to resume: no checkpoint was ever kept here, or `start_over`.
    When checkpoints exist (or were moved aside as unreadable) and none can be read, raises
    NoReadableCheckpointError unless `start_over`.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      restored = self._restore_with_retries(step, abstract_state, data_iterator, config, log)
      if restored is not None:
        return restored
    aside = self._unreadable_dir
    if aside.exists() and any(aside.iterdir()) and not start_over:
      raise NoReadableCheckpointError(
          f'no checkpoint in {self.directory} can be read; the unreadable ones are kept in {aside}. '
          'Training again from step 0 would discard the run so far: pass --start_over to do so, or put a '
          'good checkpoint back.')
    return None

  @property
  def _unreadable_dir(self) -> epath.Path:
    return self.directory.parent / f'{self.directory.name}_unreadable'

  def _restore_with_retries(self, step, abstract_state, data_iterator, config, log):
    """(step, state, changes); None after moving a corrupt checkpoint aside; raises on other failures."""
    for attempt in range(len(RESTORE_RETRY_DELAYS) + 1):
      code, error, result = 0, None, None
      try:
        changes = self.check_compatible(step, abstract_state, config)
        result = step, self.restore(step, abstract_state, data_iterator), changes
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Classified below, never swallowed.
        code, error = (1 if is_corruption(e) else 2), e
      agreed = _agree(code)
      if agreed == 0:
        return result
      if agreed == 1:
        reason = _describe(error) if error is not None else 'unreadable on another host'
        aside = self._move_aside(step)
        log(f'warning: the checkpoint at step {step} cannot be read ({reason}); moved it to {aside} and '
            'trying the previous one.')
        return None
      reason = _describe(error) if error is not None else 'failed on another host'
      if attempt == len(RESTORE_RETRY_DELAYS):
        raise CheckpointReadError(
            f'the checkpoint at step {step} in {self.directory} could not be read after '
            f'{attempt + 1} attempts ({reason}). This is not corruption, so nothing was moved: fix the '
            'cause (storage, permissions, memory) and rerun the same command to resume.') from error
      delay = RESTORE_RETRY_DELAYS[attempt]
      log(f'warning: reading the checkpoint at step {step} failed ({reason}); trying again in '
          f'{delay:g} s.')
      time.sleep(delay)
    raise AssertionError('unreachable')

  def _move_aside(self, step: int) -> epath.Path:
    target = move_aside(self.directory / str(step), self._unreadable_dir)
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, closes the manager and restores the SIGTERM handler (idempotent)."""
    if self._closed:
      return
    self._closed = True
    self._manager.wait_until_finished()
    self._manager.close()
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None


class BestCheckpoint:
  """The train state with the best validation UAR so far, in `directory` (one checkpoint kept).

  Model selection on the held-out validation split: a validation result at least as good as the best so
  far (ties go to the later step) replaces it. The test split never reaches this class. Each checkpoint
  holds `state` and `validation` (JSON: the step, the validation report's WAR/UAR/macro-F1, and the config
  of the run that selected it).

  On opening, a kept checkpoint that is not this run's is moved to `<directory>_previous/step_<n>`: one of
  another config (a field that may not change on resume differs, see `refused_changes`), or any when the
  run starts from step 0 (`fresh_start`): its step would otherwise refuse every new result, and the final
  report would evaluate the old run's model.
  """

  def __init__(self, directory: str, config: Mapping[str, Any], *, fresh_start: bool, log=print):
    self.directory = epath.Path(directory)
    self._config = dict(config)
    self._open()
    stale = self._stale(fresh_start)
    if stale:
      step = self.step
      self._manager.close()
      aside = move_aside(self.directory, self.directory.parent / f'{self.directory.name}_previous',
                         name=f'step_{step}')
      log(f'note: {self.directory} (step {step}) {stale}; moved it to {aside}.')
      self._open()

  def _open(self) -> None:
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'validation': ocp.JsonCheckpointHandler()})

  def _stale(self, fresh_start: bool) -> str:
    """Why the kept checkpoint is not this run's ('' when it is, or when there is none)."""
    if self.step is None:
      return ''
    if fresh_start:
      return 'was selected by an earlier run, and this run starts from step 0'
    saved = (self.validation() or {}).get('config')
    if saved is None:  # Written before the config was recorded: nothing to compare.
      return ''
    refused = refused_changes(saved, self._config)
    if refused:
      listed = '; '.join(f'{k}: {a!r} there, {b!r} now' for k, a, b in refused[:4])
      return f'was selected by a run of another config ({listed})'
    return ''

  @property
  def step(self) -> int | None:
    return self._manager.latest_step()

  def validation(self) -> dict | None:
    """The validation scores (and config) of the kept checkpoint (None before the first)."""
    if self.step is None:
      return None
    return self._manager.restore(self.step, args=ocp.args.Composite(
        validation=ocp.args.JsonRestore()))['validation']

  def update(self, step: int, state, scores: Mapping[str, float], scoring: str = '') -> bool:
    """Keeps `state` if its validation UAR is >= the best so far; returns whether it was kept.

    `scoring` says how the validation scores were computed (the report's 'scoring')."""
    best = self.validation()
    if best is not None and (scores['uar'] < best['uar'] or step <= best['step']):
      # step <= best step: a resumed run recomputing steps it had already validated (exactly).
      return False
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        validation=ocp.args.JsonSave({'step': int(step), **{k: float(v) for k, v in scores.items()},
                                      'scoring': scoring, 'config': self._config})),
                       force=True)
    return True

  def restore(self, abstract_state):
    self._manager.wait_until_finished()
    return self._manager.restore(self.step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))['state']

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
