"""Finds and reads a user's copy of DFEW (Jiang et al., ACM MM 2020).

Expected layout (datasets.md), at any depth below the manual dir::

  Clip/clip_224x224/<5-digit id>/<id>_<frame>.jpg        all frames, aligned 224x224 faces
  Clip/clip_224x224_16f/<5-digit id>/<id>_<frame>.jpg    each clip time-interpolated to 16 frames
  EmoLabel_DataSplit/train(single-labeled)/set_1.csv ... set_5.csv
  EmoLabel_DataSplit/test(single-labeled)/set_1.csv ... set_5.csv

The CSVs have a header ``video_name,label``; ``video_name`` is an integer (zero-padded to 5 digits to name
the folder) and ``label`` 1-7 = happy, sad, neutral, angry, surprise, disgust, fear. Mirrors rename the files
(``train_set_1.csv``, or ``label/single_trainset_1.csv`` as the official code repository has them) or
make the labels 0-based (0-6); all are accepted (0-based when some label is 0 and
none is 7, recorded as ``label_base`` in the metadata).
"""

import csv
import dataclasses
import os
import pathlib
import re

from ferjax.data import media
from tfds_builders import sequence_builder

# DFEW's label codes 1..7 -> the project's label names.
EMOTION_CODES = ('happiness', 'sadness', 'neutral', 'anger', 'surprise', 'disgust', 'fear')
EMOTIONS = tuple(sorted(EMOTION_CODES))
FRAME_SETS = ('clip_224x224', 'clip_224x224_16f')
NUM_FOLDS = 5
_SET_FILE = re.compile(r'.*set_?(\d)\.csv', re.IGNORECASE)
_FRAME = re.compile(r'(?:\d+_)?(\d+)\.jpe?g', re.IGNORECASE)

EXPECTED_LAYOUT = """\
  Clip/clip_224x224/<5-digit id>/<id>_<frame>.jpg  (config clip_224x224)
  Clip/clip_224x224_16f/<5-digit id>/...           (config clip_224x224_16f)
  EmoLabel_DataSplit/train(single-labeled)/set_1.csv ... set_5.csv  (header video_name,label)
  EmoLabel_DataSplit/test(single-labeled)/set_1.csv ... set_5.csv
"""


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a split CSV."""
  clip_id: str  # Zero-padded to 5 digits: the frame folder's name.
  code: int  # The label as written.
  path: str
  line: int


@dataclasses.dataclass(frozen=True)
class BadRow:
  path: str
  line: int
  reason: str


def _kind_and_set(path: pathlib.Path) -> tuple[str, int] | None:
  """('train' | 'test', set number) of a split CSV, from its name or its folder's name."""
  match = _SET_FILE.fullmatch(path.name)
  if not match:
    return None
  for text in (path.name.lower(), path.parent.name.lower()):
    for kind in ('train', 'test'):
      if kind in text:
        return kind, int(match.group(1))
  return None


def find_split_files(manual_dir: os.PathLike | str) -> dict[str, dict[int, pathlib.Path]]:
  """``{'train': {1: set_1.csv, ...}, 'test': {...}}``: the single-labelled split CSVs below
  ``EmoLabel_DataSplit`` (``train(single-labeled)/set_1.csv``), or named like the official repository's
  ``label/single_trainset_1.csv``.

  Raises:
    ManualDirError: some set file is not found.
    BuildError: a set file is found twice.
  """
  roots = sequence_builder.find_dirs(
      manual_dir, sequence_builder.name_matches('EmoLabel_DataSplit', 'label')) or [pathlib.Path(manual_dir)]
  files: dict[str, dict[int, pathlib.Path]] = {'train': {}, 'test': {}}
  for root in roots:
    for path in sorted(root.rglob('*.csv')):
      found = _kind_and_set(path)
      if found is None or any('multi' in part.lower() for part in path.relative_to(root).parts):
        continue
      kind, number = found
      if number in files[kind]:
        raise sequence_builder.BuildError(
            f'dfew: two {kind} files for set {number}: {files[kind][number]} and {path}')
      files[kind][number] = path
  if not any(files.values()):
    raise sequence_builder.manual_dir_error('DFEW', manual_dir, EXPECTED_LAYOUT,
                                            problem='found no DFEW split file (EmoLabel_DataSplit/)')
  for kind, found in files.items():
    if sorted(found) != list(range(1, NUM_FOLDS + 1)):
      raise sequence_builder.manual_dir_error(
          'DFEW', manual_dir, EXPECTED_LAYOUT,
          problem=f'expected {kind}(single-labeled)/set_1.csv ... set_5.csv, found {kind} sets '
                  f'{sorted(found)}')
  return files


def read_split_file(path: pathlib.Path) -> tuple[list[Row], list[BadRow]]:
  """Rows of one split CSV (header ``video_name,label``) and the lines that cannot be read."""
  rows, bad = [], []
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = [h.strip().lower() for h in next(reader, [])]
    if header[:2] != ['video_name', 'label']:
      raise sequence_builder.BuildError(
          f'dfew: {path} should start with the header video_name,label; found {",".join(header)!r}')
    for fields in reader:
      if not any(f.strip() for f in fields):
        continue
      try:
        clip, code = fields[0].strip(), int(float(fields[1]))
        clip_id = f'{int(clip):05d}'
      except (ValueError, IndexError):
        bad.append(BadRow(str(path), reader.line_num, f'expected "<video number>,<label>", found '
                                                      f'{",".join(fields)!r}'))
        continue
      rows.append(Row(clip_id, code, str(path), reader.line_num))
  return rows, bad


def find_frame_root(manual_dir: os.PathLike | str, frame_set: str) -> pathlib.Path:
  """The ``clip_224x224`` (or ``_16f``) folder holding the per-clip frame folders."""
  # The folder holding numbered clip folders (unpacking sometimes doubles the level).
  named = sequence_builder.name_matches(re.escape(frame_set))
  clips = sequence_builder.has_subdirs(r'\d+')
  roots = sequence_builder.find_dirs(manual_dir, lambda p: named(p) and clips(p))
  if not roots:
    raise sequence_builder.manual_dir_error(
        'DFEW', manual_dir, EXPECTED_LAYOUT, problem=f'found no Clip/{frame_set}/ folder')
  if len(roots) > 1:
    raise sequence_builder.BuildError(f'dfew: two {frame_set} folders: {roots[0]} and {roots[1]}')
  return roots[0]


def clip_frames(folder: pathlib.Path) -> tuple[list[pathlib.Path], list[int]]:
  """The JPEG frames of one clip folder in frame-number order, and their frame numbers."""
  numbered = []
  for path in media.list_files(folder, ('.jpg', '.jpeg')):
    match = _FRAME.fullmatch(path.name)
    numbered.append((int(match.group(1)) if match else -1, path.name, path))
  numbered.sort()
  return [p for _, _, p in numbered], [n for n, _, _ in numbered]
