"""ferjax.data.faces: real Haar detection on a drawn face, the stable sequence box, square crops."""

import importlib.util
import pathlib

import numpy as np
import pytest

from ferjax.data import faces

_SCRIPT = pathlib.Path(__file__).resolve().parent.parent / 'scripts' / 'make_dummy_data.py'
_spec = importlib.util.spec_from_file_location('make_dummy_data', _SCRIPT)
dummy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dummy)


@pytest.mark.parametrize('width,height', [(64, 48), (320, 240), (640, 490)])
def test_haar_finds_the_drawn_face(width, height):
  frame = dummy.draw_face(width, height, shift=(0.05, 0.0))
  box = faces.largest_box(faces.make_detector('haar')(frame))
  assert box is not None
  cx, cy, s = dummy.face_geometry(width, height, (0.05, 0.0))
  # The detected box is centred on the drawn face (within 10 % of its size).
  assert abs(box[0] + box[2] / 2 - cx) < 0.2 * s and abs(box[1] + box[3] / 2 - cy) < 0.2 * s


def test_no_face_in_a_blank_sequence_raises():
  blank = [np.full((48, 64, 3), 100, np.uint8)] * 3
  with pytest.raises(faces.NoFaceError, match='3 frames'):
    faces.crop_faces(blank, faces.make_detector('haar'), size=32)


def test_stable_box_uses_medians_and_ignores_an_outlier():
  boxes = [np.array([10, 10, 20, 20]), np.array([12, 10, 20, 20]), None,
           np.array([50, 0, 5, 5]), np.array([10, 12, 20, 20])]
  box = faces.stable_box(boxes, margin=0.5)
  # Median centre (21, 20) (the outlier's centre (52.5, 2.5) only shifts the even-count median) and
  # median side 20, * 1.5 = 30.
  np.testing.assert_allclose(box, [6, 5, 30, 30])
  with pytest.raises(faces.NoFaceError):
    faces.stable_box([None, None])


def test_box_from_landmarks_and_read_landmarks(tmp_path):
  points = np.array([[10, 20], [30, 25], [20, 60]], np.float32)
  path = tmp_path / 'S005_001_00000001_landmarks.txt'
  path.write_text(''.join(f'   {x:.7e}   {y:.7e}\n' for x, y in points))
  np.testing.assert_array_equal(faces.read_landmarks(path), points)
  np.testing.assert_array_equal(faces.box_from_landmarks(points), [10, 20, 20, 40])
  crop = faces.crop_faces([np.zeros((100, 100, 3), np.uint8)], landmarks=[points], size=16,
                          margin=0.0)
  np.testing.assert_allclose(crop.box, [0, 20, 40, 40])  # Square around the centre (20, 40).
  (tmp_path / 'bad.txt').write_text('1 2 3')
  with pytest.raises(ValueError, match='bad.txt'):
    faces.read_landmarks(tmp_path / 'bad.txt')


def test_crop_square_pads_outside_with_black_and_resizes():
  image = np.full((10, 10, 3), 255, np.uint8)
  crop = faces.crop_square(image, np.array([-5, 0, 10, 10], np.float32), size=10)
  assert crop.shape == (10, 10, 3)
  assert crop[:, :5].max() == 0 and crop[:, 5:].min() == 255  # Face stays centred, border is black.
  big = faces.crop_square(image, np.array([0, 0, 10, 10], np.float32), size=64)
  assert big.shape == (64, 64, 3) and big.min() == 255
  with pytest.raises(ValueError, match='outside'):
    faces.crop_square(image, np.array([20, 20, 5, 5], np.float32), size=8)


def test_centre_detector_and_detector_names():
  frame = np.zeros((48, 64, 3), np.uint8)
  np.testing.assert_array_equal(faces.make_detector('none')(frame), [[8, 0, 48, 48]])
  with pytest.raises(ValueError, match="one of \\('haar', 'yunet', 'none'\\)"):
    faces.make_detector('mtcnn')
  with pytest.raises(ValueError, match='YuNet ONNX'):
    faces.make_detector('yunet')
  with pytest.raises(FileNotFoundError, match='opencv_zoo'):
    faces.make_detector('yunet', '/nonexistent/yunet.onnx')


def test_crop_faces_one_box_for_all_frames():
  frames = [dummy.draw_face(64, 48, t=t) for t in (0.0, 0.5, 1.0)]
  crop = faces.crop_faces(frames, faces.make_detector('haar'), size=32, detect_frames=2)
  assert len(crop.frames) == 3 and all(f.shape == (32, 32, 3) for f in crop.frames)
  assert crop.box[2] == crop.box[3] > 20
  assert crop.frames[0][12:20, 12:20].mean() > 150  # The bright face fills the centre.
