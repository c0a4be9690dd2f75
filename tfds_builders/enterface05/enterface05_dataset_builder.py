"""eNTERFACE'05: face-cropped video clips of 43 subjects, one split per subject (`subject_<n>`).

Reads the user's copy from the manual dir (see `MANUAL_DOWNLOAD_INSTRUCTIONS` and ``layout.py``): subject and
label come from the folder names, subject 6's unsegmented recordings are excluded (the usual 43-subject,
1,287-clip version) and listed in ``info.metadata['excluded']``. Every clip keeps at most ``max_frames``
evenly spaced frames (their original positions are in ``frame_indices``), face-cropped with one stable square
box per clip. Clips that cannot be decoded or show no face are skipped and listed in
``info.metadata['skipped']``.

Build (no TensorFlow needed)::

  tfds build tfds_builders/enterface05 --manual_dir ~/data/enterface05 --file_format=array_record

or from Python::

  import tfds_builders.enterface05  # registers 'enterface05'
  builder = tfds.builder('enterface05', data_dir='~/tensorflow_datasets', file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir='~/data/enterface05'))
"""

from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders.enterface05 import layout

# Clips are 1.1-5.4 s at 25 fps (28-135 frames); 64 evenly spaced frames keep every frame of clips up to
# 2.6 s and every second one of the longest, which is plenty for 16-frame sampling at training time.
DEFAULT_MAX_FRAMES = 64


class Builder(sequence_builder.SubjectVideoBuilder):
  """eNTERFACE'05 audio-visual emotion database (video only): 6 emotions, 43 subjects."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': "43-subject version; subject 6's unsegmented recordings excluded."}
  BUILDER_CONFIGS = [
      sequence_builder.SequenceConfig(
          name='default', max_frames=DEFAULT_MAX_FRAMES,
          description=f'256x256 face crops (Haar), at most {DEFAULT_MAX_FRAMES} evenly spaced frames.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'http://www.enterface.net/enterface05/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
The eNTERFACE'05 audio-visual emotion database (Martin et al., 2006) is distributed on the eNTERFACE'05
workshop site ({HOMEPAGE}, emotion database page) under the MIT licence. Unpack it anywhere below the manual
dir; the builder searches for:
{layout.EXPECTED_LAYOUT}
Subject and label are read from the folder names (file names have typos). Videos that are not below a
'sentence <m>' folder (subject 6's long unsegmented recordings) are excluded and reported.
"""

  def _find_clips(self, manual_dir: Path):
    return layout.find_clips(manual_dir)
