"""Residual Masking Network (ferjax.models.rmn): size, masks, per-frame use, ImageNet trunk, reconstruction."""

import functools

import jax
# saved_residuals is what the public jax.ad_checkpoint.print_saved_residuals prints, as data.
from jax._src import ad_checkpoint
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from ferjax import losses, models, steps
from ferjax.models import convert
from ferjax.models import rmn

# Tiny network: every structure of the real one (4 stages, U-Nets of depth 4/3/2/1), 16 channels at most
# in the trunk.
TINY = dict(backbone='resnet34', width=2, stage_sizes=(1, 1, 1, 1))


def tiny(num_classes=3, seed=0, **kwargs):
  return rmn.RMN(num_classes, **{**TINY, **kwargs}, rngs=nnx.Rngs(seed))


@pytest.fixture(scope='module')
def model():
  """One tiny RMN for the tests that only read it (building one compiles every initialiser shape)."""
  return tiny()


@nnx.jit
def stages(model, images):
  return model.stages(images)


@nnx.jit
def apply(model, frames):
  return model({'frames': frames})


def test_default_size_is_the_public_code_count():
  model = nnx.eval_shape(lambda: rmn.RMN(7, rngs=nnx.Rngs(0)))
  counts = models.count_params(model)
  assert set(counts) == {'backbone', 'mask1', 'mask2', 'mask3', 'mask4', 'head', 'total'}
  assert abs(counts['total'] / 137.8e6 - 1) < 0.02, counts
  # ResNet-34 without its classifier (torchvision: 21,797,672 with the 1000-way fc).
  assert counts['backbone'] == 21_797_672 - (512 * 1000 + 1000)
  assert counts['head'] == 512 * 7 + 7
  # Depth 1 after stage 4 (C = 512): BasicBlock 512 -> 1024 and BasicBlock 1024 -> 512, both with a 1x1
  # projection shortcut + BN.
  def block(cin, cout):
    return 9 * cin * cout + 9 * cout * cout + cin * cout + 3 * 2 * cout
  assert counts['mask4'] == block(512, 1024) + block(1024, 512)
  recon = nnx.eval_shape(lambda: rmn.RMN(7, reconstruction=True, rngs=nnx.Rngs(0)))
  assert 0 < models.count_params(recon)['reconstruction'] < 0.01 * counts['total']


@pytest.mark.parametrize('size', [64, 48])
def test_masks_have_the_stage_shapes_and_are_channel_distributions(model, size):
  images = jax.random.uniform(jax.random.key(1), (2, size, size, 3))
  side = -(-size // 4)  # stem: stride 2 conv + stride 2 pool (ceil)
  for i, (out, mask) in enumerate(stages(model, images)):
    assert out.shape == (2, side, side, 2 * 2**i), (i, out.shape)
    assert mask.shape == out.shape
    np.testing.assert_allclose(mask.sum(-1), 1.0, rtol=1e-5)  # softmax over channels at every pixel
    assert (mask >= 0).all()
    side = -(-side // 2)
  sig = nnx.clone(model)  # The same weights, the sigmoid mask.
  for masking in sig.masks:
    masking.activation = 'sigmoid'
  for out, mask in stages(sig, images):
    assert ((mask > 0) & (mask < 1)).all() and mask.shape == out.shape
    assert not np.allclose(mask.sum(-1), 1.0)


def test_each_stage_reads_the_masked_output_of_the_previous_one(model):
  images = jax.random.uniform(jax.random.key(2), (2, 64, 64, 3))
  (out1, mask1), (out2, _) = stages(model, images)[:2]
  masked = out1 * (1 + mask1)
  x = masked
  for block in model.backbone.layer2:
    x = block(x)
  np.testing.assert_allclose(x, out2, rtol=1e-5, atol=1e-6)
  # ... and that differs from feeding the unmasked output (the mask does something).
  y = out1
  for block in model.backbone.layer2:
    y = block(y)
  assert not np.allclose(y, out2, atol=1e-6)


def test_per_frame_logits(model):
  frames = jax.random.uniform(jax.random.key(3), (2, 3, 32, 32, 3))
  per_frame = apply(model, frames)['logits']
  assert per_frame.shape == (2, 3, 3)
  # Frame t of sequence b is scored as the single image it is.
  single = apply(model, frames[:, 1:2])['logits']
  assert single.shape == (2, 3)
  np.testing.assert_allclose(per_frame[:, 1], single, rtol=1e-5, atol=1e-6)
  # The trainer scores a sequence by the mean of its frames' probabilities.
  probs = steps.sequence_probabilities(per_frame)
  np.testing.assert_allclose(probs, jax.nn.softmax(per_frame, -1).mean(1), rtol=1e-6)


def _torchvision_resnet34_keys(width, stage_sizes):
  """Key -> shape of a torchvision ResNet-34 state dict (written from torchvision's layout, not from ferjax)."""
  keys = {'conv1.weight': (width, 3, 7, 7)}

  def bn(prefix, c):
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      keys[f'{prefix}.{name}'] = (c,)
    keys[f'{prefix}.num_batches_tracked'] = ()
  bn('bn1', width)
  cin = width
  for i, n in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      keys[f'{p}.conv1.weight'] = (planes, cin, 3, 3)
      bn(f'{p}.bn1', planes)
      keys[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
      bn(f'{p}.bn2', planes)
      if j == 0 and i > 0:
        keys[f'{p}.downsample.0.weight'] = (planes, cin, 1, 1)
        bn(f'{p}.downsample.1', planes)
      cin = planes
  keys['fc.weight'] = (1000, cin)
  keys['fc.bias'] = (1000,)
  return keys


def test_imagenet_resnet34_weights_load_into_the_trunk(tmp_path):
  width, stage_sizes = 4, (3, 4, 6, 3)
  rng = np.random.default_rng(0)
  state_dict = {k: (rng.standard_normal(s).astype(np.float32) if s else np.array(0, np.int64))
                for k, s in _torchvision_resnet34_keys(width, stage_sizes).items()}
  path = str(tmp_path / 'resnet34.safetensors')
  convert.write_weights(path, state_dict)
  model = rmn.RMN(7, width=width, mask_depths=(1, 1, 1, 1), rngs=nnx.Rngs(0))
  masks_before = jax.tree.map(np.asarray, nnx.state(model.mask2))
  summary = convert.apply_pretrained(model, ml_collections.ConfigDict({'backbone_weights': path}))
  assert summary['backbone']['kept'] == 0  # every trunk tensor came from the file; fc.* skipped
  # Conv kernels are transposed from [O, I, kh, kw] to [kh, kw, I, O].
  np.testing.assert_array_equal(np.asarray(model.backbone.layer3[5].conv2.kernel[...]),
                                state_dict['layer3.5.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.backbone.layer2[0].downsample.bn.var[...]),
                                state_dict['layer2.0.downsample.1.running_var'])
  jax.tree.map(np.testing.assert_array_equal, masks_before, nnx.state(model.mask2))
  # The family's pretrained hook is the same loader.
  family = models.get_family('rmn')
  other = rmn.RMN(7, width=width, mask_depths=(1, 1, 1, 1), rngs=nnx.Rngs(1))
  family.pretrained(other, {'backbone_weights': path})
  np.testing.assert_array_equal(np.asarray(other.backbone.conv1.kernel[...]),
                                np.asarray(model.backbone.conv1.kernel[...]))


def test_binary_penalty_hand_values():
  one_hot = jax.nn.one_hot(jnp.zeros((1, 2, 2), jnp.int32), 4)
  uniform = jnp.full((1, 2, 2, 4), 0.25)
  np.testing.assert_allclose(rmn.binary_penalty(one_hot, 'softmax'), [0.0])
  np.testing.assert_allclose(rmn.binary_penalty(uniform, 'softmax'), [0.75])  # 1 - 4 * 0.25^2
  np.testing.assert_allclose(rmn.binary_penalty(one_hot, 'sigmoid'), [0.0])
  np.testing.assert_allclose(rmn.binary_penalty(jnp.full((1, 2, 2, 4), 0.5), 'sigmoid'), [1.0])
  np.testing.assert_allclose(rmn.binary_penalty(uniform, 'sigmoid'), [0.75])  # 4 * 0.25 * 0.75


def _reconstruction_config():
  c = ml_collections.ConfigDict()
  # U-Nets of depth 1 everywhere: the fastest network with every loss term.
  c.model = ml_collections.ConfigDict(dict(name='rmn', **TINY, mask_depths=(1, 1, 1, 1),
                                           reconstruction_weight=1.0, mask_loss='binary',
                                           mask_loss_weight=0.1, dropout=0.0))
  c.train = ml_collections.ConfigDict(dict(label_smoothing=0.0))
  return c


@pytest.mark.slow  # A training (8 steps) judged by its loss: CI's slow stage.
def test_reconstruction_loss_decreases_and_every_term_is_logged():
  config = _reconstruction_config()
  model = models.create_model(config.model, 3, rngs=nnx.Rngs(0))
  assert model.reconstruction is not None
  loss = models.get_family('rmn').losses(config)
  assert loss.names == ('cross_entropy', 'l1_reconstruction', 'mask_binary')
  tx = optax.adam(1e-2)
  graphdef, state = steps.init_state(model, tx, seed=0)
  step = jax.jit(functools.partial(steps.train_step, graphdef, tx, loss))
  rng = np.random.default_rng(0)
  # Smooth images (a colour ramp per image): something a decoder from 1x1 features can learn.
  ramp = np.linspace(0, 1, 32)[None, :, None, None] * rng.uniform(0, 255, (4, 1, 1, 3))
  frames = np.clip(ramp + rng.uniform(0, 128, (4, 1, 1, 3)), 0, 255).astype(np.uint8)
  batch = {'frames': np.broadcast_to(frames[:, None], (4, 1, 32, 32, 3)).copy(),
           'label': np.array([0, 1, 2, 0], np.int32)}
  history = []
  for _ in range(8):
    state, metrics = step(state, batch)
    history.append({k: float(v) for k, v in metrics.items()})
  assert {'loss/cross_entropy', 'loss/l1_reconstruction', 'loss/mask_binary'} <= set(history[0])
  rec = [h['loss/l1_reconstruction'] for h in history]
  assert rec[-1] < 0.9 * rec[0] and all(b < a for a, b in zip(rec, rec[1:])), rec
  total = [h['loss'] for h in history]
  first = history[0]
  np.testing.assert_allclose(first['loss'], first['loss/cross_entropy'] + first['loss/l1_reconstruction']
                             + 0.1 * first['loss/mask_binary'], rtol=1e-5)
  assert total[-1] < total[0]


def test_reconstruction_target_is_the_models_input():
  model = tiny(reconstruction=True, mask_depths=(1, 1, 1, 1))
  frames = jax.random.uniform(jax.random.key(4), (2, 1, 48, 48, 3))
  out = apply(model, frames)
  assert out['reconstruction'].shape == out['reconstruction_target'].shape == (2, 48, 48, 3)
  np.testing.assert_array_equal(out['reconstruction_target'], frames[:, 0])
  rec = losses.l1_reconstruction()(out, {}, None)
  np.testing.assert_allclose(rec, np.abs(out['reconstruction'] - frames[:, 0]).mean(), rtol=1e-6)


def test_config_schema_rejects_bad_values():
  from ferjax import config as config_lib
  bad = ml_collections.ConfigDict(dict(name='rmn', mask_activation='relu'))
  with pytest.raises(config_lib.ConfigError, match="model.mask_activation: expected one of 'softmax'"):
    models.create_model(bad, 7, rngs=nnx.Rngs(0))


def test_remat_gives_the_same_loss_gradients_and_batch_stats_and_keeps_less():
  # model.remat='blocks' rematerialises the trunk's stem and blocks and the masks' blocks: same values
  # (float32 reordering only), far fewer activations kept for the backward pass.
  frames = jax.random.normal(jax.random.key(2), (2, 1, 32, 32, 3), jnp.float32)
  labels = jnp.array([0, 2])

  def loss_fn(graphdef):
    def fn(params, rest):
      m = nnx.merge(graphdef, params, rest, copy=True)
      out = m({'frames': frames}, train=True, rngs=nnx.Rngs(dropout=0))
      loss = steps.cross_entropy(out['logits'], labels, 0.0).mean() + out['mask_binary'].mean()
      return loss, nnx.split(m, nnx.Param, ...)[2]
    return fn

  results, kept = {}, {}
  for remat in ('none', 'blocks'):
    graphdef, params, rest = nnx.split(tiny(remat=remat, mask_loss='binary', dropout=0.0),
                                       nnx.Param, ...)
    results[remat] = jax.device_get(jax.jit(jax.value_and_grad(loss_fn(graphdef), has_aux=True))(
        params, rest))
    residuals = ad_checkpoint.saved_residuals(lambda p: loss_fn(graphdef)(p, rest)[0], params)
    kept[remat] = sum(a.size * a.dtype.itemsize for a, src in residuals
                      if not src.startswith('from the argument'))
  (loss0, stats0), grads0 = results['none']
  (loss1, stats1), grads1 = results['blocks']
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  flat0, flat1 = nnx.to_flat_state(grads0), nnx.to_flat_state(grads1)
  assert [p for p, _ in flat0] == [p for p, _ in flat1]
  assert any(p[0] == 'mask1' for p, _ in flat0)
  for (path, g0), (_, g1) in zip(flat0, flat1):
    g0, g1 = np.asarray(g0.get_value()), np.asarray(g1.get_value())
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-5 * max(np.abs(g0).max(), 1e-3),
                               err_msg=str(path))
  for (path, s0), (_, s1) in zip(nnx.to_flat_state(stats0), nnx.to_flat_state(stats1)):
    np.testing.assert_allclose(np.asarray(s1.get_value()), np.asarray(s0.get_value()), rtol=1e-5,
                               atol=1e-6, err_msg=str(path))
  assert kept['blocks'] < 0.5 * kept['none'], kept


def test_reconstruction_decoder_depth_is_a_field():
  """model.reconstruction_levels: the decoder's transposed-convolution levels (default 5 = the trunk's
  32x stride); fewer levels end at a smaller map, resized bilinearly to the input."""
  base = dict(name='rmn', **TINY, mask_depths=(1, 1, 1, 1), reconstruction_weight=1.0, dropout=0.0)
  five = models.create_model(ml_collections.ConfigDict(base), 3, rngs=nnx.Rngs(0))
  three = models.create_model(ml_collections.ConfigDict(dict(base, reconstruction_levels=3)), 3,
                              rngs=nnx.Rngs(0))
  assert len(five.reconstruction.up) == 5 and len(three.reconstruction.up) == 3
  frames = jax.random.uniform(jax.random.key(5), (2, 1, 32, 32, 3))
  features = jax.random.normal(jax.random.key(6), (2, 1, 1, five.backbone.num_features))
  # 1x1 features: 3 levels give 8x8 before the resize to 32x32; 5 levels give 32x32 directly.
  x = features
  for up in three.reconstruction.up:
    x = up(x, False)
  assert x.shape[1:3] == (8, 8)
  assert apply(three, frames)['reconstruction'].shape == (2, 32, 32, 3)
  from ferjax import config as config_lib
  with pytest.raises(config_lib.ConfigError, match='model.reconstruction_levels: expected'):
    models.create_model(ml_collections.ConfigDict(dict(base, reconstruction_levels=0)), 3,
                        rngs=nnx.Rngs(0))


def _rmn_config(arg):
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'rmn.py')
  spec = importlib.util.spec_from_file_location('rmn_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_presets_rotate_with_black_fill_and_sample_the_apex_on_sequences():
  """The public code's augmenter (imgaug Affine) fills black; per frame on CK+, the last frames (apex)
  carry the label, 16 x 3 = 48 images per step (the recipe's batch)."""
  from ferjax import config as config_lib
  for arg in ('fer2013', 'synthetic_images', 'ck_plus', 'fer2013,reconstruction'):
    c = config_lib.validate(_rmn_config(arg))
    assert c.augment.fill == 'black', arg
    assert c.model.reconstruction_levels == 5
  ck = _rmn_config('ck_plus')
  assert ck.dataset.sampling == 'apex' and ck.dataset.num_frames == 3
  assert ck.input.batch_size * ck.dataset.num_frames == _rmn_config('fer2013').input.batch_size
