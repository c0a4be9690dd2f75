"""Compute dtype of a model from its config: 'float32', 'bfloat16' or 'auto'.

'auto' (the default of the configs) is bfloat16 on accelerators (TPU, GPU), whose matrix units run
bfloat16 at several times the float32 rate, and float32 on CPU, where XLA has no fast bfloat16 path
(bfloat16 convolutions there are emulated and slower than float32). Parameters and optimizer state
always stay float32 (the modules cast them to the compute dtype at use), and logits are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPE_NAMES = ('auto', 'float32', 'bfloat16')
ACCELERATORS = ('tpu', 'gpu', 'cuda', 'rocm')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def resolve_dtype(name: str, backend: str | None = None):
  """The jnp dtype for config value ``name``; 'auto' picks by ``backend`` (default
  ``jax.default_backend()``): bfloat16 on an accelerator, float32 on CPU."""
  if name not in DTYPE_NAMES:
    raise ValueError(f'model.dtype must be one of {DTYPE_NAMES}; found {name!r}')
  if name == 'auto':
    backend = (backend or jax.default_backend()).lower()
    name = 'bfloat16' if backend in ACCELERATORS else 'float32'
  return _DTYPES[name]
