"""FER2013 (ICML 2013 representation-learning challenge): 48x48 grey face images as one-frame sequences.

Reads the user's copy from the manual dir in either published form (``layout.py``): ``fer2013.csv``
(Training / PublicTest / PrivateTest -> splits ``train`` / ``validation`` / ``test``) or the re-shared
image folders ``train/<class>/`` and ``test/<class>/`` (whose ``test`` merges PublicTest and PrivateTest; a
deterministic 1/8 of each train class becomes ``validation``). Config ``ferplus`` relabels the CSV form with
the FER+ majority vote from ``fer2013new.csv`` (8 classes, contempt included).

Every image is a sequence of length one with the features of the sequence builders (``frames``, ``label``,
``subject``, ``sequence_id``, ``num_frames``, ``frame_indices``, ``face_box``), so the pipeline, protocols and
trainer use it unchanged with ``dataset.num_frames = 1``. Frames are stored as they are: 48x48 grey, encoded
as lossless PNG (the pipeline repeats grey to RGB). FER2013 has no subject identities: ``subject`` is the
empty string (as for AFEW); its splits are given, not drawn by subject.

Build (no TensorFlow needed)::

  python -m tfds_builders fer2013 --manual_dir ~/data/fer2013 [--config ferplus]
"""

import collections
import dataclasses
import inspect
import time
from pathlib import Path
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ferjax.data import tfds_common
from tfds_builders import sequence_builder
from tfds_builders.fer2013 import layout

SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(eq=False)
class Fer2013Config(tfds.core.BuilderConfig):
  """Builder config of fer2013.

  Attributes:
    labels: 'fer2013' (the challenge's 7 labels) or 'ferplus' (FER+ majority vote, 8 labels; needs
      fer2013.csv and fer2013new.csv).
    validation_every: image-folder form only: every k-th image of each train class (ordered by CRC-32 of
      its file name) goes to ``validation`` (k = 8: 3,585 images, about PublicTest's 3,589). Must be >= 2.
  """
  labels: str = 'fer2013'
  validation_every: int = 8

  def check(self) -> None:
    if self.labels not in ('fer2013', 'ferplus'):
      raise ValueError(f"labels must be 'fer2013' or 'ferplus', got {self.labels!r}")
    if self.validation_every < 2:
      raise ValueError(f'validation_every must be >= 2, got {self.validation_every}')

  @property
  def class_names(self) -> tuple[str, ...]:
    return layout.FERPLUS_EMOTIONS if self.labels == 'ferplus' else layout.EMOTIONS


class Builder(tfds_common.ArrayRecordTfData, tfds.core.GeneratorBasedBuilder):
  """FER2013: 35,887 48x48 grey faces, 7 classes (8 with FER+), train / validation / test."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'fer2013.csv or image folders; FER+ config; one-frame sequences.'}
  BUILDER_CONFIGS = [
      Fer2013Config(name='default', description=(
          'The challenge labels (7 classes); splits Training / PublicTest / PrivateTest.')),
      Fer2013Config(name='ferplus', labels='ferplus', description=(
          'FER+ majority-vote labels (8 classes) from fer2013new.csv; rows without a majority, or '
          'whose majority is unknown / not a face, are excluded.')),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  HOMEPAGE = ('https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-'
              'recognition-challenge')
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
FER2013 (Goodfellow et al., 2013) is downloaded from the Kaggle challenge page ({HOMEPAGE}) after accepting
its rules (fer2013.tar.gz, or icml_face_data.csv). Unpack it anywhere below the manual dir. FER+ labels
(optional, config 'ferplus'): fer2013new.csv from https://github.com/microsoft/FERPlus, anywhere below the
manual dir. The builder searches for:
{layout.EXPECTED_LAYOUT}"""

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    if file_format is None and not self.info.initialized:  # ArrayRecord, as the sequence builders.
      self.info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD, override=True)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # See SequenceDatasetBuilder.code_path: TFDS's own lookup fails for package modules here.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    config.check()
    features = {
        'frames': tfds.features.Sequence(tfds.features.Image(
            shape=(layout.SIZE, layout.SIZE, 1), encoding_format='png')),
        'label': tfds.features.ClassLabel(names=list(config.class_names)),
        'subject': tfds.features.Text(),
        'sequence_id': tfds.features.Text(),
        'num_frames': tfds.features.Scalar(np.int32),
        'frame_indices': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        'face_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
    }
    bib = Path(inspect.getfile(type(self))).parent / 'CITATIONS.bib'
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or '').strip(),
        features=tfds.features.FeaturesDict(features),
        homepage=self.HOMEPAGE,
        citation=bib.read_text() if bib.exists() else '',
        metadata=tfds.core.MetadataDict(),
    )

  def _manual_dir(self, dl_manager) -> Path:
    try:
      return Path(dl_manager.manual_dir)
    except (AssertionError, OSError) as e:  # TFDS asserts: missing or empty manual dir.
      manual_dir = getattr(dl_manager, '_manual_dir', None)
      if manual_dir is None:
        raise
      raise sequence_builder.manual_dir_error('fer2013', manual_dir, layout.EXPECTED_LAYOUT) from e

  def _split_generators(self, dl_manager):
    config = self.builder_config
    manual_dir = self._manual_dir(dl_manager)
    copy = layout.find_copy(manual_dir)
    self._build_start = time.perf_counter()
    if copy.form == 'csv':
      images, skipped, extra = self._read_csv(copy, config)
    else:
      images, skipped, extra = self._read_folders(copy, config)
    for entry in skipped:
      where = f'line {entry.line} of {entry.path}' if entry.line else entry.path
      logging.warning('fer2013: skipping %s (%s): %s', entry.sequence_id, where, entry.reason)
    if not images:
      raise sequence_builder.manual_dir_error(
          'fer2013', manual_dir, layout.EXPECTED_LAYOUT,
          problem=f'found FER2013 ({copy.form} form) but no usable image in it ({len(skipped)} '
                  f'unusable{f", e.g. {skipped[0].reason}" if skipped else ""})')
    by_split = collections.defaultdict(list)
    for image in images:
      by_split[image.split].append(image)
    self.info.metadata.update({
        'form': copy.form,
        'source': str(copy.csv or copy.train_dir.parent),
        'labels': config.labels,
        'num_images_found': len(images) + len(skipped) + extra.get('num_ferplus_excluded', 0),
        'skipped': [dataclasses.asdict(s) for s in skipped],
        'num_skipped': len(skipped),
        **extra,
    })
    counts = ', '.join(f'{s} {len(by_split[s])}' for s in SPLITS)
    print(f'fer2013: {len(images)} images ({counts}) from the {copy.form} form under {manual_dir}; '
          f'{len(skipped)} skipped', flush=True)
    return {split: self._generate_examples(by_split[split]) for split in SPLITS if by_split[split]}

  def _read_csv(self, copy: layout.Copy, config: Fer2013Config):
    rows = list(layout.read_csv(copy.csv))
    images = [r for r in rows if isinstance(r, layout.Image)]
    skipped = [r for r in rows if isinstance(r, layout.Skipped)]
    extra: dict[str, Any] = {'ferplus_file': str(copy.ferplus) if copy.ferplus else None}
    if config.labels == 'fer2013':
      if copy.ferplus:
        print(f'fer2013: {copy.ferplus} is there too; build `--config ferplus` for its FER+ labels',
              flush=True)
      return images, skipped, extra
    if copy.ferplus is None:
      raise sequence_builder.ManualDirError(
          f'fer2013/ferplus needs {layout.FERPLUS_NAME} (FER+ votes, '
          f'https://github.com/microsoft/FERPlus) below the manual dir; found only {copy.csv}')
    votes = layout.read_ferplus(copy.ferplus)
    if len(votes) != len(rows):
      raise sequence_builder.BuildError(
          f'fer2013/ferplus: {copy.ferplus} has {len(votes)} data rows but {copy.csv} has {len(rows)}; '
          'FER+ is aligned with fer2013.csv row by row, so both must be complete')
    relabelled, excluded = [], []
    index = {layout.image_id(i): i for i in range(len(rows))}
    for image in images:
      line, row_votes, problem = votes[index[image.sequence_id]]
      label, problem = layout.ferplus_label(row_votes) if row_votes is not None else (None, problem)
      if label is None:
        logging.info('fer2013/ferplus: excluding %s (line %d of %s): %s', image.sequence_id, line,
                     copy.ferplus, problem)
        excluded.append({'sequence_id': image.sequence_id, 'split': image.split, 'line': line,
                         'reason': problem})
        continue
      relabelled.append(dataclasses.replace(image, label=label))
    counts = dict(sorted(collections.Counter(e['reason'] for e in excluded).items()))
    print(f'fer2013/ferplus: {len(relabelled)} images keep a FER+ label; excluded by the vote: '
          + (', '.join(f'{n} ({reason})' for reason, n in counts.items()) or 'none'), flush=True)
    extra.update(ferplus_excluded=excluded, ferplus_excluded_counts=counts,
                 num_ferplus_excluded=len(excluded))
    return relabelled, skipped, extra

  def _read_folders(self, copy: layout.Copy, config: Fer2013Config):
    if config.labels == 'ferplus':
      raise sequence_builder.BuildError(
          'fer2013/ferplus needs the CSV form: FER+ votes are aligned with the rows of fer2013.csv, '
          f'which the image-folder copy ({copy.train_dir.parent}) does not have')
    message = (f'fer2013: image-folder form ({copy.train_dir}, {copy.test_dir}): its test/ merges '
               'PublicTest and PrivateTest, so `test` is all of test/ and the official PrivateTest '
               f'split cannot be recovered; `validation` is every {config.validation_every}th train '
               'image of each class (ordered by CRC-32 of the file name)')
    print(message, flush=True)
    logging.warning(message)
    entries = list(layout.read_folders(copy, config.validation_every))
    images = [e for e in entries if isinstance(e, layout.Image)]
    skipped = [e for e in entries if isinstance(e, layout.Skipped)]
    return images, skipped, {'validation_every': config.validation_every}

  def _generate_examples(self, images: list[layout.Image]):
    for image in images:
      yield image.sequence_id, {
          'frames': [layout.encode_png(image.pixels)],
          'label': image.label,
          'subject': '',
          'sequence_id': image.sequence_id,
          'num_frames': 1,
          'frame_indices': np.zeros(1, np.int32),
          'face_box': np.array([0, 0, layout.SIZE, layout.SIZE], np.float32),
      }

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    super()._download_and_prepare(dl_manager, download_config)
    metadata = self.info.metadata
    elapsed = time.perf_counter() - getattr(self, '_build_start', time.perf_counter())
    skipped = metadata.get('skipped', [])
    excluded = metadata.get('num_ferplus_excluded', 0)
    kept = sum(split.num_examples for split in self.info.splits.values())
    print(f'fer2013: built {kept} images in {elapsed:.1f} s; skipped {len(skipped)} unusable rows or '
          'files (listed in info.metadata["skipped"])'
          + (f', {excluded} excluded by the FER+ vote' if excluded else ''), flush=True)
    for entry in skipped:
      where = f'line {entry["line"]}' if entry['line'] else entry['path']
      print(f'  skipped {entry["sequence_id"]} ({where}): {entry["reason"]}', flush=True)
