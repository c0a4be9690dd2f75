"""Rematerialisation (`model.remat`) and the compute dtype (`model.dtype`, 'auto').

Remat must change memory, never values: with the same parameters and batch, remat on and off give the
same loss, gradients and BatchNorm statistics, while the activations saved for the backward pass shrink.
"""

import jax
# saved_residuals is what the public jax.ad_checkpoint.print_saved_residuals prints, as data.
from jax._src import ad_checkpoint
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ferjax import models, steps
from ferjax.models import attention, precision


def tiny_config(**overrides):
  cfg = dict(name='res_rbg', backbone='resnet50', width=4, stage_sizes=(1, 1, 1, 1),
             attention='geca', rbg_blocks=1, hidden=8, merge='sum', pooling='mean',
             dropout=0.0, dtype='float32', remat='none')
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def _loss_fn(graphdef, frames, labels):
  """train_step's loss: merge, forward in training mode, cross-entropy; BatchNorm stats as aux."""
  def loss_fn(params, rest):
    model = nnx.merge(graphdef, params, rest, copy=True)
    loss = steps.cross_entropy(model.logits(frames, train=True), labels, 0.0).mean()
    return loss, nnx.split(model, nnx.Param, ...)[2]
  return loss_fn


def _split(remat):
  model = models.create_model(tiny_config(remat=remat), 5, rngs=nnx.Rngs(params=0))
  return nnx.split(model, nnx.Param, ...)


FRAMES = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3), jnp.float32)
LABELS = jnp.array([0, 3])


def test_remat_gives_the_same_loss_gradients_and_batch_stats():
  results = {}
  for remat in ('none', 'blocks'):
    graphdef, params, rest = _split(remat)
    fn = jax.jit(jax.value_and_grad(_loss_fn(graphdef, FRAMES, LABELS), has_aux=True))
    results[remat] = jax.device_get(fn(params, rest))
  (loss0, stats0), grads0 = results['none']
  (loss1, stats1), grads1 = results['blocks']
  # Same parameters (same seed) and batch; remat only reorders float32 arithmetic (XLA fuses the
  # recomputed blocks differently), so values agree to a few float32 ulps, relative 1e-5.
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  flat0, flat1 = nnx.to_flat_state(grads0), nnx.to_flat_state(grads1)
  assert [p for p, _ in flat0] == [p for p, _ in flat1]
  for (path, g0), (_, g1) in zip(flat0, flat1):
    g0, g1 = np.asarray(g0.get_value()), np.asarray(g1.get_value())
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-5 * max(np.abs(g0).max(), 1e-3),
                               err_msg=str(path))
  assert sum(float(np.abs(np.asarray(v.get_value())).sum()) for _, v in flat0) > 0
  for (path, s0), (_, s1) in zip(nnx.to_flat_state(stats0), nnx.to_flat_state(stats1)):
    np.testing.assert_allclose(np.asarray(s1.get_value()), np.asarray(s0.get_value()), rtol=1e-5,
                               atol=1e-6, err_msg=str(path))


def _saved_bytes(remat, frames=FRAMES):
  """Bytes the backward pass keeps from the forward (residuals that are not the inputs themselves);
  traced only, nothing is compiled or run."""
  graphdef, params, rest = _split(remat)
  loss_fn = _loss_fn(graphdef, frames, LABELS)
  residuals = ad_checkpoint.saved_residuals(lambda p: loss_fn(p, rest)[0], params)
  return sum(aval.size * aval.dtype.itemsize for aval, src in residuals
             if not src.startswith('from the argument'))


def test_remat_keeps_fewer_activations_for_the_backward_pass():
  # Without remat the stem and every block save their convolutions', BatchNorms' and activations'
  # outputs; with it, only each block's input. Measured: 1.06 MB -> 0.17 MB.
  without, with_remat = _saved_bytes('none'), _saved_bytes('blocks')
  assert with_remat < 0.25 * without, (with_remat, without)


def test_remat_rejects_unknown_mode():
  with pytest.raises(ValueError, match='model.remat'):
    models.create_model(tiny_config(remat='all'), 5, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('backend,expected', [('tpu', jnp.bfloat16), ('gpu', jnp.bfloat16),
                                              ('cuda', jnp.bfloat16), ('cpu', jnp.float32)])
def test_auto_dtype_is_bfloat16_on_accelerators_float32_on_cpu(backend, expected):
  assert precision.resolve_dtype('auto', backend) == expected
  # Explicit names win over the backend.
  assert precision.resolve_dtype('float32', backend) == jnp.float32
  assert precision.resolve_dtype('bfloat16', backend) == jnp.bfloat16


def test_auto_dtype_follows_the_default_backend_and_keeps_params_float32():
  assert precision.resolve_dtype('auto') == (jnp.float32 if jax.default_backend() == 'cpu'
                                             else jnp.bfloat16)
  model = nnx.eval_shape(lambda: models.create_model(tiny_config(dtype='auto'), 5,
                                                     rngs=nnx.Rngs(0)))
  assert model.dtype == precision.resolve_dtype('auto')
  assert {v.dtype for v in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}
  with pytest.raises(ValueError, match='float16'):
    precision.resolve_dtype('float16')


def test_global_max_pool_has_jnp_max_values_and_gradient_with_ties():
  # Channel 0 has its maximum 2.0 twice (the gradient splits it), channel 1 once; bfloat16 like an
  # accelerator's compute dtype, and float32.
  x = np.zeros((1, 2, 2, 2), np.float32)
  x[0, :, :, 0] = [[2.0, 1.0], [2.0, -1.0]]
  x[0, :, :, 1] = [[0.5, 3.0], [-2.0, 1.0]]
  w = jnp.array([[1.5, -4.0]])
  for dtype in (jnp.float32, jnp.bfloat16):
    xd = jnp.asarray(x, dtype)
    mine = jax.grad(lambda v: (attention.global_max_pool(v) * w.astype(dtype)).sum())(xd)
    ref = jax.grad(lambda v: (jnp.max(v, axis=(1, 2)) * w.astype(dtype)).sum())(xd)
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0] = expected[0, 1, 0, 0] = 0.75
    expected[0, 0, 1, 1] = -4.0
    np.testing.assert_array_equal(np.asarray(mine, np.float32), expected)
    np.testing.assert_array_equal(np.asarray(mine, np.float32), np.asarray(ref, np.float32))
    np.testing.assert_array_equal(attention.global_max_pool(xd), jnp.max(xd, axis=(1, 2)))


def test_geca_keeps_no_feature_map_but_its_input_for_the_backward_pass():
  # jnp.max's JVP keeps a full-size indicator of the maxima; global_max_pool rebuilds it from the
  # input, which x * a keeps anyway. Only the input may be full size among G-ECA's residuals.
  x = jax.ShapeDtypeStruct((4, 8, 8, 16), jnp.bfloat16)
  for variant in ('avgmax', 'ghost'):
    geca = attention.GECA(16, variant=variant, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(geca)

    def run(params, x, graphdef=graphdef):
      return nnx.merge(graphdef, params)(x).astype(jnp.float32).sum()
    full = [src for aval, src in ad_checkpoint.saved_residuals(run, params, x)
            if aval.shape == x.shape]
    assert full == ['from the argument x'], full


def test_remat_keeps_only_the_units_inputs_in_the_compute_dtype():
  # remat='blocks' keeps, of the backbone's feature maps, exactly the remat units' inputs: the frames
  # (the stem's input), the stem's max-pool output (the first block's input) and every block's output
  # (the next block's input), in the compute dtype; nothing from inside a unit.
  frames = FRAMES.astype(jnp.bfloat16)
  graphdef, params, rest = nnx.split(models.create_model(
      tiny_config(remat='blocks', dtype='bfloat16'), 5, rngs=nnx.Rngs(params=0)), nnx.Param, ...)
  loss_fn = _loss_fn(graphdef, frames, LABELS)
  residuals = ad_checkpoint.saved_residuals(lambda p, f: loss_fn(p, rest)[0], params, frames)
  maps = sorted((aval.shape, str(aval.dtype)) for aval, _ in residuals
                if len(aval.shape) == 4 and aval.shape[0] == 8)
  # Width 4, bottlenecks (expansion 4), 32 px: frames, stem 8x8x4, stages 1-3 8x8x16, 4x4x32, 2x2x64
  # (stage 4's 1x1x128 output is only averaged, which needs nothing kept).
  expected = [(8, 32, 32, 3), (8, 8, 8, 4), (8, 8, 8, 16), (8, 4, 4, 32), (8, 2, 2, 64)]
  assert maps == sorted((s, 'bfloat16') for s in expected), maps
