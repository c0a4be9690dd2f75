"""Tests for ferjax.data.pipeline on a tiny real TFDS (ArrayRecord) dataset."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from conftest import build_sequence_dataset, identify
from ferjax.data import augment, pipeline, sampling, tfds_common

T, S = 4, 32
PLAIN = augment.AugmentOptions.none()  # Identity: output frames can be traced back to their record.


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """10 records in fold_0 (3..9 frames each), 3 classes, 32 px."""
  name, data_dir = build_sequence_dataset(tmp_path_factory.mktemp('data'),
                                          splits={'fold_0': 10, 'fold_1': 3})
  return tfds.data_source(name, split='fold_0', data_dir=data_dir)


def _train(source, options=PLAIN, batch=2, seed=0, **kw):
  return pipeline.train_loader(source, num_frames=T, image_size=S, options=options,
                               batch_size_per_host=batch, seed=seed, **kw)


def _eval(source, batch, options=PLAIN, **kw):
  return pipeline.eval_batches(source, num_frames=T, image_size=S, options=options,
                               batch_size_per_host=batch, **kw)


_SOURCE_INDEX = {}


def _source_index(source, generated: int) -> int:
  """Index in `source` of the record generated as number `generated` (TFDS shuffles on writing)."""
  key = id(source)
  if key not in _SOURCE_INDEX:
    _SOURCE_INDEX[key] = {int(source[j]['sequence_id'].split(b'/')[1]): j for j in range(len(source))}
  return _SOURCE_INDEX[key][generated]


def _ids(frames, source):
  """[B, T, S, S, 3] uint8 frames -> ([B] indices into source, [B, T] frame ids)."""
  pixels = frames
  ids = np.array([[identify(f)[:2] for f in seq] for seq in pixels])  # [B, T, 2]
  assert np.all(ids[:, :, 0] == ids[:, :1, 0])  # All frames of a row come from one record.
  return np.array([_source_index(source, int(i)) for i in ids[:, 0, 0]]), ids[:, :, 1]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_shapes_dtypes_labels(dataset):
  labels = {dataset[i]['label'] for i in range(len(dataset))}
  for batch in _take(iter(_train(dataset, augment.AugmentOptions(), batch=3)), 4):
    assert set(batch) == {'frames', 'label'}
    assert batch['frames'].shape == (3, T, S, S, 3) and batch['frames'].dtype == np.uint8
    assert batch['label'].shape == (3,) and batch['label'].dtype == np.int32
    assert set(batch['label']) <= labels


def test_epochs_cover_all_and_reshuffle(dataset):
  records, lengths = [], [len(dataset[i]['frames']) for i in range(len(dataset))]
  for batch in _take(iter(_train(dataset, batch=5, seed=3)), 6):  # 3 epochs of 10 records.
    ids, frame_ids = _ids(batch['frames'], dataset)
    records.extend(ids)
    np.testing.assert_array_equal(batch['label'], [dataset[int(i)]['label'] for i in ids])
    for i, f in zip(ids, frame_ids):  # Temporal sampling: sorted frames of that record.
      assert np.all(np.diff(f) >= 0) and f.max() < lengths[i]
  epochs = [records[k:k + 10] for k in (0, 10, 20)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(10))
  assert epochs[0] != epochs[1] != epochs[2]
  other_seed = _ids(next(iter(_train(dataset, batch=10, seed=4)))['frames'], dataset)[0]
  assert list(other_seed) != epochs[0]


@pytest.mark.parametrize('shard_count', [2, 3])
def test_shards_disjoint_and_covering(dataset, shard_count):
  seen = []
  for shard in range(shard_count):
    local = len(range(shard, len(dataset), shard_count))
    batches = _take(iter(_train(dataset, batch=1, shard_index=shard, shard_count=shard_count)), local)
    ids = {int(_ids(b['frames'], dataset)[0][0]) for b in batches}
    assert len(ids) == local  # One epoch of this shard: each of its records once.
    seen.append(ids)
  assert sorted(i for ids in seen for i in ids) == list(range(len(dataset)))


def test_examples_do_not_depend_on_batch_size(dataset):
  """Each example's randomness is keyed by (seed, record, epoch), not by its batch or position."""
  options = augment.AugmentOptions(mask_prob=0.5)
  a = np.concatenate([b['frames'] for b in _take(iter(_train(dataset, options, batch=2, seed=1)), 10)])
  b = np.concatenate([b['frames'] for b in _take(iter(_train(dataset, options, batch=5, seed=1)), 4)])
  np.testing.assert_array_equal(a, b)
  c = next(iter(_train(dataset, options, batch=2, seed=2)))['frames']
  assert not np.array_equal(a[:2], c)


def test_checkpoint_restore_is_exact(dataset, tmp_path):
  options = augment.AugmentOptions(mask_prob=0.5)
  manager = ocp.CheckpointManager(
      tmp_path / 'ckpt', options=ocp.CheckpointManagerOptions(create=True),
      item_handlers={'data': grain.checkpoint.CheckpointHandler()})
  iterator = iter(_train(dataset, options, batch=3, seed=5))
  _take(iterator, 3)
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  expected = _take(iterator, 5)  # Crosses an epoch boundary (10 records, 3 per batch).
  manager.wait_until_finished()
  fresh = iter(_train(dataset, options, batch=3, seed=5))
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for want, got in zip(expected, _take(fresh, 5)):
    np.testing.assert_array_equal(want['frames'], got['frames'])
    np.testing.assert_array_equal(want['label'], got['label'])
  manager.close()


def test_worker_processes_give_the_same_batches(dataset):
  options = augment.AugmentOptions(mask_prob=0.5)
  expected = _take(iter(_train(dataset, options, batch=3)), 4)
  iterator = iter(_train(dataset, options, batch=3, worker_count=2))
  try:
    got = _take(iterator, 3)
    state = iterator.get_state()
    got.append(next(iterator))
  finally:
    iterator.close()
  for want, batch in zip(expected, got):
    np.testing.assert_array_equal(want['frames'], batch['frames'])
  resumed = iter(_train(dataset, options, batch=3))  # A state saved with workers resumes without.
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['frames'], expected[3]['frames'])


@pytest.mark.parametrize('batch, shard_count', [(3, 1), (4, 1), (3, 2), (2, 3), (8, 3)])
def test_eval_covers_every_record_once(dataset, batch, shard_count):
  n = len(dataset)
  per_host = pipeline.num_eval_batches(n, batch, shard_count)
  records = []
  for shard in range(shard_count):
    batches = list(_eval(dataset, batch, shard_index=shard, shard_count=shard_count))
    assert len(batches) == per_host == -(-n // (batch * shard_count))
    for b in batches:
      assert b['frames'].shape == (batch, T, S, S, 3) and b['frames'].dtype == np.uint8
      assert b['label'].dtype == np.int32 and b['mask'].dtype == np.bool_
      assert np.all(b['frames'][~b['mask']] == 0) and np.all(b['label'][~b['mask']] == 0)
      ids, frame_ids = _ids(b['frames'][b['mask']], dataset)
      for i, f, label in zip(ids, frame_ids, b['label'][b['mask']]):
        assert label == dataset[int(i)]['label']
        np.testing.assert_array_equal(f, sampling.eval_indices(len(dataset[int(i)]['frames']), T))
      records.extend(ids)
  assert sorted(records) == list(range(n))


def test_eval_is_deterministic_and_parallel_safe(dataset):
  first = list(_eval(dataset, 4))
  again = list(_eval(dataset, 4, worker_count=1))
  assert len(first) == len(again) == 3
  for a, b in zip(first, again):
    for key in ('frames', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])


def test_grey_and_encoded_frames():
  """Sources may hold 2-D / 1-channel frames or JPEG bytes; all become RGB."""
  grey = np.full((S, S), 100, np.uint8)
  source = [
      {'frames': [grey] * 3, 'label': 0},
      {'frames': [grey[..., None]] * 5, 'label': 1},
      {'frames': [tfds_common.encode_jpeg(np.full((S, S, 3), 100, np.uint8))] * 2, 'label': 2},
  ]
  batch = next(_eval(source, 3))
  assert batch['frames'].shape == (3, T, S, S, 3)
  np.testing.assert_allclose(batch['frames'], 100, atol=2)
  assert next(iter(_train(source, batch=3)))['frames'].shape == (3, T, S, S, 3)


def test_bad_input(dataset):
  with pytest.raises(ValueError, match=r'shard_index must be in \[0, 1\]; got 2'):
    _train(dataset, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match='batch_size_per_host must be >= 1'):
    _eval(dataset, 0)
  with pytest.raises(ValueError, match='worker_count must be >= 0'):
    _train(dataset, worker_count=-1)
  with pytest.raises(ValueError, match='3 records cannot be split over 4 hosts'):
    _train([{'frames': [np.zeros((S, S, 3), np.uint8)], 'label': 0}] * 3, shard_index=0, shard_count=4)
  with pytest.raises(ValueError, match=r'expected frames of shape .*got \(8, 8, 2\)'):
    next(_eval([{'frames': [np.zeros((8, 8, 2), np.uint8)], 'label': 0}], 1))


def test_only_the_sampled_frames_are_decoded(tmp_path):
  from ferjax.data import datasets
  name, data_dir = build_sequence_dataset(tmp_path, splits={'fold_0': 4}, min_frames=8, max_frames=12)
  source = datasets.PreparedDataset(name, data_dir, (), ()).source('fold_0')
  lengths = [len(source[i]['frames']) for i in range(4)]
  assert all(isinstance(f, bytes) for f in source[0]['frames'])  # Read, not decoded.
  before = pipeline.DECODE_COUNT.value
  batches = list(_eval(source, 4))  # One pass over the 4 records, in this process.
  assert len(batches) == 1 and batches[0]['frames'].dtype == np.uint8
  assert pipeline.DECODE_COUNT.value - before == 4 * T < sum(lengths)
  ids, frame_ids = _ids(batches[0]['frames'], source)
  assert list(ids) == [0, 1, 2, 3]
  for n, f in zip(lengths, frame_ids):  # The decoded frames are the sampled ones.
    np.testing.assert_array_equal(f, sampling.eval_indices(n, T))


@pytest.mark.parametrize('mode, rule', [('clip', sampling.clip_indices), ('apex', sampling.apex_indices)])
def test_sampling_modes_in_training_and_evaluation(dataset, mode, rule):
  """'clip' (central T frames) and 'apex' (last T) pick the same frames in training and evaluation."""
  lengths = [len(dataset[i]['frames']) for i in range(len(dataset))]
  assert min(lengths) < T < max(lengths)  # Both the short (edge-repeating) and the long case occur.
  for batch in _take(iter(_train(dataset, batch=5, sampling_mode=mode)), 2):
    for i, f in zip(*_ids(batch['frames'], dataset)):
      np.testing.assert_array_equal(f, rule(lengths[i], T))
  for batch in _eval(dataset, 5, sampling_mode=mode):
    for i, f in zip(*_ids(batch['frames'], dataset)):
      np.testing.assert_array_equal(f, rule(lengths[i], T))
  # By hand, for the frame counts of this dataset's first records.
  hand = {'clip': {3: [0, 0, 1, 2], 5: [0, 1, 2, 3], 8: [2, 3, 4, 5], 9: [2, 3, 4, 5]},
          'apex': {3: [0, 0, 1, 2], 5: [1, 2, 3, 4], 8: [4, 5, 6, 7], 9: [5, 6, 7, 8]}}[mode]
  for n, expected in hand.items():
    np.testing.assert_array_equal(rule(n, T), expected)
  with pytest.raises(ValueError, match="sampling must be one of .*got 'middle'"):
    _train(dataset, sampling_mode='middle')


def test_eval_rows_carry_the_record_index(dataset):
  batches = list(_eval(dataset, 4))
  index = np.concatenate([b['index'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert index.dtype == np.int32 and list(index[mask]) == list(range(len(dataset)))
  assert np.all(index[~mask] == -1)
  ids = np.concatenate([_ids(b['frames'][b['mask']], dataset)[0] for b in batches])
  np.testing.assert_array_equal(ids, index[mask])  # The index is the record the row shows.


GEOMETRIC = augment.AugmentOptions(crop_scale=(0.5, 0.9), flip=True, rotation=10.0, brightness=0.5,
                                   contrast=0.5, mask_prob=1.0)


@pytest.mark.parametrize('shard_count', [1, 2])
def test_tta_copies(dataset, shard_count):
  """K copies per record: copy 0 is the plain view, the others the training warp from a fixed
  per-(record, copy) seed, without photometric jitter or masking; every host steps the same number of
  batches."""
  k, n = 3, len(dataset)
  rows = pipeline.eval_rows(dataset, T, 'one', k)
  assert rows.tolist() == [[i, -1, c] for i in range(n) for c in range(k)]
  copies = {}
  counts = []
  for shard in range(shard_count):
    batches = list(_eval(dataset, 4, GEOMETRIC, tta_copies=k, shard_index=shard, shard_count=shard_count))
    counts.append(len(batches))
    assert batches[0]['frames'].shape == (4, T, S, S, 3)
    for b in batches:
      for i, f in zip(b['index'][b['mask']], b['frames'][b['mask']]):
        copies.setdefault(int(i), []).append(f)
  assert counts == [pipeline.num_eval_batches(n * k, 4, shard_count)] * shard_count
  assert sorted(copies) == list(range(n)) and all(len(v) == k for v in copies.values())
  for i, views in copies.items():  # Flat colours survive any warp: each row shows its record.
    assert _ids(np.stack(views), dataset)[0].tolist() == [i] * k


def _textured():
  rng = np.random.default_rng(0)
  return [{'frames': list(rng.integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)), 'label': i}
          for i in range(3)]


def test_tta_copies_by_hand():
  """Textured frames: row (record i, copy c) is the plain view for c = 0, else the training warp drawn
  from default_rng([TTA_STREAM, i, c]) -- no photometric jitter, no masking."""
  source = _textured()
  k = 3
  batch = next(_eval(source, 9, GEOMETRIC, tta_copies=k))
  assert batch['index'].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and batch['mask'].all()
  assert batch['label'].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  for row, (i, c) in enumerate((i, c) for i in range(3) for c in range(k)):
    frames = np.stack(source[i]['frames'])[sampling.eval_indices(5, T)]
    if c == 0:
      want = augment.eval_preprocess(frames, S, GEOMETRIC)
    else:
      draw = augment.draw(40, 40, S, GEOMETRIC, np.random.default_rng([pipeline.TTA_STREAM, i, c]))
      want = augment.warp(frames, draw.matrix, S)
      assert not np.array_equal(want, augment.eval_preprocess(frames, S, GEOMETRIC))
    np.testing.assert_array_equal(batch['frames'][row], want)


def test_tta_is_deterministic():
  """The same views in every pass, in-process or in a grain worker."""
  first = np.concatenate([b['frames'] for b in _eval(_textured(), 4, GEOMETRIC, tta_copies=2)])
  again = np.concatenate([b['frames'] for b in _eval(_textured(), 4, GEOMETRIC, tta_copies=2,
                                                     worker_count=1)])
  np.testing.assert_array_equal(first, again)


def test_all_windows_cover_every_frame(dataset):
  lengths = [len(dataset[i]['frames']) for i in range(len(dataset))]
  batches = list(_eval(dataset, 4, windows='all', sampling_mode='clip'))
  frames_of = {}
  for b in batches:
    ids, frame_ids = _ids(b['frames'][b['mask']], dataset)
    np.testing.assert_array_equal(ids, b['index'][b['mask']])
    for i, f in zip(ids, frame_ids):
      frames_of.setdefault(int(i), []).append(f)
  for i, windows in frames_of.items():
    assert len(windows) == -(-lengths[i] // T)  # ceil(N / T) windows of T consecutive frames ...
    assert set(np.concatenate(windows)) == set(range(lengths[i]))  # ... covering every frame.
  assert sorted(frames_of) == list(range(len(dataset)))
  with pytest.raises(ValueError, match="windows must be one of .*got 'some'"):
    _eval(dataset, 4, windows='some')


def test_repeated_indices_decode_once():
  """A short sequence repeats frames (T = 4 of 2 frames): each distinct frame is decoded once."""
  frames = [tfds_common.encode_jpeg(np.full((S, S, 3), v, np.uint8)) for v in (40, 200)]
  before = pipeline.DECODE_COUNT.value
  batch = next(_eval([{'frames': frames, 'label': 0}], 1, sampling_mode='clip'))
  assert pipeline.DECODE_COUNT.value - before == 2
  np.testing.assert_allclose(batch['frames'][0].mean(axis=(1, 2, 3)), [40, 40, 200, 200], atol=2)


def test_decoding_matches_opencv_bgr_decode():
  """JPEG and PNG bytes (colour and grey) decode to the pixels of cv2.imdecode(BGR) + cvtColor."""
  import cv2
  rng = np.random.default_rng(0)
  colour = cv2.GaussianBlur(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), (0, 0), 1.0)
  grey = colour[..., 0]
  for data in (tfds_common.encode_jpeg(colour), tfds_common.encode_jpeg(grey),
               cv2.imencode('.png', colour)[1].tobytes(), cv2.imencode('.png', grey)[1].tobytes()):
    want = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    got = pipeline._as_rgb(data)
    assert got.shape == (24, 40, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(pipeline._as_rgb(cv2.imencode('.png', colour)[1].tobytes()),
                                cv2.cvtColor(colour, cv2.COLOR_BGR2RGB))  # PNG: lossless, RGB order.


def test_train_example_equals_a_reference_by_hand():
  """A training example (decode -> warp -> jitter -> mask, written for speed: no stacking, in place)
  equals the same steps written plainly: per-frame decode and warpAffine, per-pixel float32 jitter."""
  import cv2
  rng = np.random.default_rng(1)
  big = cv2.GaussianBlur(rng.integers(0, 256, (60, 70, 3), dtype=np.uint8), (0, 0), 1.5)
  frames = [tfds_common.encode_jpeg(np.roll(big, k, axis=1)) for k in range(9)]
  record = {'frames': frames, 'label': 2, 'sequence_id': 'ref/0'}
  options = augment.AugmentOptions(mask_prob=1.0, mask_count=2, brightness=0.4, contrast=0.4)
  spec = pipeline.ExampleSpec(T, S, options)
  for epoch in range(4):
    got = pipeline._TrainExample(spec, seed=5, records_per_epoch=1)(epoch, (0, record))
    r = np.random.default_rng([5, 0, epoch])
    indices = sampling.indices('segments', len(frames), T, r)
    source = [cv2.cvtColor(cv2.imdecode(np.frombuffer(frames[i], np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB) for i in indices]
    d = augment.draw(60, 70, S, options, r)
    warped = np.stack([cv2.warpAffine(f, d.matrix, (S, S), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_REFLECT_101) for f in source])
    mean = np.float32(d.brightness * int(warped.sum(dtype=np.int64)) / warped.size)
    jittered = warped.astype(np.float32) * np.float32(d.brightness)
    want = np.rint(np.clip((jittered - mean) * np.float32(d.contrast) + mean, 0, 255)).astype(np.uint8)
    for y, x, h, w in d.boxes:
      want[:, y:y + h, x:x + w] = augment.MASK_FILL
    assert d.boxes and got['label'] == 2
    np.testing.assert_array_equal(got['frames'], want)


def _load_config(path: str, arg: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec_ = importlib.util.spec_from_file_location(f'config_{arg}', path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize('family', ['res_rbg', 'rfscnn'])
def test_evaluation_batches_are_made_by_the_input_workers(synthetic_tiny, family):
  """Validation and test batches (RFSCNN's optical flow included) come from `input.worker_count` grain
  workers: nothing is decoded in this process, and the batches equal the in-process ones."""
  import os  # pylint: disable=import-outside-toplevel
  from ferjax.data import datasets, spec  # pylint: disable=import-outside-toplevel
  config = _load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs',
                                     f'{family}.py'), 'synthetic')
  config.dataset.config, config.dataset.data_dir = 'tiny', synthetic_tiny
  config.dataset.num_frames, config.dataset.image_size = 4, 32
  from ferjax import models  # pylint: disable=import-outside-toplevel
  source = datasets.prepare(config.dataset).source('fold_0')
  inputs = models.get_family(config.model.name).inputs
  config.input.worker_count = 0
  in_process = list(spec.eval_batches(config, source, (0, 1, 4), inputs, validation=True))
  config.input.worker_count = 1
  before = pipeline.DECODE_COUNT.value
  by_workers = list(spec.eval_batches(config, source, (0, 1, 4), inputs, validation=True))
  assert pipeline.DECODE_COUNT.value == before
  assert len(by_workers) == len(in_process) > 0
  for a, b in zip(in_process, by_workers):
    assert set(a) == set(b) and ('flow' in a) == (family == 'rfscnn')
    for key in a:  # Flow's magnitude may differ by an ulp between processes (sqrt, vectorised or not).
      if np.issubdtype(a[key].dtype, np.floating):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
      else:
        np.testing.assert_array_equal(a[key], b[key])
