"""grain input pipelines: random-access source -> sampled, augmented, batched sequences per host.

The source is anything with ``len`` and ``__getitem__`` returning a record dict with ``frames`` (a list
of decoded uint8 [H, W, 3] arrays, or JPEG bytes) and ``label`` -- typically
``tfds.data_source(name, split=..., data_dir=...)``.

Batches follow the batch contract of DESIGN.md: ``frames`` uint8 [B, T, S, S, 3] (normalised on the device,
``ferjax.steps.normalize_inputs``), ``label`` int32 [B], plus the other inputs named in ``inputs``
(registered in ``ferjax.data.inputs``, e.g. ``flow`` float32 [B, T - 1, S, S, 3]); evaluation batches add
``mask`` bool [B] (False on padding rows) and ``index`` int32 [B] (the row's record in the split, -1 on padding rows), so that
evaluation can average the rows of one record (test-time augmentation, windows).

Which T frames an example holds is the sampling mode (``sampling.MODES``: 'segments', 'clip', 'apex').
JPEG frames are decoded here, in the worker, and only the T sampled ones (``DECODE_COUNT`` counts them).
A record that cannot be made into an example raises ``RecordError`` naming its ``sequence_id``.

Training (:func:`train_loader`):
  * each host keeps the records ``shard_index::shard_count`` (disjoint, covering), and reshuffles them
    every epoch (grain's per-epoch shuffle seeds), forever; batches may straddle an epoch boundary;
  * the randomness of a record (temporal sampling + augmentation) comes from
    ``np.random.default_rng([seed, record_index, epoch])``: it does not depend on the worker count or on
    where a run was resumed;
  * batching happens before the data is split over worker processes, so every worker count, including 0
    (in-process), yields the same batches in the same order;
  * the loader's iterator is a ``grain.DatasetIterator`` whose state is the number of batches delivered;
    it is saved with ``grain.checkpoint.CheckpointSave`` in an Orbax checkpoint
    (see ferjax/checkpointing.py) and restores exactly, under any worker count.

Evaluation (:func:`eval_batches`): one deterministic pass over the rows of every record: one row per
window (``windows='one'``: the sampling mode's evaluation frames, or its K fixed temporal test views
``sampling.view_indices``; ``'all'``: consecutive T-frame windows covering the sequence) and spatial view
(test-time-augmentation copy: copy 0 plain, copies 1.. the geometric part of the training augmentation
drawn from a fixed per-(record, copy) seed; or one of the fixed crops ``augment.view_boxes``). Host ``h`` takes rows ``h, h + H, ...``
and every host yields ``ceil(rows / (B * H))`` batches, the last ones padded with ``mask=False`` rows.
"""

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import grain
import numpy as np

from ferjax.data import augment
from ferjax.data import flow as flow_lib
from ferjax.data import inputs as inputs_lib
from ferjax.data import sampling

# Records each in-process reader thread keeps ready; batches are large (B*T*S*S*3 float32), so keep few.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


class _Counter:
  """Frames decoded by this process (a test checks that only sampled frames are decoded)."""
  value = 0


DECODE_COUNT = _Counter()


class RecordError(ValueError):
  """A record could not be made into an example; the message names its sequence_id."""


def _record_name(record: dict, index: int) -> str:
  sequence_id = record.get('sequence_id', None)
  if isinstance(sequence_id, bytes):
    sequence_id = sequence_id.decode('utf-8', 'replace')
  return f'record {sequence_id!r} (index {index})' if sequence_id is not None else f'record {index}'


# The model inputs besides frames live in an open registry (`ferjax.data.inputs`); these names stay here
# for the modules that build examples.
View, Input, INPUTS = inputs_lib.View, inputs_lib.Input, inputs_lib.INPUTS
random_inputs = inputs_lib.random_values
_extra_inputs = inputs_lib.compute  # Older name, for callers not yet on inputs_lib.compute.


def _decode_rgb(data: bytes) -> np.ndarray | None:
  """JPEG/PNG bytes -> RGB uint8 [H, W, 3] (grey repeated), None if undecodable.

  OpenCV >= 4.10 decodes to RGB directly (libjpeg-turbo writes RGB; the same pixels as BGR + cvtColor,
  without the extra pass); older versions convert.
  """
  buffer = np.frombuffer(data, np.uint8)
  if _IMREAD_COLOR_RGB is not None:
    return cv2.imdecode(buffer, _IMREAD_COLOR_RGB)
  decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
  return None if decoded is None else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


_IMREAD_COLOR_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)


def _as_rgb(frame: Any) -> np.ndarray:
  """A decoded frame as uint8 [H, W, 3]; decodes JPEG/PNG bytes, repeats grey to three channels."""
  if isinstance(frame, bytes):
    DECODE_COUNT.value += 1
    decoded = _decode_rgb(frame)
    if decoded is None:
      raise ValueError(f'could not decode it (expected JPEG/PNG bytes; got {len(frame)} bytes '
                       f'starting {frame[:4]!r})')
    return decoded
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = frame[..., None]
  if frame.ndim != 3 or frame.shape[-1] not in (1, 3):
    raise ValueError(f'expected frames of shape [H, W], [H, W, 1] or [H, W, 3]; got {frame.shape}')
  return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame


def _select_frames(record: dict, indices: np.ndarray) -> list[np.ndarray]:
  """The frames at ``indices``, T arrays [H, W, 3] of one shape (decoding only those, each once, when
  frames are bytes; a repeated index repeats the same array). Not stacked: the warp reads them where
  they are, and the copy into one [T, H, W, 3] array cost ~10 % of a 224 px example."""
  frames, decoded = record['frames'], {}
  for i in dict.fromkeys(int(i) for i in indices):
    try:
      decoded[i] = _as_rgb(frames[i])
    except ValueError as e:
      raise ValueError(f'frame {i}: {e}') from e
  out = [decoded[int(i)] for i in indices]
  if len({f.shape for f in out}) > 1:
    raise ValueError(f'frames of one sequence must have one size; got {sorted({f.shape for f in out})}')
  return out


def _num_frames(record: dict) -> int:
  n = len(record['frames'])
  if n == 0:
    raise ValueError('the record has no frames')
  return n


def _attach_index(index: int, record: dict) -> tuple[int, dict]:
  """Pairs a record with its index in the full source, the key of its random stream."""
  return index, record


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
  """How an example is made, shared by training and evaluation (``ferjax.data.spec`` builds it).

  Attributes:
    num_frames: T, frames per example.
    image_size: S, output side in pixels.
    options: augmentation settings.
    inputs: 'frames' and any registered input (``ferjax.data.inputs``).
    sampling: temporal sampling mode, one of ``sampling.MODES``.
    flow: optical-flow method, one of ``flow.METHODS`` (read when inputs include 'flow').
    input_options: (config key, value) pairs the inputs read (``View.options``).
  """
  num_frames: int
  image_size: int
  options: augment.AugmentOptions
  inputs: tuple[str, ...] = ('frames',)
  sampling: str = 'segments'
  flow: str = 'dis'
  input_options: tuple[tuple[str, Any], ...] = ()
  # The registered Input of every non-frame input, resolved here: grain's worker processes get them
  # with the example maker (pickled), not from a registry that only the main process filled.
  specs: tuple[tuple[str, Input], ...] = ()

  def __post_init__(self):
    object.__setattr__(self, 'inputs', inputs_lib.check(self.inputs))
    object.__setattr__(self, 'specs', tuple((name, inputs_lib.get(name)) for name in self.inputs
                                            if name != 'frames'))
    if self.sampling not in sampling.MODES:
      raise ValueError(f'sampling must be one of {sorted(sampling.MODES)}; got {self.sampling!r}')
    if self.flow not in flow_lib.METHODS:
      raise ValueError(f'flow must be one of {flow_lib.METHODS}; got {self.flow!r}')

  def extras(self, record: dict, indices: np.ndarray, frames: Sequence[np.ndarray], matrix: np.ndarray,
             warped: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The example's inputs besides frames; ``warped`` = ``augment.warp(frames, matrix, S)`` if at hand."""
    view = View(frames, indices, _num_frames(record), matrix, self.image_size, self.flow, warped,
                dict(self.input_options), record)
    return {name: spec.compute(view) for name, spec in self.specs}

  def example(self, record: dict, out_frames: np.ndarray,
              extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {'frames': out_frames, 'label': np.int32(record['label']), **extras}


def _naming_record(fn):
  """Re-raises any error of making an example from record ``index`` as a RecordError naming it."""
  @functools.wraps(fn)
  def wrapper(self, record: dict, index: int, *args):
    try:
      return fn(self, record, index, *args)
    except RecordError:
      raise
    except (ValueError, cv2.error, IndexError, KeyError) as e:
      message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
      raise RecordError(f'{_record_name(record, index)}: {message}') from e
  return wrapper


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """Maps (position in this host's endless stream, (record index, record)) to a training example."""
  spec: ExampleSpec
  seed: int
  records_per_epoch: int

  def __call__(self, position: int, indexed: tuple[int, dict]) -> dict[str, np.ndarray]:
    record_index, record = indexed
    return self._make(record, record_index, position // self.records_per_epoch)

  @_naming_record
  def _make(self, record: dict, record_index: int, epoch: int) -> dict[str, np.ndarray]:
    spec = self.spec
    rng = np.random.default_rng([self.seed, record_index, epoch])
    indices = sampling.indices(spec.sampling, _num_frames(record), spec.num_frames, rng)
    frames = _select_frames(record, indices)
    height, width, _ = frames[0].shape
    d = augment.draw(height, width, spec.image_size, spec.options, rng)
    warped = augment.warp(frames, d.matrix, spec.image_size, spec.options.fill)
    extras = spec.extras(record, indices, frames, d.matrix, warped)  # Before the in-place jitter.
    return spec.example(record, augment.jitter_and_mask(warped, d), extras)


# Test-time augmentation copy c of record r uses np.random.default_rng([TTA_STREAM, r, c]): the same
# views for every run, seed and host, so TTA scores of different models are comparable.
TTA_STREAM = 7007


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Maps a padded row position to an evaluation example; positions past ``rows`` are padding.

  ``rows`` [R, 3] holds (record index, window, copy) per row; window w >= 0 = ``sampling.window_indices(..,
  w)``, w < 0 = temporal view -1 - w of ``temporal_views`` (-1 alone = the sampling mode's evaluation
  frames); with ``spatial_views`` > 1 the copy column is the spatial view (``augment.view_boxes``), else
  copy 0 = plain, c > 0 = the geometric part of the training augmentation from the (record, copy) seed.
  """
  source: Any
  spec: ExampleSpec
  rows: np.ndarray
  temporal_views: int = 1
  spatial_views: int = 1

  def __call__(self, position: int) -> dict[str, np.ndarray]:
    position, spec = int(position), self.spec
    if position >= len(self.rows):
      shape = (spec.num_frames, spec.image_size, spec.image_size, 3)
      return {'frames': np.zeros(shape, np.uint8), 'label': np.int32(0), 'mask': np.bool_(False),
              'index': np.int32(-1), **{name: np.zeros(s.shape(spec.num_frames, spec.image_size), s.dtype)
                 for name, s in spec.specs}}
    record_index, window, copy = (int(v) for v in self.rows[position])
    example = self._make(self.source[record_index], record_index, window, copy)
    return {**example, 'mask': np.bool_(True), 'index': np.int32(record_index)}

  @_naming_record
  def _make(self, record: dict, record_index: int, window: int, copy: int) -> dict[str, np.ndarray]:
    spec, n = self.spec, _num_frames(record)
    indices = (sampling.view_indices(spec.sampling, n, spec.num_frames, -1 - window, self.temporal_views)
               if window < 0 else sampling.window_indices(spec.sampling, n, spec.num_frames, window))
    frames = _select_frames(record, indices)
    height, width, _ = frames[0].shape
    if self.spatial_views > 1:
      box = augment.view_boxes(height, width, spec.options.eval_crop, self.spatial_views)[copy]
      matrix, out = box.matrix(spec.image_size), augment.crop_resize(frames, box, spec.image_size)
    elif copy == 0:
      matrix = flow_lib.eval_matrix(height, width, spec.image_size, spec.options.eval_crop)
      out = augment.eval_preprocess(frames, spec.image_size, spec.options)
    else:
      rng = np.random.default_rng([TTA_STREAM, record_index, copy])
      matrix = augment.draw(height, width, spec.image_size, spec.options, rng).matrix
      out = augment.warp(frames, matrix, spec.image_size, spec.options.fill)
    # Copy 0's frames are resized (area averaging), not warped: its *_output flow warps the frames itself,
    # as `ferjax.predict` does, so evaluation and prediction see the same flow.
    warped = None if copy == 0 else out
    return spec.example(record, out, spec.extras(record, indices, frames, matrix, warped))


def _check_sharding(num_records: int, batch_size: int, shard_index: int, shard_count: int) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size_per_host must be >= 1; got {batch_size}')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index must be in [0, {shard_count - 1}]; got {shard_index}')
  if num_records < 1:
    raise ValueError('the input source has no records')


def _exit_with(main_pid: int, worker_index: int, worker_count: int) -> None:
  """grain worker init: end this worker soon after the training process is gone.

  A SIGKILL-ed trainer cannot stop its workers, and they are children of grain's forkserver, not of
  the trainer, so no parent-death signal reaches them; a daemon thread polls the trainer's pid instead.
  """
  del worker_index, worker_count

  def watch():
    while True:
      time.sleep(0.5)
      try:
        os.kill(main_pid, 0)
      except ProcessLookupError:
        os._exit(0)
      except PermissionError:  # The pid was reused by another user's process: ours is gone.
        os._exit(0)
  threading.Thread(target=watch, name='ferjax-exit-with-trainer', daemon=True).start()


def _parallel(ds: grain.IterDataset, worker_count: int) -> grain.IterDataset:
  if worker_count < 0:
    raise ValueError(f'worker_count must be >= 0 (0 = in-process); got {worker_count}')
  if worker_count == 0:
    return ds
  return ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=1),
      worker_init_fn=functools.partial(_exit_with, os.getpid()))


class _ResumableIterator(grain.DatasetIterator):
  """Endless batch iterator whose state is just the number of batches delivered.

  The batches form a random-access ``grain.MapDataset``, so resuming at batch k is reading from k on.
  Unlike grain's own iterator states (whose layout changes with ``mp_prefetch``), this state restores
  the same stream under any worker count, and it counts delivered batches, not prefetched ones.
  """

  def __init__(self, batches: grain.MapDataset, worker_count: int):
    super().__init__()
    self._batches = batches
    self._worker_count = worker_count
    self._next_batch = 0
    self._iterator = None

  def _open(self) -> None:
    ds = self._batches[self._next_batch:].to_iter_dataset(_READ_OPTIONS)
    self._iterator = iter(_parallel(ds, self._worker_count))

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    if self._iterator is None:
      self._open()
    batch = next(self._iterator)
    self._next_batch += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {'next_batch': self._next_batch}

  def set_state(self, state: dict[str, int]) -> None:
    if 'next_batch' not in state:
      raise ValueError(f'not a ferjax train-loader state (expected key next_batch): {state}')
    self._close_underlying()
    self._next_batch = int(state['next_batch'])

  def start_prefetch(self) -> None:
    if self._iterator is None:
      self._open()

  def _close_underlying(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def close(self) -> None:
    self._close_underlying()
    super().close()

  def __str__(self) -> str:
    return f'ResumableIterator(next_batch={self._next_batch}, worker_count={self._worker_count})'


@dataclasses.dataclass(frozen=True)
class TrainLoader:
  """Iterable over endless training batches; ``iter()`` gives a fresh, checkpointable iterator."""
  batches: grain.MapDataset  # Endless, random-access batches of this host.
  worker_count: int

  def __iter__(self) -> _ResumableIterator:
    return _ResumableIterator(self.batches, self.worker_count)


def train_loader(source: Sequence[dict], *, num_frames: int, image_size: int,
                 options: augment.AugmentOptions, batch_size_per_host: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
                 inputs: Sequence[str] = ('frames',), sampling_mode: str = 'segments',
                 flow: str = 'dis', input_options: dict[str, Any] | None = None) -> TrainLoader:
  """Endless training batches of this host's shard; ``iter()`` gives a checkpointable iterator.

  Args:
    source: random-access records (see module docstring).
    num_frames: T, frames sampled per sequence (see ``sampling_mode``).
    image_size: S, output side in pixels.
    options: augmentation settings.
    batch_size_per_host: B, batch size of this host (the stream is endless, so every batch is full).
    seed: seed of the shuffle and of every record's random stream; use the same on all hosts.
    shard_index, shard_count: this host's index and the number of hosts (``jax.process_index()``,
      ``jax.process_count()``); each host reads a disjoint part of the records.
    worker_count: grain worker processes (0 = in the calling process). Batches do not depend on it,
      and a state saved under one worker count restores under another.
    inputs: the batch's inputs: 'frames' and any registered input (``ferjax.data.inputs``).
    sampling_mode: one of ``sampling.MODES``: 'segments' (TSN: a random frame of each of T segments),
      'clip' (the central T frames) or 'apex' (the last T frames).
    flow: optical-flow method when inputs include 'flow': 'dis' or 'farneback'.
    input_options: config values the inputs read (``View.options``), e.g. ``{'dataset.flow': 'dis'}``.

  Returns:
    A TrainLoader; its iterators yield dict(frames=uint8 [B, T, S, S, 3], label=int32 [B], ...) and have
    ``get_state``/``set_state`` (a ``grain.DatasetIterator``, so ``grain.checkpoint.CheckpointSave``
    and ``CheckpointRestore`` store them in an Orbax checkpoint).
  """
  _check_sharding(len(source), batch_size_per_host, shard_index, shard_count)
  if worker_count < 0:
    raise ValueError(f'worker_count must be >= 0 (0 = in-process); got {worker_count}')
  if len(source) < shard_count:
    raise ValueError(f'{len(source)} records cannot be split over {shard_count} hosts')
  ds = grain.MapDataset.source(source).map_with_index(_attach_index)[shard_index::shard_count]
  spec = ExampleSpec(num_frames, image_size, options, tuple(inputs), sampling_mode, flow,
                     tuple(sorted((input_options or {}).items())))
  example = _TrainExample(spec, seed, records_per_epoch=len(ds))
  ds = ds.shuffle(seed=seed).repeat(None).map_with_index(example)
  return TrainLoader(ds.batch(batch_size_per_host, drop_remainder=True), worker_count)


def train_record_order(num_records: int, seed: int, shard_index: int = 0, shard_count: int = 1
                       ) -> grain.MapDataset:
  """The record order of ``train_loader``'s stream: element p is the index (into the source) of the
  record at position p of this host's endless stream (the same slicing, per-epoch shuffle and repeat),
  so batch i holds elements i * B ... i * B + B - 1. Cross-validation in one program
  (``ferjax.parallel_folds``) reads every fold's batches from it without running the fold's loader."""
  return grain.MapDataset.range(num_records)[shard_index::shard_count].shuffle(seed=seed).repeat(None)


def num_eval_batches(num_records: int, batch_size_per_host: int, shard_count: int = 1) -> int:
  """Batches every host yields in one evaluation pass: ceil(n / (B * hosts))."""
  return math.ceil(num_records / (batch_size_per_host * shard_count))


WINDOWS = ('one', 'all')
_SPATIAL_NAMES = {3: 'centre and both ends of the longer side', 5: 'centre and four corners',
                  10: 'centre, four corners and their mirror images'}


def _check_views(windows: str, tta_copies: int, temporal_views: int, spatial_views: int) -> None:
  if windows not in WINDOWS:
    raise ValueError(f'windows must be one of {WINDOWS}; got {windows!r}')
  if tta_copies < 0:
    raise ValueError(f'tta_copies must be >= 0; got {tta_copies}')
  if temporal_views < 1:
    raise ValueError(f'temporal_views must be >= 1; got {temporal_views}')
  if spatial_views not in augment.SPATIAL_VIEWS:
    raise ValueError(f'spatial_views must be one of {augment.SPATIAL_VIEWS}; got {spatial_views!r}')
  if temporal_views > 1 and windows == 'all':
    raise ValueError(f"temporal_views={temporal_views} and windows='all' both choose the frames of a "
                     'sequence; use one of them')
  if spatial_views > 1 and tta_copies > 1:
    raise ValueError(f'spatial_views={spatial_views} and tta_copies={tta_copies} both choose the crops of '
                     'a window; use one of them')


def eval_rows(source: Sequence[dict], num_frames: int, windows: str = 'one', tta_copies: int = 0,
              temporal_views: int = 1, spatial_views: int = 1) -> np.ndarray:
  """The rows of one evaluation pass, int64 [R, 3] of (record index, window, copy), record-major.

  ``windows='one'`` gives each record one window per temporal view (window -1 - k = view k; one view:
  -1, the sampling mode's evaluation frames); ``'all'`` gives it ``sampling.num_windows(N, T)`` (this
  reads every record once, for its frame count). ``tta_copies`` K > 1 repeats every window K times (copy
  0 plain); 0 or 1 = no test-time augmentation. ``spatial_views`` V > 1 repeats it V times instead, the
  copy column then being the spatial view.
  """
  _check_views(windows, tta_copies, temporal_views, spatial_views)
  copies = np.arange(max(1, tta_copies, spatial_views))
  rows = []
  for i in range(len(source)):
    if windows == 'all':
      positions = range(sampling.num_windows(_num_frames_of(source[i], i), num_frames))
    else:
      positions = range(-1, -1 - temporal_views, -1)
    for w in positions:
      rows.extend((i, w, c) for c in copies)
  return np.array(rows, np.int64).reshape(-1, 3)


def _num_frames_of(record: dict, index: int) -> int:
  try:
    return _num_frames(record)
  except ValueError as e:
    raise RecordError(f'{_record_name(record, index)}: {e}') from None


class EvalBatches(Iterator[dict[str, np.ndarray]]):
  """One evaluation pass (an iterator of batches) that says how many rows each record has.

  Attributes:
    num_batches: batches this host yields (the same on every host).
    views: what the rows of one record are, in words (for ``report['scoring']``); '' for one plain row.
  """

  def __init__(self, iterator: Iterator[dict[str, np.ndarray]], num_batches: int, views: str):
    self._iterator, self.num_batches, self.views = iterator, num_batches, views

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)


def _describe_views(windows: str, tta_copies: int, num_frames: int, temporal_views: int = 1,
                    spatial_views: int = 1) -> str:
  parts = []
  if windows == 'all':
    parts.append(f'every consecutive {num_frames}-frame window')
  if temporal_views > 1:
    parts.append(f'{temporal_views} temporal views spread over the sequence')
  if spatial_views > 1:
    parts.append(f'{spatial_views} spatial crops ({_SPATIAL_NAMES[spatial_views]})')
  if tta_copies > 1:
    parts.append(f'{tta_copies} test-time augmentation copies (1 plain + {tta_copies - 1} with the '
                 'training flip/crop/rotation)')
  return ' x '.join(parts)


def eval_batches(source: Sequence[dict], *, num_frames: int, image_size: int,
                 options: augment.AugmentOptions, batch_size_per_host: int, shard_index: int = 0,
                 shard_count: int = 1, worker_count: int = 0,
                 inputs: Sequence[str] = ('frames',), sampling_mode: str = 'segments',
                 flow: str = 'dis', windows: str = 'one', tta_copies: int = 0,
                 input_options: dict[str, Any] | None = None, temporal_views: int = 1,
                 spatial_views: int = 1) -> EvalBatches:
  """One deterministic pass over ``source``: the sampling mode's evaluation frames, centre crop, padded
  batches.

  Every host yields ``num_eval_batches(rows, batch_size_per_host, shard_count)`` batches of
  dict(frames=uint8 [B, T, S, S, 3], label=int32 [B], mask=bool [B], index=int32 [B], ...); ``mask`` is
  False on padding rows (zero frames and inputs, label 0, index -1), so all batches have one shape and
  all hosts step together. ``rows`` = records x windows (or temporal views) x copies (or spatial views)
  (see :func:`eval_rows`); ``index`` says
  which record a row scores, and evaluation averages the class probabilities of a record's rows.
  Reads ``options.eval_crop``, and the geometric options (crop, flip, rotation) for TTA copies.
  """
  _check_sharding(len(source), batch_size_per_host, shard_index, shard_count)
  spec = ExampleSpec(num_frames, image_size, options, tuple(inputs), sampling_mode, flow,
                     tuple(sorted((input_options or {}).items())))
  rows = eval_rows(source, num_frames, windows, tta_copies, temporal_views, spatial_views)
  batches = num_eval_batches(len(rows), batch_size_per_host, shard_count)
  ds = grain.MapDataset.range(batches * batch_size_per_host * shard_count)[shard_index::shard_count]
  ds = ds.map(_EvalExample(source, spec, rows, temporal_views, spatial_views))
  ds = ds.batch(batch_size_per_host, drop_remainder=True)  # Exactly `batches` full batches.
  iterator = iter(_parallel(ds.to_iter_dataset(_READ_OPTIONS), worker_count))
  return EvalBatches(iterator, batches, _describe_views(windows, tta_copies, num_frames, temporal_views,
                                                        spatial_views))
