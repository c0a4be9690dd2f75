"""tf.data and random access read the same CK+ dataset (needs the `[tf]` extra; skipped without TensorFlow).

The issue's contract: `tfds build tfds_builders/ck_plus --manual_dir ...` and the Python API both build
the dataset; `tfds.load('ck_plus', split='fold_0')` returns its frames as tf.data tensors when TensorFlow is
installed, and `tfds.data_source` reads the same data without TensorFlow. Both builds here read
tfds_builders/ck_plus/dummy_data (generated drawn faces, no CK+ content).

TensorFlow decodes JPEG with a faster, slightly different IDCT than OpenCV (which `tfds.data_source` uses),
so decoded pixels may differ by a few levels; the stored JPEG bytes are compared exactly.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

tf = pytest.importorskip('tensorflow')
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from tfds_builders.ck_plus import ck_plus_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY_DATA = REPO / 'tfds_builders' / 'ck_plus' / 'dummy_data'
# fold_0 of the dummy data: the subjects at positions 0 and 10 of the sorted labelled subjects.
FOLD_0 = {'S005_001': ('disgust', 'S005', 4), 'S100_001': ('sadness', 'S100', 4)}
# Largest per-pixel difference between TensorFlow's and OpenCV's decoding of the same JPEG (measured: 6).
MAX_DECODER_DIFFERENCE = 12


@pytest.fixture(scope='module')
def api_data_dir(tmp_path_factory):
  """ck_plus (default config 'all', 256 px) built with the Python API, in-process (one worker: no pool
  start-up). A registered config, not a test-only one: TFDS reads an unregistered config through a
  read-only builder, which would bypass the builder class's own reading code."""
  data_dir = str(tmp_path_factory.mktemp('tfds_api'))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('FERJAX_NUM_WORKERS', '1')
    builder = tfds.builder('ck_plus', data_dir=data_dir, file_format='array_record')
    assert isinstance(builder, builder_lib.Builder)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY_DATA)))
  return data_dir


def _decode_rgb(jpeg: bytes) -> np.ndarray:
  """Decodes JPEG bytes the way `tfds.data_source` does (OpenCV, then BGR -> RGB)."""
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _check_same_data(name: str, data_dir: str, size: int) -> None:
  """tfds.load and tfds.data_source give fold_0 with the same records and frames."""
  ds = tfds.load(name, split='fold_0', data_dir=data_dir)
  spec = ds.element_spec
  assert spec['frames'].shape.as_list() == [None, size, size, 3] and spec['frames'].dtype == tf.uint8
  loaded = {ex['sequence_id'].decode(): ex for ex in tfds.as_numpy(ds)}
  # The same split with the frames left as JPEG bytes: what the files hold.
  raw = {ex['sequence_id'].decode(): ex for ex in tfds.as_numpy(tfds.load(
      name, split='fold_0', data_dir=data_dir, decoders={'frames': tfds.decode.SkipDecoding()}))}
  source = tfds.data_source(name, split='fold_0', data_dir=data_dir)
  direct = {ex['sequence_id'].decode(): ex for ex in (source[i] for i in range(len(source)))}

  names = tfds.builder(name, data_dir=data_dir).info.features['label'].names
  got = {i: (names[ex['label']], ex['subject'].decode(), int(ex['num_frames'])) for i, ex in loaded.items()}
  assert got == FOLD_0
  assert {i: (names[ex['label']], ex['subject'].decode(), int(ex['num_frames']))
          for i, ex in direct.items()} == FOLD_0
  for sequence_id, ex in loaded.items():
    frames = ex['frames']  # tf.data: one uint8 [T, H, W, 3] tensor per sequence.
    reference = np.stack(direct[sequence_id]['frames'])  # data source: a list of uint8 [H, W, 3].
    assert frames.dtype == np.uint8 and frames.shape == (ex['num_frames'], size, size, 3)
    assert reference.shape == frames.shape
    np.testing.assert_array_equal(ex['frame_indices'], direct[sequence_id]['frame_indices'])
    np.testing.assert_array_equal(ex['face_box'], direct[sequence_id]['face_box'])
    # Same stored JPEGs: OpenCV decodes tf.data's bytes to exactly the data source's frames.
    np.testing.assert_array_equal(np.stack([_decode_rgb(b) for b in raw[sequence_id]['frames']]),
                                  reference)
    difference = np.abs(frames.astype(int) - reference.astype(int))
    assert difference.max() <= MAX_DECODER_DIFFERENCE and difference.mean() < 1.5, (
        sequence_id, difference.max(), difference.mean())
    assert frames.std() > 10  # Real image content, not a constant fill.


def test_python_api_build_reads_the_same_with_tf_data_and_data_source(api_data_dir):
  _check_same_data('ck_plus', api_data_dir, size=256)


def test_tf_data_split_arithmetic_and_shuffled_files(api_data_dir):
  """A training split as TFDS split arithmetic, shuffled, holds exactly the union of its folds."""
  source_ids = set()
  for split in ('fold_0', 'fold_1', 'fold_2'):
    source = tfds.data_source('ck_plus', split=split, data_dir=api_data_dir)
    source_ids |= {source[i]['sequence_id'] for i in range(len(source))}
  ds = tfds.load('ck_plus', split='fold_0+fold_1+fold_2', data_dir=api_data_dir,
                 shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=0))
  loaded = [ex['sequence_id'] for ex in tfds.as_numpy(ds)]
  assert len(loaded) == len(source_ids) == 7 and set(loaded) == source_ids


def test_tfds_build_cli(tmp_path):
  """`tfds build tfds_builders/ck_plus --manual_dir ...` from the repo root, as docs/data.md shows."""
  for module in ('apache_beam', 'mlcroissant'):  # tensorflow-datasets 4.9's CLI imports both at start.
    pytest.importorskip(module, reason=f'the tfds CLI needs {module} (in the [tf] extra)')
  tfds_cli = shutil.which('tfds', path=os.path.dirname(sys.executable)) or shutil.which('tfds')
  if tfds_cli is None:
    pytest.skip('no tfds command next to this Python')
  data_dir = tmp_path / 'tfds'
  result = subprocess.run(
      [tfds_cli, 'build', 'tfds_builders/ck_plus', '--config', 'all', '--file_format', 'array_record',
       '--manual_dir', str(DUMMY_DATA), '--data_dir', str(data_dir)],
      cwd=REPO, capture_output=True, text=True, timeout=240,
      env=dict(os.environ, FERJAX_NUM_WORKERS='1', TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-4000:]
  shards = sorted(p.name for p in (data_dir / 'ck_plus' / 'all' / '1.0.0').glob('*.array_record-*'))
  assert len(shards) == 10, shards  # fold_0 ... fold_9, ArrayRecord (tfds build's default is TFRecord).
  _check_same_data('ck_plus', str(data_dir), size=256)
