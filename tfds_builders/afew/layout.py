"""Finds AFEW (EmotiW) clips in a user's copy.

Expected layout (datasets.md), possibly nested below the manual dir, the two split folders possibly in
different places::

  Train_AFEW/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/<9-digit id>.avi
  Val_AFEW/<class>/<9-digit id>.avi

The label is the class folder. Other folders inside a split folder (e.g. the released face crops
``AlignedFaces_LBPTOP_Points/``) are ignored. The same clip id occurs in Train and Val (different segments of
the same film), so sequence ids start with the split: ``train/Angry/000046280``.
"""

import dataclasses
import os
import pathlib

from ferjax.data import media
from tfds_builders import sequence_builder

# AFEW class folder -> the project's label names (DESIGN.md).
CLASS_FOLDERS = {'angry': 'anger', 'disgust': 'disgust', 'fear': 'fear', 'happy': 'happiness',
                 'neutral': 'neutral', 'sad': 'sadness', 'surprise': 'surprise'}
EMOTIONS = tuple(sorted(CLASS_FOLDERS.values()))
# Accepted split folder names (lower case) -> TFDS split.
SPLIT_FOLDERS = {'train_afew': 'train', 'train': 'train',
                 'val_afew': 'validation', 'val': 'validation', 'validation': 'validation'}

EXPECTED_LAYOUT = """\
  Train_AFEW/<class>/<clip id>.avi and Val_AFEW/<class>/<clip id>.avi  (the two may sit apart)
    e.g. Train_AFEW/Angry/000046280.avi
    <class>: one of Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise
"""


@dataclasses.dataclass(frozen=True)
class Clip:
  """One AFEW video.

  Attributes:
    path: the video file.
    split: ``'train'`` or ``'validation'``.
    label: one of `EMOTIONS`, from the class folder.
    sequence_id: ``<split>/<class folder>/<file stem>``; unique although clip ids repeat across splits.
  """
  path: pathlib.Path
  split: str
  label: str
  sequence_id: str


def _is_video(name: str) -> bool:
  return name.lower().endswith(media.VIDEO_EXTENSIONS) and not media.is_hidden(name)


def _class_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in sequence_builder.subdirs(folder) if p.name.lower() in CLASS_FOLDERS]


def _is_split_dir(folder: pathlib.Path) -> bool:
  return folder.name.lower() in SPLIT_FOLDERS and bool(_class_dirs(folder))


def find_split_dirs(manual_dir: os.PathLike | str) -> dict[str, pathlib.Path]:
  """``{'train': folder, 'validation': folder}`` (those present) found at any depth below `manual_dir`.

  A split folder is one named ``Train_AFEW``/``Val_AFEW`` (any case; ``Train``/``Val`` too) that holds at
  least one class folder; the two may sit in different places.

  Raises:
    ManualDirError: neither split folder is found (the message names the expected layout and what was
      found).
    BuildError: a split folder is found twice.
  """
  found: dict[str, pathlib.Path] = {}
  for folder in sequence_builder.find_dirs(manual_dir, _is_split_dir):
    split = SPLIT_FOLDERS[folder.name.lower()]
    if split in found:
      raise sequence_builder.BuildError(f'Two {split} folders: {found[split]} and {folder}. '
                       'Point --manual_dir at a single AFEW copy.')
    found[split] = folder
  if not found:
    raise sequence_builder.manual_dir_error('AFEW', manual_dir, EXPECTED_LAYOUT)
  return dict(sorted(found.items()))


def find_clips(manual_dir: os.PathLike | str) -> list[Clip]:
  """All clips below `manual_dir`, by split, class folder and file name."""
  clips = []
  for split, split_dir in find_split_dirs(manual_dir).items():
    for class_dir in _class_dirs(split_dir):
      label = CLASS_FOLDERS[class_dir.name.lower()]
      for path in sorted(p for p in class_dir.iterdir() if p.is_file() and _is_video(p.name)):
        clips.append(Clip(path, split, label, f'{split}/{class_dir.name}/{path.stem}'))
  return clips
