"""The rml builder on dummy_data/, a generated copy of the real layout (rml-1/s1.., rml-2/s6/<language>/..).

dummy_data/ is written by ``scripts/make_dummy_data_videos.py`` (64x48 MJPG clips of a drawn face that the
real Haar detector finds). The build and the reads run without TensorFlow; TFDS's own
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
from tfds_builders.rml import rml_dataset_builder as builder_lib

NAME = 'rml/test'
DUMMY_DATA = pathlib.Path(__file__).resolve().parent / 'dummy_data'
TEST_CONFIG = sequence_builder.SequenceConfig(name='test', size=32, max_frames=8,
                                              description='tiny crops for tests')
SPLITS = {'subject_1': 2, 'subject_2': 2, 'subject_6': 3, 'subject_7': 2}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  testing.build(builder_lib.Builder, TEST_CONFIG, data_dir, DUMMY_DATA)
  return data_dir


def _read_all(data_dir):
  return testing.read_all('rml/test', SPLITS, data_dir)


def test_splits_are_speakers(data_dir):
  info = tfds.builder('rml/test', data_dir=data_dir).info
  assert {name: split.num_examples for name, split in info.splits.items()} == SPLITS
  assert info.metadata['subjects'] == ['1', '2', '6', '7']
  assert info.metadata['num_excluded'] == info.metadata['num_skipped'] == 0


def test_labels_from_file_names_and_language_folders(data_dir):
  examples = _read_all(data_dir)
  names = tfds.builder('rml/test', data_dir=data_dir).info.features['label'].names
  assert names == ['anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise']
  got = {i: (names[ex['label']], ex['subject'].decode(), ex['split']) for i, ex in examples.items()}
  assert got == {
      's1/an1.avi': ('anger', '1', 'subject_1'),
      's1/ha1.avi': ('happiness', '1', 'subject_1'),
      's2/Sa1.avi': ('sadness', '2', 'subject_2'),
      's2/di1.avi': ('disgust', '2', 'subject_2'),
      's6/english/su1.avi': ('surprise', '6', 'subject_6'),
      's6/mandarin/an2.avi': ('anger', '6', 'subject_6'),
      's6/mandarin/fe1.avi': ('fear', '6', 'subject_6'),
      's7/ha2.avi': ('happiness', '7', 'subject_7'),
      's7/sa2.avi': ('sadness', '7', 'subject_7'),
  }


def test_frames_and_kept_indices(data_dir):
  examples = _read_all(data_dir)
  for ex in examples.values():
    assert ex['num_frames'] == len(ex['frames']) == len(ex['frame_indices']) <= 8
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in ex['frames'])
  # The 18-frame clip keeps 8 evenly spaced frames, first and last included.
  assert list(examples['s6/mandarin/an2.avi']['frame_indices']) == [0, 2, 5, 7, 10, 12, 15, 17]


def test_no_subject_in_train_and_test_of_any_fold(data_dir):
  """Every fold, with and without a held-out validation subject: no subject in two of train,
  validation and test."""
  examples = _read_all(data_dir)
  assert testing.assert_subject_independent(NAME, data_dir, examples) == len(SPLITS)
  for fold in range(len(SPLITS)):  # Leave-one-subject-out: the test set is exactly one subject.
    test = protocols.splits_for(protocols.dataset_splits(NAME, str(data_dir)), fold).test
    assert len({ex['subject'] for ex in examples.values() if ex['split'] == test}) == 1


def test_wrong_manual_dir_names_expected_folders(tmp_path):
  (tmp_path / 'manual' / 'Train_AFEW').mkdir(parents=True)
  builder = builder_lib.Builder(data_dir=tmp_path / 'out', config=TEST_CONFIG,
                                file_format='array_record')
  with pytest.raises(sequence_builder.ManualDirError, match=r'(?s)rml-1/s1.*Train_AFEW/'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'manual')))


def test_tfds_dataset_builder_test_case():
  """TFDS's standard builder test (as_dataset, reload, configs); needs TensorFlow and dill."""
  pytest.importorskip('tensorflow')
  pytest.importorskip('dill')  # tensorflow_datasets.testing imports it; not a TFDS dependency.
  testing = pytest.importorskip('tensorflow_datasets.testing')

  class RmlTest(testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder_lib.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [TEST_CONFIG]
    SPLITS = SPLITS
    SKIP_CHECKSUMS = True

  result = unittest.TextTestRunner(verbosity=2).run(
      unittest.defaultTestLoader.loadTestsFromTestCase(RmlTest))
  assert result.wasSuccessful(), result.failures + result.errors
