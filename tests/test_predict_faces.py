"""python -m ferjax.predict and faces: the training data's detector, face tracks, no-face videos, two faces.

Real OpenCV detectors on real pictures (matplotlib's sample portrait of Grace Hopper) and on the project's
procedural faces; the tiny trained run of test_predict.py (shared, predict_helpers.shared_run).
"""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pytest

from ferjax import predict
from ferjax.data import face_tracks, faces
from tfds_builders import sequence_builder

sys.path.insert(0, os.path.dirname(__file__))
import predict_helpers as helpers  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, synthetic_tiny):
  return helpers.shared_run(tmp_path_factory, 'res_rbg_6_steps', helpers.train_tiny_run, synthetic_tiny)


def _hopper() -> np.ndarray:
  path = os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
  return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def _sky(width: int, height: int) -> np.ndarray:
  t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
  sky = np.array([70, 120, 200], np.float32) * (1 - t) + np.array([190, 215, 240], np.float32) * t
  return np.broadcast_to(sky, (height, width, 3)).astype(np.uint8).copy()


def _text_frames(n: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
  """A drawn video of a title and a logo word moving over a sky: no face."""
  frames = []
  for t in range(n):
    frame = _sky(width, height)
    cv2.putText(frame, 'BREAKING NEWS', (10 + 3 * t, 90), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 3,
                cv2.LINE_AA)
    cv2.putText(frame, 'ferjax', (150 - 2 * t, 190), cv2.FONT_HERSHEY_TRIPLEX, 1.6, (20, 40, 160), 4,
                cv2.LINE_AA)
    frames.append(frame)
  return frames


def _paste_face(frame: np.ndarray, face: np.ndarray, x: int, y: int) -> None:
  frame[y:y + face.shape[0], x:x + face.shape[1]] = face


# ----------------------------------------------------------------------------------------------------------
# The detector: the training data's.


def test_predict_defaults_to_the_training_datas_detector_and_warns_on_another():
  builder_crop = predict.crop_from_options(
      dataclasses.asdict(sequence_builder.SequenceConfig(name='x').crop_options()))
  assert predict.resolve_detector(None, builder_crop) == ('haar', None)
  assert predict.resolve_detector('haar', builder_crop) == ('haar', None)
  name, warning = predict.resolve_detector('blazeface', builder_crop)
  assert name == 'blazeface' and "cropped with 'haar'" in warning and 'other crops' in warning
  blaze = predict.crop_from_options({'face_detector': 'blazeface', 'margin': 0.25, 'size': 256})
  assert predict.resolve_detector(None, blaze) == ('blazeface', None)
  # Whole rendered frames: faces are still found (to tell frames with a face), with the default.
  frames = {'detector': 'none', 'margin': 0.0, 'size': 32}
  assert predict.resolve_detector(None, frames) == (faces.DEFAULT_DETECTOR, None)
  assert predict.resolve_detector('blazeface', frames) == ('blazeface', None)


def test_builder_crop_and_predict_crop_of_a_real_clip_agree(tmp_path):
  """The same real clip (Hopper's portrait drifting over a 640x480 frame): the crop box the builder
  stores (`process_sequence`, default CropOptions, recorded in the dataset metadata) and the one
  predict cuts (its detector resolved from that metadata, the face's track, medians over the builder's
  detect_frames of the clip plus the metadata's margin) overlap by IoU >= 0.95. BlazeFace, predict's
  earlier default, frames the face ~10 % smaller and lower: its box is far below that."""
  portrait = cv2.resize(_hopper(), (256, 300), interpolation=cv2.INTER_AREA)
  frames = []
  for t in range(12):
    frame = np.full((480, 640, 3), 90, np.uint8)
    _paste_face(frame, portrait, 150 + 6 * t, 80 + 2 * t)
    frames.append(frame)
  video = helpers.write_video(tmp_path / 'hopper.avi', frames)
  options = sequence_builder.SequenceConfig(name='x').crop_options()
  source = sequence_builder.SequenceSource(sequence_id='hopper', label='neutral', subject='h', split='x',
                                           video=video)
  example = sequence_builder.process_sequence(source, options).example
  assert example is not None
  built = example['face_box']

  from ferjax.data import media  # pylint: disable=import-outside-toplevel
  decoded, _ = media.read_video(video)
  crop = predict.crop_from_options(dataclasses.asdict(options))

  def predict_box(detector_name):
    detector = faces.make_detector(detector_name)
    opts = predict.Options(window=12, stride=12, margin=crop['margin'], crop_size=crop['size'], eval_crop=1.0,
                           detect_frames=crop['detect_frames'])
    tracks, _ = predict.detect_tracks(decoded, detector, opts)
    return predict.window_box(tracks[0].frame_boxes(0, len(decoded)), opts.margin, opts.detect_frames)

  name, _ = predict.resolve_detector(None, crop)
  iou = face_tracks.iou_matrix(np.array([built]), np.array([predict_box(name)]))[0, 0]
  assert iou >= 0.95, (built, predict_box(name))
  old_default = face_tracks.iou_matrix(np.array([built]), np.array([predict_box('blazeface')]))[0, 0]
  assert old_default < 0.9, old_default


# ----------------------------------------------------------------------------------------------------------
# No face; isolated hits; two faces.


def test_a_drawn_text_video_is_no_face(run_dir, tmp_path):
  video = helpers.write_video(tmp_path / 'news.avi', _text_frames(24))
  proc = subprocess.run([sys.executable, '-m', 'ferjax.predict', '--workdir', run_dir, video, '--quiet'],
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'PYTHONPATH': helpers.REPO})
  assert proc.returncode == predict.EXIT_SOME_FAILED, proc.stdout + proc.stderr
  assert 'news.avi: no face' in proc.stderr


def test_isolated_face_frames_are_no_face(run_dir, tmp_path, capsys):
  """A text video in which a real face flashes up in 2 single frames: each is a hit a detector makes,
  but no face is seen in --min-track-length consecutive frames, so the answer is "no face"; with the
  face on screen for 6 frames it is a face."""
  face = cv2.resize(_hopper(), (128, 150), interpolation=cv2.INTER_AREA)
  frames = _text_frames(24)
  for k in (5, 15):
    _paste_face(frames[k], face, 100, 40)
  flashes = helpers.write_video(tmp_path / 'flashes.avi', frames)
  assert predict.run(['--workdir', run_dir, flashes, '--quiet']) == predict.EXIT_SOME_FAILED
  err = capsys.readouterr().err
  assert 'no face: detections in 2 of its 24 frames, but none seen in 5 frames' in err, err
  frames = _text_frames(24)
  for k in range(8, 14):
    _paste_face(frames[k], face, 100 + 2 * k, 40)
  steady = helpers.write_video(tmp_path / 'steady.avi', frames)
  assert predict.run(['--workdir', run_dir, steady, '--quiet', '--json', str(tmp_path / 'p.json')]) == 0
  (result,) = json.loads((tmp_path / 'p.json').read_text())['results']
  assert [i for i, f in enumerate(result['face']) if f] == list(range(8, 14))
  assert len(result['tracks']) == 1 and result['label'] is not None


def test_two_faces_are_two_tracks_with_their_own_results(run_dir, tmp_path):
  """Two procedural faces side by side (different subjects and expressions): predict reports two
  tracks, each cropped from its own half of the frame, with its own windows and label, in the table,
  the JSON and the CSV."""
  left = helpers.face_frames('happiness', 8, subject=1)
  right = helpers.face_frames('surprise', 8, subject=2)
  frames = [np.concatenate([a, np.zeros((64, 32, 3), np.uint8), b], 1) for a, b in zip(left, right)]
  video = helpers.write_video(tmp_path / 'two.avi', frames)
  proc = subprocess.run(
      [sys.executable, '-m', 'ferjax.predict', '--workdir', run_dir, video, '--crop', 'face', '--quiet',
       '--json', str(tmp_path / 'p.json'), '--csv', str(tmp_path / 'p.csv')],
      capture_output=True, text=True, timeout=600, env={**os.environ, 'PYTHONPATH': helpers.REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '2 faces (tracks)' in proc.stdout and 'face 0:' in proc.stdout and 'face 1:' in proc.stdout
  (result,) = json.loads((tmp_path / 'p.json').read_text())['results']
  tracks = result['tracks']
  # Each face seen in at least --min-track-length (5) of the 8 frames (BlazeFace sees the 160 px wide
  # frame at 128 px, where the drawn faces' scores come near its threshold).
  assert len(tracks) == 2 and all(t['face_frames'] >= 5 for t in tracks), tracks
  centres = []
  for track in tracks:
    assert track['label'] is not None and len(track['windows']) >= 1
    for window in track['windows']:
      x, _, side, _ = window['face_box']
      centres.append(x + side / 2)
      # Each face's box lies in its own half (64 px face, 32 px gap, 64 px face): no median between.
      assert x + side <= 64 + 4 or x >= 96 - 4, window['face_box']
  assert min(centres) < 64 and max(centres) > 96
  assert tracks[0]['probs'] != tracks[1]['probs']
  rows = list(csv.DictReader(open(tmp_path / 'p.csv')))
  assert {r['track'] for r in rows} == {'0', '1'}
  assert [r['label'] for r in rows if r['window'] == 'clip'] == [t['label'] for t in tracks]
