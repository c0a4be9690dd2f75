"""mfem_bilstm: region attention and level attention by hand, parameter counts by hand, PyTorch imports."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ferjax import config as config_lib
from ferjax import models
from ferjax.models import convert
from ferjax.models import mfem_bilstm

LSTM_FILE = os.path.join(os.path.dirname(__file__), 'data', 'lstm_reference.npz')


def tiny(**overrides):
  cfg = dict(name='mfem_bilstm', backbone='resnet34', width=4, stage_sizes=(1, 1, 1, 1), regions=2,
             fusion_dim=6, lstm_hidden=4, dropout=0.0)
  cfg.update(overrides)
  return models.create_model(ml_collections.ConfigDict(cfg), 3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('norm', mfem_bilstm.REGION_NORMS)
def test_region_attention_by_hand(norm):
  features = jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(1, 2, 2, 3)
  logits = jnp.array([0.5, -1.0, 2.0, 0.0], jnp.float32).reshape(1, 2, 2, 1)
  pooled, weights = mfem_bilstm.region_attention(features, logits, norm)
  z = np.array([0.5, -1.0, 2.0, 0.0])
  w = np.exp(z) / np.exp(z).sum() if norm == 'softmax' else (1 / (1 + np.exp(-z))) / (1 / (1 + np.exp(-z))).sum()
  np.testing.assert_allclose(weights.reshape(-1), w, rtol=1e-6)
  np.testing.assert_allclose(pooled[0, 0], w @ np.arange(12).reshape(4, 3), rtol=1e-6)
  # A map that is one-hot at a position picks that position's features; every map sums to 1.
  one_hot = jnp.full((1, 2, 2, 2), -1e4).at[0, 1, 0, 0].set(1e4).at[0, 0, 1, 1].set(1e4)
  pooled, weights = mfem_bilstm.region_attention(features, one_hot, norm)
  np.testing.assert_allclose(pooled[0], [features[0, 1, 0], features[0, 0, 1]], atol=1e-5)
  np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, rtol=1e-6)


def test_fim_attention_rows_sum_to_one_and_uniform_attention_by_hand():
  fim = mfem_bilstm.FIM(4, heads=2, fusion='concat', rngs=nnx.Rngs(0))
  tokens = jax.random.normal(jax.random.key(0), (3, 4, 4))
  np.testing.assert_allclose(fim.attention(tokens).sum(-1), 1.0, rtol=1e-6)
  assert fim(tokens).shape == (3, 16)
  # Zero queries: every level attends to all levels equally, so each token gains the mean value.
  fim.query.kernel[...] = jnp.zeros_like(fim.query.kernel[...])
  fim.query.bias[...] = jnp.zeros_like(fim.query.bias[...])
  v = tokens @ fim.value.kernel[...] + fim.value.bias[...]
  expected = tokens + v.mean(axis=1, keepdims=True)
  np.testing.assert_allclose(fim(tokens), expected.reshape(3, 16), rtol=1e-5, atol=1e-6)
  fim.fusion = 'mean'
  np.testing.assert_allclose(fim(tokens), expected.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_parameter_count_per_component_by_hand():
  config = ml_collections.ConfigDict(dict(name='mfem_bilstm', backbone='resnet34', width=64, regions=4,
                                          fusion_dim=256, lstm_hidden=128, lstm_layers=1))
  counts = models.count_params(nnx.eval_shape(lambda: models.create_model(config, 3, rngs=nnx.Rngs(0))))
  channels = (64, 128, 256, 512)
  assert counts['backbone'] == 21_797_672 - (512 * 1000 + 1000)  # torchvision resnet34 without its fc
  assert counts['mfem'] == sum((c * 4 + 4) + (4 * c * 256 + 256) for c in channels)
  assert counts['fim'] == 3 * (256 * 256 + 256)
  assert counts['lstm'] == 2 * (4 * 128 * (4 * 256) + 4 * 128 * 128 + 2 * 4 * 128)
  assert counts['head'] == 2 * 128 * 3 + 3


@nnx.jit
def _logits_and_grads(model, frames):
  """Logits, and the gradient of their squared sum (one compiled program: eager ResNets are slow)."""
  loss = lambda m: jnp.sum(m({'frames': frames})['logits'] ** 2)
  return model({'frames': frames})['logits'], nnx.grad(loss)(model)


@nnx.jit
def _frame_vectors(model, images):
  return model.frame_vectors(images), model.frame_vectors(images[::-1])


def test_forward_shapes_stages_and_errors():
  model = tiny(stages=(3, 5), fusion='mean')
  assert len(model.mfem) == 2 and model.mfem[1].maps.in_features == 4 * 8
  frames = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32, 3))
  logits, grads = _logits_and_grads(model, frames)
  assert logits.shape == (2, 3)
  # Every component takes part: each gets a gradient.
  for name in ('backbone', 'mfem', 'fim', 'lstm', 'head'):
    leaves = jax.tree.leaves(nnx.state(getattr(grads, name), nnx.Param))
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0, name
  # Frame vectors do not depend on the other frames of the batch (no mixing before the LSTM).
  flat = frames.reshape(6, 32, 32, 3)
  vectors, reversed_vectors = _frame_vectors(model, flat)
  np.testing.assert_allclose(reversed_vectors, vectors[::-1], atol=1e-5)
  with pytest.raises(config_lib.ConfigError, match='stages'):
    tiny(stages=(1, 2))
  with pytest.raises(config_lib.ConfigError, match='fim_heads'):
    tiny(fim_heads=4)
  with pytest.raises(ValueError, match=r'frames \[B, T, H, W, 3\]'):
    model({'frames': flat})
  model.dropout = nnx.Dropout(0.5)
  with pytest.raises(ValueError, match='rngs'):
    model({'frames': frames}, train=True)


def test_pytorch_resnet34_and_lstm_weights_import(tmp_path):
  # The LSTM of a model with 4 levels of 6 averaged (fusion='mean') reads 6 features, hidden 4, two
  # layers: exactly the reference nn.LSTM(6, 4, num_layers=2, bidirectional=True).
  src, dst = tiny(fusion='mean', lstm_layers=2, width=8, stage_sizes=()), None
  ref = convert.read_weights(LSTM_FILE)
  summary = convert.apply_pretrained(src, {'lstm_weights': LSTM_FILE, 'lstm_prefix': 'bi2.'})
  assert summary['lstm']['loaded'] == 16
  out, _ = src.lstm(jnp.asarray(ref['x']))
  np.testing.assert_allclose(out, ref['bi2.out'], rtol=1e-5, atol=1e-5)
  # The trunk exports as torchvision's resnet34 layout (3, 4, 6, 3 blocks) and round-trips.
  backbone_file = str(tmp_path / 'resnet34.safetensors')
  exported = convert.export_resnet(src.backbone, backbone_file)
  assert exported['layer3.5.conv2.weight'].shape == (32, 32, 3, 3)
  assert exported['layer2.0.downsample.0.weight'].shape == (16, 8, 1, 1)
  lstm_file = str(tmp_path / 'lstm.npz')
  convert.write_weights(lstm_file, convert.export_stack(src.lstm))
  assert 'weight_hh_l1_reverse' in convert.read_weights(lstm_file)
  dst = models.create_model(ml_collections.ConfigDict(dict(
      name='mfem_bilstm', width=8, regions=2, fusion_dim=6, lstm_hidden=4, dropout=0.0, fusion='mean',
      lstm_layers=2)), 3, rngs=nnx.Rngs(1))
  convert.apply_pretrained(dst, {'backbone_weights': backbone_file, 'lstm_weights': lstm_file})
  frames = jax.random.uniform(jax.random.key(0), (1, 2, 32, 32, 3))
  for name in ('backbone', 'lstm'):
    jax.tree.map(np.testing.assert_array_equal, nnx.state(getattr(src, name), nnx.Param),
                 nnx.state(getattr(dst, name), nnx.Param))
  forward = nnx.jit(lambda m, x: m(x))
  np.testing.assert_allclose(forward(src.backbone, frames[0]), forward(dst.backbone, frames[0]), rtol=1e-6)
