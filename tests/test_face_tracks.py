"""ferjax.data.face_tracks: faces as tracks of detections over consecutive frames."""

import numpy as np
import pytest

from ferjax.data import face_tracks, faces


def test_iou_matrix_by_hand():
  a = np.array([[0, 0, 10, 10], [20, 20, 10, 10]], np.float32)
  b = np.array([[5, 0, 10, 10, 0.9]], np.float32)  # Half of a[0]: 50 / (100 + 100 - 50).
  np.testing.assert_allclose(face_tracks.iou_matrix(a, b), [[1 / 3], [0.0]])


def _moving_face(frame: int) -> list[float]:
  return [100 + 3 * frame, 50 + frame, 80, 80, 0.9]


def test_a_steady_face_is_one_track_and_isolated_hits_are_dropped():
  detections = []
  for k in range(10):
    found = [] if k == 4 else [_moving_face(k)]  # One missed frame: bridged.
    if k in (2, 7):  # False hits on the background, one frame each, in two places.
      found.append([300 + 40 * k, 10, 30, 30, 0.8])
    detections.append(np.array(found, np.float32).reshape(-1, 5))
  (track,) = face_tracks.track_faces(detections, min_length=3, max_gap=2)
  assert track.id == 0 and sorted(track.boxes) == [k for k in range(10) if k != 4]
  assert (track.first, track.last, track.length) == (0, 9, 9)
  np.testing.assert_array_equal(track.box(7), _moving_face(7)[:4])
  assert track.box(4) is None
  assert [b is None for b in track.frame_boxes(3, 6)] == [False, True, False]


def test_min_track_length_is_a_number_of_detections_capped_by_the_frames():
  hits = [np.array([[10, 10, 40, 40, 1.0]], np.float32)] * 4
  assert face_tracks.track_faces(hits, min_length=5) != []  # 4 frames, a face in all 4: kept.
  assert face_tracks.track_faces(hits + [np.zeros((0, 5))], min_length=5) == []  # 4 of 5: dropped.
  assert len(face_tracks.track_faces(hits[:1], min_length=5)) == 1  # One image: one frame suffices.
  with pytest.raises(ValueError, match='min_length >= 1'):
    face_tracks.track_faces(hits, min_length=0)


def test_a_gap_longer_than_max_gap_ends_a_track():
  face = np.array([[10, 10, 40, 40]], np.float32)  # No scores: a plain [N, 4] detector.
  empty = np.zeros((0, 4), np.float32)
  detections = [face] * 3 + [empty] * 3 + [face] * 2
  tracks = face_tracks.track_faces(detections, min_length=1, max_gap=2)
  assert [(t.first, t.last) for t in tracks] == [(0, 2), (6, 7)]
  (joined,) = face_tracks.track_faces(detections, min_length=1, max_gap=3)
  assert (joined.first, joined.last, joined.length) == (0, 7, 5)
  assert joined.boxes[0][4] == 1.0  # Score 1 for boxes given without one.


def test_two_faces_are_two_tracks_never_one_median_box():
  """Two faces of the same size, listed in a changing order: two tracks with their own boxes, and each
  track's stable box is its own face (a per-frame 'largest box' median would land between them)."""
  left, right = [40, 60, 90, 90, 0.9], [300, 70, 92, 92, 0.95]
  detections = [np.array([left, right] if k % 2 else [right, left], np.float32) for k in range(8)]
  detections[3] = np.array([left], np.float32)  # Right face missed once.
  tracks = face_tracks.track_faces(detections)
  assert [t.length for t in tracks] == [8, 7]
  assert [t.id for t in tracks] == [0, 1]
  for track, face in zip(tracks, (left, right)):
    box = faces.stable_box([track.box(k) for k in range(8)], margin=0.0)
    np.testing.assert_allclose(box, face[:3] + [face[2]], atol=1e-4)


def test_a_detection_feeds_one_track_and_a_track_takes_one_detection_per_frame():
  """Two overlapping detections in one frame (a face and a slightly shifted duplicate the NMS kept):
  the track takes the better overlap, the other starts its own (short) track."""
  face = [100, 100, 80, 80, 0.9]
  detections = [np.array([face], np.float32)] * 3 + [np.array([[102, 101, 80, 80, 0.9],
                                                               [130, 100, 80, 80, 0.6]], np.float32)]
  tracks = face_tracks.track_faces(detections, min_length=1)
  assert [t.length for t in tracks] == [4, 1]
  np.testing.assert_array_equal(tracks[0].box(3), [102, 101, 80, 80])


def test_scattered_hits_at_one_place_are_no_face_however_many():
  """A logo whose letters fire the detector every 6th frame for 100 frames: 17 hits linked into one
  track (gaps of 5 <= max_gap), but never 5 within 9 consecutive frames: no face. A face detected on
  every other frame is one."""
  logo = np.array([[200, 40, 30, 30, 0.8]], np.float32)
  empty = np.zeros((0, 5), np.float32)
  scattered = [logo if k % 6 == 0 else empty for k in range(100)]
  assert face_tracks.track_faces(scattered, min_length=5, max_gap=12) == []
  every_other = [logo if k % 2 == 0 else empty for k in range(100)]
  (track,) = face_tracks.track_faces(every_other, min_length=5, max_gap=12)
  assert track.length == 50
  # The first 5 detections exactly: 5 within 9 frames (0, 2, 4, 6, 8) is a face, 5 within 10 is not.
  assert len(face_tracks.track_faces(every_other[:9] + [empty] * 20, min_length=5)) == 1
  spread = [logo if k in (0, 2, 4, 6, 9) else empty for k in range(30)]
  assert face_tracks.track_faces(spread, min_length=5) == []
