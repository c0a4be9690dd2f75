"""What every ferjax sequence builder shares: the feature spec and JPEG encoding without TensorFlow."""

from collections.abc import Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

# Canonical label vocabulary; a dataset uses the subset it has, in this (alphabetical) order.
# MAFW adds anxiety, disappointment and helplessness to the basic eight.
EXPRESSIONS = ('anger', 'anxiety', 'contempt', 'disappointment', 'disgust', 'fear', 'happiness',
               'helplessness', 'neutral', 'sadness', 'surprise')


def sequence_features(class_names: Sequence[str], size: int) -> tfds.features.FeaturesDict:
  """The feature dict of DESIGN.md: JPEG face-crop frames, label, subject, sequence id, length."""
  unknown = [n for n in class_names if n not in EXPRESSIONS]
  if unknown or list(class_names) != sorted(class_names):
    raise ValueError(
        f'class_names must be a sorted subset of {EXPRESSIONS}; got {list(class_names)}')
  return tfds.features.FeaturesDict({
      'frames': tfds.features.Sequence(
          tfds.features.Image(shape=(size, size, 3), encoding_format='jpeg')),
      'label': tfds.features.ClassLabel(names=list(class_names)),
      'subject': tfds.features.Text(),
      'sequence_id': tfds.features.Text(),
      'num_frames': tfds.features.Scalar(np.int32),
  })


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
  """RGB uint8 HxWx3 (or HxW grey) -> JPEG bytes with OpenCV; TFDS stores bytes as they are."""
  if rgb.dtype != np.uint8:
    raise ValueError(f'expected a uint8 image, got {rgb.dtype}')
  if rgb.ndim == 2:
    rgb = np.repeat(rgb[..., None], 3, axis=-1)
  ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise ValueError(f'OpenCV could not JPEG-encode an image of shape {rgb.shape}')
  return buf.tobytes()


def tfds_internals():
  """The TFDS internals `ArrayRecordTfData` uses, not public API, in one place: (ExampleParser,
  ArrayRecordDataSource). `ExampleParser(example_specs).parse_example(serialized)` parses one serialized
  tf.train.Example into the tensors `features.decode_example` takes; `ArrayRecordDataSource(info, split=,
  deserialize_method=RAW_BYTES)` reads a split's records as bytes. tests/test_layering.py pins their
  signatures and the parser's source, so a TFDS upgrade that changes them fails there, by name."""
  from tensorflow_datasets.core import example_parser  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core.data_sources import array_record  # pylint: disable=import-outside-toplevel
  return example_parser.ExampleParser, array_record.ArrayRecordDataSource


class ArrayRecordTfData:
  """Builder mixin: `tfds.load` (tf.data) over the ArrayRecord shards the builder writes.

  tensorflow-datasets 4.9 reads ArrayRecord only as a random-access data source (its tf.data reader
  raises NotImplementedError). Here records come from the same data source `tfds.data_source` uses, as
  raw bytes, and are parsed and decoded by TFDS's own TF code, so `decoders` (SkipDecoding,
  PartialDecoding) work as for TFRecord. TFRecord builds use TFDS's own reader. Needs the [tf] extra.
  """

  def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    file_format = tfds.core.FileFormat.from_value(
        (read_config and read_config.file_format) or self.info.file_format or 'tfrecord')
    if file_format != tfds.core.FileFormat.ARRAY_RECORD:
      return super()._as_dataset(split, decoders=decoders, read_config=read_config,
                                 shuffle_files=shuffle_files)
    import tensorflow as tf  # Only tfds.load users have TensorFlow.
    parser_class, source_class = tfds_internals()
    features = self.info.features
    if isinstance(decoders, tfds.decode.PartialDecoding):
      features, decoders = decoders.extract_features(features), decoders.decoders
    source = source_class(
        self.info, split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    ds = tf.data.Dataset.range(len(source))
    if shuffle_files:  # Records are random access: shuffle the order itself.
      ds = ds.shuffle(len(source), seed=read_config.shuffle_seed if read_config else None)
    ds = ds.map(lambda i: tf.numpy_function(lambda j: source[int(j)], [i], tf.string, stateful=False),
                num_parallel_calls=tf.data.AUTOTUNE)
    parser = parser_class(features.get_serialized_info())
    return ds.map(lambda s: features.decode_example(parser.parse_example(s), decoders=decoders),
                  num_parallel_calls=tf.data.AUTOTUNE)
