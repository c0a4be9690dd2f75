"""FERV39k (Wang et al., CVPR 2022): 38,935 clips of 22 scenes, 7 classes, from the released face crops.

Reads ``2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/`` with the split files
``4_setups/All_scenes/{train,test}_All.csv`` (``layout.py``). Splits: ``train`` (31,088 as released, minus the
validation share), ``test`` (7,847) and ``validation``: every 10th train clip of each (scene, class) group,
ordered by the CRC-32 of its id (deterministic). The public repositories validate on the test set; ferjax
selects on this held-out share instead. The scene is a feature (``scene``), so reports break results down
by scene. The crops are stored as they are when they already have the configured size (224), otherwise
centre-cropped and resized (``face_detector='none'``); ``subject`` is the empty string.

Reported with counts (``info.metadata``): clips listed but absent, clips whose frames cannot be read
(``skipped``), clips present but unlisted, unusable split-file lines (``bad_lines``, with line numbers).

Build (no TensorFlow needed)::

  python -m tfds_builders ferv39k --manual_dir ~/data/FERV39k
"""

import collections
import dataclasses
from pathlib import Path

from ferjax.data import media
import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders import split_files
from tfds_builders.ferv39k import layout


@dataclasses.dataclass(eq=False)
class Ferv39kConfig(sequence_builder.SequenceConfig):
  """Builder config of ferv39k (the crop fields of SequenceConfig, plus ``validation_every``: every k-th
  train clip of each (scene, class) group, by CRC-32 of its id, becomes ``validation``)."""
  validation_every: int = 10


class Builder(sequence_builder.SequenceDatasetBuilder):
  """FERV39k: 38,935 clips, 22 scenes, 7 classes; train / validation (from train) / test."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Released face crops; scene feature; validation carved from train.'}
  BUILDER_CONFIGS = [
      Ferv39kConfig(name='default', size=224, face_detector='none', keep_jpeg=True,
                    description='The released face crops, 224x224 (stored as they are at that size).'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'https://wangyanckxx.github.io/Proj_CVPR2022_FERV39k.html'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FERV39k (Wang et al., 2022) is released by its authors ({HOMEPAGE}) to researchers who sign its licence
agreement. Unpack 2_ClipsforFaceCrop/ and 4_setups/ anywhere below the manual dir; the builder searches for:
{layout.EXPECTED_LAYOUT}"""

  def _extra_features(self):
    return {'scene': tfds.features.Text()}

  def _find_sources(self, manual_dir: Path) -> list[sequence_builder.SequenceSource]:
    config = self.builder_config
    crops, setups = layout.find_roots(manual_dir)
    clips, bad = [], []
    for split, name in layout.SPLIT_FILES.items():
      good, wrong = layout.read_split_file(setups / name, split)
      clips += good
      bad += wrong
    for entry in bad:
      print(f'ferv39k: line {entry.line} of {entry.path} skipped: {entry.reason}', flush=True)
    present = layout.present_clips(crops)
    validation = split_files.holdout_validation(
        [c for c in clips if c.split == 'train'], config.validation_every,
        key=lambda c: c.sequence_id, group=lambda c: f'{c.scene}/{c.label}')
    sources = []
    for clip in clips:
      split = 'validation' if clip.sequence_id in validation else clip.split
      folder = present.get(clip.sequence_id)
      frames = media.list_images(folder) if folder else []
      if not frames:
        where = 'no such folder' if folder is None else 'no image in it'
        self._skip_source(clip.sequence_id, folder or crops / clip.sequence_id,
                          f'listed in {Path(clip.path).name} line {clip.line}, but {where}',
                          split=split, line=clip.line)
        continue
      sources.append(sequence_builder.SequenceSource(
          sequence_id=clip.sequence_id, split=split, label=clip.label, subject='',
          images=tuple(str(p) for p in frames), extras=(('scene', clip.scene),), line=clip.line))
    self._metadata = {
        'bad_lines': [dataclasses.asdict(b) for b in bad], 'num_bad_lines': len(bad),
        'validation_every': config.validation_every,
        'scenes': sorted({c.scene for c in clips}),
        # A clip named only by a bad line is neither listed nor unlisted: it is among the bad lines.
        **split_files.reconcile([c.sequence_id for c in clips],
                                set(present) - {b.sequence_id for b in bad}),
    }
    counts = collections.Counter(s.split for s in sources)
    print(f'ferv39k: {len(sources)} clips (train {counts["train"]}, validation {counts["validation"]}, '
          f'test {counts["test"]}) of {len(self._metadata["scenes"])} scenes; '
          f'{self._metadata["num_listed_but_absent"]} listed but absent, '
          f'{self._metadata["num_present_but_unlisted"]} present but unlisted, {len(bad)} bad lines',
          flush=True)
    return sources

  def _extra_metadata(self, sources):
    del sources
    return dict(getattr(self, '_metadata', {}))
