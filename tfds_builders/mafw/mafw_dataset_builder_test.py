"""The mafw builder on dummy_data/ (``python scripts/make_dummy_data_videos.py mafw``), from frames and
from clips, serially and on a pool of worker processes.

14 clips of a drawn face (64x48) as mp4 videos and as frame folders: one listed but absent (00900), one
without a face (00901), one undecodable (00902), one present but unlisted (00903); set_4/test.txt line 3 has
an unknown class. Expected values are written out by hand.
"""

import contextlib
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ferjax.data import protocols
from tfds_builders import sequence_builder
from tfds_builders import testing
from tfds_builders.mafw import mafw_dataset_builder as builder_lib

DUMMY = pathlib.Path(__file__).resolve().parent / 'dummy_data'
CONFIGS = {source: builder_lib.MafwConfig(name=f'test_{source}', source=source, size=32, max_frames=8)
           for source in ('frames', 'clips')}
FOLDS = [f'fold_{k}' for k in range(1, 6)]
EXPECTED = {
    '00001': ('anger', 'fold_1'), '00002': ('anxiety', 'fold_1'), '00003': ('contempt', 'fold_2'),
    '00004': ('disappointment', 'fold_2'), '00005': ('disgust', 'fold_3'), '00006': ('fear', 'fold_3'),
    '00007': ('happiness', 'fold_4'), '00008': ('helplessness', 'fold_4'), '00009': ('neutral', 'fold_5'),
    '00010': ('sadness', 'fold_5'),
}


@contextlib.contextmanager
def _workers(n):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(sequence_builder.NUM_WORKERS_ENV, str(n))
    yield


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def built(request, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp(request.param)
  with _workers(1):
    testing.build(builder_lib.Builder, CONFIGS[request.param], data_dir, DUMMY)
  return request.param, f'mafw/test_{request.param}', data_dir


def test_folds_eleven_classes_and_detected_faces(built):
  source, name, data_dir = built
  info = tfds.builder(name, data_dir=data_dir).info
  names = info.features['label'].names
  assert names == ['anger', 'anxiety', 'contempt', 'disappointment', 'disgust', 'fear', 'happiness',
                   'helplessness', 'neutral', 'sadness', 'surprise']
  examples = testing.read_all(name, FOLDS, data_dir)
  assert {k: (names[ex['label']], ex['split']) for k, ex in examples.items()} == EXPECTED
  assert info.metadata['crop_options']['face_detector'] == 'haar'
  assert info.metadata['source'] == source
  for ex in examples.values():
    assert all(f.shape == (32, 32, 3) for f in ex['frames'])
    # The detected face (about 29x36 px) plus the margin, not the frame's centre square [8, 0, 48, 48].
    assert 30 < ex['face_box'][2] < 60 and not np.allclose(ex['face_box'], [8, 0, 48, 48], atol=0.5)
  # 00002 has 11 frames (1.jpg ... 11.jpg, in natural order): 8 evenly spaced ones are kept.
  assert list(examples['00002']['frame_indices']) == [0, 1, 3, 4, 6, 7, 9, 10]


def test_irregular_clips_reported_with_counts(built):
  source, name, data_dir = built
  metadata = tfds.builder(name, data_dir=data_dir).info.metadata
  skipped = {s['sequence_id']: s['reason'] for s in metadata['skipped']}
  assert set(skipped) == {'00900', '00901', '00902'} and metadata['num_skipped'] == 3
  assert 'set_2/test.txt line 3' in skipped['00900']
  assert skipped['00901'].startswith('no face')
  assert 'MediaError' in skipped['00902']
  assert (metadata['listed_but_absent'], metadata['present_but_unlisted']) == (['00900'], ['00903'])
  assert [(b['line'], pathlib.Path(b['path']).parent.name) for b in metadata['bad_lines']] == [
      (3, 'set_4')]
  assert metadata['fold_train_mismatch'] == {}
  assert metadata['split_root'].endswith('no_caption')


def test_protocol_five_released_folds(built):
  _, name, data_dir = built
  available = protocols.dataset_splits(name, data_dir=str(data_dir))
  splits = protocols.splits_for(available, 2)
  assert (splits.train, splits.test) == ('fold_1+fold_2+fold_4+fold_5', 'fold_3')


def test_parallel_build_equals_serial(built, tmp_path):
  """Two worker processes give the same records, in the same order, as one."""
  source, name, data_dir = built
  if source != 'frames':
    pytest.skip('one source is enough: the pool is the same code path for both')
  with _workers(2):
    testing.build(builder_lib.Builder, CONFIGS[source], tmp_path, DUMMY)
  for fold in FOLDS:
    serial = tfds.data_source(name, split=fold, data_dir=data_dir)
    parallel = tfds.data_source(name, split=fold, data_dir=tmp_path)
    assert [serial.data_source[i] for i in range(len(serial))] == [
        parallel.data_source[i] for i in range(len(parallel))]
  assert (tfds.builder(name, data_dir=tmp_path).info.metadata['skipped']
          == tfds.builder(name, data_dir=data_dir).info.metadata['skipped'])
