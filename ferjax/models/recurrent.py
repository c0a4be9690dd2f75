"""GRU and bidirectional GRU with PyTorch/cuDNN equations, batch-major [B, T, F].

Equations (gate order r, z, n as in PyTorch's packed weights)::

    r = σ(W_ir x + b_ir + W_hr h + b_hr)
    z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

Flax's ``GRUCell`` has no recurrent bias on the candidate gate, so PyTorch weights could not be
ported to it; these layers store PyTorch's tensors under PyTorch's names and layouts
(``weight_ih`` [3H, F], ``weight_hh`` [3H, H], ``bias_ih`` [3H], ``bias_hh`` [3H]; the BiGRU adds a
leading direction axis of size 2: 0 = forward, 1 = backward = PyTorch's ``*_reverse``).

Speed: the input projection ``x @ W_ih^T + b_ih`` for all time steps is one matmul hoisted out of
the ``lax.scan``; the scan body only does the [B, H] x [H, 3H] recurrent matmul. The BiGRU runs
both directions in ONE scan over a stacked carry [2, B, H] (the backward direction reads its input
reversed in time), so a bidirectional layer costs one sequential loop, not two.

Unroll (``lax.scan``'s ``unroll``, default 1 = a rolled loop), chosen by measurement:
``python scripts/gru_unroll.py`` times two RBG blocks (forward + backward) on the 2-core CPU, shared with
other jobs (load ~15), so step times are noisy:

* quickstart (B 16, T 8, 128 -> hidden 128), two repeats: compile 11-13 / 14-15 / 19-20 / 26-29 s and
  step 48-112 / 45-92 / 48-82 / 101-102 ms for unroll 1 / 2 / 4 / 8;
* paper (B 32, T 16, 2048 -> hidden 560): compile 12 / 14 / 28 / 48 s, step 6.76 / 7.40 / 6.85 / 7.58 s.

Unrolling buys no step time that stands out of the noise at either size (at the paper's size the hoisted
input projections dominate; the recurrent matmul is [B, H] x [H, 3H] per step) while compile time grows
with the unroll factor, so the default stays 1; ``model.unroll`` remains a field for accelerators.

Precision: matmuls run in ``dtype`` (e.g. bfloat16); gates and the carried state are float32.
Initialisation: PyTorch's, U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

MERGE_MODES = ('concat', 'sum', 'mean')


def _uniform(rngs: nnx.Rngs, shape, hidden: int) -> nnx.Param:
  bound = 1.0 / math.sqrt(hidden)
  return nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))


def _gru_update(gi: jax.Array, gh: jax.Array, h: jax.Array) -> jax.Array:
  """One GRU update from input gates ``gi`` and recurrent gates ``gh`` (both [..., 3H])."""
  i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
  r = jax.nn.sigmoid(i_r + h_r)
  z = jax.nn.sigmoid(i_z + h_z)
  n = jnp.tanh(i_n + r * h_n)
  return (1.0 - z) * n + z * h


def _initial_state(gi_0: jax.Array, hidden: int, h0: jax.Array | None) -> jax.Array:
  """Float32 initial carry, zeros unless ``h0`` is given.

  The zeros are derived from the first step's input gates (not ``jnp.zeros(shape)``) so that
  they carry the batch sharding of the input: under explicit-sharding meshes a scan whose
  carry starts unsharded and becomes batch-sharded fails to type-check.
  """
  zeros = jnp.zeros_like(gi_0[..., :hidden], dtype=jnp.float32)
  return zeros if h0 is None else zeros + h0.astype(jnp.float32)


def _check_input(x: jax.Array, in_features: int, name: str):
  if x.ndim != 3 or x.shape[-1] != in_features:
    raise ValueError(f'{name} expects input [B, T, {in_features}], got shape {x.shape}.')


class GRU(nnx.Module):
  """Single-layer unidirectional GRU over [B, T, in_features] (PyTorch ``nn.GRU`` semantics).

  Args:
    in_features: input size F.
    hidden: hidden size H.
    dtype: compute dtype of the matmuls (outputs are returned in this dtype; default: input's).
    unroll: ``lax.scan`` unroll factor (T is small for FER clips, so unrolling is cheap).
  """

  def __init__(self, in_features: int, hidden: int, *, dtype=None, unroll: int | bool = 1,
               rngs: nnx.Rngs):
    self.in_features = in_features
    self.hidden = hidden
    self.dtype = dtype
    self.unroll = unroll
    self.weight_ih = _uniform(rngs, (3 * hidden, in_features), hidden)
    self.weight_hh = _uniform(rngs, (3 * hidden, hidden), hidden)
    self.bias_ih = _uniform(rngs, (3 * hidden,), hidden)
    self.bias_hh = _uniform(rngs, (3 * hidden,), hidden)

  @property
  def out_features(self) -> int:
    return self.hidden

  def __call__(self, x: jax.Array, h0: jax.Array | None = None):
    """Returns ``(outputs [B, T, H], final state [B, H])``; ``h0`` defaults to zeros."""
    _check_input(x, self.in_features, 'GRU')
    dtype = self.dtype or x.dtype
    w_ih = self.weight_ih[...].astype(dtype)
    w_hh = self.weight_hh[...].astype(dtype)
    b_hh = self.bias_hh[...]
    # Hoisted input projection for every time step, time-major for the scan: [T, B, 3H].
    gi = jnp.einsum('btf,gf->tbg', x.astype(dtype), w_ih, preferred_element_type=jnp.float32)
    gi = gi + self.bias_ih[...]
    h = _initial_state(gi[0], self.hidden, h0)

    def step(h, gi_t):
      gh = jnp.einsum('bh,gh->bg', h.astype(dtype), w_hh,
                      preferred_element_type=jnp.float32) + b_hh
      h = _gru_update(gi_t, gh, h)
      return h, h

    h, ys = jax.lax.scan(step, h, gi, unroll=self.unroll)
    return jnp.swapaxes(ys, 0, 1).astype(dtype), h


class BiGRU(nnx.Module):
  """Single-layer bidirectional GRU; both directions run in one scan over a stacked carry.

  Args:
    in_features: input size F.
    hidden: hidden size H of each direction.
    merge: how the two directions' outputs combine: 'concat' ([fwd, bwd], 2H features, PyTorch's
      ``bidirectional=True`` layout), 'sum' or 'mean' (H features).
    dtype, unroll: as for ``GRU``.
  """

  def __init__(self, in_features: int, hidden: int, *, merge: str = 'concat', dtype=None,
               unroll: int | bool = 1, rngs: nnx.Rngs):
    if merge not in MERGE_MODES:
      raise ValueError(f'Unknown BiGRU merge {merge!r}; expected one of {MERGE_MODES}.')
    self.in_features = in_features
    self.hidden = hidden
    self.merge = merge
    self.dtype = dtype
    self.unroll = unroll
    self.weight_ih = _uniform(rngs, (2, 3 * hidden, in_features), hidden)
    self.weight_hh = _uniform(rngs, (2, 3 * hidden, hidden), hidden)
    self.bias_ih = _uniform(rngs, (2, 3 * hidden), hidden)
    self.bias_hh = _uniform(rngs, (2, 3 * hidden), hidden)

  @property
  def out_features(self) -> int:
    return 2 * self.hidden if self.merge == 'concat' else self.hidden

  def __call__(self, x: jax.Array, h0: jax.Array | None = None):
    """Returns ``(merged outputs [B, T, out_features], final states [2, B, H])``.

    Final states are PyTorch's ``h_n``: index 0 = forward after the last frame, 1 = backward
    after the first frame. ``h0`` [2, B, H] defaults to zeros.
    """
    _check_input(x, self.in_features, 'BiGRU')
    dtype = self.dtype or x.dtype
    w_ih = self.weight_ih[...].astype(dtype)
    w_hh = self.weight_hh[...].astype(dtype)
    b_hh = self.bias_hh[...][:, None, :]
    # Both directions' input projections in one matmul: [T, 2, B, 3H].
    gi = jnp.einsum('btf,dgf->tdbg', x.astype(dtype), w_ih, preferred_element_type=jnp.float32)
    gi = gi + self.bias_ih[...][:, None, :]
    # The backward direction reads time reversed, so step t of the scan serves both directions.
    gi = jnp.stack([gi[:, 0], gi[::-1, 1]], axis=1)
    h = _initial_state(gi[0], self.hidden, h0)

    def step(h, gi_t):
      gh = jnp.einsum('dbh,dgh->dbg', h.astype(dtype), w_hh,
                      preferred_element_type=jnp.float32) + b_hh
      h = _gru_update(gi_t, gh, h)
      return h, h

    h, ys = jax.lax.scan(step, h, gi, unroll=self.unroll)  # ys: [T, 2, B, H]
    fwd = ys[:, 0]
    bwd = ys[::-1, 1]  # back to natural time order
    if self.merge == 'concat':
      out = jnp.concatenate([fwd, bwd], axis=-1)
    elif self.merge == 'sum':
      out = fwd + bwd
    else:
      out = 0.5 * (fwd + bwd)
    return jnp.swapaxes(out, 0, 1).astype(dtype), h
