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


# ------------------------------------------------------------------------------------------------
# LSTM / BiLSTM: tests/data/lstm_reference.npz from scripts/make_lstm_reference.py (torch.nn.LSTM(6, 4)).

LSTM_DATA = os.path.join(os.path.dirname(__file__), 'data', 'lstm_reference.npz')


@pytest.fixture(scope='module')
def lstm_ref():
  with np.load(LSTM_DATA, allow_pickle=False) as f:
    return dict(f)


def _torch_layer(ref, prefix, layer, cls, k=0):
  """``cls`` with the weights of layer ``k`` of the reference ``prefix`` LSTM."""
  bidirectional = cls is recurrent.BiLSTM
  m = cls(ref[f'{prefix}.weight_ih_l{k}'].shape[1], 4, rngs=nnx.Rngs(0))
  for name in NAMES:
    value = ref[f'{prefix}.{name}_l{k}']
    if bidirectional:
      value = np.stack([value, ref[f'{prefix}.{name}_l{k}_reverse']])
    getattr(m, name)[...] = jnp.asarray(value)
  return m


def _loss(ref, prefix, out, h_n, c_n):
  return (jnp.sum(out * ref[f'{prefix}.w_out']) + jnp.sum(h_n * ref[f'{prefix}.w_h'])
          + jnp.sum(c_n * ref[f'{prefix}.w_c']))


def _check_grads(ref, prefix, grads, x_grad, layers):
  np.testing.assert_allclose(x_grad, ref[f'{prefix}_grad.x'], rtol=1e-5, atol=1e-5)
  for k, (layer_grads, bidirectional) in enumerate(layers):
    for name in NAMES:
      g = np.asarray(layer_grads[name][...])
      np.testing.assert_allclose(g[0] if bidirectional else g, ref[f'{prefix}_grad.{name}_l{k}'],
                                 rtol=1e-5, atol=1e-5, err_msg=f'{name}_l{k}')
      if bidirectional:
        np.testing.assert_allclose(g[1], ref[f'{prefix}_grad.{name}_l{k}_reverse'], rtol=1e-5,
                                   atol=1e-5, err_msg=f'{name}_l{k}_reverse')


@pytest.mark.parametrize('prefix,cls', [('uni', recurrent.LSTM), ('bi', recurrent.BiLSTM)])
def test_lstm_values_and_gradients_match_pytorch(lstm_ref, prefix, cls):
  ref = lstm_ref
  lstm = _torch_layer(ref, prefix, 0, cls)
  x = jnp.asarray(ref['x'])
  out, (h_n, c_n) = lstm(x)
  squeeze = (lambda a: a[0]) if cls is recurrent.LSTM else (lambda a: a)
  np.testing.assert_allclose(out, ref[f'{prefix}.out'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_n, squeeze(ref[f'{prefix}.h_n']), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c_n, squeeze(ref[f'{prefix}.c_n']), rtol=1e-5, atol=1e-5)
  s0 = ('h0', 'c0') if cls is recurrent.LSTM else ('h0_bi', 'c0_bi')
  out, (h_n, c_n) = lstm(x, tuple(jnp.asarray(ref[k]) for k in s0))
  np.testing.assert_allclose(out, ref[f'{prefix}.out_s0'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_n, squeeze(ref[f'{prefix}.h_n_s0']), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c_n, squeeze(ref[f'{prefix}.c_n_s0']), rtol=1e-5, atol=1e-5)

  def loss(m, x):
    out, (h_n, c_n) = m(x)
    return _loss(ref, prefix, out, h_n[None] if cls is recurrent.LSTM else h_n,
                 c_n[None] if cls is recurrent.LSTM else c_n)
  grads, x_grad = nnx.grad(loss, argnums=(0, 1))(lstm, x)
  _check_grads(ref, prefix, grads, x_grad, [(grads, cls is recurrent.BiLSTM)])


def test_two_layer_bilstm_stack_matches_pytorch(lstm_ref):
  ref = lstm_ref
  stack = recurrent.Stacked([_torch_layer(ref, 'bi2', 0, recurrent.BiLSTM),
                             _torch_layer(ref, 'bi2', 1, recurrent.BiLSTM, k=1)])
  x = jnp.asarray(ref['x'])

  def loss(m, x):
    out, states = m(x)
    # PyTorch's h_n/c_n: [layers * directions, B, H], layer-major.
    h_n = jnp.concatenate([h for h, _ in states])
    c_n = jnp.concatenate([c for _, c in states])
    return _loss(ref, 'bi2', out, h_n, c_n), (out, h_n, c_n)
  (_, (out, h_n, c_n)), (grads, x_grad) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(stack, x)
  np.testing.assert_allclose(out, ref['bi2.out'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_n, ref['bi2.h_n'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c_n, ref['bi2.c_n'], rtol=1e-5, atol=1e-5)
  _check_grads(ref, 'bi2', grads, x_grad, [(grads.layers[0], True), (grads.layers[1], True)])


def naive_lstm(x, w_ih, w_hh, b_ih, b_hh):
  """Step-by-step LSTM written from the equations, no scan."""
  hs = w_hh.shape[1]
  h = c = jnp.zeros((x.shape[0], hs))
  outs = []
  for t in range(x.shape[1]):
    z = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = (z[:, j * hs:(j + 1) * hs] for j in range(4))
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    outs.append(h)
  return jnp.stack(outs, axis=1), h, c


def test_one_scan_bilstm_equals_per_direction_loop():
  x = jax.random.normal(jax.random.key(0), (3, 7, 5))
  bilstm = recurrent.BiLSTM(5, 6, merge='sum', rngs=nnx.Rngs(1))
  out, (h_n, c_n) = bilstm(x)
  params = [np.asarray(getattr(bilstm, n)[...]) for n in NAMES]
  fwd, h_f, c_f = naive_lstm(x, *(p[0] for p in params))
  bwd, h_b, c_b = naive_lstm(x[:, ::-1], *(p[1] for p in params))
  np.testing.assert_allclose(out, fwd + bwd[:, ::-1], atol=1e-5)
  np.testing.assert_allclose(h_n, jnp.stack([h_f, h_b]), atol=1e-5)
  np.testing.assert_allclose(c_n, jnp.stack([c_f, c_b]), atol=1e-5)
  assert bilstm.out_features == 6 and recurrent.BiLSTM(5, 6, rngs=nnx.Rngs(0)).out_features == 12


def test_stacked_checks_sizes_and_applies_dropout_between_layers():
  with pytest.raises(ValueError, match='12 outputs feeds one expecting 6'):
    recurrent.Stacked([recurrent.BiLSTM(5, 6, rngs=nnx.Rngs(0)), recurrent.LSTM(6, 3, rngs=nnx.Rngs(0))])
  stack = recurrent.Stacked([recurrent.LSTM(5, 6, rngs=nnx.Rngs(0)), recurrent.LSTM(6, 3, rngs=nnx.Rngs(0))],
                            dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 4, 5))
  plain = stack.layers[1](stack.layers[0](x)[0])[0]
  np.testing.assert_allclose(stack(x)[0], plain, atol=1e-6)  # eval: no dropout
  assert not np.allclose(stack(x, train=True, rngs=nnx.Rngs(dropout=0))[0], plain, atol=1e-3)
