"""GRU and LSTM layers, unidirectional and bidirectional, with PyTorch/cuDNN equations, batch-major [B, T, F].

GRU equations (gate order r, z, n as in PyTorch's packed weights)::

    r = σ(W_ir x + b_ir + W_hr h + b_hr)
    z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

LSTM equations (gate order i, f, g, o as in PyTorch's ``nn.LSTM``)::

    i = σ(W_ii x + b_ii + W_hi h + b_hi)
    f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')

Flax's ``GRUCell`` has no recurrent bias on the candidate gate and its LSTM cells have one bias per
gate, so PyTorch weights could not be ported to them; these layers store PyTorch's tensors under
PyTorch's names and layouts (``weight_ih`` [G·H, F], ``weight_hh`` [G·H, H], ``bias_ih`` [G·H],
``bias_hh`` [G·H], G = 3 gates for the GRU, 4 for the LSTM; the bidirectional layers add a leading
direction axis of size 2: 0 = forward, 1 = backward = PyTorch's ``*_reverse``). One layer is one
PyTorch layer (``*_l0``); a PyTorch ``num_layers=k`` network is ``Stacked`` of k layers, the input of
layer k + 1 being the (concatenated) output of layer k (``convert.load_layer`` reads one layer of its
state dict, ``convert.load_stack`` all of them). ``proj_size`` (PyTorch's projected LSTM) is not
supported.

Speed: the input projection ``x @ W_ih^T + b_ih`` for all time steps is one matmul hoisted out of
the ``lax.scan``; the scan body only does the [B, H] x [H, G·H] recurrent matmul. Both directions of
a bidirectional layer run in ONE scan over a stacked carry [2, B, H] (the backward direction reads its
input reversed in time), so a bidirectional layer costs one sequential loop, not two; a
unidirectional layer is the same scan with a direction axis of size 1 (``_Recurrent``).

Unroll (``lax.scan``'s ``unroll``, default 1 = a rolled loop), chosen by measurement:
``python scripts/gru_unroll.py`` times two RBG blocks (forward + backward) on the 2-core CPU, shared with
other jobs (load ~15), so step times are noisy:

* quickstart (B 16, T 8, 128 -> hidden 128), two repeats: compile 11-13 / 14-15 / 19-20 / 26-29 s and
  step 48-112 / 45-92 / 48-82 / 101-102 ms for unroll 1 / 2 / 4 / 8;
* paper (B 32, T 16, 2048 -> hidden 560): compile 12 / 14 / 28 / 48 s, step 6.76 / 7.40 / 6.85 / 7.58 s.

Unrolling buys no step time that stands out of the noise at either size (at the paper's size the hoisted
input projections dominate; the recurrent matmul is [B, H] x [H, 3H] per step) while compile time grows
with the unroll factor, so the default stays 1; ``model.unroll`` remains a field for accelerators.

Precision: matmuls run in ``dtype`` (e.g. bfloat16); gates and the carried states are float32.
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


def _gru_update(gi: jax.Array, gh: jax.Array, state: tuple[jax.Array]) -> tuple[jax.Array]:
  """One GRU update from input gates ``gi`` and recurrent gates ``gh`` (both [..., 3H])."""
  (h,) = state
  i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
  h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
  r = jax.nn.sigmoid(i_r + h_r)
  z = jax.nn.sigmoid(i_z + h_z)
  n = jnp.tanh(i_n + r * h_n)
  return ((1.0 - z) * n + z * h,)


def _lstm_update(gi: jax.Array, gh: jax.Array,
                 state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """One LSTM update of ``(h, c)`` from input gates ``gi`` and recurrent gates ``gh`` (both [..., 4H])."""
  _, c = state
  i, f, g, o = jnp.split(gi + gh, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _initial_state(gi_0: jax.Array, hidden: int, s0: jax.Array | None) -> jax.Array:
  """Float32 initial carry [D, B, H], zeros unless ``s0`` ([B, H] or [D, B, H]) is given.

  The zeros are derived from the first step's input gates (not ``jnp.zeros(shape)``) so that
  they carry the batch sharding of the input: under explicit-sharding meshes a scan whose
  carry starts unsharded and becomes batch-sharded fails to type-check.
  """
  zeros = jnp.zeros_like(gi_0[..., :hidden], dtype=jnp.float32)
  return zeros if s0 is None else zeros + s0.astype(jnp.float32)


def _check_input(x: jax.Array, in_features: int, name: str):
  if x.ndim != 3 or x.shape[-1] != in_features:
    raise ValueError(f'{name} expects input [B, T, {in_features}], got shape {x.shape}.')


def _merge(fwd: jax.Array, bwd: jax.Array, merge: str) -> jax.Array:
  if merge == 'concat':
    return jnp.concatenate([fwd, bwd], axis=-1)
  if merge == 'sum':
    return fwd + bwd
  return 0.5 * (fwd + bwd)


class _Recurrent(nnx.Module):
  """What the four layers share: PyTorch's tensors, the hoisted input projection and one scan over a
  [directions, B, H] carry. A subclass names its gate count, state count and update (``_GATES``,
  ``_STATES``, ``_update``) and the form of its state in ``__call__``."""

  _GATES: int
  _STATES: int

  def __init__(self, in_features: int, hidden: int, *, directions: int, merge: str, dtype,
               unroll: int | bool, rngs: nnx.Rngs):
    if merge not in MERGE_MODES:
      raise ValueError(f'Unknown {type(self).__name__} merge {merge!r}; expected one of {MERGE_MODES}.')
    self.in_features = in_features
    self.hidden = hidden
    self.directions = directions
    self.merge = merge
    self.dtype = dtype
    self.unroll = unroll
    lead = (2,) if directions == 2 else ()
    g = self._GATES * hidden
    self.weight_ih = _uniform(rngs, (*lead, g, in_features), hidden)
    self.weight_hh = _uniform(rngs, (*lead, g, hidden), hidden)
    self.bias_ih = _uniform(rngs, (*lead, g), hidden)
    self.bias_hh = _uniform(rngs, (*lead, g), hidden)

  @property
  def out_features(self) -> int:
    return 2 * self.hidden if self.directions == 2 and self.merge == 'concat' else self.hidden

  @staticmethod
  def _update(gi, gh, state):
    raise NotImplementedError

  def _run(self, x: jax.Array, state0: tuple | None):
    """``(outputs [B, T, out_features], final states)``; states are [B, H] (unidirectional) or
    [2, B, H] (bidirectional), ``state0`` a tuple of ``_STATES`` of them or None (zeros)."""
    _check_input(x, self.in_features, type(self).__name__)
    dtype = self.dtype or x.dtype
    params = [v[...] for v in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)]
    if self.directions == 1:
      params = [p[None] for p in params]
    w_ih, w_hh, b_ih, b_hh = params
    w_ih, w_hh, b_hh = w_ih.astype(dtype), w_hh.astype(dtype), b_hh[:, None, :]
    # Every direction's input projection in one matmul: [T, D, B, G·H].
    gi = jnp.einsum('btf,dgf->tdbg', x.astype(dtype), w_ih, preferred_element_type=jnp.float32)
    gi = gi + b_ih[:, None, :]
    if self.directions == 2:
      # The backward direction reads time reversed, so step t of the scan serves both directions.
      gi = jnp.stack([gi[:, 0], gi[::-1, 1]], axis=1)
    state = tuple(_initial_state(gi[0], self.hidden, s)
                  for s in (state0 or (None,) * self._STATES))
    update = self._update

    def step(state, gi_t):
      gh = jnp.einsum('dbh,dgh->dbg', state[0].astype(dtype), w_hh,
                      preferred_element_type=jnp.float32) + b_hh
      state = update(gi_t, gh, state)
      return state, state[0]

    state, ys = jax.lax.scan(step, state, gi, unroll=self.unroll)  # ys: [T, D, B, H]
    if self.directions == 1:
      out, state = ys[:, 0], tuple(s[0] for s in state)
    else:
      out = _merge(ys[:, 0], ys[::-1, 1], self.merge)  # backward back in natural time order
    return jnp.swapaxes(out, 0, 1).astype(dtype), state


class GRU(_Recurrent):
  """Single-layer unidirectional GRU over [B, T, in_features] (PyTorch ``nn.GRU`` semantics).

  Args:
    in_features: input size F.
    hidden: hidden size H.
    dtype: compute dtype of the matmuls (outputs are returned in this dtype; default: input's).
    unroll: ``lax.scan`` unroll factor (T is small for FER clips, so unrolling is cheap).
  """

  _GATES, _STATES = 3, 1
  _update = staticmethod(_gru_update)

  def __init__(self, in_features: int, hidden: int, *, dtype=None, unroll: int | bool = 1,
               rngs: nnx.Rngs):
    super().__init__(in_features, hidden, directions=1, merge='concat', dtype=dtype, unroll=unroll,
                     rngs=rngs)

  def __call__(self, x: jax.Array, h0: jax.Array | None = None):
    """Returns ``(outputs [B, T, H], final state [B, H])``; ``h0`` defaults to zeros."""
    out, (h,) = self._run(x, None if h0 is None else (h0,))
    return out, h


class BiGRU(_Recurrent):
  """Single-layer bidirectional GRU; both directions run in one scan over a stacked carry.

  Args:
    in_features: input size F.
    hidden: hidden size H of each direction.
    merge: how the two directions' outputs combine: 'concat' ([fwd, bwd], 2H features, PyTorch's
      ``bidirectional=True`` layout), 'sum' or 'mean' (H features).
    dtype, unroll: as for ``GRU``.
  """

  _GATES, _STATES = 3, 1
  _update = staticmethod(_gru_update)

  def __init__(self, in_features: int, hidden: int, *, merge: str = 'concat', dtype=None,
               unroll: int | bool = 1, rngs: nnx.Rngs):
    super().__init__(in_features, hidden, directions=2, merge=merge, dtype=dtype, unroll=unroll,
                     rngs=rngs)

  def __call__(self, x: jax.Array, h0: jax.Array | None = None):
    """Returns ``(merged outputs [B, T, out_features], final states [2, B, H])``.

    Final states are PyTorch's ``h_n``: index 0 = forward after the last frame, 1 = backward
    after the first frame. ``h0`` [2, B, H] defaults to zeros.
    """
    out, (h,) = self._run(x, None if h0 is None else (h0,))
    return out, h


class LSTM(_Recurrent):
  """Single-layer unidirectional LSTM over [B, T, in_features] (PyTorch ``nn.LSTM`` semantics).

  Args: as for ``GRU``.
  """

  _GATES, _STATES = 4, 2
  _update = staticmethod(_lstm_update)

  def __init__(self, in_features: int, hidden: int, *, dtype=None, unroll: int | bool = 1,
               rngs: nnx.Rngs):
    super().__init__(in_features, hidden, directions=1, merge='concat', dtype=dtype, unroll=unroll,
                     rngs=rngs)

  def __call__(self, x: jax.Array, state0: tuple[jax.Array, jax.Array] | None = None):
    """Returns ``(outputs [B, T, H], (h_n [B, H], c_n [B, H]))``; ``state0 = (h0, c0)`` defaults to
    zeros."""
    return self._run(x, state0)


class BiLSTM(_Recurrent):
  """Single-layer bidirectional LSTM; both directions run in one scan over a stacked carry.

  Args: as for ``BiGRU``.
  """

  _GATES, _STATES = 4, 2
  _update = staticmethod(_lstm_update)

  def __init__(self, in_features: int, hidden: int, *, merge: str = 'concat', dtype=None,
               unroll: int | bool = 1, rngs: nnx.Rngs):
    super().__init__(in_features, hidden, directions=2, merge=merge, dtype=dtype, unroll=unroll,
                     rngs=rngs)

  def __call__(self, x: jax.Array, state0: tuple[jax.Array, jax.Array] | None = None):
    """Returns ``(merged outputs [B, T, out_features], (h_n [2, B, H], c_n [2, B, H]))`` (PyTorch's
    ``h_n``/``c_n``: index 0 = forward after the last frame, 1 = backward after the first frame).
    ``state0 = (h0, c0)``, each [2, B, H], defaults to zeros."""
    return self._run(x, state0)


class Stacked(nnx.Module):
  """Recurrent layers applied in turn: PyTorch's ``num_layers=k`` network (``nn.LSTM``/``nn.GRU``; layer
  ``k`` of ``layers`` holds PyTorch's ``*_l<k>`` tensors, ``convert.load_stack``). ``dropout`` is PyTorch's:
  on every layer's output but the last, in training only.

  Args:
    layers: the layers (``GRU``, ``BiGRU``, ``LSTM``, ``BiLSTM``), each reading the previous one's output.
    dropout: dropout rate between layers.
  """

  def __init__(self, layers, *, dropout: float = 0.0):
    layers = list(layers)
    for a, b in zip(layers, layers[1:]):
      if a.out_features != b.in_features:
        raise ValueError(f'Stacked recurrent layers: a layer with {a.out_features} outputs feeds one '
                         f'expecting {b.in_features} inputs.')
    self.layers = nnx.List(layers)
    self.dropout = nnx.Dropout(dropout)

  @property
  def in_features(self) -> int:
    return self.layers[0].in_features

  @property
  def out_features(self) -> int:
    return self.layers[-1].out_features

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None):
    """Returns ``(last layer's outputs [B, T, out_features], [final state of every layer])``."""
    states = []
    for k, layer in enumerate(self.layers):
      if k:
        x = self.dropout(x, deterministic=not train, rngs=rngs)
      x, state = layer(x)
      states.append(state)
    return x, states
