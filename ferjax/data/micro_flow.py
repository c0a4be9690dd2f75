"""Onset -> apex optical flow and optical strain: the input of the micro-expression models (STSTNet, ...).

The MEGC2019 composite's papers (STSTNet, Liong et al. 2019, Sec. III-A; OFF-ApexNet; HTNet) feed a
network one three-channel image per sample, computed between the clip's onset frame and its apex frame:

  * u, v: horizontal and vertical optical flow from onset to apex (content at p in the onset frame is at
    p + (u, v) in the apex frame), TV-L1 in the literature;
  * optical strain, the magnitude of the flow's infinitesimal strain tensor,
    sqrt(u_x^2 + v_y^2 + 1/2 (u_y + v_x)^2), derivatives by central differences (``np.gradient``);
  * each channel resized to S x S (28 x 28 for STSTNet; area averaging) and min-max scaled to [0, 1]
    over the image (a constant channel becomes 0).

Flow and strain are computed at the resolution of the frames as stored (the builders' face crops), then
resized. Min-max scaling per channel removes any uniform scale of the vectors, so the result does not
depend on the unit (source or output pixels) the flow was measured in.

Methods (``METHODS``): ``'tvl1'``, OpenCV contrib's ``cv2.optflow.DualTVL1OpticalFlow`` (default
parameters), present when OpenCV comes from opencv-contrib-python(-headless); ``'dis'``, OpenCV's DIS
(preset MEDIUM: the ULTRAFAST preset of the macro-expression flow is too coarse for sub-pixel motion);
``'auto'`` = TV-L1 where OpenCV has it, else DIS. ``resolve_method`` names the method actually used, for a
run's or a dataset's metadata.

As a model input (``INPUT``; a family that reads it registers it as ``onset_apex_flow`` with
``ferjax.data.inputs.register``, as STSTNet does): the record's ``onset`` and ``apex`` frame indices select the two frames (records without them, e.g.
of macro-expression datasets, use the first frame and the last); the image is cached per record in the
process (it is the same every epoch: no augmentation), so each worker computes it once per sample.
``dataset.micro_flow`` (the input's config key) picks the method; ``'auto'`` is TV-L1 with the contrib
build of OpenCV (the project's dependency), DIS otherwise, and a run's provenance records which OpenCV
distribution it had.
"""

import threading
from collections.abc import Mapping

import cv2
import numpy as np

from ferjax import checks
from ferjax.data import inputs as inputs_lib

METHODS = ('auto', 'tvl1', 'dis')
NAME = 'onset_apex_flow'


def has_tvl1() -> bool:
  """Whether this OpenCV has TV-L1 (the contrib build)."""
  return hasattr(cv2, 'optflow') and hasattr(cv2.optflow, 'DualTVL1OpticalFlow_create')


def resolve_method(method: str) -> str:
  """The flow method ``method`` stands for here: 'tvl1' or 'dis'."""
  if method not in METHODS:
    raise ValueError(f'onset-apex flow method must be one of {METHODS}; got {method!r}')
  if method == 'auto':
    return 'tvl1' if has_tvl1() else 'dis'
  if method == 'tvl1' and not has_tvl1():
    raise ValueError("flow method 'tvl1' needs OpenCV's contrib build (cv2.optflow); this OpenCV "
                     f'{cv2.__version__} has none: install opencv-contrib-python-headless, or use '
                     "'dis' or 'auto'")
  return method


def _estimator(method: str):
  """A fresh estimator per call: a reused OpenCV DIS instance carries state from its previous images (a
  pair's flow changed by up to 0.5 after other sizes were computed), so the flow of a clip would depend on
  what the process computed before."""
  if method == 'tvl1':
    return cv2.optflow.DualTVL1OpticalFlow_create()
  return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _grey(frame: np.ndarray) -> np.ndarray:
  frame = np.ascontiguousarray(frame)
  if frame.ndim == 3 and frame.shape[-1] == 3:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  if frame.ndim == 2:
    return frame
  raise ValueError(f'a frame must be [H, W, 3] RGB or [H, W] grey; found shape {frame.shape}')


def optical_flow(onset: np.ndarray, apex: np.ndarray, method: str = 'auto') -> np.ndarray:
  """float32 [H, W, 2] (u, v) from ``onset`` to ``apex`` (uint8 [H, W, 3] RGB or [H, W] grey)."""
  a, b = _grey(onset), _grey(apex)
  if a.shape != b.shape:
    raise ValueError(f'onset and apex frames must have the same size; found {a.shape} and {b.shape}')
  return _estimator(resolve_method(method)).calc(a, b, None).astype(np.float32)


def optical_strain(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """sqrt(u_x^2 + v_y^2 + 1/2 (u_y + v_x)^2) by central differences (one-sided at the borders)."""
  u_y, u_x = np.gradient(np.asarray(u, np.float64))
  v_y, v_x = np.gradient(np.asarray(v, np.float64))
  return np.sqrt(u_x ** 2 + v_y ** 2 + 0.5 * (u_y + v_x) ** 2).astype(np.float32)


def min_max(image: np.ndarray) -> np.ndarray:
  """Each channel of [H, W, C] scaled to [0, 1] over the image; a constant channel becomes 0."""
  low = image.min(axis=(0, 1), keepdims=True)
  span = image.max(axis=(0, 1), keepdims=True) - low
  return np.where(span > 0, (image - low) / np.where(span > 0, span, 1), 0).astype(np.float32)


def flow_strain(onset: np.ndarray, apex: np.ndarray, size: int = 28, method: str = 'auto',
                scale: bool = True) -> np.ndarray:
  """The model input: float32 [size, size, 3] = (u, v, strain), resized with area averaging, each
  channel min-max scaled to [0, 1] unless ``scale`` is False (then in source pixels)."""
  flow = optical_flow(onset, apex, method)
  image = np.dstack([flow, optical_strain(flow[..., 0], flow[..., 1])])
  image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
  return min_max(image) if scale else image


def record_frame(record: Mapping, index: int) -> np.ndarray:
  """The record's frame `index` as RGB uint8 [H, W, 3] (decoded where the record stores JPEG bytes)."""
  frame = record['frames'][index]
  if isinstance(frame, (bytes, np.bytes_)):
    decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
      raise ValueError(f'frame {index} is not a decodable image')
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
  return np.asarray(frame)


def onset_apex(record: Mapping) -> tuple[int, int]:
  """The record's (onset, apex) frame indices; the first and the last frame where it has none."""
  count = len(record['frames'])
  onset = int(record['onset']) if 'onset' in record else 0
  apex = int(record['apex']) if 'apex' in record else count - 1
  if not 0 <= onset < count or not 0 <= apex < count:
    raise ValueError(f'onset {onset} / apex {apex} must index the clip\'s {count} frames')
  return onset, apex


_CACHE: dict[tuple, np.ndarray] = {}
_CACHE_LOCK = threading.Lock()
CACHE_LIMIT = 20_000  # Entries (28 x 28 x 3 float32 = 9.4 kB each); the composite has 442 samples.


def record_input(record: Mapping, size: int, method: str) -> np.ndarray:
  """``flow_strain`` of a record's onset and apex frames, cached by (sequence_id, size, method)."""
  sequence_id = record.get('sequence_id', None)
  key = None if sequence_id is None else (bytes(sequence_id) if isinstance(sequence_id, bytes)
                                          else str(sequence_id), size, method)
  if key is not None and key in _CACHE:
    return _CACHE[key]
  onset, apex = onset_apex(record)
  image = flow_strain(record_frame(record, onset), record_frame(record, apex), size, method)
  if key is not None:
    with _CACHE_LOCK:
      if len(_CACHE) < CACHE_LIMIT:
        _CACHE[key] = image
  return image


def _input(view: inputs_lib.View) -> np.ndarray:
  if view.record is None:
    raise ValueError(f'{NAME} needs the record (its onset and apex frames)')
  return record_input(view.record, view.size, view.options.get(CONFIG_KEY, 'auto'))


def _shape(t: int, s: int) -> tuple[int, ...]:
  del t  # One image per clip, whatever the number of sampled frames.
  return (s, s, 3)


def _random(t: int, s: int, rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(0.0, 1.0, _shape(t, s)).astype(np.float32)


CONFIG_KEY = 'dataset.micro_flow'
# The `onset_apex_flow` model input: float32 [S, S, 3] (u, v, strain), each channel in [0, 1].
INPUT = inputs_lib.Input(_input, _shape, np.float32, _random, rules={CONFIG_KEY: checks.one_of(*METHODS)})
