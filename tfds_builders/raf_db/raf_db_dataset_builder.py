"""RAF-DB basic emotion set (Li et al., CVPR 2017): face images as one-frame sequences, 7 classes.

Reads ``EmoLabel/list_patition_label.txt`` and the images of the chosen set (``layout.py``): config
``aligned`` (default) stores the released 100x100 aligned faces as they are (their JPEG bytes: no decoding,
no re-encoding, no detection); config ``original`` finds the face in each uncropped image with the builders'
detector (Haar by default) and stores a 100x100 crop. Splits: ``train`` and ``test`` as released (12,271 /
3,068), and ``validation``: every 8th train image of each class, ordered by the CRC-32 of its id, taken out of
``train`` (deterministic; the published recipes select on the test set, ferjax must not).

Lines naming a missing or unreadable image, or with a label outside 1-7, are skipped with their line
numbers (``info.metadata['skipped']``) and counted in the build summary. RAF-DB has no subject identities:
``subject`` is the empty string.

Build (no TensorFlow needed)::

  python -m tfds_builders raf_db --manual_dir ~/data/RAF-DB [--config original]
"""

import collections
import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders import split_files
from tfds_builders.raf_db import layout


@dataclasses.dataclass(eq=False)
class RafDbConfig(sequence_builder.SequenceConfig):
  """Builder config of raf_db (the crop fields of SequenceConfig, plus:).

  Attributes:
    image_set: 'aligned' (Image/aligned/, stored as they are when ``size`` is 100) or 'original'
      (Image/original/, faces detected and cropped).
    validation_every: every k-th train image of each class (by CRC-32 of its id) becomes ``validation``.
  """
  image_set: str = 'aligned'
  validation_every: int = 8


class Builder(sequence_builder.SequenceDatasetBuilder):
  """RAF-DB basic: 15,339 face images, 7 classes; train / validation (from train) / test."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Aligned (bytes kept) or original (detected) images; validation from train.'}
  BUILDER_CONFIGS = [
      RafDbConfig(name='aligned', image_set='aligned', size=100, face_detector='none', keep_jpeg=True,
                  description='The released 100x100 aligned faces, stored as they are.'),
      RafDbConfig(name='original', image_set='original', size=100, face_detector='haar',
                  description='The uncropped images; 100x100 face crops (Haar detection).'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'aligned'
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'http://www.whdeng.cn/raf/model1.html'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
RAF-DB (Li et al., 2017) is released by its authors ({HOMEPAGE}) to researchers who sign its agreement
(non-commercial research). Unpack the basic emotion set anywhere below the manual dir; the builder searches
for:
{layout.EXPECTED_LAYOUT}"""

  def _find_sources(self, manual_dir: Path) -> list[sequence_builder.SequenceSource]:
    config = self.builder_config
    root = layout.find_root(manual_dir)
    entries = list(layout.read_labels(root, config.image_set))
    images = [e for e in entries if isinstance(e, layout.Image)]
    for entry in entries:
      if isinstance(entry, layout.Skipped):
        self._skip_source(entry.sequence_id, entry.path, f'line {entry.line}: {entry.reason}',
                          split=entry.split, line=entry.line)
    validation = split_files.holdout_validation(
        [i for i in images if i.split == 'train'], config.validation_every,
        key=lambda i: i.sequence_id, group=lambda i: i.label)
    self._reconciled = split_files.reconcile([e.sequence_id for e in entries],
                                             layout.present_images(root, config.image_set))
    counts = collections.Counter('validation' if i.sequence_id in validation else i.split
                                 for i in images)
    print(f'raf_db: {len(images)} usable lines in {root / "EmoLabel" / layout.LABEL_FILE} '
          f'(train {counts["train"]}, validation {counts["validation"]}, test {counts["test"]}); '
          f'{len(entries) - len(images)} lines skipped; '
          f'{self._reconciled["num_present_but_unlisted"]} images present but unlisted', flush=True)
    return [sequence_builder.SequenceSource(
        sequence_id=i.sequence_id, split='validation' if i.sequence_id in validation else i.split,
        label=i.label, subject='', images=(str(i.path),), line=i.line) for i in images]

  def _extra_metadata(self, sources):
    del sources
    config = self.builder_config
    return {'image_set': config.image_set, 'validation_every': config.validation_every,
            **getattr(self, '_reconciled', {})}
