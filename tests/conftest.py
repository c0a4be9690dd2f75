"""Shared pytest fixtures: tiny real TFDS sequence datasets (ArrayRecord, JPEG frames) built in tmp_path."""

import hashlib
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from etils import epath

from ferjax.data import tfds_common

# grain worker processes read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()

_SPEC_FILE = 'ferjax_test_sequences.json'


def frame_colour(record: int, frame: int, split_position: int, size: int) -> np.ndarray:
  """Frame `frame` of record `record` in the split_position-th split: one flat RGB colour
  (4 * record, 8 * frame, 16 * split_position), so tests can tell records and frames apart after JPEG
  (flat colours survive it within +-2). Supports 64 records, 32 frames and 16 splits."""
  colour = np.array([4 * record, 8 * frame, 16 * split_position], np.int64)
  if colour.max() > 255:
    raise ValueError(f'test datasets support at most 64 records, 32 frames and 16 splits; got {colour}')
  return np.broadcast_to(colour.astype(np.uint8), (size, size, 3)).copy()


def identify(frame: np.ndarray) -> tuple[int, int, int]:
  """(record, frame, split_position) of a decoded uint8 frame made by `frame_colour`."""
  r, g, b = np.asarray(frame, np.float64).reshape(-1, 3).mean(0)
  return round(r / 4), round(g / 8), round(b / 16)


class FerjaxTestSequences(tfds.core.GeneratorBasedBuilder):
  """Tiny synthetic sequence dataset; its parameters live in a JSON file at the root of data_dir.

  A module-level class (not one made per test) so that TFDS data sources pickle into grain worker
  processes; reading the parameters from data_dir lets `tfds.builder(name, data_dir=...)` rebuild the
  matching features without them being passed again.
  """

  VERSION = tfds.core.Version('1.0.0')

  @property
  def _spec(self) -> dict:
    return json.loads((epath.Path(self._data_dir_root) / _SPEC_FILE).read_text())

  def _info(self):
    spec = self._spec
    class_names = list(tfds_common.EXPRESSIONS[:spec['num_classes']])
    return tfds.core.DatasetInfo(
        builder=self, features=tfds_common.sequence_features(class_names, spec['size']))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(name, n) for name, n in self._spec['splits'].items()}

  def _generate_examples(self, split, n):
    spec = self._spec
    size, num_classes = spec['size'], spec['num_classes']
    split_position = list(spec['splits']).index(split)
    # Deterministic content per split; subject = the split's name so protocols can be checked on data.
    rng = np.random.default_rng(int(hashlib.sha1(split.encode()).hexdigest()[:8], 16))
    for i in range(n):
      t = int(rng.integers(spec['min_frames'], spec['max_frames'] + 1))
      label = int(rng.integers(num_classes))
      frames = [tfds_common.encode_jpeg(frame_colour(i, k, split_position, size)) for k in range(t)]
      sequence_id = f'{split}/{i:04d}'
      yield sequence_id, {
          'frames': frames, 'label': label, 'subject': split,
          'sequence_id': sequence_id, 'num_frames': t,
      }


def build_sequence_dataset(data_dir, splits=None, size=32, min_frames=3, max_frames=9,
                           num_classes=3) -> tuple[str, str]:
  """Builds a tiny sequence dataset (DESIGN.md feature contract) under data_dir; returns (name, data_dir).

  Records of split `s` have subject `s`, sequence_id `s/<i>`, between min_frames and max_frames frames
  of flat colour `frame_colour(i, k, position of s in splits, size)`.
  One dataset per data_dir (its parameters are stored there).
  """
  splits = dict(splits or {'fold_0': 4, 'fold_1': 4})
  spec = dict(splits=splits, size=size, min_frames=min_frames, max_frames=max_frames,
              num_classes=num_classes)
  root = epath.Path(data_dir)
  spec_file = root / _SPEC_FILE
  if spec_file.exists() and json.loads(spec_file.read_text()) != spec:
    raise ValueError(f'{root} already holds a test dataset with other parameters: '
                     f'{spec_file.read_text()}; use a fresh directory')
  root.mkdir(parents=True, exist_ok=True)
  spec_file.write_text(json.dumps(spec))
  data_dir = str(data_dir)
  builder = FerjaxTestSequences(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder.name, data_dir


@pytest.fixture
def make_sequence_dataset():
  """Factory fixture: make_sequence_dataset(tmp_path, splits={'fold_0': n, ...}, size=32, min_frames=3,
  max_frames=9, num_classes=3) -> (name, data_dir)."""
  return build_sequence_dataset
