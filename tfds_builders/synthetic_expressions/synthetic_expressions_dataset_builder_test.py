"""Builds the `tiny` config for real (TFDS + ArrayRecord, no TensorFlow) and checks what comes back.

tfds.testing.DatasetBuilderTestCase needs TensorFlow and dill, which ferjax does not install, so
this is a plain pytest that runs download_and_prepare and reads the result with tfds.data_source.
"""

import glob
import os

from array_record.python import array_record_module
import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

import tfds_builders.synthetic_expressions as synthetic_expressions
from ferjax.data import protocols
from ferjax.data import tfds_common
from tfds_builders.synthetic_expressions import faces
from tfds_builders.synthetic_expressions import (
    synthetic_expressions_dataset_builder as builder_module)

_CLASSES = ['anger', 'contempt', 'disgust', 'fear', 'happiness', 'sadness', 'surprise']


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  synthetic_expressions.build(data_dir, config='tiny', workers=1)
  return data_dir


def _read_all(data_dir):
  """{split: [record, ...]} through tfds.data_source (NumPy only)."""
  return {f'fold_{k}': list(tfds.data_source('synthetic_expressions/tiny', split=f'fold_{k}',
                                             data_dir=data_dir)) for k in range(10)}


def _canonical_records(data_dir):
  """Every stored record, re-serialised with sorted map keys.

  TFDS serialises tf.train.Example maps in an order that changes from process to process (upb's map
  hash seed), so the files' raw bytes differ between builds although every record holds the same
  values; the canonical form compares those values byte for byte, JPEG bytes included.
  """
  out = {}
  pattern = os.path.join(data_dir, 'synthetic_expressions', 'tiny', '*', '*.array_record*')
  for path in sorted(glob.glob(pattern)):
    reader = array_record_module.ArrayRecordReader(path)
    out[os.path.basename(path)] = [
        tf_example_pb2.Example.FromString(r).SerializeToString(deterministic=True)
        for r in reader.read_all()]
    reader.close()
  return out


def test_info_matches_the_contract(tiny_dir):
  builder = tfds.builder('synthetic_expressions/tiny', data_dir=tiny_dir)
  assert isinstance(builder, synthetic_expressions.Builder)
  assert builder.info.features['label'].names == _CLASSES
  assert builder.info.features['frames'].feature.shape == (32, 32, 3)
  assert sorted(builder.info.splits) == sorted(f'fold_{k}' for k in range(10))
  assert sum(s.num_examples for s in builder.info.splits.values()) == 20 * 7


def test_records_shapes_labels_and_folds(tiny_dir):
  splits = _read_all(tiny_dir)
  subjects_per_fold, ids = {}, set()
  for split, records in splits.items():
    by_subject = {}
    for r in records:
      subject, sequence_id = r['subject'].decode(), r['sequence_id'].decode()
      assert len(r['frames']) == r['num_frames'] and 4 <= r['num_frames'] <= 8
      for f in r['frames']:
        assert f.shape == (32, 32, 3) and f.dtype == np.uint8
      assert sequence_id == f'{subject}_{_CLASSES[r["label"]]}'
      assert int(subject[1:]) % 10 == int(split[-1]), (subject, split)
      by_subject.setdefault(subject, set()).add(r['label'])
      ids.add(sequence_id)
    assert all(labels == set(range(7)) for labels in by_subject.values()), by_subject
    subjects_per_fold[split] = set(by_subject)
  assert len(ids) == 140
  all_subjects = [s for subs in subjects_per_fold.values() for s in subs]
  assert len(all_subjects) == len(set(all_subjects)) == 20  # every subject in exactly one fold


def test_sequences_start_neutral_and_end_apart(tiny_dir):
  """Per subject, the 7 first frames are alike (noise apart) and the 7 apex frames are not."""

  def face(frame):  # blur away the per-frame sensor noise, keep the face region
    return cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 1.0)[6:28, 6:26]

  pairs = [(i, j) for i in range(7) for j in range(i + 1, 7)]
  records = [r for split in _read_all(tiny_dir).values() for r in split]
  for subject in {r['subject'] for r in records}:
    seqs = sorted((r for r in records if r['subject'] == subject), key=lambda r: r['label'])
    first = [face(r['frames'][0]) for r in seqs]
    last = [face(r['frames'][-1]) for r in seqs]
    onset_gap = np.mean([np.abs(first[i] - first[j]).mean() for i, j in pairs])
    apex_gap = np.mean([np.abs(last[i] - last[j]).mean() for i, j in pairs])
    assert onset_gap < 3.0, (subject, onset_gap)
    assert apex_gap > 2.0 * onset_gap, (subject, apex_gap, onset_gap)


def test_frames_are_the_drawn_faces(tiny_dir):
  """The stored frames are faces.render_sequence's drawing of that subject, JPEG-encoded."""
  record = next(r for r in _read_all(tiny_dir)['fold_1'] if r['sequence_id'] == b's011_surprise')
  identity = faces.sample_identity(np.random.default_rng([builder_module.BASE_SEED, 0, 11]))
  rng = np.random.default_rng([builder_module.BASE_SEED, 1, 11, _CLASSES.index('surprise')])
  num_frames = int(rng.integers(4, 9))
  assert num_frames == record['num_frames']
  drawn = faces.render_sequence(identity, 'surprise', num_frames, 32, rng)
  for stored, frame in zip(record['frames'], drawn):
    jpeg = np.frombuffer(tfds_common.encode_jpeg(frame), np.uint8)
    expected = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(stored.astype(np.float32) - expected).mean() < 1.0  # decoders may differ by ±1


def test_rebuild_is_identical_with_and_without_workers(tiny_dir, tmp_path):
  synthetic_expressions.build(str(tmp_path), config='tiny', workers=2)
  assert _canonical_records(str(tmp_path)) == _canonical_records(tiny_dir)


def test_too_few_subjects_is_a_clear_error(tmp_path):
  config = synthetic_expressions.SyntheticExpressionsConfig(name='bad', num_subjects=5)
  with pytest.raises(ValueError, match='num_subjects must be >= 10'):
    synthetic_expressions.Builder(config=config, data_dir=str(tmp_path))


@pytest.fixture(scope='module')
def images_tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds_images'))
  synthetic_expressions.build(data_dir, config='images_tiny', workers=1)
  return data_dir


def test_images_are_the_apex_frames_of_the_sequences(tiny_dir, images_tiny_dir):
  """images_tiny: one frame per record, the parent's last frame, label and subject; split by fold."""
  builder = tfds.builder('synthetic_expressions/images_tiny', data_dir=images_tiny_dir)
  assert builder.info.features['label'].names == _CLASSES
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 112, 'validation': 14, 'test': 14}
  parent = {r['sequence_id']: r for records in _read_all(tiny_dir).values() for r in records}
  seen = set()
  for split in ('train', 'validation', 'test'):
    for r in tfds.data_source('synthetic_expressions/images_tiny', split=split,
                              data_dir=images_tiny_dir):
      sequence = parent[r['sequence_id']]
      assert r['num_frames'] == len(r['frames']) == 1
      np.testing.assert_array_equal(r['frames'][0], sequence['frames'][-1])
      assert (r['label'], r['subject']) == (sequence['label'], sequence['subject'])
      fold = int(r['subject'].decode()[1:]) % 10
      assert split == ('train' if fold < 8 else 'validation' if fold == 8 else 'test')
      seen.add(r['sequence_id'])
  assert seen == set(parent)


def test_images_protocol_is_train_validation_test(images_tiny_dir):
  available = protocols.dataset_splits('synthetic_expressions/images_tiny', images_tiny_dir)
  assert protocols.splits_for(available, 0, holdout_validation=True) == protocols.Splits(
      train='train', validation='validation', test='test')


def test_render_sequence_keep_draws_the_same_frames():
  """keep=[...] returns exactly those frames of the full sequence (the skipped frames' noise is drawn)."""
  identity = faces.sample_identity(np.random.default_rng([99, 3]))
  assert identity.noise_sigma > 0
  full = faces.render_sequence(identity, 'happiness', 7, 32, np.random.default_rng(1))
  for keep in ([6], [0, 3, 6], [2]):
    part = faces.render_sequence(identity, 'happiness', 7, 32, np.random.default_rng(1), keep=keep)
    np.testing.assert_array_equal(part, full[keep])
  with pytest.raises(ValueError, match=r'keep must hold frame positions in \[0, 7\)'):
    faces.render_sequence(identity, 'happiness', 7, 32, np.random.default_rng(1), keep=[7])
