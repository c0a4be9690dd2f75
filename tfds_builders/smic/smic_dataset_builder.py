"""SMIC-HS (Li et al., FG 2013): spontaneous micro-expression clips of the 100 fps camera, 3 classes.

Reads the user's copy (``layout.py``): every sample folder ``HS/s1/micro/<class>/s1_ne_01`` becomes one
record holding all its frames (the folder is the clip from onset to offset: ``onset`` = 0, ``offset`` = the
last frame), the released face crops (``SMIC_all_cropped``) as released, else face-cropped with the config's
detector. SMIC has no apex annotation: ``apex`` is the frame at ``apex_position`` of the clip (config field,
default 0.5: the middle frame, index round(0.5 * (num_frames - 1))), recorded in ``info.metadata``.
Subjects ``s01`` ..., samples named as the MEGC2019 list writes them (``s01_ne_01``); one split per subject:
leave-one-subject-out. Folders with fewer than two frames are skipped and listed with the reason.
"""

from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import micro_builder as mb
from tfds_builders.smic import layout


class Builder(mb.MicroBuilder):
  """SMIC-HS micro-expression clips: negative / positive / surprise, apex stand-in, LOSO splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'https://www.oulu.fi/cmvs'
  BUILDER_CONFIGS = [mb.MicroConfig(name='default', description=(
      'SMIC-HS, 128x128 frames; apex = the middle frame of each clip.'))]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
SMIC cannot be downloaded automatically: request it from the University of Oulu's Center for Machine
Vision and Signal Analysis (licence agreement for research use). Unpack it into the manual dir so that it
holds (at any depth):
{layout.EXPECTED_LAYOUT}
Then: python -m tfds_builders smic --manual_dir <that dir>
"""

  def _find_clips(self, manual_dir: Path):
    config = self.builder_config
    return layout.find_clips(manual_dir, config.use_released_crops, config.apex_position)

  def _label(self, clip: mb.Clip) -> str:
    return clip.emotion
