"""CASME II (Yan et al., PLoS ONE 2014): spontaneous micro-expression clips, onset to offset, 200 fps.

Reads the user's copy (``layout.py``): every row of the coding sheet whose frames are found becomes one
record: the frames from OnsetFrame to OffsetFrame (the released face crops of ``Cropped/`` as released, else
the raw frames face-cropped with the config's detector), ``onset`` / ``apex`` / ``offset`` indices into them,
the subject (``sub01``), the estimated emotion and the action units as written. Rows whose frames are
missing, whose onset / apex / offset is not a frame number (one apex is ``/``), is out of order or falls
outside the clip's frames are skipped and listed with their sheet row and reason in
``info.metadata['skipped']``. One split per subject (``subject_sub01`` ...): leave-one-subject-out.

Configs: ``all`` (the sheet's seven emotions) and ``5class`` (the literature's setting: happiness, disgust,
repression, surprise, others; the 9 sadness and fear clips are left out and counted in
``info.metadata['excluded']``).
"""

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import micro_builder as mb
from tfds_builders.casme2 import layout

FIVE_CLASSES = ('disgust', 'happiness', 'others', 'repression', 'surprise')


@dataclasses.dataclass(eq=False)
class Casme2Config(mb.MicroConfig):
  """CASME II config; ``classes``: the emotions kept (others are left out and counted)."""
  classes: tuple[str, ...] = layout.EMOTIONS


class Builder(mb.MicroBuilder):
  """CASME II micro-expression clips: frames onset to offset, onset/apex/offset indices, LOSO splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'http://casme.psych.ac.cn/casme/e2'
  BUILDER_CONFIGS = [
      Casme2Config(name='all', description='All seven estimated emotions, 128x128 frames.'),
      Casme2Config(name='5class', classes=FIVE_CLASSES,
                   description='Happiness, disgust, repression, surprise, others (26 subjects).'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'all'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
CASME II cannot be downloaded automatically: request it from its authors ({HOMEPAGE}; licence agreement
for research use). Unpack it into the manual dir so that it holds (at any depth):
{layout.EXPECTED_LAYOUT}
Then: python -m tfds_builders casme2 --manual_dir <that dir> [--config 5class]
"""

  @property
  def CLASS_NAMES(self):  # pylint: disable=invalid-name
    return tuple(sorted(self.builder_config.classes))

  def _find_clips(self, manual_dir: Path):
    unknown = sorted(set(self.builder_config.classes) - set(layout.EMOTIONS))
    if unknown:
      raise ValueError(f'casme2: classes must be among {layout.EMOTIONS}; found {unknown}')
    return layout.find_clips(manual_dir, self.builder_config.use_released_crops)

  def _label(self, clip: mb.Clip) -> str | None:
    return clip.emotion if clip.emotion in self.builder_config.classes else None
