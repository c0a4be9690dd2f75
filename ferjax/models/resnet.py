"""ResNet-18/34/50 (He et al., 2016) in Flax NNX, NHWC, with a channel-attention slot per block.

Module names follow torchvision's layout so its state dicts map 1:1 (see ``convert.py``):
``conv1, bn1, layer1..layer4`` (lists of blocks), blocks with ``conv1/bn1/conv2/bn2[/conv3/bn3]``,
``downsample.conv``/``downsample.bn`` (torchvision's ``downsample.0``/``downsample.1``) and an
optional classifier ``fc``. Padding is explicit and symmetric as in torchvision (``SAME`` would pad
stride-2 layers asymmetrically), so imported weights reproduce torchvision's outputs.

Channel attention (``attention.py``) sits after each block's last BatchNorm and before the residual
addition; its parameters are named ``attn``. Width (``width``, 64 = standard) and ``stage_sizes``
are configurable so tests can build tiny networks.

BatchNorm follows PyTorch's defaults: epsilon 1e-5, momentum 0.9 in Flax's convention (= PyTorch's
0.1). Mode is chosen at call time: ``train=True`` uses batch statistics and updates the running
averages, ``train=False`` uses the running averages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import checks
from ferjax.models import attention as attention_lib
from ferjax.models import precision

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision's init for convolutions: kaiming normal, fan_out, ReLU gain.
conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Architecture of a ResNet family member."""
  block: str  # 'basic' | 'bottleneck'
  stage_sizes: tuple[int, ...]

  @property
  def expansion(self) -> int:
    return 4 if self.block == 'bottleneck' else 1


RESNET_SPECS = {
    'resnet18': ResNetSpec('basic', (2, 2, 2, 2)),
    'resnet34': ResNetSpec('basic', (3, 4, 6, 3)),
    'resnet50': ResNetSpec('bottleneck', (3, 4, 6, 3)),
}


# 1x1 convolutions as matmuls (`Conv1x1`), read when a layer is built (`formulation`, from
# `config.model.dot_1x1`). XLA:CPU computes a convolution's
# weight gradient as a convolution with batch and features swapped and copies both operands into that
# layout first (two full-size transposes per convolution); a matmul's gradients need no such copies.
# Measured on the Res-RBG train step, 2 x 8 x 112 px, one thread, CPU time, 8 alternating repeats: 12 %
# faster (`scripts/ab_formulation.py --variants flax_bn fused_bn dot1x1`, docs/performance.md).
DOT_1X1 = True


class Conv1x1(nnx.Conv):
  """`nnx.Conv` with a 1x1 kernel (same parameter) computed as `einsum('nhwc,co->nhwo')` of the strided
  input, the contraction XLA:CPU runs as a matmul instead of a convolution."""

  def __call__(self, x):
    s = self.strides
    x, kernel = self.promote_dtype((x[:, ::s[0], ::s[1]], self.kernel[...]), dtype=self.dtype)
    return jnp.einsum('nhwc,co->nhwo', x, kernel[0, 0], precision=self.precision)


def _conv(cin, cout, k, stride=1, *, dtype, rngs):
  pad = (k - 1) // 2
  cls = Conv1x1 if k == 1 and DOT_1X1 else nnx.Conv
  return cls(cin, cout, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)),
             use_bias=False, kernel_init=conv_init, dtype=dtype, rngs=rngs)


# The training-mode BatchNorm formulation of the ResNet layers: True = `batch_norm_train` (one-pass
# statistics, scale and shift folded into one multiply-add, closed-form backward); False = Flax's
# `nnx.BatchNorm` (autodiff through its statistics). Same values (tests/test_formulation.py); read when
# a layer is built (`formulation`, from `config.model.fused_batchnorm`), so `scripts/ab_formulation.py`
# can build both in one process to time them. Alone it was within noise on XLA:CPU (-1.5 % CPU time at
# 2 x 8 x 112 px, docs/performance.md); it is on because
# the measured faster step (`DOT_1X1`) was measured with it.
FUSED_BATCHNORM = True

# Training-mode BatchNorm statistics over how many groups of the batch, read when a layer is built
# (`formulation`, from `config.model.batchnorm_groups`). 1: the whole global batch (under GSPMD every
# device sees the statistics of the global batch, as PyTorch's SyncBatchNorm). G > 1: the batch axis is
# cut into G equal consecutive slices, each normalised by its own statistics: with G = the number of
# devices the batch is sharded over (device d holds slice d), the per-GPU statistics of PyTorch's
# DataParallel / DistributedDataParallel without SyncBatchNorm, computed locally on each device. The
# running averages take the groups' mean statistics. Unlike the two switches above this changes values.
BATCHNORM_GROUPS = 1


# Config fields of every family built on these layers (`config.model.<field>`), recorded with a run (and its
# export metadata) like any other model field; `formulation` applies them while a model is built.
FORMULATION_FIELDS = ('dot_1x1', 'fused_batchnorm', 'batchnorm_groups')


@contextlib.contextmanager
def formulation(dot_1x1: bool | None = None, fused_batchnorm: bool | None = None,
                batchnorm_groups: int | None = None):
  """Layers built inside use these formulations (`DOT_1X1`, `FUSED_BATCHNORM`, `BATCHNORM_GROUPS`; None
  keeps the module default). The families' `from_config` build their model inside it from
  `config.model.dot_1x1`, `config.model.fused_batchnorm` and `config.model.batchnorm_groups`."""
  global DOT_1X1, FUSED_BATCHNORM, BATCHNORM_GROUPS  # pylint: disable=global-statement
  old = DOT_1X1, FUSED_BATCHNORM, BATCHNORM_GROUPS  # Read when a layer is built.
  try:
    if dot_1x1 is not None:
      DOT_1X1 = bool(dot_1x1)
    if fused_batchnorm is not None:
      FUSED_BATCHNORM = bool(fused_batchnorm)
    if batchnorm_groups is not None:
      if int(batchnorm_groups) < 1:
        raise ValueError(f'batchnorm_groups must be >= 1, got {batchnorm_groups}.')
      BATCHNORM_GROUPS = int(batchnorm_groups)
    yield
  finally:
    DOT_1X1, FUSED_BATCHNORM, BATCHNORM_GROUPS = old


def pop_formulation(fields: dict) -> dict:
  """Removes the formulation fields from a family's `config.model` fields; returns them (for
  `formulation(**...)`)."""
  return {k: fields.pop(k) for k in FORMULATION_FIELDS if k in fields}


def family_fields(model_config, schema: dict) -> dict:
  """The constructor keyword arguments of a ResNet-trunk family from its ``config.model``: every field but
  ``name``, checked against the family's ``schema`` (the keys without ``model.``), ``dtype`` resolved
  (``precision.resolve_dtype``: 'auto' = the platform's compute dtype) and ``stage_sizes`` () = None (the
  backbone's standard depths). The family pops its own non-constructor fields, then builds inside
  ``formulation(**pop_formulation(fields))``."""
  fields = {k: v for k, v in model_config.items() if k != 'name'}
  checks.check_fields({f'model.{k}': v for k, v in fields.items()},
                      {f'model.{k}': v for k, v in schema.items()}, partial=True)
  if 'dtype' in fields:
    fields['dtype'] = precision.resolve_dtype(fields['dtype'])
  if 'stage_sizes' in fields:
    fields['stage_sizes'] = tuple(fields['stage_sizes'] or ()) or None
  return fields


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  """Training-mode BatchNorm over all axes but the last: returns (y, batch mean, batch variance).

  The same function as `nnx.BatchNorm` with batch statistics (biased variance E[x^2] - E[x]^2 in
  float32, clipped at 0), written for XLA:CPU's memory-bound passes: the forward folds scale and shift
  into `x * a + b` per channel, and the backward is the closed form (Ioffe & Szegedy, 2015, Sec. 3;
  PyTorch's native kernel) `dx = a * (dy - mean(dy) - x_hat * mean(dy * x_hat))`, two per-channel
  reductions and one elementwise pass, instead of autodiff's chain through the statistics.
  """
  return _bn_train_fwd(x, scale, bias, epsilon)[0]


def _bn_train_fwd(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axes)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x32), axes) - jnp.square(mean))
  inv = jax.lax.rsqrt(var + epsilon)
  a = scale.astype(jnp.float32) * inv
  y = (x32 * a + (bias.astype(jnp.float32) - mean * a)).astype(x.dtype)
  return (y, mean, var), (x, mean, inv, scale, bias)


def _bn_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale, bias = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x.astype(jnp.float32) - mean
  dy32 = dy.astype(jnp.float32)
  dbias = jnp.sum(dy32, axes)
  dscale = jnp.sum(dy32 * centred, axes) * inv  # sum(dy * x_hat).
  a = scale.astype(jnp.float32) * inv
  # The statistics' own cotangents (zero when only the running averages use them) enter through
  # d mean / dx = 1/n and d var / dx = 2 (x - mean) / n.
  dx = (a * dy32 - (a * (dbias + centred * inv * dscale) - dmean - 2 * dvar * centred) / n)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_bn_train_fwd, _bn_train_bwd)


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` (same parameters, statistics and running-average update) whose training mode uses
  `batch_norm_train` when `FUSED_BATCHNORM` was set at construction; evaluation mode is Flax's.

  With `BATCHNORM_GROUPS` = G > 1 at construction, training mode normalises each of G equal consecutive
  slices of the batch (axis 0) by its own statistics (always the one-pass formulation) and updates the
  running averages with the mean of the G slices' statistics."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.fused = FUSED_BATCHNORM
    self.groups = BATCHNORM_GROUPS

  def __call__(self, x, use_running_average=None, *, mask=None):
    if use_running_average is None:
      use_running_average = self.use_running_average
    training = use_running_average is not None and not use_running_average
    simple = (training and mask is None and self.axis_name is None
              and self.axis in (-1, x.ndim - 1) and self.scale is not None and self.bias is not None)
    if self.groups > 1 and training and not simple:
      raise ValueError('batchnorm_groups > 1 needs a BatchNorm over the last axis with scale and bias, '
                       'no mask and no axis_name.')
    if not simple or (not self.fused and self.groups == 1):
      return super().__call__(x, use_running_average, mask=mask)
    # Flax's dtype rule: compute in `dtype`, else in the promotion of the input and float32 parameters.
    dtype = self.dtype or jnp.promote_types(x.dtype, self.scale[...].dtype)
    scale, bias = self.scale[...], self.bias[...]
    if self.groups == 1:
      y, mean, var = batch_norm_train(x.astype(dtype), scale, bias, self.epsilon)
    else:
      y, mean, var = self._grouped(x.astype(dtype), scale, bias)
    m = self.momentum
    self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
    self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
    return y

  def _grouped(self, x, scale, bias):
    """Per-group `batch_norm_train` over [G, N/G, ...]: (y, the groups' mean mean, mean variance)."""
    g, n = self.groups, x.shape[0]
    if n % g:
      raise ValueError(f'model.batchnorm_groups={g} needs a batch divisible by {g} (one group per '
                       f'device); a BatchNorm got {n} rows (input shape {tuple(x.shape)}).')
    xs = x.reshape(g, n // g, *x.shape[1:])
    y, mean, var = jax.vmap(lambda xg: batch_norm_train(xg, scale, bias, self.epsilon))(xs)
    return y.reshape(x.shape), jnp.mean(mean, 0), jnp.mean(var, 0)


def _bn(c, *, dtype, rngs, zero_scale=False):
  return BatchNorm(c, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                   scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
                   rngs=rngs)


class Downsample(nnx.Module):
  """1x1 strided projection + BatchNorm on the shortcut (torchvision's ``downsample``)."""

  def __init__(self, cin, cout, stride, *, dtype, rngs):
    self.conv = _conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs)
    self.bn = _bn(cout, dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool):
    return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions (ResNet-18/34). Stride sits on ``conv1``."""
  expansion = 1

  def __init__(self, cin, planes, stride=1, *, attention='none', attention_kwargs=None,
               zero_init_residual=False, dtype=None, rngs: nnx.Rngs):
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(planes, cout, 3, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(cout, dtype=dtype, rngs=rngs, zero_scale=zero_init_residual)
    self.attn = attention_lib.make_attention(attention, cout, dtype=dtype, rngs=rngs,
                                             **(attention_kwargs or {}))
    self.downsample = (Downsample(cin, cout, stride, dtype=dtype, rngs=rngs)
                       if stride != 1 or cin != cout else None)

  def __call__(self, x, train: bool = False):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    if self.attn is not None:
      y = self.attn(y)
    shortcut = x if self.downsample is None else self.downsample(x, train)
    return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
  """1x1 → 3x3 (strided, torchvision "v1.5") → 1x1 with expansion 4 (ResNet-50)."""
  expansion = 4

  def __init__(self, cin, planes, stride=1, *, attention='none', attention_kwargs=None,
               zero_init_residual=False, dtype=None, rngs: nnx.Rngs):
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(planes, planes, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(planes, dtype=dtype, rngs=rngs)
    self.conv3 = _conv(planes, cout, 1, dtype=dtype, rngs=rngs)
    self.bn3 = _bn(cout, dtype=dtype, rngs=rngs, zero_scale=zero_init_residual)
    self.attn = attention_lib.make_attention(attention, cout, dtype=dtype, rngs=rngs,
                                             **(attention_kwargs or {}))
    self.downsample = (Downsample(cin, cout, stride, dtype=dtype, rngs=rngs)
                       if stride != 1 or cin != cout else None)

  def __call__(self, x, train: bool = False):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    if self.attn is not None:
      y = self.attn(y)
    shortcut = x if self.downsample is None else self.downsample(x, train)
    return jax.nn.relu(y + shortcut)


def call_block(block: nnx.Module, x: jax.Array, train: bool, remat: bool) -> jax.Array:
  """``block(x, train)``, rematerialised when ``remat``: ``nnx.remat`` (``jax.checkpoint`` lifted to NNX)
  saves only the block's input for the backward pass and propagates BatchNorm's running-average
  updates made inside it. ``train`` is a Python bool closed over, so it stays static."""
  if not remat:
    return block(x, train)
  return nnx.remat(lambda b, y: b(y, train))(block, x)


def _stem(conv: nnx.Conv, bn: nnx.BatchNorm, x: jax.Array, train: bool) -> jax.Array:
  x = jax.nn.relu(bn(conv(x), use_running_average=not train))
  return nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class ResNet(nnx.Module):
  """ResNet feature extractor (and optional classifier) on NHWC images.

  Args:
    arch: 'resnet18' | 'resnet34' | 'resnet50'.
    width: channels of the stem and first stage (64 = the standard network); stage ``i`` has
      ``width * 2**i`` planes.
    stage_sizes: blocks per stage, overriding the architecture's (e.g. ``(1, 1, 1, 1)`` in tests).
    attention: channel attention in every block: 'none' | 'se' | 'eca' | 'geca'.
    attention_kwargs: extra arguments for the attention module (e.g. ``{'variant': 'ghost'}``).
    num_classes: if set, adds a linear classifier ``fc`` on the pooled features.
    zero_init_residual: start each block's last BN scale at 0 (torchvision's option; default off).
    dtype: compute dtype (parameters stay float32).
    remat: rematerialise the stem and every block (``nnx.remat``): the backward pass recomputes their
      activations from their inputs instead of keeping them, so only the blocks' inputs stay in memory
      (about one forward pass more compute for much less activation memory; same values).

  ``__call__(x, train=False)`` returns pooled features [N, num_features] (or logits [N,
  num_classes] when ``fc`` exists); ``features(x, train)`` returns the last feature map.
  """

  def __init__(self, arch: str = 'resnet50', *, width: int = 64,
               stage_sizes: Sequence[int] | None = None, attention: str = 'none',
               attention_kwargs: dict | None = None, num_classes: int | None = None,
               zero_init_residual: bool = False, dtype=None, remat: bool = False,
               rngs: nnx.Rngs):
    if arch not in RESNET_SPECS:
      raise ValueError(f'Unknown ResNet {arch!r}; expected one of {sorted(RESNET_SPECS)}.')
    spec = RESNET_SPECS[arch]
    stage_sizes = tuple(stage_sizes) if stage_sizes is not None else spec.stage_sizes
    if len(stage_sizes) != 4 or any(int(s) < 1 for s in stage_sizes):
      raise ValueError(f'stage_sizes must be 4 positive ints, got {stage_sizes}.')
    if width < 1:
      raise ValueError(f'width must be >= 1, got {width}.')
    block_cls = Bottleneck if spec.block == 'bottleneck' else BasicBlock
    self.arch = arch
    self.stage_sizes = stage_sizes
    self.dtype = dtype
    self.remat = remat

    self.conv1 = nnx.Conv(3, width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                          kernel_init=conv_init, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype=dtype, rngs=rngs)
    cin = width
    for i, n_blocks in enumerate(stage_sizes):
      planes = width * 2**i
      blocks = []
      for j in range(n_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(cin, planes, stride, attention=attention,
                                attention_kwargs=attention_kwargs,
                                zero_init_residual=zero_init_residual, dtype=dtype, rngs=rngs))
        cin = planes * block_cls.expansion
      setattr(self, f'layer{i + 1}', nnx.List(blocks))
    self.num_features = cin
    self.fc = (nnx.Linear(cin, num_classes, dtype=dtype, rngs=rngs)
               if num_classes is not None else None)

  @property
  def layers(self):
    return [self.layer1, self.layer2, self.layer3, self.layer4]

  def stem(self, x: jax.Array, train: bool = False) -> jax.Array:
    """7x7/2 convolution, BatchNorm, ReLU and 3x3/2 max pool: [N, H, W, 3] -> [N, H/4, W/4, width],
    rematerialised with ``remat``: it works at the largest resolution, so its activations are the
    largest of the network after the first stage's."""
    stem = lambda conv, bn, y: _stem(conv, bn, y, train)
    return (nnx.remat(stem) if self.remat else stem)(self.conv1, self.bn1, x)

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Last feature map [N, H/32, W/32, num_features] of NHWC images ``x``."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'ResNet expects NHWC images with 3 channels, got shape {x.shape}.')
    if self.dtype is not None:
      x = x.astype(self.dtype)
    x = self.stem(x, train)
    for stage in self.layers:
      for block in stage:
        x = call_block(block, x, train, self.remat)
    return x

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = jnp.mean(self.features(x, train), axis=(1, 2))
    return self.fc(y) if self.fc is not None else y
