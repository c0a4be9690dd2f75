"""ferjax models: a registry keyed by ``model_config.name`` and parameter counting.

Every model follows the model contract: ``model(frames, *, train=False, rngs=None) -> logits``
with frames float [B, T, H, W, 3] and logits float32 [B, num_classes]; its state holds only
``nnx.Param`` and ``nnx.BatchStat``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from ferjax.models import attention as attention_lib
from ferjax.models import recurrent
from ferjax.models import res_rbg
from ferjax.models import resnet

# Defaults of the 'res_rbg' model config, this project's reading of the paper where it is silent.
# hidden=560 with merge='sum' gives 63,720,045 parameters for the full default model
# (ResNet-50 width 64 + G-ECA + 2 RBG blocks + 7-class head): -0.7 % from the paper's 64.20 M
# (backbone 23.51 M, temporal 40.21 M, head 4 k). Summing the BiGRU directions keeps the width, so
# every layer after the first has its residual connection; with 'concat' (512: 67.6 M, +5.3 %)
# two layers per block have none and training from scratch can stall (README "Res-RBG").
# (see tests/test_models.py::test_default_param_count).
RES_RBG_DEFAULTS = dict(
    backbone='resnet50',      # 'resnet18' | 'resnet34' | 'resnet50'
    width=64,                 # ResNet base width; 64 = standard
    stage_sizes=(),           # e.g. (1, 1, 1, 1) for tests; () or None = the architecture's
    attention='geca',         # 'none' | 'se' | 'eca' | 'geca'
    geca_variant='avgmax',    # 'avgmax' (default reading) | 'ghost'
    zero_init_residual=False, # last BN scale of every ResNet block starts at 0
    rbg_blocks=2,             # the paper's main "2RBG" model
    relu_before_gru=True,     # Algorithm 1: ReLU before every layer, the GRUs included
    bigru_layers=4,           # BiGRU layers per block (layers 3-6 of Algorithm 1)
    block_norm=True,          # BatchNorm before each BiGRU
    residual=True,            # residual connections where widths match
    head_zero_init=False,     # classifier kernel starts at 0
    hidden=560,               # GRU hidden size per direction
    merge='sum',              # BiGRU merge: 'concat' | 'sum' | 'mean'
    pooling='mean',           # temporal pooling: 'mean' | 'last'
    dropout=0.5,              # before the classifier
    dtype='float32',          # compute dtype: 'float32' | 'bfloat16'
    unroll=1,                 # lax.scan unroll of the recurrent layers
)

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _get(config, key: str, default: Any) -> Any:
  value = config.get(key, default) if hasattr(config, 'get') else getattr(config, key, default)
  return default if value is None else value


def _choice(name: str, value, allowed) -> Any:
  if value not in allowed:
    raise ValueError(f'model.{name}={value!r} is not valid; expected one of {tuple(allowed)}.')
  return value


def _build_res_rbg(config, num_classes: int, *, rngs: nnx.Rngs) -> res_rbg.ResRBG:
  c = {k: _get(config, k, v) for k, v in RES_RBG_DEFAULTS.items()}
  _choice('backbone', c['backbone'], resnet.RESNET_SPECS)
  _choice('attention', c['attention'], attention_lib.ATTENTION_NAMES)
  _choice('geca_variant', c['geca_variant'], ('avgmax', 'ghost'))
  _choice('merge', c['merge'], recurrent.MERGE_MODES)
  _choice('pooling', c['pooling'], res_rbg.POOLING_MODES)
  dtype = _DTYPES[_choice('dtype', str(jnp.dtype(c['dtype'])), _DTYPES)]
  for key in ('width', 'hidden'):
    if int(c[key]) < 1:
      raise ValueError(f'model.{key} must be a positive int, got {c[key]!r}.')
  attention_kwargs = {'variant': c['geca_variant']} if c['attention'] == 'geca' else None
  # () or None mean the backbone's standard depths (ConfigDict overrides need a tuple default).
  stage_sizes = tuple(c['stage_sizes'] or ()) or None
  return res_rbg.ResRBG(
      num_classes, backbone=c['backbone'], width=int(c['width']), stage_sizes=stage_sizes,
      attention=c['attention'], attention_kwargs=attention_kwargs,
      zero_init_residual=bool(c['zero_init_residual']), rbg_blocks=int(c['rbg_blocks']),
      relu_before_gru=bool(c['relu_before_gru']), bigru_layers=int(c['bigru_layers']),
      block_norm=bool(c['block_norm']), residual=bool(c['residual']),
      head_zero_init=bool(c['head_zero_init']),
      hidden=int(c['hidden']), merge=c['merge'],
      pooling=c['pooling'], dropout=float(c['dropout']), dtype=dtype, unroll=c['unroll'],
      rngs=rngs)


MODEL_BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    'res_rbg': _build_res_rbg,
}


def create_model(model_config, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the model named ``model_config.name`` for ``num_classes`` classes.

  ``model_config`` is a ConfigDict (or anything with attribute/``get`` access). For 'res_rbg'
  the fields and defaults are ``RES_RBG_DEFAULTS``; missing or None fields take the default.
  Wrap in ``nnx.eval_shape(lambda: create_model(...))`` to get shapes without allocating.
  """
  name = _get(model_config, 'name', None)
  if name not in MODEL_BUILDERS:
    raise ValueError(f'model.name={name!r} is not a known model; expected one of '
                     f'{tuple(MODEL_BUILDERS)}.')
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
  return MODEL_BUILDERS[name](model_config, num_classes, rngs=rngs)


def count_params(model: nnx.Module) -> dict[str, int]:
  """Number of ``nnx.Param`` scalars per top-level component plus 'total' (BatchStats excluded,
  as PyTorch's ``sum(p.numel() for p in model.parameters())``). Works on ``nnx.eval_shape``
  models."""
  counts: dict[str, int] = {}
  for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    counts[str(path[0])] = counts.get(str(path[0]), 0) + math.prod(value.shape)
  counts['total'] = sum(counts.values())
  return counts


__all__ = ['create_model', 'count_params', 'MODEL_BUILDERS', 'RES_RBG_DEFAULTS']
