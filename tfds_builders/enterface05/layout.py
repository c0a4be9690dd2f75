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

from ferjax.data import media
from tfds_builders import sequence_builder

EMOTIONS = ('anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise')

_SUBJECT_RE = re.compile(r'subject[\s_-]*(\d+)', re.IGNORECASE)
_SENTENCE_RE = re.compile(r'sentence[\s_-]*(\d+)', re.IGNORECASE)

EXPECTED_LAYOUT = f"""\
  enterface database/subject <n>/<emotion>/sentence <m>/*.avi
    e.g. enterface database/subject 14/anger/sentence 2/s14_an_2.avi
    <emotion>: one of {', '.join(EMOTIONS)}
"""


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
  return name.lower().endswith(media.VIDEO_EXTENSIONS) and not media.is_hidden(name)


def find_root(manual_dir: os.PathLike | str) -> pathlib.Path:
  """The single eNTERFACE'05 database root (the folder holding ``subject <n>`` folders) below `manual_dir`.

  Raises:
    ManualDirError: no such folder (the message names the expected layout and what was found).
    BuildError: several such folders (two copies below the manual dir).
  """
  roots = sequence_builder.find_dirs(manual_dir, sequence_builder.has_subdirs(_SUBJECT_RE.pattern))
  if not roots:
    raise sequence_builder.manual_dir_error("eNTERFACE'05", manual_dir, EXPECTED_LAYOUT)
  if len(roots) > 1:
    raise sequence_builder.BuildError(
        "Found several eNTERFACE'05 copies (folders holding 'subject <n>' folders): "
        f'{", ".join(map(str, roots))}. Point --manual_dir at one of them.')
  return roots[0]


def _classify(relative: pathlib.PurePath) -> tuple[str, str] | str:
  """(subject, label) for a video path relative to the root, or the reason it is excluded."""
  parts = relative.parts  # subject <n>, <emotion>, sentence <m>, [extra...], file
  subject = _SUBJECT_RE.fullmatch(parts[0])
  if len(parts) < 3:
    return 'not inside an emotion folder'
  emotion = parts[1].lower()
  if emotion not in EMOTIONS:
    return f"folder '{parts[1]}' is not one of the six emotions {EMOTIONS}"
  if not any(_SENTENCE_RE.fullmatch(p) for p in parts[2:-1]):
    return "unsegmented recording (no 'sentence <m>' folder; excluded as in the 43-subject version)"
  return str(int(subject.group(1))), emotion


def find_clips(manual_dir: os.PathLike | str) -> tuple[list[Clip], list[Excluded]]:
  """All usable clips below `manual_dir` (in a deterministic order) and the videos left out, with reasons.

  Raises:
    ManualDirError: nothing of the expected layout is below `manual_dir`, or it holds no usable video.
  """
  root = find_root(manual_dir)
  clips, excluded = [], []
  for subject_dir in sequence_builder.subdirs(root, _SUBJECT_RE.pattern):
    for dirpath, dirnames, filenames in os.walk(subject_dir):
      dirnames[:] = sorted(d for d in dirnames if not media.is_hidden(d))
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
    raise sequence_builder.manual_dir_error(
        "eNTERFACE'05", manual_dir, EXPECTED_LAYOUT,
        problem=f"found eNTERFACE'05 folders at {root} but no usable video in them "
                f'({len(excluded)} left out: {sorted({e.reason for e in excluded})})')
  return clips, excluded
