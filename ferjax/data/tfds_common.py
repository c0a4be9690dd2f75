"""What every ferjax sequence builder shares: the feature spec and JPEG encoding without TensorFlow."""

from collections.abc import Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

# Canonical label vocabulary; a dataset uses the subset it has, in this (alphabetical) order.
EXPRESSIONS = ('anger', 'contempt', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise')


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
