"""Res-RBG (Mou et al., Sensors 2025): per-frame ResNet + G-ECA, then residual (Bi)GRU blocks.

``ResRBG`` folds time into the batch, runs a ResNet (G-ECA in every block by default) on each
frame, pools each frame to a feature vector (2048-d for ResNet-50 at width 64), runs
``rbg_blocks`` RBG blocks over time, pools over time, applies dropout and a linear classifier.

RBG block (Algorithm 1 of the paper): six stacked layers, layers 1–2 GRU, layers 3–6
BatchNorm → ReLU → BiGRU, with residual connections. The paper leaves open, and this project
chooses (all exposed as arguments):

* the hidden size ``hidden`` (per direction for BiGRUs) — default 560 (see ``create_model``);
* the BiGRU merge — default 'sum' (the directions' outputs added: every BiGRU keeps the width, so it
  has a residual connection; 'concat' is PyTorch's ``bidirectional=True`` layout, 2 * hidden);
* residual connections on every layer whose input and output widths match (``residual=True``):
  with the defaults every layer but the first (2048 → hidden); with merge 'concat' layer 3
  (hidden → 2 * hidden) and the next block's layer 1 have none;
* BatchNorm over the feature axis, statistics over batch and time;
* temporal pooling ('mean' over frames, or the 'last' frame) and dropout rate before the
  classifier (default 0.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import config as config_lib
from ferjax import registry
from ferjax.data import augment
from ferjax.models import attention as attention_lib
from ferjax.models import convert
from ferjax.models import heads
from ferjax.models import precision
from ferjax.models import recurrent
from ferjax.models import resnet

POOLING_MODES = ('mean', 'last')
# 'blocks': every ResNet block and every RBG block is rematerialised (recomputed in the backward pass).
REMAT_MODES = ('none', 'blocks')


class RBGBlock(nnx.Module):
  """One RBG block (Algorithm 1 of the paper): ReLU → GRU twice, then 4 x (BatchNorm → ReLU → BiGRU),
  with a residual connection around every layer whose input and output widths match.

  Submodules: ``gru`` (list of 2 ``GRU``), ``norm`` and ``bigru`` (lists of ``bigru_layers``; layer
  ``l`` of the paper, l = 3..6, is ``norm[l-3]`` + ``bigru[l-3]``).

  Args:
    relu_before_gru: the paper applies ReLU before every layer, the two GRU layers included
      (Algorithm 1); False feeds the GRUs the un-rectified stream.
    bigru_layers: BiGRU layers after the two GRUs (4 in the paper; 0 leaves a plain 2-layer GRU, the
      ablation's "Baseline").
    norm: BatchNorm before each BiGRU (the paper); False for the ablation's plain stacks.
    residual: residual connections where widths match (the paper); False for plain stacks.
  """

  def __init__(self, in_features: int, hidden: int, *, merge: str = 'concat',
               residual: bool = True, norm: bool = True, relu_before_gru: bool = True,
               bigru_layers: int = 4, dtype=None, unroll: int | bool = 1, rngs: nnx.Rngs):
    self.residual = residual
    self.relu_before_gru = relu_before_gru
    grus, norms, bigrus = [], [], []
    d = in_features
    for _ in range(2):
      grus.append(recurrent.GRU(d, hidden, dtype=dtype, unroll=unroll, rngs=rngs))
      d = hidden
    for _ in range(bigru_layers):
      norms.append(resnet.BatchNorm(d, momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON,
                                    dtype=dtype, rngs=rngs) if norm else None)
      bigru = recurrent.BiGRU(d, hidden, merge=merge, dtype=dtype, unroll=unroll, rngs=rngs)
      bigrus.append(bigru)
      d = bigru.out_features
    self.gru = nnx.List(grus)
    self.norm = nnx.List(norms)
    self.bigru = nnx.List(bigrus)
    self.out_features = d

  def _add(self, y, x):
    return y + x if self.residual and y.shape == x.shape else y

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps [B, T, in_features] to [B, T, out_features]."""
    for gru in self.gru:
      y, _ = gru(jax.nn.relu(x) if self.relu_before_gru else x)
      x = self._add(y, x)
    for norm, bigru in zip(self.norm, self.bigru):
      y = x if norm is None else norm(x, use_running_average=not train)
      y, _ = bigru(jax.nn.relu(y))
      x = self._add(y, x)
    return x


class ResRBG(nnx.Module):
  """Res-RBG classifier for frame sequences.

  Top-level components (also the groups of ``count_params``): ``backbone`` (ResNet), ``temporal``
  (list of ``RBGBlock``), ``head`` (Linear). ``dropout`` has no state; it draws its mask from the
  ``rngs`` passed at call time.

  Args:
    num_classes: number of expression classes.
    backbone: 'resnet18' | 'resnet34' | 'resnet50'.
    width: ResNet base width (64 = standard).
    stage_sizes: optional ResNet stage depths override.
    attention: channel attention in every ResNet block ('none' | 'se' | 'eca' | 'geca').
    attention_kwargs: extra arguments for the attention module (e.g. ``{'variant': 'ghost'}``).
    zero_init_residual: start the last BatchNorm scale of every ResNet block at 0 (torchvision's
      option, the flax examples' default), so each block starts as its shortcut.
    rbg_blocks: number of RBG blocks (0 = pool the frame features directly).
    relu_before_gru, bigru_layers, block_norm, residual: the RBG block's structure (``RBGBlock``).
    head_zero_init: start the classifier's kernel at 0 (big_vision's default), so no gradient reaches the
      frame and sequence layers before the classifier has aligned with the labels.
    head_init: the classifier's initialisation (``heads.INITS``): 'lecun_normal' (flax's) or 'pytorch'
      (``nn.Linear``'s U(+-1/sqrt(fan_in)) kernel and bias).
    hidden: GRU hidden size (per direction).
    merge: BiGRU merge ('concat' | 'sum' | 'mean').
    pooling: temporal pooling ('mean' | 'last').
    dropout: dropout rate before the classifier.
    dtype: compute dtype (float32 or bfloat16) of the ResNet and the RBG blocks; parameters are float32,
      the classifier computes in float32 (its input is cast up, not its output).
    unroll: ``lax.scan`` unroll factor of the recurrent layers.
    remat: 'none' | 'blocks': rematerialise every ResNet block and every RBG block (``nnx.remat``),
      so the backward pass keeps only the blocks' inputs and recomputes the rest; same values, about
      one more forward pass of compute, a fraction of the activation memory (docs/performance.md).
  """

  def __init__(self, num_classes: int, *, backbone: str = 'resnet50', width: int = 64,
               stage_sizes=None, attention: str = 'geca', attention_kwargs: dict | None = None,
               zero_init_residual: bool = False, rbg_blocks: int = 2,
               relu_before_gru: bool = True, bigru_layers: int = 4, block_norm: bool = True,
               residual: bool = True, head_zero_init: bool = False, head_init: str = 'lecun_normal',
               hidden: int = 560,
               merge: str = 'sum',
               pooling: str = 'mean', dropout: float = 0.5, dtype=jnp.float32,
               unroll: int | bool = 1, remat: str = 'none', rngs: nnx.Rngs):
    if pooling not in POOLING_MODES:
      raise ValueError(f'Unknown pooling {pooling!r}; expected one of {POOLING_MODES}.')
    if rbg_blocks < 0:
      raise ValueError(f'rbg_blocks must be >= 0, got {rbg_blocks}.')
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {dropout}.')
    if remat not in REMAT_MODES:
      raise ValueError(f'Unknown remat {remat!r}; expected one of {REMAT_MODES}.')
    self.pooling = pooling
    self.remat = remat == 'blocks'
    self.dtype = dtype
    self.backbone = resnet.ResNet(backbone, width=width, stage_sizes=stage_sizes,
                                  attention=attention, attention_kwargs=attention_kwargs,
                                  zero_init_residual=zero_init_residual, dtype=dtype,
                                  remat=self.remat, rngs=rngs)
    blocks = []
    d = self.backbone.num_features
    for _ in range(rbg_blocks):
      blocks.append(RBGBlock(d, hidden, merge=merge, residual=residual, norm=block_norm,
                             relu_before_gru=relu_before_gru, bigru_layers=bigru_layers,
                             dtype=dtype, unroll=unroll, rngs=rngs))
      d = blocks[-1].out_features
    self.temporal = nnx.List(blocks)
    self.dropout = nnx.Dropout(dropout)
    self.head = heads.Float32Linear(d, num_classes, zero_init=head_zero_init, init=head_init,
                                     rngs=rngs)

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """The model contract: ``{'logits': float32 [B, num_classes]}`` for ``batch['frames']``."""
    return {'logits': self.logits(batch['frames'], train=train, rngs=rngs)}

  def logits(self, frames: jax.Array, *, train: bool = False,
             rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits float32 [B, num_classes] for normalised frames [B, T, H, W, 3].

    ``train=True`` uses batch statistics in BatchNorm (and updates the running averages) and
    applies dropout with masks drawn from ``rngs`` (stream 'dropout', else the default stream).
    """
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f'ResRBG expects frames [B, T, H, W, 3], got shape {frames.shape}.')
    if train and self.dropout.rate > 0 and rngs is None:
      raise ValueError('ResRBG(train=True) with dropout > 0 needs `rngs` (e.g. '
                       'nnx.Rngs(dropout=key)) at call time; modules store no RNG state.')
    b, t = frames.shape[:2]
    x = self.backbone(frames.reshape(b * t, *frames.shape[2:]), train)
    x = x.reshape(b, t, x.shape[-1])
    for block in self.temporal:
      x = resnet.call_block(block, x, train, self.remat)
    x = jnp.mean(x, axis=1) if self.pooling == 'mean' else x[:, -1]
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self.head(x)  # float32 (heads.Float32Linear).


# config.model of 'res_rbg': the checks; the defaults are in configs/res_rbg.py (this project's reading of
# the paper where it is silent, documented there).
SCHEMA = {
    'backbone': config_lib.one_of(*resnet.RESNET_SPECS),
    'width': config_lib.number(1, integer=True),
    'stage_sizes': config_lib.int_tuple,
    'attention': config_lib.one_of(*attention_lib.ATTENTION_NAMES),
    'geca_variant': config_lib.one_of('avgmax', 'ghost'),
    'unroll': config_lib.number(1, 64, integer=True),
    'zero_init_residual': config_lib.boolean,
    'rbg_blocks': config_lib.number(0, 16, integer=True),
    'relu_before_gru': config_lib.boolean,
    'bigru_layers': config_lib.number(0, 4, integer=True),
    'block_norm': config_lib.boolean,
    'residual': config_lib.boolean,
    'head_zero_init': config_lib.boolean,
    'head_init': config_lib.one_of(*heads.INITS),
    'hidden': config_lib.number(1, integer=True),
    'merge': config_lib.one_of(*recurrent.MERGE_MODES),
    'pooling': config_lib.one_of(*POOLING_MODES),
    'dropout': config_lib.number(0, 1, hi_open=True),
    'dot_1x1': config_lib.boolean,  # resnet.formulation
    'fused_batchnorm': config_lib.boolean,
    'batchnorm_groups': config_lib.number(1, integer=True),
    'dtype': config_lib.one_of(*precision.DTYPE_NAMES),
    'remat': config_lib.one_of(*REMAT_MODES),
}


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> ResRBG:
  """``ResRBG`` from ``config.model``; fields the config leaves out take ``ResRBG``'s arguments'
  defaults (tests build partial configs; runs validate the full one first)."""
  fields = {k: v for k, v in config.items() if k != 'name'}
  config_lib.check_fields({f'model.{k}': v for k, v in fields.items()},
                          {f'model.{k}': v for k, v in SCHEMA.items()}, partial=True)
  if 'dtype' in fields:
    fields['dtype'] = precision.resolve_dtype(fields['dtype'])
  variant = fields.pop('geca_variant', 'avgmax')
  if fields.get('attention', 'geca') == 'geca':
    fields['attention_kwargs'] = {'variant': variant}
  if 'stage_sizes' in fields:  # () means the backbone's standard depths.
    fields['stage_sizes'] = tuple(fields['stage_sizes'] or ()) or None
  fields['block_norm'] = fields.pop('block_norm', True)
  with resnet.formulation(**resnet.pop_formulation(fields)):
    return ResRBG(num_classes, **fields, rngs=rngs)


# Random masking of the input frames ("RM" of the paper's ablation) is Res-RBG's: its augment.mask_* keys.
registry.register(registry.Family('res_rbg', SCHEMA, from_config, inputs=('frames',),
                                    pretrained=convert.apply_pretrained,
                                    config_rules=augment.MASK_RULES))
