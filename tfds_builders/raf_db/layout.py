"""Finds and reads a user's copy of RAF-DB's basic emotion set (Li et al., CVPR 2017).

Expected layout (datasets.md), at any depth below the manual dir (the ``basic/`` level is often missing or
doubled)::

  EmoLabel/list_patition_label.txt     lines 'train_00001.jpg 5' / 'test_0001.jpg 1' (this spelling)
  Image/aligned/train_00001_aligned.jpg  (100x100 aligned faces)
  Image/original/train_00001.jpg         (uncropped)

Labels 1-7 = surprise, fear, disgust, happiness, sadness, anger, neutral. A line that cannot be used (not
two fields, a label outside 1-7, a name that is neither ``train_*`` nor ``test_*``, an image that is not
there) is returned as a :class:`Skipped` entry with its line number, never silently dropped.
"""

import dataclasses
import os
import pathlib
from collections.abc import Iterator

from tfds_builders import sequence_builder

LABEL_FILE = 'list_patition_label.txt'
# RAF-DB's label codes 1..7 -> the project's label names.
EMOTION_CODES = ('surprise', 'fear', 'disgust', 'happiness', 'sadness', 'anger', 'neutral')
EMOTIONS = tuple(sorted(EMOTION_CODES))
IMAGE_SETS = ('aligned', 'original')

EXPECTED_LAYOUT = f"""\
  EmoLabel/{LABEL_FILE}  (lines like 'train_00001.jpg 5'; often below a basic/ folder)
  Image/aligned/train_00001_aligned.jpg  (config 'aligned')
  Image/original/train_00001.jpg         (config 'original')
"""


@dataclasses.dataclass(frozen=True)
class Image:
  """One usable line of the label file."""
  sequence_id: str  # The file stem: 'train_00001'.
  split: str  # 'train' or 'test' (validation is carved out of train by the builder).
  label: str
  path: pathlib.Path
  line: int


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A line of the label file that cannot be used, and why."""
  sequence_id: str
  split: str | None
  path: str
  line: int
  reason: str


def _is_root(folder: pathlib.Path) -> bool:
  return (folder / 'EmoLabel' / LABEL_FILE).is_file()


def find_root(manual_dir: os.PathLike | str) -> pathlib.Path:
  """The folder holding ``EmoLabel/`` and ``Image/``, at any depth below ``manual_dir``.

  Raises:
    ManualDirError: no such folder (the message names the expected layout and what was found).
    BuildError: two copies.
  """
  roots = sequence_builder.find_dirs(manual_dir, _is_root)
  if not roots:
    raise sequence_builder.manual_dir_error('RAF-DB', manual_dir, EXPECTED_LAYOUT)
  if len(roots) > 1:
    raise sequence_builder.BuildError(
        f'raf_db: two copies of {LABEL_FILE}: {roots[0]} and {roots[1]}; point --manual_dir at one')
  return roots[0]


def image_path(root: pathlib.Path, image_set: str, name: str) -> pathlib.Path:
  """Where the label file's ``name`` lives in ``image_set``: aligned files carry an ``_aligned`` suffix."""
  stem, suffix = os.path.splitext(name)
  if image_set == 'aligned':
    return root / 'Image' / 'aligned' / f'{stem}_aligned{suffix}'
  return root / 'Image' / 'original' / name


def read_labels(root: pathlib.Path, image_set: str) -> Iterator[Image | Skipped]:
  """Every non-empty line of the label file, in order: an Image, or a Skipped with its line number."""
  if image_set not in IMAGE_SETS:
    raise ValueError(f'image_set must be one of {IMAGE_SETS}, got {image_set!r}')
  folder = root / 'Image' / image_set
  if not folder.is_dir():
    raise sequence_builder.manual_dir_error(
        'RAF-DB', root, EXPECTED_LAYOUT, problem=f'found {LABEL_FILE} but no Image/{image_set}/ folder')
  label_file = root / 'EmoLabel' / LABEL_FILE
  for line_number, text in enumerate(label_file.read_text(errors='replace').splitlines(), 1):
    fields = text.split()
    if not fields:
      continue
    name = fields[0]
    stem = os.path.splitext(name)[0]
    split = stem.split('_')[0] if stem.split('_')[0] in ('train', 'test') else None
    problem = ''
    if len(fields) != 2:
      problem = f'expected "<image> <label 1-7>", found {len(fields)} fields: {text.strip()!r}'
    elif split is None:
      problem = f'expected an image name starting train_ or test_, found {name!r}'
    elif fields[1] not in {str(i) for i in range(1, len(EMOTION_CODES) + 1)}:
      problem = f'expected a label 1-{len(EMOTION_CODES)}, found {fields[1]!r}'
    path = image_path(root, image_set, name)
    if not problem and not path.is_file():
      problem = f'listed, but {path} does not exist'
    if problem:
      yield Skipped(stem, split, str(label_file), line_number, problem)
    else:
      yield Image(stem, split, EMOTION_CODES[int(fields[1]) - 1], path, line_number)


def present_images(root: pathlib.Path, image_set: str) -> list[str]:
  """The image ids (label-file stems) present in ``Image/<image_set>/``."""
  folder = root / 'Image' / image_set
  stems = []
  for path in sorted(folder.iterdir()):
    if path.is_file() and not path.name.startswith('.'):
      stem = path.stem
      stems.append(stem[:-len('_aligned')] if stem.endswith('_aligned') else stem)
  return stems
