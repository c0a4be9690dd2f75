"""Optical flow between consecutive sampled frames (OpenCV), for two-stream models such as RFSCNN.

The temporal stream of RFSCNN (Zhou, JIPS) sees the T - 1 flow images between neighbouring frames of its
clip, three channels: dx, dy and the magnitude sqrt(dx^2 + dy^2). ferjax computes them in the input
pipeline, in the worker:

  1. the sampled frames are turned grey and shrunk to a working resolution whose shorter side is the
     output side S (never enlarged), which bounds the cost whatever the source resolution;
  2. flow between frames t and t + 1 with OpenCV's DIS (Kroeger et al., ECCV 2016; preset ULTRAFAST,
     ``'dis'``, the default) or Farneback (``'farneback'``, OpenCV's sample parameters; ~20x slower);
     flow[t](p) = d means the content at p in frame t is at p + d in frame t + 1;
  3. the geometric warp drawn for the frames (crop, flip, rotation; or the evaluation centre crop) is
     applied to the flow field with ``augment.warp_flow``, which also maps the vectors into output
     pixels (a flip negates dx, a rotation rotates, a zoom scales) and recomputes the magnitude.

Flow is in pixels of the S x S output frame, float32. It gets no photometric jitter and no masking.
Where the warp reaches past the source frame (corners of a rotated crop), frames and flow get the same
fill (`augment.fill`): zero (black frames, no motion), or reflection, an approximation whose reflected
vectors are not mirrored; it touches a few border pixels at the default augmentation (rotation <= 10
degrees).

``'dis_output'`` / ``'farneback_output'`` compute the flow of the output frames instead: the sampled
frames through the frames' geometric warp (``augment.warp``, before photometric jitter and masking),
then flow between consecutive S x S frames, already in output pixels. This is the RFSCNN paper's order
(face crops scaled to 227 x 227, flow between neighbouring frames) and skips steps 1 and 3: no
working-resolution frames and no warp of the float flow fields (~60 % of the flow path's cost at 227 px).
Warped frames move like the source content warped, so the two agree up to the estimator's error
(tests/test_flow.py bounds the difference); at reflected borders the output variant sees mirrored
content and so mirrored vectors.
"""

import threading

import cv2
import numpy as np

from ferjax import checks
from ferjax.data import augment
from ferjax.data import inputs as inputs_lib

METHODS = ('dis', 'farneback', 'dis_output', 'farneback_output')
OUTPUT_SUFFIX = '_output'  # The flow of the S x S output frames (see the module docstring).
# Farneback parameters of OpenCV's sample (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma,
# flags); the papers do not give theirs.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)

_LOCAL = threading.local()  # One DIS object per thread: calc() keeps state, grain reads in threads.


def _dis() -> cv2.DISOpticalFlow:
  if not hasattr(_LOCAL, 'dis'):
    _LOCAL.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
  return _LOCAL.dis


def working_scale(height: int, width: int, size: int) -> float:
  """Factor from source to working pixels: the shorter side becomes ``size``, never enlarged."""
  return min(1.0, size / min(height, width))


def _grey(frames: np.ndarray, scale: float) -> list[np.ndarray]:
  out = []
  for frame in frames:
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if scale != 1.0:
      h, w = grey.shape
      # Area averaging only where bilinear would alias (beyond 2x); otherwise bilinear is ~4x cheaper.
      interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
      grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                        interpolation=interpolation)
    out.append(grey)
  return out


def _vectors(frames, method: str, scale: float) -> list[np.ndarray]:
  """T - 1 float32 fields [h, w, 2]: (dx, dy) between consecutive frames, in working pixels (as the
  flow method returns them: not copied into one array)."""
  shapes = {np.shape(f) for f in frames}
  if len(frames) < 2 or len(shapes) != 1 or len(shapes.pop()) != 3 or np.shape(frames[0])[-1] != 3:
    found = np.shape(frames) if isinstance(frames, np.ndarray) else [np.shape(f) for f in frames]
    raise ValueError(f'optical flow needs frames of shape [T >= 2, H, W, 3]; got {found}')
  if method not in METHODS:
    raise ValueError(f'flow method must be one of {METHODS}; got {method!r}')
  method = method.removesuffix(OUTPUT_SUFFIX)
  grey = _grey(frames, scale)
  if method == 'dis':
    return [_dis().calc(prev, nxt, None) for prev, nxt in zip(grey[:-1], grey[1:])]
  return [cv2.calcOpticalFlowFarneback(prev, nxt, None, *FARNEBACK)
          for prev, nxt in zip(grey[:-1], grey[1:])]


def compute(frames, method: str = 'dis', scale: float = 1.0) -> np.ndarray:
  """Flow between consecutive frames: uint8 RGB [T, H, W, 3] -> float32 [T - 1, h, w, 3] (dx, dy,
  magnitude) in working pixels, h, w = round(scale * (H, W))."""
  fields = _vectors(frames, method, scale)
  out = np.empty((len(fields),) + fields[0].shape[:2] + (3,), np.float32)
  for field, slot in zip(fields, out):
    cv2.merge([field, cv2.magnitude(*cv2.split(field))], dst=slot)
  return out


def _to_working(matrix: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
  """An output -> source pixel matrix as output -> working pixels (pixel centres: x_w = s (x + 0.5) - 0.5)."""
  s = np.array([[scale_x], [scale_y]])
  matrix = np.asarray(matrix, np.float64)
  return np.concatenate([s * matrix[:, :2], s * (matrix[:, 2:] + 0.5) - 0.5], axis=1)


def eval_matrix(height: int, width: int, size: int, eval_crop: float) -> np.ndarray:
  """The output -> source matrix of ``augment.eval_preprocess`` (centre crop of ``eval_crop`` of the
  shorter side, resized to ``size``)."""
  return augment.view_boxes(height, width, eval_crop, 1)[0].matrix(size)


def sequence_flow(frames, matrix: np.ndarray, size: int, method: str = 'dis',
                  warped: np.ndarray | None = None, fill: str = 'reflect') -> np.ndarray:
  """Flow of the sampled source frames [T, H, W, 3] (an array or a list of [H, W, 3] arrays) under the frames' output -> source ``matrix``:
  float32 [T - 1, size, size, 3] (dx, dy, magnitude) in output pixels.

  ``*_output`` methods: the flow of ``warped``, the frames' ``augment.warp(frames, matrix, size)`` (the
  caller's copy, before jitter; computed here when None). ``fill``: the warp's border (``augment.FILLS``).
  """
  if method.endswith(OUTPUT_SUFFIX):
    return compute(augment.warp(frames, matrix, size, fill) if warped is None else warped, method)
  height, width, _ = np.shape(frames[0])
  fields = _vectors(frames, method, working_scale(height, width, size))
  h, w, _ = fields[0].shape  # Rounded sides: the exact scale of each axis.
  return augment.warp_flow(fields, _to_working(matrix, w / width, h / height), size, magnitude=True,
                           fill=fill)


def _input(view: inputs_lib.View) -> np.ndarray:
  if view.num_frames < 2:
    raise ValueError(f'optical flow needs a sequence of at least 2 frames; found {view.num_frames}')
  # float32 on the host, unlike the uint8 frames: flow has no natural 8-bit range; the model scales it.
  method = view.options.get('dataset.flow', view.flow_method)
  return sequence_flow(view.frames, view.matrix, view.size, method, view.warped,
                       view.options.get('augment.fill', 'reflect'))


def _random(t: int, s: int, rng: np.random.Generator) -> np.ndarray:
  vectors = rng.normal(0.0, 2.0, (t - 1, s, s, 2)).astype(np.float32)
  return np.concatenate([vectors, np.linalg.norm(vectors, axis=-1, keepdims=True)], axis=-1)


def _shape(t: int, s: int) -> tuple[int, ...]:
  return (t - 1, s, s, 3)


# The `flow` model input: optical flow between consecutive sampled frames, float32 [T - 1, S, S, 3] (dx,
# dy, magnitude in output pixels), warped like the frames, never jittered or masked; `dataset.flow` picks
# the method. A family that reads flow registers it (`ferjax.data.inputs.register('flow', flow.INPUT)`).
INPUT = inputs_lib.Input(_input, _shape, np.float32, _random,
                         rules={'dataset.flow': checks.one_of(*METHODS),
                                'augment.fill': checks.one_of(*augment.FILLS)})
