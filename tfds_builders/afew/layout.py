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

# AFEW class folder -> the project's label names (DESIGN.md).
CLASS_FOLDERS = {'angry': 'anger', 'disgust': 'disgust', 'fear': 'fear', 'happy': 'happiness',
                 'neutral': 'neutral', 'sad': 'sadness', 'surprise': 'surprise'}
EMOTIONS = tuple(sorted(CLASS_FOLDERS.values()))
# Accepted split folder names (lower case) -> TFDS split.
SPLIT_FOLDERS = {'train_afew': 'train', 'train': 'train',
                 'val_afew': 'validation', 'val': 'validation', 'validation': 'validation'}
VIDEO_SUFFIXES = ('.avi', '.mp4', '.mkv')

EXPECTED_LAYOUT = (
    "'Train_AFEW/<class>/<id>.avi' and 'Val_AFEW/<class>/<id>.avi' (anywhere below the manual dir), "
    "<class> one of Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise")


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
  return name.lower().endswith(VIDEO_SUFFIXES) and not name.startswith('.')


def _class_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.lower() in CLASS_FOLDERS)


def find_split_dirs(manual_dir: os.PathLike | str, max_depth: int = 4) -> dict[str, pathlib.Path]:
  """``{'train': folder, 'validation': folder}`` (those present) found up to `max_depth` levels down.

  A split folder is one named like ``Train_AFEW``/``Val_AFEW`` (any case; ``Train``/``Val`` too) that holds
  at least one class folder.

  Raises:
    FileNotFoundError: neither split folder is found.
    ValueError: a split folder is found twice.
  """
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f'The manual dir {manual_dir} does not exist. Expected {EXPECTED_LAYOUT}.')
  found: dict[str, pathlib.Path] = {}
  frontier = [manual_dir]
  for _ in range(max_depth + 1):
    next_frontier = []
    for folder in frontier:
      for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = SPLIT_FOLDERS.get(child.name.lower())
        if split and _class_dirs(child):
          if split in found:
            raise ValueError(f'Two {split} folders: {found[split]} and {child}. '
                             'Point --manual_dir at a single AFEW copy.')
          found[split] = child
        else:
          next_frontier.append(child)
    frontier = next_frontier
  if not found:
    names = sorted(p.name + ('/' if p.is_dir() else '') for p in manual_dir.iterdir())
    raise FileNotFoundError(
        f'No AFEW copy found. Expected {EXPECTED_LAYOUT}; '
        f'{manual_dir} contains: {", ".join(names[:12]) or "nothing"}.')
  return dict(sorted(found.items()))


def find_clips(manual_dir: os.PathLike | str) -> list[Clip]:
  """All clips below `manual_dir`, sorted by split then sequence id."""
  clips = []
  for split, split_dir in find_split_dirs(manual_dir).items():
    for class_dir in _class_dirs(split_dir):
      label = CLASS_FOLDERS[class_dir.name.lower()]
      for path in sorted(p for p in class_dir.iterdir() if p.is_file() and _is_video(p.name)):
        clips.append(Clip(path, split, label, f'{split}/{class_dir.name}/{path.stem}'))
  return clips
