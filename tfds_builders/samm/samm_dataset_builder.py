"""SAMM (Davison et al., IEEE TAC 2018): spontaneous micro-movement clips, onset to offset, 200 fps.

Reads the user's copy (``layout.py``): every row of the coding sheet whose frames are found becomes one
record: the frames from Onset Frame to Offset Frame (grey 2040x1088 frames, face-cropped with the config's
detector, one box per clip), ``onset`` / ``apex`` / ``offset`` indices into them, the subject (``006``), the
estimated emotion (lower case) and the action units as written. Rows whose frames are missing, whose onset /
apex / offset is not a frame number, is out of order or falls outside the clip's frames are skipped and
listed with their sheet row and reason in ``info.metadata['skipped']``. One split per subject
(``subject_006`` ...): leave-one-subject-out.
"""

from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import micro_builder as mb
from tfds_builders.samm import layout


class Builder(mb.MicroBuilder):
  """SAMM micro-movement clips: frames onset to offset, onset/apex/offset indices, LOSO splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php'
  BUILDER_CONFIGS = [mb.MicroConfig(name='default', description='All micro-movements, 128x128 face crops.')]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
SAMM cannot be downloaded automatically: request it from its authors ({HOMEPAGE}; licence agreement for
research use). Unpack it into the manual dir so that it holds (at any depth):
{layout.EXPECTED_LAYOUT}
Then: python -m tfds_builders samm --manual_dir <that dir>
"""

  def _find_clips(self, manual_dir: Path):
    return layout.find_clips(manual_dir, self.builder_config.use_released_crops)

  def _label(self, clip: mb.Clip) -> str:
    return clip.emotion
