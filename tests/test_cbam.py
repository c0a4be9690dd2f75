"""CBAM: the channel and spatial gates on a hand-computed example, and the gate's initial state."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ferjax.models import cbam


def _sigmoid(v):
  return 1 / (1 + np.exp(-np.asarray(v, np.float64)))


def test_gates_equal_a_hand_computed_example():
  # x [1, 2, 2, 2]: pixel (0, 0) = (1, -1), (0, 1) = (-2, 4), (1, 0) = (3, 2), (1, 1) = (0, 2).
  x = np.array([[[[1, -1], [-2, 4]], [[3, 2], [0, 2]]]], np.float32)
  module = cbam.CBAM(2, rngs=nnx.Rngs(0))  # Hidden max(2 // 16, 1) = 1.
  module.channel.fc1.kernel[...] = jnp.array([[0.5], [-0.25]])
  module.channel.fc1.bias[...] = jnp.array([0.1])
  module.channel.fc2.kernel[...] = jnp.array([[1.0, -2.0]])
  module.channel.fc2.bias[...] = jnp.array([0.0, 0.5])
  kernel = np.zeros((7, 7, 2, 1), np.float32)
  kernel[3, 3, :, 0] = (1.0, -0.5)  # Centre tap only: logit = max - 0.5 mean at each pixel.
  module.spatial.conv.kernel[...] = jnp.asarray(kernel)
  module.spatial.bn.scale[...] = jnp.array([2.0])
  module.spatial.bn.bias[...] = jnp.array([0.1])

  # Channel gate. Channel 0 holds 1, -2, 3, 0 (avg 0.5, max 3); channel 1 -1, 4, 2, 2 (avg 1.75, max 4).
  # MLP(avg): relu(0.5 * 0.5 - 0.25 * 1.75 + 0.1) = relu(-0.0875) = 0 -> (0, 0.5).
  # MLP(max): relu(0.5 * 3 - 0.25 * 4 + 0.1) = 0.6 -> (0.6, -1.2 + 0.5) = (0.6, -0.7).
  channel_gate = _sigmoid([0.0 + 0.6, 0.5 - 0.7])
  np.testing.assert_allclose(module.channel(jnp.asarray(x))[0, 0, 0], channel_gate, rtol=1e-6)
  gated = x[0] * channel_gate  # [2, 2, 2]
  # Spatial gate (evaluation BatchNorm: mean 0, variance 1): sigmoid(2 * logit / sqrt(1 + 1e-5) + 0.1).
  logit = gated.max(-1) - 0.5 * gated.mean(-1)
  spatial_gate = _sigmoid(2.0 * logit / np.sqrt(1 + 1e-5) + 0.1)
  want = gated * spatial_gate[..., None]
  got = module(jnp.asarray(x), train=False)
  np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


def test_spatial_gate_starts_at_one_half():
  module = cbam.CBAM(32, rngs=nnx.Rngs(0))
  assert module.channel.fc1.kernel.shape == (32, 2) and module.channel.fc1.bias is not None
  assert module.spatial.conv.bias is None
  np.testing.assert_array_equal(module.spatial.bn.scale[...], 0.0)
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 32))
  for train in (False, True):
    np.testing.assert_allclose(module.spatial(x, train), 0.5, rtol=1e-6)
