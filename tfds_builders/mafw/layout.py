"""Finds and reads a user's copy of MAFW (Liu et al., ACM MM 2022), single-label set.

Expected layout (datasets.md), at any depth below the manual dir::

  data/clips/<clip>.mp4                 the videos (config 'clips')
  data/frames/<clip>/<frame>.jpg|png    the extracted frames (config 'frames')
  Train & Test Set/single/no_caption/set_1 ... set_5/{train,test}.txt   lines '03747.mp4 anger'

11 classes, named in the split files as the project names them: anger, disgust, fear, happiness, neutral,
sadness, surprise, contempt, anxiety, helplessness, disappointment. A line that cannot be used (not two
fields, an unknown class) is returned as a :class:`BadLine` with its number.
"""

import dataclasses
import os
import pathlib
import re

from ferjax.data import media
from tfds_builders import sequence_builder

EMOTIONS = tuple(sorted(('anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise',
                         'contempt', 'anxiety', 'helplessness', 'disappointment')))
NUM_FOLDS = 5
SOURCES = ('frames', 'clips')

EXPECTED_LAYOUT = """\
  data/frames/<clip>/*.jpg (config 'frames') or data/clips/<clip>.mp4 (config 'clips')
  Train & Test Set/single/no_caption/set_1 ... set_5/train.txt and test.txt  (lines '03747.mp4 anger')
"""


@dataclasses.dataclass(frozen=True)
class Line:
  clip_id: str  # The file stem: '03747'.
  label: str
  path: str
  line: int


@dataclasses.dataclass(frozen=True)
class BadLine:
  path: str
  line: int
  reason: str


def _is_split_root(folder: pathlib.Path) -> bool:
  return all((folder / f'set_{k}' / 'test.txt').is_file() for k in range(1, NUM_FOLDS + 1))


def find_split_root(manual_dir: os.PathLike | str) -> pathlib.Path:
  """The folder holding ``set_1 .. set_5`` of the single-label, no-caption split (``no_caption`` is
  preferred where several such folders exist, e.g. ``with_caption``)."""
  roots = sequence_builder.find_dirs(manual_dir, _is_split_root, max_depth=8)
  plain = [r for r in roots if r.name.lower() == 'no_caption'] or roots
  if not plain:
    raise sequence_builder.manual_dir_error('MAFW', manual_dir, EXPECTED_LAYOUT,
                                            problem='found no single/no_caption/set_1 ... set_5 split')
  if len(plain) > 1:
    raise sequence_builder.BuildError(f'mafw: two split folders: {plain[0]} and {plain[1]}')
  return plain[0]


def read_split_file(path: pathlib.Path) -> tuple[list[Line], list[BadLine]]:
  lines, bad = [], []
  for number, text in enumerate(path.read_text(errors='replace').splitlines(), 1):
    fields = text.split()
    if not fields:
      continue
    if len(fields) != 2 or fields[1].lower() not in EMOTIONS:
      bad.append(BadLine(str(path), number, f'expected "<clip>.mp4 <class>" with a class among '
                                            f'{EMOTIONS}, found {text.strip()!r}'))
      continue
    lines.append(Line(os.path.splitext(fields[0])[0], fields[1].lower(), str(path), number))
  return lines, bad


def find_media(manual_dir: os.PathLike | str, source: str) -> dict[str, pathlib.Path]:
  """clip id -> its frame folder (``source='frames'``) or video file (``'clips'``)."""
  if source not in SOURCES:
    raise sequence_builder.BuildError(f'mafw: source must be one of {SOURCES}, got {source!r}')
  roots = sequence_builder.find_dirs(manual_dir, sequence_builder.name_matches(source))
  if not roots:
    raise sequence_builder.manual_dir_error('MAFW', manual_dir, EXPECTED_LAYOUT,
                                            problem=f'found no data/{source}/ folder')
  if len(roots) > 1:
    raise sequence_builder.BuildError(f'mafw: two {source} folders: {roots[0]} and {roots[1]}')
  if source == 'frames':
    return {p.name: p for p in sequence_builder.subdirs(roots[0])}
  return {p.stem: p for p in media.list_files(roots[0], media.VIDEO_EXTENSIONS)}


def frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """A frame folder's images in natural order of their names (frame_2 before frame_10)."""
  key = lambda p: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', p.name)]
  return sorted(media.list_images(folder), key=key)
