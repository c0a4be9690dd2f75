"""Orbax checkpoints of a whole run: train state, the grain iterator's position, and the config.

One composite checkpoint per saved step under `<workdir>/checkpoints/<step>/` with items `state` (params,
batch statistics, optimizer state, step, RNG), `data` (per-process grain iterator state, so a resumed run sees
exactly the batches it would have seen) and `config` (JSON). Saves are asynchronous; `max_to_keep` old ones
are pruned. Restoring takes abstract targets with shardings, so a checkpoint written on one mesh restores onto
another.

Before restoring, the saved model config and array shapes are compared with the current ones: a workdir that
holds another model's checkpoint is a clear error, not a shape traceback.
"""

from collections.abc import Mapping
import signal
from typing import Any

from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from ferjax import config as config_lib


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint belongs to a different model or config."""


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
    saved_config = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    where = f'{self.directory} (step {step})'
    changes = config_lib.changed_fields(saved_config, dict(config))
    refused = [f'{k}: {a!r} in the checkpoint, {b!r} now' for k, a, b in changes
               if k not in config_lib.RESUMABLE_CHANGES]
    if refused:
      raise CheckpointMismatchError(
          f'{where} was made with another config ({len(refused)} field(s) differ: '
          f'{"; ".join(refused[:6])}{"; ..." if len(refused) > 6 else ""}). Resuming would not continue '
          'the same run: use the config it was saved with, or a new --workdir.')
    metadata = self._manager.item_metadata(step)['state']
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

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores the train state onto the shardings in `abstract_state`, and the iterator in place."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state']

  def restore_latest(self, abstract_state, data_iterator, config: Mapping[str, Any], log=print):
    """(step, state, allowed config changes) of the newest readable checkpoint, or None if there is none.

    A checkpoint that cannot be read (a truncated or missing array file, a broken config) is reported
    with its step and reason and moved aside to `<directory>_unreadable/<step>`, never deleted; the next
    older one is tried. A readable checkpoint of another config raises CheckpointMismatchError.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        changes = self.check_compatible(step, abstract_state, config)
        return step, self.restore(step, abstract_state, data_iterator), changes
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Any read failure: fall back.
        reason = ' '.join(str(e).split())[:300] or type(e).__name__
        aside = self._move_aside(step)
        log(f'warning: the checkpoint at step {step} cannot be read ({type(e).__name__}: {reason}); '
            f'moved it to {aside} and trying the previous one.')
    return None

  def _move_aside(self, step: int) -> epath.Path:
    target_dir = self.directory.parent / f'{self.directory.name}_unreadable'
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / str(step)
    n = 1
    while target.exists():
      target, n = target_dir / f'{step}.{n}', n + 1
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(target)
    multihost_utils.sync_global_devices(f'ferjax_move_aside_{step}')
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
  holds `state` and `validation` (JSON: the step and the validation report's WAR/UAR/macro-F1).
  """

  def __init__(self, directory: str):
    self.directory = epath.Path(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'validation': ocp.JsonCheckpointHandler()})

  @property
  def step(self) -> int | None:
    return self._manager.latest_step()

  def validation(self) -> dict | None:
    """The validation scores of the kept checkpoint (None before the first)."""
    if self.step is None:
      return None
    return self._manager.restore(self.step, args=ocp.args.Composite(
        validation=ocp.args.JsonRestore()))['validation']

  def update(self, step: int, state, scores: Mapping[str, float]) -> bool:
    """Keeps `state` if its validation UAR is >= the best so far; returns whether it was kept."""
    best = self.validation()
    if best is not None and (scores['uar'] < best['uar'] or step <= best['step']):
      # step <= best step: a resumed run recomputing steps it had already validated (exactly).
      return False
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        validation=ocp.args.JsonSave({'step': int(step), **{k: float(v) for k, v in scores.items()}})),
                       force=True)
    return True

  def restore(self, abstract_state):
    self._manager.wait_until_finished()
    return self._manager.restore(self.step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))['state']

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
