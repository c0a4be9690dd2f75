r"""Runs a trained model on videos, frame folders and images: `python -m ferjax.predict --workdir RUN INPUT...`.

The model comes from a training run (`--workdir RUN`: its config, and the best-validation checkpoint when
the run kept one, else the latest), from one checkpoint (`--checkpoint DIR`: a step folder such as
`RUN/checkpoints/600`, or `RUN/checkpoints` / `RUN/best_checkpoint` for its newest step) or from an exported
artifact (`--model FILE.ferjax|FILE.onnx`, see `ferjax.export` and `ferjax.serving`). Only the parameters
and BatchNorm statistics are restored (Orbax partial restore), never the optimizer state.

Each INPUT is a video file, a folder of frames (e.g. a CK+ sequence folder), one image, or a folder of videos
(every video in it, batch mode). For every input:

1. Faces are detected on every frame (`--detector`, default: the detector the training data was cropped
   with, as the dataset's metadata records it; another one warns, since its boxes frame faces
   differently; for a model trained on whole frames, `ferjax.data.faces.DEFAULT_DETECTOR` finds the
   faces). Detections are linked into face **tracks** (`ferjax.data.face_tracks`): a face is seen at
   overlapping places in at least `--min-track-length` frames (gaps of up to `--max-gap` frames
   bridged); isolated hits are dropped. An input without a track is "no face" (an error for that
   input). Each track is a face with its own results; frames where a face has no detection are marked
   (`face: false` for the main face), never given a guessed box.
2. Per face, sliding windows of `--window` consecutive frames (default T, the model's frame count) start
   every `--stride` frames over the frames the face is seen in (a last window is added so that its end
   is covered). A window is scored when at least `--min-face-fraction` of its frames have the face: like
   the builders, it gets one stable square box (medians of the face's boxes over the builders'
   `detect_frames` evenly spaced frames of the window, plus `--margin`), all its frames are cropped with
   that box, T evenly spaced ones are taken (`ferjax.data.sampling.eval_indices`), centre-cropped and
   resized as in evaluation (`augment.eval_crop`, `dataset.image_size`). Shorter inputs are one window
   whose frames repeat (as evaluation samples short sequences); one image is T copies of itself.
3. Windows are batched (`--batch-size`) through the model; each gets class probabilities, and a face's
   prediction is the mean of its scored windows' probabilities. The input's label is that of its main
   face (the track seen in the most frames); with several faces the table, `--json` (`tracks`) and
   `--csv` (`track` column) report each.

Output: a table per input on stdout (with the frames/s of the whole path: decoding, detection, cropping,
model), and on request `--json FILE`, `--csv FILE`, `--annotate FILE.mp4|.avi` (the input with the face
box, the label and probability bars; a `.png`/`.jpg` name writes one annotated frame: the middle frame
of the window most confident in the clip label) and `--plot FILE.png` (class probabilities over time).
With several inputs (or a folder of videos), `--annotate NAME.EXT` and `--plot NAME.EXT` write one file
per input, `NAME.<input>.EXT`, where <input> is the input's name without extension; inputs that share a
name get as many parent folders as tell them apart (`a.S005_001.avi`, `a.S010_001.avi` for two CK+
sequence folders `001`), then their extension (`a.clip_avi.avi`, `a.clip_mp4.avi`). Existing output files
are kept unless `--overwrite` is given: without it, nothing is written when any output exists.

Exit codes: 0 every input predicted; 1 nothing done (a bad model, argument or existing output file; one
line on stderr); 2 some inputs failed (each reported in one line; the others' results are written).
"""

import argparse
import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ferjax import serving
from ferjax.data import augment, face_tracks, faces, media, sampling

EXIT_USAGE = 1
EXIT_SOME_FAILED = 2

# What the builders crop when a dataset's metadata does not say (tfds_builders.sequence_builder).
BUILDER_DEFAULT_CROP = {'detector': 'haar', 'margin': 0.25, 'size': 256, 'detect_frames': 8}
# Datasets whose frames are whole renders, not detector crops.
UNCROPPED_DATASETS = ('synthetic_expressions',)


class PredictError(ValueError):
  """A user error: bad arguments, a model that cannot be loaded, an existing output file."""


# ----------------------------------------------------------------------------------------------------------
# The model: from a run's checkpoint (in process) or from an exported artifact (ferjax.serving).


def _latest_step_dir(directory: Path) -> Path | None:
  steps = sorted((int(p.name), p) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
  return steps[-1][1] if steps else None


def find_checkpoint(workdir: str | None = None, checkpoint: str | None = None) -> tuple[Path, Path]:
  """(step folder holding `state/`, the run's workdir) for `--workdir` or `--checkpoint`.

  A workdir's `best_checkpoint/` (best validation UAR) wins over `checkpoints/` (latest step).
  """
  if workdir:
    root = Path(os.path.abspath(os.path.expanduser(workdir)))
    if not root.is_dir():
      raise PredictError(f'--workdir {root}: no such folder')
    for name in ('best_checkpoint', 'checkpoints'):
      if (root / name).is_dir() and (step := _latest_step_dir(root / name)) is not None:
        return step, root
    raise PredictError(f'--workdir {root}: expected a training run with best_checkpoint/<step> or '
                       'checkpoints/<step>; found neither')
  path = Path(os.path.abspath(os.path.expanduser(checkpoint)))
  if not path.is_dir():
    raise PredictError(f'--checkpoint {path}: no such folder')
  if (path / 'state').is_dir():
    return path, path.parent.parent
  step = _latest_step_dir(path)
  if step is None or not (step / 'state').is_dir():
    raise PredictError(f'--checkpoint {path}: expected a step folder with state/ or a folder of step '
                       'folders (RUN/checkpoints, RUN/best_checkpoint); found neither')
  return step, path.parent


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _run_config(step_dir: Path, workdir: Path) -> dict:
  """The config the checkpoint was saved with (its `config` item), else the workdir's config.json."""
  for candidate in (step_dir / 'config' / 'metadata', workdir / 'config.json'):
    config = _read_json(candidate)
    if isinstance(config, dict) and 'model' in config:
      return config
  raise PredictError(f'{step_dir}: found no config (expected {step_dir / "config"} or '
                     f'{workdir / "config.json"})')


def _dataset_info(config: dict):
  """The TFDS DatasetInfo of the run's dataset (prepared or not), or None when its builder is unknown."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ferjax.data import datasets  # pylint: disable=import-outside-toplevel
  dataset = config['dataset']
  name = f'{dataset["name"]}/{dataset["config"]}' if dataset.get('config') else dataset['name']
  datasets.register_builder(dataset['name'])
  try:
    return tfds.builder(name, data_dir=dataset.get('data_dir') or None).info
  except Exception:  # pylint: disable=broad-except  # Unknown builder or config: no info.
    return None


def _class_names(config: dict, workdir: Path, info) -> tuple[str, ...]:
  """From the run's report.json, else the dataset builder's label feature."""
  report = _read_json(workdir / 'report.json')
  if isinstance(report, dict) and report.get('class_names'):
    return tuple(report['class_names'])
  if info is not None:
    return tuple(info.features['label'].names)
  raise PredictError(f'{workdir}: cannot tell the class names (no report.json, and the dataset '
                     f'{config["dataset"]["name"]!r} has no builder here)')


def training_crop(config: dict, info) -> dict:
  """How the training data's faces were cropped: detector, margin, crop side (from the dataset's
  metadata `crop_options`; builder defaults when it has none; whole frames for rendered datasets)."""
  if config['dataset']['name'] in UNCROPPED_DATASETS:
    # The side of the stored frames (the `frames` feature, e.g. 32 for synthetic_expressions/tiny), not
    # the run's dataset.image_size: training resizes the stored frames, so predict must first shrink its
    # input to that side too. A model trained at 48 px on 32 px frames that saw 64 px video frames
    # resized straight to 48 got detail it never trained on (probabilities up to 0.1 off the trainer's
  # evaluation of the same frames).
    size = _stored_frame_side(info) or config['dataset']['image_size']
    return {'detector': 'none', 'margin': 0.0, 'size': int(size),
            'source': 'whole rendered frames (the dataset is drawn face-centred)'}
  options = dict(info.metadata.get('crop_options') or {}) if info is not None and info.metadata else {}
  return crop_from_options(options)


def crop_from_options(options: dict) -> dict:
  """predict's face crop from a builder's `crop_options` (the dict its dataset metadata records); the
  builder defaults when there are none."""
  if options:
    return {'detector': options.get('face_detector', 'haar'), 'margin': float(options.get('margin', 0.25)),
            'size': int(options.get('size', 256)), 'detect_frames': int(options.get('detect_frames', 8)),
            'source': 'dataset metadata crop_options'}
  return {**BUILDER_DEFAULT_CROP, 'source': 'builder defaults (the dataset metadata was not found)'}


def _stored_frame_side(info) -> int | None:
  """The side S of the dataset's stored frames (`frames` feature: Sequence(Image(shape=(S, S, 3)))), or
  None when the dataset's info or a fixed frame size is missing."""
  try:
    side = info.features['frames'].shape[-3]
  except (AttributeError, KeyError, IndexError, TypeError):
    return None
  return int(side) if side else None


def _normalization(config: dict) -> dict:
  """The on-device input scaling of the run (`dataset.normalization`), applied inside the model."""
  name = config['dataset'].get('normalization', 'imagenet')
  out = {'name': name, 'scale': 1 / 255, 'applied': 'inside the model'}
  if name == 'imagenet':
    out.update(mean=augment.IMAGENET_MEAN.tolist(), std=augment.IMAGENET_STD.tolist())
  return out


def input_signature(inputs: Sequence[str], num_frames: int, image_size: int) -> list[dict]:
  """The model's inputs in call order: `frames` first, then the family's extra inputs as the input
  pipeline makes them (`ferjax.data.pipeline.INPUTS`: name, dtype, shape with the batch as 'B')."""
  signature = [{'name': 'frames', 'dtype': 'uint8', 'shape': ['B', num_frames, image_size, image_size, 3]}]
  extra = [name for name in inputs if name != 'frames']
  if extra:
    from ferjax.data import pipeline  # pylint: disable=import-outside-toplevel  # grain: only when needed.
    for name in extra:
      spec = pipeline.INPUTS[name]
      signature.append({'name': name, 'dtype': np.dtype(spec.dtype).name,
                        'shape': ['B', *spec.shape(num_frames, image_size)]})
  return signature


def model_metadata(config: dict, class_names: Sequence[str], crop: dict, source: dict,
                   inputs: Sequence[str] = ('frames',)) -> dict:
  """What an artifact (and predict) needs besides the weights; see ferjax.serving."""
  t, s = int(config['dataset']['num_frames']), int(config['dataset']['image_size'])
  signature = input_signature(inputs, t, s)
  return {
      'format': serving.FORMAT,
      'class_names': list(class_names),
      'num_frames': t,
      'image_size': s,
      'input': '; '.join(f'{i["name"]} {i["dtype"]} [{", ".join(map(str, i["shape"]))}]' for i in signature)
               + '; output float32 class probabilities [B, C]',
      'inputs': signature,
      'preprocessing': {
          'face_crop': crop,
          'eval_crop': float(config['augment']['eval_crop']),
          'normalization': _normalization(config),
          # Which T frames of a window (config.dataset.sampling, evaluation indices).
          'sampling': config['dataset'].get('sampling', 'segments'),
          # Optical flow method (config.dataset.flow), for models whose inputs include flow.
          'flow': config['dataset'].get('flow', 'dis'),
      },
      'dataset': {'name': config['dataset']['name'], 'config': config['dataset'].get('config', '')},
      'model': config['model'],
      'source': source,
  }


@dataclasses.dataclass
class CheckpointModel:
  """A run's model restored from a checkpoint: the same interface as `serving.Model`, plus `function`
  (pure `(variables, frames_uint8, *extra_inputs) -> probs`, extra inputs in the order of
  `metadata['inputs']`) and `variables` for export."""
  path: Path
  metadata: dict
  function: Callable
  variables: Any
  kind: str = 'checkpoint'

  def __post_init__(self):
    import jax  # pylint: disable=import-outside-toplevel
    self.class_names = tuple(self.metadata['class_names'])
    self.num_frames = int(self.metadata['num_frames'])
    self.image_size = int(self.metadata['image_size'])
    self.inputs = serving.input_names(self.metadata)
    self._jitted = jax.jit(self.function)

  def predict(self, frames, **inputs) -> np.ndarray:
    """probs float32 [B, C] of uint8 frames [B, T, S, S, 3] and the model's other inputs by name."""
    arrays = serving.check_inputs(self.metadata, frames, inputs)
    if not len(arrays[0]):
      return np.zeros((0, len(self.class_names)), np.float32)
    return np.asarray(self._jitted(self.variables, *arrays), np.float32)


def _check_shapes(step_dir: Path, metadata_tree, target) -> None:
  from ferjax import checkpointing  # pylint: disable=import-outside-toplevel
  saved = {k: v for k, v in checkpointing.flat_shapes(metadata_tree).items()
           if k.split('/')[0] in ('params', 'model_state')}
  current = checkpointing.flat_shapes(target)
  bad = [f'{k}: {saved.get(k)} in the checkpoint, {current.get(k)} in the config'
         for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
  if bad:
    raise checkpointing.CheckpointMismatchError(
        f'{step_dir} does not fit its config ({len(bad)} arrays differ, e.g. {"; ".join(bad[:3])}); '
        'use the config the checkpoint was trained with')


def load_checkpoint(workdir: str | None = None, checkpoint: str | None = None) -> CheckpointModel:
  """The model of a run (`workdir`) or of one checkpoint folder, parameters and BatchNorm statistics only."""
  # pylint: disable=import-outside-toplevel  # The trainer's stack only when a checkpoint is used.
  from flax import nnx
  import jax
  import ml_collections
  import orbax.checkpoint as ocp
  from ferjax import models, steps
  step_dir, run_dir = find_checkpoint(workdir, checkpoint)
  config = _run_config(step_dir, run_dir)
  info = _dataset_info(config)
  class_names = _class_names(config, run_dir, info)
  family = models.get_family(config['model']['name'])
  extra_names = tuple(name for name in family.inputs if name != 'frames')
  model_config = ml_collections.ConfigDict(config['model'])
  abstract = nnx.eval_shape(lambda: models.create_model(model_config, len(class_names),
                                                         rngs=nnx.Rngs(0)))
  graphdef, params, model_state = nnx.split(abstract, nnx.Param, ...)
  target = {'params': nnx.to_pure_dict(params), 'model_state': nnx.to_pure_dict(model_state)}
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    tree = checkpointer.metadata(step_dir / 'state')
  except Exception as e:  # pylint: disable=broad-except  # Any unreadable checkpoint.
    raise PredictError(f'{step_dir / "state"}: Orbax cannot read it ({type(e).__name__}: '
                       f'{" ".join(str(e).split())[:200]})') from None
  tree = getattr(tree, 'item_metadata', tree)
  tree = getattr(tree, 'tree', tree)
  if not isinstance(tree, dict) or not {'params', 'model_state'} <= set(tree):
    raise PredictError(f'{step_dir / "state"}: expected a ferjax train state (params, model_state); '
                       f'found {sorted(tree) if isinstance(tree, dict) else type(tree).__name__}')
  saved = {k: tree[k] for k in ('params', 'model_state')}
  _check_shapes(step_dir, _strip_value(saved), target)
  item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), saved)
  restored = checkpointer.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  variables = jax.device_put(_like(_strip_value({k: restored[k] for k in item}), target))

  # dataset.normalization ('imagenet' | 'unit'); configs from before the field was added are 'imagenet'.
  normalization = config['dataset'].get('normalization', 'imagenet')

  def function(variables, frames, *extra):
    p, s = nnx.State(params), nnx.State(model_state)
    nnx.replace_by_pure_dict(p, variables['params'])
    nnx.replace_by_pure_dict(s, variables['model_state'])
    model = nnx.merge(graphdef, p, s, copy=True)
    batch = {'frames': frames, **dict(zip(extra_names, extra))}
    inputs = (steps.normalize_inputs(batch) if normalization == 'imagenet' else
              steps.normalize_inputs(batch, normalization))
    logits = model(inputs, train=False)['logits']
    return steps.sequence_probabilities(logits)

  source = {'kind': 'checkpoint', 'path': os.fspath(step_dir), 'step': int(step_dir.name),
            'selection': ('best validation UAR' if step_dir.parent.name == 'best_checkpoint'
                          else 'latest checkpoint')}
  metadata = model_metadata(config, class_names, training_crop(config, info), source, family.inputs)
  return CheckpointModel(step_dir, metadata, function, variables)


def _strip_value(tree):
  """A saved nnx.State tree ({..., 'kernel': {'value': array}}) -> the pure dict ({'kernel': array})."""
  if isinstance(tree, dict):
    if set(tree) == {'value'}:
      return tree['value']
    return {k: _strip_value(v) for k, v in tree.items()}
  return tree


def _like(saved, target):
  """`saved` (Orbax's string keys: '0', '1') with the keys of `target` (nnx pure dicts use ints)."""
  if isinstance(target, dict):
    return {k: _like(saved[str(k)] if str(k) in saved else saved[k], v) for k, v in target.items()}
  return saved


def load_model(workdir: str | None = None, checkpoint: str | None = None, model: str | None = None):
  """A model with `predict(frames_uint8[B, T, S, S, 3]) -> probs [B, C]` from exactly one source."""
  given = [name for name, v in (('--workdir', workdir), ('--checkpoint', checkpoint), ('--model', model))
           if v]
  if len(given) != 1:
    raise PredictError(f'expected exactly one of --workdir, --checkpoint, --model; found '
                       f'{", ".join(given) or "none"}')
  if model:
    try:
      return serving.load(model)
    except serving.ArtifactError as e:
      raise PredictError(str(e)) from None
  return load_checkpoint(workdir, checkpoint)


# ----------------------------------------------------------------------------------------------------------
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
# Windows, face tracking and the batched model.


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
  per-frame face boxes.

  The crops play the part of a dataset record's frames (the builders store such crops), and the rest is
  the input pipeline's evaluation path: the sampling mode's evaluation indices, `augment.eval_preprocess`,
  and the family's extra inputs from `pipeline.INPUTS` on the same sampled crops with the evaluation
  centre-crop matrix (optical flow: `flow.sequence_flow`, the run's method). The window plays the part
  of the sequence (`frame_positions` are positions within the window).
  """
  box = (window_box(boxes, options.margin, options.detect_frames) if options.crop == 'face' else
         faces.centre_box(frames[0].shape))
  picks = sampling.indices(options.sampling, len(frames), num_samples)
  crops = [faces.crop_square(frames[i], box, options.crop_size) for i in picks]
  out = {'frames': augment.eval_preprocess(np.stack(crops), image_size,
                                           augment.AugmentOptions.none(options.eval_crop))}
  extra = [name for name in options.inputs if name != 'frames']
  if 'flow' in extra and len(frames) < 2:
    raise media.MediaError(f'the model needs optical flow between frames; a single frame has none '
                           f'(inputs {list(options.inputs)})')
  if extra:
    # pylint: disable-next=import-outside-toplevel  # grain and flow only for families that need them.
    from ferjax.data import flow as flow_lib, inputs as inputs_lib, pipeline
    matrix = flow_lib.eval_matrix(options.crop_size, options.crop_size, image_size, options.eval_crop)
    view = pipeline.View(crops, np.asarray(picks, np.int32), len(frames), matrix, image_size,
                         options.flow, None, {'dataset.flow': options.flow})
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


# ----------------------------------------------------------------------------------------------------------
# Outputs.


def _time(frame: int, fps: float | None) -> str:
  return f'{frame / fps:.2f}s' if fps else '-'


def format_table(result: Result, max_rows: int = 40) -> str:
  """The readable summary of one input: a header line, then per face (track) a line and one row per
  window (the first `max_rows`)."""
  names = result.class_names
  face_count = sum(b is not None for b in result.boxes)
  clip = result.clip_probs
  several = len(result.tracks) > 1
  head = (f'{result.source.path} ({result.source.kind}, {result.num_frames} frames'
          + (f', {result.fps:.1f} fps' if result.fps else '') + '): '
          + (f'{len(result.tracks)} faces (tracks); main face: ' if several else '')
          + (f'{result.label} ({clip.max():.2f})' if clip is not None else 'no window with a face')
          + f', mean of {sum(w.probs is not None for w in result.windows)}/{len(result.windows)} windows; '
          f'face in {face_count}/{result.num_frames} frames; {result.frames_per_second:.1f} frames/s')
  width = max(6, *(len(n) for n in names))
  columns = ('  '.join(f'{n[:width]:>{max(len(n[:width]), 4)}}' for n in names))

  def cells(probs):
    return '  '.join(f'{p:>{max(len(n[:width]), 4)}.2f}' for n, p in zip(names, probs))

  lines = [head]
  for track in result.tracks:
    if several:
      probs = track.clip_probs
      lines.append(f'  face {track.id}: frames {track.first}-{track.last}, seen in {track.face_frames}: '
                   + (f'{result.track_label(track)} ({probs.max():.2f})' if probs is not None else
                      'no window with a face'))
    lines.append(f'  {"window":>6}  {"frames":>11}  {"time":>15}  {"faces":>5}  '
                 f'{"label":<{width}}  {columns}')
    for i, w in enumerate(track.windows[:max_rows]):
      span = f'{_time(w.start, result.fps)}-{_time(w.end - 1, result.fps)}' if result.fps else '-'
      label = names[int(np.argmax(w.probs))] if w.probs is not None else 'no face'
      lines.append(f'  {i:>6}  {f"{w.start}-{w.end - 1}":>11}  {span:>15}  '
                   f'{f"{w.face_frames}/{w.end - w.start}":>5}  {label:<{width}}  '
                   f'{cells(w.probs) if w.probs is not None else ""}'.rstrip())
    if len(track.windows) > max_rows:
      lines.append(f'  ... {len(track.windows) - max_rows} more windows (see --json / --csv)')
    if track.clip_probs is not None:
      frames = f'{track.first}-{track.last}' if several else f'0-{result.num_frames - 1}'
      lines.append(f'  {"clip" if not several else f"face {track.id}":>6}  {frames:>11}  {"":>15}  '
                   f'{"":>5}  {result.track_label(track):<{width}}  {cells(track.clip_probs)}')
  return '\n'.join(lines)


def _probs_dict(names, probs) -> dict | None:
  return None if probs is None else {n: round(float(p), 6) for n, p in zip(names, probs)}


def _windows_json(names, windows) -> list[dict]:
  return [{'start': w.start, 'end': w.end, 'face_frames': w.face_frames,
           'box': None if w.box is None else [round(v, 1) for v in w.box],
           'face_box': None if w.face_box is None else [round(v, 1) for v in w.face_box],
           'label': None if w.probs is None else names[int(np.argmax(w.probs))],
           'probs': _probs_dict(names, w.probs)} for w in windows]


def result_json(result: Result) -> dict:
  """One input's results; `label`, `probs`, `face`, `face_boxes` and `windows` are the main face's
  (the first track), `tracks` has every face."""
  names = result.class_names
  return {
      'input': os.fspath(result.source.path), 'kind': result.source.kind, 'error': None,
      'num_frames': result.num_frames, 'fps': result.fps,
      'frame_size': list(result.frame_size) if result.frame_size else None,
      'label': result.label, 'probs': _probs_dict(names, result.clip_probs),
      'frames_per_second': round(result.frames_per_second, 2),
      'face': [b is not None for b in result.boxes],
      'face_boxes': [None if b is None else [round(v, 1) for v in b] for b in result.boxes],
      'windows': _windows_json(names, result.windows),
      'tracks': [{'track': t.id, 'first_frame': t.first, 'last_frame': t.last, 'face_frames': t.face_frames,
                  'label': result.track_label(t), 'probs': _probs_dict(names, t.clip_probs),
                  'face_boxes': {str(k): [round(v, 1) for v in b] for k, b in boxes.items()},
                  'windows': _windows_json(names, t.windows)}
                 for t, boxes in zip(result.tracks, result.track_boxes)],
  }


def csv_text(results: Sequence[Result], class_names: Sequence[str]) -> str:
  """One row per window of every face (track) and one `clip` row per face; probabilities in class
  order."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['input', 'track', 'window', 'start_frame', 'end_frame', 'start_s', 'end_s',
                   'face_frames', 'label', *[f'p_{n}' for n in class_names]])
  for r in results:
    for track in r.tracks:
      for i, w in enumerate(track.windows):
        times = [f'{w.start / r.fps:.3f}', f'{(w.end - 1) / r.fps:.3f}'] if r.fps else ['', '']
        label = r.class_names[int(np.argmax(w.probs))] if w.probs is not None else 'no face'
        probs = [f'{p:.6f}' for p in w.probs] if w.probs is not None else [''] * len(class_names)
        writer.writerow([os.fspath(r.source.path), track.id, i, w.start, w.end - 1, *times, w.face_frames,
                         label, *probs])
      clip = track.clip_probs
      writer.writerow([os.fspath(r.source.path), track.id, 'clip', track.first, track.last, '', '',
                       track.face_frames, r.track_label(track) or 'no face',
                       *([f'{p:.6f}' for p in clip] if clip is not None else [''] * len(class_names))])
  return out.getvalue()


def frame_window(result: Result, frame: int) -> Window | None:
  """The scored window shown at `frame`: of those covering it, the one whose centre is nearest."""
  covering = [w for w in result.windows if w.probs is not None and w.start <= frame < w.end]
  if not covering:
    return None
  return min(covering, key=lambda w: abs((w.start + w.end - 1) / 2 - frame))


def annotate_frame(rgb: np.ndarray, result: Result, frame: int, min_height: int = 360) -> np.ndarray:
  """`rgb` (upscaled to at least `min_height` rows) with the window's face box (green where this frame
  has a face; 'no face' in red where it has none), the label and one probability bar per class."""
  import cv2  # pylint: disable=import-outside-toplevel
  scale = max(1.0, min_height / rgb.shape[0])
  image = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else \
      rgb.copy()
  h, w = image.shape[:2]
  window = frame_window(result, frame)
  has_face = result.boxes[frame] is not None
  font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(h / 360))
  text_scale = 0.45 * h / 360
  if window is not None and window.face_box is not None:
    x, y, side = (v * scale for v in window.face_box[:3])
    colour = (0, 220, 0) if has_face else (160, 160, 160)
    cv2.rectangle(image, (round(x), round(y)), (round(x + side), round(y + side)), colour, 2 * thick)
  if not has_face:
    cv2.putText(image, 'no face', (8, h - 10), font, 1.5 * text_scale, (255, 40, 40), 2 * thick)
  if window is None:
    return image
  names, probs = result.class_names, window.probs
  best = int(np.argmax(probs))
  row, bar_w = round(18 * h / 360), round(0.25 * w)
  top = round(40 * h / 360)
  panel = image.copy()  # A dark, translucent panel under the text keeps it readable on any frame.
  cv2.rectangle(panel, (0, 0), (min(w, 2 * bar_w + 60), top + len(names) * row + 4), (0, 0, 0), -1)
  image = cv2.addWeighted(panel, 0.6, image, 0.4, 0)
  cv2.putText(image, f'{names[best]} {probs[best]:.2f}', (8, round(26 * h / 360)), font,
              1.6 * text_scale, (255, 255, 0), 2 * thick)
  for i, (name, p) in enumerate(zip(names, probs)):
    y0 = top + i * row
    cv2.rectangle(image, (8, y0), (8 + bar_w, y0 + row - 4), (40, 40, 40), -1)
    cv2.rectangle(image, (8, y0), (8 + round(bar_w * float(p)), y0 + row - 4),
                  (255, 160, 0) if i == best else (0, 160, 255), -1)
    cv2.putText(image, f'{name} {p:.2f}', (14 + bar_w, y0 + row - 6), font, text_scale,
                (255, 255, 255), thick)
  return image


IMAGE_OUTPUT_EXTENSIONS = ('.png', '.jpg', '.jpeg')
VIDEO_CODECS = {'.mp4': 'mp4v', '.avi': 'MJPG'}


def write_annotated(result: Result, path: Path) -> None:
  """The annotated input as a video (.mp4: mp4v, .avi: MJPG), or one annotated frame (.png/.jpg)."""
  import cv2  # pylint: disable=import-outside-toplevel
  suffix = path.suffix.lower()
  if suffix in IMAGE_OUTPUT_EXTENSIONS:
    scored = [w for w in result.windows if w.probs is not None]
    if scored:
      label = result.class_names.index(result.label)
      best = max(scored, key=lambda w: w.probs[label])
      frame = (best.start + best.end - 1) // 2
    else:  # Faces in too few frames of every window: show the middle frame, unlabelled.
      frame = result.num_frames // 2
    for i, rgb in enumerate(iter_frames(result.source)):
      if i == frame:
        cv2.imwrite(os.fspath(path), cv2.cvtColor(annotate_frame(rgb, result, i), cv2.COLOR_RGB2BGR))
        return
  writer = None
  try:
    for i, rgb in enumerate(iter_frames(result.source)):
      image = annotate_frame(rgb, result, i)
      if writer is None:
        writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*VIDEO_CODECS[suffix]),
                                 result.fps or 10.0, (image.shape[1], image.shape[0]))
        if not writer.isOpened():
          raise PredictError(f'{path}: OpenCV cannot write {VIDEO_CODECS[suffix]} video')
      writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  finally:
    if writer is not None:
      writer.release()


def write_plot(result: Result, path: Path) -> None:
  """Class probabilities of every scored window over time (window centres); no-face windows shaded."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  unit = result.fps or 1.0
  fig, ax = plt.subplots(figsize=(8, 3.5))
  centres = np.array([(w.start + w.end - 1) / 2 for w in result.windows]) / unit
  for i, name in enumerate(result.class_names):
    values = [w.probs[i] if w.probs is not None else np.nan for w in result.windows]
    ax.plot(centres, values, marker='o', markersize=3, label=name)
  for w in result.windows:
    if w.probs is None:
      ax.axvspan(w.start / unit, (w.end - 1) / unit, color='0.85', lw=0)
  ax.set_xlabel('time (s), window centre' if result.fps else 'frame, window centre')
  ax.set_ylabel('probability')
  ax.set_ylim(0, 1)
  ax.set_title(f'{result.source.path.name}: {result.label}')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# The command line.


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m ferjax.predict', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('inputs', nargs='+', metavar='INPUT',
                 help='video file, folder of frames, image, or folder of videos')
  src = p.add_argument_group('model (exactly one)')
  src.add_argument('--workdir', help='a training run (best_checkpoint/ if any, else checkpoints/)')
  src.add_argument('--checkpoint', help='a checkpoint step folder, or a folder of them (newest)')
  src.add_argument('--model', help='an exported .ferjax or .onnx artifact (python -m ferjax.export)')
  p.add_argument('--detector', default=None, choices=faces.DETECTORS,
                 help="face detector (default: the one the training data was cropped with, from the "
                      f"dataset's metadata; {faces.DEFAULT_DETECTOR!r} to find the faces of a model trained "
                      "on whole frames); another one warns: its boxes differ. 'none' = centre square")
  p.add_argument('--yunet-model', help="the YuNet .onnx file for --detector yunet")
  p.add_argument('--crop', choices=('face', 'frame'), default=None,
                 help="what the model sees: 'face' (the window's face box plus --margin) or 'frame' (the "
                      "centred square of the frame; faces are still detected to mark frames without one). "
                      "Default: as the training data was made ('frame' for whole rendered frames, e.g. the "
                      "synthetic dataset)")
  p.add_argument('--margin', type=float, default=None,
                 help='border around the face box, a fraction of its side (default: as in the training '
                      "data's builder; 0.25 where it did not crop; 0 with --detector none)")
  p.add_argument('--window', type=int, default=None, help='frames per window (default: T of the model)')
  p.add_argument('--stride', type=int, default=None, help='frames between window starts (default: window/2)')
  p.add_argument('--min-face-fraction', type=float, default=0.5,
                 help='a window is scored when at least this fraction of its frames has a face')
  p.add_argument('--min-track-length', type=int, default=face_tracks.MIN_TRACK_LENGTH,
                 help='a face is a track of detections at overlapping places in at least this many frames '
                      '(all frames of a shorter input); isolated detections are dropped')
  p.add_argument('--max-gap', type=int, default=face_tracks.MAX_GAP,
                 help='frames without a detection that a face\'s track bridges')
  p.add_argument('--batch-size', type=int, default=16, help='windows per model call')
  p.add_argument('--json', help='write every result to this JSON file')
  p.add_argument('--csv', help='write one row per window (and per clip) to this CSV file')
  p.add_argument('--annotate', metavar='NAME.EXT',
                 help='write the annotated video (.mp4/.avi) or one frame (.png/.jpg). With several inputs '
                      '(or a folder of videos): one file per input, NAME.<input>.EXT, <input> = the '
                      "input's file or folder name without extension; inputs with the same name get "
                      'their parent folders (NAME.S005_001.EXT), then their extension (NAME.clip_avi.EXT)')
  p.add_argument('--plot', metavar='NAME.EXT',
                 help='write the probabilities over time (.png/.pdf/.svg/.jpg); several inputs: as '
                      '--annotate')
  p.add_argument('--overwrite', action='store_true',
                 help='replace existing output files (without it, nothing is written when any exists)')
  p.add_argument('--max-rows', type=int, default=40, help='window rows per input in the table')
  p.add_argument('--quiet', action='store_true', help='no progress line')
  return p


def input_labels(sources: Sequence[Source]) -> list[str]:
  """A distinct name per input for its output files: its stem (`clip` for clip.avi, `001` for a frame
  folder 001/); inputs whose stems collide get as many of their parent folders as tell them apart
  (`S005_001`, `S010_001`), then their extension (`clip_avi`, `clip_mp4`). An input given twice is an
  error."""
  def label(source: Source, depth: int, extension: bool) -> str:
    parents = source.path.parent.parts[1:]
    name = source.path.name.replace('.', '_') if extension else source.path.stem
    return '_'.join((*parents[len(parents) - depth:], name) if depth else (name,))

  labels = [label(s, 0, False) for s in sources]
  for stem in {x for x in labels if labels.count(x) > 1}:
    group = [i for i, x in enumerate(labels) if x == stem]
    depth_limit = max(len(sources[i].path.parent.parts) for i in group)
    for extension in (False, True):
      for depth in range(depth_limit):
        names = [label(sources[i], depth, extension) for i in group]
        if len(set(names)) == len(names):
          break
      else:
        continue
      break
    else:
      raise PredictError(f'{sources[group[0]].path} is given twice; pass each input once')
    for i, name in zip(group, names):
      labels[i] = name
  if len(set(labels)) != len(labels):
    clash = next(x for x in labels if labels.count(x) > 1)
    raise PredictError(f'two inputs would write the same per-input output files ({clash}): '
                       'rename one of them')
  return labels


def per_input_path(path: Path, label: str, several: bool) -> Path:
  """`NAME.ext` for one input; `NAME.<label>.ext` per input when there are several (batch mode)."""
  return path.with_name(f'{path.stem}.{label}{path.suffix}') if several else path


def _check_args(args) -> None:
  for name in ('window', 'stride', 'batch_size', 'min_track_length'):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise PredictError(f'--{name.replace("_", "-")} must be >= 1; found {value}')
  if args.max_gap < 0:
    raise PredictError(f'--max-gap must be >= 0; found {args.max_gap}')
  if not 0 < args.min_face_fraction <= 1:
    raise PredictError(f'--min-face-fraction must be in (0, 1]; found {args.min_face_fraction}')
  if args.margin is not None and not 0 <= args.margin <= 2:
    raise PredictError(f'--margin must be in [0, 2]; found {args.margin}')
  if args.annotate and Path(args.annotate).suffix.lower() not in (*VIDEO_CODECS, *IMAGE_OUTPUT_EXTENSIONS):
    raise PredictError(f'--annotate {args.annotate}: expected a .mp4, .avi, .png or .jpg name')
  if args.plot and Path(args.plot).suffix.lower() not in ('.png', '.pdf', '.svg', '.jpg'):
    raise PredictError(f'--plot {args.plot}: expected a .png, .pdf, .svg or .jpg name')


def _outputs(args, sources: Sequence[Source]) -> tuple[list[Path], dict[Source, dict[str, Path]]]:
  """(every output file, {source: {'annotate': path, 'plot': path}}), absolute; refuses two outputs
  on one path and an output on an input."""
  def absolute(path: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))

  paths = [absolute(p) for p in (args.json, args.csv) if p]
  per_input = {s: {} for s in sources}
  labels = input_labels(sources) if len(sources) > 1 else [''] * len(sources)
  for name in ('annotate', 'plot'):
    if getattr(args, name):
      for source, label in zip(sources, labels):
        per_input[source][name] = per_input_path(absolute(getattr(args, name)), label, len(sources) > 1)
        paths.append(per_input[source][name])
  if len(set(paths)) != len(paths):
    clash = next(p for p in paths if paths.count(p) > 1)
    raise PredictError(f'two outputs would be written to {clash}; give --json, --csv, --annotate and '
                       '--plot different names')
  inputs = {s.path for s in sources} | {f for s in sources for f in s.files}
  if clash := next((p for p in paths if p in inputs), None):
    raise PredictError(f'{clash} is an input; an output file must not replace it')
  return paths, per_input


def resolve_detector(requested: str | None, crop: dict) -> tuple[str, str | None]:
  """(detector name, a warning or None): the training data's detector unless another is requested.

  A model trained on whole frames (`crop['detector'] == 'none'`) still needs faces found, to tell
  frames with a face from frames without: faces.DEFAULT_DETECTOR does that.
  """
  trained = crop.get('detector', BUILDER_DEFAULT_CROP['detector'])
  default = trained if trained != 'none' else faces.DEFAULT_DETECTOR
  if requested is None or requested == default:
    return default, None
  if trained == 'none':
    return requested, None
  return requested, (f'--detector {requested}: the training data was cropped with {trained!r} '
                     f'({crop.get("source", "dataset metadata")}); {requested!r} frames faces '
                     'differently, so the model sees other crops than it trained on')


def _options(args, model, detector: str) -> Options:
  crop = model.metadata.get('preprocessing', {}).get('face_crop', {})
  margin = args.margin
  if margin is None:
    margin = 0.0 if detector == 'none' else (
        crop['margin'] if crop.get('detector', 'none') != 'none' else BUILDER_DEFAULT_CROP['margin'])
  window = args.window or model.num_frames
  crop_mode = args.crop or ('frame' if crop.get('detector') == 'none' else 'face')
  preprocessing = model.metadata.get('preprocessing', {})
  return Options(window=window, stride=args.stride or max(window // 2, 1), margin=margin, crop=crop_mode,
                 crop_size=int(crop.get('size', BUILDER_DEFAULT_CROP['size'])),
                 eval_crop=float(preprocessing.get('eval_crop', 1.0)),
                 min_face_fraction=args.min_face_fraction, batch_size=args.batch_size,
                 sampling=preprocessing.get('sampling', 'segments'), flow=preprocessing.get('flow', 'dis'),
                 inputs=tuple(serving.input_names(model.metadata)),
                 min_track_length=args.min_track_length, max_gap=args.max_gap,
                 detect_frames=int(crop.get('detect_frames', BUILDER_DEFAULT_CROP['detect_frames'])))


def run(argv: Sequence[str]) -> int:
  """The CLI without sys.exit: returns the exit code (see the module docstring)."""
  args = _parser().parse_args(argv)
  try:
    _check_args(args)
    sources, failed = expand_inputs(args.inputs)
    outputs, per_input = _outputs(args, sources)
    existing = [p for p in outputs if p.exists()]
    if existing and not args.overwrite:
      raise PredictError(f'{existing[0]} exists; pass --overwrite to replace it'
                         + (f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''))
    for p in outputs:
      if not p.parent.is_dir():
        raise PredictError(f'{p}: the folder {p.parent} does not exist')
    if not sources:
      for given, error in failed:
        print(f'error: {error}', file=sys.stderr)
      raise PredictError('no readable input')
    model = load_model(args.workdir, args.checkpoint, args.model)
    crop = model.metadata.get('preprocessing', {}).get('face_crop', {})
    detector_name, warning = resolve_detector(args.detector, crop)
    if warning:
      print(f'warning: {warning}', file=sys.stderr)
    try:
      detector = faces.make_detector(detector_name, args.yunet_model)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
      raise PredictError(f'--detector {detector_name}: {e}') from None
    options = _options(args, model, detector_name)
  except PredictError as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_USAGE
  except Exception as e:  # pylint: disable=broad-except  # A checkpoint that does not fit, etc.
    from ferjax import checkpointing  # pylint: disable=import-outside-toplevel
    if isinstance(e, checkpointing.CheckpointMismatchError):
      print(f'error: {e}', file=sys.stderr)
      return EXIT_USAGE
    raise
  for given, error in failed:
    print(f'error: {error}', file=sys.stderr)
  results, records = [], [{'input': g, 'error': e} for g, e in failed]
  for source in sources:
    try:
      result = predict_source(source, model, detector, options, progress=not args.quiet)
    except (media.MediaError, faces.NoFaceError) as e:
      print(f'error: {e}', file=sys.stderr)
      failed.append((os.fspath(source.path), str(e)))
      records.append({'input': os.fspath(source.path), 'error': str(e)})
      continue
    if len(result.tracks) > 1 and options.crop == 'frame':
      print(f'warning: {source.path}: {len(result.tracks)} faces, but the model sees whole frames '
            '(--crop frame): every face gets the same frames; --crop face cuts each face out',
            file=sys.stderr)
    results.append(result)
    records.append(result_json(result))
    print(format_table(result, args.max_rows), flush=True)
    if args.annotate:
      write_annotated(result, per_input[source]['annotate'])
    if args.plot:
      write_plot(result, per_input[source]['plot'])
  if results:
    frames = sum(r.num_frames for r in results)
    seconds = sum(r.seconds for r in results)
    in_model = sum(r.model_seconds for r in results)
    print(f'{len(results)} input(s), {frames} frames in {seconds:.2f} s: {frames / seconds:.1f} frames/s '
          f'(decode + detect ({detector_name}) + crop + model; model {model.kind}: {in_model:.2f} s, '
          'its first call compiles)')
  if args.json:
    payload = {'model': {k: model.metadata.get(k) for k in ('class_names', 'num_frames', 'image_size',
                                                             'inputs', 'preprocessing', 'source')},
               'options': dataclasses.asdict(options) | {'detector': detector_name},
               'results': records}
    Path(args.json).write_text(json.dumps(payload, indent=1))
  if args.csv:
    Path(args.csv).write_text(csv_text(results, model.class_names))
  if failed:
    print(f'{len(failed)} of {len(failed) + len(results)} input(s) failed', file=sys.stderr)
    return EXIT_SOME_FAILED
  return 0


def quiet_library_logs() -> None:
  """Orbax and jax2onnx log INFO/WARNING lines (e.g. a missing optional metadata file) that say nothing
  to a user of the CLI; errors still show."""
  import logging  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.ERROR)
  for name in ('jax2onnx', 'onnx_ir', 'orbax', 'absl'):
    logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
  quiet_library_logs()
  sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
  main()
