"""STSTNet: the Shallow Triple Stream Three-dimensional CNN for micro-expression recognition (Liong, See,
Wong & Phan, "Shallow Triple Stream Three-dimensional CNN (STSTNet) for Micro-expression Recognition",
FG 2019, MEGC2019 challenge; public code github.com/christy1206/STSTNet, ``main.py``).

Input: one 28 x 28 image per sample with three channels, the onset -> apex optical flow u, v and the
optical strain, each min-max scaled (``ferjax.data.micro_flow``; the batch's ``onset_apex_flow``).

Architecture (the public code's ``STSTNet`` class; the paper's Fig. 2):
  * three parallel 3 x 3 convolutions (padding 2, with bias) with 3, 5 and 8 filters;
  * each: ReLU -> BatchNorm -> max pool 3 (stride 3, padding 1) -> dropout 0.5 (the code's order: the
    BatchNorm follows the ReLU);
  * concatenation (16 channels) -> average pool 2 (stride 2) -> flatten -> Linear(16 * 5 * 5 = 400, 3).
At 28 px: 28 + 4 - 2 = 30 -> max pool -> 10 -> average pool -> 5. Parameters: convolutions 84 + 140 + 224,
BatchNorm scales and biases 32, linear 1,203: **1,683**.

Port details: the flatten runs over (channel, row, column) as PyTorch's NCHW ``view``, so a PyTorch
state dict maps 1:1 (the linear's input index is c * 25 + y * 5 + x); BatchNorm momentum 0.1 / eps 1e-5
as PyTorch's defaults; convolution and linear weights and biases start as PyTorch's defaults,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Max pooling pads with -inf (PyTorch's rule).

Formulation (same function, for XLA:CPU's speed): the three streams' convolutions read the same input, so
they run as one matmul over the image's 3 x 3 patches (im2col) with the three kernels side by side;
XLA:CPU's convolution kernel-gradient for 3 input channels costs several times this matmul's. The 3 x 3 / stride 3
max pool tiles the padded map without overlap, so it is a reshape and a max, whose gradient avoids
XLA:CPU's slow select-and-scatter (the gradient differs from PyTorch's only between tied maxima, which come
from ReLU zeros and get no gradient through the ReLU either way). A train step at batch 256 takes 0.14
CPU s instead of 0.25 (2-core x86-64 VM, jax 0.10.2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import config as config_lib
from ferjax import registry
from ferjax.data import inputs as inputs_lib
from ferjax.data import micro_flow

INPUT = micro_flow.NAME  # The batch key this family reads: float32 [B, S, S, 3].


def _torch_uniform(fan_in: int):
  """PyTorch's default initialiser of Conv2d/Linear weights and biases: U(-1/sqrt(fan_in), +)."""
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def conv_patches(x: jax.Array, pad: int = 2) -> jax.Array:
  """The 3 x 3 patches of the zero-padded image, [B, H', W', 9 * C] in HWIO order (tap row, tap column,
  channel), so ``patches @ kernel.reshape(9 * C, F)`` is the convolution with padding ``pad``."""
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = xp.shape[1] - 2, xp.shape[2] - 2
  return jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)


def max_pool_3x3_stride3(y: jax.Array) -> jax.Array:
  """``nnx.max_pool(y, (3, 3), strides=(3, 3), padding=((1, 1), (1, 1)))`` as a reshape and a max: the
  windows tile the -inf-padded map, so each output is the max of its own 3 x 3 tile."""
  b, h, w, c = y.shape
  oh, ow = (h + 2 - 3) // 3 + 1, (w + 2 - 3) // 3 + 1
  yp = jnp.pad(y, ((0, 0), (1, max(0, 3 * oh - h - 1)), (1, max(0, 3 * ow - w - 1)), (0, 0)),
               constant_values=-jnp.inf)
  return yp[:, :3 * oh, :3 * ow].reshape(b, oh, 3, ow, 3, c).max(axis=(2, 4))


def pooled_side(image_size: int) -> int:
  """Side of the feature map before the linear layer: conv (pad 2) -> max pool 3/3 (pad 1) -> avg pool 2."""
  conv = image_size + 2
  return ((conv + 2 - 3) // 3 + 1) // 2


class STSTNet(nnx.Module):
  """Three shallow convolutional streams over the flow/strain image, fused by concatenation."""

  def __init__(self, num_classes: int, *, image_size: int = 28, filters: tuple[int, ...] = (3, 5, 8),
               dropout: float = 0.5, in_channels: int = 3, rngs: nnx.Rngs):
    fan_in = in_channels * 9
    self.convs = nnx.List([
        nnx.Conv(in_channels, f, (3, 3), padding=((2, 2), (2, 2)), kernel_init=_torch_uniform(fan_in),
                 bias_init=_torch_uniform(fan_in), rngs=rngs) for f in filters])
    self.norms = nnx.List([nnx.BatchNorm(f, momentum=0.9, epsilon=1e-5, rngs=rngs) for f in filters])
    self.dropout = nnx.Dropout(dropout)
    self.side = pooled_side(image_size)
    features = sum(filters) * self.side ** 2
    self.fc = nnx.Linear(features, num_classes, kernel_init=_torch_uniform(features),
                         bias_init=_torch_uniform(features), rngs=rngs)

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    x = batch[INPUT]
    if x.ndim != 4 or x.shape[-1] != self.convs[0].in_features:
      raise ValueError(f'STSTNet reads {INPUT} [B, S, S, {self.convs[0].in_features}]; found {x.shape}')
    if train and self.dropout.rate > 0 and rngs is None:
      raise ValueError('STSTNet(train=True) with dropout > 0 needs `rngs` (e.g. nnx.Rngs(dropout=0))')
    # One matmul for the three streams' convolutions (each stream an nnx.Conv, so weights map 1:1).
    kernel = jnp.concatenate([c.kernel[...].reshape(-1, c.out_features) for c in self.convs], axis=-1)
    bias = jnp.concatenate([c.bias[...] for c in self.convs])
    conv = conv_patches(x) @ kernel + bias
    ends = [sum(c.out_features for c in self.convs[:i + 1]) for i in range(len(self.convs))]
    streams = []
    for start, end, norm in zip([0] + ends[:-1], ends, self.norms):
      y = conv[..., start:end]
      y = max_pool_3x3_stride3(norm(jax.nn.relu(y), use_running_average=not train))
      streams.append(self.dropout(y, deterministic=not train, rngs=rngs))
    y = nnx.avg_pool(jnp.concatenate(streams, axis=-1), (2, 2), strides=(2, 2))
    if y.shape[1:3] != (self.side, self.side):
      raise ValueError(f'STSTNet was built for {self.side} x {self.side} pooled maps (model.image_size); '
                       f'the input gives {y.shape[1:3]}')
    y = jnp.transpose(y, (0, 3, 1, 2)).reshape(y.shape[0], -1)  # PyTorch's NCHW flatten order.
    return {'logits': self.fc(y).astype(jnp.float32)}


# config.model of 'ststnet': the checks; the defaults are in configs/ststnet.py.
SCHEMA = {
    'image_size': config_lib.number(8, integer=True),
    'filters': config_lib.int_tuple,
    'dropout': config_lib.number(0, 1, hi_open=True),
}


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> STSTNet:
  fields = {k: v for k, v in config.items() if k != 'name'}
  config_lib.check_fields({f'model.{k}': v for k, v in fields.items()},
                          {f'model.{k}': v for k, v in SCHEMA.items()}, partial=True)
  if 'filters' in fields:
    fields['filters'] = tuple(fields['filters'])
    if not fields['filters'] or min(fields['filters']) < 1:
      raise config_lib.ConfigError(f'model.filters must be positive channel counts; found '
                                   f'{fields["filters"]}')
  return STSTNet(num_classes, **fields, rngs=rngs)


inputs_lib.register(INPUT, micro_flow.INPUT)
registry.register(registry.Family('ststnet', SCHEMA, from_config, inputs=('frames', INPUT)))
