"""Multi-head cross attention (family ``mhca``): DAN, "Distract Your Attention: Multi-head Cross Attention
Network for Facial Expression Recognition" (Wen et al., Biomimetics 2023, 8(2):199; public code
``yaoing/DAN``, networks/dan.py and train_rafdb.py, re-implemented here).

The survey seed's IRNet (a ResNet improved with multi-head cross attention over facial regions, RAF-DB
90.40 %) has no public full text; DAN is the fully specified design it reads as (docs/models/mhca.md):

* trunk: a torchvision-layout ResNet up to its last stage (``backbone``: 'resnet18' = DAN, 512 x 7 x 7 at
  224 px; 'resnet50' = the survey's IRNet reading, 2048-d heads), no pooling;
* ``num_heads`` cross-attention heads (``CrossAttentionHead``), each a spatial unit then a channel unit:
  - spatial: 1x1 conv C -> 256 + BN; three parallel convs 256 -> C, 3x3 (pad 1) + BN, 1x3 (pad 0, 1) + BN,
    3x1 (pad 1, 0) + BN; their sum through a ReLU, summed over channels to one H x W map; the unit's
    output is the trunk's map times that map (no sigmoid);
  - channel: global average pool of the spatial output, Linear C -> 32, BN, ReLU, Linear 32 -> C, sigmoid;
    the head's vector is the pooled vector times that gate;
* fusion: the heads stacked [N, H, C], a log-softmax over the head axis when H > 1, summed over heads,
  Linear -> classes, BatchNorm on the logits.

Outputs (the model contract plus what the losses read): ``logits``; ``features`` [N, C], the trunk's map
average-pooled (DAN's affinity-loss input); ``centres`` [classes, C], the affinity loss's learnable class
centres (a model parameter, so the optimizer and its weight decay see them as DAN's do); ``heads``
[N, H, C] after the log-softmax (the partition loss's input). N = B*T: per frame like RMN, logits are
[B, C] for T == 1 and [B, T, C] otherwise.

Losses (``make_losses``, each logged by name): cross-entropy + ``affinity_weight`` x ``affinity`` +
``partition_weight`` x ``partition`` (see ``affinity_loss`` and ``partition_loss``).

Initialisation as DAN's: trunk convolutions Kaiming normal (fan_out, ReLU gain) and BatchNorm 1/0 (ferjax's
ResNet, = torchvision's); in the heads, convolutions Kaiming normal (fan_out) with zero bias, BatchNorm 1/0,
Linear normal(std 0.001) with zero bias (``CrossAttentionHead.init_weights`` of the code); the classifier
and the logit BatchNorm keep PyTorch's defaults (uniform +-1/sqrt(fan_in) weight and bias; 1/0), since the
code does not re-initialise them; centres standard normal (``torch.randn``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import config as config_lib
from ferjax import losses as losses_lib
from ferjax import registry
from ferjax.data import augment
from ferjax.models import convert
from ferjax.models import precision
from ferjax.models import resnet

REMAT_MODES = ('none', 'blocks')
# DAN's AffinityLoss clamps the masked distance matrix to [1e-12, 1e12] before summing.
AFFINITY_CLAMP = (1e-12, 1e12)
# Added to the heads' variance in the partition loss, so identical heads give a finite loss.
PARTITION_EPS = 1e-8

head_linear_init = nnx.initializers.normal(0.001)


def _torch_uniform(fan_in: int):
  """PyTorch's default Linear weight and bias initialiser: uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _bn(c, *, dtype, rngs):
  return resnet.BatchNorm(c, momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON, dtype=dtype,
                          rngs=rngs)


def _conv(cin, cout, kernel, padding, *, dtype, rngs):
  return nnx.Conv(cin, cout, kernel, padding=padding, kernel_init=resnet.conv_init,
                  bias_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)


class SpatialUnit(nnx.Module):
  """DAN's SpatialAttention: returns ``x * map`` with map [N, H, W, 1] (see the module docstring)."""

  def __init__(self, channels: int, hidden: int = 256, *, dtype=None, rngs: nnx.Rngs):
    self.conv1x1 = _conv(channels, hidden, (1, 1), 'VALID', dtype=dtype, rngs=rngs)
    self.bn1x1 = _bn(hidden, dtype=dtype, rngs=rngs)
    self.conv3x3 = _conv(hidden, channels, (3, 3), ((1, 1), (1, 1)), dtype=dtype, rngs=rngs)
    self.bn3x3 = _bn(channels, dtype=dtype, rngs=rngs)
    self.conv1x3 = _conv(hidden, channels, (1, 3), ((0, 0), (1, 1)), dtype=dtype, rngs=rngs)
    self.bn1x3 = _bn(channels, dtype=dtype, rngs=rngs)
    self.conv3x1 = _conv(hidden, channels, (3, 1), ((1, 1), (0, 0)), dtype=dtype, rngs=rngs)
    self.bn3x1 = _bn(channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ura = not train
    y = self.bn1x1(self.conv1x1(x), use_running_average=ura)
    y = jax.nn.relu(self.bn3x3(self.conv3x3(y), use_running_average=ura)
                    + self.bn1x3(self.conv1x3(y), use_running_average=ura)
                    + self.bn3x1(self.conv3x1(y), use_running_average=ura))
    return x * jnp.sum(y, axis=-1, keepdims=True)


class ChannelUnit(nnx.Module):
  """DAN's ChannelAttention: GAP -> Linear C->32 -> BN -> ReLU -> Linear 32->C -> sigmoid; returns the
  pooled vector [N, C] times that gate."""

  def __init__(self, channels: int, hidden: int = 32, *, dtype=None, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(channels, hidden, kernel_init=head_linear_init, dtype=dtype, rngs=rngs)
    self.bn = _bn(hidden, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, channels, kernel_init=head_linear_init, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    pooled = jnp.mean(x, axis=(1, 2))
    gate = jax.nn.relu(self.bn(self.fc1(pooled), use_running_average=not train))
    return pooled * jax.nn.sigmoid(self.fc2(gate))


class CrossAttentionHead(nnx.Module):
  """Spatial unit then channel unit: NHWC map -> head vector [N, C]."""

  def __init__(self, channels: int, spatial_hidden: int = 256, channel_hidden: int = 32, *,
               dtype=None, rngs: nnx.Rngs):
    self.spatial = SpatialUnit(channels, spatial_hidden, dtype=dtype, rngs=rngs)
    self.channel = ChannelUnit(channels, channel_hidden, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.channel(self.spatial(x, train), train)


class MHCA(nnx.Module):
  """DAN on frames [B, T, S, S, 3]; see the module docstring.

  Top-level components (the groups of ``count_params``): ``backbone`` (ResNet trunk, no ``fc``),
  ``head0`` .. ``head{H-1}`` (``CrossAttentionHead``), ``fc`` (Linear C -> classes), ``bn`` (BatchNorm
  on the logits), ``centres`` (affinity-loss class centres).

  Args:
    num_classes: expression classes.
    backbone: 'resnet18' (DAN) | 'resnet34' | 'resnet50' (the survey's IRNet reading).
    width, stage_sizes: ResNet base width and stage depths (tests and the synthetic preset shrink them).
    num_heads: cross-attention heads H (4 in DAN).
    spatial_hidden: channels of the spatial unit's 1x1 convolution (256 in DAN).
    channel_hidden: hidden units of the channel unit (32 in DAN).
    dtype: compute dtype; logits, features, centres and heads are float32.
    remat: 'none' | 'blocks' (rematerialise the trunk's stem and blocks, as RMN's).
  """

  def __init__(self, num_classes: int, *, backbone: str = 'resnet18', width: int = 64,
               stage_sizes=None, num_heads: int = 4, spatial_hidden: int = 256,
               channel_hidden: int = 32, dtype=jnp.float32, remat: str = 'none', rngs: nnx.Rngs):
    if num_heads < 1:
      raise ValueError(f'num_heads must be >= 1, got {num_heads}.')
    if remat not in REMAT_MODES:
      raise ValueError(f'Unknown remat {remat!r}; expected one of {REMAT_MODES}.')
    self.num_heads = num_heads
    self.backbone = resnet.ResNet(backbone, width=width, stage_sizes=stage_sizes, dtype=dtype,
                                  remat=remat == 'blocks', rngs=rngs)
    c = self.backbone.num_features
    for i in range(num_heads):
      setattr(self, f'head{i}', CrossAttentionHead(c, spatial_hidden, channel_hidden, dtype=dtype,
                                                   rngs=rngs))
    self.fc = nnx.Linear(c, num_classes, kernel_init=_torch_uniform(c), bias_init=_torch_uniform(c),
                         dtype=dtype, rngs=rngs)
    self.bn = _bn(num_classes, dtype=jnp.float32, rngs=rngs)
    self.centres = nnx.Param(jax.random.normal(rngs.params(), (num_classes, c), jnp.float32))

  @property
  def heads(self) -> list[CrossAttentionHead]:
    return [getattr(self, f'head{i}') for i in range(self.num_heads)]

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """The model contract: ``logits`` [B, C] (T == 1) or [B, T, C] (per frame), plus ``features``
    [B*T, C], ``centres`` [classes, C] and ``heads`` [B*T, H, C] for the losses."""
    del rngs  # No dropout.
    frames = batch['frames']
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f'mhca expects frames [B, T, H, W, 3], got shape {frames.shape}.')
    b, t = frames.shape[:2]
    fmap = self.backbone.features(frames.reshape(b * t, *frames.shape[2:]), train)
    heads = jnp.stack([head(fmap, train) for head in self.heads], axis=1).astype(jnp.float32)
    if self.num_heads > 1:
      heads = jax.nn.log_softmax(heads, axis=1)
    logits = self.bn(self.fc(jnp.sum(heads, axis=1)).astype(jnp.float32),
                     use_running_average=not train).astype(jnp.float32)
    return {'logits': logits.reshape(b, -1) if t == 1 else logits.reshape(b, t, -1),
            'features': jnp.mean(fmap, axis=(1, 2)).astype(jnp.float32),
            'centres': self.centres[...], 'heads': heads}


def _frame_labels(outputs, batch) -> jax.Array:
  """Labels [N] of the N = B*T images: a per-frame model's frames carry their sequence's label."""
  labels = batch['label']
  return jnp.repeat(labels, outputs['features'].shape[0] // labels.shape[0])


def affinity_loss(outputs, batch, params=None) -> jax.Array:
  """DAN's AffinityLoss: the squared distance of each image's pooled trunk feature to its own class
  centre, divided by the summed variance of the centres over classes (unbiased, as ``torch.var``), the
  [N, classes] matrix of those (0 off the own class) clamped to ``AFFINITY_CLAMP``, summed, / N."""
  del params
  feats, centres = outputs['features'], outputs['centres']
  labels = _frame_labels(outputs, batch)
  dist = (jnp.sum(feats**2, axis=1, keepdims=True) + jnp.sum(centres**2, axis=1)[None, :]
          - 2.0 * feats @ centres.T)
  own = jax.nn.one_hot(labels, centres.shape[0], dtype=dist.dtype)
  scaled = dist * own / jnp.sum(jnp.var(centres, axis=0, ddof=1))
  return jnp.sum(jnp.clip(scaled, *AFFINITY_CLAMP)) / feats.shape[0]


def partition_loss(outputs, batch=None, params=None) -> jax.Array:
  """DAN's PartitionLoss: ``log(1 + H / (var + eps))`` with ``var`` the variance over the H heads
  (unbiased, as ``torch.var``) of the heads' outputs, averaged over images and channels; 0 for one
  head."""
  del batch, params
  heads = outputs['heads']
  num_heads = heads.shape[1]
  if num_heads == 1:
    return jnp.zeros((), jnp.float32)
  var = jnp.mean(jnp.var(heads, axis=1, ddof=1))
  return jnp.log1p(num_heads / (var + PARTITION_EPS))


def make_losses(config) -> losses_lib.Loss:
  """Cross-entropy (``train.label_smoothing``) + ``affinity`` x ``model.affinity_weight`` +
  ``partition`` x ``model.partition_weight`` (DAN's train_rafdb.py: 1 and 1)."""
  model = config.model
  return losses_lib.Loss((
      ('cross_entropy', 1.0, losses_lib.cross_entropy(config.train.label_smoothing)),
      ('affinity', float(model.get('affinity_weight', 1.0)), affinity_loss),
      ('partition', float(model.get('partition_weight', 1.0)), partition_loss),
  ))


# config.model of 'mhca': the checks; the defaults are in configs/mhca.py.
SCHEMA = {
    'backbone': config_lib.one_of(*resnet.RESNET_SPECS),
    'width': config_lib.number(1, integer=True),
    'stage_sizes': config_lib.int_tuple,
    'num_heads': config_lib.number(1, integer=True),
    'spatial_hidden': config_lib.number(1, integer=True),
    'channel_hidden': config_lib.number(1, integer=True),
    'affinity_weight': config_lib.number(0),
    'partition_weight': config_lib.number(0),
    'dot_1x1': config_lib.boolean,  # resnet.formulation
    'fused_batchnorm': config_lib.boolean,
    'dtype': config_lib.one_of(*precision.DTYPE_NAMES),
    'remat': config_lib.one_of(*REMAT_MODES),
}


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> MHCA:
  """``MHCA`` from ``config.model``; fields the config leaves out take ``MHCA``'s defaults."""
  fields = resnet.family_fields(config, SCHEMA)
  fields.pop('affinity_weight', None)
  fields.pop('partition_weight', None)
  with resnet.formulation(**resnet.pop_formulation(fields)):
    return MHCA(num_classes, **fields, rngs=rngs)


# Random erasing in the RAF-DB recipe is the augment chain's random masking: its augment.mask_* keys.
registry.register(registry.Family('mhca', SCHEMA, from_config, inputs=('frames',), losses=make_losses,
                                    pretrained=convert.apply_pretrained,
                                    config_rules=augment.MASK_RULES))
