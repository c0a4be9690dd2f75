"""Inputs, windows and faces: how a video, a folder of frames or an image becomes model windows.

For every input:

1. Faces are detected on every frame and linked into face tracks (`detect_tracks`,
   `ferjax.data.face_tracks`); each track is a face with its own windows and results.
2. Per face, sliding windows of `Options.window` consecutive frames start every `Options.stride` frames
   (a last window is added so that the end of the face's frames is covered). A window is scored when at
   least `Options.min_face_fraction` of its frames have the face; otherwise it is "no face".
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
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ferjax.data import augment, face_tracks, faces, media, sampling


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
      yield media.to_rgb(frame)
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
class TrackResult:
  """The prediction for one face (a track, `ferjax.data.face_tracks`): its windows and their mean."""
  id: int
  first: int  # First and last frame with a detection of this face.
  last: int
  face_frames: int  # Frames with a detection of this face.
  windows: list[Window] = dataclasses.field(default_factory=list)

  @property
  def clip_probs(self) -> np.ndarray | None:
    scored = [w.probs for w in self.windows if w.probs is not None]
    return np.mean(scored, axis=0) if scored else None


@dataclasses.dataclass
class Result:
  """The prediction of one input: one TrackResult per face; `windows`, `clip_probs` and `label` are
  those of the main face (the first track: the face seen in the most frames)."""
  source: Source
  class_names: tuple[str, ...]
  num_frames: int = 0
  fps: float | None = None
  frame_size: tuple[int, int] | None = None  # (width, height)
  # The main face's box per frame (None: not seen there).
  boxes: list[list[float] | None] = dataclasses.field(default_factory=list)
  tracks: list[TrackResult] = dataclasses.field(default_factory=list)
  track_boxes: list[dict[int, list[float]]] = dataclasses.field(default_factory=list)  # Per track.
  seconds: float = 0.0
  model_seconds: float = 0.0  # Of `seconds`, in model calls (the first call of a process compiles).

  @property
  def windows(self) -> list[Window]:
    return self.tracks[0].windows if self.tracks else []

  @property
  def clip_probs(self) -> np.ndarray | None:
    return self.tracks[0].clip_probs if self.tracks else None

  def track_label(self, track: TrackResult) -> str | None:
    probs = track.clip_probs
    return None if probs is None else self.class_names[int(np.argmax(probs))]

  @property
  def label(self) -> str | None:
    return self.track_label(self.tracks[0]) if self.tracks else None

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
  # Config values the other inputs read (metadata['preprocessing']['input_options']).
  input_options: dict = dataclasses.field(default_factory=dict)
  min_track_length: int = face_tracks.MIN_TRACK_LENGTH  # A face is seen in at least this many frames.
  max_gap: int = face_tracks.MAX_GAP  # Frames without a detection a face's track bridges.
  detect_frames: int = 8  # A window's box: medians over this many evenly spaced frames (as the builders).


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
  """Starts of the sliding windows over `num_frames` frames; the last window ends at the last frame.
  Shorter inputs are one window from 0."""
  if num_frames <= window:
    return [0]
  starts = list(range(0, num_frames - window + 1, stride))
  if starts[-1] != num_frames - window:
    starts.append(num_frames - window)
  return starts


def window_box(boxes: Sequence[np.ndarray | None], margin: float, detect_frames: int) -> np.ndarray:
  """A window's square crop box from its frames' face boxes, as the builders make a sequence's: the
  medians (`faces.stable_box`) over `detect_frames` evenly spaced frames (the builders' `detect_frames`:
  detector boxes jump between scales from frame to frame, and medians over other frames differ by
  several percent); over all its face frames when those picks hold none."""
  picked = [boxes[i] for i in media.evenly_spaced(len(boxes), detect_frames)]
  return faces.stable_box(picked if any(b is not None for b in picked) else boxes, margin)


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
  box = (window_box(boxes, options.margin, options.detect_frames) if options.crop == 'face' else
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
    from ferjax.data import flow as flow_lib, inputs as inputs_lib, pipeline
    matrix = flow_lib.eval_matrix(options.crop_size, options.crop_size, image_size, options.eval_crop)
    view = pipeline.View(crops, np.asarray(picks, np.int32), len(face), matrix, image_size,
                         options.flow, None, {'dataset.flow': options.flow, **options.input_options})
    out.update(inputs_lib.compute(extra, view))
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


def detect_tracks(frames: Iterable[np.ndarray], detector: faces.FaceDetector, options: Options,
                  on_frame: Callable[[int, np.ndarray], Any] | None = None,
                  ) -> tuple[list[face_tracks.Track], list[np.ndarray]]:
  """(the face tracks, per-frame detections [N, 5]) of a sequence: every frame is looked at."""
  detections = []
  for index, frame in enumerate(frames):
    detections.append(faces.detect_faces(detector, frame))
    if on_frame is not None:
      on_frame(index, frame)
  tracks = face_tracks.track_faces(detections, min_length=options.min_track_length,
                                   max_gap=options.max_gap)
  return tracks, detections


def predict_source(source: Source, model, detector: faces.FaceDetector, options: Options,
                   progress: bool = True) -> Result:
  """Detects, tracks, crops and classifies one input (see the module docstring). Raises MediaError
  for unreadable input and NoFaceError when no face is seen in `options.min_track_length` frames.

  Two passes over the frames (videos are never held in memory whole): the first detects faces on
  every frame and links them into tracks, the second crops and scores each track's windows.
  """
  t0 = time.perf_counter()
  result = Result(source, tuple(model.class_names))
  total = 0
  if source.kind == 'video':
    result.fps, total = _video_info(source.path)
  elif source.kind == 'frames':
    total = len(source.files)
  bar = _Progress(source.path.name, total, progress and total > 4 * options.window)
  sizes = []
  try:
    tracks, detections = detect_tracks(iter_frames(source), detector, options,
                                       lambda i, frame: (sizes.append(frame.shape), bar.update(i + 1)))
  finally:
    bar.close()
  result.frame_size = (sizes[0][1], sizes[0][0]) if sizes else None
  result.num_frames = len(detections)
  if not tracks:
    hits = sum(len(d) > 0 for d in detections)
    raise faces.NoFaceError(
        f'{source.path}: no face found in any of its {result.num_frames} frames' if not hits else
        f'{source.path}: no face: detections in {hits} of its {result.num_frames} frames, but none seen '
        f'in {min(options.min_track_length, result.num_frames)} frames at one place '
        '(--min-track-length)')
  result.track_boxes = [{k: [float(v) for v in b[:4]] for k, b in sorted(t.boxes.items())} for t in tracks]
  result.boxes = [result.track_boxes[0].get(k) for k in range(result.num_frames)]
  span = options.window
  pending = []  # (window, its track) in the order their last frame arrives.
  for track in tracks:
    length = track.last + 1 - track.first
    starts = [track.first + s for s in window_starts(length, span, options.stride)]
    windows = [Window(s, min(s + span, result.num_frames), 0) for s in starts]
    result.tracks.append(TrackResult(track.id, track.first, track.last, track.length, windows))
    pending += [(w, track) for w in windows]
  pending.sort(key=lambda x: x[0].end)

  batcher = _Batcher(model, options.batch_size)
  buffer: list[np.ndarray] = []  # The last `span` frames: one window's worth.
  next_window = 0
  for index, frame in enumerate(iter_frames(source)):
    buffer = (buffer + [frame])[-span:]
    while next_window < len(pending) and pending[next_window][0].end == index + 1:
      window, track = pending[next_window]
      next_window += 1
      frames = buffer[len(buffer) - (window.end - window.start):]
      boxes = track.frame_boxes(window.start, window.end)
      window.face_frames = sum(b is not None for b in boxes)
      if window.face_frames and window.face_frames >= options.min_face_fraction * len(frames):
        inputs, box = window_crops(frames, boxes, model.num_frames, model.image_size, options)
        window.box = [float(v) for v in box]
        window.face_box = [float(v) for v in window_box(boxes, 0.0, options.detect_frames)]
        batcher.add(window, inputs)
  batcher.flush()
  result.seconds = time.perf_counter() - t0
  result.model_seconds = batcher.model_seconds
  return result

