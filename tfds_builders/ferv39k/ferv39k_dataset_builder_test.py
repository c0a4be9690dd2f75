"""The ferv39k builder on dummy_data/ (``python scripts/make_dummy_data.py ferv39k``).

Two scenes, 36 clip folders of three 32x32 frames: one clip listed but absent (Crime/Happy/0600), one with a
truncated frame (Crime/Sad/0601), one with 40x40 crops (Crime/Fear/0602), one present but unlisted
(Crime/Angry/0603); train_All.csv line 30 has a label that disagrees with its path, test_All.csv line 10 an
unknown emotion. Expected values are written out by hand or computed here with zlib.
"""

import collections
import pathlib
import zlib

import pytest
import tensorflow_datasets as tfds

from ferjax.data import protocols
from tfds_builders import testing
from tfds_builders.ferv39k import ferv39k_dataset_builder as builder_lib

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
CONFIG = builder_lib.Ferv39kConfig(name='test', size=32, face_detector='none', keep_jpeg=True,
                                   validation_every=2)
SPLITS = ('train', 'validation', 'test')
NAMES = {'Angry': 'anger', 'Disgust': 'disgust', 'Fear': 'fear', 'Happy': 'happiness',
         'Neutral': 'neutral', 'Sad': 'sadness', 'Surprise': 'surprise'}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('ferv39k')
  testing.build(builder_lib.Builder, CONFIG, data_dir, DUMMY)
  return data_dir


def _expected():
  """id -> (label, scene, split): the split files read with str.split; validation = the 2nd of each
  (scene, emotion) group of train clips in CRC-32 order."""
  out, groups = {}, collections.defaultdict(list)
  for split in ('train', 'test'):
    for line in (DUMMY / '4_setups' / 'All_scenes' / f'{split}_All.csv').read_text().split('\n'):
      if not line:
        continue
      path, emotion = line.split()
      scene, folder, _ = path.split('/')
      if emotion != folder or path in ('Crime/Happy/0600', 'Crime/Sad/0601'):
        continue
      out[path] = (NAMES[emotion], scene, split)
      if split == 'train':
        groups[scene, emotion].append(path)
  for paths in groups.values():
    second = sorted(paths, key=lambda p: (zlib.crc32(p.encode()), p))[1]
    out[second] = out[second][:2] + ('validation',)
  return out


def test_splits_labels_and_scenes(data_dir):
  info = tfds.builder('ferv39k/test', data_dir=data_dir).info
  names = info.features['label'].names
  assert {s: info.splits[s].num_examples for s in SPLITS} == {'train': 15, 'validation': 14, 'test': 7}
  examples = testing.read_all('ferv39k/test', SPLITS, data_dir)
  got = {k: (names[ex['label']], ex['scene'].decode(), ex['split']) for k, ex in examples.items()}
  assert got == _expected()
  assert info.metadata['scenes'] == ['Action', 'Crime']


def test_frames_stored_as_they_are_or_resized(data_dir):
  source = tfds.data_source('ferv39k/test', split='train+validation', data_dir=data_dir)
  parser = source.dataset_info.features._example_parser_np  # pylint: disable=protected-access
  for i in range(len(source)):
    record = parser.parse_example(source.data_source[i])
    clip = record['sequence_id'].decode()
    files = [DUMMY / '2_ClipsforFaceCrop' / clip / f'{j}.jpg' for j in ('001', '002', '003')]
    same = [bytes(b) == f.read_bytes() for b, f in zip(record['frames'], files)]
    assert (not any(same)) if clip == 'Crime/Fear/0602' else all(same), clip


def test_irregular_clips_and_bad_lines_reported(data_dir):
  metadata = tfds.builder('ferv39k/test', data_dir=data_dir).info.metadata
  skipped = {s['sequence_id']: s for s in metadata['skipped']}
  assert set(skipped) == {'Crime/Happy/0600', 'Crime/Sad/0601'} and metadata['num_skipped'] == 2
  assert 'no such folder' in skipped['Crime/Happy/0600']['reason']
  assert 'cut off' in skipped['Crime/Sad/0601']['reason']
  assert metadata['listed_but_absent'] == ['Crime/Happy/0600']
  assert metadata['present_but_unlisted'] == ['Crime/Angry/0603']
  assert [(b['line'], pathlib.Path(b['path']).name) for b in metadata['bad_lines']] == [
      (30, 'train_All.csv'), (10, 'test_All.csv')]
  assert 'disagrees' in metadata['bad_lines'][0]['reason']


def test_protocol_trains_on_train_validates_on_the_holdout(data_dir):
  available = protocols.dataset_splits('ferv39k/test', data_dir=str(data_dir))
  splits = protocols.splits_for(available, 0, holdout_validation=True)
  assert (splits.train, splits.validation, splits.test) == ('train', 'validation', 'test')
