"""Finding a prepared TFDS dataset, preparing the built-in one, and opening its splits for grain.

Real datasets are licensed and prepared once by the user (`tfds build tfds_builders/<name> --manual_dir ...`);
only `synthetic_expressions`, generated in code, is prepared here on first use: every config of it, the
sequence sets (`default`, `tiny`) and the static-image sets (`images`, `images_tiny`: one apex frame per
record, splits train / validation / test).
"""

import dataclasses
import importlib

import jax
from jax.experimental import multihost_utils
import ml_collections
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from ferjax.data import protocols

BUILTIN = 'synthetic_expressions'


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
  name: str  # TFDS name, with the builder config: 'oulu_casia/vl_strong'.
  data_dir: str | None
  class_names: tuple[str, ...]
  split_names: tuple[str, ...]

  def source(self, split: str) -> 'EncodedFrames':
    """Random-access ArrayRecord source of a split expression ('fold_1+fold_2'), frames left as JPEG
    bytes (see EncodedFrames); no TensorFlow."""
    return EncodedFrames(tfds.data_source(self.name, split=split, data_dir=self.data_dir))


class EncodedFrames:
  """A TFDS data source whose records keep `frames` as encoded bytes.

  `tfds.data_source` decodes every frame of a record, though a model sees only T of them (CK+ sequences
  average ~18 frames, videos hundreds; T = 16). This source parses the raw ArrayRecord bytes with TFDS's
  numpy example parser (no TensorFlow) and leaves the frames encoded: the pipeline decodes only the
  sampled ones, in the worker (`ferjax.data.pipeline.DECODE_COUNT`). Pickles with the TFDS source, so
  grain workers open their own readers.
  """

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> dict:
    raw = self._source.data_source[int(index)]
    # TFDS's own parser for `deserialize_example_np`, minus the decoding step.
    record = self._source.dataset_info.features._example_parser_np.parse_example(raw)  # pylint: disable=protected-access
    record['frames'] = list(record['frames'])
    return record

  def feature(self, name: str) -> list:
    """Every record's value of the scalar feature `name` (e.g. 'subject'), in order; the other features,
    frames included, are not converted."""
    values = []
    for index in range(len(self)):
      feature = tf_example_pb2.Example.FromString(self._source.data_source[index]).features.feature[name]
      kind = feature.WhichOneof('kind')
      if kind is None:
        raise KeyError(f'records have no feature {name!r}')
      value = getattr(feature, kind).value[0]
      values.append(value.decode() if isinstance(value, bytes) else value)
    return values

  def __repr__(self) -> str:
    return f'EncodedFrames({self._source!r})'



def register_builder(name: str) -> None:
  """Imports tfds_builders.<name> so TFDS knows the builder class (a no-op for unknown names)."""
  try:
    importlib.import_module(f'tfds_builders.{name}')
  except ModuleNotFoundError as e:
    if e.name not in (f'tfds_builders.{name}', 'tfds_builders'):
      raise


_register_builder = register_builder  # Older name, for callers not yet on register_builder.


def prepare(dataset: ml_collections.ConfigDict) -> PreparedDataset:
  """The prepared dataset named by `config.dataset`; builds `synthetic_expressions` if missing.

  Raises protocols.DatasetNotPreparedError for a real dataset that has not been built.
  """
  name = f'{dataset.name}/{dataset.config}' if dataset.config else dataset.name
  data_dir = dataset.data_dir or None
  register_builder(dataset.name)
  if dataset.name == BUILTIN:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
    if not builder.is_prepared():
      if jax.process_index() == 0:
        print(f'Preparing the built-in dataset {name} in {builder.data_dir} (once, seconds to a '
              'minute)...')
        builder.download_and_prepare(file_format='array_record')
      multihost_utils.sync_global_devices('ferjax_prepare_dataset')
      builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  split_names = tuple(protocols.dataset_splits(name, data_dir))
  builder = tfds.builder(name, data_dir=data_dir)
  return PreparedDataset(name=name, data_dir=data_dir,
                         class_names=tuple(builder.info.features['label'].names),
                         split_names=split_names)
