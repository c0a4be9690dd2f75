"""GRU/BiGRU: PyTorch parity (tests/data/gru_reference.npz) and one-scan BiGRU vs a naive loop."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ferjax.models import recurrent

DATA = os.path.join(os.path.dirname(__file__), 'data', 'gru_reference.npz')
NAMES = ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')


@pytest.fixture(scope='module')
def ref():
  # Made by scripts/make_gru_reference.py with torch.nn.GRU(6, 4, batch_first=True).
  with np.load(DATA, allow_pickle=False) as f:
    return dict(f)


def test_gru_matches_pytorch(ref):
  gru = recurrent.GRU(6, 4, rngs=nnx.Rngs(0))
  for name in NAMES:
    getattr(gru, name)[...] = jnp.asarray(ref[f'uni.{name}_l0'])
  out, h_n = gru(jnp.asarray(ref['x']))
  np.testing.assert_allclose(out, ref['uni.out'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_n, ref['uni.h_n'][0], rtol=1e-5, atol=1e-5)
  out, h_n = gru(jnp.asarray(ref['x']), jnp.asarray(ref['h0']))
  np.testing.assert_allclose(out, ref['uni.out_h0'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_n, ref['uni.h_n_h0'][0], rtol=1e-5, atol=1e-5)


def test_bigru_matches_pytorch(ref):
  bigru = recurrent.BiGRU(6, 4, merge='concat', rngs=nnx.Rngs(0))
  for name in NAMES:
    stacked = np.stack([ref[f'bi.{name}_l0'], ref[f'bi.{name}_l0_reverse']])
    getattr(bigru, name)[...] = jnp.asarray(stacked)
  out, h_n = bigru(jnp.asarray(ref['x']))
  np.testing.assert_allclose(out, ref['bi.out'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_n, ref['bi.h_n'], rtol=1e-5, atol=1e-5)
  out, h_n = bigru(jnp.asarray(ref['x']), jnp.asarray(ref['h0_bi']))
  np.testing.assert_allclose(out, ref['bi.out_h0'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_n, ref['bi.h_n_h0'], rtol=1e-5, atol=1e-5)


def naive_gru(x, w_ih, w_hh, b_ih, b_hh):
  """Step-by-step GRU, projection inside the loop, no scan: the textbook form."""
  h = jnp.zeros((x.shape[0], w_hh.shape[1]))
  outs = []
  for t in range(x.shape[1]):
    gi = x[:, t] @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    hs = w_hh.shape[1]
    r = jax.nn.sigmoid(gi[:, :hs] + gh[:, :hs])
    z = jax.nn.sigmoid(gi[:, hs:2 * hs] + gh[:, hs:2 * hs])
    n = jnp.tanh(gi[:, 2 * hs:] + r * gh[:, 2 * hs:])
    h = (1 - z) * n + z * h
    outs.append(h)
  return jnp.stack(outs, axis=1), h


def test_one_scan_bigru_equals_per_direction_reference():
  x = jax.random.normal(jax.random.key(0), (3, 7, 5))
  merged = {}
  for merge in ('concat', 'sum', 'mean'):
    bigru = recurrent.BiGRU(5, 6, merge=merge, rngs=nnx.Rngs(1))
    merged[merge], h_n = bigru(x)
    params = [np.asarray(getattr(bigru, n)[...]) for n in NAMES]
  fwd, h_f = naive_gru(x, *(p[0] for p in params))
  bwd_rev, h_b = naive_gru(x[:, ::-1], *(p[1] for p in params))
  bwd = bwd_rev[:, ::-1]
  np.testing.assert_allclose(merged['concat'], jnp.concatenate([fwd, bwd], -1), atol=1e-5)
  np.testing.assert_allclose(merged['sum'], fwd + bwd, atol=1e-5)
  np.testing.assert_allclose(merged['mean'], (fwd + bwd) / 2, atol=1e-5)
  np.testing.assert_allclose(h_n, jnp.stack([h_f, h_b]), atol=1e-5)
  # The unidirectional GRU with the forward weights gives the forward half.
  gru = recurrent.GRU(5, 6, rngs=nnx.Rngs(2))
  for n, p in zip(NAMES, params):
    getattr(gru, n)[...] = jnp.asarray(p[0])
  np.testing.assert_allclose(gru(x)[0], fwd, atol=1e-5)


def test_gradients_and_bfloat16():
  x = jax.random.normal(jax.random.key(0), (2, 4, 5))
  bigru = recurrent.BiGRU(5, 3, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda m: jnp.sum(m(x)[0] ** 2))(bigru)
  for n in NAMES:
    g = np.asarray(grads[n][...])
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0, n
  bf = recurrent.BiGRU(5, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  out, h = bf(x)
  assert out.dtype == jnp.bfloat16 and h.dtype == jnp.float32
  np.testing.assert_allclose(out.astype(jnp.float32), bigru(x)[0], atol=3e-2)


def test_bad_input_and_merge():
  with pytest.raises(ValueError, match=r'\[B, T, 5\]'):
    recurrent.GRU(5, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 4, 6)))
  with pytest.raises(ValueError, match='merge'):
    recurrent.BiGRU(5, 3, merge='max', rngs=nnx.Rngs(0))
