"""The fer2013 builder on dummy_data/, both published forms (csv/ and folders/), built for real.

dummy_data/ is written by ``python scripts/make_dummy_data.py fer2013``: a 29-row fer2013.csv (4 unusable
rows: 2,303 values, a value of 256, emotion 7, a row cut off at the end of the file) with an aligned
fer2013new.csv (FER+ votes covering a majority, a single-vote outlier, a tie, unknown and not-a-face), and the
image-folder form (a 64x64 file, a file that is not an image, a colour JPEG, a .DS_Store). Expected values
below are written out by hand or read from the files with plain Python, never with the builder's code.
"""

import pathlib
import shutil
import subprocess
import sys
import unittest
import zlib

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ferjax.data import augment
from ferjax.data import datasets
from ferjax.data import pipeline
from ferjax.data import protocols
from tfds_builders import sequence_builder
from tfds_builders import testing
from tfds_builders.fer2013 import fer2013_dataset_builder as builder_lib
from tfds_builders.fer2013 import layout

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
CSV_DIR, FOLDER_DIR = DUMMY / 'csv', DUMMY / 'folders'
FOLDERS_CONFIG = builder_lib.Fer2013Config(name='test_folders', validation_every=2,
                                           description='folder form, every 2nd train image validates')
SEVEN = ['anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise']
CODES = {0: 'anger', 1: 'disgust', 2: 'fear', 3: 'happiness', 4: 'sadness', 5: 'surprise', 6: 'neutral'}
UNUSABLE_ROWS = {5: 7, 10: 12, 17: 19, 28: 30}  # data row -> its line in fer2013.csv (header = line 1)


def _config(name):
  return next(c for c in builder_lib.Builder.BUILDER_CONFIGS if c.name == name)


@pytest.fixture(scope='module')
def csv_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds_csv')
  testing.build(builder_lib.Builder, _config('default'), data_dir, CSV_DIR)
  return data_dir


@pytest.fixture(scope='module')
def ferplus_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds_ferplus')
  testing.build(builder_lib.Builder, _config('ferplus'), data_dir, CSV_DIR)
  return data_dir


@pytest.fixture(scope='module')
def folders_data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds_folders')
  testing.build(builder_lib.Builder, FOLDERS_CONFIG, data_dir, FOLDER_DIR)
  return data_dir


def _reference_rows():
  """fer2013.csv read with str.split: data row -> (code, usage, pixel list)."""
  lines = (CSV_DIR / 'fer2013' / 'fer2013.csv').read_text().split('\n')[1:]
  return {i: line.split(',') for i, line in enumerate(lines)}


def test_csv_splits_labels_and_exact_pixels(csv_data_dir):
  info = tfds.builder('fer2013', data_dir=csv_data_dir).info
  assert info.features['label'].names == SEVEN
  assert {k: v.num_examples for k, v in info.splits.items()} == {'train': 12, 'validation': 6, 'test': 7}
  examples = testing.read_all('fer2013', ('train', 'validation', 'test'), csv_data_dir)
  rows = _reference_rows()
  assert set(examples) == {f'fer{i:07d}' for i in rows if i not in UNUSABLE_ROWS}
  for sequence_id, ex in examples.items():
    code, pixels, usage = rows[int(sequence_id[3:])]
    assert ex['split'] == {'Training': 'train', 'PublicTest': 'validation', 'PrivateTest': 'test'}[usage]
    assert SEVEN[ex['label']] == CODES[int(code)]
    assert ex['num_frames'] == len(ex['frames']) == 1 and list(ex['frame_indices']) == [0]
    assert ex['subject'] == b''  # FER2013 has no subject identities.
    frame = ex['frames'][0]
    assert frame.shape == (48, 48, 1) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[..., 0], np.array(pixels.split(), np.uint8).reshape(48, 48))
    np.testing.assert_array_equal(ex['face_box'], [0, 0, 48, 48])


def test_unusable_rows_skipped_with_line_numbers(tmp_path, capsys, caplog):
  testing.build(builder_lib.Builder, _config('default'), tmp_path, CSV_DIR)
  metadata = tfds.builder('fer2013', data_dir=tmp_path).info.metadata
  skipped = {s['sequence_id']: s for s in metadata['skipped']}
  assert metadata['num_skipped'] == 4 and metadata['num_images_found'] == 29
  assert {k: s['line'] for k, s in skipped.items()} == {
      f'fer{row:07d}': line for row, line in UNUSABLE_ROWS.items()}
  assert skipped['fer0000005']['reason'] == 'expected 2304 pixel values (48x48), found 2303'
  assert skipped['fer0000010']['reason'] == 'expected pixel values in 0-255, found 256 (value 101)'
  assert skipped['fer0000017']['reason'] == "expected emotion 0-6, found '7'"
  assert skipped['fer0000028']['reason'].startswith('expected 3 fields (emotion, pixels, Usage), '
                                                    'found 2')
  assert skipped['fer0000017']['split'] == 'validation' and skipped['fer0000028']['split'] is None
  out = capsys.readouterr().out
  assert 'skipped 4 unusable rows or files' in out
  assert 'skipped fer0000028 (line 30): expected 3 fields' in out
  assert 'skipping fer0000005 (line 7 of ' in caplog.text  # the log line names the file too


def test_ferplus_majority_vote(ferplus_data_dir):
  info = tfds.builder('fer2013/ferplus', data_dir=ferplus_data_dir).info
  names = info.features['label'].names
  assert names == ['anger', 'contempt', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise']
  examples = testing.read_all('fer2013/ferplus', ('train', 'validation', 'test'), ferplus_data_dir)
  labels = {k: names[ex['label']] for k, ex in examples.items()}
  assert {k: labels[k] for k in ('fer0000000', 'fer0000001', 'fer0000002', 'fer0000007', 'fer0000009',
                                 'fer0000012', 'fer0000014', 'fer0000022')} == {
      'fer0000000': 'anger',      # 10 anger votes
      'fer0000001': 'contempt',   # 6 contempt, 4 neutral (FER2013 said disgust)
      'fer0000002': 'happiness',  # 5 / 4 / 1: fear's single vote is removed, 5 > 9 / 2
      'fer0000007': 'surprise',   # 8 surprise, 2 fear (FER2013 said fear)
      'fer0000009': 'sadness',    # 9 sadness, neutral's single vote removed
      'fer0000012': 'anger',      # 7 anger, 3 disgust
      'fer0000014': 'anger',      # 9 anger, unknown's single vote removed
      'fer0000022': 'disgust',    # 7 disgust, 3 anger
  }
  # Excluded by the vote: 3 (5-5 tie), 4 (unknown 6 of 10), 6 (NF); unusable rows stay skipped.
  assert set(examples) == {f'fer{i:07d}' for i in range(29)} - {
      f'fer{i:07d}' for i in (3, 4, 6, *UNUSABLE_ROWS)}
  metadata = info.metadata
  excluded = {e['sequence_id']: (e['line'], e['reason']) for e in metadata['ferplus_excluded']}
  assert excluded == {
      'fer0000003': (5, 'FER+: no emotion has a majority of the votes (single votes removed)'),
      'fer0000004': (6, "FER+: the majority vote is 'unknown'"),
      'fer0000006': (8, "FER+: the majority vote is 'NF' (not a face)"),
  }
  assert metadata['num_skipped'] == 4 and metadata['num_images_found'] == 29


@pytest.mark.parametrize('votes, expected', [
    ((0, 0, 0, 0, 10, 0, 0, 0, 0, 0), 'anger'),
    ((1, 1, 1, 1, 1, 1, 1, 1, 1, 1), None),       # every count is a single vote: nothing is left
    ((3, 3, 0, 0, 0, 0, 0, 0, 0, 0), None),       # 3 is not more than half of 6
    ((4, 3, 0, 0, 0, 0, 0, 0, 0, 0), 'neutral'),  # 4 > 3.5
    ((0, 0, 0, 0, 0, 0, 0, 2, 1, 1), 'contempt'),  # singles removed: 2 of 2
    ((2, 0, 0, 0, 0, 0, 0, 0, 0, 3), None),       # NF
])
def test_ferplus_label(votes, expected):
  assert layout.ferplus_label(np.array(votes))[0] == expected


def test_folder_form(folders_data_dir):
  info = tfds.builder('fer2013/test_folders', data_dir=folders_data_dir).info
  assert info.features['label'].names == SEVEN
  examples = testing.read_all('fer2013/test_folders', ('train', 'validation', 'test'), folders_data_dir)
  root = FOLDER_DIR / 'FER2013'
  expected = {}
  for split_dir in ('train', 'test'):
    for class_dir in sorted((root / split_dir).iterdir()):
      files = sorted((p.name for p in class_dir.iterdir() if not p.name.startswith('.')),
                     key=lambda n: (zlib.crc32(n.encode()), n))
      for i, name in enumerate(files):  # Every 2nd train file (by CRC-32 of its name) validates.
        split = 'validation' if split_dir == 'train' and i % 2 == 1 else split_dir
        expected[f'{split_dir}/{class_dir.name}/{name}'] = split
  bad = {'train/surprise/big.jpg', 'train/surprise/broken.jpg'}
  assert {k: ex['split'] for k, ex in examples.items()} == {
      k: s for k, s in expected.items() if k not in bad}
  assert 'validation' in {ex['split'] for ex in examples.values()}
  folder_labels = {'angry': 'anger', 'disgust': 'disgust', 'fear': 'fear', 'happy': 'happiness',
                   'neutral': 'neutral', 'sad': 'sadness', 'surprise': 'surprise'}
  for key, ex in examples.items():
    assert SEVEN[ex['label']] == folder_labels[key.split('/')[1]]
    grey = cv2.imread(str(root / key), cv2.IMREAD_GRAYSCALE)  # the colour JPEG is stored as grey
    np.testing.assert_array_equal(ex['frames'][0][..., 0], grey)
  skipped = {s['sequence_id']: s['reason'] for s in info.metadata['skipped']}
  assert skipped == {'train/surprise/big.jpg': 'expected a 48x48 image, found 64x64',
                     'train/surprise/broken.jpg': 'OpenCV could not decode the image'}
  assert info.metadata['form'] == 'folders'


def test_protocol_and_one_frame_batches(csv_data_dir):
  available = protocols.dataset_splits('fer2013', data_dir=str(csv_data_dir))
  splits = protocols.splits_for(available, 0, holdout_validation=True)
  assert (splits.train, splits.validation, splits.test) == ('train', 'validation', 'test')
  source = datasets.EncodedFrames(tfds.data_source('fer2013', split='test', data_dir=csv_data_dir))
  batch = next(pipeline.eval_batches(source, num_frames=1, image_size=48,
                                     options=augment.AugmentOptions(eval_crop=1.0),
                                     batch_size_per_host=8))
  assert batch['frames'].shape == (8, 1, 48, 48, 3) and int(batch['mask'].sum()) == 7
  frames = batch['frames'][:7]
  np.testing.assert_array_equal(frames[..., 0], frames[..., 2])  # grey repeated to RGB


def _build(tmp_path, manual_dir, config='default'):
  builder = builder_lib.Builder(data_dir=tmp_path / 'out', config=config, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def test_neither_form_names_both_layouts(tmp_path):
  (tmp_path / 'manual' / 'train').mkdir(parents=True)  # No class folders.
  (tmp_path / 'manual' / 'notes.txt').write_text('x')
  with pytest.raises(sequence_builder.ManualDirError,
                     match=r'(?s)found no FER2013 data.*fer2013\.csv.*train/<class>.*notes\.txt'):
    _build(tmp_path, tmp_path / 'manual')


def test_archive_only_says_unpack(tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'fer2013.tar.gz').write_bytes(b'\x1f\x8b')
  with pytest.raises(sequence_builder.ManualDirError, match='fer2013.tar.gz but no fer2013.csv: unpack'):
    _build(tmp_path, tmp_path / 'manual')


def test_both_forms_is_an_error(tmp_path):
  shutil.copytree(CSV_DIR, tmp_path / 'manual')
  shutil.copytree(FOLDER_DIR, tmp_path / 'manual', dirs_exist_ok=True)
  with pytest.raises(sequence_builder.BuildError, match='found both forms of FER2013'):
    _build(tmp_path, tmp_path / 'manual')


def test_train_without_test_folder(tmp_path):
  shutil.copytree(FOLDER_DIR / 'FER2013' / 'train', tmp_path / 'manual' / 'train')
  with pytest.raises(sequence_builder.ManualDirError, match='but no test/ folder with class folders'):
    _build(tmp_path, tmp_path / 'manual')


def test_missing_column(tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'fer2013.csv').write_text('emotion,pixels\n0,' + ' '.join(['1'] * 2304) + '\n')
  with pytest.raises(sequence_builder.BuildError,
                     match=r"lacks the column\(s\) \['Usage'\]: expected a header with "
                           r"\['emotion', 'pixels', 'Usage'\], found \['emotion', 'pixels'\]"):
    _build(tmp_path, tmp_path / 'manual')


def test_kaggle_icml_face_data_header_with_spaces(tmp_path):
  """icml_face_data.csv: the same rows, header 'emotion, Usage, pixels' (other order, spaces)."""
  (tmp_path / 'manual').mkdir()
  pixels = ' '.join(str(v % 256) for v in range(2304))
  (tmp_path / 'manual' / 'icml_face_data.csv').write_text(
      f'emotion, Usage, pixels\n3,Training,{pixels}\n6,PrivateTest,{pixels}\n')
  _build(tmp_path, tmp_path / 'manual')
  info = tfds.builder('fer2013', data_dir=tmp_path / 'out').info
  assert {k: v.num_examples for k, v in info.splits.items()} == {'train': 1, 'test': 1}


def test_ferplus_needs_its_file_and_the_csv_form(tmp_path):
  shutil.copytree(CSV_DIR, tmp_path / 'manual')
  (tmp_path / 'manual' / 'fer2013' / 'fer2013new.csv').unlink()
  with pytest.raises(sequence_builder.ManualDirError, match='fer2013/ferplus needs fer2013new.csv'):
    _build(tmp_path, tmp_path / 'manual', 'ferplus')
  with pytest.raises(sequence_builder.BuildError, match='ferplus needs the CSV form'):
    _build(tmp_path / 'b', FOLDER_DIR, 'ferplus')


def test_cli_builds_without_tensorflow(tmp_path):
  """`python -m tfds_builders fer2013 --manual_dir ... --data_dir ...`, TensorFlow never imported."""
  code = ('import sys; from tfds_builders import sequence_builder; '
          f'rc = sequence_builder.main(["fer2013", "--manual_dir", {str(CSV_DIR)!r}, '
          f'"--data_dir", {str(tmp_path)!r}]); '
          'assert "tensorflow" not in sys.modules; sys.exit(rc)')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).resolve().parents[2])
  assert result.returncode == 0, result.stderr[-2000:]
  assert "{'train': 12, 'validation': 6, 'test': 7}" in result.stdout
  bad = subprocess.run([sys.executable, '-m', 'tfds_builders', 'fer2013', '--manual_dir',
                        str(tmp_path / 'nowhere'), '--data_dir', str(tmp_path / 'x')],
                       capture_output=True, text=True, timeout=300,
                       cwd=pathlib.Path(__file__).resolve().parents[2])
  assert bad.returncode == 2 and bad.stderr.startswith('error: found no fer2013 data'), bad.stderr


def test_tfds_dataset_builder_test_case():
  """TFDS's standard builder test (as_dataset, reload, configs); needs TensorFlow and dill."""
  pytest.importorskip('tensorflow')
  pytest.importorskip('dill')  # tensorflow_datasets.testing imports it; not a TFDS dependency.
  tfds_testing = pytest.importorskip('tensorflow_datasets.testing')

  class Fer2013Test(tfds_testing.DatasetBuilderTestCase):
    DATASET_CLASS = builder_lib.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['default']
    EXAMPLE_DIR = str(CSV_DIR)  # the manual dir: the CSV form
    SPLITS = {'train': 12, 'validation': 6, 'test': 7}
    SKIP_CHECKSUMS = True

  result = unittest.TextTestRunner(verbosity=2).run(
      unittest.defaultTestLoader.loadTestsFromTestCase(Fer2013Test))
  assert result.wasSuccessful(), result.failures + result.errors
