"""The raf_db builder on dummy_data/ (``python scripts/make_dummy_data.py raf_db``), both image sets.

The label file has 24 lines: 14 train and 7 test images, a label of 8 (line 15), an image that is not there
(line 16) and a file that is not an image (line 24); one image is present but unlisted. Expected values are
written out by hand or computed here with zlib, never with the builder's code.
"""

import pathlib
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ferjax.data import protocols
from tfds_builders import sequence_builder
from tfds_builders import testing
from tfds_builders.raf_db import raf_db_dataset_builder as builder_lib

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
ROOT = DUMMY / 'basic'
CODES = ['surprise', 'fear', 'disgust', 'happiness', 'sadness', 'anger', 'neutral']
ALIGNED = builder_lib.RafDbConfig(name='test_aligned', image_set='aligned', size=100,
                                  face_detector='none', keep_jpeg=True, validation_every=2)
ORIGINAL = builder_lib.RafDbConfig(name='test_original', image_set='original', size=48,
                                   face_detector='haar', validation_every=2)
SPLITS = ('train', 'validation', 'test')


@pytest.fixture(scope='module')
def aligned_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('raf_aligned')
  testing.build(builder_lib.Builder, ALIGNED, data_dir, DUMMY)
  return data_dir


@pytest.fixture(scope='module')
def original_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('raf_original')
  testing.build(builder_lib.Builder, ORIGINAL, data_dir, DUMMY)
  return data_dir


def _expected():
  """id -> (label, split) from the label file with str.split; validation = every 2nd train image of each
  class in CRC-32 order."""
  labels = {}
  for line in (ROOT / 'EmoLabel' / 'list_patition_label.txt').read_text().split('\n'):
    if line.strip():
      name, code = line.split()
      labels[name[:-4]] = CODES[int(code) - 1] if code in '1234567' else None
  usable = {k: v for k, v in labels.items() if v is not None and k not in ('train_00016', 'test_0008')}
  out = {k: (v, k.split('_')[0]) for k, v in usable.items()}
  for label in set(usable.values()):
    train = sorted((k for k, v in usable.items() if v == label and k.startswith('train')),
                   key=lambda k: (zlib.crc32(k.encode()), k))
    out[train[1]] = (label, 'validation')
  return out


def test_aligned_splits_labels_and_source_bytes(aligned_dir):
  info = tfds.builder('raf_db/test_aligned', data_dir=aligned_dir).info
  names = info.features['label'].names
  assert names == ['anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise']
  assert {s: info.splits[s].num_examples for s in SPLITS} == {'train': 7, 'validation': 7, 'test': 7}
  examples = testing.read_all('raf_db/test_aligned', SPLITS, aligned_dir)
  assert {k: (names[ex['label']], ex['split']) for k, ex in examples.items()} == _expected()
  # Stored as they are: the record's bytes are the file's bytes (raw records keep frames encoded).
  source = tfds.data_source('raf_db/test_aligned', split='test', data_dir=aligned_dir)
  raw = source.data_source[0]
  parsed = source.dataset_info.features._example_parser_np.parse_example(raw)  # pylint: disable=protected-access
  stem = parsed['sequence_id'].decode()
  assert parsed['frames'][0] == (ROOT / 'Image' / 'aligned' / f'{stem}_aligned.jpg').read_bytes()
  for ex in examples.values():
    assert ex['num_frames'] == 1 and ex['frames'][0].shape == (100, 100, 3)
    assert list(ex['face_box']) == [0, 0, 100, 100] and ex['subject'] == b''


def test_bad_lines_skipped_with_line_numbers_and_counted(aligned_dir):
  metadata = tfds.builder('raf_db/test_aligned', data_dir=aligned_dir).info.metadata
  skipped = {s['line']: s for s in metadata['skipped']}
  assert metadata['num_skipped'] == 3 and sorted(skipped) == [15, 16, 24]
  assert 'label 1-7' in skipped[15]['reason'] and "'8'" in skipped[15]['reason']
  assert 'does not exist' in skipped[16]['reason']
  assert skipped[24]['sequence_id'] == 'test_0008' and 'MediaError' in skipped[24]['reason']
  assert metadata['present_but_unlisted'] == ['train_00099']
  assert metadata['num_listed_but_absent'] == 1


def test_original_images_are_detected_and_cropped(original_dir):
  builder = tfds.builder('raf_db/test_original', data_dir=original_dir)
  assert builder.info.metadata['crop_options']['face_detector'] == 'haar'
  examples = testing.read_all('raf_db/test_original', SPLITS, original_dir)
  assert {k: ex['split'] for k, ex in examples.items()} == {k: v[1] for k, v in _expected().items()}
  centres = set()
  for ex in examples.values():
    assert ex['frames'][0].shape == (48, 48, 3)
    x, y, side, _ = ex['face_box']
    assert 40 < side < 90  # The drawn face (about 43x55 px) plus the margin.
    centres.add((round(float(x + side / 2)), round(float(y + side / 2))))
  # The faces are drawn shifted by -5/0/+5 px and +-2 px: detected boxes follow them (a centred square
  # would not).
  assert len(centres) >= 3


def test_protocol_and_wrong_root(aligned_dir, tmp_path, capsys):
  available = protocols.dataset_splits('raf_db/test_aligned', data_dir=str(aligned_dir))
  splits = protocols.splits_for(available, 0, holdout_validation=True)
  assert (splits.train, splits.validation, splits.test) == ('train', 'validation', 'test')
  (tmp_path / 'RAF' / 'Image').mkdir(parents=True)
  code = sequence_builder.main(['raf_db', '--manual_dir', str(tmp_path / 'RAF'),
                                '--data_dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code == 2 and 'EmoLabel/list_patition_label.txt' in err and 'Traceback' not in err
