"""Oulu-CASIA NIR&VIS: 80 subjects x 6 expressions per modality and illumination, as face-crop sequences.

One builder config per modality (VL = visible light, NI = near infrared) x illumination (Strong, Weak,
Dark); ``VL_Strong`` is the default and the standard subset. Label = the expression folder's name.
Splits: ``fold_0 … fold_9`` with the sorted subjects ``[i::10]`` in fold i (fold 0 = P001, P011, ...).

Frames come from the official cropped set (``PreProcess*/<modality>_Acropped/<illumination>/…``) when it is
present — those images already are aligned face crops, so they are only centre-squared and resized — and
otherwise from ``OriginalImg/<modality>/<illumination>/…`` with face detection. ``prefer_cropped=False``
forces the original images.
"""

import dataclasses
from pathlib import Path

from absl import logging
import tensorflow_datasets as tfds

from ferjax.data import media
from tfds_builders import sequence_builder as sb

MODALITIES = ('VL', 'NI')
ILLUMINATIONS = ('Strong', 'Weak', 'Dark')
NUM_FOLDS = 10
SUBJECT_RE = r'P\d{3}'
# Expression folder name (lower case) -> class name.
EMOTION_FOLDERS = {'anger': 'anger', 'disgust': 'disgust', 'fear': 'fear', 'happiness': 'happiness',
                   'sadness': 'sadness', 'surprise': 'surprise'}

EXPECTED_LAYOUT = """\
  OriginalImg/{VL,NI}/{Strong,Weak,Dark}/P001/{Anger,Disgust,Fear,Happiness,Sadness,Surprise}/000.jpeg
and/or the official cropped set, under any root folder name:
  PreProcess_Img/{VL,NI}_Acropped/{Strong,Weak,Dark}/P001/Anger/000.jpeg
Both may be nested (e.g. B_OriginalImg/OriginalImg/...)."""


@dataclasses.dataclass(eq=False)
class OuluCasiaConfig(sb.SequenceConfig):
  """Oulu-CASIA config: which ``modality`` ('VL' or 'NI') and ``illumination`` ('Strong', 'Weak',
  'Dark'); ``prefer_cropped``: use the official cropped set when the manual dir has it."""
  modality: str = 'VL'
  illumination: str = 'Strong'
  prefer_cropped: bool = True


def _configs() -> list[OuluCasiaConfig]:
  return [OuluCasiaConfig(name=f'{m}_{i}', modality=m, illumination=i,
                          description=f'{m} modality, {i} illumination, 256x256 crops, all frames.')
          for m in MODALITIES for i in ILLUMINATIONS]


class Builder(sb.SequenceDatasetBuilder):
  """Oulu-CASIA NIR&VIS expression sequences: square face crops (JPEG), 6 classes, 10 folds."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  CLASS_NAMES = tuple(sorted(EMOTION_FOLDERS.values()))
  EXPECTED_LAYOUT = EXPECTED_LAYOUT
  HOMEPAGE = 'https://www.oulu.fi/en/university/faculties-and-units/faculty-information-technology-and-electrical-engineering/center-machine-vision-and-signal-analysis'
  BUILDER_CONFIGS = _configs()
  DEFAULT_BUILDER_CONFIG_NAME = 'VL_Strong'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Oulu-CASIA NIR&VIS cannot be downloaded automatically. Request it from the Center for Machine Vision and
Signal Analysis, University of Oulu (Zhao et al., "Facial expression recognition from near-infrared
videos", 2011), who release it for non-commercial research under their licence agreement. Extract it
into the manual dir so that it holds:
{EXPECTED_LAYOUT}
Then: python -m tfds_builders oulu_casia --config VL_Strong --manual_dir <that dir>
(or, with the [tf] extra: tfds build tfds_builders/oulu_casia --config VL_Strong --file_format array_record --manual_dir <that dir>)
"""

  def _find_sources(self, manual_dir: Path) -> list[sb.SequenceSource]:
    config = self.builder_config
    if config.modality not in MODALITIES or config.illumination not in ILLUMINATIONS:
      raise ValueError(f'modality must be one of {MODALITIES} and illumination one of '
                       f'{ILLUMINATIONS}; got {config.modality!r}, {config.illumination!r}')
    cropped, original = _find_roots(manual_dir, config.modality, config.illumination)
    if cropped is None and original is None:
      raise sb.manual_dir_error(
          'Oulu-CASIA', manual_dir, EXPECTED_LAYOUT,
          problem=f'found no {config.modality}/{config.illumination} folder of Oulu-CASIA')
    self._use_cropped = cropped is not None and (config.prefer_cropped or original is None)
    root = cropped if self._use_cropped else original
    print(f'oulu_casia: reading {"the official cropped set" if self._use_cropped else "original images"}'
          f' from {root}', flush=True)
    subjects = sb.subdirs(root, SUBJECT_RE)
    folds = sb.kfold_by_sorted_subjects([s.name for s in subjects], NUM_FOLDS)
    sources = []
    for subject in subjects:
      for emotion_dir in sb.subdirs(subject):
        label = EMOTION_FOLDERS.get(emotion_dir.name.lower())
        if label is None:
          logging.warning('oulu_casia: ignoring folder %s (not an expression folder)', emotion_dir)
          continue
        sources.append(sb.SequenceSource(
            sequence_id=f'{subject.name}_{label}', split=folds[subject.name], label=label,
            subject=subject.name, images=tuple(str(p) for p in media.list_images(emotion_dir))))
    self._folds = folds
    return sources

  def _crop_options(self) -> sb.CropOptions:
    options = super()._crop_options()
    if self._use_cropped:
      # The official crops are aligned faces: detecting again would only lose some of them.
      return dataclasses.replace(options, face_detector='none', margin=0.0)
    return options

  def _extra_metadata(self, sources):
    return {'source': 'cropped' if self._use_cropped else 'original', 'subject_folds': self._folds}


def _find_roots(manual_dir: Path, modality: str, illumination: str) -> tuple[Path | None, Path | None]:
  """The cropped (``<modality>_Acropped/<illumination>``) and original (``<modality>/<illumination>``)
  folders holding P*** subjects, shallowest first; None where absent."""
  has_subjects = sb.has_subdirs(SUBJECT_RE)

  def is_illumination_dir(path: Path) -> bool:
    return path.name.lower() == illumination.lower() and has_subjects(path)

  found = sb.find_dirs(manual_dir, is_illumination_dir, max_depth=8)
  cropped = [p for p in found if p.parent.name.lower() == f'{modality}_acropped'.lower()]
  original = [p for p in found if p.parent.name.lower() == modality.lower()]
  for kind, paths in (('cropped', cropped), ('original', original)):
    if len(paths) > 1:
      logging.warning('oulu_casia: several %s %s/%s folders, using %s (others: %s)', kind, modality,
                      illumination, paths[0], [str(p) for p in paths[1:]])
  return (cropped[0] if cropped else None), (original[0] if original else None)
