"""The ck_plus builder on dummy_data/, a generated copy of the real layout with its irregularities.

dummy_data/ is written by ``python scripts/make_dummy_data.py ck_plus`` (drawn faces that the real Haar
cascade detects; no CK+ content). The build and the reads run without TensorFlow through
``tfds.data_source``; TFDS's ``DatasetBuilderTestCase`` subclasses ``tf.test.TestCase`` (and needs dill),
so it runs only where TensorFlow is installed.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import unittest

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders import testing
from tfds_builders.ck_plus import ck_plus_dataset_builder as builder_lib

DUMMY_DATA = pathlib.Path(__file__).resolve().parent / 'dummy_data'
TEST_CONFIG = builder_lib.CkPlusConfig(name='test', size=32, description='tiny crops for tests')
SPLITS = {'fold_0': 2, 'fold_1': 3, 'fold_2': 2, 'fold_3': 1, 'fold_4': 1, 'fold_5': 1, 'fold_6': 1,
          'fold_7': 1, 'fold_8': 1, 'fold_9': 1}
# sequence id -> (label, subject, number of frames) of every usable labelled dummy sequence.
EXPECTED = {
    'S005_001': ('disgust', 'S005', 4), 'S010_002': ('anger', 'S010', 4),
    'S010_004': ('surprise', 'S010', 3), 'S011_001': ('happiness', 'S011', 4),
    'S022_003': ('contempt', 'S022', 3), 'S026_002': ('fear', 'S026', 4),
    'S032_004': ('sadness', 'S032', 3), 'S037_003': ('anger', 'S037', 4),
    'S046_001': ('surprise', 'S046', 3), 'S050_004': ('happiness', 'S050', 4),
    'S055_002': ('contempt', 'S055', 3), 'S100_001': ('sadness', 'S100', 4),
    'S506_002': ('fear', 'S506', 3), 'S999_001': ('surprise', 'S999', 4),
}
LABELLED_SUBJECTS = sorted({s for _, s, _ in EXPECTED.values()})  # S055_001 is skipped, S055 stays.
TEST_CONFIG_NAMES = sorted(builder_lib.EMOTION_CODES.values())


def _prepare(data_dir, config=TEST_CONFIG, manual_dir=DUMMY_DATA):
  builder = builder_lib.Builder(data_dir=data_dir, config=config, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  _prepare(data_dir)
  return data_dir


def _read_all(data_dir):
  return testing.read_all('ck_plus/test', SPLITS, data_dir)


def test_splits_labels_subjects_and_folds(data_dir):
  builder = tfds.builder('ck_plus/test', data_dir=data_dir)
  assert {n: s.num_examples for n, s in builder.info.splits.items()} == SPLITS
  names = builder.info.features['label'].names
  assert names == ['anger', 'contempt', 'disgust', 'fear', 'happiness', 'sadness', 'surprise']
  examples = _read_all(data_dir)
  got = {i: (names[ex['label']], ex['subject'].decode(), int(ex['num_frames']))
         for i, ex in examples.items()}
  assert got == EXPECTED
  # fold = index of the subject among the sorted labelled subjects, mod 10 (S055 has a usable sequence).
  for ex in examples.values():
    subject = ex['subject'].decode()
    assert ex['split'] == f'fold_{LABELLED_SUBJECTS.index(subject) % 10}'


def test_frames_are_square_crops_with_kept_indices(data_dir):
  for ex in _read_all(data_dir).values():
    assert ex['num_frames'] == len(ex['frames']) == len(ex['frame_indices'])
    assert list(ex['frame_indices']) == list(range(ex['num_frames']))
    # Grey and colour PNGs, 48/49/480/490-row frames: all come out as 32x32 RGB.
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in ex['frames'])
    # The crop is centred on the drawn face: its bright skin fills the middle of the crop.
    assert ex['frames'][0][12:20, 12:20].astype(float).mean() > 150, ex['sequence_id']


def test_landmark_boxes_are_used_when_present(data_dir):
  examples = _read_all(data_dir)
  # S010_004 has landmark files: its box is the landmarks' extent (not a detector box) squared + 25 %.
  points = np.concatenate([np.loadtxt(p) for p in sorted(
      DUMMY_DATA.glob('Landmarks/Landmarks/S010/004/*_landmarks.txt'))])
  side = max(np.ptp(points[:, 0]), np.ptp(points[:, 1])) * 1.25
  np.testing.assert_allclose(examples['S010_004']['face_box'][2], side, rtol=1e-3)
  # The 640x490 sequence (no landmarks) was found by the detector at full resolution.
  assert examples['S026_002']['face_box'][2] > 150


def test_unlabelled_and_skipped_are_recorded(data_dir):
  metadata = tfds.builder('ck_plus/test', data_dir=data_dir).info.metadata
  assert metadata['unlabelled'] == ['S005_002', 'S022_005', 'S895_001']
  assert metadata['num_unlabelled'] == 3
  assert metadata['num_labelled'] == 15
  assert metadata['num_skipped'] == 1
  (skipped,) = metadata['skipped']
  assert skipped['sequence_id'] == 'S055_001' and 'cannot decode' in skipped['reason']


def test_no_subject_in_train_and_test_of_any_fold(data_dir):
  assert testing.assert_subject_independent('ck_plus/test', data_dir, _read_all(data_dir)) == 10


def test_first_last3_config_keeps_first_and_last_three(tmp_path):
  config = builder_lib.CkPlusConfig(name='test_first_last3', frames='first_last3', size=32)
  builder = builder_lib.Builder(data_dir=tmp_path, config=config, file_format='array_record')
  sources = {s.sequence_id: s for s in builder._find_sources(DUMMY_DATA)}
  assert sources['S005_001'].image_indices == (0, 1, 2, 3)  # 4 frames: all of them.
  assert [pathlib.Path(p).name for p in sources['S005_001'].images][-1] == 'S005_001_00000004.png'
  assert sources['S010_004'].image_indices == (0, 1, 2)
  assert sources['S010_004'].landmarks is not None and sources['S005_001'].landmarks is None


def test_other_nestings_are_found(tmp_path):
  """Emotion_labels/Emotion/S***, cohn-kanade-images at the top, no Landmarks folder at all."""
  manual = tmp_path / 'manual'
  for name in ('S010', 'S022'):
    (manual / 'cohn-kanade-images' / name / '001').mkdir(parents=True)
    (manual / 'cohn-kanade-images' / name / '001' / f'{name}_001_00000001.png').write_bytes(b'')
    (manual / 'Emotion_labels' / 'Emotion' / name / '001').mkdir(parents=True)
    (manual / 'Emotion_labels' / 'Emotion' / name / '001' / f'{name}_001_00000001_emotion.txt'
     ).write_text('   5.0000000e+00\n')
  builder = builder_lib.Builder(data_dir=tmp_path / 'out', config=TEST_CONFIG)
  sources = builder._find_sources(manual)
  assert [(s.sequence_id, s.label, s.split) for s in sources] == [
      ('S010_001', 'happiness', 'fold_0'), ('S022_001', 'happiness', 'fold_1')]


def test_wrong_manual_dir_names_expected_and_found(tmp_path):
  manual = tmp_path / 'manual'
  (manual / 'Train_AFEW').mkdir(parents=True)
  (manual / 'notes.txt').write_text('x')
  with pytest.raises(sequence_builder.ManualDirError,
                     match=r'(?s)no cohn-kanade-images and no Emotion.*cohn-kanade-images/S005/001'
                     r'.*contains: Train_AFEW/, notes.txt'):
    _prepare(tmp_path / 'out', manual_dir=manual)


def test_unreadable_label_files_skip_their_sequence_only(tmp_path, capsys):
  """A garbage emotion file and an out-of-range code skip those two sequences, with path and reason."""
  manual = tmp_path / 'manual'
  shutil.copytree(DUMMY_DATA, manual)
  labels = manual / 'Emotion_labels'
  garbage = next((labels / 'S010' / '004').glob('*_emotion.txt'))
  garbage.write_bytes(b'\x89PNG not a number\n')
  nine = next((labels / 'S100' / '001').glob('*_emotion.txt'))  # S100's only sequence.
  nine.write_text('   9.0000000e+00\n')
  _prepare(tmp_path / 'out', manual_dir=manual)
  assert 'skipped 3 unusable' in capsys.readouterr().out
  examples = testing.read_all('ck_plus/test', SPLITS, tmp_path / 'out')
  expected = {k: v for k, v in EXPECTED.items() if k not in ('S010_004', 'S100_001')}
  names = TEST_CONFIG_NAMES
  assert {i: (names[ex['label']], ex['subject'].decode(), int(ex['num_frames']))
          for i, ex in examples.items()} == expected
  # S100 still counts as a labelled subject: every other subject keeps its fold.
  for ex in examples.values():
    assert ex['split'] == f'fold_{LABELLED_SUBJECTS.index(ex["subject"].decode()) % 10}'
  metadata = tfds.builder('ck_plus/test', data_dir=tmp_path / 'out').info.metadata
  skipped = {s['sequence_id']: s for s in metadata['skipped']}
  assert metadata['num_skipped'] == 3 and set(skipped) == {'S010_004', 'S100_001', 'S055_001'}
  assert metadata['num_sequences_found'] == 15
  assert skipped['S010_004']['path'] == str(garbage)
  assert 'expected one number' in skipped['S010_004']['reason']
  assert 'not a number' in skipped['S010_004']['reason']
  assert skipped['S100_001']['path'] == str(nine)
  assert 'code 9 is not one of [1, 2, 3, 4, 5, 6, 7]' in skipped['S100_001']['reason']
  assert skipped['S100_001']['split'] == f'fold_{LABELLED_SUBJECTS.index("S100") % 10}'


def test_file_format_defaults_to_array_record(tmp_path):
  """`tfds build` without --file_format constructs the builder without one: ArrayRecord all the same."""
  builder = builder_lib.Builder(data_dir=tmp_path, config=TEST_CONFIG)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY_DATA)))
  assert list(tmp_path.glob('ck_plus/test/1.0.0/*.array_record*'))
  assert not list(tmp_path.glob('ck_plus/test/1.0.0/*.tfrecord*'))
  # Reopened without a format, the prepared dataset is read as what it was written in.
  assert tfds.builder('ck_plus/test', data_dir=tmp_path).info.file_format == (
      tfds.core.FileFormat.ARRAY_RECORD)
  source = tfds.data_source('ck_plus/test', split='fold_1', data_dir=tmp_path)
  assert len(source) == SPLITS['fold_1'] and source[0]['frames'][0].shape == (32, 32, 3)
  # An explicit format is still honoured.
  explicit = builder_lib.Builder(data_dir=tmp_path / 'other', config=TEST_CONFIG,
                                 file_format='array_record')
  assert explicit.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def test_tfds_build_cli_without_file_format_writes_array_record(tmp_path):
  """`tfds build` with no --file_format (TFDS's default would be TFRecord); needs the [tf] extra."""
  for module in ('tensorflow', 'apache_beam', 'mlcroissant'):  # the tfds CLI imports them at start.
    pytest.importorskip(module)
  tfds_cli = shutil.which('tfds', path=os.path.dirname(sys.executable)) or shutil.which('tfds')
  if tfds_cli is None:
    pytest.skip('no tfds command next to this Python')
  repo = DUMMY_DATA.parents[2]
  result = subprocess.run(
      [tfds_cli, 'build', 'tfds_builders/ck_plus', '--config', 'first_last3',
       '--manual_dir', str(DUMMY_DATA), '--data_dir', str(tmp_path)],
      cwd=repo, capture_output=True, text=True, timeout=240,
      env=dict(os.environ, FERJAX_NUM_WORKERS='1', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-4000:]
  assert len(list(tmp_path.glob('ck_plus/first_last3/1.0.0/*.array_record-*'))) == 10
  source = tfds.data_source('ck_plus/first_last3', split='fold_1', data_dir=tmp_path)
  assert len(source) == SPLITS['fold_1']


def test_tfds_dataset_builder_test_case():
  """TFDS's standard builder test (as_dataset, reload, configs); needs TensorFlow and dill."""
  pytest.importorskip('tensorflow')
  pytest.importorskip('dill')  # tensorflow_datasets.testing imports it; not a TFDS dependency.
  testing = pytest.importorskip('tensorflow_datasets.testing')

  class CkPlusTest(testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder_lib.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [TEST_CONFIG]
    SPLITS = SPLITS
    SKIP_CHECKSUMS = True

  result = unittest.TextTestRunner(verbosity=2).run(
      unittest.defaultTestLoader.loadTestsFromTestCase(CkPlusTest))
  assert result.wasSuccessful(), result.failures + result.errors
