"""Input normalisation constants and the on-device scaling of uint8 frames (a leaf: numpy and jax only).

Batches carry uint8 RGB frames; the train/eval steps (and exported artifacts) scale them on the device:
'imagenet' = x / 255 standardised with the ImageNet mean/std (for ImageNet-pretrained trunks), 'unit' =
x / 255 only (the Residual Masking Network's FER2013 recipe). `config.dataset.normalization` picks one.
"""

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # RGB, of [0, 1] pixel values.
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
NORMALIZATIONS = ('imagenet', 'unit')


def normalize_inputs(batch: dict[str, jax.Array],
                     normalization: str = 'imagenet') -> dict[str, jax.Array]:
  """On the device: uint8 RGB `frames` -> float32 (the host sends 4x fewer bytes); every other entry as
  it is; frames that are not uint8 are taken as already normalised."""
  frames = batch.get('frames')
  if frames is None or frames.dtype != jnp.uint8:
    return batch
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'normalization must be one of {NORMALIZATIONS}; found {normalization!r}')
  if normalization == 'unit':
    return {**batch, 'frames': frames.astype(jnp.float32) / 255.0}
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return {**batch, 'frames': (frames.astype(jnp.float32) / 255.0 - mean) / std}
