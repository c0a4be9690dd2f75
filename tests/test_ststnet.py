"""STSTNet (ferjax/models/ststnet.py): parameter count, a hand-written forward pass, config and training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ferjax import config as config_lib, models
from ferjax.models import ststnet


def test_exactly_1683_parameters():
  model = ststnet.STSTNet(3, rngs=nnx.Rngs(0))
  # Conv 3x3x3 -> 3/5/8 with bias: 84 + 140 + 224; BatchNorm scale + bias: 2 * 16; Linear 400 -> 3: 1,203.
  assert models.count_params(model) == {'convs': 448, 'norms': 32, 'fc': 1203, 'total': 1683}
  assert ststnet.pooled_side(28) == 5


def _reference(x: np.ndarray, model: ststnet.STSTNet) -> np.ndarray:
  """The public code's forward pass in eval mode, written with loops over NCHW arrays."""
  x = np.transpose(x, (0, 3, 1, 2)).astype(np.float64)  # [B, 3, 28, 28]
  b = x.shape[0]
  streams = []
  for conv, norm in zip(model.convs, model.norms):
    w = np.asarray(conv.kernel[...], np.float64)  # [3, 3, in, out]
    out = w.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    y = np.zeros((b, out, 30, 30))
    for o in range(out):
      for i in range(3):
        for dy in range(3):
          for dx in range(3):
            y[:, o] += w[dy, dx, i, o] * padded[:, i, dy:dy + 30, dx:dx + 30]
      y[:, o] += float(conv.bias[...][o])
    y = np.maximum(y, 0)
    mean, var = (np.asarray(v[...], np.float64)[None, :, None, None] for v in (norm.mean, norm.var))
    scale, bias = (np.asarray(v[...], np.float64)[None, :, None, None] for v in (norm.scale, norm.bias))
    y = (y - mean) / np.sqrt(var + 1e-5) * scale + bias
    y = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)  # 32 x 32
    pooled = np.array([[[[y[n, c, 3 * r:3 * r + 3, 3 * s:3 * s + 3].max() for s in range(10)]
                         for r in range(10)] for c in range(out)] for n in range(b)])
    streams.append(pooled)
  y = np.concatenate(streams, axis=1)  # [B, 16, 10, 10]
  y = y.reshape(b, 16, 5, 2, 5, 2).mean(axis=(3, 5))
  flat = y.reshape(b, -1)  # PyTorch's view(B, -1) over (c, row, column).
  return flat @ np.asarray(model.fc.kernel[...], np.float64) + np.asarray(model.fc.bias[...], np.float64)


def test_forward_equals_the_hand_written_reference():
  model = ststnet.STSTNet(3, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  for norm in model.norms:  # Non-trivial running statistics and affine parameters.
    shape = norm.mean[...].shape
    norm.mean[...] = jnp.asarray(rng.normal(0, 0.3, shape), jnp.float32)
    norm.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)
    norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
    norm.bias[...] = jnp.asarray(rng.normal(0, 0.3, shape), jnp.float32)
  x = rng.uniform(0, 1, (2, 28, 28, 3)).astype(np.float32)
  logits = model({ststnet.INPUT: jnp.asarray(x)})['logits']
  np.testing.assert_allclose(np.asarray(logits), _reference(x, model), rtol=1e-4, atol=1e-5)


def test_dropout_and_batch_norm_only_in_training():
  model = ststnet.STSTNet(3, rngs=nnx.Rngs(0))
  batch = {ststnet.INPUT: jax.random.uniform(jax.random.key(0), (4, 28, 28, 3))}
  a, b = model(batch)['logits'], model(batch)['logits']
  np.testing.assert_array_equal(a, b)
  t1 = model(batch, train=True, rngs=nnx.Rngs(dropout=0))['logits']
  t2 = model(batch, train=True, rngs=nnx.Rngs(dropout=1))['logits']
  assert not np.allclose(t1, t2)
  with pytest.raises(ValueError, match='needs `rngs`'):
    model(batch, train=True)
  with pytest.raises(ValueError, match=r'onset_apex_flow \[B, S, S, 3\]'):
    model({ststnet.INPUT: jnp.zeros((4, 28, 28))})


def test_family_and_config_errors():
  family = models.get_family('ststnet')
  assert family.inputs == ('frames', 'onset_apex_flow')
  model = models.create_model({'name': 'ststnet', 'image_size': 28, 'filters': (3, 5, 8), 'dropout': 0.5},
                              3, rngs=nnx.Rngs(0))
  assert models.count_params(model)['total'] == 1683
  with pytest.raises(config_lib.ConfigError, match='model.dropout'):
    models.create_model({'name': 'ststnet', 'dropout': 1.5}, 3, rngs=nnx.Rngs(0))


def test_constant_schedule_is_plain_adam_at_the_configured_rate():
  import ml_collections  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from ferjax import plateau, steps  # pylint: disable=import-outside-toplevel
  train = ml_collections.ConfigDict(dict(
      optimizer='adamw', learning_rate=5e-2, weight_decay=0.0, momentum=0.9, grad_clip=0.0,
      schedule='constant', plateau_patience=2, plateau_factor=0.1, min_learning_rate=0.0,
      early_stop_patience=0))
  tx = steps.make_optimizer(train, total_steps=10, warmup_steps=0)
  reference = optax.adam(5e-2)
  params = {'w': {'kernel': jnp.array([1.0, -2.0, 3.0])}}
  state, ref_state = tx.init(params), reference.init(params)
  assert plateau.find(state) is None  # No plateau link: no validation split needed.
  for k in range(10):  # Through the end of the run: a cosine would have decayed to 0 by now.
    grads = {'w': {'kernel': jnp.array([0.3, 0.1, -0.2]) * (k + 1)}}
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = reference.update(grads, ref_state, params)
    np.testing.assert_allclose(updates['w']['kernel'], ref_updates['w']['kernel'], rtol=1e-6)


@pytest.mark.parametrize('side', [28, 29, 30, 31, 32])
def test_patch_matmul_and_tiled_max_pool_equal_the_library_layers(side):
  """The fast formulation is the same function as nnx.Conv (padding 2) and nnx.max_pool (3/3, pad 1),
  values and gradients (random inputs: no tied maxima)."""
  x = jax.random.normal(jax.random.key(0), (2, side, side, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))

  def library(x, kernel):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((2, 2), (2, 2)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return nnx.max_pool(y, (3, 3), strides=(3, 3), padding=((1, 1), (1, 1)))

  def fast(x, kernel):
    return ststnet.max_pool_3x3_stride3(ststnet.conv_patches(x) @ kernel.reshape(27, 5))

  np.testing.assert_allclose(fast(x, kernel), library(x, kernel), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))  # noqa: E731
  for got, want in zip(jax.grad(loss(fast), (0, 1))(x, kernel), jax.grad(loss(library), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
