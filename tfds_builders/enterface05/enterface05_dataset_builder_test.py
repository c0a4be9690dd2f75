"""The enterface05 builder on dummy_data/, a generated copy of the real layout with its irregularities.

dummy_data/ is written by ``scripts/make_dummy_data_videos.py`` (64x48 MJPG clips of a drawn face that the
real Haar detector finds). The build and the reads run without TensorFlow; TFDS's own
``DatasetBuilderTestCase`` needs TensorFlow (and dill) and runs only where they are installed.
"""

import collections
import pathlib
import unittest

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ferjax.data import protocols
from tfds_builders import sequence_builder
from tfds_builders import testing
from tfds_builders.enterface05 import enterface05_dataset_builder as builder_lib

NAME = 'enterface05/test'
DUMMY_DATA = pathlib.Path(__file__).resolve().parent / 'dummy_data'
TEST_CONFIG = sequence_builder.SequenceConfig(name='test', size=32, max_frames=8,
                                              description='tiny crops for tests')
SPLITS = {'subject_3': 3, 'subject_11': 2, 'subject_12': 2, 'subject_14': 2, 'subject_16': 2,
          'subject_23': 1}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  testing.build(builder_lib.Builder, TEST_CONFIG, data_dir, DUMMY_DATA)
  return data_dir


def _read_all(data_dir):
  return testing.read_all('enterface05/test', SPLITS, data_dir)


def test_splits_are_subjects(data_dir):
  info = tfds.builder('enterface05/test', data_dir=data_dir).info
  assert {name: split.num_examples for name, split in info.splits.items()} == SPLITS


def test_labels_and_subjects_come_from_folders(data_dir):
  examples = _read_all(data_dir)
  names = tfds.builder('enterface05/test', data_dir=data_dir).info.features['label'].names
  assert names == ['anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise']
  got = {i: (names[ex['label']], ex['subject'].decode(), ex['split']) for i, ex in examples.items()}
  # Typo'd file names and subject 11's s12_* files: subject and label from the folders.
  assert got['subject 3/happiness/sentence 1/s_3_ha_1.avi'] == ('happiness', '3', 'subject_3')
  assert got['subject 16/surprise/sentence 3/s16_su_3avi.avi'] == ('surprise', '16', 'subject_16')
  assert got['subject 11/anger/sentence 1/s12_an_1.avi'] == ('anger', '11', 'subject_11')
  assert got['subject 12/anger/sentence 1/s12_an_1.avi'] == ('anger', '12', 'subject_12')
  assert got['subject 3/sadness/sentence 2/sentence 2/s3_sa_2.avi'] == ('sadness', '3', 'subject_3')
  assert all(subject_split == f'subject_{subject}' for _, subject, subject_split in got.values())
  assert collections.Counter(label for label, _, _ in got.values()) == {
      'anger': 5, 'disgust': 1, 'fear': 2, 'happiness': 2, 'sadness': 1, 'surprise': 1}


def test_frames_are_face_crops_with_kept_indices(data_dir):
  examples = _read_all(data_dir)
  for ex in examples.values():
    assert ex['num_frames'] == len(ex['frames']) == len(ex['frame_indices']) <= 8
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in ex['frames'])
  # The 20-frame clip keeps 8 evenly spaced frames, first and last included.
  long_clip = examples['subject 14/anger/sentence 2/s14_an_2.avi']
  assert list(long_clip['frame_indices']) == [0, 3, 5, 8, 11, 14, 16, 19]
  assert list(examples['subject 3/anger/sentence 1/s3_an_1.avi']['frame_indices']) == list(range(6))
  # The crop is centred on the drawn face: its bright skin fills the middle of the crop.
  centre = long_clip['frames'][0][12:20, 12:20].astype(float).mean()
  assert centre > 150


def test_subject_6_excluded_and_recorded(data_dir):
  metadata = tfds.builder('enterface05/test', data_dir=data_dir).info.metadata
  assert [e['sequence_id'] for e in metadata['excluded']] == [
      'subject 6/anger/s6_an.avi', 'subject 6/surprise/s6_su.avi']
  assert metadata['num_excluded'] == 2
  assert metadata['num_skipped'] == 0
  assert metadata['subjects'] == ['3', '11', '12', '14', '16', '23']


def test_no_subject_in_train_and_test_of_any_fold(data_dir):
  """Every fold, with and without a held-out validation subject: no subject in two of train,
  validation and test."""
  examples = _read_all(data_dir)
  assert testing.assert_subject_independent(NAME, data_dir, examples) == len(SPLITS)
  for fold in range(len(SPLITS)):  # Leave-one-subject-out: the test set is exactly one subject.
    test = protocols.splits_for(protocols.dataset_splits(NAME, str(data_dir)), fold).test
    assert len({ex['subject'] for ex in examples.values() if ex['split'] == test}) == 1


def test_wrong_manual_dir_names_expected_folders(tmp_path):
  (tmp_path / 'manual' / 'cohn-kanade-images').mkdir(parents=True)
  builder = builder_lib.Builder(data_dir=tmp_path / 'out', config=TEST_CONFIG,
                                file_format='array_record')
  with pytest.raises(sequence_builder.ManualDirError,
                     match=r'(?s)subject <n>/<emotion>/sentence <m>.*cohn-kanade-images/'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))


def test_tfds_dataset_builder_test_case():
  """TFDS's standard builder test (as_dataset, reload, configs); needs TensorFlow and dill."""
  pytest.importorskip('tensorflow')
  pytest.importorskip('dill')  # tensorflow_datasets.testing imports it; not a TFDS dependency.
  testing = pytest.importorskip('tensorflow_datasets.testing')

  class Enterface05Test(testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder_lib.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [TEST_CONFIG]
    SPLITS = SPLITS
    SKIP_CHECKSUMS = True

  result = unittest.TextTestRunner(verbosity=2).run(
      unittest.defaultTestLoader.loadTestsFromTestCase(Enterface05Test))
  assert result.wasSuccessful(), result.failures + result.errors
