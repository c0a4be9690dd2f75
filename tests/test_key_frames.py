"""The onset_frame / apex_frame inputs (ferjax/data/key_frames.py): the record's frame at its onset or apex
index, through the example's own warp."""

import cv2
import numpy as np
import pytest

from ferjax.data import inputs
from ferjax.data import key_frames


def _record(**indices):
  rng = np.random.default_rng(0)
  frames = [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(5)]
  return {'frames': frames, **indices}


def _view(record, matrix=np.eye(2, 3), size=32, **options):
  return inputs.View(record['frames'][:1], np.arange(1), len(record['frames']), matrix, size,
                     options=options, record=record)


def test_identity_warp_gives_the_record_frames_at_onset_and_apex():
  record = _record(onset=1, apex=3)
  view = _view(record)
  np.testing.assert_array_equal(inputs.get(key_frames.ONSET).compute(view), record['frames'][1])
  np.testing.assert_array_equal(inputs.get(key_frames.APEX).compute(view), record['frames'][3])
  # Without onset/apex indices: the first and the last frame (micro_flow.onset_apex's rule).
  bare = _record()
  np.testing.assert_array_equal(inputs.get(key_frames.ONSET).compute(_view(bare)), bare['frames'][0])
  np.testing.assert_array_equal(inputs.get(key_frames.APEX).compute(_view(bare)), bare['frames'][4])


def test_the_frames_warp_applies_a_two_times_zoom_of_the_centre_and_the_fill():
  record = _record(onset=0, apex=2)
  # Output pixel (x, y) reads source (x / 2 + 8, y / 2 + 8): the centre 16 x 16 zoomed to 32 x 32.
  matrix = np.array([[0.5, 0.0, 8.0], [0.0, 0.5, 8.0]])
  apex = inputs.get(key_frames.APEX).compute(_view(record, matrix))
  assert apex.shape == (32, 32, 3) and apex.dtype == np.uint8
  np.testing.assert_array_equal(apex[::2, ::2], record['frames'][2][8:24, 8:24])
  # A shift that reads outside the image: 'black' fills zeros, 'reflect' mirrors the border.
  shift = np.array([[1.0, 0.0, -4.0], [0.0, 1.0, 0.0]])
  black = inputs.get(key_frames.APEX).compute(_view(record, shift, **{'augment.fill': 'black'}))
  np.testing.assert_array_equal(black[:, :4], 0)
  np.testing.assert_array_equal(black[:, 4:], record['frames'][2][:, :28])
  reflect = inputs.get(key_frames.APEX).compute(_view(record, shift, **{'augment.fill': 'reflect'}))
  np.testing.assert_array_equal(reflect[:, 3], record['frames'][2][:, 1])


def test_jpeg_frames_are_decoded_as_rgb_and_errors_name_what_is_missing():
  record = _record(onset=0, apex=1)
  encoded = [cv2.imencode('.png', cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in record['frames']]
  view = _view({**record, 'frames': encoded})
  np.testing.assert_array_equal(inputs.get(key_frames.APEX).compute(view), record['frames'][1])
  with pytest.raises(ValueError, match='apex_frame needs the record'):
    inputs.get(key_frames.APEX).compute(inputs.View(record['frames'], np.arange(5), 5, np.eye(2, 3), 32))
  with pytest.raises(ValueError, match='must index'):
    inputs.get(key_frames.ONSET).compute(_view(_record(onset=7, apex=1)))
  assert key_frames.ONSET in inputs.check(('frames', key_frames.ONSET, key_frames.APEX))
