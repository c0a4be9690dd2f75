"""Finds RML (Ryerson Multimedia Lab) clips in a user's copy.

Expected layout (datasets.md), possibly nested below the manual dir::

  rml-1/s1 … s5/[<language>/]<code>….avi
  rml-2/s6 … s8/[<language>/]<code>….avi

The subject is the ``s<n>`` folder; some speakers have an extra language sub-folder, so AVIs at any depth below
``s<n>`` count. The label is the first two letters of the file name (``an di fe ha sa su``); the rest of the
file name is not relied on. A video whose name does not start with one of those codes is excluded and
reported. The ``rml-1``/``rml-2`` wrappers are not required: any ``s<n>`` folder holding AVIs is a subject.
"""

import dataclasses
import os
import pathlib
import re

CODES = {'an': 'anger', 'di': 'disgust', 'fe': 'fear', 'ha': 'happiness', 'sa': 'sadness',
         'su': 'surprise'}
EMOTIONS = tuple(sorted(CODES.values()))
VIDEO_SUFFIXES = ('.avi',)

_SUBJECT_RE = re.compile(r'^s(\d+)$', re.IGNORECASE)

EXPECTED_LAYOUT = (
    "'rml-1/s1…s5/*.avi' and 'rml-2/s6…s8/*.avi' (anywhere below the manual dir; a language sub-folder "
    f'below s<n> is fine), file names starting with one of {", ".join(CODES)}')


@dataclasses.dataclass(frozen=True)
class Clip:
  """One usable RML video.

  Attributes:
    path: the AVI file.
    subject: the speaker number from the ``s<n>`` folder, e.g. ``'6'``.
    label: one of `EMOTIONS`, from the file name's first two letters.
    sequence_id: ``s<n>/<path below s<n>>`` with forward slashes; unique and independent of nesting.
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


def _holds_video(folder: pathlib.Path) -> bool:
  return any(_is_video(n) for _, _, names in os.walk(folder) for n in names)


def find_subject_dirs(manual_dir: os.PathLike | str, max_depth: int = 4) -> dict[str, pathlib.Path]:
  """``{subject: folder}`` for every ``s<n>`` folder holding AVIs, up to `max_depth` levels down.

  Raises:
    FileNotFoundError: the manual dir does not exist or holds no ``s<n>`` folder with videos.
    ValueError: the same speaker appears in two folders (two copies below the manual dir).
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
        match = _SUBJECT_RE.match(child.name)
        if match and _holds_video(child):
          subject = str(int(match.group(1)))
          if subject in found:
            raise ValueError(f'Speaker s{subject} appears twice: {found[subject]} and {child}. '
                             'Point --manual_dir at a single RML copy.')
          found[subject] = child
        else:
          next_frontier.append(child)
    frontier = next_frontier
  if not found:
    raise FileNotFoundError(
        f'No RML copy found. Expected {EXPECTED_LAYOUT}; {_describe(manual_dir)}.')
  return dict(sorted(found.items(), key=lambda kv: int(kv[0])))


def _describe(folder: pathlib.Path, limit: int = 12) -> str:
  names = sorted(p.name + ('/' if p.is_dir() else '') for p in folder.iterdir())
  if not names:
    return f'{folder} is empty'
  more = f' … ({len(names) - limit} more)' if len(names) > limit else ''
  return f'{folder} contains: {", ".join(names[:limit])}{more}'


def label_from_name(file_name: str) -> str | None:
  """The emotion for an RML file name (first two letters, any case), or None if they are no code."""
  return CODES.get(file_name[:2].lower())


def find_clips(manual_dir: os.PathLike | str) -> tuple[list[Clip], list[Excluded]]:
  """All usable clips below `manual_dir`, sorted by subject then path, and the videos left out."""
  clips, excluded = [], []
  for subject, subject_dir in find_subject_dirs(manual_dir).items():
    for dirpath, dirnames, filenames in os.walk(subject_dir):
      dirnames.sort()
      for name in sorted(filter(_is_video, filenames)):
        path = pathlib.Path(dirpath) / name
        sequence_id = f'{subject_dir.name}/{path.relative_to(subject_dir).as_posix()}'
        label = label_from_name(name)
        if label is None:
          excluded.append(Excluded(
              sequence_id, f"file name does not start with an emotion code {tuple(CODES)}"))
        else:
          clips.append(Clip(path, subject, label, sequence_id))
  return clips, excluded
