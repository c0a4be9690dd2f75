"""AFEW (Acted Facial Expressions in the Wild, EmotiW): face-cropped film clips, `train` / `validation` splits.

Reads the user's copy from the manual dir (see `MANUAL_DOWNLOAD_INSTRUCTIONS` and ``layout.py``): the label is
the class folder (Angry ... Surprise -> anger ... surprise, 7 classes). The same clip id occurs in Train and
Val, so sequence ids (and TFDS keys) start with the split: ``train/Angry/000046280``. AFEW has no subject
annotations: ``subject`` is the empty string. Clips keep at most ``max_frames`` evenly spaced frames
(original positions in ``frame_indices``), face-cropped with one stable square box per clip; clips that cannot
be decoded or in which no face is found (a few in AFEW) are skipped and listed in
``info.metadata['skipped']``. The test set (labels withheld) is not read.

Build (no TensorFlow needed)::

  tfds build tfds_builders/afew --manual_dir ~/data/afew --file_format=array_record

or from Python::

  import tfds_builders.afew  # registers 'afew'
  builder = tfds.builder('afew', data_dir='~/tensorflow_datasets', file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='~/data/afew'))
"""

from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders.afew import layout

# Clips are about 1-5 s at ~25 fps; 64 evenly spaced frames keep nearly all of most clips.
DEFAULT_MAX_FRAMES = 64


class Builder(sequence_builder.SequenceDatasetBuilder):
  """AFEW 6.0 / EmotiW (video only): 7 classes, train 773 and validation 383 clips."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Train and Val of AFEW; clips without a face skipped and recorded.'}
  BUILDER_CONFIGS = [
      sequence_builder.SequenceConfig(
          name='default', max_frames=DEFAULT_MAX_FRAMES,
          description=f'256x256 face crops (Haar), at most {DEFAULT_MAX_FRAMES} evenly spaced frames.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'https://sites.google.com/site/emotiwchallenge/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
AFEW (Dhall et al., 2012) is distributed by the EmotiW challenge organisers ({HOMEPAGE}) to researchers who
sign its end-user licence agreement (academic research only). Unpack Train_AFEW and Val_AFEW anywhere below
the manual dir (they may sit in different folders); the builder searches for:
{layout.EXPECTED_LAYOUT}
Other folders inside them (e.g. AlignedFaces_LBPTOP_Points) are ignored.
"""

  def _find_sources(self, manual_dir: Path) -> list[sequence_builder.SequenceSource]:
    clips = layout.find_clips(manual_dir)
    counts = {split: sum(c.split == split for c in clips) for split in ('train', 'validation')}
    print(f'afew: {counts["train"]} train and {counts["validation"]} validation clips', flush=True)
    return [
        sequence_builder.SequenceSource(
            sequence_id=c.sequence_id, split=c.split, label=c.label, subject='', video=str(c.path))
        for c in clips
    ]

  def _extra_metadata(self, sources):
    return {'splits_found': sorted({s.split for s in sources})}
