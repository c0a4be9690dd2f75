"""Onset -> apex optical flow + optical strain (ferjax/data/micro_flow.py): analytic motions, the input."""

import cv2
import numpy as np
import pytest

from ferjax.data import augment, micro_flow, pipeline
from ferjax.models import ststnet  # noqa: F401  # Registers the onset_apex_flow input.

N = 96
# Content at p in the onset frame moves to A (p - c) + c + t in the apex frame: u, v are affine in (x, y),
# so the strain is the constant sqrt(a^2 + d^2 + 1/2 (b + c)^2).
A, B, C, D = 0.02, 0.01, -0.005, 0.03
SHIFT = (0.6, -0.4)


def _texture(seed: int = 0) -> np.ndarray:
  noise = np.random.default_rng(seed).uniform(0, 255, (N, N)).astype(np.float32)
  tex = cv2.GaussianBlur(noise, (0, 0), 2.0)
  return (tex - tex.min()) / (tex.max() - tex.min()) * 255


def _affine_pair():
  tex, centre = _texture(), N / 2
  a = np.array([[1 + A, B], [C, 1 + D]])
  m = np.hstack([a, (np.array(SHIFT) + centre - a @ [centre, centre])[:, None]])
  apex = cv2.warpAffine(tex, m, (N, N), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
  ys, xs = np.mgrid[0:N, 0:N].astype(np.float64) - centre
  u, v = A * xs + B * ys + SHIFT[0], C * xs + D * ys + SHIFT[1]
  rgb = lambda g: np.repeat(g.astype(np.uint8)[..., None], 3, axis=-1)  # noqa: E731
  return rgb(tex), rgb(apex), u, v


def test_strain_of_analytic_fields():
  ys, xs = np.mgrid[0:20, 0:30].astype(np.float64)
  strain = micro_flow.optical_strain(A * xs + B * ys, C * xs + D * ys)
  np.testing.assert_allclose(strain, np.sqrt(A ** 2 + D ** 2 + 0.5 * (B + C) ** 2), rtol=1e-6)
  # u = x^2 / 2, v = 0: u_x = x (central differences are exact for quadratics inside), strain = |x|.
  strain = micro_flow.optical_strain(xs ** 2 / 2, np.zeros_like(xs))
  np.testing.assert_allclose(strain[:, 1:-1], xs[:, 1:-1], rtol=1e-6)
  # A rigid rotation has no strain (u_y + v_x = 0, u_x = v_y = 0 for the infinitesimal rotation).
  np.testing.assert_allclose(micro_flow.optical_strain(-0.01 * ys, 0.01 * xs), 0, atol=1e-9)


@pytest.mark.parametrize('method', ['dis', 'tvl1'])
def test_flow_and_strain_of_a_known_affine_motion(method):
  if method == 'tvl1' and not micro_flow.has_tvl1():
    pytest.skip('this OpenCV has no contrib module (cv2.optflow)')
  onset, apex, u, v = _affine_pair()
  flow = micro_flow.optical_flow(onset, apex, method)
  inner = (slice(16, -16), slice(16, -16))  # Away from the reflected borders.
  for estimated, true in ((flow[..., 0], u), (flow[..., 1], v)):
    error = np.abs(estimated[inner] - true[inner])
    assert error.mean() < 0.06 and error.max() < 0.3, (error.mean(), error.max())
  strain = micro_flow.optical_strain(flow[..., 0], flow[..., 1])[inner]
  assert np.median(strain) == pytest.approx(np.sqrt(A ** 2 + D ** 2 + 0.5 * (B + C) ** 2), rel=0.1)
  # The model input: 28 x 28, u's ramp (increasing in x, since A > 0 dominates B) scaled to [0, 1].
  image = micro_flow.flow_strain(onset, apex, 28, method)
  assert image.shape == (28, 28, 3) and image.dtype == np.float32
  np.testing.assert_allclose(image.min(axis=(0, 1)), 0, atol=1e-6)
  np.testing.assert_allclose(image.max(axis=(0, 1)), 1, atol=1e-6)
  assert image[8:20, 20:24, 0].mean() > image[8:20, 4:8, 0].mean() + 0.2


def test_min_max_per_channel_and_constant_channel():
  image = np.stack([np.array([[1.0, 3.0], [2.0, 5.0]]), np.full((2, 2), 7.0)], axis=-1)
  out = micro_flow.min_max(image)
  np.testing.assert_allclose(out[..., 0], [[0, 0.5], [0.25, 1]])
  np.testing.assert_array_equal(out[..., 1], 0)


def test_method_errors_and_auto():
  assert micro_flow.resolve_method('auto') == ('tvl1' if micro_flow.has_tvl1() else 'dis')
  with pytest.raises(ValueError, match='one of'):
    micro_flow.resolve_method('farneback')
  with pytest.raises(ValueError, match='same size'):
    micro_flow.optical_flow(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), 'dis')


def test_pipeline_input_uses_the_records_onset_and_apex():
  onset, apex, _, _ = _affine_pair()
  still = onset.copy()
  # Frames: still, onset, still, apex: the input must read frames 1 and 3, not the first and the last.
  frames = [still, onset, still, apex, still]
  records = [{'frames': frames, 'label': 1, 'onset': 1, 'apex': 3, 'sequence_id': 'a'},
             {'frames': [onset, apex], 'label': 0, 'sequence_id': 'b'}]  # No indices: first -> last.
  loader = pipeline.train_loader(
      records, num_frames=2, image_size=28, options=augment.AugmentOptions(), batch_size_per_host=2,
      seed=0, inputs=('frames', micro_flow.NAME), input_options={micro_flow.CONFIG_KEY: 'dis'})
  batch = next(iter(loader))
  assert batch[micro_flow.NAME].shape == (2, 28, 28, 3)
  expected = micro_flow.flow_strain(onset, apex, 28, 'dis')  # The method the config's key picks.
  by_label = {int(label): x for label, x in zip(batch['label'], batch[micro_flow.NAME])}
  np.testing.assert_allclose(by_label[1], expected, atol=1e-6)
  np.testing.assert_allclose(by_label[0], expected, atol=1e-6)
  with pytest.raises(ValueError, match='must index'):
    micro_flow.onset_apex({'frames': frames, 'onset': 0, 'apex': 5})


def test_flow_does_not_depend_on_what_was_computed_before():
  """A reused OpenCV DIS instance carries state between calls: the same pair must give the same flow after
  pairs of other sizes."""
  onset, apex, _, _ = _affine_pair()
  first = micro_flow.flow_strain(onset, apex, 28, 'dis')
  rng = np.random.default_rng(0)
  for shape in [(48, 48, 3), (64, 64, 3), (17, 23, 3)]:
    micro_flow.flow_strain(rng.integers(0, 255, shape, np.uint8), rng.integers(0, 255, shape, np.uint8), 28, 'dis')
  np.testing.assert_array_equal(micro_flow.flow_strain(onset, apex, 28, 'dis'), first)
