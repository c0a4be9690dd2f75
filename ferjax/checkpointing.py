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
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint belongs to a different model or config."""


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  """'params/backbone/conv1/kernel/value' -> shape; the same names for live and saved trees."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(map(_key_name, path)): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in leaves}


def _diff(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = '') -> list[str]:
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, '<absent>'), current.get(key, '<absent>')
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += _diff(a, b, f'{prefix}{key}.')
    elif (list(a) if isinstance(a, (list, tuple)) else a) != (
        list(b) if isinstance(b, (list, tuple)) else b):
      out.append(f'{prefix}{key}: {a!r} in the checkpoint, {b!r} now')
  return out


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
    self._install_sigterm_handler()

  def _install_sigterm_handler(self) -> None:
    """Cloud VMs send SIGTERM before preemption: finish the step, save, exit cleanly."""
    try:
      previous = signal.getsignal(signal.SIGTERM)

      def handler(signum, frame):
        self._preempted = True
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
          previous(signum, frame)
      signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread (e.g. run from a worker thread): no handler.
      pass

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

  def check_compatible(self, step: int, abstract_state, config: Mapping[str, Any]) -> None:
    """Raises CheckpointMismatchError if the checkpoint at `step` is not of this model."""
    saved_config = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    where = f'{self.directory} (step {step})'
    for section in ('model', 'dataset'):
      keys = ('name', 'config', 'num_frames') if section == 'dataset' else None
      saved, current = saved_config.get(section, {}), dict(config.get(section, {}))
      if keys:
        saved = {k: saved.get(k) for k in keys}
        current = {k: current.get(k) for k in keys}
      diffs = _diff(saved, current, f'{section}.')
      if diffs:
        raise CheckpointMismatchError(
            f'{where} holds a checkpoint of a different {section}: {"; ".join(diffs[:5])}. '
            'Use a new --workdir, or the config it was trained with.')
    metadata = self._manager.item_metadata(step)['state']
    saved_shapes = _flat_shapes(metadata.tree if hasattr(metadata, 'tree') else metadata)
    current_shapes = _flat_shapes(abstract_state)
    bad = [f'{k}: {saved_shapes.get(k)} in the checkpoint, {current_shapes.get(k)} now'
           for k in sorted(set(saved_shapes) | set(current_shapes))
           if saved_shapes.get(k) != current_shapes.get(k)]
    if bad and all(line.startswith('opt_state/') for line in bad):
      raise CheckpointMismatchError(
          f'{where} holds optimizer state of another kind (train.optimizer or train.grad_clip '
          f'changed?): {"; ".join(bad[:2])}. Use the training settings it was saved with.')
    if bad:
      raise CheckpointMismatchError(
          f'{where} does not fit this model ({len(bad)} arrays differ, e.g. {"; ".join(bad[:3])}). '
          'Use a new --workdir, or the config it was trained with.')

  def restore(self, step: int, abstract_state, data_iterator):
    """Restores the train state onto the shardings in `abstract_state`, and the iterator in place."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
