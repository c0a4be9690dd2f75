"""LKCNN (ferjax/models/lkcnn.py): Inception depthwise convolution against a loop, the relative position
bias, the weighting, parameter counts, configs, and training on the synthetic micro set."""

import importlib.util
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ferjax import config as config_lib, models
from ferjax.models import lkcnn


def _randomise(module: nnx.Module, seed: int) -> None:
  """Every parameter drawn at random (the init's zero biases would hide bias bugs)."""
  rng = np.random.default_rng(seed)
  for path, value in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    value[...] = jnp.asarray(rng.normal(0, 0.5, value[...].shape), jnp.float32)


def _depthwise_loop(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
  """Per channel, per pixel: 'same' zero padding, kernel [kh, kw, 1, C], x [H, W, C]."""
  kh, kw = kernel.shape[:2]
  h, w, c = x.shape
  padded = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = np.zeros_like(x)
  for ch in range(c):
    for y in range(h):
      for xx in range(w):
        out[y, xx, ch] = bias[ch] + np.sum(kernel[:, :, 0, ch] * padded[y:y + kh, xx:xx + kw, ch])
  return out


def test_inception_dwconv_equals_a_hand_written_loop():
  conv = lkcnn.InceptionDWConv2d(24, band_kernel=11, rngs=nnx.Rngs(0))  # 3 channels per branch.
  _randomise(conv, 1)
  x = np.random.default_rng(2).normal(size=(9, 13, 24)).astype(np.float64)
  got = np.asarray(conv(jnp.asarray(x[None], jnp.float32))[0], np.float64)
  params = lambda c: (np.asarray(c.kernel[...], np.float64), np.asarray(c.bias[...], np.float64))
  assert params(conv.square)[0].shape == (3, 3, 1, 3)
  assert params(conv.band_w)[0].shape == (1, 11, 1, 3) and params(conv.band_h)[0].shape == (11, 1, 1, 3)
  expected = np.concatenate([
      x[..., :15],  # identity: 24 - 3 * int(24 / 8) channels, untouched
      _depthwise_loop(x[..., 15:18], *params(conv.square)),
      _depthwise_loop(x[..., 18:21], *params(conv.band_w)),
      _depthwise_loop(x[..., 21:24], *params(conv.band_h))], -1)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match='branch_ratio'):
    lkcnn.InceptionDWConv2d(7, rngs=nnx.Rngs(0))


def test_relative_position_index_and_bias_by_hand():
  # 2 x 2 grid, tokens row-major (0,0) (0,1) (1,0) (1,1); row = (dy + 1) * 3 + (dx + 1).
  expected = [[4, 3, 1, 0],
              [5, 4, 2, 1],
              [7, 6, 4, 3],
              [8, 7, 5, 4]]
  np.testing.assert_array_equal(lkcnn.relative_position_index(2, 2), expected)
  index = lkcnn.relative_position_index(2, 3)  # 5 offsets across: row = (dy + 1) * 5 + (dx + 2).
  assert index[0, 5] == (0 - 1 + 1) * 5 + (0 - 2 + 2) and index[5, 0] == 2 * 5 + 4 and index[4, 2] == 2 * 5 + 1
  attention = lkcnn.RelativePositionAttention(4, (2, 2), heads=2, rngs=nnx.Rngs(0))
  attention.table[...] = jnp.arange(18, dtype=jnp.float32).reshape(9, 2)
  bias = np.asarray(attention.bias())
  for h in range(2):
    np.testing.assert_array_equal(bias[h], np.asarray(expected) * 2 + h)


def test_attention_adds_the_bias_to_the_logits_and_weights_the_tokens():
  dim = 4
  attention = lkcnn.RelativePositionAttention(dim, (2, 2), heads=1, rngs=nnx.Rngs(0))
  # q = 0, so the logits are the bias alone; v = x and the projection is the identity.
  kernel = np.zeros((dim, 3 * dim), np.float32)
  kernel[:, dim:2 * dim] = np.random.default_rng(0).normal(size=(dim, dim))
  kernel[:, 2 * dim:] = np.eye(dim)
  attention.qkv.kernel[...] = jnp.asarray(kernel)
  attention.proj.kernel[...] = jnp.eye(dim)
  table = np.random.default_rng(1).normal(size=(9, 1)).astype(np.float32)
  attention.table[...] = jnp.asarray(table)
  x = np.random.default_rng(2).normal(size=(3, 4, dim)).astype(np.float32)
  bias = table[lkcnn.relative_position_index(2, 2), 0]
  weights = np.exp(bias) / np.exp(bias).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(attention(jnp.asarray(x))), np.einsum('ij,bjd->bid', weights, x),
                             rtol=1e-5, atol=1e-6)
  # The model's block weights are sigmoid(relu(attention)): in [0.5, 1).
  model = lkcnn.LKCNN(3, dims=(8,), depths=(1,), rngs=nnx.Rngs(0))
  out = model({lkcnn.INPUT: jnp.asarray(np.random.default_rng(3).uniform(size=(2, 28, 28, 3)), jnp.float32)})
  assert out['logits'].shape == (2, 3) and out['block_weights'].shape == (2, 4, 8)
  assert 0.5 <= float(out['block_weights'].min()) and float(out['block_weights'].max()) < 1


def test_blocks_reach_only_their_own_backbone():
  """The input is cut into its 2 x 2 blocks: changing the left mouth-corner block changes only that
  block's token (before attention)."""
  model = lkcnn.LKCNN(3, dims=(8,), depths=(1,), rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).uniform(size=(1, 28, 28, 3)).astype(np.float32)
  y = x.copy()
  y[:, 14:, :14] += 1.0
  maps = lambda v: [m(b, train=False) for m, b in zip(model.backbones, model.blocks(jnp.asarray(v)))]
  changed = [not np.allclose(a, b) for a, b in zip(maps(x), maps(y))]
  assert changed == [False, False, True, False]
  shared = lkcnn.LKCNN(3, dims=(8,), depths=(1,), shared_backbone=True, rngs=nnx.Rngs(0))
  separate = models.count_params(model)['backbones']
  assert models.count_params(shared)['backbones'] * 4 == separate
  positions = lkcnn.LKCNN(3, dims=(8,), depths=(1,), tokens='positions', pool='mean', rngs=nnx.Rngs(0))
  assert positions.attention.index.shape == (49, 49)  # 7 x 7 cells of the concatenated map.
  assert positions({lkcnn.INPUT: jnp.asarray(x)})['logits'].shape == (1, 3)


def _config(arg: str):
  spec = importlib.util.spec_from_file_location('lkcnn_config', 'configs/lkcnn.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_parameter_count_per_component():
  # Per backbone: stem 2x2x3x32 + 32 = 416, its BatchNorm 64; per MetaNeXt block: the Inception
  # depthwise conv (4 channels per branch) 4*9+4 + 2 * (4*11+4) = 136, BatchNorm 64, MLP 32x128+128 +
  # 128x32+32 = 8,352, layer scale 32: 8,584; two blocks: 17,168; backbone 17,648, four: 70,592.
  # Attention: qkv 32x96+96 = 3,168, projection 1,056, relative bias table 9: 4,233. Head 128x3+3 = 387.
  result = subprocess.run([sys.executable, '-m', 'ferjax.models', '--config', 'configs/lkcnn.py',
                           '--num_classes', '3'], capture_output=True, text=True, check=True)
  counts = {line.split()[0]: int(line.split()[1].replace(',', '')) for line in result.stdout.splitlines()}
  assert counts == {'attention': 4233, 'backbones': 70592, 'head': 387, 'total': 75212}


def test_config_presets_and_field_errors():
  for preset, name in (('megc2019', 'megc2019/full'), ('casme2', 'megc2019/casme2'), ('samm', 'megc2019/samm'),
                       ('smic', 'megc2019/smic'), ('casme2_5class', 'casme2/5class'),
                       ('synthetic', 'synthetic_expressions/micro')):
    c = _config(preset)
    assert f'{c.dataset.name}/{c.dataset.config}' == name and c.model.name == 'lkcnn'
    config_lib.validate(c)
  assert _config('synthetic,subject_folds=4,seed=2').dataset.subject_folds == 4
  c = _config('synthetic')
  c.model.tokens = 'pixels'
  with pytest.raises(config_lib.ConfigError, match='model.tokens'):
    config_lib.validate(c)
  c = _config('synthetic')
  c.dataset.block_axes = 'xz'
  with pytest.raises(config_lib.ConfigError, match='block_axes'):
    config_lib.validate(c)
  c = _config('synthetic')
  c.model.stem_patch = 4  # 14 px blocks do not split into 4 px patches.
  with pytest.raises(config_lib.ConfigError, match='stem patch'):
    models.create_model(c.model, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='preset'):
    _config('casme3')


@pytest.fixture(scope='module')
def micro_dir(tmp_path_factory):
  import tfds_builders.synthetic_expressions as synthetic_expressions  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  synthetic_expressions.build(data_dir, config='micro_tiny', workers=1)
  return data_dir


def test_trains_a_few_steps_on_micro_tiny_with_the_records_keypoints(micro_dir, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ferjax import train  # pylint: disable=import-outside-toplevel
  record = tfds.data_source('synthetic_expressions/micro_tiny', split='subject_s001', data_dir=micro_dir)[0]
  assert record['keypoints'].shape == (5, 2) and (0 < record['keypoints']).all() and (record['keypoints'] < 1).all()
  assert record['keypoints'][0, 0] < record['keypoints'][1, 0]  # The image-left eye first.
  config = _config('synthetic,fold=1')
  config.dataset.config = 'micro_tiny'
  config.dataset.data_dir = micro_dir
  config.model.dims = (8,)  # Tiny: the test checks the plumbing, not the accuracy.
  config.model.depths = (1,)
  config.model.shared_backbone = True
  config.input.batch_size = config.input.eval_batch_size = 5
  config.train.num_steps = 3
  report = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert report['split'] == 'subject_s001' and report['num_examples'] == 3
  assert report['class_names'] == ['negative', 'positive', 'surprise']
