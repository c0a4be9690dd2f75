"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018; the authors' code
``Jongchan/attention-module``, MODELS/cbam.py, re-implemented).

``CBAM`` maps an NHWC map ``x`` to ``x' * s(x')`` with ``x' = x * c(x)``:

* channel gate ``c``: the global average- and max-pooled channel descriptors [N, C] each go through one
  shared MLP (Linear C -> C/r with bias, ReLU, Linear C/r -> C with bias; r = 16), the two results are
  summed and passed through a sigmoid: [N, 1, 1, C];
* spatial gate ``s``: the max and the mean over channels, concatenated in that order ([N, H, W, 2]),
  a 7x7 convolution (padding 3, no bias) to one map, BatchNorm, sigmoid: [N, H, W, 1]. The BatchNorm's
  scale starts at 0, so the gate starts at sigmoid(0) = 0.5 everywhere.

In a residual block it sits on the residual branch after its last BatchNorm, before the addition (Sec. 3.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax.models import resnet

REDUCTION = 16
SPATIAL_KERNEL = 7


class ChannelGate(nnx.Module):
  """Shared MLP over average- and max-pooled descriptors -> sigmoid; returns the gate [N, 1, 1, C]."""

  def __init__(self, channels: int, reduction: int = REDUCTION, *, dtype=None, rngs: nnx.Rngs):
    hidden = max(channels // reduction, 1)
    self.fc1 = nnx.Linear(channels, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    mlp = lambda v: self.fc2(jax.nn.relu(self.fc1(v)))
    logits = mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2)))
    return jax.nn.sigmoid(logits)[:, None, None, :]


class SpatialGate(nnx.Module):
  """[max, mean] over channels -> 7x7 conv (no bias) -> BatchNorm (scale 0 at start) -> sigmoid;
  returns the gate [N, H, W, 1]."""

  def __init__(self, kernel_size: int = SPATIAL_KERNEL, *, dtype=None, rngs: nnx.Rngs):
    pad = (kernel_size - 1) // 2
    self.conv = nnx.Conv(2, 1, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)),
                         use_bias=False, kernel_init=resnet.conv_init, dtype=dtype, rngs=rngs)
    self.bn = nnx.BatchNorm(1, momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON,
                            scale_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    pooled = jnp.concatenate([jnp.max(x, axis=-1, keepdims=True),
                              jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
    return jax.nn.sigmoid(self.bn(self.conv(pooled), use_running_average=not train))


class CBAM(nnx.Module):
  """Channel gate then spatial gate: ``x' = x * channel(x)``, returns ``x' * spatial(x')``."""

  def __init__(self, channels: int, reduction: int = REDUCTION, kernel_size: int = SPATIAL_KERNEL, *,
               dtype=None, rngs: nnx.Rngs):
    self.channel = ChannelGate(channels, reduction, dtype=dtype, rngs=rngs)
    self.spatial = SpatialGate(kernel_size, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x * self.channel(x).astype(x.dtype)
    return x * self.spatial(x, train).astype(x.dtype)
