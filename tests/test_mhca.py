"""MHCA (DAN): parameter count, the heads' structure and fusion, and the affinity and partition losses on
hand-computed values."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from ferjax import models
from ferjax import steps
from ferjax.models import mhca

DAN_PARAMS = 19.72e6  # DAN with ResNet-18, 4 heads, 7 classes (count from its layer shapes).


def _tiny(**kwargs):
  fields = dict(name='mhca', width=8, stage_sizes=(1, 1, 1, 1), spatial_hidden=8, channel_hidden=4)
  fields.update(kwargs)
  return models.create_model(ml_collections.ConfigDict(fields), 3, rngs=nnx.Rngs(0))


def test_parameter_count_is_dans():
  model = nnx.eval_shape(lambda: models.create_model(
      ml_collections.ConfigDict(dict(name='mhca')), 7, rngs=nnx.Rngs(0)))
  counts = models.count_params(model)
  assert abs(counts['total'] - DAN_PARAMS) / DAN_PARAMS < 0.01, counts
  assert counts['backbone'] == 11_176_512  # torchvision ResNet-18 without fc.
  # One head: 1x1 conv 512->256 (+bias) + BN, three 256->512 convs (3x3, 1x3, 3x1, +bias) + BNs,
  # Linear 512->32 + BN1d + Linear 32->512.
  head = (512 * 256 + 256 + 512 + 256 * 512 * (9 + 3 + 3) + 3 * 512 + 3 * 1024
          + 512 * 32 + 32 + 64 + 32 * 512 + 512)
  assert [counts[f'head{i}'] for i in range(4)] == [head] * 4
  assert counts['fc'] == 512 * 7 + 7 and counts['bn'] == 14 and counts['centres'] == 7 * 512


def test_resnet50_heads_are_2048_wide():
  model = nnx.eval_shape(lambda: models.create_model(
      ml_collections.ConfigDict(dict(name='mhca', backbone='resnet50')), 7, rngs=nnx.Rngs(0)))
  assert model.head0.spatial.conv1x1.kernel.shape == (1, 1, 2048, 256)
  assert model.centres.shape == (7, 2048) and model.fc.kernel.shape == (2048, 7)


def test_dans_initialisation():
  model = _tiny()
  head = model.head0
  assert np.all(head.spatial.conv3x3.bias[...] == 0)
  for linear in (head.channel.fc1, head.channel.fc2):
    assert np.all(linear.bias[...] == 0)
    assert 0 < np.std(linear.kernel[...]) < 0.003  # normal(std 0.001)
  bound = 1 / np.sqrt(model.backbone.num_features)  # PyTorch's default Linear init for the classifier.
  assert np.all(np.abs(model.fc.kernel[...]) <= bound) and np.any(model.fc.bias[...] != 0)


def test_outputs_and_log_softmax_fusion():
  model = _tiny()
  frames = jax.random.uniform(jax.random.key(1), (2, 3, 32, 32, 3))
  out = model({'frames': frames}, train=False)
  assert out['logits'].shape == (2, 3, 3)  # Per frame.
  assert out['features'].shape == (6, 64) and out['heads'].shape == (6, 4, 64)
  assert out['centres'].shape == (3, 64)
  # Log-softmax over the head axis: exp sums to 1 over heads.
  np.testing.assert_allclose(jnp.sum(jnp.exp(out['heads']), axis=1), 1.0, rtol=1e-5)
  # Logits = BN(fc(sum of heads)) with evaluation statistics (mean 0, var 1, scale 1, bias 0).
  fused = model.fc(jnp.sum(out['heads'], axis=1)) / np.sqrt(1 + 1e-5)
  np.testing.assert_allclose(out['logits'].reshape(6, 3), fused, rtol=1e-4, atol=1e-5)
  one = _tiny(num_heads=1)({'frames': frames[:, :1]}, train=False)
  assert one['logits'].shape == (2, 3) and one['heads'].shape == (2, 1, 64)
  assert not np.allclose(jnp.sum(jnp.exp(one['heads']), axis=1), 1.0)  # No softmax for one head.


def test_affinity_loss_hand_computed():
  outputs = {'features': jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]),
             'centres': jnp.array([[0.0, 0.0], [1.0, 1.0]])}
  batch = {'label': jnp.array([0, 1, 1])}
  # Own-class squared distances 1, 2, 0; centre variance over classes (unbiased) 0.5 + 0.5 = 1. The
  # [3, 2] matrix of them (0 elsewhere) clamped at 1e-12: the 0 entries (three off-class, one own)
  # add 1e-12 each. Mean over the 3 images.
  want = (1 + 2 + 4e-12) / 3
  np.testing.assert_allclose(mhca.affinity_loss(outputs, batch), want, rtol=1e-6)
  # Per frame: 6 images of 3 sequences x 2 frames take their sequence's label.
  outputs2 = {'features': jnp.repeat(outputs['features'], 2, axis=0), 'centres': outputs['centres']}
  np.testing.assert_allclose(mhca.affinity_loss(outputs2, batch), want, rtol=1e-6)


def test_partition_loss_hand_computed():
  # Two images, two heads, two channels; variance over heads of (a, b) is (a - b)^2 / 2.
  heads = jnp.array([[[0.0, 1.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 3.0]]])
  # Variances (2, 0) and (0, 2): mean 1 -> log(1 + 2 / 1).
  np.testing.assert_allclose(mhca.partition_loss({'heads': heads}), np.log(3.0), rtol=1e-6)
  assert float(mhca.partition_loss({'heads': heads[:, :1]})) == 0.0


def test_losses_are_logged_by_name_and_centres_learn():
  config = ml_collections.ConfigDict({'model': dict(name='mhca', affinity_weight=1.0,
                                                    partition_weight=0.5),
                                      'train': dict(label_smoothing=0.0)})
  loss = models.get_family('mhca').losses(config)
  assert loss.names == ('cross_entropy', 'affinity', 'partition')
  model = _tiny()
  centres = np.asarray(model.centres[...])
  tx = optax.sgd(0.1)
  graphdef, state = steps.init_state(model, tx, seed=0)
  step = jax.jit(functools.partial(steps.train_step, graphdef, tx, loss))
  batch = {'frames': np.random.default_rng(0).integers(0, 255, (4, 1, 32, 32, 3), np.uint8),
           'label': np.array([0, 1, 2, 0], np.int32)}
  state, metrics = step(state, batch)
  metrics = {k: float(v) for k, v in metrics.items()}
  assert {'loss/cross_entropy', 'loss/affinity', 'loss/partition'} <= set(metrics)
  np.testing.assert_allclose(metrics['loss'], metrics['loss/cross_entropy'] + metrics['loss/affinity']
                             + 0.5 * metrics['loss/partition'], rtol=1e-5)
  new_centres = np.asarray(state.params['centres'][...])
  assert not np.allclose(new_centres, centres)  # The affinity loss trains the centres.


def test_schema_rejects_bad_values():
  from ferjax import config as config_lib
  with pytest.raises(config_lib.ConfigError, match="model.backbone: expected one of 'resnet18'"):
    _tiny(backbone='vgg16')
  with pytest.raises(config_lib.ConfigError, match='model.num_heads: expected an integer >= 1'):
    _tiny(num_heads=0)


@pytest.mark.parametrize('family', ['mhca', 'dcn_cbam'])
def test_raf_db_presets_follow_dans_schedule_and_augmentation(family):
  """DAN's train_rafdb.py: lr 0.1 x0.1 every 10 epochs (48 steps each), plain momentum; with p = 0.2
  the rotation and the 32-px padded crop (whole-pixel shifts), never otherwise."""
  import importlib.util
  import os
  from ferjax.data import augment
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', f'{family}.py')
  spec = importlib.util.spec_from_file_location(f'{family}_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('raf_db')
  schedule = steps.learning_rate_schedule(config.train, 40 * 48, 0, steps_per_epoch=48)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 479, 480, 959, 960, 1440, 1919)],
                             [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-4, 1e-4], rtol=1e-5)
  assert config.train.optimizer == 'sgd' and config.train.nesterov is False
  options = augment.AugmentOptions.from_config(config.augment)
  rng, applied = np.random.default_rng(0), 0
  for _ in range(500):
    m = augment.draw(224, 224, 224, options, rng).matrix
    applied += m[1, 0] != 0
    if m[1, 0] == 0:  # Not applied: flip at most, no shift.
      np.testing.assert_allclose(np.abs(m[:, :2]), np.eye(2))
      assert m[1, 2] == 0
  assert 70 < applied < 130  # Binomial(500, 0.2): 100 +- 9.
  assert options.pad_crop == 32 and options.fill == 'black'
