"""Spatial recursive layer (RFSCNN, Zhou, JIPS; after STRNN, Zhang et al. 2018), computed as a wavefront.

For each of the four traversal directions r over an h x w grid of feature vectors x_ij (a CNN's last
feature map), every node takes its input and the states of the grid neighbours already visited in that
direction::

    h^r_ij = sigma(U^r x_ij + sum_{(k,l) in N^r_ij} W^r h^r_kl + b^r)

N^r_ij, the ``neighbours`` argument, are the grid neighbours on the side the sweep comes from; for the
sweep that starts in the top-left corner:

* ``'orthogonal'`` (4-connected): the vertical and the horizontal predecessor, (i-1, j) and (i, j-1);
* ``'diagonal'``: those and the diagonal predecessor (i-1, j-1), the predecessor set of an 8-connected
  grid split into four directed acyclic sweeps (STRNN's spatial layer, after DAG-RNN, Shuai et al.
  2016).

The other three sweeps start in the other corners. The RFSCNN paper writes N^r_ij without listing it.
The K = h*w node states are then projected sparsely over the nodes, s^r = G^r^T h^r (K -> K_d; G^r is
the ``sparse_proj`` parameter, the one an L1 penalty makes sparse), and the four directions are
combined, m = sum_r P^r s^r (P^r maps the hidden axis, H -> D), flattened to K_d * D features.

Wavefront. A node depends only on nodes of the two previous anti-diagonals (i + j = d - 1 for the
vertical and horizontal predecessors, d - 2 for the diagonal one), so all nodes of one anti-diagonal
are computed at once: h + w - 1 sequential steps instead of h * w. The grid is "skewed" once (a static
gather puts diagonal d, row i at [d, i]; off-grid slots are masked to zero), a ``lax.scan`` runs over
the diagonals with the two previous diagonals as its carry (the up neighbour of row i is the previous
diagonal's row i - 1, the left neighbour its row i, the diagonal neighbour the one before's row i - 1),
and a second static gather puts the states back on the grid. The four directions are the top-left
sweep of the flipped grid and run in the same scan, stacked on a leading axis (one sequential loop for
all four, as ferjax's BiGRU does for its two directions). ``python -m ferjax.benchmark --spatial``
measures it against ``per_node_scan``, a
``lax.scan`` that visits the h * w nodes one by one.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Start corner of each sweep, in the order of the leading axis of the layer's parameters and states.
DIRECTIONS = ('top_left', 'top_right', 'bottom_left', 'bottom_right')
ACTIVATIONS = {'tanh': jnp.tanh, 'relu': jax.nn.relu, 'sigmoid': jax.nn.sigmoid}
# N^r_ij of the top-left sweep as (row, column) steps back: 4-connected, or with the diagonal.
NEIGHBOURS = {'orthogonal': ((1, 0), (0, 1)), 'diagonal': ((1, 0), (0, 1), (1, 1))}


def orient(x: jax.Array, direction: int, *, row_axis: int = -3, col_axis: int = -2) -> jax.Array:
  """Flips a grid so that sweep ``direction`` starts in the top-left corner (its own inverse)."""
  name = DIRECTIONS[direction]
  if name.startswith('bottom'):
    x = jnp.flip(x, row_axis)
  if name.endswith('right'):
    x = jnp.flip(x, col_axis)
  return x


@functools.lru_cache(maxsize=None)
def skew_indices(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Static gathers between an h x w grid and its anti-diagonals.

  Returns ``(gather [D, h], valid [D, h], scatter [h * w])`` with D = h + w - 1: slot (d, i) holds node
  (i, d - i), i.e. flat index ``gather[d, i]``, if ``valid[d, i]``; node k = i * w + j sits at flat slot
  ``scatter[k] = (i + j) * h + i`` of the [D * h] diagonal array.
  """
  d = np.arange(h + w - 1)[:, None]
  i = np.arange(h)[None, :]
  j = d - i
  valid = (j >= 0) & (j < w)
  gather = i * w + np.clip(j, 0, w - 1)
  ii, jj = np.divmod(np.arange(h * w), w)
  scatter = (ii + jj) * h + ii
  return gather.astype(np.int32), valid, scatter.astype(np.int32)


def _check_neighbours(neighbours: str) -> None:
  if neighbours not in NEIGHBOURS:
    raise ValueError(f'Unknown neighbours {neighbours!r}; expected one of {tuple(NEIGHBOURS)}.')


def _shift_down(x: jax.Array) -> jax.Array:
  """Row i of the result is row i - 1 of ``x`` [..., h, H] (row 0: zeros)."""
  return jnp.pad(x[..., :-1, :], [(0, 0)] * (x.ndim - 2) + [(1, 0), (0, 0)])


def wavefront(inputs: jax.Array, w_rec: jax.Array, activation: str = 'tanh',
              unroll: int | bool = 1, neighbours: str = 'orthogonal') -> jax.Array:
  """Top-left sweeps of ``R`` stacked grids, one anti-diagonal per step.

  Args:
    inputs: [R, N, h, w, H], the input terms U x_ij + b of every node (float32).
    w_rec: [R, H, H], the recurrent matrix W of each stacked sweep.
    activation: sigma, a key of ``ACTIVATIONS``.
    unroll: ``lax.scan`` unroll factor over the h + w - 1 diagonals (True: a fully unrolled loop).
    neighbours: N^r_ij, a key of ``NEIGHBOURS``.

  Returns:
    The node states [R, N, h, w, H].
  """
  _check_neighbours(neighbours)
  diagonal = neighbours == 'diagonal'
  r, n, h, w, hidden = inputs.shape
  act = ACTIVATIONS[activation]
  gather, valid, scatter = skew_indices(h, w)
  flat = inputs.reshape(r, n, h * w, hidden)
  skewed = jnp.moveaxis(flat[:, :, gather], 2, 0)  # [D, R, N, h, H]
  mask = jnp.asarray(valid, inputs.dtype)[:, None, None, :, None]  # [D, 1, 1, h, 1]

  def step(carry, slot):
    prev, before = carry  # Diagonals d - 1 and d - 2.
    x_d, mask_d = slot
    # Up neighbour of row i = previous diagonal's row i - 1; left neighbour = its row i; diagonal
    # neighbour = row i - 1 of the diagonal before. Off-grid slots are zero, so they add nothing.
    total = prev + _shift_down(prev)
    if diagonal:
      total = total + _shift_down(before)
    h_d = act(x_d + jnp.einsum('rnih,rhk->rnik', total, w_rec)) * mask_d
    return (h_d, prev), h_d

  # Zeros derived from the input keep its sharding (see recurrent._initial_state).
  zeros = jnp.zeros_like(skewed[0])
  _, states = jax.lax.scan(step, (zeros, zeros), (skewed, mask), unroll=unroll)
  states = jnp.moveaxis(states, 0, 2).reshape(r, n, (h + w - 1) * h, hidden)
  return states[:, :, scatter].reshape(r, n, h, w, hidden)


def per_node_scan(inputs: jax.Array, w_rec: jax.Array, activation: str = 'tanh',
                  neighbours: str = 'orthogonal') -> jax.Array:
  """``wavefront``'s result by a ``lax.scan`` over the h * w nodes in raster order (the naive
  sequential layer, h * w steps; for the benchmark)."""
  _check_neighbours(neighbours)
  r, n, h, w, hidden = inputs.shape
  act = ACTIVATIONS[activation]
  coords = jnp.asarray(np.stack(np.divmod(np.arange(h * w), w), -1), jnp.int32)

  def step(grid, ij):
    i, j = ij[0], ij[1]
    total = 0.0
    for di, dj in NEIGHBOURS[neighbours]:
      k, l = i - di, j - dj
      total = total + jnp.where((k >= 0) & (l >= 0),
                                grid[:, :, jnp.maximum(k, 0), jnp.maximum(l, 0)], 0.0)
    node = act(inputs[:, :, i, j] + jnp.einsum('rnh,rhk->rnk', total, w_rec))
    return grid.at[:, :, i, j].set(node), None

  grid, _ = jax.lax.scan(step, jnp.zeros_like(inputs), coords)
  return grid


class SpatialRecurrent(nnx.Module):
  """Four-direction spatial recursive layer with sparse node projections (see the module docstring).

  Parameters (leading axis = the four sweeps of ``DIRECTIONS``): ``weight_in`` U [4, C, H],
  ``weight_rec`` W [4, H, H], ``bias`` b [4, H], ``sparse_proj`` G [4, K, K_d], ``weight_out``
  P [4, H, D]. ``weight_*`` get weight decay (ferjax.steps.decays); ``sparse_proj`` does not: its
  regulariser is the family's L1 penalty.

  Args:
    in_features: C, channels of the feature map.
    hidden: H, the node state size.
    grid: (h, w) of the feature map.
    proj_nodes: K_d, nodes after the sparse projection.
    out_features: D, size of each projected node after P.
    activation: sigma ('tanh' | 'relu' | 'sigmoid').
    neighbours: N^r_ij, 'orthogonal' (4-connected) or 'diagonal' (with the diagonal predecessor).
    unroll: ``lax.scan`` unroll over the diagonals.
    dtype: compute dtype of the input projection (the recurrence is float32).

  ``__call__(x)`` maps a feature map [N, h, w, C] to m [N, K_d * D]; ``node_states(x)`` gives
  h^r [4, N, h, w, H] on the original grid.
  """

  def __init__(self, in_features: int, hidden: int, grid: tuple[int, int], proj_nodes: int,
               out_features: int, *, activation: str = 'tanh', neighbours: str = 'orthogonal',
               unroll: int | bool = 1, dtype=None, rngs: nnx.Rngs):
    if activation not in ACTIVATIONS:
      raise ValueError(f'Unknown activation {activation!r}; expected one of {tuple(ACTIVATIONS)}.')
    _check_neighbours(neighbours)
    h, w = grid
    k = h * w
    r = len(DIRECTIONS)
    normal = jax.nn.initializers.normal
    self.in_features, self.hidden, self.grid = in_features, hidden, (h, w)
    self.proj_nodes, self.out_features = proj_nodes, out_features
    self.activation, self.neighbours, self.unroll, self.dtype = activation, neighbours, unroll, dtype
    self.weight_in = nnx.Param(normal(1 / math.sqrt(in_features))(rngs.params(), (r, in_features,
                                                                                  hidden)))
    # The neighbours are summed: scale so the recurrent term starts with unit-order variance.
    fan_in = len(NEIGHBOURS[neighbours]) * hidden
    self.weight_rec = nnx.Param(normal(1 / math.sqrt(fan_in))(rngs.params(), (r, hidden, hidden)))
    self.bias = nnx.Param(jnp.zeros((r, hidden)))
    self.sparse_proj = nnx.Param(normal(1 / math.sqrt(k))(rngs.params(), (r, k, proj_nodes)))
    # The four directions are summed.
    self.weight_out = nnx.Param(normal(1 / math.sqrt(r * hidden))(rngs.params(),
                                                                   (r, hidden, out_features)))

  @property
  def features(self) -> int:
    """Size of the flattened output m."""
    return self.proj_nodes * self.out_features

  def node_states(self, x: jax.Array) -> jax.Array:
    """h^r for every sweep r: [4, N, h, w, H] (float32), on the grid of ``x`` [N, h, w, C]."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (*self.grid, self.in_features):
      raise ValueError(f'SpatialRecurrent expects a feature map [N, {self.grid[0]}, {self.grid[1]}, '
                       f'{self.in_features}], got shape {x.shape}.')
    dtype = self.dtype or x.dtype
    u = jnp.einsum('nijc,rch->rnijh', x.astype(dtype), self.weight_in[...].astype(dtype),
                   preferred_element_type=jnp.float32) + self.bias[...][:, None, None, None, :]
    u = jnp.stack([orient(u[d], d) for d in range(len(DIRECTIONS))])
    states = wavefront(u, self.weight_rec[...], self.activation, self.unroll, self.neighbours)
    return jnp.stack([orient(states[d], d) for d in range(len(DIRECTIONS))])

  def project(self, states: jax.Array) -> jax.Array:
    """m = sum_r P^r (G^r^T h^r), flattened: [N, K_d * D] from node states [4, N, h, w, H]."""
    r, n, h, w, hidden = states.shape
    s = jnp.einsum('rnkh,rkq->rnqh', states.reshape(r, n, h * w, hidden), self.sparse_proj[...])
    m = jnp.einsum('rnqh,rhd->nqd', s, self.weight_out[...])
    return m.reshape(n, self.features)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.project(self.node_states(x))
