"""Landmark blocks: four crops of the onset -> apex flow image around the eyes and the mouth corners.

HTNet (Wang et al., "HTNet for micro-expression recognition", Neurocomputing 2024; public code
github.com/wangzhifengharrison/HTNet, ``main_HTNet.py``) builds its input this way, and region-based
micro-expression families (LKCNN) read it:

  1. five facial keypoints of the apex face on the S x S flow image's grid (HTNet: MTCNN on the apex frame
     resized to 28 x 28; the order ``KEYPOINTS``: the eye on the image's left, the other eye, the nose tip,
     the mouth corner on the image's left, the other corner);
  2. each keypoint's centre clipped to [S/4, 3S/4] so that its block stays inside the image, then
     truncated to an integer pixel (``astype(int)``: 7..21 for S = 28);
  3. a (S/2) x (S/2) crop of the u / v / strain image (``ferjax.data.micro_flow``) centred there (rows and
     columns c - S/4 .. c + S/4 - 1) for both eyes and both mouth corners (the nose is not used);
  4. the four crops tiled 2 x 2: [[left eye, right eye], [left mouth corner, right mouth corner]], an
     S x S image again (``BLOCKS``, row-major).

Where the keypoints come from (``dataset.block_keypoints``): ``'record'`` reads the record's
``keypoints`` feature (float32 [5, 2], (x, y) as fractions of the stored face crop's side, in the order
``KEYPOINTS``; the built-in synthetic micro set stores its faces' drawn landmark positions) and falls back
to the canonical positions for a record without it; ``'canonical'`` always uses the canonical positions,
``dataset.canonical_keypoints`` (10 numbers, x0, y0, ... x4, y4 as fractions of the side), by default
HTNet's own fallback for a face MTCNN misses, the five points of an aligned 28 x 28 face divided by 28.

``dataset.block_axes``: ``'xy'`` (default) centres a block on column x and row y. HTNet's code indexes the
image as ``flow[p[0] - 7:p[0] + 7, p[1] - 7:p[1] + 7]`` with MTCNN's (x, y) points, i.e. row x and column
y; ``'yx'`` reproduces that transposition (its "eye" blocks then lie at the eyes' mirror images across the
image's diagonal: the top row holds the left eye's and left mouth corner's transposed positions).

BlazeFace (``ferjax.data.faces.BlazeFaceDetector.keypoints``) gives six keypoints, with the mouth's
centre but not its corners: ``from_blazeface`` places the corners on the eye axis through the mouth centre,
``mouth_width`` (0.87, the corners' distance over the eyes' distance in HTNet's canonical points) times
the inter-ocular distance apart. A builder stores
``to_crop(from_blazeface(detector.keypoints(apex_frame)), box)`` with the clip's face crop box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ferjax import checks
from ferjax.data import inputs as inputs_lib
from ferjax.data import micro_flow

NAME = 'landmark_blocks'
FEATURE = 'keypoints'  # The record feature: float32 [5, 2] (x, y) fractions of the face crop's side.
KEYPOINTS = ('eye_left', 'eye_right', 'nose', 'mouth_left', 'mouth_right')  # left = the image's left.
BLOCKS = (0, 1, 3, 4)  # Keypoints of the tiled blocks, row-major: eyes on top, mouth corners below.
# HTNet's fallback points for a face MTCNN misses (main_HTNet.py), on its 28 x 28 grid, as fractions.
CANONICAL = tuple(float(v) / 28 for v in (9.528073, 11.062551, 21.396168, 10.919773, 15.380184,
                                            17.380562, 10.255435, 22.121233, 20.583706, 22.25584))
SOURCES = ('record', 'canonical')
AXES = ('xy', 'yx')
MOUTH_WIDTH = 0.87  # |mouth corners| / |eyes| of CANONICAL: (20.584 - 10.255) / (21.396 - 9.528).


def canonical(values: Sequence[float] = CANONICAL) -> np.ndarray:
  """The canonical keypoints as float32 [5, 2]."""
  return np.asarray(values, np.float32).reshape(len(KEYPOINTS), 2)


def centres(points: np.ndarray, size: int) -> np.ndarray:
  """int [5, 2] block centres (x, y) in pixels of an S x S image: clipped to [S/4, 3S/4], truncated."""
  half = size // 4
  return np.clip(np.asarray(points, np.float64) * size, half, size - half).astype(np.int64)


def tile_blocks(image: np.ndarray, points: np.ndarray, axes: str = 'xy') -> np.ndarray:
  """The S x S tiling of the four (S/2) x (S/2) blocks of ``image`` [S, S, C] around ``points`` [5, 2]."""
  size = image.shape[0]
  if image.shape[1] != size or size % 4:
    raise ValueError(f'landmark blocks need a square image whose side is a multiple of 4; found '
                     f'{image.shape[:2]}')
  if axes not in AXES:
    raise ValueError(f'block axes must be one of {AXES}; got {axes!r}')
  half = size // 4
  crops = []
  for k in BLOCKS:
    x, y = centres(points, size)[k]
    row, col = (y, x) if axes == 'xy' else (x, y)
    crops.append(image[row - half:row + half, col - half:col + half])
  return np.concatenate([np.concatenate(crops[:2], 1), np.concatenate(crops[2:], 1)], 0)


def from_blazeface(points: np.ndarray, mouth_width: float = MOUTH_WIDTH) -> np.ndarray:
  """BlazeFace's six keypoints [6, 2] (MediaPipe's order: the subject's right eye, left eye, nose tip,
  mouth centre, right ear, left ear) -> the five of ``KEYPOINTS`` [5, 2], in the same units."""
  points = np.asarray(points, np.float32)
  if points.shape != (6, 2):
    raise ValueError(f'BlazeFace keypoints are [6, 2]; found {points.shape}')
  eye_r, eye_l, nose, mouth = points[:4]  # The subject's right eye is on the image's left.
  half = 0.5 * mouth_width * (eye_l - eye_r)
  return np.stack([eye_r, eye_l, nose, mouth - half, mouth + half]).astype(np.float32)


def to_crop(points: np.ndarray, box: np.ndarray) -> np.ndarray:
  """Keypoints [K, 2] in a frame's pixels -> fractions of the square face crop ``box`` (x, y, side, side),
  as ``ferjax.data.faces.crop_faces`` cuts it: the feature a builder stores."""
  x, y, side = (float(v) for v in np.asarray(box)[:3])
  return ((np.asarray(points, np.float64) - (x, y)) / side).astype(np.float32)


def record_points(record: Mapping | None, options: Mapping) -> np.ndarray:
  """The keypoints [5, 2] a record's blocks are cut around (see the module docstring)."""
  fallback = canonical(options.get(CANONICAL_KEY, CANONICAL))
  if options.get(SOURCE_KEY, 'record') == 'canonical' or record is None or FEATURE not in record:
    return fallback
  points = np.asarray(record[FEATURE], np.float32)
  if points.shape != (len(KEYPOINTS), 2):
    raise ValueError(f'the record\'s {FEATURE} must be [{len(KEYPOINTS)}, 2] (x, y) fractions; found '
                     f'{points.shape}')
  return points


def _input(view: inputs_lib.View) -> np.ndarray:
  if view.record is None:
    raise ValueError(f'{NAME} needs the record (its onset and apex frames)')
  flow = micro_flow.record_input(view.record, view.size, view.options.get(micro_flow.CONFIG_KEY, 'auto'))
  return tile_blocks(flow, record_points(view.record, view.options), view.options.get(AXES_KEY, 'xy'))


def _shape(t: int, s: int) -> tuple[int, ...]:
  del t  # One image per clip.
  return (s, s, 3)


def _random(t: int, s: int, rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(0.0, 1.0, _shape(t, s)).astype(np.float32)


def _points_check(value) -> str | None:
  try:
    points = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    return f'10 numbers (x0, y0, ..., x4, y4), fractions of the face side; found {value!r}'
  if points.shape != (2 * len(KEYPOINTS),) or not np.all((points >= 0) & (points <= 1)):
    return f'10 numbers in [0, 1] (x0, y0, ..., x4, y4, fractions of the face side); found {value!r}'
  return None


SOURCE_KEY = 'dataset.block_keypoints'
CANONICAL_KEY = 'dataset.canonical_keypoints'
AXES_KEY = 'dataset.block_axes'
# The `landmark_blocks` model input: float32 [S, S, 3], the 2 x 2 tiling of the flow image's blocks.
INPUT = inputs_lib.Input(_input, _shape, np.float32, _random, rules={
    micro_flow.CONFIG_KEY: checks.one_of(*micro_flow.METHODS), SOURCE_KEY: checks.one_of(*SOURCES),
    CANONICAL_KEY: _points_check, AXES_KEY: checks.one_of(*AXES)})
inputs_lib.register(NAME, INPUT)
