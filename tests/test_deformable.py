"""Deformable convolution: torchvision parity (tests/data/deform_conv_reference.npz, values and gradients),
the plain convolution it reduces to, and the DCNv2 layer's initial state."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ferjax.models import deformable

DATA = os.path.join(os.path.dirname(__file__), 'data', 'deform_conv_reference.npz')
# Made by scripts/make_deform_conv_reference.py with torchvision.ops.deform_conv2d.
CASES = ('stride1', 'stride2', 'dilation2', 'groups2', 'edge', 'rect_kernel')
TOL = 1e-5

NCHW_TO_NHWC = (0, 2, 3, 1)


def _case(name):
  ref = np.load(DATA)
  get = lambda k: ref[f'{name}.{k}']
  sh, sw, ph, pw, dh, dw = (int(v) for v in get('conf'))
  return get, dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))


@pytest.mark.parametrize('method', ['dense', 'gather'])
@pytest.mark.parametrize('name', CASES)
def test_matches_torchvision_values_and_gradients(name, method):
  get, conf = _case(name)
  x, offset, mask = (jnp.asarray(get(k).transpose(NCHW_TO_NHWC)) for k in ('x', 'offset', 'mask'))
  kernel = jnp.asarray(get('weight').transpose(2, 3, 1, 0))
  cotangent = jnp.asarray(get('cotangent').transpose(NCHW_TO_NHWC))

  def loss(x, offset, mask, kernel):
    out = deformable.deform_conv2d(x, offset, mask, kernel, method=method, **conf)
    return jnp.sum(out * cotangent), out

  grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(x, offset, mask, kernel)
  np.testing.assert_allclose(out, get('out').transpose(NCHW_TO_NHWC), atol=TOL, rtol=TOL)
  for grad, key in zip(grads[:3], ('grad_x', 'grad_offset', 'grad_mask')):
    np.testing.assert_allclose(grad, get(key).transpose(NCHW_TO_NHWC), atol=TOL, rtol=TOL,
                               err_msg=key)
  np.testing.assert_allclose(grads[3], get('grad_weight').transpose(2, 3, 1, 0), atol=TOL,
                             rtol=TOL, err_msg='grad_weight')


def test_reference_cases_leave_the_image():
  """The edge case really samples outside the map: some outputs' taps read only zeros."""
  get, conf = _case('edge')
  h, w = get('x').shape[2:]
  offset = get('offset')
  dy = offset[:, 0::2]
  ys = np.arange(offset.shape[2])[None, None, :, None] * conf['stride'][0] - conf['padding'][0]
  assert np.any(ys + dy <= -1) and np.any(ys + dy >= h)
  assert np.any(np.abs(get('grad_offset')) == 0.0)  # Taps wholly off the map get no gradient.
  assert w == 6


@pytest.mark.parametrize('method', ['dense', 'gather'])
@pytest.mark.parametrize('stride,padding,dilation', [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_zero_offsets_and_unit_mask_equal_a_plain_convolution(method, stride, padding, dilation):
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (2, 9, 7, 6))
  kernel = jax.random.normal(k2, (3, 3, 6, 5))
  ho = deformable.output_size(9, 3, stride, padding, dilation)
  wo = deformable.output_size(7, 3, stride, padding, dilation)
  groups = 2
  offset = jnp.zeros((2, ho, wo, groups * 18))
  mask = jnp.ones((2, ho, wo, groups * 9))
  conv = jax.jit(lambda x, offset, mask: deformable.deform_conv2d(
      x, offset, mask, kernel, stride=stride, padding=padding, dilation=dilation, method=method))
  got = conv(x, offset, mask)
  want = jax.lax.conv_general_dilated(x, kernel, (stride,) * 2, ((padding,) * 2,) * 2,
                                      rhs_dilation=(dilation,) * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(conv(x, offset, None), want, atol=TOL, rtol=TOL)


def test_integer_shift_moves_the_image():
  """An offset of exactly (+1, 0) on every tap reads one row further down: a plain convolution whose
  window starts one row lower (padding 0 above, 2 below)."""
  x = jax.random.normal(jax.random.key(1), (1, 6, 5, 2))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 2, 3))
  offset = jnp.tile(jnp.array([1.0, 0.0]), (1, 6, 5, 9))
  want = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((0, 2), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  for method in ('dense', 'gather'):
    got = jax.jit(lambda x, o, method=method: deformable.deform_conv2d(
        x, o, None, kernel, padding=1, method=method))(x, offset)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)


def test_layer_starts_as_half_its_plain_convolution():
  layer = deformable.DeformConv(4, 6, 3, stride=2, padding=1, offset_groups=2, rngs=nnx.Rngs(0))
  assert layer.offset.kernel.shape == (3, 3, 4, 3 * 2 * 9)
  x = jax.random.normal(jax.random.key(3), (2, 8, 10, 4))
  offset, mask = layer.offsets_and_mask(x)
  assert offset.shape == (2, 4, 5, 36) and mask.shape == (2, 4, 5, 18)
  np.testing.assert_array_equal(offset, 0.0)
  np.testing.assert_array_equal(mask, 0.5)
  want = jax.lax.conv_general_dilated(x, layer.kernel[...], (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), 0.5 * want, atol=TOL, rtol=TOL)


def test_layer_splits_offsets_and_mask_logits():
  """The first 2 G k k outputs of the offset convolution are the offsets, the last G k k the mask
  logits: with only the mask biases set, offsets stay 0 and the mask is their sigmoid."""
  layer = deformable.DeformConv(2, 2, 3, offset_groups=1, rngs=nnx.Rngs(0))
  bias = np.zeros(27, np.float32)
  bias[18:] = np.linspace(-2, 2, 9)
  bias[3] = 0.25  # Tap 1's dx.
  layer.offset.bias[...] = jnp.asarray(bias)
  offset, mask = layer.offsets_and_mask(jnp.ones((1, 4, 4, 2)))
  np.testing.assert_allclose(offset[0, 0, 0], bias[:18])
  np.testing.assert_allclose(mask[0, 0, 0], jax.nn.sigmoid(bias[18:]), rtol=1e-6)


def test_bad_shapes_name_what_was_expected():
  x = jnp.zeros((1, 5, 5, 4))
  kernel = jnp.zeros((3, 3, 4, 2))
  with pytest.raises(ValueError, match=r'offset must be \[N, Ho, Wo, G \* 2 \* 9\]'):
    deformable.deform_conv2d(x, jnp.zeros((1, 5, 5, 17)), None, kernel, padding=1)
  with pytest.raises(ValueError, match='G dividing 4 channels'):
    deformable.deform_conv2d(x, jnp.zeros((1, 5, 5, 3 * 18)), None, kernel, padding=1)
  with pytest.raises(ValueError, match='mask must be'):
    deformable.deform_conv2d(x, jnp.zeros((1, 5, 5, 18)), jnp.zeros((1, 5, 5, 18)), kernel,
                             padding=1)
  with pytest.raises(ValueError, match='kernel expects 4 input channels, x has 3'):
    deformable.deform_conv2d(jnp.zeros((1, 5, 5, 3)), jnp.zeros((1, 5, 5, 18)), None, kernel,
                             padding=1)
  with pytest.raises(ValueError, match='method must be one of'):
    deformable.deform_conv2d(x, jnp.zeros((1, 5, 5, 18)), None, kernel, padding=1, method='loop')


def test_benchmark_reports_both_layers_and_their_ratio():
  from ferjax import benchmark
  result = benchmark.run_deformable(batch=2, px=5, channels=4, num_steps=1, method='gather')
  assert result['shape'] == '2 x 5 x 5 x 4' and result['method'] == 'gather'
  for key in ('plain_wall_s', 'deformable_wall_s', 'plain_cpu_s', 'deformable_cpu_s'):
    assert result[key] > 0
  assert result['ratio_wall'] > 0 and result['ratio_cpu'] > 0


@pytest.mark.parametrize('side,method,scatters', [(4, 'dense', False), (4, 'auto', False),
                                                  (4, 'gather', True), (17, 'auto', True)])
def test_dense_backward_has_no_scatter_and_auto_picks_it_for_small_maps(side, method, scatters):
  """The dense formulation's gradient program (its custom VJP) is matmuls, no scatter-add (XLA:CPU runs
  scatters serially); 'auto' is dense up to DENSE_MAX_PIXELS (16 x 16) and the gather above."""
  x = jnp.ones((1, side, side, 4))
  kernel = jnp.ones((3, 3, 4, 2))
  loss = lambda x, o, m: deformable.deform_conv2d(x, o, m, kernel, padding=1, method=method).sum()
  offset, mask = jnp.zeros((1, side, side, 18)), jnp.ones((1, side, side, 9))
  program = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, offset, mask))
  assert ('scatter' in program) == scatters
