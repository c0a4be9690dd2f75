"""Config checking: every field a run reads is validated before anything is built or compiled.

A config is an `ml_collections.ConfigDict` from `configs/<family>.py:get_config(arg)`. `validate` checks it
against the rules below and raises `ConfigError` with a one-line message naming the key, what is allowed and
what was found. `parse_flags` turns `--config.<key>=...` mistakes (unknown keys, unparsable values) into the
same kind of one-line message instead of a traceback.
"""

from collections.abc import Callable, Sequence
import importlib.util
import os
import re
import sys
from typing import Any

from absl import flags
import ml_collections

from ferjax import checks
from ferjax import registry
from ferjax.data import inputs as inputs_lib


ConfigError = checks.ConfigError
Check = checks.Check
# The checks, for family schemas that import them from here (ferjax.checks is their home).
one_of, number, range_pair, int_tuple, string, boolean, regex = (
    checks.one_of, checks.number, checks.range_pair, checks.int_tuple, checks.string, checks.boolean,
    checks.regex)
check_fields = checks.check_fields
_one_of, _number, _range_pair, _string, _regex, _boolean, _mesh_axis = (
    one_of, number, range_pair, string, regex, boolean, checks.mesh_axis)

# The generic sections; config.model's fields beyond `name` come from the family's schema, and keys only
# one family (or one input) reads come from its `config_rules` (`Input.rules`): e.g. dataset.flow (the
# flow input), augment.mask_* (Res-RBG's random masking).
RULES: dict[str, Callable[[Any], str | None]] = {
    'seed': _number(0, integer=True),
    'dataset.name': _string,
    'dataset.config': _string,
    'dataset.data_dir': _string,
    'dataset.fold': _number(0, integer=True),
    'dataset.holdout_validation': _boolean,
    'dataset.subject_folds': _number(0, integer=True),
    'dataset.num_frames': _number(1, 512, integer=True),
    'dataset.image_size': _number(16, 1024, integer=True),
    'dataset.normalization': _one_of('imagenet', 'unit'),
    'dataset.sampling': _one_of('segments', 'clip', 'apex', 'uniform', 'consecutive', 'consecutive_s2',
                                'consecutive_s4'),  # ferjax.data.sampling.MODES
    'input.batch_size': _number(1, integer=True),
    'input.eval_batch_size': _number(1, integer=True),
    'input.worker_count': _number(0, 64, integer=True),
    'augment.crop_scale': _range_pair(0.05, 1.0),
    'augment.crop_ratio': _range_pair(0.2, 5.0),
    'augment.flip': _boolean,
    'augment.rotation': _number(0, 180),
    'augment.brightness': _number(0, 1),
    'augment.contrast': _number(0, 1),
    'augment.eval_crop': _number(0.1, 1.0),
    'augment.fill': _one_of('reflect', 'black'),  # The border a rotation uncovers (augment.FILLS).
    'augment.rotate_crop_prob': _number(0, 1),
    'augment.pad_crop': _number(0, 512, integer=True),
    'model.name': _string,  # Then the family's schema checks the rest of config.model.
    # Also any init.<submodule>_weights / init.<submodule>_prefix (INIT_KEY; ferjax.models.convert).
    'init.checkpoint': _string,  # A previous run's workdir; the checkpoint it selects initialises the model.
    'train.num_epochs': _number(0, lo_open=True),
    'train.num_steps': _number(-1, integer=True),
    'train.optimizer': _one_of('adamw', 'sgd', 'radam'),
    'train.schedule': _one_of('cosine', 'plateau', 'constant', 'step'),
    'train.step_epochs': _number(0, lo_open=True),
    'train.step_factor': _number(0, 1, lo_open=True),
    'train.nesterov': _boolean,
    'train.plateau_patience': _number(0, integer=True),
    'train.plateau_factor': _number(0, 1, lo_open=True, hi_open=True),
    'train.min_learning_rate': _number(0),
    'train.early_stop_patience': _number(0, integer=True),
    'train.learning_rate': _number(0, lo_open=True),
    'train.warmup_epochs': _number(0),
    'train.weight_decay': _number(0),
    'train.weight_decay_rules': checks.regex_multipliers,
    'train.momentum': _number(0, 1, hi_open=True),
    'train.grad_clip': _number(0),
    'train.label_smoothing': _number(0, 1, hi_open=True),
    'train.log_every_steps': _number(1, integer=True),
    'train.eval_every_steps': _number(1, integer=True),
    'train.checkpoint_every_steps': _number(1, integer=True),
    'train.max_to_keep': _number(1, integer=True),
    'train.trainable': _regex,  # Parameters to train (re.search on 'backbone_rgb/conv1/kernel'); '' = all.
    'mesh.data': _mesh_axis,
    'mesh.fsdp': _mesh_axis,
    'eval.tta_copies': _number(0, 64, integer=True),
    'eval.validation_tta_copies': _number(0, 64, integer=True),
    'eval.windows': _one_of('one', 'all'),
    'eval.temporal_views': _number(1, 64, integer=True),
    'eval.spatial_views': _one_of(1, 3, 5, 10),  # ferjax.data.augment.SPATIAL_VIEWS
}


# The default of `train.weight_decay_rules` (configs/common.py): (regex over a parameter's path, multiplier),
# first match wins, no match = no decay. Convolution/linear kernels and GRU weight matrices decay; biases
# and normalisation scales/offsets do not (torchvision, timm and the flax examples exempt them).
DEFAULT_WEIGHT_DECAY_RULES = ((r'(^|/)(kernel|weight_[^/]*)$', 1.0),)

# Pretrained weight files for named submodules: init.backbone_weights, init.backbone_rgb_prefix, ...
INIT_KEY = re.compile(r'init\.\w+_(weights|prefix)')


class _Resumable(frozenset):
  """The set below, plus every init.* field (they only act when a run starts from scratch)."""

  def __contains__(self, key) -> bool:
    return frozenset.__contains__(self, key) or str(key).startswith('init.')


# Fields a resumed run may change: they do not alter the computed trajectory (cadences, worker counts,
# where the data lives, weights that only matter at initialisation), or they extend it (the number of
# epochs/steps; the learning-rate schedule is then recomputed for the new length). Every other field must
# equal the checkpoint's.
RESUMABLE_CHANGES = _Resumable({
    'train.log_every_steps', 'train.eval_every_steps', 'train.checkpoint_every_steps',
    'train.max_to_keep', 'train.num_epochs', 'train.num_steps', 'input.worker_count',
    'input.eval_batch_size', 'eval.tta_copies', 'eval.windows',  # How it is scored, not trained.
    'eval.validation_tta_copies',  # Only while no validation split drives training (checkpointing.py).
    'eval.temporal_views', 'eval.spatial_views',  # Test views: the test split only, never validation.
    'dataset.data_dir', 'init.backbone_weights', 'init.backbone_prefix',
    'init.gru_weights', 'init.gru_prefix',
})


# Fields added to every config, with the value that reproduces runs saved before them: a saved config
# without the field equals a current one with that value.
ADDED_FIELDS = {
    'train.weight_decay_rules': DEFAULT_WEIGHT_DECAY_RULES,
    'model.dot_1x1': True,  # The formulations the module defaults built before they were fields.
    'model.fused_batchnorm': True,
    'augment.fill': 'reflect',  # Warps reflected the border before the field.
    'model.spatial_neighbours': 'orthogonal',  # RFSCNN
    'model.svm_multiclass': 'crammer_singer',
    'model.product_offset': 1.0,  # RFSCNN's model.fusion_offset before its rename.
    'model.reconstruction_levels': 5,  # RMN
    'model.head_init': 'lecun_normal',  # Res-RBG's classifier before the field.
    'train.step_epochs': 10.0,  # Only the 'step' schedule reads them.
    'train.step_factor': 0.1,
    'train.nesterov': True,  # SGD was Nesterov's before the field.
    'augment.rotate_crop_prob': 1.0,  # The rotation was drawn for every sequence before the field.
    'augment.pad_crop': 0,
    'model.batchnorm_groups': 1,  # Res-RBG, RFSCNN, RMN: global statistics before the field.
    'eval.temporal_views': 1,  # One test view, the sampling mode's frames and centre crop, before them.
    'eval.spatial_views': 1,
}
# Fields that left the configs of the families that never read them: a saved value that had no effect
# (`value -> bool`) equals a current config without the field.
REMOVED_FIELDS = {
    'dataset.flow': lambda v: True,  # Only families with a flow input read it (and keep it).
    'augment.mask_prob': lambda v: v == 0,  # Only Res-RBG masks (and keeps the keys).
    'augment.mask_size': lambda v: True,
    'augment.mask_count': lambda v: True,
    'init.gru_weights': lambda v: v == '',
    'init.gru_prefix': lambda v: True,
    'model.fusion_offset': lambda v: v == 1.0,  # Renamed model.product_offset (ADDED_FIELDS: 1.0).
}


def _norm(v):
  return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def _same(key: str, a: dict, b: dict) -> bool:
  if key in a and key in b:
    return _norm(a[key]) == _norm(b[key])
  if key not in a and key in ADDED_FIELDS:
    return _norm(b[key]) == _norm(ADDED_FIELDS[key])
  if key not in b and key in REMOVED_FIELDS:
    return (key.split('.')[0] != 'augment' or not a.get('augment.mask_prob', 0)) and (
        REMOVED_FIELDS[key](a[key]))
  return False


def changed_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(key, saved value, current value) for every flattened field that differs (tuples == lists; see
  ADDED_FIELDS and REMOVED_FIELDS for the fields of earlier configs)."""
  a, b = _flatten_dict(saved), _flatten_dict(current)
  return [(k, a.get(k, '<absent>'), b.get(k, '<absent>')) for k in sorted(set(a) | set(b))
          if not _same(k, a, b)]


def _flatten_dict(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    if isinstance(value, dict):
      out.update(_flatten_dict(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _family(config: ml_collections.ConfigDict):
  name = config.get('model', {}).get('name', None)
  try:
    return registry.get_family(name)
  except ValueError as e:
    raise ConfigError(f'config.model.name: {e}') from None


def model_rules(family) -> dict[str, Callable[[Any], str | None]]:
  return {'model.name': _string, **{f'model.{k}': v for k, v in family.schema.items()}}


def family_rules(family) -> dict[str, Callable[[Any], str | None]]:
  """Every rule a config of `family` is checked against: the generic ones, the family's config_rules,
  its inputs' rules and its model schema."""
  return {**RULES, **family.config_rules, **inputs_lib.rules(family.inputs), **model_rules(family)}


def _owners(key: str) -> list[str]:
  """The registered families and inputs whose own rules name `key` (for the unknown-key message)."""
  owners = [f'family {f.name!r}' for f in map(registry.get_family, registry.names())
            if key in f.config_rules]
  return owners + [f'input {name!r}' for name, spec in inputs_lib.INPUTS.items() if key in spec.rules]


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the generic sections against RULES, the family's own keys against its config_rules and its
  inputs' rules, and config.model against its schema; raises ConfigError naming the first bad key."""
  family = _family(config)
  flat = _flatten(config)
  init_keys = {k: _string for k in flat if INIT_KEY.fullmatch(k)}
  rules = {**family_rules(family), **init_keys}
  for key in flat:
    owners = _owners(key) if key not in rules else ()
    if owners:
      raise ConfigError(f'config key {key!r} is read by {", ".join(owners)}, not by '
                        f'{family.name!r}; remove it (configs/common.py holds the keys every family reads)')
  check_fields(flat, rules)
  if config.mesh.data == -1 and config.mesh.fsdp == -1:
    raise ConfigError('config.mesh: at most one of mesh.data and mesh.fsdp may be -1, found both')
  _check_test_views(config)
  return config


def _check_test_views(config: ml_collections.ConfigDict) -> None:
  """Test views exclude the other choice of the same thing: windows (frames), TTA copies (crops)."""
  temporal, spatial = config.eval.get('temporal_views', 1), config.eval.get('spatial_views', 1)
  if temporal > 1 and config.eval.windows == 'all':
    raise ConfigError(f"config.eval: temporal_views={temporal} and windows='all' both choose a sequence's "
                      'frames; set temporal_views=1 or windows=one')
  if temporal > 1 and config.dataset.sampling == 'apex':
    raise ConfigError(f"config.eval.temporal_views: sampling 'apex' has one temporal position; found "
                      f'temporal_views={temporal} (set it to 1)')
  if spatial > 1 and config.eval.tta_copies > 1:
    raise ConfigError(f'config.eval: spatial_views={spatial} and tta_copies={config.eval.tta_copies} both '
                      "choose a window's crops; set spatial_views=1 or tta_copies=0")


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """JSON-ready plain dict (tuples become lists)."""
  return config.to_dict()


def _last_error_line(text: str) -> str:
  """'ValueError: msg' -> 'msg' from a message that embeds a traceback (ml_collections does)."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  for line in reversed(lines):
    match = re.match(r'^(?:[\w.]+(?:Error|Exception)): (.*)$', line)
    if match:
      return match.group(1)
  return ' '.join(lines)


def _config_file_arg(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_override(argv: Sequence[str], config) -> str | None:
  """'--config.train.foo: ...' for the first override whose key the config does not have."""
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.'):].split('=', 1)[0]
    node, parts = config, key.split('.')
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = '.'.join(parts[:depth]) or 'the config'
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return (f'--config.{key}: unknown key {part!r} in {where}'
                + (f'; known keys there: {", ".join(known)}' if known else ''))
      node = node[part]
  return None


def _check_config_file(argv: Sequence[str]) -> None:
  spec = _config_file_arg(argv)
  if spec and not os.path.isfile(path := spec.partition(':')[0]):
    raise ConfigError(f'--config {spec}: no such config file {os.path.abspath(path)} (they live in '
                      'configs/, e.g. configs/res_rbg.py)')


def load_config(holder, argv: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The value of a config_flags flag; a missing or failing config file is a one-line ConfigError."""
  _check_config_file(argv or sys.argv)
  try:
    config = holder.value
    config.keys()  # The value is lazy: a config file that failed to load raises only when used.
    return config
  except (OSError, ValueError, TypeError, AttributeError, KeyError, ImportError, SyntaxError) as e:
    raise ConfigError(f'--config: {_last_error_line(e)}') from None


def _load_config_file(spec: str) -> ml_collections.ConfigDict | None:
  """`get_config(arg)` of a `path[:arg]` config spec, or None if that fails."""
  path, _, arg = spec.partition(':')
  try:
    module_spec = importlib.util.spec_from_file_location('ferjax_config_file', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))
  except Exception:  # pylint: disable=broad-except  # Then the generic message is shown.
    return None


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parser for CLIs: config mistakes exit with one line naming the problem, not a traceback."""
  try:
    _check_config_file(argv)
  except ConfigError as e:
    sys.exit(f'error: {e}')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Error whilst parsing config file' in text or 'Failed loading config file' in text:
      sys.exit(f'error: --config {_config_file_arg(argv)}: {_last_error_line(text)}')
    sys.exit(f'error: {_last_error_line(text)}\nPass --helpfull to see the flags.')
  except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    spec = _config_file_arg(argv)
    config = _load_config_file(spec) if spec else None
    unknown = _unknown_override(argv, config) if config is not None else None
    message = unknown or ('--config ' + str(_config_file_arg(argv)) + ': ' + _last_error_line(e))
    sys.exit(f'error: {message}')
