"""Config checking: every field a run reads is validated before anything is built or compiled.

A config is an `ml_collections.ConfigDict` from `configs/<family>.py:get_config(arg)`. `validate` checks it
against the rules below and raises `ConfigError` with a one-line message naming the key, what is allowed and
what was found. `parse_flags` turns `--config.<key>=...` mistakes (unknown keys, unparsable values) into the
same kind of one-line message instead of a traceback.
"""

from collections.abc import Callable, Sequence
import re
import sys
from typing import Any

from absl import flags
import ml_collections


class ConfigError(ValueError):
  """A config field holds a value the run cannot use."""


def _one_of(*allowed: Any) -> Callable[[Any], str | None]:
  def check(value):
    return None if value in allowed else f'one of {", ".join(map(repr, allowed))}'
  return check


def _number(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
            lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], str | None]:
  kind = 'an integer' if integer else 'a number'
  bounds = []
  if lo is not None:
    bounds.append(f'{">" if lo_open else ">="} {lo}')
  if hi is not None:
    bounds.append(f'{"<" if hi_open else "<="} {hi}')
  expected = f'{kind} {" and ".join(bounds)}'.strip()

  def check(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return expected
    if integer and not isinstance(value, int):
      return expected
    if lo is not None and (value <= lo if lo_open else value < lo):
      return expected
    if hi is not None and (value >= hi if hi_open else value > hi):
      return expected
    return None
  return check


def _range_pair(lo: float, hi: float) -> Callable[[Any], str | None]:
  expected = f'a pair (min, max) with {lo} <= min <= max <= {hi}'

  def check(value):
    if (not isinstance(value, (tuple, list)) or len(value) != 2
        or not all(isinstance(v, (int, float)) for v in value)):
      return expected
    return None if lo <= value[0] <= value[1] <= hi else expected
  return check


def _int_tuple(value) -> str | None:
  expected = 'a tuple of positive integers, or () for the default'
  if not isinstance(value, (tuple, list)):
    return expected
  return None if all(isinstance(v, int) and v > 0 for v in value) else expected


def _string(value) -> str | None:
  return None if isinstance(value, str) else 'a string'


def _boolean(value) -> str | None:
  return None if isinstance(value, bool) else 'True or False'


def _mesh_axis(value) -> str | None:
  ok = isinstance(value, int) and not isinstance(value, bool) and (value == -1 or value >= 1)
  return None if ok else '-1 (all remaining devices) or a positive integer'


RULES: dict[str, Callable[[Any], str | None]] = {
    'seed': _number(0, integer=True),
    'dataset.name': _string,
    'dataset.config': _string,
    'dataset.data_dir': _string,
    'dataset.fold': _number(0, integer=True),
    'dataset.holdout_validation': _boolean,
    'dataset.num_frames': _number(1, 512, integer=True),
    'dataset.image_size': _number(16, 1024, integer=True),
    'input.batch_size': _number(1, integer=True),
    'input.eval_batch_size': _number(1, integer=True),
    'input.worker_count': _number(0, 64, integer=True),
    'augment.crop_scale': _range_pair(0.05, 1.0),
    'augment.crop_ratio': _range_pair(0.2, 5.0),
    'augment.flip': _boolean,
    'augment.rotation': _number(0, 180),
    'augment.brightness': _number(0, 1),
    'augment.contrast': _number(0, 1),
    'augment.mask_prob': _number(0, 1),
    'augment.mask_size': _range_pair(0.0, 1.0),
    'augment.mask_count': _number(0, 16, integer=True),
    'augment.eval_crop': _number(0.1, 1.0),
    'model.name': _one_of('res_rbg'),
    'model.backbone': _one_of('resnet18', 'resnet34', 'resnet50'),
    'model.width': _number(1, integer=True),
    'model.stage_sizes': _int_tuple,
    'model.attention': _one_of('none', 'se', 'eca', 'geca'),
    'model.geca_variant': _one_of('avgmax', 'ghost'),
    'model.unroll': _number(1, 64, integer=True),
    'model.rbg_blocks': _number(0, 16, integer=True),
    'model.hidden': _number(1, integer=True),
    'model.merge': _one_of('sum', 'concat', 'mean'),
    'model.pooling': _one_of('mean', 'last'),
    'model.dropout': _number(0, 1, hi_open=True),
    'model.dtype': _one_of('float32', 'bfloat16'),
    'init.backbone_weights': _string,
    'init.backbone_prefix': _string,
    'init.gru_weights': _string,
    'init.gru_prefix': _string,
    'train.num_epochs': _number(0, lo_open=True),
    'train.num_steps': _number(-1, integer=True),
    'train.optimizer': _one_of('adamw', 'sgd'),
    'train.learning_rate': _number(0, lo_open=True),
    'train.warmup_epochs': _number(0),
    'train.weight_decay': _number(0),
    'train.momentum': _number(0, 1, hi_open=True),
    'train.grad_clip': _number(0),
    'train.label_smoothing': _number(0, 1, hi_open=True),
    'train.log_every_steps': _number(1, integer=True),
    'train.eval_every_steps': _number(1, integer=True),
    'train.checkpoint_every_steps': _number(1, integer=True),
    'train.max_to_keep': _number(1, integer=True),
    'mesh.data': _mesh_axis,
    'mesh.fsdp': _mesh_axis,
}


def _flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every field against RULES; raises ConfigError naming the first bad key."""
  flat = _flatten(config)
  for key in flat:
    if key not in RULES:
      raise ConfigError(f'config key {key!r} is unknown; known keys: {", ".join(sorted(RULES))}')
  for key, check in RULES.items():
    if key not in flat:
      raise ConfigError(f'config key {key!r} is missing; the config file must set it')
    expected = check(flat[key])
    if expected:
      raise ConfigError(f'config.{key}: expected {expected}, found {flat[key]!r}')
  if config.mesh.data == -1 and config.mesh.fsdp == -1:
    raise ConfigError('config.mesh: at most one of mesh.data and mesh.fsdp may be -1, found both')
  return config


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """JSON-ready plain dict (tuples become lists)."""
  return config.to_dict()


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parser for CLIs: config-override mistakes exit with one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}\nPass --helpfull to see the flags.')
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    message = str(e).strip('\'"').replace('\\n', ' ').replace('\n', ' ')
    message = re.sub(r'\s+', ' ', message).replace('\\', '').strip('\'" ')
    sys.exit(f'error: invalid --config override: {message}')
