"""Finds RML (Ryerson Multimedia Lab) clips in a user's copy.

Expected layout (datasets.md), possibly nested below the manual dir::

  rml-1/s1 … s5/[<language>/]<code>….avi
  rml-2/s6 … s8/[<language>/]<code>….avi

The subject is the ``s<n>`` folder; some speakers have an extra language sub-folder, so videos at any depth
below ``s<n>`` count. The label is the first two letters of the file name (``an di fe ha sa su``, any case);
the rest of the file name is not relied on. A video whose name does not start with one of those codes is
excluded and reported. The ``rml-1``/``rml-2`` wrappers are not required: any ``s<n>`` folder that holds
videos is a speaker.
"""

import dataclasses
import os
import pathlib
import re

from ferjax.data import media
from tfds_builders import sequence_builder

CODES = {'an': 'anger', 'di': 'disgust', 'fe': 'fear', 'ha': 'happiness', 'sa': 'sadness',
         'su': 'surprise'}
EMOTIONS = tuple(sorted(CODES.values()))

_SUBJECT_RE = re.compile(r's(\d+)', re.IGNORECASE)

EXPECTED_LAYOUT = f"""\
  rml-1/s1 ... s5/*.avi and rml-2/s6 ... s8/*.avi  (a language sub-folder below s<n> is fine)
    e.g. rml-2/s6/<language>/an1.avi
    file names start with an emotion code: {', '.join(CODES)}
"""


@dataclasses.dataclass(frozen=True)
class Clip:
  """One usable RML video.

  Attributes:
    path: the video file.
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
  return name.lower().endswith(media.VIDEO_EXTENSIONS) and not media.is_hidden(name)


def _walk_videos(folder: pathlib.Path):
  """Video files at any depth below `folder`, in a deterministic order; hidden folders skipped."""
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not media.is_hidden(d))
    for name in sorted(filter(_is_video, filenames)):
      yield pathlib.Path(dirpath) / name


def _is_speaker_dir(folder: pathlib.Path) -> bool:
  return bool(_SUBJECT_RE.fullmatch(folder.name)) and next(_walk_videos(folder), None) is not None


def find_subject_dirs(manual_dir: os.PathLike | str) -> dict[str, pathlib.Path]:
  """``{subject: folder}`` for every ``s<n>`` folder below `manual_dir` that holds videos, by number.

  Raises:
    ManualDirError: no such folder (the message names the expected layout and what was found).
    BuildError: the same speaker appears in two folders (two copies below the manual dir).
  """
  found: dict[str, pathlib.Path] = {}
  for folder in sequence_builder.find_dirs(manual_dir, _is_speaker_dir):
    subject = str(int(_SUBJECT_RE.fullmatch(folder.name).group(1)))
    if subject in found:
      raise sequence_builder.BuildError(f'Speaker s{subject} appears twice: {found[subject]} and {folder}. '
                       'Point --manual_dir at a single RML copy.')
    found[subject] = folder
  if not found:
    raise sequence_builder.manual_dir_error('RML', manual_dir, EXPECTED_LAYOUT)
  return dict(sorted(found.items(), key=lambda kv: int(kv[0])))


def label_from_name(file_name: str) -> str | None:
  """The emotion of an RML file name (its first two letters, any case), or None if they are no code."""
  return CODES.get(file_name[:2].lower())


def find_clips(manual_dir: os.PathLike | str) -> tuple[list[Clip], list[Excluded]]:
  """All usable clips below `manual_dir`, by speaker then path, and the videos left out with reasons."""
  clips, excluded = [], []
  for subject, subject_dir in find_subject_dirs(manual_dir).items():
    for path in _walk_videos(subject_dir):
      sequence_id = f'{subject_dir.name}/{path.relative_to(subject_dir).as_posix()}'
      label = label_from_name(path.name)
      if label is None:
        excluded.append(Excluded(
            sequence_id, f'file name does not start with an emotion code {tuple(CODES)}'))
      else:
        clips.append(Clip(path, subject, label, sequence_id))
  return clips, excluded
