"""CK+ (Extended Cohn-Kanade, Lucey et al. 2010): the 327 emotion-labelled sequences as face-crop sequences.

Label: the sequence's ``Emotion/S***/NNN/*_emotion.txt`` (``int(float(text))``, 1..7). Sequences without an
emotion file are unlabelled: they are left out (not an error) and counted in ``info.metadata``. A sequence
whose emotion file is unreadable (not a number, or a code outside 1..7) is skipped with that reason and listed
in ``info.metadata['skipped']``, like one whose frames cannot be decoded; the rest of the build goes on.
Splits: ``fold_0 … fold_9``; a subject's fold is its index in the ascending-sorted list of labelled subjects
(those with an emotion file, readable or not), mod 10 (the Emotion-FAN fold list). Face box: from the
``Landmarks`` files when present, else the detector.
"""

import dataclasses
from pathlib import Path

from absl import logging
import tensorflow_datasets as tfds

from ferjax.data import media
from tfds_builders import sequence_builder as sb

# Emotion file code -> class name (0 = neutral never occurs in the files).
EMOTION_CODES = {1: 'anger', 2: 'contempt', 3: 'disgust', 4: 'fear', 5: 'happiness', 6: 'sadness',
                 7: 'surprise'}
NUM_FOLDS = 10
FRAME_CHOICES = ('all', 'first_last3')
SUBJECT_RE = r'S\d{3}'
SEQUENCE_RE = r'\d{3}'

EXPECTED_LAYOUT = """\
  cohn-kanade-images/S005/001/S005_001_00000001.png ...   (from extended-cohn-kanade-images.zip)
  Emotion/S005/001/S005_001_00000011_emotion.txt          (from Emotion_labels.zip)
  Landmarks/S005/001/S005_001_00000001_landmarks.txt      (optional, from Landmarks.zip)
Each may be nested (e.g. extended-cohn-kanade-images/cohn-kanade-images/, Emotion_labels/Emotion/) or
the zip's folder may hold the S*** folders directly (Emotion_labels/S005/...)."""


@dataclasses.dataclass(eq=False)
class CkPlusConfig(sb.SequenceConfig):
  """CK+ config; ``frames``: 'all' (every frame, neutral onset to peak) or 'first_last3' (the first
  frame and the last three, a variant common in the literature; the sequence keeps its one label)."""
  frames: str = 'all'


class Builder(sb.SequenceDatasetBuilder):
  """CK+ labelled sequences: square face crops (JPEG), 7 classes, 10 subject-independent folds."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  CLASS_NAMES = tuple(sorted(EMOTION_CODES.values()))
  EXPECTED_LAYOUT = EXPECTED_LAYOUT
  HOMEPAGE = 'https://www.jeffcohn.net/Resources/'
  BUILDER_CONFIGS = [
      CkPlusConfig(name='all', description='All frames of each labelled sequence, 256x256 crops.'),
      CkPlusConfig(name='first_last3', frames='first_last3',
                   description='First frame + last three frames of each sequence, 256x256 crops.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'all'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
CK+ cannot be downloaded automatically. Request it from the dataset's owners
(https://www.jeffcohn.net/Resources/, "CK+"), who release it for non-commercial research under the
Cohn-Kanade database agreement (you may not redistribute images; publishing a subject's images needs
that subject's consent as listed in the release). Unzip extended-cohn-kanade-images.zip,
Emotion_labels.zip and (optionally) Landmarks.zip into the manual dir, so that it holds:
{EXPECTED_LAYOUT}
Then: python -m tfds_builders ck_plus --manual_dir <that dir>
(or, with the [tf] extra: tfds build tfds_builders/ck_plus --config all --file_format array_record --manual_dir <that dir>)
"""

  def _find_sources(self, manual_dir: Path) -> list[sb.SequenceSource]:
    images_root = _find_root(manual_dir, r'(extended-)?cohn-kanade-images')
    emotion_root = _find_root(manual_dir, r'Emotion(_labels)?')
    if images_root is None or emotion_root is None:
      missing = [n for n, r in (('cohn-kanade-images', images_root), ('Emotion', emotion_root))
                 if r is None]
      raise sb.manual_dir_error('CK+', manual_dir, EXPECTED_LAYOUT,
                                problem=f'found no {" and no ".join(missing)} folder of CK+')
    landmarks_root = _find_root(manual_dir, r'Landmarks')
    print(f'ck_plus: images {images_root}, labels {emotion_root}, landmarks {landmarks_root}',
          flush=True)

    labelled, bad_labels, self._unlabelled = [], [], []
    for subject_dir in sb.subdirs(images_root, SUBJECT_RE):
      for seq_dir in sb.subdirs(subject_dir, SEQUENCE_RE):
        sequence_id = f'{subject_dir.name}_{seq_dir.name}'
        try:
          label = _read_label(emotion_root / subject_dir.name / seq_dir.name)
        except LabelError as e:
          bad_labels.append((sequence_id, subject_dir.name, e))
          continue
        if label is None:
          self._unlabelled.append(sequence_id)
        else:
          labelled.append((sequence_id, subject_dir.name, label, seq_dir))
    # A damaged emotion file still marks a labelled subject: counting it keeps every other subject in
    # its published fold.
    folds = sb.kfold_by_sorted_subjects(
        [subject for _, subject, _, _ in labelled] + [subject for _, subject, _ in bad_labels],
        NUM_FOLDS)
    self._folds = folds
    for sequence_id, subject, error in bad_labels:
      self._skip_source(sequence_id, error.path, error.reason, split=folds[subject])
    return [self._source(sequence_id, subject, label, seq_dir, folds[subject], landmarks_root)
            for sequence_id, subject, label, seq_dir in labelled]

  def _source(self, sequence_id, subject, label, seq_dir, split, landmarks_root):
    images = media.list_images(seq_dir)
    indices = list(range(len(images)))
    if self.builder_config.frames == 'first_last3' and len(images) > 4:
      indices = [0] + indices[-3:]
    elif self.builder_config.frames not in FRAME_CHOICES:
      raise ValueError(f'frames must be one of {FRAME_CHOICES}, got {self.builder_config.frames!r}')
    landmarks = None
    if landmarks_root is not None:
      landmark_dir = landmarks_root / subject / seq_dir.name
      paths = [landmark_dir / f'{images[i].stem}_landmarks.txt' for i in indices]
      if any(p.is_file() for p in paths):
        landmarks = tuple(str(p) if p.is_file() else None for p in paths)
    return sb.SequenceSource(
        sequence_id=sequence_id, split=split, label=label, subject=subject,
        images=tuple(str(images[i]) for i in indices), image_indices=tuple(indices),
        landmarks=landmarks)

  def _extra_metadata(self, sources):
    print(f'ck_plus: {len(sources)} labelled sequences of {len(self._folds)} subjects; '
          f'{len(self._unlabelled)} unlabelled sequences left out (no emotion file); '
          f'{len(self._found_skipped)} with an unreadable emotion file skipped', flush=True)
    return {'num_labelled': len(sources), 'num_unlabelled': len(self._unlabelled),
            'unlabelled': self._unlabelled, 'subject_folds': self._folds}


def _find_root(manual_dir: Path, name_pattern: str) -> Path | None:
  """The shallowest folder named like ``name_pattern`` that holds S*** subject folders."""
  match_name = sb.name_matches(name_pattern)
  has_subjects = sb.has_subdirs(SUBJECT_RE)
  roots = sb.find_dirs(manual_dir, lambda p: match_name(p) and has_subjects(p))
  if len(roots) > 1:
    logging.warning('ck_plus: several %s folders found, using %s (others: %s)', name_pattern,
                    roots[0], [str(r) for r in roots[1:]])
  return roots[0] if roots else None


class LabelError(ValueError):
  """An emotion file that cannot be read as one of the codes 1..7."""

  def __init__(self, path: Path, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path, self.reason = path, reason


def _read_label(folder: Path) -> str | None:
  """The class name in a sequence's emotion folder, or None when it has no emotion file.

  Raises:
    LabelError: the emotion file is unreadable, not a number, or not one of the codes 1..7.
  """
  if not folder.is_dir():
    return None
  files = [p for p in sorted(folder.glob('*_emotion.txt')) if not media.is_hidden(p.name)]
  if not files:
    return None
  path = files[-1]
  try:
    # errors='replace': a binary file is reported with its text below rather than as a decode error.
    text = path.read_text(errors='replace').strip()
  except OSError as e:
    raise LabelError(path, f'cannot read the emotion file: {e.strerror or e}') from e
  try:
    code = int(float(text))
  except (ValueError, OverflowError) as e:  # 'garbage', '', 'nan'; 'inf' overflows int().
    raise LabelError(path, f'emotion file: expected one number like "3.0000000e+00", '
                           f'got {text[:40]!r}') from e
  if code not in EMOTION_CODES:
    raise LabelError(path, f'emotion file: code {code} is not one of {sorted(EMOTION_CODES)} '
                           f'({", ".join(EMOTION_CODES.values())})')
  return EMOTION_CODES[code]
