"""ResNet-34 + multi-region feature extraction (MFEM) + multi-layer feature fusion (MFFM/FIM) + BiLSTM, for
micro-expression recognition from the clip's frames (onset to offset).

The survey describes the network (3-class Acc 84.96 %, F1 85.50 %) but its full text is not public, so the
parts below are this project's reading; every choice the description leaves open is a field
(docs/models/mfem_bilstm.md has the readings table):

  * a ResNet trunk (``backbone``, ResNet-34 by default) runs on every frame; the outputs of its stages 2-5
    (torchvision's ``layer1``..``layer4``; ``stages`` picks them) each feed an MFEM;
  * MFEM (``MFEM``): K parallel region-attention branches over one stage's map [H, W, C]; branch k is a
    learned spatial map ``a_k = norm(conv_1x1(F))`` over the H x W positions (``region_norm``: softmax over
    positions, or a sigmoid normalised to sum 1) and pools ``Σ_p a_k(p) F(p)``; the K vectors are
    concatenated and projected to ``fusion_dim`` (Linear + ReLU), so every level has the same size;
  * MFFM with its interaction module FIM (``FIM``): the L level vectors are tokens; scaled dot-product
    attention between levels (``fim_heads`` heads, queries/keys/values linear) adds to each token
    (residual), and the L tokens are fused by concatenation or their mean (``fusion``);
  * the per-frame vectors [B, T, D] go through a bidirectional LSTM (``lstm_layers`` layers, PyTorch's
    equations, ``recurrent.Stacked`` of ``recurrent.BiLSTM``), the outputs are averaged over time, and a
    linear classifier gives the logits (dropout before it).

PyTorch weights: ``init.backbone_weights`` takes a torchvision ResNet-34 file (``convert.load_resnet``),
``init.lstm_weights`` a PyTorch ``nn.LSTM(num_layers=lstm_layers, bidirectional=True)`` state dict
(``convert.load_stack``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import config as config_lib
from ferjax import registry
from ferjax.models import convert
from ferjax.models import heads
from ferjax.models import recurrent
from ferjax.models import resnet

REGION_NORMS = ('softmax', 'sigmoid')
FUSIONS = ('concat', 'mean')
STAGES = (2, 3, 4, 5)  # ResNet stage numbers (conv2_x .. conv5_x = layer1 .. layer4).


def region_attention(features: jax.Array, logits: jax.Array, norm: str = 'softmax'):
  """Region-attention pooling: ``(pooled [N, K, C], weights [N, H, W, K])`` of ``features`` [N, H, W, C]
  under K spatial maps ``logits`` [N, H, W, K]; each map's weights sum to 1 over the H x W positions
  ('softmax': a softmax over positions; 'sigmoid': sigmoids divided by their sum)."""
  n, h, w, k = logits.shape
  flat = logits.reshape(n, h * w, k).astype(jnp.float32)
  if norm == 'softmax':
    weights = jax.nn.softmax(flat, axis=1)
  else:
    s = jax.nn.sigmoid(flat)
    weights = s / jnp.sum(s, axis=1, keepdims=True)
  pooled = jnp.einsum('npk,npc->nkc', weights, features.reshape(n, h * w, -1).astype(jnp.float32))
  return pooled, weights.reshape(n, h, w, k)


class MFEM(nnx.Module):
  """K region-attention branches over one stage's map, concatenated and projected to ``out_features``."""

  def __init__(self, channels: int, out_features: int, *, regions: int = 4, region_norm: str = 'softmax',
               rngs: nnx.Rngs):
    if region_norm not in REGION_NORMS:
      raise ValueError(f'region_norm must be one of {REGION_NORMS}; got {region_norm!r}')
    self.region_norm = region_norm
    self.maps = nnx.Conv(channels, regions, (1, 1), rngs=rngs)  # one 1x1 conv = K spatial maps
    self.proj = nnx.Linear(regions * channels, out_features, rngs=rngs)

  def __call__(self, features: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, out_features]."""
    pooled, _ = region_attention(features, self.maps(features), self.region_norm)
    return jax.nn.relu(self.proj(pooled.reshape(pooled.shape[0], -1)))


class FIM(nnx.Module):
  """Feature interaction between levels: multi-head attention over the L level tokens [N, L, D] with a
  residual connection; ``fusion`` 'concat' gives [N, L * D], 'mean' [N, D]."""

  def __init__(self, features: int, *, heads: int = 1, fusion: str = 'concat', rngs: nnx.Rngs):
    if features % heads:
      raise ValueError(f'FIM: fusion_dim {features} is not divisible by fim_heads {heads}')
    if fusion not in FUSIONS:
      raise ValueError(f'fusion must be one of {FUSIONS}; got {fusion!r}')
    self.heads = heads
    self.fusion = fusion
    self.query = nnx.Linear(features, features, rngs=rngs)
    self.key = nnx.Linear(features, features, rngs=rngs)
    self.value = nnx.Linear(features, features, rngs=rngs)

  def attention(self, tokens: jax.Array) -> jax.Array:
    """Attention weights [N, heads, L, L] (each row sums to 1 over the levels attended to)."""
    n, l, d = tokens.shape
    q = self.query(tokens).reshape(n, l, self.heads, -1)
    k = self.key(tokens).reshape(n, l, self.heads, -1)
    return jax.nn.softmax(jnp.einsum('nlhd,nmhd->nhlm', q, k) / math.sqrt(d // self.heads), axis=-1)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    n, l, d = tokens.shape
    v = self.value(tokens).reshape(n, l, self.heads, -1)
    mixed = jnp.einsum('nhlm,nmhd->nlhd', self.attention(tokens), v).reshape(n, l, d)
    tokens = tokens + mixed
    return tokens.reshape(n, l * d) if self.fusion == 'concat' else jnp.mean(tokens, axis=1)


class MFEMBiLSTM(nnx.Module):
  """The classifier. Top-level components (the groups of ``count_params``): ``backbone`` (ResNet),
  ``mfem`` (one ``MFEM`` per chosen stage), ``fim`` (``FIM``), ``lstm`` (``recurrent.Stacked``), ``head``.

  Args:
    num_classes: number of classes.
    backbone, width, stage_sizes: the ResNet trunk ('resnet34', 64 = standard width).
    stages: which ResNet stages (2..5) feed an MFEM.
    regions: K, region-attention branches per MFEM.
    region_norm: how a branch's map becomes weights ('softmax' | 'sigmoid').
    fusion_dim: D, the size every level's vector is projected to.
    fim_heads: attention heads of the FIM.
    fusion: how the FIM's level tokens become the frame vector ('concat' | 'mean').
    lstm_hidden: hidden size of each LSTM direction.
    lstm_layers: stacked BiLSTM layers.
    lstm_dropout: dropout between LSTM layers (PyTorch's ``nn.LSTM(dropout=...)``).
    dropout: dropout before the classifier.
    head_init: the classifier's initialisation (``heads.INITS``).
  """

  def __init__(self, num_classes: int, *, backbone: str = 'resnet34', width: int = 64, stage_sizes=None,
               stages=STAGES, regions: int = 4, region_norm: str = 'softmax', fusion_dim: int = 256,
               fim_heads: int = 1, fusion: str = 'concat', lstm_hidden: int = 128, lstm_layers: int = 1,
               lstm_dropout: float = 0.0, dropout: float = 0.5, head_init: str = 'lecun_normal',
               rngs: nnx.Rngs):
    stages = tuple(int(s) for s in stages)
    if not stages or any(s not in STAGES for s in stages) or len(set(stages)) != len(stages):
      raise ValueError(f'stages must be distinct ResNet stages from {STAGES}; got {stages}')
    if fusion_dim % fim_heads:  # checked before anything is built
      raise ValueError(f'FIM: fusion_dim {fusion_dim} is not divisible by fim_heads {fim_heads}')
    self.stages = tuple(sorted(stages))
    self.backbone = resnet.ResNet(backbone, width=width, stage_sizes=stage_sizes, rngs=rngs)
    expansion = resnet.RESNET_SPECS[backbone].expansion
    self.mfem = nnx.List([MFEM(width * 2 ** (s - 2) * expansion, fusion_dim, regions=regions,
                               region_norm=region_norm, rngs=rngs) for s in self.stages])
    self.fim = FIM(fusion_dim, heads=fim_heads, fusion=fusion, rngs=rngs)
    frame_features = fusion_dim * (len(self.stages) if fusion == 'concat' else 1)
    layers, d = [], frame_features
    for _ in range(lstm_layers):
      layers.append(recurrent.BiLSTM(d, lstm_hidden, merge='concat', rngs=rngs))
      d = layers[-1].out_features
    self.lstm = recurrent.Stacked(layers, dropout=lstm_dropout)
    self.dropout = nnx.Dropout(dropout)
    self.head = heads.Float32Linear(d, num_classes, init=head_init, rngs=rngs)

  def frame_vectors(self, images: jax.Array, train: bool = False) -> jax.Array:
    """[N, H, W, 3] images -> [N, D] fused multi-level vectors."""
    x = self.backbone.stem(images, train)
    levels = []
    for number, stage in zip(STAGES, self.backbone.layers):
      for block in stage:
        x = resnet.call_block(block, x, train, self.backbone.remat)
      if number in self.stages:
        levels.append(self.mfem[len(levels)](x))
      if number == self.stages[-1]:
        break  # later stages feed nothing
    return self.fim(jnp.stack(levels, axis=1))

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """The model contract: ``{'logits': float32 [B, num_classes]}`` for ``batch['frames']`` [B, T, H, W, 3]."""
    frames = batch['frames']
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f'MFEMBiLSTM reads frames [B, T, H, W, 3]; found shape {frames.shape}')
    if train and (self.dropout.rate > 0 or self.lstm.dropout.rate > 0) and rngs is None:
      raise ValueError('MFEMBiLSTM(train=True) with dropout > 0 needs `rngs` (e.g. nnx.Rngs(dropout=0))')
    b, t = frames.shape[:2]
    x = self.frame_vectors(frames.reshape(b * t, *frames.shape[2:]), train).reshape(b, t, -1)
    x, _ = self.lstm(x, train=train, rngs=rngs)
    x = self.dropout(jnp.mean(x, axis=1), deterministic=not train, rngs=rngs)
    return {'logits': self.head(x)}


# config.model of 'mfem_bilstm': the checks; the defaults are in configs/mfem_bilstm.py.
SCHEMA = {
    'backbone': config_lib.one_of(*resnet.RESNET_SPECS),
    'width': config_lib.number(1, integer=True),
    'stage_sizes': config_lib.int_tuple,
    'stages': config_lib.int_tuple,
    'regions': config_lib.number(1, integer=True),
    'region_norm': config_lib.one_of(*REGION_NORMS),
    'fusion_dim': config_lib.number(1, integer=True),
    'fim_heads': config_lib.number(1, integer=True),
    'fusion': config_lib.one_of(*FUSIONS),
    'lstm_hidden': config_lib.number(1, integer=True),
    'lstm_layers': config_lib.number(1, 8, integer=True),
    'lstm_dropout': config_lib.number(0, 1, hi_open=True),
    'dropout': config_lib.number(0, 1, hi_open=True),
    'head_init': config_lib.one_of(*heads.INITS),
}


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> MFEMBiLSTM:
  fields = {k: v for k, v in config.items() if k != 'name'}
  config_lib.check_fields({f'model.{k}': v for k, v in fields.items()},
                          {f'model.{k}': v for k, v in SCHEMA.items()}, partial=True)
  if 'stage_sizes' in fields:  # () means the backbone's standard depths.
    fields['stage_sizes'] = tuple(fields['stage_sizes'] or ()) or None
  if 'stages' in fields:
    fields['stages'] = tuple(fields['stages'])
  try:
    return MFEMBiLSTM(num_classes, **fields, rngs=rngs)
  except ValueError as e:  # stages / fim_heads combinations the per-field checks cannot see
    raise config_lib.ConfigError(f'model: {e}') from None


registry.register(registry.Family('mfem_bilstm', SCHEMA, from_config, inputs=('frames',),
                                  pretrained=convert.apply_pretrained))
