"""The procedural face drawing behind the synthetic_expressions dataset (no TFDS involved)."""

import cv2
import numpy as np
import pytest

from tfds_builders.synthetic_expressions import faces


def _identity(i):
  return faces.sample_identity(np.random.default_rng([99, i]))


def test_render_sequence_shape_and_determinism():
  identity = _identity(0)
  a = faces.render_sequence(identity, 'fear', 9, 40, np.random.default_rng(5))
  b = faces.render_sequence(identity, 'fear', 9, 40, np.random.default_rng(5))
  assert a.shape == (9, 40, 40, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  c = faces.render_sequence(identity, 'fear', 9, 40, np.random.default_rng(6))
  assert not np.array_equal(a, c)


def test_identities_differ():
  neutral = [faces.render_face(_identity(i), faces.expression_aus('anger', _identity(i), 0.0), 32)
             for i in range(6)]
  gaps = [np.abs(neutral[i].astype(np.float32) - neutral[j]).mean()
          for i in range(6) for j in range(i + 1, 6)]
  assert min(gaps) > 10.0, gaps


def test_intensity_curve_goes_from_neutral_to_apex():
  curve = faces.intensity_curve(10, onset=0.2, apex=0.7)
  assert curve[0] == 0.0 and curve[-1] == 1.0
  assert np.all(np.diff(curve) >= 0)
  assert curve[1] == 0.0 and curve[7] == 1.0  # t = 1/9 < onset; t = 7/9 > apex
  with pytest.raises(ValueError, match='at least 2 frames'):
    faces.intensity_curve(1, 0.0, 1.0)
  with pytest.raises(ValueError, match='onset < apex'):
    faces.intensity_curve(8, 0.5, 0.5)


def test_contempt_is_one_sided_and_follows_the_subject():
  for i in range(8):
    identity = _identity(i)
    aus = faces.expression_aus('contempt', identity)
    raised = 'lip_corner_up_r' if identity.contempt_side > 0 else 'lip_corner_up_l'
    lowered = 'lip_corner_up_l' if identity.contempt_side > 0 else 'lip_corner_up_r'
    assert aus[raised] == 1.0 and aus[lowered] == 0.0
  # In the picture: head upright, no noise, drawn at 1x so that the face's midline is a pixel
  # column;
  # then the change from neutral around the mouth is mirror-symmetric except in contempt.
  identity, px = _identity(1), 256
  cx, cy = identity.face_center
  mid = round((cx + identity.pose[1]) * px)
  shift = (mid / px - cx - identity.pose[1], 0.0)
  y = round((cy + identity.pose[2] + identity.mouth_dy) * px)

  def mouth(expression, intensity=1.0):
    aus = faces.expression_aus(expression, identity, intensity)
    img = faces.render_face(identity, aus, px, roll=-identity.pose[0], shift=shift, supersample=1)
    return img[y - 30:y + 20, mid - 50:mid + 51].astype(np.float32)

  def asymmetry(expression):
    change = mouth(expression) - mouth(expression, 0.0)
    return np.abs(change - change[:, ::-1]).mean()

  for expression in faces.EXPRESSIONS:
    # Anti-aliasing leaves < 1 grey level of asymmetry; contempt has ~13.
    if expression != 'contempt':
      assert asymmetry(expression) < 1.5, expression
  assert asymmetry('contempt') > 5.0


def test_unknown_expression_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown expression 'joy'"):
    faces.expression_aus('joy', _identity(0))


def test_expressions_are_separable_across_subjects():
  """A nearest-centroid classifier on (apex - first frame) images generalises to unseen subjects.

  A crude pixel-space check that each expression changes the face in its own way regardless of
  identity (chance is 1/7; the real models reach much more).
  """
  features, labels, subjects = [], [], []
  for s in range(28):
    identity = _identity(s)
    for k, expression in enumerate(faces.EXPRESSIONS):
      seq = faces.render_sequence(identity, expression, 5, 32, np.random.default_rng([7, s, k]))
      diff = np.abs(cv2.GaussianBlur(seq[-1].astype(np.float32) - seq[0], (0, 0), 1.5)).mean(-1)
      features.append(diff.ravel() / (np.linalg.norm(diff) + 1e-6))
      labels.append(k)
      subjects.append(s)
  features, labels, subjects = map(np.asarray, (features, labels, subjects))
  train, test = subjects < 20, subjects >= 20
  centroids = np.stack([features[train & (labels == k)].mean(0) for k in range(7)])
  dist = ((features[test][:, None] - centroids[None]) ** 2).sum(-1)
  accuracy = (dist.argmin(1) == labels[test]).mean()
  assert accuracy > 0.5, accuracy
