"""Reduce-on-plateau learning rate and early stopping, driven by validation evaluations.

The state lives inside the optimizer state (a ``PlateauState`` link at the end of the optax chain that
``steps.make_optimizer`` builds when ``train.schedule='plateau'`` or ``train.early_stop_patience > 0``), so
it is checkpointed and restored with everything else and a resumed run continues with the same learning
rate, best value and counters. The train step only reads it (``updates * scale``); the training loop
updates it after each validation with ``observe``.

Semantics follow PyTorch's ``ReduceLROnPlateau`` (which the Residual Masking Network's recipe uses, on
the validation accuracy) with ``threshold=0``: an evaluation improves when its value is strictly greater
than the best so far; after more than ``patience`` evaluations in a row without improvement the scale is
multiplied by ``factor`` (floored at ``min_learning_rate / learning_rate``) and the count restarts. With
patience 2 the learning rate drops at the third evaluation without improvement. Early stopping ends the
run once ``early_stop_patience`` evaluations in a row have not improved on the best.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ('cosine', 'plateau', 'constant')


class PlateauState(NamedTuple):
  """Learning-rate scale and the counters of the monitored validation value."""
  scale: jax.Array  # float32: multiplies every update (the learning rate's factor).
  best: jax.Array  # float32: best value so far (-inf before the first evaluation).
  bad_evaluations: jax.Array  # int32: evaluations without improvement since the last improvement or drop.
  since_best: jax.Array  # int32: evaluations since the best one (early stopping).
  evaluations: jax.Array  # int32: evaluations seen.


def scale_by_plateau() -> optax.GradientTransformation:
  """Multiplies updates by the plateau scale; the state changes only through ``observe``."""
  def init(params):
    del params
    return PlateauState(jnp.ones((), jnp.float32), jnp.full((), -jnp.inf, jnp.float32),
                        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state
  return optax.GradientTransformation(init, update)


def uses_plateau(train) -> bool:
  """Whether the optimizer needs the plateau link (plateau schedule or early stopping)."""
  return train.get('schedule', 'cosine') == 'plateau' or train.get('early_stop_patience', 0) > 0


def _is_state(x) -> bool:
  return isinstance(x, PlateauState)


def find(opt_state) -> PlateauState | None:
  """The ``PlateauState`` inside an optimizer state, or None."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(x)]
  return found[0] if found else None


def step_values(state: PlateauState, value: float, *, reduce: bool, patience: int, factor: float,
                min_scale: float) -> PlateauState:
  """The next state (numpy scalars) after an evaluation with monitored ``value`` (higher is better)."""
  scale, best = float(state.scale), float(state.best)
  value = float(np.float32(value))  # Compared as stored: a float64 0.7 exceeds float32(0.7).
  bad, since_best = int(state.bad_evaluations), int(state.since_best)
  if value > best:
    best, bad, since_best = value, 0, 0
  else:
    bad, since_best = bad + 1, since_best + 1
  if reduce and bad > patience:
    scale, bad = max(scale * factor, min_scale), 0
  return PlateauState(np.float32(scale), np.float32(best), np.int32(bad), np.int32(since_best),
                      np.int32(int(state.evaluations) + 1))


def observe(opt_state, value: float, train) -> tuple:
  """(new optimizer state, new PlateauState) after a validation whose monitored value is ``value``.

  New leaves take the shardings of the old ones, so the jitted train step accepts them unchanged.
  """
  old = find(opt_state)
  if old is None:
    return opt_state, None
  new = step_values(old, value, reduce=train.get('schedule', 'cosine') == 'plateau',
                    patience=train.plateau_patience, factor=train.plateau_factor,
                    min_scale=train.min_learning_rate / train.learning_rate)
  new = PlateauState(*(jax.device_put(np.asarray(n, o.dtype), o.sharding) if hasattr(o, 'sharding')
                       else jnp.asarray(n, o.dtype) for n, o in zip(new, old)))
  replaced = jax.tree.map(lambda x: new if _is_state(x) else x, opt_state, is_leaf=_is_state)
  return replaced, new


def should_stop(opt_state, train) -> bool:
  """True when early stopping is on and ``early_stop_patience`` evaluations have not improved."""
  state = find(opt_state)
  patience = train.get('early_stop_patience', 0)
  return bool(state is not None and patience > 0 and int(state.since_best) >= patience)


def learning_rate_scale(opt_state) -> float:
  state = find(opt_state)
  return 1.0 if state is None else float(state.scale)
