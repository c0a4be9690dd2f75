"""Classifier heads: a linear layer computed in float32, with flax's or PyTorch's initialisation.

The head runs in float32 whatever the compute dtype: its input is cast to float32 and its kernel is used
in float32, so in bfloat16 training the logits (and the loss and its gradients at the top of the network)
are not rounded to bfloat16's 8 mantissa bits (casting a bfloat16 product to float32 afterwards would keep
that rounding). Initialisation (``INITS``): 'lecun_normal' (flax's default: a lecun-normal kernel, zero bias) or
'pytorch' (``torch.nn.Linear.reset_parameters``: kaiming-uniform with a = sqrt(5), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for kernel and bias).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def torch_uniform(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for a Linear layer's weight and bias."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


INITS = ('lecun_normal', 'pytorch')


class Float32Linear(nnx.Linear):
  """``nnx.Linear`` in float32 (parameters and computation), initialised by ``init`` (one of
  ``INITS``), or with a zero kernel (``zero_init``; the bias keeps ``init``'s)."""

  def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False,
               init: str = 'lecun_normal', rngs: nnx.Rngs):
    if init not in INITS:
      raise ValueError(f'init must be one of {INITS}; got {init!r}')
    if init == 'pytorch':
      kernel_init, bias_init = torch_uniform(in_features), torch_uniform(in_features)
    else:
      kernel_init, bias_init = nnx.initializers.lecun_normal(), nnx.initializers.zeros
    super().__init__(in_features, out_features, dtype=jnp.float32, param_dtype=jnp.float32,
                     kernel_init=nnx.initializers.zeros if zero_init else kernel_init,
                     bias_init=bias_init, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return super().__call__(x.astype(jnp.float32))
