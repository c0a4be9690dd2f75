"""Inputs, windows and faces: how a video, a folder of frames or an image becomes model windows.

For every input:

1. Faces are detected on every frame (`frame_face`: the detector's largest box); frames without a face
   are marked as such, never given a guessed box.
2. Sliding windows of `Options.window` consecutive frames start every `Options.stride` frames (a last
   window is added so that the end of the input is covered). A window is scored when at least
   `Options.min_face_fraction` of its frames have a face; otherwise it is "no face".
3. A scored window's **face frames** play the part of a dataset record's sequence: they are cropped
   with the window's one stable square box (medians of their boxes, plus `Options.margin`, as the
   builders crop), and the T frames the model sees are the run's evaluation sampling
   (`config.dataset.sampling`) of those face frames, so a frame without a face never reaches the
   model. Fewer face frames than T repeat frames, as evaluation samples a short sequence. The crops are
   centre-cropped and resized as in evaluation (`augment.eval_preprocess`); the family's other inputs
   (e.g. optical flow) are computed from the same crops as the input pipeline does.
4. Windows are batched (`Options.batch_size`) through the model; each gets class probabilities, and the
   input's prediction is the mean of its scored windows' probabilities.

Shorter inputs are one window; one image is one frame, sampled T times.
"""

import dataclasses
import math
import os
from pathlib import Path
import sys
import time
from typing import Iterator, Sequence

import numpy as np

from ferjax.data import augment, faces, media, sampling


# Inputs: videos, frame folders, images; read frame by frame.


@dataclasses.dataclass(frozen=True)
class Source:
  """One input: `kind` is 'video', 'frames' (a folder of images) or 'image'."""
  path: Path
  kind: str
  files: tuple[Path, ...] = ()  # The images of a 'frames' source, in order.


def expand_inputs(paths: Sequence[str]) -> tuple[list[Source], list[tuple[str, str]]]:
  """(sources, [(path, error)]): a folder with images is one frame sequence; a folder with videos (and no
  images) gives each video; anything else is a video or an image by its extension."""
  sources, errors = [], []
  for given in paths:
    path = Path(os.path.abspath(os.path.expanduser(given)))
    if path.is_dir():
      images = media.list_images(path)
      videos = media.list_files(path, media.VIDEO_EXTENSIONS)
      if images:
        sources.append(Source(path, 'frames', tuple(images)))
      elif videos:
        sources.extend(Source(v, 'video') for v in videos)
      else:
        errors.append((given, f'{path}: a folder with no images ({", ".join(media.IMAGE_EXTENSIONS)}) '
                              f'and no videos ({", ".join(media.VIDEO_EXTENSIONS)})'))
    elif not path.exists():
      errors.append((given, f'{path}: no such file or folder'))
    elif path.suffix.lower() in media.IMAGE_EXTENSIONS:
      sources.append(Source(path, 'image', (path,)))
    else:
      sources.append(Source(path, 'video'))  # Any other file: let OpenCV try it as a video.
  return sources, errors


def _video_info(path: Path) -> tuple[float | None, int]:
  import cv2  # pylint: disable=import-outside-toplevel
  capture = cv2.VideoCapture(os.fspath(path))
  if not capture.isOpened():
    raise media.MediaError(f'{path}: OpenCV cannot open it as a video')
  fps, count = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
  capture.release()
  return (fps if fps and math.isfinite(fps) and fps > 0 else None), max(count, 0)


def iter_frames(source: Source) -> Iterator[np.ndarray]:
  """The RGB uint8 frames of a source, one at a time (videos are never held in memory whole)."""
  if source.kind != 'video':
    for file in source.files:
      yield media.read_image(file)
    return
  import cv2  # pylint: disable=import-outside-toplevel
  capture = cv2.VideoCapture(os.fspath(source.path))
  if not capture.isOpened():
    raise media.MediaError(f'{source.path}: OpenCV cannot open it as a video')
  try:
    index = 0
    while capture.grab():
      ok, frame = capture.retrieve()
      if not ok or frame is None:
        raise media.MediaError(f'{source.path}: OpenCV cannot decode frame {index}')
      yield media._to_rgb(frame)  # pylint: disable=protected-access
      index += 1
  finally:
    capture.release()
  if index == 0:
    raise media.MediaError(f'{source.path}: OpenCV decodes no frames from it (not a video, or broken)')


# ----------------------------------------------------------------------------------------------------------
# Windows, faces and the batched model.


@dataclasses.dataclass
class Window:
  start: int  # First frame of the window (inclusive).
  end: int  # Last frame + 1.
  face_frames: int  # Frames of the window with a detected face.
  box: list[float] | None = None  # (x, y, side, side): what the model saw of the frames; None: not scored.
  face_box: list[float] | None = None  # The window's stable face box (medians, no margin).
  probs: np.ndarray | None = None  # [C]; None when the window had too few faces.


@dataclasses.dataclass
class Result:
  """The prediction of one input."""
  source: Source
  class_names: tuple[str, ...]
  num_frames: int = 0
  fps: float | None = None
  frame_size: tuple[int, int] | None = None  # (width, height)
  boxes: list[list[float] | None] = dataclasses.field(default_factory=list)  # Per frame; None: no face.
  windows: list[Window] = dataclasses.field(default_factory=list)
  seconds: float = 0.0
  model_seconds: float = 0.0  # Of `seconds`, in model calls (the first call of a process compiles).

  @property
  def clip_probs(self) -> np.ndarray | None:
    scored = [w.probs for w in self.windows if w.probs is not None]
    return np.mean(scored, axis=0) if scored else None

  @property
  def label(self) -> str | None:
    probs = self.clip_probs
    return None if probs is None else self.class_names[int(np.argmax(probs))]

  @property
  def frames_per_second(self) -> float:
    return self.num_frames / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Options:
  """How inputs become model windows (see the module docstring)."""
  window: int  # Frames a window spans.
  stride: int
  margin: float
  crop_size: int  # Side of the face crop before the evaluation centre crop (the builders' crop size).
  eval_crop: float
  crop: str = 'face'  # 'face': the window's stable face box; 'frame': the centred square of the frame.
  min_face_fraction: float = 0.5
  batch_size: int = 16
  sampling: str = 'segments'  # Which T frames of a window: the run's dataset.sampling, evaluation indices.
  flow: str = 'dis'  # The run's dataset.flow, for models whose inputs include flow.
  inputs: tuple[str, ...] = ('frames',)  # The model's inputs (metadata['inputs']).


def frame_face(detector: faces.FaceDetector, frame: np.ndarray) -> np.ndarray | None:
  """The face (x, y, w, h) of one frame: the detector's largest box, None when it finds none."""
  return faces.largest_box(detector(frame))


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
  """Starts of the sliding windows over `num_frames` frames; the last window ends at the last frame.
  Shorter inputs are one window from 0."""
  if num_frames <= window:
    return [0]
  starts = list(range(0, num_frames - window + 1, stride))
  if starts[-1] != num_frames - window:
    starts.append(num_frames - window)
  return starts


def window_crops(frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray | None], num_samples: int,
                 image_size: int, options: Options) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """({'frames': uint8 [T, S, S, 3], other model inputs}, the stable box) of one window's frames and
  per-frame face boxes (None where a frame has no face).

  The window's face frames play the part of a dataset record's sequence, cropped as the builders store
  them; frames without a face are left out. The rest is the input pipeline's evaluation path: the
  sampling mode's evaluation indices over the face frames, `augment.eval_preprocess`, and the family's
  extra inputs from `pipeline.INPUTS` on the same sampled crops with the evaluation centre-crop matrix
  (optical flow: `flow.sequence_flow`, the run's method; `frame_positions` are positions among the face
  frames). Raises `faces.NoFaceError` when no frame has a face.
  """
  face = [i for i, b in enumerate(boxes) if b is not None]
  if not face:
    raise faces.NoFaceError(f'no face in any of the {len(frames)} frames of the window')
  box = (faces.stable_box(boxes, options.margin) if options.crop == 'face' else
         faces.centre_box(frames[face[0]].shape))
  picks = sampling.indices(options.sampling, len(face), num_samples)
  crops = [faces.crop_square(frames[face[i]], box, options.crop_size) for i in picks]
  out = {'frames': augment.eval_preprocess(np.stack(crops), image_size,
                                           augment.AugmentOptions.none(options.eval_crop))}
  extra = [name for name in options.inputs if name != 'frames']
  if 'flow' in extra and len(face) < 2:
    raise media.MediaError(f'the model needs optical flow between frames; a single frame has none '
                           f'(inputs {list(options.inputs)})')
  if extra:
    # pylint: disable-next=import-outside-toplevel  # grain and flow only for families that need them.
    from ferjax.data import flow as flow_lib, pipeline
    matrix = flow_lib.eval_matrix(options.crop_size, options.crop_size, image_size, options.eval_crop)
    view = pipeline.View(crops, np.asarray(picks, np.int32), len(face), matrix, image_size,
                         options.flow)
    out.update(pipeline._extra_inputs(extra, view))  # pylint: disable=protected-access
  return out, box


class _Batcher:
  """Collects window inputs and runs the model on full batches (and on what is left at `flush`)."""

  def __init__(self, model, batch_size: int):
    self.model, self.batch_size = model, batch_size
    self._inputs, self._windows = [], []
    self.model_seconds = 0.0

  def add(self, window: Window, inputs: dict[str, np.ndarray]) -> None:
    self._inputs.append(inputs)
    self._windows.append(window)
    if len(self._inputs) >= self.batch_size:
      self.flush()

  def flush(self) -> None:
    if not self._inputs:
      return
    batch = {}
    for name in self._inputs[0]:
      stacked = np.stack([x[name] for x in self._inputs])
      if len(stacked) < self.batch_size:  # Pad to a fixed batch: one compilation for every input.
        stacked = np.concatenate([stacked, np.repeat(stacked[-1:], self.batch_size - len(stacked), 0)])
      batch[name] = stacked
    t0 = time.perf_counter()
    probs = self.model.predict(**batch)
    self.model_seconds += time.perf_counter() - t0
    for window, p in zip(self._windows, probs):
      window.probs = np.asarray(p, np.float32)
    self._inputs, self._windows = [], []


class _Progress:
  """A progress line on stderr for long inputs (every 2 s), cleared at the end."""

  def __init__(self, name: str, total: int, enabled: bool):
    self.name, self.total, self.enabled = name, total, enabled
    self._t0 = self._last = time.perf_counter()
    self._shown = False

  def update(self, done: int) -> None:
    now = time.perf_counter()
    if not self.enabled or now - self._last < 2.0:
      return
    self._last = now
    rate = done / (now - self._t0)
    of = f'/{self.total} ({100 * done / self.total:.0f}%)' if self.total else ''
    sys.stderr.write(f'\r  {self.name}: frame {done}{of}, {rate:.1f} frames/s ')
    sys.stderr.flush()
    self._shown = True

  def close(self) -> None:
    if self._shown:
      sys.stderr.write('\r' + ' ' * 79 + '\r')
      sys.stderr.flush()


def predict_source(source: Source, model, detector: faces.FaceDetector, options: Options,
                   progress: bool = True) -> Result:
  """Detects, tracks, crops and classifies one input (see the module docstring). Raises MediaError
  for unreadable input and NoFaceError when no frame has a face."""
  t0 = time.perf_counter()
  result = Result(source, tuple(model.class_names))
  total = 0
  if source.kind == 'video':
    result.fps, total = _video_info(source.path)
  elif source.kind == 'frames':
    total = len(source.files)
  span = options.window
  buffer: list[np.ndarray] = []  # The last `span` frames (and their boxes): one window's worth.
  buffer_start = 0
  batcher = _Batcher(model, options.batch_size)
  bar = _Progress(source.path.name, total, progress and total > 4 * span)

  def emit(start: int, end: int) -> None:
    frames = buffer[start - buffer_start:end - buffer_start]
    boxes = [None if b is None else np.asarray(b, np.float32) for b in result.boxes[start:end]]
    window = Window(start, end, sum(b is not None for b in boxes))
    result.windows.append(window)
    if window.face_frames and window.face_frames >= options.min_face_fraction * len(frames):
      inputs, box = window_crops(frames, boxes, model.num_frames, model.image_size, options)
      window.box = [float(v) for v in box]
      window.face_box = [float(v) for v in faces.stable_box(boxes, 0.0)]
      batcher.add(window, inputs)

  try:
    for index, frame in enumerate(iter_frames(source)):
      if result.frame_size is None:
        result.frame_size = (frame.shape[1], frame.shape[0])
      found = frame_face(detector, frame)
      result.boxes.append(None if found is None else [float(v) for v in found])
      buffer.append(frame)
      if len(buffer) > span:
        buffer.pop(0)
        buffer_start += 1
      if index + 1 >= span and (index + 1 - span) % options.stride == 0:
        emit(index + 1 - span, index + 1)
      bar.update(index + 1)
  finally:
    bar.close()
  result.num_frames = len(result.boxes)
  last = window_starts(result.num_frames, span, options.stride)[-1]
  if not result.windows or result.windows[-1].start != last:
    emit(last, min(last + span, result.num_frames))
  if not any(b is not None for b in result.boxes):
    raise faces.NoFaceError(f'{source.path}: no face found in any of its {result.num_frames} frames')
  batcher.flush()
  result.seconds = time.perf_counter() - t0
  result.model_seconds = batcher.model_seconds
  return result

