"""Modulated deformable convolution (DCNv2; Zhu et al., "Deformable ConvNets v2", CVPR 2019).

``deform_conv2d`` has the semantics of ``torchvision.ops.deform_conv2d`` (its CPU kernel,
``torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp``) in ferjax's NHWC layout:

* output pixel (p, q), kernel tap (i, j) (row-major tap index t = i * kw + j) of offset group g samples
  the input at ``y = p * stride_h - pad_h + i * dilation_h + dy``, ``x = q * stride_w - pad_w + j *
  dilation_w + dx``, where ``(dy, dx)`` are channels ``2t`` and ``2t + 1`` of group g's ``2 * kh * kw``
  offset channels (``offset`` [N, Ho, Wo, G * 2 * kh * kw], group-major, as torchvision's channel axis);
* the sample is bilinear over the four neighbouring pixels; neighbours outside the image read 0, so a
  sample at or beyond one pixel outside the image is 0;
* the sample is multiplied by the mask ``mask[..., g * kh * kw + t]`` and by the weight of tap (i, j);
  offset group g covers input channels ``[g * C / G, (g + 1) * C / G)``.

Written for XLA, without a loop over positions: the bilinear samples of every (pixel, tap, group) form
the deformable im2col matrix [N, Ho, Wo, kh * kw * C], which one matmul with the kernel turns into the
output. The samples are read in one of two ways with the same values (``method``):

* 'dense': per sample, the interpolation weights over all H * W input pixels (the outer product of a
  row and a column weight vector, each non-zero at two pixels, the mask folded in) times the input, one
  batched matmul. Its backward pass (a custom VJP) is matmuls as well: the input gradient is the
  transposed matmul, the offset and mask gradients come from the gradient of the interpolation matrix
  reduced through its row x column form. The cost grows with H * W, small for a ResNet's last stages.
* 'gather': the four neighbours of each sample gathered as rows (a row = a group's channels) from the
  zero-padded, flattened input; O(1) per sample, but the input gradient (autodiff) is a scatter-add,
  which XLA:CPU runs serially.

'auto' (the default) is 'dense' for maps of at most ``DENSE_MAX_PIXELS`` pixels, 'gather' above. Both
methods equal torchvision's hand-written backward in every gradient (input, offsets, mask, kernel;
tests/test_deformable.py against tests/data/deform_conv_reference.npz, made by
scripts/make_deform_conv_reference.py).

``DeformConv`` is the DCNv2 layer: a plain convolution's kernel plus a zero-initialised "offset"
convolution (same kernel size, stride, padding and dilation) with ``3 * kh * kw`` outputs per offset
group: channels ``[0, 2 * G * kh * kw)`` are the offsets in the layout above, the last ``G * kh * kw``
are mask logits (group-major) through a sigmoid. At initialisation the offsets are 0 and the mask 0.5,
so the layer starts as its plain convolution scaled by one half (DCNv2, Sec. 3.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


METHODS = ('auto', 'dense', 'gather')
# 'auto' = 'dense' for input maps of at most this many pixels (16 x 16: a ResNet's last two stages at
# 224 px), 'gather' above: the dense matmuls cost O(H * W) per sample and its interpolation matrix is
# [N, S, H * W] floats, while the gather's cost per sample is constant.
DENSE_MAX_PIXELS = 256


def _pair(value, name: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
  if len(pair) != 2:
    raise ValueError(f'{name} must be an int or a pair of ints, got {value!r}.')
  return pair


def output_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
  """Output side of a convolution (PyTorch's formula)."""
  return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def deform_conv2d(x: jax.Array, offset: jax.Array, mask: jax.Array | None, kernel: jax.Array, *,
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                  dilation: int | Sequence[int] = 1, method: str = 'auto') -> jax.Array:
  """Modulated deformable convolution of NHWC ``x`` (see the module docstring).

  Args:
    x: input [N, H, W, C].
    offset: [N, Ho, Wo, G * 2 * kh * kw]; G (offset groups) must divide C.
    mask: [N, Ho, Wo, G * kh * kw] modulation, or None (DCNv1: mask 1).
    kernel: [kh, kw, C, Cout] (the ``nnx.Conv`` layout).
    stride, padding, dilation: an int or (h, w) pair each; padding is symmetric (PyTorch's).
    method: how the bilinear samples are read (same values): 'dense' (a matmul with interpolation
      weights over all input pixels; no scatter in the backward pass), 'gather' (the four neighbours
      gathered; O(1) per sample) or 'auto' ('dense' up to ``DENSE_MAX_PIXELS`` input pixels).

  Returns:
    [N, Ho, Wo, Cout] in the promoted dtype of ``x`` and ``kernel``; sampling positions and bilinear
    weights are float32.
  """
  sh, sw = _pair(stride, 'stride')
  ph, pw = _pair(padding, 'padding')
  dh, dw = _pair(dilation, 'dilation')
  n, h, w, c = x.shape
  kh, kw, cin, cout = kernel.shape
  if cin != c:
    raise ValueError(f'deform_conv2d: kernel expects {cin} input channels, x has {c} ({x.shape}).')
  taps = kh * kw
  ho, wo = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
  if ho < 1 or wo < 1:
    raise ValueError(f'deform_conv2d: input {h}x{w} is too small for kernel {kh}x{kw} with padding '
                     f'{(ph, pw)} and dilation {(dh, dw)}.')
  groups, rest = divmod(offset.shape[-1], 2 * taps)
  if offset.shape[:3] != (n, ho, wo) or rest or groups < 1 or c % groups:
    raise ValueError(f'deform_conv2d: offset must be [N, Ho, Wo, G * 2 * {taps}] = [{n}, {ho}, {wo}, '
                     f'G * {2 * taps}] with G dividing {c} channels; found {offset.shape}.')
  if mask is not None and mask.shape != (n, ho, wo, groups * taps):
    raise ValueError(f'deform_conv2d: mask must be [N, Ho, Wo, G * kh * kw] = '
                     f'{(n, ho, wo, groups * taps)}; found {mask.shape}.')

  # Sampling positions [N, Ho, Wo, G, taps]: the regular grid plus the offsets.
  off = offset.astype(jnp.float32).reshape(n, ho, wo, groups, taps, 2)
  tap_y = jnp.repeat(jnp.arange(kh) * dh, kw)  # Row-major taps: t = i * kw + j.
  tap_x = jnp.tile(jnp.arange(kw) * dw, kh)
  y = (jnp.arange(ho) * sh - ph)[:, None, None, None] + tap_y + off[..., 0]
  xs = (jnp.arange(wo) * sw - pw)[None, :, None, None] + tap_x + off[..., 1]
  if mask is None:
    mask = jnp.ones((n, ho, wo, groups * taps), jnp.float32)
  mask = mask.astype(jnp.float32).reshape(n, ho, wo, groups, taps)
  if method == 'auto':
    method = 'dense' if h * w <= DENSE_MAX_PIXELS else 'gather'
  if method not in METHODS[1:]:
    raise ValueError(f'deform_conv2d: method must be one of {METHODS}, got {method!r}.')
  dtype = jnp.promote_types(x.dtype, kernel.dtype)
  sample = _sample_dense if method == 'dense' else _sample_gather
  columns = sample(x.reshape(n, h, w, groups, c // groups), y, xs, mask)  # [N, Ho, Wo, G, taps, C/G]
  # im2col order (tap, channel) matches the kernel's [kh, kw, C] flattening.
  columns = jnp.swapaxes(columns, 3, 4).reshape(n, ho, wo, taps * c).astype(dtype)
  return columns @ kernel.reshape(taps * c, cout).astype(dtype)


def _hat(pos: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Linear-interpolation weights of 1-D positions ``pos`` [...] over ``size`` pixels [..., size]
  (``1 - frac`` at ``floor(pos)``, ``frac`` at ``floor(pos) + 1``, 0 elsewhere and off the image) and
  their derivative in ``pos`` (-1 and +1 there: the forward difference at an integer position, as
  torchvision's backward; a plain ``max(0, 1 - |pos - r|)`` would give 0 there)."""
  lo = jnp.floor(pos)
  index = lo.astype(jnp.int32)
  # one_hot of an index outside [0, size) is all zeros: samples off the image read 0.
  at_lo, at_hi = jax.nn.one_hot(index, size), jax.nn.one_hot(index + 1, size)
  frac = (pos - lo)[..., None]
  return at_lo * (1 - frac) + at_hi * frac, at_hi - at_lo


def _per_group(a: jax.Array) -> jax.Array:
  """[N, Ho, Wo, G, taps] -> [N, G, S] (S = Ho * Wo * taps, the samples of one image and group)."""
  return jnp.moveaxis(a, 3, 1).reshape(a.shape[0], a.shape[3], -1)


def _dense_parts(x, y, xs, mask):
  """The input as [N, G, H * W, C/G], the row weights [N, G, S, H] and column weights [N, G, S, W] with
  their derivatives, the mask [N, G, S] and the interpolation matrix (mask folded in) [N, G, S, H * W]."""
  n, h, w, groups, cg = x.shape
  rows, d_rows = _hat(_per_group(y), h)
  cols, d_cols = _hat(_per_group(xs), w)
  m = _per_group(mask)
  matrix = ((rows * m[..., None])[..., :, None] * cols[..., None, :]).reshape(*m.shape, h * w)
  image = jnp.moveaxis(x.reshape(n, h * w, groups, cg), 2, 1)
  return image, rows, d_rows, cols, d_cols, m, matrix


@jax.custom_vjp
def _dense_columns(x, y, xs, mask):
  """Bilinear samples [N, G, S, C/G] of ``x`` [N, H, W, G, C/G] at ``y``, ``xs`` [N, Ho, Wo, G, taps],
  times ``mask`` (same shape): per (image, group) one matmul of the interpolation matrix over all
  H * W pixels [S, H * W] with the input. The backward pass is matmuls too, no scatter (``_dense_bwd``)."""
  image, *_, matrix = _dense_parts(x, y, xs, mask)
  return jnp.matmul(matrix.astype(x.dtype), image)


def _dense_fwd(x, y, xs, mask):
  return _dense_columns(x, y, xs, mask), (x, y, xs, mask)


def _dense_bwd(residuals, g):
  """Input gradient = the transposed matmul; the gradient of the interpolation matrix (one matmul
  [S, C/G] x [C/G, H * W]) reduced through its separable form rows x mask x columns gives the mask's
  and the positions' gradients."""
  x, y, xs, mask = residuals
  n, h, w, groups, cg = x.shape
  image, rows, d_rows, cols, d_cols, m, matrix = _dense_parts(x, y, xs, mask)
  g = g.astype(x.dtype)
  d_image = jnp.matmul(jnp.swapaxes(matrix, -1, -2).astype(x.dtype), g)  # [N, G, H * W, C/G]
  d_matrix = jnp.matmul(g, jnp.swapaxes(image, -1, -2)).astype(jnp.float32)
  d_matrix = d_matrix.reshape(*m.shape, h, w)
  by_row = jnp.einsum('ngshw,ngsw->ngsh', d_matrix, cols)  # d loss / d (rows * mask)
  by_col = jnp.einsum('ngshw,ngsh->ngsw', d_matrix, rows)  # d loss / d cols, over the mask
  d_mask = jnp.sum(by_row * rows, axis=-1)
  d_y = m * jnp.sum(by_row * d_rows, axis=-1)
  d_x = m * jnp.sum(by_col * d_cols, axis=-1)
  back = lambda a: jnp.moveaxis(a.reshape(y.shape[0], groups, *y.shape[1:3], y.shape[4]), 1, 3)
  d_input = jnp.moveaxis(d_image, 1, 2).reshape(x.shape)
  return d_input.astype(x.dtype), back(d_y), back(d_x), back(d_mask).astype(mask.dtype)


_dense_columns.defvjp(_dense_fwd, _dense_bwd)


def _sample_dense(x, y, xs, mask):
  """[N, Ho, Wo, G, taps, C/G] from ``_dense_columns``. Cost O(H * W) per sample, all matmuls forward and
  backward: the fast choice on CPU for the small maps of a ResNet's last stages."""
  n, ho, wo, groups, taps = y.shape
  out = _dense_columns(x, y, xs, mask)  # [N, G, Ho * Wo * taps, C/G]
  return jnp.moveaxis(out.reshape(n, groups, ho, wo, taps, -1), 1, 3)


def _sample_gather(x, y, xs, mask):
  """Bilinear samples by gathering the four neighbours of each sample: O(1) per sample; the input
  gradient is a scatter-add (slow on XLA:CPU, fine on accelerators and for large maps)."""
  n, h, w, groups, cg = x.shape
  y0, x0 = jnp.floor(y), jnp.floor(xs)
  ly, lx = y - y0, xs - x0
  # The top-left neighbour (y0, x0) indexes the input padded by one zero pixel on every side, so all
  # four neighbours of a sample with y0 in [-1, h - 1] and x0 in [-1, w - 1] exist there (those outside
  # the image read the padding's 0); any other sample is 0 (its weights are zeroed, its index clamped).
  inside = (y0 >= -1) & (y0 <= h - 1) & (x0 >= -1) & (x0 <= w - 1)
  weights = jnp.stack([(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx], axis=-1)
  weights = jnp.where(inside[..., None], weights, 0.0) * mask[..., None]
  yi = jnp.clip(y0.astype(jnp.int32) + 1, 0, h)
  xi = jnp.clip(x0.astype(jnp.int32) + 1, 0, w)
  wp = w + 2
  # Row index in the padded input flattened to [(N * (H + 2) * (W + 2)) * G, C / G].
  top_left = ((jnp.arange(n)[:, None, None, None, None] * (h + 2) + yi) * wp + xi) * groups
  top_left = top_left + jnp.arange(groups)[:, None]
  rows = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0))).reshape(-1, cg)
  out = 0
  for corner, shift in enumerate((0, 1, wp, wp + 1)):
    sample = jnp.take(rows, top_left + shift * groups, axis=0)  # [N, Ho, Wo, G, taps, C/G]
    out = out + sample * weights[..., corner, None].astype(sample.dtype)
  return out


class DeformConv(nnx.Module):
  """DCNv2 layer: ``deform_conv2d`` with offsets and mask from a zero-initialised convolution.

  Args:
    in_features, out_features: channels.
    kernel_size, stride, padding, dilation: an int or (h, w) pair; padding symmetric.
    offset_groups: G, dividing ``in_features``.
    use_bias: a bias on the output (ResNet layers have none).
    kernel_init: initialiser of ``kernel`` [kh, kw, in, out].
    dtype: compute dtype (parameters float32).

  Parameters: ``kernel`` (the ``nnx.Conv`` layout, so a plain convolution's weights load into it),
  optional ``bias``, and ``offset`` (``nnx.Conv`` with ``3 * G * kh * kw`` outputs, zeros).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size=3, stride=1, padding=1,
               dilation=1, *, offset_groups: int = 1, use_bias: bool = False,
               kernel_init=nnx.initializers.lecun_normal(), dtype=None, rngs: nnx.Rngs):
    kh, kw = _pair(kernel_size, 'kernel_size')
    if offset_groups < 1 or in_features % offset_groups:
      raise ValueError(f'offset_groups must divide in_features={in_features}, got {offset_groups}.')
    self.stride = _pair(stride, 'stride')
    self.padding = _pair(padding, 'padding')
    self.dilation = _pair(dilation, 'dilation')
    self.offset_groups = offset_groups
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (kh, kw, in_features, out_features),
                                        jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
    ph, pw = self.padding
    self.offset = nnx.Conv(in_features, 3 * offset_groups * kh * kw, (kh, kw), self.stride,
                           padding=((ph, ph), (pw, pw)), kernel_dilation=self.dilation,
                           kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros,
                           dtype=dtype, rngs=rngs)

  def offsets_and_mask(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(offsets [N, Ho, Wo, 2 G kh kw], mask [N, Ho, Wo, G kh kw]) for input ``x``."""
    kh, kw = self.kernel.shape[:2]
    raw = self.offset(x).astype(jnp.float32)
    split = 2 * self.offset_groups * kh * kw
    return raw[..., :split], jax.nn.sigmoid(raw[..., split:])

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.dtype is not None:
      x = x.astype(self.dtype)
    offset, mask = self.offsets_and_mask(x)
    kernel = self.kernel[...]
    if self.dtype is not None:
      kernel = kernel.astype(self.dtype)
    y = deform_conv2d(x, offset, mask, kernel, stride=self.stride, padding=self.padding,
                      dilation=self.dilation)
    return y if self.bias is None else y + self.bias[...].astype(y.dtype)
