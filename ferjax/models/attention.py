"""Channel attention for convolutional blocks: SE, ECA and G-ECA.

Every module maps an NHWC feature map ``x`` to ``x * a`` where ``a`` is a per-channel weight in
(0, 1) of shape [N, 1, 1, C]. The ResNet blocks apply it after the block's last BatchNorm and
before the residual addition (the placement of SE-Net and ECA-Net).

* ``SE`` — squeeze-and-excitation (Hu et al., 2018): GAP → FC(C→C/r) → ReLU → FC(C/r→C) → sigmoid.
* ``ECA`` — efficient channel attention (Wang et al., 2020): GAP → 1-D convolution across the
  channel axis with an adaptive, odd kernel size ``k = odd(|log2(C)/γ + b/γ|)`` (γ=2, b=1), no
  bias → sigmoid.
* ``GECA`` — the Res-RBG paper's "G-ECA". The paper does not publish its formula. This project's
  default reading (``variant='avgmax'``) applies ECA's *shared* 1-D convolution to both the
  global-average and the global-max channel descriptors, sums the two responses, then applies the
  sigmoid (the channel-attention fusion of CBAM, with ECA's convolution in place of the MLP).
  ``variant='ghost'`` is a GhostNet-style reading: the 1-D convolution produces half of the
  attention logits (the "intrinsic" half, from the average descriptor), and a cheap depthwise
  per-channel affine map of the max descriptor produces the other ("ghost") half; the halves
  are interleaved back to C channels before the sigmoid.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

ATTENTION_NAMES = ('none', 'se', 'eca', 'geca')


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
  """ECA's adaptive kernel size: the odd number nearest above ``|log2(C)/γ + b/γ|``.

  Follows the reference implementation: ``t = int(abs((log2(C) + b) / γ))``; ``k = t`` if ``t``
  is odd else ``t + 1``. E.g. C=64 → 3, C=256 → 5, C=2048 → 7.
  """
  if channels < 1:
    raise ValueError(f'channels must be >= 1, got {channels}.')
  t = int(abs((math.log2(channels) + b) / gamma))
  return t if t % 2 else t + 1


@jax.custom_vjp
def global_max_pool(x: jax.Array) -> jax.Array:
  """Max of NHWC ``x`` over H and W: [N, C]. Same values and gradient as ``jnp.max(x, axis=(1, 2))``
  (the gradient is split evenly between tied maxima), but the backward pass rebuilds the location of
  the maxima from ``x`` instead of keeping jnp.max's own full-size indicator of them: the attention
  keeps ``x`` anyway (for ``x * a``), so G-ECA saves one feature map fewer per block
  (docs/performance.md, ``scripts/step_memory.py``)."""
  return jnp.max(x, axis=(1, 2))


def _global_max_pool_fwd(x):
  mx = jnp.max(x, axis=(1, 2))
  return mx, (x, mx)


def _global_max_pool_bwd(residuals, g):
  # jnp.max's JVP (jax's _reduce_chooser_jvp_rule) in the cotangent's dtype, transposed.
  x, mx = residuals
  hits = (x == mx[:, None, None, :]).astype(g.dtype)
  return (hits * (g / jnp.sum(hits, axis=(1, 2)))[:, None, None, :],)


global_max_pool.defvjp(_global_max_pool_fwd, _global_max_pool_bwd)


class ChannelConv1D(nnx.Module):
  """A single-filter, bias-free 1-D convolution sliding over the channel axis (zero padded)."""

  def __init__(self, kernel_size: int, *, dtype=None, rngs: nnx.Rngs):
    self.kernel_size = kernel_size
    self.dtype = dtype
    # [k, in=1, out=1], the nnx.Conv layout. Uniform fan-in init as in PyTorch's Conv1d.
    bound = 1.0 / math.sqrt(kernel_size)
    self.kernel = nnx.Param(
        jax.random.uniform(rngs.params(), (kernel_size, 1, 1), jnp.float32, -bound, bound))

  def __call__(self, s: jax.Array) -> jax.Array:
    """Convolves descriptors ``s`` [N, C] along C; returns [N, C]."""
    dtype = self.dtype or s.dtype
    pad = (self.kernel_size - 1) // 2
    y = jax.lax.conv_general_dilated(
        s[:, :, None].astype(dtype), self.kernel[...].astype(dtype),
        window_strides=(1,), padding=[(pad, pad)], dimension_numbers=('NWC', 'WIO', 'NWC'))
    return y[:, :, 0]


class SE(nnx.Module):
  """Squeeze-and-excitation with reduction ``reduction`` (hidden width at least ``min_hidden``)."""

  def __init__(self, channels: int, *, reduction: int = 16, min_hidden: int = 8, dtype=None,
               rngs: nnx.Rngs):
    hidden = max(channels // reduction, min_hidden)
    self.fc1 = nnx.Linear(channels, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2))
    a = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))
    return x * a[:, None, None, :].astype(x.dtype)


class ECA(nnx.Module):
  """Efficient channel attention: GAP → 1-D conv over channels (kernel ``k``) → sigmoid."""

  def __init__(self, channels: int, *, kernel_size: int | None = None, dtype=None,
               rngs: nnx.Rngs):
    k = kernel_size or eca_kernel_size(channels)
    self.conv = ChannelConv1D(k, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    a = jax.nn.sigmoid(self.conv(jnp.mean(x, axis=(1, 2))))
    return x * a[:, None, None, :].astype(x.dtype)


class GECA(nnx.Module):
  """G-ECA (Res-RBG). See the module docstring for the two readings (``variant``)."""

  def __init__(self, channels: int, *, kernel_size: int | None = None, variant: str = 'avgmax',
               dtype=None, rngs: nnx.Rngs):
    if variant not in ('avgmax', 'ghost'):
      raise ValueError(f"G-ECA variant must be 'avgmax' or 'ghost', got {variant!r}.")
    if variant == 'ghost' and channels % 2:
      raise ValueError(f"G-ECA variant 'ghost' needs an even channel count, got {channels}.")
    self.variant = variant
    k = kernel_size or eca_kernel_size(channels)
    self.conv = ChannelConv1D(k, dtype=dtype, rngs=rngs)
    if variant == 'ghost':
      # Cheap per-channel ("depthwise") linear map generating the ghost half; starts as identity.
      self.ghost_scale = nnx.Param(jnp.ones((channels // 2,), jnp.float32))
      self.ghost_bias = nnx.Param(jnp.zeros((channels // 2,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    avg = jnp.mean(x, axis=(1, 2))
    mx = global_max_pool(x)
    if self.variant == 'avgmax':
      logits = self.conv(avg) + self.conv(mx)
    else:
      n, c = avg.shape
      intrinsic = self.conv(avg)[:, 0::2]
      ghost = mx[:, 1::2] * self.ghost_scale[...] + self.ghost_bias[...]
      logits = jnp.stack([intrinsic, ghost.astype(intrinsic.dtype)], axis=-1).reshape(n, c)
    a = jax.nn.sigmoid(logits)
    return x * a[:, None, None, :].astype(x.dtype)


def make_attention(name: str, channels: int, *, dtype=None, rngs: nnx.Rngs,
                   **kwargs) -> nnx.Module | None:
  """Builds channel attention ``name`` ('none' | 'se' | 'eca' | 'geca') for ``channels``.

  Extra keyword arguments go to the module (e.g. ``reduction`` for SE, ``kernel_size`` for
  ECA/G-ECA, ``variant`` for G-ECA). Returns None for 'none'.
  """
  if name == 'none':
    return None
  if name == 'se':
    return SE(channels, dtype=dtype, rngs=rngs, **kwargs)
  if name == 'eca':
    return ECA(channels, dtype=dtype, rngs=rngs, **kwargs)
  if name == 'geca':
    return GECA(channels, dtype=dtype, rngs=rngs, **kwargs)
  raise ValueError(f'Unknown attention {name!r}; expected one of {ATTENTION_NAMES}.')
