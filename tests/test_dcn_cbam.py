"""dcn_cbam: where CBAM and the deformable convolutions sit in the ResNet, per-frame outputs, training."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from ferjax import losses
from ferjax import models
from ferjax import steps
from ferjax.models import cbam
from ferjax.models import dcn_cbam
from ferjax.models import deformable
from ferjax.models import resnet


def _model(**kwargs):
  fields = dict(name='dcn_cbam', width=8, stage_sizes=(1, 2, 1, 1))
  fields.update(kwargs)
  return models.create_model(ml_collections.ConfigDict(fields), 3, rngs=nnx.Rngs(0))


def test_cbam_in_every_block_and_dcn_in_the_named_stages():
  model = nnx.eval_shape(lambda: _model(deformable_stages=(2, 4)))
  for i, stage in enumerate(model.backbone.layers, start=1):
    for j, block in enumerate(stage):
      assert isinstance(block.attn, cbam.CBAM)
      for conv in (block.conv1, block.conv2):
        assert isinstance(conv, deformable.DeformConv) == (i in (2, 4)), (i, j)
      if isinstance(block.conv1, deformable.DeformConv):
        assert block.conv1.stride == ((2, 2) if j == 0 else (1, 1))
  # Bottleneck: only the middle (3x3, strided) convolution is deformable.
  model = nnx.eval_shape(lambda: _model(backbone='resnet50'))
  block = model.backbone.layer3[0]
  assert isinstance(block.conv2, deformable.DeformConv) and block.conv2.stride == (2, 2)
  assert not isinstance(block.conv1, deformable.DeformConv)
  assert not isinstance(block.conv3, deformable.DeformConv)
  assert not isinstance(model.backbone.layer2[0].conv2, deformable.DeformConv)


def test_default_parameter_count_per_component():
  model = nnx.eval_shape(lambda: models.create_model(
      ml_collections.ConfigDict(dict(name='dcn_cbam')), 7, rngs=nnx.Rngs(0)))
  counts = models.count_params(model)
  plain = nnx.eval_shape(lambda: models.create_model(
      ml_collections.ConfigDict(dict(name='dcn_cbam', deformable_stages=())), 7, rngs=nnx.Rngs(0)))
  # CBAM adds 0.09 M to ResNet-18 (Woo et al., Table 4: 11.69 M -> 11.78 M with 1000 classes).
  assert models.count_params(plain)['backbone'] - 11_176_512 == 89_880
  # Each deformable 3x3 layer adds its offset conv: 3x3 x C x 27 + 27; stages 3 and 4 have 4 + 4 layers.
  offsets = sum(9 * c * 27 + 27 for c in (128, 256, 256, 256, 256, 512, 512, 512))
  assert counts['backbone'] == models.count_params(plain)['backbone'] + offsets
  assert counts['head'] == 512 * 7 + 7


def test_cbam_sits_after_the_last_batchnorm_before_the_addition():
  """With the channel MLP zeroed and the spatial BatchNorm at its initial scale 0, both gates are 0.5:
  the block equals the plain block whose last BatchNorm is scaled by 0.25."""
  block = dcn_cbam.CbamBasicBlock(8, 8, rngs=nnx.Rngs(0))
  for linear in (block.attn.channel.fc1, block.attn.channel.fc2):
    linear.kernel[...] = jnp.zeros_like(linear.kernel[...])
    linear.bias[...] = jnp.zeros_like(linear.bias[...])
  plain = resnet.BasicBlock(8, 8, rngs=nnx.Rngs(1))
  for name in ('conv1', 'bn1', 'conv2', 'bn2'):
    nnx.update(getattr(plain, name), nnx.state(getattr(block, name)))
  plain.bn2.scale[...] = 0.25 * block.bn2.scale[...]
  plain.bn2.bias[...] = 0.25 * block.bn2.bias[...] + 0.3
  block.bn2.bias[...] = block.bn2.bias[...] + 1.2  # 0.25 * 1.2 = 0.3: the bias is gated too.
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
  apply = nnx.jit(lambda m, x: m(x, train=False))
  np.testing.assert_allclose(apply(block, x), apply(plain, x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # A training (6 steps) judged by its loss: CI's slow stage.
def test_per_frame_logits_and_training_reduces_the_loss():
  model = _model(deformable_stages=(3, 4), offset_groups=2)
  frames = np.random.default_rng(0).integers(0, 255, (4, 2, 32, 32, 3), np.uint8)
  out = nnx.jit(lambda m, b: m(b))(model, {'frames': jnp.asarray(frames, jnp.float32) / 255})
  assert out['logits'].shape == (4, 2, 3)
  loss = losses.classification()
  tx = optax.adam(3e-3)
  graphdef, state = steps.init_state(model, tx, seed=0)
  step = jax.jit(functools.partial(steps.train_step, graphdef, tx, loss))
  batch = {'frames': frames[:, :1], 'label': np.array([0, 1, 2, 0], np.int32)}
  history = []
  for _ in range(6):
    state, metrics = step(state, batch)
    history.append(float(metrics['loss']))
  assert history[-1] < 0.7 * history[0], history
  # The offsets moved away from 0: the deformable layers learn.
  offset = state.params['backbone']['layer4'][0]['conv2']['offset']['kernel'][...]
  assert np.abs(offset).max() > 0


def test_schema_rejects_bad_stages():
  from ferjax import config as config_lib
  with pytest.raises(config_lib.ConfigError, match='model.deformable_stages: expected a tuple of '
                     'distinct stage numbers from 1 to 4'):
    _model(deformable_stages=(5,))
