"""The afew builder on dummy_data/, a generated copy of the real layout (Train_AFEW/, Val/Val_AFEW/).

dummy_data/ is written by ``scripts/make_dummy_data_videos.py``: 64x48 MJPG clips of a drawn face that the
real Haar detector finds, one clip of blank frames (no face: skipped and recorded) and one file of garbage
bytes (undecodable: skipped and recorded). The build and the reads run without TensorFlow; TFDS's own
``DatasetBuilderTestCase`` needs TensorFlow (and dill) and runs only where they are installed.
"""

import pathlib
import unittest

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ferjax.data import protocols
from tfds_builders import sequence_builder
from tfds_builders import testing
from tfds_builders.afew import afew_dataset_builder as builder_lib

DUMMY_DATA = pathlib.Path(__file__).resolve().parent / 'dummy_data'
TEST_CONFIG = sequence_builder.SequenceConfig(name='test', size=32, max_frames=8,
                                              description='tiny crops for tests')
SPLITS = {'train': 7, 'validation': 4}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  testing.build(builder_lib.Builder, TEST_CONFIG, data_dir, DUMMY_DATA)
  return data_dir


def _read_all(data_dir):
  return testing.read_all('afew/test', SPLITS, data_dir)


def test_splits_and_seven_classes(data_dir):
  info = tfds.builder('afew/test', data_dir=data_dir).info
  assert {name: split.num_examples for name, split in info.splits.items()} == SPLITS
  assert info.features['label'].names == [
      'anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise']


def test_labels_and_ids_include_the_split(data_dir):
  examples = _read_all(data_dir)
  names = tfds.builder('afew/test', data_dir=data_dir).info.features['label'].names
  got = {i: (names[ex['label']], ex['split']) for i, ex in examples.items()}
  assert got == {
      'train/Angry/000046280': ('anger', 'train'),
      'train/Disgust/000147120': ('disgust', 'train'),
      'train/Fear/000200520': ('fear', 'train'),
      'train/Happy/000324160': ('happiness', 'train'),
      'train/Neutral/000412480': ('neutral', 'train'),
      'train/Sad/000535600': ('sadness', 'train'),
      'train/Surprise/000617360': ('surprise', 'train'),
      # The same clip id in both splits: two examples.
      'validation/Happy/000324160': ('happiness', 'validation'),
      'validation/Angry/005150814': ('anger', 'validation'),
      'validation/Sad/011603980': ('sadness', 'validation'),
      'validation/Surprise/004510640': ('surprise', 'validation'),
  }
  assert {ex['subject'] for ex in examples.values()} == {b''}  # AFEW has no subject annotations.


def test_frames_and_kept_indices(data_dir):
  examples = _read_all(data_dir)
  for ex in examples.values():
    assert ex['num_frames'] == len(ex['frames']) == len(ex['frame_indices']) <= 8
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in ex['frames'])
  assert list(examples['train/Happy/000324160']['frame_indices']) == [0, 2, 4, 6, 9, 11, 13, 15]


def test_no_face_and_undecodable_clips_skipped_and_recorded(data_dir):
  metadata = tfds.builder('afew/test', data_dir=data_dir).info.metadata
  skipped = {s['sequence_id']: s for s in metadata['skipped']}
  assert metadata['num_skipped'] == 2
  assert set(skipped) == {'train/Neutral/000999999', 'validation/Fear/002233445'}
  assert skipped['train/Neutral/000999999']['reason'].startswith('no face')
  assert skipped['train/Neutral/000999999']['split'] == 'train'
  assert 'MediaError' in skipped['validation/Fear/002233445']['reason']
  assert skipped['validation/Fear/002233445']['path'].endswith('Val_AFEW/Fear/002233445.avi')


def test_protocol_trains_on_train_and_tests_on_validation(data_dir):
  available = protocols.dataset_splits('afew/test', data_dir=str(data_dir))
  assert protocols.num_folds(available) == 1
  splits = protocols.splits_for(available, 0)
  assert (splits.train, splits.validation, splits.test) == ('train', None, 'validation')
  ids = {split: {ex['sequence_id'] for ex in tfds.data_source('afew/test', split=split,
                                                              data_dir=data_dir)}
         for split in ('train', 'validation')}
  assert not ids['train'] & ids['validation']


def test_wrong_manual_dir_names_expected_folders(tmp_path):
  (tmp_path / 'manual' / 'Train_AFEW' / 'Faces').mkdir(parents=True)  # No class folder.
  builder = builder_lib.Builder(data_dir=tmp_path / 'out', config=TEST_CONFIG,
                                file_format='array_record')
  with pytest.raises(sequence_builder.ManualDirError, match=r'(?s)Val_AFEW/<class>.*Train_AFEW/'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))


def test_tfds_dataset_builder_test_case():
  """TFDS's standard builder test (as_dataset, reload, configs); needs TensorFlow and dill."""
  pytest.importorskip('tensorflow')
  pytest.importorskip('dill')  # tensorflow_datasets.testing imports it; not a TFDS dependency.
  testing = pytest.importorskip('tensorflow_datasets.testing')

  class AfewTest(testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder_lib.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [TEST_CONFIG]
    SPLITS = SPLITS
    SKIP_CHECKSUMS = True

  result = unittest.TextTestRunner(verbosity=2).run(
      unittest.defaultTestLoader.loadTestsFromTestCase(AfewTest))
  assert result.wasSuccessful(), result.failures + result.errors
