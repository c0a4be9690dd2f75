"""The wavefront spatial recursive layer against a plain double loop that visits nodes one by one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ferjax.models import spatial_recurrent as sr

# Row and column step of each sweep (DIRECTIONS order): the already-visited neighbours are one step back.
_STEPS = {'top_left': (1, 1), 'top_right': (1, -1), 'bottom_left': (-1, 1), 'bottom_right': (-1, -1)}


@functools.partial(jax.jit, static_argnames=('activation', 'neighbours'))
def reference_states(x, w_in, w_rec, b, activation='tanh', neighbours='orthogonal'):
  """h^r_ij = sigma(U x_ij + sum over visited neighbours W h_kl + b), one node at a time, per direction.
  N^r_ij: the vertical and the horizontal predecessor, and with 'diagonal' the diagonal one."""
  act = sr.ACTIVATIONS[activation]
  n, h, w, _ = x.shape
  out = []
  for r, name in enumerate(sr.DIRECTIONS):
    di, dj = _STEPS[name]
    rows = range(h) if di > 0 else range(h - 1, -1, -1)
    cols = range(w) if dj > 0 else range(w - 1, -1, -1)
    state = {}
    for i in rows:
      for j in cols:
        total = x[:, i, j] @ w_in[r] + b[r]
        predecessors = [(i - di, j), (i, j - dj)]
        if neighbours == 'diagonal':
          predecessors.append((i - di, j - dj))
        for k, l in predecessors:
          if 0 <= k < h and 0 <= l < w:
            assert (k, l) in state, 'a neighbour was used before it was visited'
            total = total + state[(k, l)] @ w_rec[r]
        state[(i, j)] = act(total)
    out.append(jnp.stack([jnp.stack([state[(i, j)] for j in range(w)], 1) for i in range(h)], 1))
  return jnp.stack(out)  # [4, N, h, w, H]


def reference_output(x, w_in, w_rec, b, g, p, activation='tanh', neighbours='orthogonal'):
  states = reference_states(x, w_in, w_rec, b, activation, neighbours)
  r, n, h, w, hidden = states.shape
  m = 0.0
  for d in range(r):
    s = jnp.einsum('nkh,kq->nqh', states[d].reshape(n, h * w, hidden), g[d])  # G^T h
    m = m + s @ p[d]  # P s, on the hidden axis
  return m.reshape(n, -1)


def _layer(grid, activation='tanh', unroll=1, seed=0, neighbours='orthogonal'):
  layer = sr.SpatialRecurrent(3, 4, grid, proj_nodes=5, out_features=2, activation=activation,
                              neighbours=neighbours, unroll=unroll, rngs=nnx.Rngs(seed))
  # Non-zero biases, so a wrong bias path shows.
  layer.bias[...] = jax.random.normal(jax.random.key(seed + 100), layer.bias.shape)
  return layer


def _params(layer):
  return (layer.weight_in[...], layer.weight_rec[...], layer.bias[...], layer.sparse_proj[...],
          layer.weight_out[...])


@pytest.mark.parametrize('neighbours', sr.NEIGHBOURS)
@pytest.mark.parametrize('grid,activation,unroll', [((3, 4), 'tanh', 1), ((4, 2), 'relu', True),
                                                    ((1, 3), 'sigmoid', 2)])
def test_wavefront_matches_a_node_by_node_double_loop(grid, activation, unroll, neighbours):
  layer = _layer(grid, activation, unroll, neighbours=neighbours)
  x = jax.random.normal(jax.random.key(1), (2, *grid, 3))
  w_in, w_rec, b, g, p = _params(layer)
  np.testing.assert_allclose(layer.node_states(x),
                             reference_states(x, w_in, w_rec, b, activation, neighbours),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layer(x), reference_output(x, w_in, w_rec, b, g, p, activation, neighbours),
                             rtol=1e-5, atol=1e-6)


def test_diagonal_neighbour_adds_the_diagonal_predecessor_state():
  """Same parameters, the two readings: they differ exactly where a node has a diagonal predecessor,
  and by that predecessor's term (node (1, 1) of the top-left sweep: W h_00 more inside sigma)."""
  orth, diag = _layer((2, 2)), _layer((2, 2), neighbours='diagonal')
  nnx.update(diag, nnx.state(orth))
  x = jax.random.normal(jax.random.key(8), (1, 2, 2, 3))
  a, d = np.asarray(orth.node_states(x)), np.asarray(diag.node_states(x))
  # Nodes without a diagonal predecessor (the first row and column of each sweep) agree.
  np.testing.assert_allclose(a[0, :, 0], d[0, :, 0], rtol=1e-6)
  np.testing.assert_allclose(a[0, :, :, 0], d[0, :, :, 0], rtol=1e-6)
  w_rec = np.asarray(orth.weight_rec[...][0])
  pre = np.arctanh(a[0, 0, 1, 1]) + a[0, 0, 0, 0] @ w_rec
  np.testing.assert_allclose(d[0, 0, 1, 1], np.tanh(pre), rtol=1e-5, atol=1e-6)
  assert not np.allclose(a[0, 0, 1, 1], d[0, 0, 1, 1])


def test_directions_differ_and_sweeps_see_their_own_predecessors():
  """A node's state depends on the inputs it has visited, and only on them (corner nodes: all or one)."""
  layer = _layer((3, 3))
  x = jax.random.normal(jax.random.key(2), (1, 3, 3, 3))
  states = layer.node_states(x)
  jac = jax.jit(jax.jacobian(lambda z: layer.node_states(z)[:, 0, :, :, 0]))(x)  # [4, 3, 3, 1, 3, 3, 3]
  touched = np.abs(np.asarray(jac)).sum(axis=(3, 6)) > 0  # [4, i, j, k, l]
  # The top-left sweep's last node (2, 2) has seen every node; its first node (0, 0) only itself.
  assert touched[0, 2, 2].all() and touched[0, 0, 0].sum() == 1
  # The bottom-right sweep is the mirror image.
  assert touched[3, 0, 0].all() and touched[3, 2, 2].sum() == 1
  # The top-right sweep's node (0, 2) is its start; node (2, 0) sees all.
  assert touched[1, 0, 2].sum() == 1 and touched[1, 2, 0].all()
  assert not np.allclose(states[0], states[3])


@pytest.mark.parametrize('neighbours', sr.NEIGHBOURS)
def test_wavefront_gradients_match_the_double_loop(neighbours):
  layer = _layer((3, 4), neighbours=neighbours)
  x = jax.random.normal(jax.random.key(3), (2, 3, 4, 3))
  target = jax.random.normal(jax.random.key(4), (2, 10))
  state_weights = jax.random.normal(jax.random.key(5), (4, 2, 3, 4, 4))

  graphdef, state = nnx.split(layer)

  def wavefront_fn(x, state):
    model = nnx.merge(graphdef, state)
    return jnp.sum(model(x) * target) + jnp.sum(model.node_states(x) * state_weights)

  def loop_fn(x, state):
    params = _params(nnx.merge(graphdef, state))
    return (jnp.sum(reference_output(x, *params, neighbours=neighbours) * target)
            + jnp.sum(reference_states(x, *params[:3], neighbours=neighbours) * state_weights))

  got = jax.grad(wavefront_fn, argnums=(0, 1))(x, state)
  want = jax.grad(loop_fn, argnums=(0, 1))(x, state)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert all(np.abs(np.asarray(a)).sum() > 0 for a in jax.tree.leaves(got))


@pytest.mark.parametrize('neighbours', sr.NEIGHBOURS)
def test_per_node_scan_equals_wavefront(neighbours):
  u = jax.random.normal(jax.random.key(6), (4, 2, 3, 5, 4))
  w_rec = jax.random.normal(jax.random.key(7), (4, 4, 4)) * 0.3
  np.testing.assert_allclose(sr.per_node_scan(u, w_rec, neighbours=neighbours),
                             sr.wavefront(u, w_rec, neighbours=neighbours), rtol=1e-5, atol=1e-6)


def test_skew_indices_cover_every_node_once():
  for h, w in ((1, 1), (2, 5), (5, 2), (7, 7)):
    gather, valid, scatter = sr.skew_indices(h, w)
    assert gather.shape == (h + w - 1, h)
    assert sorted(gather[valid].tolist()) == list(range(h * w))
    # scatter inverts gather on the valid slots.
    np.testing.assert_array_equal(gather.reshape(-1)[scatter], np.arange(h * w))


def test_bad_feature_map_shape_is_a_clear_error():
  with pytest.raises(ValueError,
                     match=r"Unknown neighbours 'eight'; expected one of \('orthogonal', 'diagonal'\)"):
    _layer((3, 4), neighbours='eight')
  layer = _layer((3, 4))
  with pytest.raises(ValueError, match=r'expects a feature map \[N, 3, 4, 3\], got shape \(2, 4, 3, 3\)'):
    layer(jnp.zeros((2, 4, 3, 3)))
