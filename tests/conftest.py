"""Shared pytest fixtures: tiny real TFDS sequence datasets (ArrayRecord, JPEG frames) built in tmp_path,
the built-in synthetic_expressions/tiny dataset built once per session, and a session-wide persistent
JAX compilation cache."""

import hashlib
import json
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from etils import epath

from ferjax.data import tfds_common

# grain worker processes read absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()

# The tests' programs compile at XLA's backend optimisation level 2 (LLVM -O2) rather than the default 3:
# the same values (XLA's levels do not change what a program computes), a fifth less CPU time to compile
# the tiny Res-RBG's train step (`python -m ferjax.benchmark`, CONTRIBUTING.md), and compiling is most of
# the suite's time. Level 1 compiles no faster than 2; level 0 miscompiles the tiny Res-RBG's train step on
# CPU (NaN by step 2). Set here, before any backend starts, in the environment that xdist workers and
# every subprocess a test starts inherit; an XLA_FLAGS that already sets a level is kept (CI's slow stage
# runs at the default, XLA_FLAGS=--xla_backend_optimization_level=3).
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=2".strip()

# The persistent compilation cache, as environment variables (inherited by every training CLI a test
# starts) and as this process's config. The end-to-end tests start the same tiny training again and
# again (a reference run, then a killed and a resumed one; every fold of a cross-validation builds fresh
# jitted steps), and compilation was most of their time: the train step, and also the model's
# initialisers, each a small program compiled op by op (one CLI run measured 49 s of CPU without the
# cache, 12 s with it). Every program is stored, however quick to compile: the many small ones add up.
COMPILATION_CACHE_ENV = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                         'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


# pytest-xdist runs whole modules (`--dist loadfile --no-loadscope-reorder`, pyproject.toml): a module's
# fixtures (a trained run, an exported model) are built once, on one worker. A worker that runs out of
# work takes the next module in collection order, so the modules run longest first (greedy
# longest-processing-time scheduling): a long module left for last keeps one worker busy while the other
# idles. Seconds per module on the 2-core machine (the sum of its tests' times from
# `python -m pytest -q -n 2 --durations=0`); only the order matters. Modules not listed (shorter)
# follow in file order. Update the table when a module's time changes a lot.
_MODULE_SECONDS = {
    'test_reliability.py': 115, 'test_rmn.py': 64, 'test_multiprocess.py': 62, 'test_sharding.py': 60,
    'test_train.py': 50, 'test_benchmark.py': 49, 'test_crossval.py': 48, 'test_image_families.py': 48,
    'test_export.py': 48, 'test_recipe.py': 47, 'test_predict.py': 46, 'test_video_benchmarks.py': 44,
    'test_rfscnn.py': 44, 'test_spatial_recurrent.py': 42, 'test_models.py': 39, 'test_steps.py': 28,
    'test_recurrent.py': 21, 'test_mhca.py': 21, 'test_ststnet.py': 20, 'test_parallel_folds.py': 20,
    'test_lkcnn.py': 20, 'test_dcn_cbam.py': 19,
}


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: -_MODULE_SECONDS.get(item.path.name, 0))  # Stable: file order otherwise.


def _session_root(tmp_path_factory):
  """pytest's base temporary directory of this session, the same for every pytest-xdist worker."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One JAX compilation cache for the session, shared by the xdist workers and every subprocess.

  Fresh each session (under pytest's tmp), so a run's timing never depends on an earlier one. A test
  that needs a real compilation (e.g. a signal arriving during it) passes
  `JAX_ENABLE_COMPILATION_CACHE=false` to its subprocess. Concurrent writers are safe: jax writes an
  entry only if absent, and a half-written entry fails its zlib check and is compiled again.
  """
  path = _session_root(tmp_path_factory) / 'jax_compilation_cache'
  path.mkdir(exist_ok=True)
  env = {'JAX_COMPILATION_CACHE_DIR': str(path), **COMPILATION_CACHE_ENV}
  with pytest.MonkeyPatch.context() as mp:
    for key, value in env.items():
      mp.setenv(key, value)
    previous = {name: getattr(jax.config, name) for name in (
        'jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
        'jax_persistent_cache_min_entry_size_bytes')}
    jax.config.update('jax_compilation_cache_dir', str(path))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    jax_compilation_cache.reset_cache()  # Something compiled at collection would have fixed "no cache".
    try:
      yield path
    finally:
      for name, value in previous.items():
        jax.config.update(name, value)
      jax_compilation_cache.reset_cache()


@pytest.fixture(scope='session')
def synthetic_tiny(tmp_path_factory):
  """data_dir holding the built-in synthetic_expressions/tiny (ArrayRecord), built once per worker.

  Read-only for the tests: every end-to-end test trains on it, none writes there.
  """
  import tfds_builders.synthetic_expressions as synthetic_expressions  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('synthetic_tiny'))
  synthetic_expressions.build(path, 'tiny', workers=1)
  return path


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
