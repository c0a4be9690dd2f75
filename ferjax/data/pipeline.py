"""grain input pipelines: random-access source -> sampled, augmented, batched sequences per host.

The source is anything with ``len`` and ``__getitem__`` returning a record dict with ``frames`` (a list
of decoded uint8 [H, W, 3] arrays, or JPEG bytes) and ``label`` -- typically
``tfds.data_source(name, split=..., data_dir=...)``.

Batches follow the batch contract of DESIGN.md: ``frames`` uint8 [B, T, S, S, 3] (normalised on the device,
``ferjax.steps.normalize_inputs``), ``label`` int32 [B], plus the other inputs named in ``inputs`` (see
``INPUTS``); evaluation batches add ``mask`` bool [B] (False on padding rows).

JPEG frames are decoded here, in the worker, and only the T sampled ones (``DECODE_COUNT`` counts them).

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

Evaluation (:func:`eval_batches`): one deterministic pass; host ``h`` reads records ``h, h + H, ...``
and every host yields ``ceil(n / (B * H))`` batches, the last ones padded with ``mask=False`` rows.
"""

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import grain
import numpy as np

from ferjax.data import augment
from ferjax.data import sampling

# Records each in-process reader thread keeps ready; batches are large (B*T*S*S*3 float32), so keep few.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


class _Counter:
  """Frames decoded by this process (a test checks that only sampled frames are decoded)."""
  value = 0


DECODE_COUNT = _Counter()


def _frame_positions(indices: np.ndarray, num_frames: int) -> np.ndarray:
  return (indices / max(num_frames - 1, 1)).astype(np.float32)


# Inputs besides `frames` a family may ask for (Family.inputs): name -> (indices of the sampled frames,
# number of frames of the sequence) -> array. `frame_positions`: where each sampled frame lies in the
# sequence, float32 [T] in [0, 1] (0 = first frame, 1 = last).
INPUTS = {'frame_positions': _frame_positions}


def _check_inputs(inputs: Sequence[str]) -> tuple[str, ...]:
  unknown = [name for name in inputs if name != 'frames' and name not in INPUTS]
  if 'frames' not in inputs or unknown:
    raise ValueError(f'inputs must include frames and may add {sorted(INPUTS)}; got {list(inputs)}')
  return tuple(inputs)


def _extra_inputs(inputs, indices, num_frames) -> dict[str, np.ndarray]:
  return {name: INPUTS[name](indices, num_frames) for name in inputs if name != 'frames'}


def _as_rgb(frame: Any) -> np.ndarray:
  """A decoded frame as uint8 [H, W, 3]; decodes JPEG/PNG bytes, repeats grey to three channels."""
  if isinstance(frame, bytes):
    DECODE_COUNT.value += 1
    decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
      raise ValueError('could not decode a frame of an input record (expected JPEG/PNG bytes)')
    frame = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = frame[..., None]
  if frame.ndim != 3 or frame.shape[-1] not in (1, 3):
    raise ValueError(f'expected frames of shape [H, W], [H, W, 1] or [H, W, 3]; got {frame.shape}')
  return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame


def _select_frames(record: dict, indices: np.ndarray) -> np.ndarray:
  """Stacks the frames at ``indices`` (decoding only those when frames are bytes)."""
  frames = record['frames']
  return np.stack([_as_rgb(frames[i]) for i in indices])


def _num_frames(record: dict) -> int:
  n = len(record['frames'])
  if n == 0:
    raise ValueError(f'record {record.get("sequence_id", "?")!r} has no frames')
  return n


def _attach_index(index: int, record: dict) -> tuple[int, dict]:
  """Pairs a record with its index in the full source, the key of its random stream."""
  return index, record


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """Maps (position in this host's endless stream, (record index, record)) to a training example."""
  num_frames: int
  image_size: int
  options: augment.AugmentOptions
  seed: int
  records_per_epoch: int
  inputs: tuple[str, ...] = ('frames',)

  def __call__(self, position: int, indexed: tuple[int, dict]) -> dict[str, np.ndarray]:
    record_index, record = indexed
    epoch = position // self.records_per_epoch
    rng = np.random.default_rng([self.seed, record_index, epoch])
    n = _num_frames(record)
    indices = sampling.train_indices(n, self.num_frames, rng)
    frames = augment.train_augment(_select_frames(record, indices), self.image_size, self.options, rng)
    return {'frames': frames, 'label': np.int32(record['label']),
            **_extra_inputs(self.inputs, indices, n)}


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Maps a padded record index to an evaluation example; indices past the source are padding."""
  source: Any
  num_frames: int
  image_size: int
  options: augment.AugmentOptions
  inputs: tuple[str, ...] = ('frames',)

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index >= len(self.source):
      shape = (self.num_frames, self.image_size, self.image_size, 3)
      extra = _extra_inputs(self.inputs, np.zeros(self.num_frames, np.int32), 1)
      return {'frames': np.zeros(shape, np.uint8), 'label': np.int32(0), 'mask': np.bool_(False),
              **{k: np.zeros_like(v) for k, v in extra.items()}}
    record = self.source[index]
    n = _num_frames(record)
    indices = sampling.eval_indices(n, self.num_frames)
    frames = augment.eval_preprocess(_select_frames(record, indices), self.image_size, self.options)
    return {'frames': frames, 'label': np.int32(record['label']), 'mask': np.bool_(True),
            **_extra_inputs(self.inputs, indices, n)}


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
                 inputs: Sequence[str] = ('frames',)) -> TrainLoader:
  """Endless training batches of this host's shard; ``iter()`` gives a checkpointable iterator.

  Args:
    source: random-access records (see module docstring).
    num_frames: T, frames sampled per sequence (TSN-style random segments).
    image_size: S, output side in pixels.
    options: augmentation settings.
    batch_size_per_host: B, batch size of this host (the stream is endless, so every batch is full).
    seed: seed of the shuffle and of every record's random stream; use the same on all hosts.
    shard_index, shard_count: this host's index and the number of hosts (``jax.process_index()``,
      ``jax.process_count()``); each host reads a disjoint part of the records.
    worker_count: grain worker processes (0 = in the calling process). Batches do not depend on it,
      and a state saved under one worker count restores under another.
    inputs: the batch's inputs: 'frames' and any of ``INPUTS``.

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
  example = _TrainExample(num_frames, image_size, options, seed, records_per_epoch=len(ds),
                          inputs=_check_inputs(inputs))
  ds = ds.shuffle(seed=seed).repeat(None).map_with_index(example)
  return TrainLoader(ds.batch(batch_size_per_host, drop_remainder=True), worker_count)


def num_eval_batches(num_records: int, batch_size_per_host: int, shard_count: int = 1) -> int:
  """Batches every host yields in one evaluation pass: ceil(n / (B * hosts))."""
  return math.ceil(num_records / (batch_size_per_host * shard_count))


def eval_batches(source: Sequence[dict], *, num_frames: int, image_size: int,
                 options: augment.AugmentOptions, batch_size_per_host: int, shard_index: int = 0,
                 shard_count: int = 1, worker_count: int = 0,
                 inputs: Sequence[str] = ('frames',)) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over ``source``: uniform temporal sampling, centre crop, padded batches.

  Every host yields ``num_eval_batches(len(source), batch_size_per_host, shard_count)`` batches of
  dict(frames=uint8 [B, T, S, S, 3], label=int32 [B], mask=bool [B], ...); ``mask`` is False on padding
  rows (zero frames, label 0), so all batches have one shape and all hosts step together.
  Reads ``options.eval_crop`` only.
  """
  _check_sharding(len(source), batch_size_per_host, shard_index, shard_count)
  per_host = num_eval_batches(len(source), batch_size_per_host, shard_count) * batch_size_per_host
  ds = grain.MapDataset.range(per_host * shard_count)[shard_index::shard_count]
  ds = ds.map(_EvalExample(source, num_frames, image_size, options, _check_inputs(inputs)))
  ds = ds.batch(batch_size_per_host, drop_remainder=True)  # per_host is a multiple of B.
  return iter(_parallel(ds.to_iter_dataset(_READ_OPTIONS), worker_count))
