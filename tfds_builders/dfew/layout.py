"""Finds and reads a user's copy of DFEW (Jiang et al., ACM MM 2020).

Expected layout (datasets.md), at any depth below the manual dir::

  Clip/clip_224x224/<5-digit id>/<id>_<frame>.jpg        all frames, aligned 224x224 faces
  Clip/clip_224x224_16f/<5-digit id>/<id>_<frame>.jpg    each clip time-interpolated to 16 frames
  EmoLabel_DataSplit/train(single-labeled)/set_1.csv ... set_5.csv
  EmoLabel_DataSplit/test(single-labeled)/set_1.csv ... set_5.csv

The CSVs have a header ``video_name,label``; ``video_name`` is an integer (zero-padded to 5 digits to name
the folder) and ``label`` 1-7 = happy, sad, neutral, angry, surprise, disgust, fear. Mirrors rename the files
(``train_set_1.csv``) or make the labels 0-based (0-6); both are accepted (0-based when some label is 0 and
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
_SET_FILE = re.compile(r'(?:.*_)?set_?(\d)\.csv', re.IGNORECASE)
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


def _split_dir(kind: str):
  return sequence_builder.name_matches(rf'{kind}.*single.*', rf'{kind}')


def find_split_files(manual_dir: os.PathLike | str) -> dict[str, dict[int, pathlib.Path]]:
  """``{'train': {1: set_1.csv, ...}, 'test': {...}}`` below ``EmoLabel_DataSplit`` (or any folder holding
  the two split folders).

  Raises:
    ManualDirError: the split folders or some set file are not found.
  """
  roots = sequence_builder.find_dirs(manual_dir, sequence_builder.name_matches('EmoLabel_DataSplit'))
  if not roots:
    raise sequence_builder.manual_dir_error('DFEW', manual_dir, EXPECTED_LAYOUT,
                                            problem='found no EmoLabel_DataSplit/ folder')
  if len(roots) > 1:
    raise sequence_builder.BuildError(f'dfew: two EmoLabel_DataSplit folders: {roots[0]} and {roots[1]}')
  files = {}
  for kind in ('train', 'test'):
    folders = [p for p in sequence_builder.subdirs(roots[0]) if _split_dir(kind)(p)]
    found = {}
    for folder in folders[:1]:
      for path in sorted(folder.iterdir()):
        match = _SET_FILE.fullmatch(path.name)
        if match and path.is_file():
          found[int(match.group(1))] = path
    if sorted(found) != list(range(1, NUM_FOLDS + 1)):
      raise sequence_builder.manual_dir_error(
          'DFEW', manual_dir, EXPECTED_LAYOUT,
          problem=f'expected {kind}(single-labeled)/set_1.csv ... set_5.csv in {roots[0]}, found sets '
                  f'{sorted(found)} in {[str(f) for f in folders] or "no such folder"}')
    files[kind] = found
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
  roots = sequence_builder.find_dirs(manual_dir, sequence_builder.name_matches(re.escape(frame_set)))
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
