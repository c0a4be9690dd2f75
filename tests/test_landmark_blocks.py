"""The landmark_blocks input (ferjax/data/landmark_blocks.py): crop geometry, keypoint sources, BlazeFace
keypoints, and the synthetic micro set's keypoints."""

import numpy as np
import pytest

from ferjax.data import faces, inputs, landmark_blocks, micro_flow
from tfds_builders.synthetic_expressions import faces as synthetic_faces


def _coded(size: int) -> np.ndarray:
  """[size, size, 3]: channel 0 = row, channel 1 = column, channel 2 = 7, so a crop names its origin."""
  rows, cols = np.mgrid[:size, :size]
  return np.dstack([rows, cols, np.full_like(rows, 7)]).astype(np.float32)


def test_blocks_are_the_crops_around_eyes_and_mouth_corners_tiled_2x2():
  image = _coded(28)
  # (x, y) in pixels of the 28 grid: eyes at (9.5, 11.9) and (21.2, 11), nose (unused), mouth corners
  # at (3, 22) (clipped to x = 7) and (20.99, 27) (clipped to y = 21).
  pixels = np.array([[9.5, 11.9], [21.2, 11.0], [15.0, 17.0], [3.0, 22.0], [20.99, 27.0]])
  tiled = landmark_blocks.tile_blocks(image, pixels / 28)
  assert tiled.shape == (28, 28, 3)
  # Centres clipped to [7, 21], then truncated to integers (HTNet's astype(int)).
  expected_centres = [(9, 11), (21, 11), (7, 21), (20, 21)]
  quadrants = [tiled[:14, :14], tiled[:14, 14:], tiled[14:, :14], tiled[14:, 14:]]
  for quadrant, (cx, cy) in zip(quadrants, expected_centres):
    # Rows cy - 7 .. cy + 6 and columns cx - 7 .. cx + 6 of the image.
    np.testing.assert_array_equal(quadrant[:, :, 0], np.repeat(np.arange(cy - 7, cy + 7)[:, None], 14, 1))
    np.testing.assert_array_equal(quadrant[:, :, 1], np.repeat(np.arange(cx - 7, cx + 7)[None, :], 14, 0))
    assert (quadrant[:, :, 2] == 7).all()
  np.testing.assert_array_equal(landmark_blocks.centres(pixels / 28, 28)[[0, 1, 3, 4]], expected_centres)
  # HTNet's code indexes row x, column y: the same crops with rows and columns exchanged.
  swapped = landmark_blocks.tile_blocks(image, pixels / 28, axes='yx')
  (cx, cy) = expected_centres[0]
  np.testing.assert_array_equal(swapped[:14, :14, 0][:, 0], np.arange(cx - 7, cx + 7))
  np.testing.assert_array_equal(swapped[:14, :14, 1][0], np.arange(cy - 7, cy + 7))
  with pytest.raises(ValueError, match='multiple of 4'):
    landmark_blocks.tile_blocks(_coded(30), pixels / 28)


def test_keypoint_sources_record_canonical_and_bad_shapes():
  record = {'keypoints': np.full((5, 2), 0.5, np.float32)}
  np.testing.assert_array_equal(landmark_blocks.record_points(record, {}), record['keypoints'])
  canonical = landmark_blocks.canonical()
  assert canonical.shape == (5, 2) and canonical[0, 0] == pytest.approx(9.528073 / 28)
  np.testing.assert_array_equal(landmark_blocks.record_points({}, {}), canonical)
  np.testing.assert_array_equal(
      landmark_blocks.record_points(record, {landmark_blocks.SOURCE_KEY: 'canonical'}), canonical)
  custom = tuple(np.linspace(0.3, 0.7, 10))
  np.testing.assert_allclose(landmark_blocks.record_points({}, {landmark_blocks.CANONICAL_KEY: custom}),
                             np.reshape(custom, (5, 2)))
  with pytest.raises(ValueError, match=r'\[5, 2\]'):
    landmark_blocks.record_points({'keypoints': np.zeros((4, 2))}, {})
  check = landmark_blocks.INPUT.rules[landmark_blocks.CANONICAL_KEY]
  assert check(landmark_blocks.CANONICAL) is None and '10 numbers' in check((0.1, 0.2))
  assert '10 numbers' in check((2.0,) * 10)


def test_input_is_the_tiled_flow_of_the_record():
  rng = np.random.default_rng(0)
  frames = [rng.integers(0, 255, (32, 32, 3), np.uint8) for _ in range(4)]
  frames[2] = np.roll(frames[0], 1, axis=1)
  points = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.75], [0.65, 0.75]], np.float32)
  record = {'frames': frames, 'onset': 0, 'apex': 2, 'keypoints': points, 'sequence_id': b'lb-test'}
  view = inputs.View(frames, np.arange(1), 4, np.eye(2, 3), 28, options={micro_flow.CONFIG_KEY: 'dis'},
                     record=record)
  value = inputs.get(landmark_blocks.NAME).compute(view)
  flow = micro_flow.record_input(record, 28, 'dis')
  np.testing.assert_array_equal(value, landmark_blocks.tile_blocks(flow, points))
  assert value.shape == landmark_blocks.INPUT.shape(1, 28) and value.dtype == np.float32


def test_blazeface_keypoints_on_drawn_faces_match_their_geometry():
  detector = faces.BlazeFaceDetector()
  errors = []
  for i in range(3):
    identity = synthetic_faces.sample_identity(np.random.default_rng([20250101, 0, i]))
    image = synthetic_faces.render_face(identity, synthetic_faces.expression_aus('happiness', identity, 0.0),
                                        64)
    six = detector.keypoints(image)
    assert six is not None and six.shape == (6, 2)
    five = landmark_blocks.from_blazeface(six) / 64
    errors.append(np.abs(five - synthetic_faces.keypoints(identity)).max())
  # BlazeFace's points lie within 0.07 of the side of the drawn ones (2 px on the 28 px flow grid).
  assert max(errors) < 0.07, errors
  assert detector.keypoints(np.zeros((64, 64, 3), np.uint8)) is None


def test_from_blazeface_puts_the_mouth_corners_on_the_eye_axis():
  six = np.array([[10, 10], [20, 10], [15, 15], [15, 20], [5, 12], [25, 12]], np.float32)
  five = landmark_blocks.from_blazeface(six, mouth_width=0.8)
  np.testing.assert_allclose(five, [[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]])
  with pytest.raises(ValueError, match=r'\[6, 2\]'):
    landmark_blocks.from_blazeface(six[:5])
  # Into a crop box (x, y, side, side) = (5, 0, 40, 40): fractions of the crop's side.
  np.testing.assert_allclose(landmark_blocks.to_crop(five, np.array([5, 0, 40, 40])),
                             [[0.125, 0.25], [0.375, 0.25], [0.25, 0.375], [0.15, 0.5], [0.35, 0.5]])


def test_synthetic_keypoints_follow_the_head_pose():
  identity = synthetic_faces.sample_identity(np.random.default_rng([20250101, 0, 3]))
  rest = synthetic_faces.keypoints(identity)
  shifted = synthetic_faces.keypoints(identity, shift=(0.02, -0.01))
  np.testing.assert_allclose(shifted - rest, np.tile([0.02, -0.01], (5, 1)), atol=1e-6)
  # Rolled 90 degrees more about the face centre: an offset (dx, dy) from the centre becomes (-dy, dx).
  centre = np.asarray(identity.face_center) + identity.pose[1:]
  rolled = synthetic_faces.keypoints(identity, roll=90.0)
  base = rest - centre
  r = np.radians(identity.pose[0])
  unrolled = np.stack([base[:, 0] * np.cos(r) + base[:, 1] * np.sin(r),
                       -base[:, 0] * np.sin(r) + base[:, 1] * np.cos(r)], -1)
  r90 = np.radians(identity.pose[0] + 90)
  expected = np.stack([unrolled[:, 0] * np.cos(r90) - unrolled[:, 1] * np.sin(r90),
                       unrolled[:, 0] * np.sin(r90) + unrolled[:, 1] * np.cos(r90)], -1) + centre
  np.testing.assert_allclose(rolled, expected, atol=1e-6)
  # The eyes are where the frame is darkest around them (iris / pupil), not skin.
  quiet = synthetic_faces.Identity(**{**identity.__dict__, 'noise_sigma': 0.0})
  image = synthetic_faces.render_face(quiet, synthetic_faces.expression_aus('surprise', quiet, 0.0), 128)
  grey = image.mean(-1)
  for x, y in rest[:2] * 128:
    assert grey[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].min() < 0.6 * np.median(grey[48:80, 48:80])
