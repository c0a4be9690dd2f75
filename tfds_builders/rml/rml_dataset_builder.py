"""RML (Ryerson Multimedia Lab) emotion database: face-cropped video clips of 8 speakers, `subject_<n>` splits.

Reads the user's copy from the manual dir (see `MANUAL_DOWNLOAD_INSTRUCTIONS` and ``layout.py``): the speaker
is the ``s<n>`` folder (language sub-folders below it are fine), the label the first two letters of the file
name. Videos whose names start with no emotion code are excluded and listed in ``info.metadata['excluded']``.
Every clip keeps at most ``max_frames`` evenly spaced frames (original positions in ``frame_indices``),
face-cropped with one stable square box per clip; clips that cannot be decoded or show no face are skipped and
listed in ``info.metadata['skipped']``.

Build (no TensorFlow needed)::

  tfds build tfds_builders/rml --manual_dir ~/data/rml --file_format=array_record

or from Python::

  import tfds_builders.rml  # registers 'rml'
  builder = tfds.builder('rml', data_dir='~/tensorflow_datasets', file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='~/data/rml'))
"""

from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders.rml import layout

# Clips are 3-6 s at 30 fps (90-180 frames); 64 evenly spaced frames keep about every second or third one.
DEFAULT_MAX_FRAMES = 64


class Builder(sequence_builder.SubjectVideoBuilder):
  """RML audio-visual emotion database (video only): 6 emotions, 8 speakers, 720 clips."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Leave-one-speaker-out splits subject_1 ... subject_8.'}
  BUILDER_CONFIGS = [
      sequence_builder.SequenceConfig(
          name='default', max_frames=DEFAULT_MAX_FRAMES,
          description=f'256x256 face crops (Haar), at most {DEFAULT_MAX_FRAMES} evenly spaced frames.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'http://www.rml.ryerson.ca/rml-emotion-database.html'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
The RML emotion database (Wang & Guan, 2008) is distributed by the Ryerson Multimedia Research Lab
({HOMEPAGE}) on request, for research use under the lab's terms. Unpack it anywhere below the manual dir;
the builder searches for:
{layout.EXPECTED_LAYOUT}
The speaker comes from the s<n> folder, the label from the first two letters of the file name.
"""

  def _find_clips(self, manual_dir: Path):
    return layout.find_clips(manual_dir)
