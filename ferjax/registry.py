"""The family registry: what the trainer, steps, validation and inference know about a model family.

A family (`Family`) is registered by its own module (`register`); nothing else in ferjax names it. The
built-in families are the modules of the `ferjax.models` package, found by listing that package when a
name is first looked up (`get_family`, `names`), so adding one is adding a file. A family defined elsewhere (a
config file, another package) registers itself when that file or module is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import importlib
import pkgutil
from typing import Any

from ferjax import losses as losses_lib
from ferjax.checks import Check

# A training metric: (model outputs, batch) -> a scalar, averaged over the steps between two log lines.
Metric = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


def default_losses(config) -> losses_lib.Loss:
  """Cross-entropy with `train.label_smoothing`: the loss of a family that names none."""
  return losses_lib.classification(config.train.label_smoothing)


def no_metrics(config) -> dict[str, Metric]:
  del config
  return {}


def no_decay_none(config) -> str:
  """`Family.no_decay` default: `train.weight_decay_rules` alone decide."""
  del config
  return ''


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family.

  Attributes:
    name: `config.model.name`.
    schema: `field -> check` (see `ferjax.checks`) for every `config.model.<field>` but `name`;
      validation rejects unknown and missing fields.
    from_config: `(model_config, num_classes, rngs) -> nnx.Module` following the model contract
      (`ferjax.models`).
    inputs: batch inputs the pipeline builds for it: 'frames' and names registered with
      `ferjax.data.inputs.register` (the family registers its own).
    losses: `config -> losses.Loss`; each term is logged as `loss/<name>`.
    metrics: `config -> {name: metric}`: extra training metrics, logged as `metric/<name>` (means over
      the logged steps).
    pretrained: `(model, init_config) -> summary` importing weight files into named submodules
      (`ferjax.models.convert.apply_pretrained`, whose converters are registered by layer type), or None.
    config_rules: checks of keys outside `config.model` that only this family reads (e.g.
      `augment.mask_prob`); validation adds them, and those of its inputs, to the generic rules.
    no_decay: `config -> regex` of parameter paths that get no weight decay whatever
      `train.weight_decay_rules` say, because a loss term of the family regularises them (RFSCNN's SVM
      kernel with `model.svm_l2`); '' = none.
  """
  name: str
  schema: Mapping[str, Check]
  from_config: Callable[..., Any]
  inputs: tuple[str, ...] = ('frames',)
  losses: Callable[[Any], losses_lib.Loss] = default_losses
  metrics: Callable[[Any], Mapping[str, Metric]] = no_metrics
  pretrained: Callable[..., dict] | None = None
  config_rules: Mapping[str, Check] = dataclasses.field(default_factory=dict)
  no_decay: Callable[[Any], str] = no_decay_none


_FAMILIES: dict[str, Family] = {}
BUILTIN_PACKAGE = 'ferjax.models'  # Imported (by name: it imports this module) to register the built-ins.


def register(family: Family) -> Family:
  """Registers (or replaces: a config file may be loaded twice) a family under `family.name`."""
  if not isinstance(family, Family):
    raise TypeError(f'register expects a ferjax Family; found {type(family).__name__}')
  _FAMILIES[family.name] = family
  return family


_BUILTINS_LOADED = []


def _load_builtins() -> None:
  """Imports every public module of `ferjax.models` once: the built-in families register themselves.
  (Here, not in that package's __init__, so `python -m ferjax.models.<module>` runs its module once.)"""
  if _BUILTINS_LOADED:
    return
  _BUILTINS_LOADED.append(True)
  package = importlib.import_module(BUILTIN_PACKAGE)
  for info in pkgutil.iter_modules(package.__path__):
    if not info.name.startswith('_'):
      importlib.import_module(f'{BUILTIN_PACKAGE}.{info.name}')


def names() -> tuple[str, ...]:
  """The registered families' names, built-ins included."""
  _load_builtins()
  return tuple(_FAMILIES)


def get_family(name: str) -> Family:
  """The family registered as `name`; ValueError (one line, saying how to make it known) if none is."""
  if name not in _FAMILIES:
    _load_builtins()
  if name not in _FAMILIES:
    raise ValueError(
        f'model.name={name!r} is not a known model; expected one of {names()}. A family outside ferjax '
        'becomes known by importing the file or module that registers it (ferjax.registry.register), '
        'e.g. the config file that defines it')
  return _FAMILIES[name]
