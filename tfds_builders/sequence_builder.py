"""Shared machinery of the ferjax sequence builders (CK+, Oulu-CASIA, eNTERFACE'05, RML, AFEW, DFEW, FERV39k,
MAFW, RAF-DB).

A dataset builder subclasses :class:`SequenceDatasetBuilder` and implements one method,
``_find_sources(manual_dir)``, which walks the user's copy and returns one :class:`SequenceSource` per
sequence (which files, label, subject, split). Everything else is shared:

* finding the dataset's known folders at any nesting depth below the manual dir (:func:`find_dirs`), and a
  clear error naming the expected layout and what was found (:func:`manual_dir_error`);
* reading frames (image files or a video), keeping at most ``max_frames`` evenly spaced ones, face-cropping
  them with one stable square box per sequence (``ferjax.data.faces``) and JPEG-encoding them, or, for
  released face crops that already have the target size (``keep_jpeg``), storing their JPEG bytes as
  they are;
* doing that for all sequences in parallel on all CPU cores (``FERJAX_NUM_WORKERS`` overrides the count),
  in a deterministic order, with progress lines on stdout;
* skipping unusable sequences (undecodable files, no face, an unreadable label file) with a logged reason;
  they are listed in the prepared dataset's metadata (``builder.info.metadata['skipped']``: sequence id,
  path, split, reason) and counted in the build summary;
* writing ArrayRecord (what ``tfds.data_source`` reads) unless the caller asks for another format, also
  under ``tfds build`` without ``--file_format``;
* the ``python -m tfds_builders`` command line (:func:`main`), which shows a wrong builder name, config or
  manual dir as one message without a traceback.

Features: those of ``ferjax.data.tfds_common.sequence_features`` plus two extras that record provenance:
``frame_indices`` (int32 [num_frames], 0-based positions of the kept frames in the original sequence or
video) and ``face_box`` (float32 [4], the crop box x, y, side, side in original pixels).
"""

import collections
from collections.abc import Callable, Iterator, Sequence
import dataclasses
import difflib
import importlib
import inspect
import multiprocessing
import os
from pathlib import Path
import re
import sys
import time
from typing import Any

from absl import logging
import cv2
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ferjax.data import faces
from ferjax.data import media
from ferjax.data import tfds_common

NUM_WORKERS_ENV = 'FERJAX_NUM_WORKERS'
YUNET_MODEL_ENV = 'FERJAX_YUNET_MODEL'


# ----------------------------------------------------------------------------------------------------------
# Finding the dataset below the manual dir.


def find_dirs(root: str | os.PathLike, match: Callable[[Path], bool], max_depth: int = 6) -> list[Path]:
  """Folders at or below ``root`` (at most ``max_depth`` levels down) for which ``match`` is true.

  Breadth-first and sorted, so shallower and alphabetically earlier folders come first; a matched folder is
  not searched further (its own sub-folders are the dataset's content). Hidden folders are ignored.
  """
  found, level = [], [Path(root)]
  for _ in range(max_depth + 1):
    next_level = []
    for folder in level:
      if match(folder):
        found.append(folder)
        continue
      try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not media.is_hidden(p.name))
      except OSError:
        continue
      next_level.extend(children)
    level = next_level
  return found


def name_matches(*patterns: str) -> Callable[[Path], bool]:
  """A ``find_dirs`` predicate: the folder name fully matches one of the regexes (case-insensitive)."""
  compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
  return lambda path: any(c.fullmatch(path.name) for c in compiled)


def subdirs(folder: Path, pattern: str = '.*') -> list[Path]:
  """Non-hidden sub-folders of ``folder`` whose name fully matches ``pattern`` (case-insensitive), sorted."""
  regex = re.compile(pattern, re.IGNORECASE)
  try:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not media.is_hidden(p.name) and regex.fullmatch(p.name))
  except OSError:
    return []


def has_subdirs(pattern: str, min_count: int = 1) -> Callable[[Path], bool]:
  """A ``find_dirs`` predicate: the folder has at least ``min_count`` sub-folders matching ``pattern``."""
  return lambda path: len(subdirs(path, pattern)) >= min_count


def describe_dir(folder: str | os.PathLike, limit: int = 25) -> str:
  """A short listing of a folder's top-level entries (folders end with '/') for error messages."""
  folder = Path(folder)
  if not folder.exists():
    return f'{folder} does not exist'
  if not folder.is_dir():
    return f'{folder} is not a folder'
  entries = sorted(folder.iterdir())
  if not entries:
    return f'{folder} is empty'
  names = [p.name + ('/' if p.is_dir() else '') for p in entries[:limit]]
  more = f', ... ({len(entries) - limit} more)' if len(entries) > limit else ''
  return f'{folder} contains: {", ".join(names)}{more}'


class ManualDirError(FileNotFoundError):
  """The manual dir does not hold the dataset in any layout the builder knows."""


class BuildError(ValueError):
  """A build cannot start because of what the user gave (builder or config name, an ambiguous copy of
  the dataset); ``python -m tfds_builders`` prints it, like :class:`ManualDirError`, without a traceback."""


def manual_dir_error(dataset: str, manual_dir: str | os.PathLike, expected: str,
                     problem: str = '') -> ManualDirError:
  """The error for a wrong or empty manual dir: what was expected, and what is there."""
  problem = problem or f'found no {dataset} data'
  return ManualDirError(
      f'{problem} under the manual dir {manual_dir}.\n'
      f'Expected (at any depth below it):\n{expected.rstrip()}\n'
      f'Found: {describe_dir(manual_dir)}')


# ----------------------------------------------------------------------------------------------------------
# One sequence: what to read, and how to crop it.


@dataclasses.dataclass(frozen=True)
class SequenceSource:
  """One sequence of the user's copy, as a builder's ``_find_sources`` describes it.

  Attributes:
    sequence_id: unique, stable id (the TFDS key), e.g. ``'S005_001'``.
    split: the split it goes to, e.g. ``'fold_3'``.
    label: class name, one of the builder's ``CLASS_NAMES``.
    subject: subject id as text.
    images: image files in temporal order (image-sequence datasets); empty for a video.
    video: the video file (video datasets); None for image sequences.
    image_indices: original 0-based frame positions of ``images`` (default: 0, 1, 2, ...); set it when a
      builder passes only some frames of a sequence (e.g. CK+'s first + last three).
    landmarks: optional landmark files, one per image (None where missing); their boxes replace detection.
    extras: extra feature values of the example, as (name, value) pairs (e.g. FERV39k's scene); the
      builder declares the features in ``_extra_features``.
    line: the line of the split or label file that lists the sequence (recorded when it is skipped).
  """
  sequence_id: str
  split: str
  label: str
  subject: str
  images: tuple[str, ...] = ()
  video: str | None = None
  image_indices: tuple[int, ...] | None = None
  landmarks: tuple[str | None, ...] | None = None
  extras: tuple[tuple[str, Any], ...] = ()
  line: int | None = None

  @property
  def path(self) -> str:
    """Where the sequence lives on disk (for logs and the skipped list)."""
    if self.video is not None:
      return self.video
    return str(Path(self.images[0]).parent) if self.images else ''


@dataclasses.dataclass(frozen=True)
class CropOptions:
  """How frames are read and cropped (see ``ferjax.data.faces`` for the box rule)."""
  size: int = 256
  face_detector: str = 'haar'
  yunet_model_path: str | None = None
  margin: float = 0.25
  max_frames: int | None = None
  detect_frames: int = 8
  jpeg_quality: int = 95
  keep_jpeg: bool = False


@dataclasses.dataclass(frozen=True)
class SequenceResult:
  """What processing one sequence gave: an example, or the reason it was skipped."""
  source: SequenceSource
  example: dict[str, Any] | None
  skip_reason: str | None = None


_DETECTORS: dict[tuple[str, str | None], faces.FaceDetector] = {}


def _detector(options: CropOptions) -> faces.FaceDetector:
  """One detector per worker process (loading a cascade or ONNX model once, not once per sequence)."""
  # The model path is YuNet's; 'blazeface' uses the model shipped with ferjax.
  model = options.yunet_model_path if options.face_detector == 'yunet' else None
  key = (options.face_detector, model)
  if key not in _DETECTORS:
    _DETECTORS[key] = faces.make_detector(options.face_detector, model)
  return _DETECTORS[key]


def _read_frames(source: SequenceSource, max_frames: int | None):
  """Frames, their original indices, and the landmark arrays (or None) of one sequence."""
  if source.video is not None:
    frames, indices = media.read_video(source.video, max_frames)
    return frames, indices, None
  indices_all = source.image_indices or tuple(range(len(source.images)))
  if len(indices_all) != len(source.images):
    raise ValueError(f'{source.sequence_id}: {len(source.images)} images but '
                     f'{len(indices_all)} image_indices')
  picks = media.evenly_spaced(len(source.images), max_frames)
  frames = media.read_images([source.images[i] for i in picks])
  landmarks = None
  if source.landmarks is not None:
    landmarks = [None if source.landmarks[i] is None else faces.read_landmarks(source.landmarks[i])
                 for i in picks]
  return frames, [indices_all[i] for i in picks], landmarks


def _stored_jpegs(source: SequenceSource, options: CropOptions):
  """(JPEG bytes, original indices) of the kept frames when they can be stored as they are, else None.

  That is when the frames are already the face crops (``face_detector='none'``, ``keep_jpeg``) and every
  kept file is a JPEG of exactly ``size`` x ``size``: no decoding, no re-encoding, no detection (the
  header gives the size; a file without a frame header or cut off before its end marker is unreadable).
  """
  if not (options.keep_jpeg and options.face_detector == 'none' and source.images):
    return None
  indices_all = source.image_indices or tuple(range(len(source.images)))
  picks = media.evenly_spaced(len(source.images), options.max_frames)
  data = []
  for i in picks:
    path = source.images[i]
    if Path(path).suffix.lower() not in ('.jpg', '.jpeg'):
      return None
    try:
      blob = Path(path).read_bytes()
    except OSError as e:
      raise media.MediaError(f'cannot read {path}: {e}') from e
    if media.jpeg_size(blob, path) != (options.size, options.size):
      return None
    data.append(blob)
  return data, [indices_all[i] for i in picks]


def process_sequence(source: SequenceSource, options: CropOptions) -> SequenceResult:
  """Reads, face-crops and JPEG-encodes one sequence; never raises for bad data (returns a skip)."""
  try:
    stored = _stored_jpegs(source, options)
  except (media.MediaError, OSError) as e:
    return SequenceResult(source, None, f'{type(e).__name__}: {e}')
  if stored is not None:
    data, indices = stored
    return SequenceResult(source, {
        'frames': data, 'label': source.label, 'subject': source.subject,
        'sequence_id': source.sequence_id, 'num_frames': np.int32(len(data)),
        'frame_indices': np.asarray(indices, np.int32),
        'face_box': np.asarray([0, 0, options.size, options.size], np.float32), **dict(source.extras)})
  try:
    frames, indices, landmarks = _read_frames(source, options.max_frames)
    detector = None if landmarks is not None and any(l is not None for l in landmarks) else (
        _detector(options))
    crop = faces.crop_faces(frames, detector, size=options.size, landmarks=landmarks,
                            margin=options.margin, detect_frames=options.detect_frames)
  except faces.NoFaceError as e:
    return SequenceResult(source, None, f'no face: {e}')
  except (media.MediaError, ValueError, OSError) as e:
    return SequenceResult(source, None, f'{type(e).__name__}: {e}')
  example = {
      'frames': [tfds_common.encode_jpeg(f, options.jpeg_quality) for f in crop.frames],
      'label': source.label,
      'subject': source.subject,
      'sequence_id': source.sequence_id,
      'num_frames': np.int32(len(crop.frames)),
      'frame_indices': np.asarray(indices, np.int32),
      'face_box': np.asarray(crop.box, np.float32),
      **dict(source.extras),
  }
  return SequenceResult(source, example)


def _process_star(args: tuple[SequenceSource, CropOptions]) -> SequenceResult:
  return process_sequence(*args)


def _init_worker() -> None:
  # One OpenCV thread per process: the parallelism is across sequences, not inside OpenCV.
  cv2.setNumThreads(1)


def num_workers() -> int:
  """Worker processes for a build: ``$FERJAX_NUM_WORKERS`` or all CPU cores."""
  value = os.environ.get(NUM_WORKERS_ENV)
  if value:
    if not value.isdigit() or int(value) < 1:
      raise ValueError(f'{NUM_WORKERS_ENV} must be a positive integer, got {value!r}')
    return int(value)
  return os.cpu_count() or 1


def make_pool(workers: int | None = None):
  """A process pool for :func:`process_sequences`, or None for in-process work (one worker).

  Workers are started with 'forkserver' (or 'spawn' where that is missing), never plain 'fork': a fork
  copies OpenCV's thread pool in whatever state the parent's threads left it, and the child can deadlock
  in its first OpenCV call. The workers import this module (about 0.5 s, once per build).
  """
  workers = workers or num_workers()
  if workers <= 1:
    return None
  methods = multiprocessing.get_all_start_methods()
  context = multiprocessing.get_context('forkserver' if 'forkserver' in methods else 'spawn')
  if context.get_start_method() == 'forkserver':
    context.set_forkserver_preload(['tfds_builders.sequence_builder'])
  return context.Pool(workers, initializer=_init_worker)


def process_sequences(sources: Sequence[SequenceSource], options: CropOptions | Sequence[CropOptions], *,
                      pool=None, desc: str = '') -> Iterator[SequenceResult]:
  """Processes sequences on ``pool`` (from :func:`make_pool`; None: in this process) in input order.

  ``options``: one for all sequences, or one per sequence (a composite of released face crops and raw
  frames). Prints a progress line about every 5 % (and at the end) with sequences/s and frames/s.
  """
  per_source = [options] * len(sources) if isinstance(options, CropOptions) else list(options)
  tasks = list(zip(sources, per_source))
  start, frames_done, skipped = time.perf_counter(), 0, 0
  every = max(1, len(sources) // 20)

  def report(done: int) -> None:
    elapsed = max(time.perf_counter() - start, 1e-9)
    print(f'[{desc}] {done}/{len(sources)} sequences, {skipped} skipped, '
          f'{done / elapsed:.2f} sequences/s, {frames_done / elapsed:.1f} frames/s', flush=True)

  results = map(_process_star, tasks) if pool is None else pool.imap(_process_star, tasks)
  for done, result in enumerate(results, 1):
    if result.example is None:
      skipped += 1
    else:
      frames_done += int(result.example['num_frames'])
    yield result
    if done % every == 0 or done == len(sources):
      report(done)


# ----------------------------------------------------------------------------------------------------------
# The builder base class.


@dataclasses.dataclass(eq=False)
class SequenceConfig(tfds.core.BuilderConfig):
  """Builder config fields shared by all sequence builders.

  Attributes:
    size: side of the square face crops (256 lets training random-crop 224).
    face_detector: 'haar' (default), 'blazeface' (BlazeFace CNN shipped with ferjax, Haar where it finds
      nothing; finds tilted faces that Haar misses), 'libfacedetection' (YuNet from the ``[yunet]``
      extra, Linux x86_64: the most accurate in docs/detectors.md), 'yunet' (needs
      ``yunet_model_path`` or ``$FERJAX_YUNET_MODEL``) or 'none' (centred square of each frame, for
      pre-cropped data).
    yunet_model_path: ONNX file of OpenCV's YuNet detector.
    margin: border added around the face box, as a fraction of its side.
    max_frames: keep at most this many evenly spaced frames per sequence (None: all).
    detect_frames: the detector looks at this many evenly spaced frames per sequence.
    keep_jpeg: with ``face_detector='none'``, JPEG frames that already are ``size`` x ``size`` are stored
      as their source bytes (no decode, no re-encode); other frames are cropped and encoded as usual.
  """
  size: int = 256
  face_detector: str = 'haar'
  yunet_model_path: str | None = None
  margin: float = 0.25
  max_frames: int | None = None
  detect_frames: int = 8
  keep_jpeg: bool = False

  def crop_options(self) -> CropOptions:
    if self.face_detector not in faces.DETECTORS:
      raise ValueError(f'face_detector must be one of {faces.DETECTORS}, got {self.face_detector!r}')
    model = self.yunet_model_path or os.environ.get(YUNET_MODEL_ENV)
    # 'none' means the frame already is the face region: a margin would only add black borders.
    margin = 0.0 if self.face_detector == 'none' else self.margin
    return CropOptions(size=self.size, face_detector=self.face_detector, yunet_model_path=model,
                       margin=margin, max_frames=self.max_frames, detect_frames=self.detect_frames,
                       keep_jpeg=self.keep_jpeg)


class SequenceDatasetBuilder(tfds_common.ArrayRecordTfData, tfds.core.GeneratorBasedBuilder,
                             skip_registration=True):
  """Base class: subclasses set ``CLASS_NAMES`` and implement ``_find_sources``.

  Subclasses may also override ``_description()``, ``_extra_metadata(sources)`` (counts worth recording,
  e.g. CK+'s unlabelled sequences) and ``_homepage``, set ``EXPECTED_LAYOUT`` (the folders the manual dir
  should hold, for error messages), and call ``_skip_source`` from ``_find_sources`` for a sequence they
  cannot describe (e.g. an unreadable label file).

  ``file_format`` defaults to ArrayRecord: TFDS's own default is TFRecord, which ``tfds.data_source`` cannot
  read, and ``tfds build`` passes a format only when given ``--file_format``. A dataset already prepared
  on disk keeps the format it was written in.
  """

  CLASS_NAMES: tuple[str, ...] = ()
  HOMEPAGE: str | None = None
  EXPECTED_LAYOUT: str = ''

  def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    # `initialized` = restored from the dataset_info.json of a prepared dataset: its format wins.
    if file_format is None and not self.info.initialized:
      self.info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD, override=True)
    self._found_skipped: list[dict[str, Any]] = []

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default lookup evaluates `importlib_resources.abc.Traversable` for package modules, a
    # backport that is not installed on Python >= 3.9 (ModuleNotFoundError); the file path is the answer.
    return epath.Path(inspect.getfile(cls))

  def _find_sources(self, manual_dir: Path) -> list[SequenceSource]:
    """All sequences of the user's copy; raise :func:`manual_dir_error` when the layout is not found."""
    raise NotImplementedError

  def _skip_source(self, sequence_id: str, path: str | os.PathLike, reason: str,
                   split: str | None = None, line: int | None = None) -> None:
    """Records a sequence that ``_find_sources`` leaves out because it cannot be used (e.g. its label
    file is unreadable): logged, listed in ``info.metadata['skipped']`` and counted in the build summary,
    exactly like a sequence whose frames cannot be decoded."""
    logging.warning('%s: skipping %s (%s): %s', self.name, sequence_id, path, reason)
    entry = {'sequence_id': sequence_id, 'path': str(path), 'split': split, 'reason': reason}
    if line is not None:
      entry['line'] = line
    self._found_skipped.append(entry)

  def _expected_layout(self) -> str:
    return self.EXPECTED_LAYOUT or self.MANUAL_DOWNLOAD_INSTRUCTIONS

  def _manual_dir(self, dl_manager) -> Path:
    """The manual dir; a missing or empty one raises ManualDirError naming the expected layout."""
    try:
      return Path(dl_manager.manual_dir)
    except (AssertionError, OSError) as e:
      # TFDS asserts that the manual dir exists and is not empty; its message is the whole download
      # instructions, not what was expected below the dir and what is there.
      manual_dir = getattr(dl_manager, '_manual_dir', None)
      if manual_dir is None:
        raise
      raise manual_dir_error(self.name, manual_dir, self._expected_layout(),
                             problem=f'found no {self.name} data') from e

  def _crop_options(self) -> CropOptions:
    """How to crop; called after ``_find_sources`` (which may have chosen, e.g., a pre-cropped set)."""
    return self.builder_config.crop_options()

  def _source_options(self, source: SequenceSource, options: CropOptions) -> CropOptions:
    """How to crop ``source`` (default: ``options``, the config's, for every sequence)."""
    del source
    return options

  def _extra_metadata(self, sources: Sequence[SequenceSource]) -> dict[str, Any]:
    """Anything else to store in ``info.metadata`` (JSON-serialisable)."""
    del sources
    return {}

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    """Features beyond the common ones, filled from ``SequenceSource.extras`` (e.g. FERV39k's scene)."""
    return {}

  def _citation(self) -> str:
    """The contents of the package's CITATIONS.bib, when present."""
    bib = Path(inspect.getfile(type(self))).parent / 'CITATIONS.bib'
    return bib.read_text() if bib.exists() else ''

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    features = dict(tfds_common.sequence_features(self.CLASS_NAMES, config.size).items())
    features['frame_indices'] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    features['face_box'] = tfds.features.Tensor(shape=(4,), dtype=np.float32)
    features.update(self._extra_features())
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or '').strip(),
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage=self.HOMEPAGE,
        citation=self._citation(),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    self.builder_config.crop_options()  # Fail on a bad config before searching the manual dir.
    self._found_skipped = []
    sources = self._find_sources(manual_dir)
    found_skipped = self._found_skipped
    options = self._crop_options()
    if not sources:
      unusable = f' ({len(found_skipped)} unusable, e.g. {found_skipped[0]["reason"]})' if (
          found_skipped) else ''
      raise manual_dir_error(self.name, manual_dir, self._expected_layout(),
                             problem=f'found the {self.name} folders but no usable sequence in them'
                                     f'{unusable}')
    ids = collections.Counter(s.sequence_id for s in sources)
    duplicates = sorted(i for i, n in ids.items() if n > 1)
    if duplicates:
      raise BuildError(f'{self.name}: sequence ids must be unique, found duplicates {duplicates[:10]}')
    unknown = sorted({s.label for s in sources} - set(self.CLASS_NAMES))
    if unknown:
      raise ValueError(f'{self.name}: labels {unknown} are not among {self.CLASS_NAMES}')

    by_split = collections.defaultdict(list)
    for source in sources:
      by_split[source.split].append(source)
    metadata = self.info.metadata
    metadata.update({
        'num_sequences_found': len(sources) + len(found_skipped),
        'skipped': list(found_skipped),
        'crop_options': dataclasses.asdict(options),
        **self._extra_metadata(sources),
    })
    print(f'{self.name}: {len(sources)} sequences in {len(by_split)} splits under {manual_dir}; '
          f'{num_workers()} worker processes', flush=True)
    self._build_start = time.perf_counter()
    return {split: self._generate_examples(by_split[split], options, split)
            for split in sorted(by_split, key=_natural_key)}

  def _pool(self):
    """One worker pool per build, shared by all splits (closed in ``_download_and_prepare``)."""
    if not hasattr(self, '_worker_pool'):
      self._worker_pool = make_pool()
    return self._worker_pool

  def _generate_examples(self, sources: Sequence[SequenceSource], options: CropOptions, split: str):
    skipped = self.info.metadata['skipped']
    per_source = [self._source_options(source, options) for source in sources]
    for result in process_sequences(sources, per_source, pool=self._pool(),
                                    desc=f'{self.name}/{split}'):
      if result.example is None:
        logging.warning('%s: skipping %s (%s): %s', self.name, result.source.sequence_id,
                        result.source.path, result.skip_reason)
        entry = {'sequence_id': result.source.sequence_id, 'path': result.source.path,
                 'split': split, 'reason': result.skip_reason}
        if result.source.line is not None:
          entry['line'] = result.source.line
        skipped.append(entry)
        continue
      self._frames_built = getattr(self, '_frames_built', 0) + int(result.example['num_frames'])
      yield result.source.sequence_id, result.example

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      pool = self.__dict__.pop('_worker_pool', None)
      if pool is not None:
        pool.terminate()
        pool.join()
    metadata = self.info.metadata
    skipped = metadata.get('skipped', [])
    metadata['num_skipped'] = len(skipped)
    elapsed = time.perf_counter() - getattr(self, '_build_start', time.perf_counter())
    kept = metadata.get('num_sequences_found', 0) - len(skipped)
    frames = getattr(self, '_frames_built', 0)
    print(f'{self.name}: built {kept} sequences ({frames} frames), skipped {len(skipped)} unusable '
          f'ones (listed in info.metadata["skipped"]) in {elapsed:.1f} s: '
          f'{kept / max(elapsed, 1e-9):.2f} sequences/s, {frames / max(elapsed, 1e-9):.1f} frames/s '
          f'with {num_workers()} worker processes', flush=True)
    for entry in skipped:
      print(f'  skipped {entry["sequence_id"]}: {entry["reason"]}', flush=True)


def _natural_key(name: str) -> list:
  """'fold_10' after 'fold_9'; 'subject_2' before 'subject_10'."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def kfold_by_sorted_subjects(subjects: Sequence[str], k: int = 10) -> dict[str, str]:
  """subject -> 'fold_<i>' where i = position in the ascending-sorted unique subjects, mod k."""
  ordered = sorted(set(subjects))
  return {s: f'fold_{i % k}' for i, s in enumerate(ordered)}


def builder_names() -> list[str]:
  """The builder packages of tfds_builders/: folders holding a ``<name>/<name>_dataset_builder.py``."""
  root = Path(__file__).resolve().parent
  return sorted(p.parent.name for p in root.glob('*/*_dataset_builder.py')
                if p.name == f'{p.parent.name}_dataset_builder.py')


def builder_class(name: str, config: str | None = None) -> type[tfds.core.DatasetBuilder]:
  """The ``Builder`` of ``tfds_builders/<name>`` (importing it registers it with TFDS).

  Raises:
    BuildError: no such builder, or it has no config ``config``; the message lists the known names.
  """
  names = builder_names()
  if name not in names:
    raise BuildError(f'unknown builder {name!r}{_did_you_mean(name, names)}; '
                     f'known builders: {", ".join(names)}')
  cls = importlib.import_module(f'tfds_builders.{name}').Builder
  configs = [c.name for c in cls.BUILDER_CONFIGS or ()]
  if config is not None and config not in configs:
    raise BuildError(f'{name} has no config {config!r}{_did_you_mean(config, configs)}; '
                     f'its configs: {", ".join(configs) or "none"}')
  return cls


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, choices, n=1)
  return f' (did you mean {close[0]}?)' if close else ''


def _absolute(path: str | os.PathLike | None) -> str | None:
  # Paths are stored in the prepared dataset (file templates, the skipped list) and read again from
  # other working directories and worker processes: make them absolute where the user gives them.
  return os.path.abspath(os.path.expanduser(path)) if path else None


def build(name: str, manual_dir: str | None, data_dir: str | None = None, config: str | None = None):
  """Builds ``tfds_builders/<name>`` (``config``: a config name, default the builder's default) from
  ``manual_dir`` into ``data_dir`` as ArrayRecord, without TensorFlow; returns the builder.

  Raises:
    BuildError: unknown builder or config name, a manual dir missing where the builder needs one, or an
      ambiguous copy of the dataset.
    ManualDirError: the manual dir is missing, empty, or holds nothing of the dataset's layout.
  """
  cls = builder_class(name, config)
  if manual_dir is None and cls.MANUAL_DOWNLOAD_INSTRUCTIONS:
    raise BuildError(f'{name} needs --manual_dir: the folder holding your copy of the dataset')
  builder = tfds.builder(name if config is None else f'{name}/{config}',
                         data_dir=_absolute(data_dir), file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=_absolute(manual_dir)))
  return builder


USER_ERRORS = (BuildError, ManualDirError)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m tfds_builders <name> --manual_dir DIR [--config C] [--data_dir D] [--debug]``.

  Like ``tfds build tfds_builders/<name> --manual_dir DIR``, whose CLI (tensorflow-datasets 4.9) needs
  TensorFlow, apache-beam and mlcroissant at start-up (the [tf] extra); this one needs none of them and
  always writes ArrayRecord. A wrong builder or config name or a wrong manual dir is printed as one
  message (what was expected, what was found) with exit status 2; ``--debug`` shows the traceback.
  """
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='python -m tfds_builders',
                                   description=main.__doc__.split('\n')[0])
  parser.add_argument('name', help=f'builder package under tfds_builders/: {", ".join(builder_names())}')
  parser.add_argument('--manual_dir', default=None, help="the user's copy of the dataset")
  parser.add_argument('--data_dir', default=None, help='output root (default ~/tensorflow_datasets)')
  parser.add_argument('--config', default=None, help='builder config name (default: the default)')
  parser.add_argument('--debug', action='store_true', help='show the traceback of an input error')
  args = parser.parse_args(argv)
  try:
    builder = build(args.name, args.manual_dir, args.data_dir, args.config)
  except USER_ERRORS as e:
    if args.debug:
      raise
    print(f'error: {e}', file=sys.stderr)
    return 2
  print({split: info.num_examples for split, info in builder.info.splits.items()})
  return 0


class SubjectVideoBuilder(SequenceDatasetBuilder, skip_registration=True):
  """Videos of numbered subjects, one split `subject_<n>` each (leave-one-subject-out): eNTERFACE'05, RML.

  Subclasses implement `_find_clips(manual_dir) -> (clips, excluded)`: clips with `sequence_id`, `subject`,
  `label` and `path`; excluded entries (`sequence_id`, `reason`) are logged and recorded in the metadata.
  """

  def _find_clips(self, manual_dir: Path):
    raise NotImplementedError

  def _find_sources(self, manual_dir: Path) -> list[SequenceSource]:
    clips, excluded = self._find_clips(manual_dir)
    self._excluded = excluded
    for entry in excluded:
      logging.warning('%s: excluding %s: %s', self.name, entry.sequence_id, entry.reason)
    subjects = sorted({c.subject for c in clips}, key=int)
    print(f"{self.name}: {len(clips)} clips of {len(subjects)} subjects ({', '.join(subjects)}); "
          f"{len(excluded)} videos excluded (listed in info.metadata['excluded'])", flush=True)
    return [SequenceSource(sequence_id=c.sequence_id, split=f'subject_{c.subject}', label=c.label,
                           subject=c.subject, video=str(c.path))
            for c in clips]

  def _extra_metadata(self, sources):
    excluded = [dataclasses.asdict(e) for e in getattr(self, '_excluded', [])]
    return {'excluded': excluded, 'num_excluded': len(excluded),
            'subjects': sorted({s.subject for s in sources}, key=int)}
