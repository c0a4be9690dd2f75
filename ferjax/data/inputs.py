"""The open registry of model inputs besides `frames`: how the pipeline computes each from an example.

A family names its inputs (`Family.inputs`); an input is registered once, by the module that defines it
(`register`): the built-in `frame_positions` here, `flow` by the optical-flow families (RFSCNN), a
family's own input by its own file. The pipeline, predict and the export signature read this registry
and know no input by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import importlib.machinery
import sys
import types
from typing import Any

import numpy as np

from ferjax import checks
from ferjax.data import sampling


@dataclasses.dataclass(frozen=True)
class View:
  """What an input is computed from: one example's sampled frames and the geometry of its frames.

  Attributes:
    frames: the sampled source frames, T uint8 arrays [H, W, 3] (a list), before augmentation.
    indices: their indices in the sequence, int32 [T].
    num_frames: N, frames in the sequence.
    matrix: the frames' 2x3 output -> source pixel warp (augmentation or evaluation centre crop).
    size: S, the output side.
    flow_method: `config.dataset.flow` (one of `flow.METHODS`), for the `flow` input.
    warped: `augment.warp(frames, matrix, size)` when the example has it (training, TTA copies), for
      the `*_output` flow methods; None = computed where needed.
    options: the config values of the keys the inputs declare (`Input.rules`), e.g.
      `{'dataset.flow': 'dis'}`.
    record: the dataset record, for inputs that read its other features (the onset and apex indices of
      micro-expression clips, `ferjax.data.micro_flow`); None where there is no record (predict).
  """
  frames: Sequence[np.ndarray]
  indices: np.ndarray
  num_frames: int
  matrix: np.ndarray
  size: int
  flow_method: str = 'dis'
  warped: np.ndarray | None = None
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  record: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Input:
  """An input besides `frames`: how to compute it from a View, and its shape and dtype for (T, S)
  (padding rows get zeros of that shape; `random` fills benchmark batches).

  grain's worker processes run `compute` (pickled with the example maker): functions of a module that
  a worker cannot import by name (a config file) are pickled by value (`register`).
  `rules`: `key -> check` of the config keys outside `config.model` the input reads (in `View.options`);
  validation adds them for every family that names the input.
  """
  compute: Callable[[View], np.ndarray]
  shape: Callable[[int, int], tuple[int, ...]]
  dtype: type
  random: Callable[[int, int, np.random.Generator], np.ndarray]
  rules: Mapping[str, checks.Check] = dataclasses.field(default_factory=dict)


_INPUTS: dict[str, Input] = {}
# A read-only, live view of the registry.
INPUTS: Mapping[str, Input] = types.MappingProxyType(_INPUTS)


def register(name: str, spec: Input) -> Input:
  """Registers (or replaces: a module may be loaded twice) the input `name`."""
  if name == 'frames' or not name.isidentifier():
    raise ValueError(f'an input name must be an identifier other than frames; found {name!r}')
  if not isinstance(spec, Input):
    raise TypeError(f'register({name!r}, ...) expects a ferjax.data.inputs.Input; found '
                    f'{type(spec).__name__}')
  for fn in (spec.compute, spec.shape, spec.random):
    _pickle_by_value_if_not_importable(getattr(fn, '__module__', None))
  _INPUTS[name] = spec
  return spec


def _pickle_by_value_if_not_importable(module_name: str | None) -> None:
  """A config file is loaded by path under a name no other process can import, so grain's workers could
  not unpickle its functions by reference: cloudpickle (grain's pickler) then pickles them by value."""
  module = sys.modules.get(module_name or '')
  if module is None or module_name == '__main__':
    return
  # Searched on sys.path only: importlib.util.find_spec would answer from sys.modules itself.
  importable = importlib.machinery.PathFinder.find_spec(module_name.split('.')[0]) is not None
  if not importable:
    import cloudpickle  # pylint: disable=import-outside-toplevel  # grain's dependency.
    cloudpickle.register_pickle_by_value(module)


def get(name: str) -> Input:
  if name not in _INPUTS:
    raise ValueError(f'input {name!r} is not registered; registered inputs: {sorted(_INPUTS)} (a family '
                     'registers its inputs with ferjax.data.inputs.register when its module is imported)')
  return _INPUTS[name]


def check(inputs: Sequence[str]) -> tuple[str, ...]:
  """`inputs` as a tuple; ValueError unless it holds 'frames' and registered inputs only."""
  unknown = [name for name in inputs if name != 'frames' and name not in _INPUTS]
  if 'frames' not in inputs or unknown:
    raise ValueError(f'inputs must include frames and may add registered inputs {sorted(_INPUTS)}; got '
                     f'{list(inputs)}' + (f' ({unknown} not registered)' if unknown else ''))
  return tuple(inputs)


def rules(inputs: Sequence[str]) -> dict[str, checks.Check]:
  """The config rules of `inputs` (see `Input.rules`)."""
  out = {}
  for name in inputs:
    if name != 'frames':
      out.update(get(name).rules)
  return out


def options(config, inputs: Sequence[str]) -> dict[str, Any]:
  """`View.options` of a model with `inputs`: the values in `config` (a ConfigDict, or a run's
  config.json as a dict) of the keys those inputs read (`Input.rules`, e.g. 'dataset.flow'). A key the
  config lacks is left out and the input uses its default (`benchmark --input --flow` adds flow to any
  family). Training and inference build their views with the same options."""
  out = {}
  for key in rules(inputs):
    node = config
    for part in key.split('.'):
      node = node.get(part) if hasattr(node, 'get') else None
    if node is not None:
      out[key] = node
  return out


def compute(inputs: Sequence[str], view: View) -> dict[str, np.ndarray]:
  """The non-frame `inputs` of one example."""
  return {name: get(name).compute(view) for name in inputs if name != 'frames'}


def padding(inputs: Sequence[str], num_frames: int, size: int) -> dict[str, np.ndarray]:
  """Zeros of the non-frame `inputs`' shapes (evaluation's padding rows)."""
  return {name: np.zeros(get(name).shape(num_frames, size), get(name).dtype)
          for name in inputs if name != 'frames'}


def random_values(inputs: Sequence[str], batch_size: int, num_frames: int, size: int,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random values of the non-frame `inputs` with a batch's shapes (for the step benchmark)."""
  return {name: np.stack([get(name).random(num_frames, size, rng) for _ in range(batch_size)])
          for name in check(inputs) if name != 'frames'}


def _frame_positions(view: View) -> np.ndarray:
  return (view.indices / max(view.num_frames - 1, 1)).astype(np.float32)


def _random_positions(t: int, s: int, rng: np.random.Generator) -> np.ndarray:
  del s, rng
  return (sampling.eval_indices(2 * t, t) / (2 * t - 1)).astype(np.float32)


# Where each sampled frame lies in the sequence, float32 [T] in [0, 1] (0 = first): generic, so built in.
register('frame_positions', Input(_frame_positions, lambda t, s: (t,), np.float32, _random_positions))
