"""Per-sequence augmentation and evaluation preprocessing (numpy + OpenCV).

A sequence is one expression unfolding over time, so every random choice (crop box, flip, rotation,
colour jitter, masked rectangles) is drawn once per sequence and applied identically to all T frames;
per-frame randomness would add motion that is not in the data.

Training, drawn once per sequence (``draw``), then applied (``warp`` -> ``photometric`` -> ``apply_mask``;
``warp_flow`` applies the same warp to optical flow, vectors corrected): random resized crop -> horizontal
flip (p = 0.5) -> rotation -> shift of a padded crop (these two with probability ``rotate_crop_prob``),
all composed into one affine warp per frame (one interpolation; the border a rotation or shift uncovers
reflected or black, ``fill``) ->
brightness/contrast jitter (rounded back to uint8) ->
random masking ("RM" of the Res-RBG paper: ``mask_count`` rectangles set to the ImageNet mean colour,
``MASK_FILL``, i.e. to ~0 after normalisation, on every frame, with probability ``mask_prob`` per sequence).
Evaluation: centre crop of ``eval_crop`` of the shorter side, resized to the output size (the same as
resizing to size / eval_crop and centre-cropping, e.g. 256 -> 224). Spatial test views
(``view_boxes``, ``config.eval.spatial_views``) take crops of the same side at fixed other places.
Both return uint8: ImageNet normalisation runs on the device, inside the jitted step
(``ferjax.steps.normalize_inputs``), so the host sends a quarter of the bytes. ``normalize`` is its numpy
twin.
"""

import dataclasses
import math
from typing import Any

import cv2
import numpy as np

from ferjax import checks
from ferjax.normalization import IMAGENET_MEAN, IMAGENET_STD

# uint8 colour of masked rectangles: the ImageNet mean, which normalises to within 0.006 of 0.
MASK_FILL = np.round(IMAGENET_MEAN * 255).astype(np.uint8)
# What the warp puts where it samples outside the source frame (the corners a rotation uncovers):
# 'reflect' mirrors the frame (OpenCV's BORDER_REFLECT_101); 'black' is zero (imgaug's and
# torchvision's default, e.g. the Residual Masking Network's `iaa.Affine(rotate=...)`); for optical
# flow, zero motion.
FILLS = {'reflect': cv2.BORDER_REFLECT_101, 'black': cv2.BORDER_CONSTANT}


# The config keys of random masking, for the families that use it (their `config_rules`).
MASK_RULES = {
    'augment.mask_prob': checks.number(0, 1),
    'augment.mask_size': checks.range_pair(0.0, 1.0),
    'augment.mask_count': checks.number(0, 16, integer=True),
}


def _pair(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
  pair = tuple(float(v) for v in value)
  if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
    raise ValueError(f'{name} must be (min, max) with {low} <= min <= max <= {high}; got {value}')
  return pair


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Augmentation settings (defaults = this project's reading; the Res-RBG paper gives none).

  Attributes:
    crop_scale: (min, max) area of the random crop as a fraction of the frame. Default (0.6, 1.0):
      faces are already tightly cropped, so smaller crops would cut away mouth or eyes.
    crop_ratio: (min, max) aspect ratio (width / height) of the random crop, drawn log-uniformly.
    flip: horizontal flip with probability 0.5.
    rotation: maximal rotation in degrees, drawn uniformly from [-rotation, rotation].
    rotate_crop_prob: probability per sequence that the rotation and the padded crop are applied
      (torchvision's ``RandomApply([RandomRotation, RandomCrop(padding=...)], p)``, DAN's 0.2); 1 = always.
    pad_crop: > 0: after the rotation, a crop of the output-size image padded by ``pad_crop`` pixels on
      every side (``RandomCrop(size, padding=pad_crop)``): a shift by a whole number of output pixels
      drawn uniformly from -pad_crop..pad_crop per axis; what it uncovers is ``fill``.
    brightness: brightness factor drawn from [1 - brightness, 1 + brightness].
    contrast: contrast factor drawn from [1 - contrast, 1 + contrast] (around the sequence's mean grey).
    mask_prob: probability that a sequence is randomly masked.
    mask_size: (min, max) height and width of a mask rectangle as a fraction of the output size
      (drawn independently).
    mask_count: number of rectangles per masked sequence.
    eval_crop: fraction of the shorter side kept by the evaluation centre crop (0.875 = 224 / 256).
    fill: the border the warp uncovers (``FILLS``): 'reflect' or 'black'.
  """
  crop_scale: tuple[float, float] = (0.6, 1.0)
  crop_ratio: tuple[float, float] = (0.9, 1.1)
  flip: bool = True
  rotation: float = 10.0
  rotate_crop_prob: float = 1.0
  pad_crop: int = 0
  brightness: float = 0.2
  contrast: float = 0.2
  mask_prob: float = 0.5
  mask_size: tuple[float, float] = (0.1, 0.3)
  mask_count: int = 1
  eval_crop: float = 0.875
  fill: str = 'reflect'

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)  # Normalise types on a frozen dataclass.
    set_('crop_scale', _pair('crop_scale', self.crop_scale, 1e-3, 1.0))
    set_('crop_ratio', _pair('crop_ratio', self.crop_ratio, 1e-2, 1e2))
    set_('mask_size', _pair('mask_size', self.mask_size, 0.0, 1.0))
    for name, low, high in (('rotation', 0, 180), ('rotate_crop_prob', 0, 1), ('brightness', 0, 1),
                            ('contrast', 0, 1), ('mask_prob', 0, 1), ('eval_crop', 1e-3, 1)):
      value = float(getattr(self, name))
      if not low <= value <= high:
        raise ValueError(f'{name} must be in [{low}, {high}]; got {getattr(self, name)}')
      set_(name, value)
    if int(self.mask_count) != self.mask_count or self.mask_count < 0:
      raise ValueError(f'mask_count must be a non-negative integer; got {self.mask_count}')
    set_('mask_count', int(self.mask_count))
    if int(self.pad_crop) != self.pad_crop or self.pad_crop < 0:
      raise ValueError(f'pad_crop must be a non-negative integer; got {self.pad_crop}')
    set_('pad_crop', int(self.pad_crop))
    set_('flip', bool(self.flip))
    if self.fill not in FILLS:
      raise ValueError(f'fill must be one of {tuple(FILLS)}; got {self.fill!r}')

  @classmethod
  def from_config(cls, config: Any) -> 'AugmentOptions':
    """Reads the fields above from ``config.augment`` (a ConfigDict or mapping); absent ones default,
    but random masking is off unless ``mask_prob`` is set: its knobs belong to the families that mask
    (Res-RBG's ``MASK_RULES``), and the configs of the others leave them out."""
    fields = {f.name for f in dataclasses.fields(cls)}
    items = dict(config.items() if hasattr(config, 'items') else vars(config).items())
    items.setdefault('mask_prob', 0.0)
    return cls(**{k: v for k, v in items.items() if k in fields})

  @classmethod
  def none(cls, eval_crop: float = 1.0) -> 'AugmentOptions':
    """No augmentation at all (identity crop, no flip/rotation/jitter/masking)."""
    return cls(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, rotation=0.0, pad_crop=0,
               brightness=0.0, contrast=0.0, mask_prob=0.0, eval_crop=eval_crop)


def _check_frames(frames) -> list[np.ndarray] | np.ndarray:
  """[T, H, W, 3] uint8 frames: an array, or a sequence of T [H, W, 3] arrays of one shape (the
  pipeline's decoded frames, never stacked: the copy into one array cost ~10 % of a 224 px example)."""
  shapes = {np.shape(f) for f in frames}
  if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[-1] != 3:
    found = np.shape(frames) if isinstance(frames, np.ndarray) else sorted(shapes)
    raise ValueError(f'expected frames of shape [T, H, W, 3]; got {found}')
  return frames


def normalize(frames: np.ndarray) -> np.ndarray:
  """uint8 (or float in [0, 255]) RGB -> float32 ImageNet-normalised."""
  return ((np.asarray(frames, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _crop_box(height: int, width: int, options: AugmentOptions, rng: np.random.Generator):
  """Random resized crop box (x0, y0, w, h), torchvision's sampling: 10 tries, else the whole frame."""
  area = height * width
  log_ratio = np.log(options.crop_ratio)
  for _ in range(10):
    target = area * rng.uniform(*options.crop_scale)
    ratio = math.exp(rng.uniform(*log_ratio))
    w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
    if w <= width and h <= height:
      return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h
  return 0.0, 0.0, float(width), float(height)


def _affine(height: int, width: int, size: int, options: AugmentOptions,
            rng: np.random.Generator) -> np.ndarray:
  """2x3 matrix mapping output pixels to source pixels: crop box, then flip and rotation about its centre,
  then the padded crop's shift (output pixel p reads the rotated image at p + shift)."""
  x0, y0, w, h = _crop_box(height, width, options, rng)
  flip = -1.0 if options.flip and rng.random() < 0.5 else 1.0
  # The draws that only some configs make come after the old ones, so a config without them draws
  # exactly what it drew before they existed.
  theta = math.radians(rng.uniform(-options.rotation, options.rotation))
  shift = (rng.integers(-options.pad_crop, options.pad_crop + 1, size=2).astype(float)
           if options.pad_crop else np.zeros(2))
  if options.rotate_crop_prob < 1 and not rng.random() < options.rotate_crop_prob:
    theta, shift = 0.0, np.zeros(2)
  cos, sin = math.cos(theta), math.sin(theta)
  a = np.array([[cos, -sin], [sin, cos]]) @ np.diag([flip * w / size, h / size])
  src_centre = np.array([x0 + w / 2 - 0.5, y0 + h / 2 - 0.5])
  dst_centre = np.full(2, size / 2 - 0.5)
  return np.concatenate([a, (src_centre + a @ (shift - dst_centre))[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class Draw:
  """The random parameters of one sequence's augmentation, drawn once (``draw``), applied to all frames.

  Attributes:
    matrix: 2x3 affine map from output pixels to source pixels (crop, flip, rotation).
    brightness, contrast: jitter factors (1.0 = none).
    boxes: masked rectangles (y, x, h, w) in output pixels; empty when the sequence is not masked.
  """
  matrix: np.ndarray
  brightness: float
  contrast: float
  boxes: tuple[tuple[int, int, int, int], ...]


def _mask_boxes(height: int, width: int, options: AugmentOptions,
                rng: np.random.Generator) -> tuple[tuple[int, int, int, int], ...]:
  """Always draws the same number of random values, so later draws do not depend on whether it masks."""
  apply = rng.random() < options.mask_prob
  boxes = []
  for _ in range(options.mask_count):
    h = max(1, round(rng.uniform(*options.mask_size) * height))
    w = max(1, round(rng.uniform(*options.mask_size) * width))
    y, x = rng.random(2)
    boxes.append((int(y * (height - h + 1)), int(x * (width - w + 1)), h, w))
  return tuple(boxes) if apply and options.mask_size[1] > 0 else ()


def draw(height: int, width: int, size: int, options: AugmentOptions, rng: np.random.Generator) -> Draw:
  """Draws the augmentation of one [T, height, width] sequence with output side ``size``."""
  matrix = _affine(height, width, size, options, rng)
  brightness = rng.uniform(1 - options.brightness, 1 + options.brightness)
  contrast = rng.uniform(1 - options.contrast, 1 + options.contrast)
  return Draw(matrix, brightness, contrast, _mask_boxes(size, size, options, rng))


def warp(frames, matrix: np.ndarray, size: int, fill: str = 'reflect') -> np.ndarray:
  """The geometric part: every frame through one affine warp (one interpolation; ``fill``: the
  border, a key of ``FILLS``).

  ``frames``: [T, H, W, C] (an array or a sequence of [H, W, C] arrays) -> [T, size, size, C].
  Each frame is warped straight into its slot of the output (``dst=``): no per-frame arrays to stack,
  which cost about a tenth of the warp itself at 224 px (page faults of fresh buffers + the copy).
  """
  first = np.asarray(frames[0])
  out = np.empty((len(frames), size, size) + first.shape[2:], first.dtype)
  for frame, slot in zip(frames, out):
    cv2.warpAffine(np.ascontiguousarray(frame), matrix, (size, size), dst=slot,
                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=FILLS[fill], borderValue=0)
  return out


def warp_flow(flow, matrix: np.ndarray, size: int,
              magnitude: bool | None = None, fill: str = 'reflect') -> np.ndarray:
  """The same warp for optical flow [T, H, W, C >= 2] (dx, dy in source pixels, then e.g. magnitude;
  an array or a sequence of [H, W, C] fields).

  Positions are resampled like the frames' pixels; the vectors are mapped into output pixels too
  (d_out = A^-1 d_src, A the matrix's linear part): a flip negates dx, a rotation rotates (dx, dy), a
  zoom scales them. Channel 2 is the magnitude of the new vectors (its input values are not read); more
  channels are resampled as they are. ``magnitude=True`` adds the magnitude channel to a 2-channel flow
  (default: keep the channel count). ``fill='black'``: zero motion where the frames get black.
  """
  found = np.shape(flow) if isinstance(flow, np.ndarray) else [np.shape(f) for f in flow]
  flow = [np.asarray(field, np.float32) for field in flow]
  shapes = {field.shape for field in flow}
  if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[-1] < 2:
    raise ValueError(f'expected optical flow of shape [T, H, W, C >= 2]; got {found}')
  channels = max(flow[0].shape[-1], 3 if magnitude else 2)
  inverse = np.linalg.inv(np.asarray(matrix, np.float64)[:, :2]).astype(np.float32)
  out = np.empty((len(flow), size, size, channels), np.float32)
  # Per field with OpenCV (~10x faster than numpy on [T, S, S, 2]), through buffers reused across fields.
  moved, vectors = np.empty((2, size, size, 2), np.float32)
  length = np.empty((size, size), np.float32)
  for t, field in enumerate(flow):
    cv2.warpAffine(np.ascontiguousarray(field[..., :2]), matrix, (size, size), dst=moved,
                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=FILLS[fill], borderValue=0)
    cv2.transform(moved, inverse, dst=vectors)
    parts = [vectors]
    if channels >= 3:
      parts.append(cv2.magnitude(*cv2.split(vectors), length))
    parts += [warp(field[None, ..., c], matrix, size, fill)[0] for c in range(3, channels)]
    cv2.merge(parts, dst=out[t])
  return out


def photometric(frames: np.ndarray, brightness: float, contrast: float,
                inplace: bool = False) -> np.ndarray:
  """Brightness/contrast jitter around the sequence's mean grey (identical on every frame), as uint8.

  The mean is brightness * (exact integer sum of the pixels) / count. The jitter of a value v is
  rint(clip((v * brightness - mean) * contrast + mean, 0, 255)) in float32, computed for the 256
  possible values and applied as a table lookup: bit-identical to jittering every pixel, at a fraction
  of the cost. (Until 2026-11 the mean was numpy's float32 mean of the jittered pixels, 7x the cost of
  the rest; it differs from the exact one by ~1e-5 grey levels, which moves a rounded table entry by 1
  only when it lies that close to .5.) ``inplace`` writes into ``frames`` (uint8, C-contiguous).
  """
  if brightness == 1.0 and contrast == 1.0:
    return frames
  frames = np.ascontiguousarray(frames, np.uint8)
  flat = frames.reshape(-1, frames.shape[-1])
  total = cv2.sumElems(frames.reshape(len(frames), -1))[0]  # Exact: integers summed in a double.
  mean = np.float32(brightness * total / frames.size)
  values = np.arange(256, dtype=np.float32) * np.float32(brightness)
  table = np.rint(np.clip((values - mean) * np.float32(contrast) + mean, 0.0, 255.0)).astype(np.uint8)
  if inplace:
    cv2.LUT(flat, table, dst=flat)
    return frames
  return cv2.LUT(flat, table).reshape(frames.shape)


def apply_mask(frames: np.ndarray, boxes) -> np.ndarray:
  """Sets every rectangle of ``boxes`` to ``MASK_FILL`` on every frame."""
  if not boxes:
    return frames
  frames = frames.copy()
  for y, x, h, w in boxes:
    frames[:, y:y + h, x:x + w] = MASK_FILL
  return frames


def random_mask(frames: np.ndarray, options: AugmentOptions, rng: np.random.Generator) -> np.ndarray:
  """Sets ``mask_count`` random rectangles to ``MASK_FILL`` on every frame, with probability ``mask_prob``."""
  _, height, width, _ = frames.shape
  return apply_mask(frames, _mask_boxes(height, width, options, rng))


def apply(frames, d: Draw, size: int, fill: str = 'reflect') -> np.ndarray:
  """Applies a draw to uint8 frames [T, H, W, 3]: ``warp`` -> ``photometric`` -> ``apply_mask``."""
  return jitter_and_mask(warp(frames, d.matrix, size, fill), d)


def jitter_and_mask(warped: np.ndarray, d: Draw) -> np.ndarray:
  """The non-geometric part of a draw (``photometric`` -> ``apply_mask``), in place on ``warped``, the
  caller's own uint8 output of ``warp`` (no copies of the T frames)."""
  out = photometric(warped, d.brightness, d.contrast, inplace=True)
  for y, x, h, w in d.boxes:
    out[:, y:y + h, x:x + w] = MASK_FILL
  return out


def train_augment(frames, size: int, options: AugmentOptions,
                  rng: np.random.Generator) -> np.ndarray:
  """Augments one sequence: uint8 [T, H, W, 3] -> uint8 [T, size, size, 3] (normalised on the device).

  ``draw`` then ``apply``: ``warp`` -> ``photometric`` -> ``apply_mask``.
  """
  height, width, _ = np.shape(_check_frames(frames)[0])
  return apply(frames, draw(height, width, size, options, rng), size, options.fill)


# config.eval.spatial_views -> the crops of the spatial test views, centre first (view 0 = the plain
# evaluation crop): 3 = evenly along the longer side (SlowFast / VideoMAE three-crop testing; the width of
# a square frame), 5 = centre + four corners, 10 = those five and their mirror images (torchvision's
# FiveCrop / TenCrop).
SPATIAL_VIEWS = (1, 3, 5, 10)


@dataclasses.dataclass(frozen=True)
class Box:
  """A square crop of side ``side`` at (``y0``, ``x0``) of the source frame, mirrored if ``flip``."""
  y0: int
  x0: int
  side: int
  flip: bool = False

  def matrix(self, size: int) -> np.ndarray:
    """Output -> source affine matrix [2, 3] of this crop resized to ``size`` (pixel centres)."""
    k = self.side / size
    if self.flip:  # Output column x shows source column x0 + side - (x + 0.5) k - 0.5.
      return np.array([[-k, 0.0, self.x0 + self.side - 0.5 * k - 0.5], [0.0, k, self.y0 + 0.5 * k - 0.5]])
    return np.array([[k, 0.0, self.x0 + 0.5 * k - 0.5], [0.0, k, self.y0 + 0.5 * k - 0.5]])


def view_boxes(height: int, width: int, eval_crop: float, views: int) -> list[Box]:
  """The ``views`` crops of the spatial test views (``SPATIAL_VIEWS``) of an H x W frame; each has side
  ``eval_crop`` x the shorter side, as the evaluation centre crop. With ``eval_crop = 1`` on square
  frames the crops coincide (only the mirrored ones differ)."""
  if views not in SPATIAL_VIEWS:
    raise ValueError(f'spatial views must be one of {SPATIAL_VIEWS}; got {views!r}')
  side = max(1, round(eval_crop * min(height, width)))
  dy, dx = height - side, width - side
  centre = Box(dy // 2, dx // 2, side)
  if views == 1:
    return [centre]
  if views == 3:
    if width >= height:
      return [centre, Box(dy // 2, 0, side), Box(dy // 2, dx, side)]
    return [centre, Box(0, dx // 2, side), Box(dy, dx // 2, side)]
  five = [centre, Box(0, 0, side), Box(0, dx, side), Box(dy, 0, side), Box(dy, dx, side)]
  return five if views == 5 else five + [dataclasses.replace(b, flip=True) for b in five]


def crop_resize(frames, box: Box, size: int) -> np.ndarray:
  """``box`` of every frame, resized to ``size`` (area averaging when shrinking) and mirrored if the
  box says so: uint8 [T, H, W, 3] -> uint8 [T, size, size, 3]."""
  frames = _check_frames(frames)
  interpolation = cv2.INTER_AREA if box.side > size else cv2.INTER_LINEAR
  out = np.empty((len(frames), size, size, 3), np.uint8)
  for frame, slot in zip(frames, out):
    crop = np.asarray(frame, np.uint8)[box.y0:box.y0 + box.side, box.x0:box.x0 + box.side]
    if box.side == size:
      slot[...] = crop
    else:
      cv2.resize(crop, (size, size), dst=slot, interpolation=interpolation)
  return out[:, :, ::-1].copy() if box.flip else out


def eval_preprocess(frames, size: int, options: AugmentOptions) -> np.ndarray:
  """Centre crop + resize: uint8 [T, H, W, 3] -> uint8 [T, size, size, 3] (normalised on the device)."""
  height, width, _ = np.shape(_check_frames(frames)[0])
  return crop_resize(frames, view_boxes(height, width, options.eval_crop, 1)[0], size)
