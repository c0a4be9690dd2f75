"""`model.batchnorm_groups`: training-mode BatchNorm statistics per slice of the batch (PyTorch's per-GPU
BatchNorm without SyncBatchNorm) instead of over the global batch; `resnet.BATCHNORM_GROUPS`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
import pytest

from ferjax.models import res_rbg
from ferjax.models import resnet
from ferjax.models import rfscnn
from ferjax.models import rmn


def _bn(c, groups, fused=True):
  with resnet.formulation(fused_batchnorm=fused, batchnorm_groups=groups):
    bn = resnet.BatchNorm(c, momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
  bn.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
  bn.mean[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
  bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32)
  return bn


def _by_hand(x, scale, bias, eps=resnet.BN_EPSILON):
  """Batch statistics over every axis but the last (biased variance), in numpy float64."""
  axes = tuple(range(x.ndim - 1))
  mean, var = x.mean(axes), x.var(axes)
  return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


def _halves():
  """[4, 3, 2, 6]: two slices of 2 rows with different means and scales per channel."""
  rng = np.random.default_rng(0)
  return np.concatenate([3 + 2 * rng.normal(size=(2, 3, 2, 6)), -1 + 0.5 * rng.normal(size=(2, 3, 2, 6))])


@pytest.mark.parametrize('fused', [True, False])
def test_two_groups_normalise_each_half_by_its_own_statistics(fused):
  """Outputs are the per-half hand computation (not the global one); the running averages move toward
  the mean of the halves' statistics; the gradient of each half depends on that half alone."""
  x = _halves()
  bn = _bn(6, 2, fused)
  scale, bias = np.asarray(bn.scale[...], np.float64), np.asarray(bn.bias[...], np.float64)
  mean0, var0 = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
  y = np.asarray(bn(jnp.asarray(x, jnp.float32), use_running_average=False))
  halves = [_by_hand(h, scale, bias) for h in (x[:2], x[2:])]
  np.testing.assert_allclose(y, np.concatenate([h[0] for h in halves]), atol=1e-4)
  assert np.abs(y - _by_hand(x, scale, bias)[0]).max() > 0.5  # Global statistics differ.
  m = resnet.BN_MOMENTUM
  want_mean = m * mean0 + (1 - m) * (halves[0][1] + halves[1][1]) / 2
  want_var = m * var0 + (1 - m) * (halves[0][2] + halves[1][2]) / 2
  np.testing.assert_allclose(bn.mean[...], want_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.var[...], want_var, rtol=1e-5, atol=1e-5)

  # The gradient reaching the first half does not change when the second half does.
  dy = jax.random.normal(jax.random.key(1), x.shape)

  def dx(x):
    graphdef, state = nnx.split(_bn(6, 2, fused))
    f = lambda x: jnp.sum(nnx.merge(graphdef, state, copy=True)(x, use_running_average=False) * dy)
    return np.asarray(jax.grad(f)(jnp.asarray(x, jnp.float32)))

  other = x.copy()
  other[2:] = 10 * other[2:] + 4
  np.testing.assert_allclose(dx(x)[:2], dx(other)[:2], atol=1e-5)
  assert np.abs(dx(x)[2:] - dx(other)[2:]).max() > 1e-3


def test_one_group_is_the_global_batch_and_evaluation_is_unchanged():
  x = jnp.asarray(_halves(), jnp.float32)
  bn1, bn2 = _bn(6, 1), _bn(6, 2)
  scale, bias = np.asarray(bn1.scale[...], np.float64), np.asarray(bn1.bias[...], np.float64)
  np.testing.assert_allclose(bn1(x, use_running_average=False), _by_hand(_halves(), scale, bias)[0],
                             atol=1e-4)
  bn1, bn2 = _bn(6, 1), _bn(6, 2)
  np.testing.assert_array_equal(bn1(x, use_running_average=True), bn2(x, use_running_average=True))


def test_a_batch_not_divisible_by_the_groups_is_one_clear_error():
  with pytest.raises(ValueError, match=r'batchnorm_groups=3 needs a batch divisible by 3.*got 4 rows'):
    _bn(6, 3)(jnp.zeros((4, 6)), use_running_average=False)
  with pytest.raises(ValueError, match='batchnorm_groups must be >= 1'):
    with resnet.formulation(batchnorm_groups=0):
      pass


_FAMILIES = {  # Tiny model configs of the families that offer the field.
    'res_rbg': (res_rbg, dict(backbone='resnet18', width=4, stage_sizes=(1, 1, 1, 1), hidden=4,
                              rbg_blocks=1, bigru_layers=1, dropout=0.0)),
    'rfscnn': (rfscnn, dict(width=4, stage_sizes=(1, 1, 1, 1), grid=1, num_frames=4, spatial_hidden=4,
                            spatial_proj=1, spatial_out=4, temporal_hidden=4, temporal_proj=2,
                            temporal_out=4)),
    'rmn': (rmn, dict(width=4, stage_sizes=(1, 1, 1, 1), reconstruction_weight=1.0)),
}


def _build(family, groups):
  module, fields = _FAMILIES[family]
  return module.from_config(ml_collections.ConfigDict(dict(fields, batchnorm_groups=groups)), 3,
                            rngs=nnx.Rngs(0))


@pytest.mark.parametrize('family', sorted(_FAMILIES))
def test_the_field_reaches_every_batchnorm_of_the_family(family):
  """Every BatchNorm of the model (trunk, RBG blocks, pre-fusion norms, masks, decoder) is ferjax's and
  takes `model.batchnorm_groups`."""
  norms = [m for _, m in nnx.iter_graph(_build(family, 2)) if isinstance(m, nnx.BatchNorm)]
  assert len(norms) > 5
  assert all(isinstance(m, resnet.BatchNorm) and m.groups == 2 for m in norms)
  assert all(m.groups == 1 for _, m in nnx.iter_graph(_build(family, 1)) if isinstance(m, nnx.BatchNorm))


def test_per_device_statistics_make_each_slice_of_the_batch_independent():
  """Res-RBG with `model.batchnorm_groups=2`: a training-mode forward pass of a 4-sample batch equals
  the passes of its two halves apart with global statistics (what two GPUs without SyncBatchNorm
  compute); with `batchnorm_groups=1` the whole batch does not."""
  rng = np.random.default_rng(0)
  frames = jnp.asarray(rng.normal(size=(4, 2, 32, 32, 3)), jnp.float32)
  forward = nnx.jit(lambda model, frames: model({'frames': frames}, train=True)['logits'])
  apart = np.concatenate([forward(_build('res_rbg', 1), half) for half in (frames[:2], frames[2:])])
  np.testing.assert_allclose(forward(_build('res_rbg', 2), frames), apart, rtol=1e-4, atol=1e-5)
  assert np.abs(forward(_build('res_rbg', 1), frames) - apart).max() > 1e-3


def _sharded_main():
  """Run in a subprocess with 2 host devices: one BatchNorm under `jax.jit` on a batch sharded over
  them; prints its outputs and running variances against each device's share normalised alone."""
  mesh = jax.make_mesh((2,), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  x = jax.device_put(jnp.asarray(_halves(), jnp.float32), sharding)
  result = {'num_devices': jax.device_count()}
  # Each device's share (2 rows) normalised by itself: global statistics of a one-device batch.
  alone = [_bn(6, 1) for _ in range(2)]
  shares = jnp.asarray(_halves(), jnp.float32).reshape(2, 2, 3, 2, 6)
  per_device = np.concatenate([np.asarray(bn(share, use_running_average=False))
                               for bn, share in zip(alone, shares)])
  var = np.mean([np.asarray(bn.var[...]) for bn in alone], 0)
  for groups in (1, 2):
    graphdef, state = nnx.split(_bn(6, groups))

    @jax.jit
    def step(state, x):
      bn = nnx.merge(graphdef, state, copy=True)
      return bn(x, use_running_average=False), nnx.state(bn, nnx.BatchStat)

    y, stats = step(state, x)
    result[f'sharded_{groups}'] = y.sharding.is_equivalent_to(sharding, y.ndim)
    result[f'max_diff_per_device_{groups}'] = float(np.abs(np.asarray(y) - per_device).max())
    result[f'max_diff_var_{groups}'] = float(np.abs(np.asarray(stats['var'][...]) - var).max())
  print(json.dumps(result))


def test_on_two_devices_each_device_normalises_its_own_share():
  """A batch sharded over 2 (forced host) devices under `jax.jit`: with 2 groups each device's share is
  normalised as that share alone would be, and the output stays sharded; 1 group differs."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r['num_devices'] == 2 and r['sharded_2']
  assert r['max_diff_per_device_2'] < 1e-4 < r['max_diff_per_device_1']
  # The running variance: the mean of the two devices' (replicated: the same on both devices).
  assert r['max_diff_var_2'] < 1e-5 < r['max_diff_var_1']


if __name__ == '__main__':
  _sharded_main()
