"""ferjax models: the model contract, parameter counting, and the built-in families.

Model contract: ``model(batch, *, train=False, rngs=None) -> dict`` where ``batch`` holds the inputs the
family declares (``frames`` float32 [B, T, H, W, 3], already normalised on the device, plus e.g. ``flow``)
and the dict holds ``logits`` float32 [B, num_classes] plus whatever the family's loss terms read. The
state holds only ``nnx.Param`` and ``nnx.BatchStat``.

A family (``ferjax.registry.Family``) is everything the trainer needs to know about a model: its config
schema, ``from_config``, its inputs, loss terms, training metrics and how pretrained weight files map to
its submodules. Its module registers it with ``ferjax.registry.register``; the trainer, steps, config
validation and pipeline look it up by ``config.model.name`` and know nothing else about it. The registry
imports every module of this package on the first lookup (listed, not named), so a built-in family is one
new file here.
Defaults live in the config file (``configs/<family>.py``). See docs/extending.md.
"""

from __future__ import annotations

import math

from flax import nnx

from ferjax.registry import Family, get_family, names, register


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


__all__ = ['Family', 'register', 'get_family', 'names', 'create_model', 'count_params']
