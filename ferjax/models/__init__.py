"""ferjax models: the family registry, the model contract and parameter counting.

Model contract: ``model(batch, *, train=False, rngs=None) -> dict`` where ``batch`` holds the inputs the
family declares (``frames`` float32 [B, T, H, W, 3], already normalised on the device, plus e.g. ``flow``)
and the dict holds ``logits`` float32 [B, num_classes] plus whatever the family's loss terms read. The
state holds only ``nnx.Param`` and ``nnx.BatchStat``.

A family (``Family``) is everything the trainer needs to know about a model: its config schema (the
checks of ``config.model.<field>``), ``from_config``, its inputs, its loss terms and how pretrained
weight files map to its submodules. Its module registers it with ``register``; the trainer, steps,
config validation and pipeline look it up by ``config.model.name`` and know nothing else about it.
Defaults live in the config file (``configs/<family>.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import math
from typing import Any

from flax import nnx

from ferjax import losses as losses_lib

# A check returns None when the value is fine, else what is expected (see ferjax.config).
Check = Callable[[Any], 'str | None']


def _default_losses(config) -> losses_lib.Loss:
  return losses_lib.classification(config.train.label_smoothing)


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family.

  Attributes:
    name: ``config.model.name``.
    schema: ``field -> check`` for every ``config.model.<field>`` but ``name``; validation rejects
      unknown and missing fields.
    from_config: ``(model_config, num_classes, rngs) -> nnx.Module`` following the model contract.
    inputs: batch inputs the pipeline builds for it (see ``ferjax.data.spec.INPUTS``).
    losses: ``config -> losses.Loss``; the default is cross-entropy with ``train.label_smoothing``.
    pretrained: ``(model, init_config) -> summary`` importing weight files into named submodules
      (``ferjax.models.convert.apply_pretrained`` for the ResNet/GRU families), or None.
  """
  name: str
  schema: Mapping[str, Check]
  from_config: Callable[..., nnx.Module]
  inputs: tuple[str, ...] = ('frames',)
  losses: Callable[[Any], losses_lib.Loss] = _default_losses
  pretrained: Callable[..., dict] | None = None


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
  """Registers (or replaces: config files may be loaded twice) a family under ``family.name``."""
  _FAMILIES[family.name] = family
  return family


def names() -> tuple[str, ...]:
  return tuple(_FAMILIES)


def get_family(name: str) -> Family:
  if name not in _FAMILIES:
    raise ValueError(f'model.name={name!r} is not a known model; expected one of {names()} (or a '
                     'family registered by the config file)')
  return _FAMILIES[name]


def create_model(model_config, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the model of family ``model_config.name`` for ``num_classes`` classes.

  Wrap in ``nnx.eval_shape(lambda: create_model(...))`` to get shapes without allocating.
  """
  family = get_family(model_config.get('name', None))
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  return family.from_config(model_config, num_classes, rngs=rngs)


def count_params(model: nnx.Module) -> dict[str, int]:
  """Number of ``nnx.Param`` scalars per top-level component plus 'total' (BatchStats excluded,
  as PyTorch's ``sum(p.numel() for p in model.parameters())``). Works on ``nnx.eval_shape``
  models."""
  counts: dict[str, int] = {}
  for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    counts[str(path[0])] = counts.get(str(path[0]), 0) + math.prod(value.shape)
  counts['total'] = sum(counts.values())
  return counts


# The built-in families register themselves on import.
from ferjax.models import res_rbg  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from ferjax.models import rfscnn  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from ferjax.models import rmn  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from ferjax.models import dcn_cbam  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401
from ferjax.models import mhca  # pylint: disable=wrong-import-position,unused-import  # noqa: E402,F401

__all__ = ['Family', 'register', 'get_family', 'names', 'create_model', 'count_params']
