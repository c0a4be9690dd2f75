"""The ResNet's fused training-mode BatchNorm (`resnet.batch_norm_train`) computes the same function as
Flax's `nnx.BatchNorm` (outputs, running averages, gradients), its 1x1 convolutions as matmuls
(`resnet.Conv1x1`) the same as `nnx.Conv`, alone and together inside a ResNet train step."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import pytest

from ferjax.models import resnet


def _pair(c, dtype=None, fused=True):
  """A fused ferjax BatchNorm and Flax's, with the same non-trivial scale, bias and running averages."""
  old = resnet.FUSED_BATCHNORM
  try:
    resnet.FUSED_BATCHNORM = fused
    ours = resnet._bn(c, dtype=dtype, rngs=nnx.Rngs(0))
  finally:
    resnet.FUSED_BATCHNORM = old
  flax_bn = nnx.BatchNorm(c, momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON, dtype=dtype,
                          rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  for bn in (ours, flax_bn):
    bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
    bn.mean[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32)
    rng = np.random.default_rng(1)  # The same values for both.
  return ours, flax_bn


def _value_and_grads(bn, x, dy):
  """Output, updated running averages and the gradients of sum(y * dy) w.r.t. x, scale and bias."""
  graphdef, params, rest = nnx.split(bn, nnx.Param, ...)

  def f(params, x):
    model = nnx.merge(graphdef, params, rest, copy=True)
    y = model(x, use_running_average=False)
    return jnp.sum(y.astype(jnp.float32) * dy), (y, nnx.state(model, nnx.BatchStat))

  (_, (y, stats)), (dparams, dx) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
      params, x)
  return y, stats['mean'][...], stats['var'][...], dx, dparams['scale'][...], dparams['bias'][...]


def test_fused_batchnorm_is_flax_batchnorm_float32():
  """Not centred, not unit-scale inputs (mean 3, std 2) over N, H, W: every output agrees with Flax's
  to float32 rounding (1e-5 relative to each quantity's scale)."""
  x = 3 + 2 * jax.random.normal(jax.random.key(0), (4, 6, 5, 16), jnp.float32)
  dy = jax.random.normal(jax.random.key(1), x.shape, jnp.float32)
  ours, flax_bn = _pair(16)
  assert ours.fused and type(ours) is not nnx.BatchNorm
  got, want = _value_and_grads(ours, x, dy), _value_and_grads(flax_bn, x, dy)
  for name, g, w in zip(('y', 'mean', 'var', 'dx', 'dscale', 'dbias'), got, want):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w))), err_msg=name)
  # The gradients are not trivially zero or the identity: dx of a BatchNorm sums to 0 per channel.
  np.testing.assert_allclose(jnp.sum(got[3], axis=(0, 1, 2)), 0, atol=1e-3)
  assert float(jnp.max(jnp.abs(got[3]))) > 0.1


def test_fused_batchnorm_statistics_gradients():
  """Gradients that reach x through the batch statistics themselves (d mean / dx, d var / dx) are the
  closed form's extra terms: checked against autodiff of the plain formula."""
  x = 1 + jax.random.normal(jax.random.key(2), (8, 3, 5), jnp.float32)
  scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1, 1, 5)
  w = jax.random.normal(jax.random.key(3), (3, 5))

  def loss(fn, x):
    y, mean, var = fn(x)
    return jnp.sum(y[0] * w) + jnp.sum(mean * jnp.arange(5.)) + jnp.sum(jnp.sqrt(var))

  def plain(x):
    mean = jnp.mean(x, (0, 1))
    var = jnp.mean(jnp.square(x - mean), (0, 1))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias, mean, var

  fused = lambda x: resnet.batch_norm_train(x, scale, bias, 1e-5)
  np.testing.assert_allclose(jax.grad(lambda x: loss(fused, x))(x),
                             jax.grad(lambda x: loss(plain, x))(x), atol=2e-5)


def test_fused_batchnorm_bfloat16_close_to_flax():
  """bfloat16 compute (accelerators): Flax normalises in bfloat16, the fused form in float32 and rounds
  once, so the two agree to bfloat16 precision (a few 1e-2 relative), not bit for bit."""
  x = (3 + 2 * jax.random.normal(jax.random.key(0), (4, 6, 5, 16))).astype(jnp.bfloat16)
  dy = jax.random.normal(jax.random.key(1), x.shape, jnp.float32)
  ours, flax_bn = _pair(16, dtype=jnp.bfloat16)
  got, want = _value_and_grads(ours, x, dy), _value_and_grads(flax_bn, x, dy)
  for name, g, w in zip(('y', 'mean', 'var', 'dx', 'dscale', 'dbias'), got, want):
    assert g.dtype == w.dtype, name
    scale = float(jnp.max(jnp.abs(w.astype(jnp.float32))))
    np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32), rtol=0,
                               atol=3e-2 * scale, err_msg=name)


def test_eval_mode_is_flax():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 8))
  ours, flax_bn = _pair(8)
  np.testing.assert_array_equal(ours(x, use_running_average=True),
                                flax_bn(x, use_running_average=True))


@pytest.mark.parametrize('attention', ['geca'])
def test_resnet_train_step_same_with_both_formulations(attention):
  """A tiny ResNet with G-ECA (stem, blocks, strided shortcut projections): the loss, every parameter
  gradient and the updated running averages agree between the default formulation (fused BatchNorm, 1x1
  convolutions as matmuls) and the plain one (Flax's BatchNorm, convolutions), 3e-4 of each leaf's
  scale."""
  # 64 px: at 16 px the last stage's BatchNorm normalises 2 values per channel, whose outputs are +-1
  # whatever the input, so every gradient below it would be float32 rounding noise (measured: 2 %).
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))

  def run(new):  # new: fused BatchNorm and 1x1 convolutions (the strided shortcuts) as matmuls.
    old = resnet.FUSED_BATCHNORM, resnet.DOT_1X1
    try:
      resnet.FUSED_BATCHNORM = resnet.DOT_1X1 = new
      model = resnet.ResNet('resnet18', width=4, stage_sizes=(1, 1, 1, 1), attention=attention,
                            num_classes=3, rngs=nnx.Rngs(0))
      assert isinstance(model.layer2[0].downsample.conv, resnet.Conv1x1) == new
    finally:
      resnet.FUSED_BATCHNORM, resnet.DOT_1X1 = old
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      logits = m(x, train=True)
      return jnp.mean(jax.nn.log_softmax(logits)[:, 0]), nnx.state(m, nnx.BatchStat)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (loss_f, stats_f), grads_f = run(True)
  (loss_o, stats_o), grads_o = run(False)
  np.testing.assert_allclose(loss_f, loss_o, rtol=1e-5)
  for tree_f, tree_o in ((grads_f, grads_o), (stats_f, stats_o)):
    leaves_f, leaves_o = jax.tree.leaves(tree_f), jax.tree.leaves(tree_o)
    assert len(leaves_f) == len(leaves_o) > 10
    for f, o in zip(leaves_f, leaves_o):
      # 3e-4: the G-ECA kernel's gradient sums over every channel and position (measured 1.2e-4).
      np.testing.assert_allclose(f, o, rtol=0, atol=3e-4 * float(jnp.max(jnp.abs(o))) + 1e-9)


@pytest.mark.parametrize('stride', [1, 2])
def test_conv1x1_as_matmul_is_the_convolution(stride):
  """`resnet.Conv1x1` (the `DOT_1X1` formulation) equals `nnx.Conv`'s 1x1 convolution with the same
  kernel, stride 2 on an odd size included (7 -> 4 rows, as the convolution's floor((7 - 1) / 2) + 1)."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 8))
  old = resnet.DOT_1X1
  try:
    resnet.DOT_1X1 = False
    conv = resnet._conv(8, 16, 1, stride, dtype=None, rngs=nnx.Rngs(0))
    resnet.DOT_1X1 = True
    dot = resnet._conv(8, 16, 1, stride, dtype=None, rngs=nnx.Rngs(0))
  finally:
    resnet.DOT_1X1 = old
  assert type(dot) is resnet.Conv1x1 and type(conv) is nnx.Conv
  want = conv(x)
  assert want.shape == (2, 4 if stride == 2 else 7, 4 if stride == 2 else 7, 16)
  np.testing.assert_allclose(dot(x), want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))
