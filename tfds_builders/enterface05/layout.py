"""Finds eNTERFACE'05 clips in a user's copy and reads subject and label from the folder names.

Expected layout (datasets.md), possibly nested below the manual dir::

  enterface database/subject <n>/<emotion>/sentence <m>/s<n>_<code>_<m>.avi

File names are not trusted: the real copy has typos (``s16_su_3avi.avi``, ``s_3_ha_1.avi``) and subject 11's
files are named ``s12_*``. Subject and label therefore come from the directory names only. Irregularities that
are handled:

* subject 6 holds long unsegmented recordings with no ``sentence`` level: every AVI that is not below a
  ``sentence <m>`` folder is excluded and reported (this gives the usual 43-subject version);
* some sentence folders have an extra sub-folder level: AVIs at any depth below a sentence folder count;
* empty folders (a subject's ``neutral`` folder, missing recordings) simply contribute nothing;
* folder names contain spaces and vary in case (``Subject 3``, ``Anger``).
"""

import dataclasses
import os
import pathlib
import re

EMOTIONS = ('anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise')
VIDEO_SUFFIXES = ('.avi',)

_SUBJECT_RE = re.compile(r'^subject[\s_-]*(\d+)$', re.IGNORECASE)
_SENTENCE_RE = re.compile(r'^sentence[\s_-]*(\d+)$', re.IGNORECASE)

EXPECTED_LAYOUT = (
    "'enterface database/subject <n>/<emotion>/sentence <m>/*.avi' (anywhere below the manual dir), "
    f'with <emotion> one of {", ".join(EMOTIONS)}')


@dataclasses.dataclass(frozen=True)
class Clip:
  """One usable eNTERFACE'05 video.

  Attributes:
    path: the AVI file.
    subject: subject number as written in the ``subject <n>`` folder name, e.g. ``'14'``.
    label: one of `EMOTIONS`, from the emotion folder name.
    sequence_id: path relative to the database root with forward slashes; unique and stable.
  """
  path: pathlib.Path
  subject: str
  label: str
  sequence_id: str


@dataclasses.dataclass(frozen=True)
class Excluded:
  """A video found in the layout but left out on purpose (not a decoding failure)."""
  sequence_id: str
  reason: str


def _is_video(name: str) -> bool:
  return name.lower().endswith(VIDEO_SUFFIXES) and not name.startswith('.')


def find_roots(manual_dir: os.PathLike | str, max_depth: int = 4) -> list[pathlib.Path]:
  """Folders (the manual dir or below, up to `max_depth` levels) that contain ``subject <n>`` folders."""
  manual_dir = pathlib.Path(manual_dir)
  roots = []
  frontier = [manual_dir]
  for _ in range(max_depth + 1):
    next_frontier = []
    for folder in frontier:
      children = sorted(p for p in folder.iterdir() if p.is_dir())
      if any(_SUBJECT_RE.match(c.name) for c in children):
        roots.append(folder)  # Do not descend into a root: subject folders hold no roots.
      else:
        next_frontier.extend(children)
    frontier = next_frontier
  return roots


def describe_found(manual_dir: os.PathLike | str, limit: int = 12) -> str:
  """A short listing of what is in the manual dir, for error messages."""
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    return f'{manual_dir} does not exist or is not a folder'
  names = sorted(p.name + ('/' if p.is_dir() else '') for p in manual_dir.iterdir())
  if not names:
    return f'{manual_dir} is empty'
  more = f' … ({len(names) - limit} more)' if len(names) > limit else ''
  return f'{manual_dir} contains: {", ".join(names[:limit])}{more}'


def find_root(manual_dir: os.PathLike | str) -> pathlib.Path:
  """The single eNTERFACE'05 database root below `manual_dir`; a clear error if there is none or several."""
  if not pathlib.Path(manual_dir).is_dir():
    raise FileNotFoundError(
        f"The manual dir {manual_dir} does not exist. Expected {EXPECTED_LAYOUT} below it.")
  roots = find_roots(manual_dir)
  if not roots:
    raise FileNotFoundError(
        f"No eNTERFACE'05 copy found. Expected {EXPECTED_LAYOUT}; {describe_found(manual_dir)}.")
  if len(roots) > 1:
    raise ValueError(
        "Found several eNTERFACE'05 copies (folders holding 'subject <n>' folders): "
        f'{", ".join(map(str, roots))}. Point --manual_dir at one of them.')
  return roots[0]


def _classify(relative: pathlib.PurePath) -> tuple[str, str] | str:
  """(subject, label) for a video path relative to the root, or the reason it is excluded."""
  parts = relative.parts  # subject <n>, <emotion>, sentence <m>, [extra...], file
  subject = _SUBJECT_RE.match(parts[0])
  if len(parts) < 3:
    return 'not inside an emotion folder'
  emotion = parts[1].lower()
  if emotion not in EMOTIONS:
    return f"folder '{parts[1]}' is not one of the six emotions {EMOTIONS}"
  if not any(_SENTENCE_RE.match(p) for p in parts[2:-1]):
    return "unsegmented recording (no 'sentence <m>' folder; excluded as in the 43-subject version)"
  return str(int(subject.group(1))), emotion


def find_clips(manual_dir: os.PathLike | str) -> tuple[list[Clip], list[Excluded]]:
  """All usable clips below `manual_dir`, sorted by sequence id, and the videos left out with reasons.

  Raises:
    FileNotFoundError: nothing of the expected layout is below `manual_dir`, or it holds no video at all.
  """
  root = find_root(manual_dir)
  clips, excluded = [], []
  for subject_dir in sorted(p for p in root.iterdir() if p.is_dir() and _SUBJECT_RE.match(p.name)):
    for dirpath, dirnames, filenames in os.walk(subject_dir):
      dirnames.sort()
      for name in sorted(filter(_is_video, filenames)):
        path = pathlib.Path(dirpath) / name
        relative = path.relative_to(root)
        sequence_id = relative.as_posix()
        result = _classify(relative)
        if isinstance(result, str):
          excluded.append(Excluded(sequence_id, result))
        else:
          clips.append(Clip(path, *result, sequence_id))
  if not clips:
    raise FileNotFoundError(
        f"The eNTERFACE'05 copy at {root} holds no usable video; expected {EXPECTED_LAYOUT}. "
        f'{len(excluded)} videos were left out: {[e.reason for e in excluded[:3]]}')
  return clips, excluded
