"""The oulu_casia builder on dummy_data/, a generated copy of the real layout (nested roots, cropped set).

dummy_data/ is written by ``python scripts/make_dummy_data.py oulu_casia``: VL/Strong has the official
cropped set and the original images, NI/Strong only the original images, so one build reads the crops and
the other detects faces. TFDS's ``DatasetBuilderTestCase`` needs TensorFlow and runs only where it is installed.
"""

import pathlib
import unittest

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders import testing
from tfds_builders.oulu_casia import oulu_casia_dataset_builder as builder_lib

DUMMY_DATA = pathlib.Path(__file__).resolve().parent / 'dummy_data'
SUBJECTS = [f'P{i:03d}' for i in range(1, 12)]
EMOTIONS = ['anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise']
SPLITS = {f'fold_{i}': 12 if i == 0 else 6 for i in range(10)}
CONFIGS = {
    'vl': builder_lib.OuluCasiaConfig(name='test_vl', modality='VL', illumination='Strong', size=32),
    'ni': builder_lib.OuluCasiaConfig(name='test_ni', modality='NI', illumination='Strong', size=32),
}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  for config in CONFIGS.values():
    builder = builder_lib.Builder(data_dir=data_dir, config=config, file_format='array_record')
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY_DATA)))
  return data_dir


def _read_all(data_dir, config):
  examples = {}
  for split in SPLITS:
    source = tfds.data_source(f'oulu_casia/{config}', split=split, data_dir=data_dir)
    for i in range(len(source)):
      examples[source[i]['sequence_id'].decode()] = dict(source[i], split=split)
  return examples


def test_default_config_is_vl_strong():
  assert builder_lib.Builder.DEFAULT_BUILDER_CONFIG_NAME == 'VL_Strong'
  assert [c.name for c in builder_lib.Builder.BUILDER_CONFIGS] == [
      'VL_Strong', 'VL_Weak', 'VL_Dark', 'NI_Strong', 'NI_Weak', 'NI_Dark']


@pytest.mark.parametrize('config', ['test_vl', 'test_ni'])
def test_splits_labels_subjects_and_folds(data_dir, config):
  builder = tfds.builder(f'oulu_casia/{config}', data_dir=data_dir)
  assert {n: s.num_examples for n, s in builder.info.splits.items()} == SPLITS
  assert builder.info.features['label'].names == EMOTIONS
  examples = _read_all(data_dir, config)
  assert sorted(examples) == sorted(f'{s}_{e}' for s in SUBJECTS for e in EMOTIONS)
  for sequence_id, ex in examples.items():
    subject, emotion = sequence_id.split('_')
    assert ex['subject'].decode() == subject
    assert EMOTIONS[ex['label']] == emotion
    assert subject in SUBJECTS[int(ex['split'].split('_')[1])::10]  # Folds: sorted subjects [i::10].
    # 2 or 3 frames per sequence in the dummy data; all kept, all 32x32 RGB.
    assert ex['num_frames'] == len(ex['frames']) == 2 + (SUBJECTS.index(subject)
                                                         + EMOTIONS.index(emotion)) % 2
    assert list(ex['frame_indices']) == list(range(ex['num_frames']))
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in ex['frames'])
  assert builder.info.metadata['num_skipped'] == 0


def test_cropped_set_is_preferred_and_original_used_otherwise(data_dir):
  vl = tfds.builder('oulu_casia/test_vl', data_dir=data_dir).info.metadata
  ni = tfds.builder('oulu_casia/test_ni', data_dir=data_dir).info.metadata
  assert vl['source'] == 'cropped' and vl['crop_options']['face_detector'] == 'none'
  assert ni['source'] == 'original' and ni['crop_options']['face_detector'] == 'haar'
  vl_example = _read_all(data_dir, 'test_vl')['P001_anger']
  ni_example = _read_all(data_dir, 'test_ni')['P001_anger']
  np.testing.assert_array_equal(vl_example['face_box'], [0, 0, 32, 32])  # The whole 32x32 crop.
  assert 15 < ni_example['face_box'][2] < 48  # A detected face in a 64x48 frame.
  # Either way the crop shows the face's bright skin in its middle.
  for ex in (vl_example, ni_example):
    assert ex['frames'][0][12:20, 12:20].astype(float).mean() > 150


def test_prefer_cropped_false_reads_original_images(tmp_path):
  config = builder_lib.OuluCasiaConfig(name='test_orig', prefer_cropped=False, size=32)
  builder = builder_lib.Builder(data_dir=tmp_path, config=config)
  sources = builder._find_sources(DUMMY_DATA)
  assert all('OriginalImg' in s.images[0] for s in sources) and len(sources) == 66


def test_no_subject_in_train_and_test_of_any_fold(data_dir):
  examples = _read_all(data_dir, 'test_vl')
  assert testing.assert_subject_independent('oulu_casia/test_vl', data_dir, examples) == 10


def test_missing_illumination_names_expected_and_found(tmp_path):
  config = builder_lib.OuluCasiaConfig(name='test_dark', illumination='Dark', size=32)
  builder = builder_lib.Builder(data_dir=tmp_path, config=config, file_format='array_record')
  with pytest.raises(sequence_builder.ManualDirError,
                     match=r'(?s)no VL/Dark folder.*OriginalImg/\{VL,NI\}.*B_OriginalImg/, '
                     r'PreProcess_Img/'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY_DATA)))


def test_tfds_dataset_builder_test_case():
  """TFDS's standard builder test (as_dataset, reload, configs); needs TensorFlow and dill."""
  pytest.importorskip('tensorflow')
  pytest.importorskip('dill')  # tensorflow_datasets.testing imports it; not a TFDS dependency.
  testing = pytest.importorskip('tensorflow_datasets.testing')

  class OuluCasiaTest(testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder_lib.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [CONFIGS['vl']]
    SPLITS = SPLITS
    SKIP_CHECKSUMS = True

  result = unittest.TextTestRunner(verbosity=2).run(
      unittest.defaultTestLoader.loadTestsFromTestCase(OuluCasiaTest))
  assert result.wasSuccessful(), result.failures + result.errors
