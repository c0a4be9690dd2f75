"""Face detection and square face crops for image sequences, with OpenCV.

The same code serves the TFDS builders and inference on videos. A sequence gets **one** crop box, not one
per frame: per-frame boxes jitter by a few pixels, and that jitter would look like facial motion to a
sequence model. The box is found as follows:

1. Detect faces on up to ``detect_frames`` evenly spaced frames (or take landmark boxes where a dataset ships
   landmarks) and keep the largest face of each frame.
2. Smooth over frames: the box centre and side are the **medians** over the frames with a face, which
   ignores occasional false detections.
3. Make it square (side = max(width, height)) and add ``margin`` (a fraction of the side) around it.
4. Crop every frame with that box; where the box leaves the image the crop is padded with black (the face
   stays centred instead of being shifted), then resized to ``size`` x ``size``.

Detectors: ``'haar'`` (OpenCV's frontal-face Haar cascade, shipped with opencv-python 4.x; the default),
``'yunet'`` (``cv2.FaceDetectorYN``; the user supplies the ONNX model file), ``'none'`` (a centred square
of the frame: for data that is already cropped, or tests).
"""

from collections.abc import Callable, Sequence
import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np

from ferjax.data import media

DETECTORS = ('haar', 'yunet', 'none')

# A detector maps one RGB uint8 frame to an array of boxes [N, 4] = (x, y, w, h) in pixels.
FaceDetector = Callable[[np.ndarray], np.ndarray]


class NoFaceError(ValueError):
  """No face was found in any of the frames looked at."""


def _downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  """Shrinks large frames before detection (speed); returns the image and the factor to undo it."""
  scale = max(rgb.shape[:2]) / max_side
  if scale <= 1:
    return rgb, 1.0
  h, w = rgb.shape[:2]
  small = cv2.resize(rgb, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_AREA)
  return small, scale


class HaarDetector:
  """OpenCV's frontal-face Haar cascade.

  Args:
    cascade: file name under ``cv2.data.haarcascades`` or a path to a cascade XML.
    scale_factor, min_neighbors: ``detectMultiScale`` parameters (OpenCV's usual values).
    min_size_fraction: smallest face, as a fraction of the shorter image side; FER datasets show one large
      face, so small detections are background.
    max_side: frames are shrunk to this longer side before detection: a face in FER data is large, and
      detection time grows with the pixel count (640x490 -> 320x245 is 3-4x faster).
  """

  def __init__(self, cascade: str = 'haarcascade_frontalface_default.xml', scale_factor: float = 1.1,
               min_neighbors: int = 5, min_size_fraction: float = 0.1, max_side: int = 320):
    path = cascade if os.path.isfile(cascade) else os.path.join(cv2.data.haarcascades, cascade)
    self._classifier = cv2.CascadeClassifier(path)
    if self._classifier.empty():
      raise FileNotFoundError(
          f'cannot load Haar cascade {path!r}; opencv-python(-headless) 4.x ships them under '
          f'{cv2.data.haarcascades!r} (5.x does not)')
    self.scale_factor = scale_factor
    self.min_neighbors = min_neighbors
    self.min_size_fraction = min_size_fraction
    self.max_side = max_side

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    small, scale = _downscale(rgb, self.max_side)
    grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    min_side = max(20, int(self.min_size_fraction * min(grey.shape)))
    boxes = self._classifier.detectMultiScale(
        grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
        minSize=(min_side, min_side))
    return np.asarray(boxes, np.float32).reshape(-1, 4) * scale


class YuNetDetector:
  """OpenCV's YuNet CNN face detector (``cv2.FaceDetectorYN``) with a user-supplied ONNX model.

  The model (``face_detection_yunet_2023mar.onnx``) is distributed by the OpenCV Zoo under the MIT licence.
  """

  def __init__(self, model_path: str | os.PathLike, score_threshold: float = 0.7,
               max_side: int = 640):
    if not Path(model_path).is_file():
      raise FileNotFoundError(
          f'YuNet model file not found: {model_path} (download face_detection_yunet_2023mar.onnx '
          'from the OpenCV Zoo, github.com/opencv/opencv_zoo)')
    self._detector = cv2.FaceDetectorYN.create(str(model_path), '', (320, 320), score_threshold)
    self.max_side = max_side

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    small, scale = _downscale(rgb, self.max_side)
    self._detector.setInputSize((small.shape[1], small.shape[0]))
    _, faces = self._detector.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if faces is None:
      return np.zeros((0, 4), np.float32)
    return np.asarray(faces[:, :4], np.float32) * scale


def centre_box(image_shape: Sequence[int]) -> np.ndarray:
  """The largest centred square of an image, as (x, y, w, h)."""
  h, w = image_shape[:2]
  side = min(h, w)
  return np.array([(w - side) / 2, (h - side) / 2, side, side], np.float32)


def centre_detector(rgb: np.ndarray) -> np.ndarray:
  """The ``'none'`` detector: every frame's "face" is its centred square."""
  return centre_box(rgb.shape)[None]


def make_detector(name: str = 'haar', model_path: str | os.PathLike | None = None) -> FaceDetector:
  """A detector by name: ``'haar'``, ``'yunet'`` (needs ``model_path``) or ``'none'`` (centre square)."""
  if name == 'haar':
    return HaarDetector()
  if name == 'yunet':
    if model_path is None:
      raise ValueError("face_detector='yunet' needs the path of the YuNet ONNX model")
    return YuNetDetector(model_path)
  if name == 'none':
    return centre_detector
  raise ValueError(f'unknown face detector {name!r}; expected one of {DETECTORS}')


def largest_box(boxes: np.ndarray) -> np.ndarray | None:
  """The box with the largest area out of [N, 4] boxes, or None when there are none."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  if not len(boxes):
    return None
  return boxes[np.argmax(boxes[:, 2] * boxes[:, 3])]


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
  """A landmark file of whitespace-separated ``x y`` rows (CK+: 68 points) -> float32 [N, 2]."""
  try:
    values = np.array(Path(path).read_text().split(), np.float32)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read landmarks from {path}: {e}') from e
  if values.size < 4 or values.size % 2:
    raise ValueError(f'expected rows of "x y" in {path}, got {values.size} numbers')
  return values.reshape(-1, 2)


def box_from_landmarks(points: np.ndarray) -> np.ndarray:
  """The bounding box (x, y, w, h) of landmark points [N, 2].

  68-point landmarks span brows to chin, a little less than a detector's box; the crop margin covers it.
  """
  points = np.asarray(points, np.float32).reshape(-1, 2)
  x0, y0 = points.min(0)
  x1, y1 = points.max(0)
  return np.array([x0, y0, x1 - x0, y1 - y0], np.float32)


def stable_box(boxes: Sequence[np.ndarray | None], margin: float = 0.25) -> np.ndarray:
  """One square box (x, y, side, side) for a sequence from per-frame boxes (None = no face in that frame).

  Centre and side are medians over the frames with a face; the side is max(w, h) * (1 + margin).
  """
  found = np.array([b for b in boxes if b is not None], np.float32).reshape(-1, 4)
  if not len(found):
    raise NoFaceError(f'no face found in any of the {len(boxes)} frames examined')
  cx = np.median(found[:, 0] + found[:, 2] / 2)
  cy = np.median(found[:, 1] + found[:, 3] / 2)
  side = np.median(np.maximum(found[:, 2], found[:, 3])) * (1 + margin)
  return np.array([cx - side / 2, cy - side / 2, side, side], np.float32)


def crop_square(rgb: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
  """Crops the square ``box`` (x, y, side, side) out of ``rgb`` (padding with black) and resizes it."""
  x, y, side = (int(round(v)) for v in box[:3])
  side = max(side, 1)
  h, w = rgb.shape[:2]
  x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, w), min(y + side, h)
  if x1 <= x0 or y1 <= y0:
    raise ValueError(f'crop box {box.tolist()} lies outside the {w}x{h} image')
  crop = rgb[y0:y1, x0:x1]
  if (x0, y0, x1, y1) != (x, y, x + side, y + side):
    crop = cv2.copyMakeBorder(crop, y0 - y, y + side - y1, x0 - x, x + side - x1,
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))
  interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
  return cv2.resize(crop, (size, size), interpolation=interpolation)


@dataclasses.dataclass(frozen=True)
class FaceCrop:
  """Face crops of one sequence: ``frames`` RGB uint8 [size, size, 3] each, and the box used."""
  frames: list[np.ndarray]
  box: np.ndarray  # (x, y, side, side) in the original frames' pixels.


def sequence_box(frames: Sequence[np.ndarray], detector: FaceDetector | None = None, *,
                 landmarks: Sequence[np.ndarray | None] | None = None, margin: float = 0.25,
                 detect_frames: int = 8) -> np.ndarray:
  """The stable square face box of a sequence.

  Landmark boxes are used when ``landmarks`` has any (one entry per frame, None where missing); otherwise
  ``detector`` runs on up to ``detect_frames`` evenly spaced frames. Raises :class:`NoFaceError`.
  """
  if not frames:
    raise ValueError('sequence_box needs at least one frame')
  if landmarks is not None and any(p is not None for p in landmarks):
    boxes = [None if p is None else box_from_landmarks(p) for p in landmarks]
  else:
    if detector is None:
      raise ValueError('sequence_box needs a detector when no landmarks are given')
    picks = media.evenly_spaced(len(frames), detect_frames)
    boxes = [largest_box(detector(frames[i])) for i in picks]
  return stable_box(boxes, margin)


def crop_faces(frames: Sequence[np.ndarray], detector: FaceDetector | None = None, *,
               size: int = 256, landmarks: Sequence[np.ndarray | None] | None = None,
               margin: float = 0.25, detect_frames: int = 8) -> FaceCrop:
  """Square face crops of a sequence, all cut with one stable box (see the module docstring).

  Args:
    frames: RGB uint8 frames of one sequence.
    detector: from :func:`make_detector`; unused when landmarks are given.
    size: side of the output crops in pixels.
    landmarks: optional per-frame landmark arrays [N, 2] (None where a frame has none).
    margin: extra border around the face, as a fraction of the face box side.
    detect_frames: how many evenly spaced frames the detector looks at.
  Raises:
    NoFaceError: when no frame looked at has a face.
  """
  # Frames of one sequence normally share one size; if not (a re-saved frame), the same box still
  # applies in pixel coordinates and crop_square pads what falls outside.
  box = sequence_box(frames, detector, landmarks=landmarks, margin=margin,
                     detect_frames=detect_frames)
  return FaceCrop([crop_square(f, box, size) for f in frames], box)
