"""Finds and reads a user's copy of FER2013 (Goodfellow et al., 2013), in either published form.

1. The challenge file ``fer2013.csv`` (also shipped as ``icml_face_data.csv``), often inside
   ``fer2013.tar.gz`` -> ``fer2013/fer2013.csv``: a header ``emotion,pixels,Usage`` (any column order, spaces
   around names allowed), then one row per image: ``emotion`` 0-6 (angry, disgust, fear, happy, sad, surprise,
   neutral), ``pixels`` 2,304 space-separated grey values (48x48, row-major), ``Usage`` Training /
   PublicTest / PrivateTest -> splits ``train`` / ``validation`` / ``test``. Optionally FER+
   (Barsoum et al., 2016) ``fer2013new.csv`` anywhere below the manual dir: 10 vote counts per row, aligned
   row by row with ``fer2013.csv``.
2. The re-shared image-folder form ``train/<class>/*.jpg|png`` and ``test/<class>/...`` (class folders
   angry, disgust, fear, happy, neutral, sad, surprise). Its ``test/`` merges PublicTest and PrivateTest, so
   the official test split cannot be recovered (see ``find_copy``'s caller for the validation split).

Rows that cannot be used (a truncated row, a pixel string that is not 48*48 values in 0-255, an emotion
outside 0-6, an unknown Usage) are returned as :class:`Skipped` entries with their line number, never
silently dropped.
"""

import csv
import dataclasses
import os
import pathlib
import warnings
import zlib
from collections.abc import Iterator

import cv2
import numpy as np

from ferjax.data import media
from tfds_builders import sequence_builder

SIZE = 48
NUM_PIXELS = SIZE * SIZE
CSV_NAMES = ('fer2013.csv', 'icml_face_data.csv')
FERPLUS_NAME = 'fer2013new.csv'
ARCHIVE_NAMES = ('fer2013.tar.gz', 'fer2013.tgz', 'challenges-in-representation-learning-facial-'
                 'expression-recognition-challenge.zip')

# FER2013's emotion codes -> the project's label names (lower-case, DESIGN.md).
EMOTION_CODES = ('anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise', 'neutral')
EMOTIONS = tuple(sorted(EMOTION_CODES))
# Image-folder class names (any case) -> label names.
CLASS_FOLDERS = {'angry': 'anger', 'disgust': 'disgust', 'fear': 'fear', 'happy': 'happiness',
                 'neutral': 'neutral', 'sad': 'sadness', 'surprise': 'surprise'}
USAGE_SPLITS = {'Training': 'train', 'PublicTest': 'validation', 'PrivateTest': 'test'}
CSV_COLUMNS = ('emotion', 'pixels', 'Usage')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')

# FER+ vote columns, in fer2013new.csv's order, and the 8 emotions it gives (in the project's names).
FERPLUS_COLUMNS = ('neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear', 'contempt',
                   'unknown', 'NF')
FERPLUS_EMOTIONS = tuple(sorted(FERPLUS_COLUMNS[:8]))

EXPECTED_LAYOUT = """\
  fer2013.csv (columns emotion, pixels, Usage; e.g. fer2013/fer2013.csv from fer2013.tar.gz),
    optionally fer2013new.csv (FER+) below the same manual dir
  OR the image-folder form: train/<class>/*.jpg|png and test/<class>/*.jpg|png
    <class>: angry, disgust, fear, happy, neutral, sad, surprise
"""


@dataclasses.dataclass(frozen=True)
class Image:
  """One usable image: ``pixels`` uint8 [48, 48] grey; ``line`` is its CSV line (0 for an image file)."""
  sequence_id: str
  split: str
  label: str
  pixels: np.ndarray
  path: str
  line: int = 0


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A row or file that cannot be used, with where it is and why."""
  sequence_id: str
  split: str | None
  path: str
  line: int
  reason: str


@dataclasses.dataclass(frozen=True)
class Copy:
  """What ``find_copy`` found: the CSV form (``csv`` set, maybe ``ferplus``) or the folder form."""
  csv: pathlib.Path | None = None
  ferplus: pathlib.Path | None = None
  train_dir: pathlib.Path | None = None
  test_dir: pathlib.Path | None = None

  @property
  def form(self) -> str:
    return 'csv' if self.csv else 'folders'


def _files_named(root: pathlib.Path, names: tuple[str, ...], max_depth: int = 6) -> list[pathlib.Path]:
  """Files at most ``max_depth`` folders below ``root`` whose name is one of ``names`` (any case)."""
  wanted = {n.lower() for n in names}
  found, level = [], [root]
  for _ in range(max_depth + 1):
    next_level = []
    for folder in level:
      try:
        entries = sorted(folder.iterdir())
      except OSError:
        continue
      for p in entries:
        if media.is_hidden(p.name):
          continue
        if p.is_dir():
          next_level.append(p)
        elif p.name.lower() in wanted:
          found.append(p)
    level = next_level
  return found


def _class_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in sequence_builder.subdirs(folder) if p.name.lower() in CLASS_FOLDERS]


def _split_dirs(root: pathlib.Path, name: str) -> list[pathlib.Path]:
  return sequence_builder.find_dirs(
      root, lambda p: p.name.lower() == name and bool(_class_dirs(p)))


def find_copy(manual_dir: os.PathLike | str) -> Copy:
  """The FER2013 copy below ``manual_dir``, in one of the two forms.

  Raises:
    ManualDirError: neither form is found (the message shows both layouts and what is there; it says to
      unpack an archive when only the archive is there), or only one of train/ and test/.
    BuildError: both forms are present, or one of them twice (which one to build is ambiguous).
  """
  root = pathlib.Path(manual_dir)
  csvs = _files_named(root, CSV_NAMES)
  ferplus = _files_named(root, (FERPLUS_NAME,))
  trains, tests = _split_dirs(root, 'train'), _split_dirs(root, 'test')
  if csvs and (trains or tests):
    raise sequence_builder.BuildError(
        f'fer2013: found both forms of FER2013 under {root}: {csvs[0]} and the image folders '
        f'{(trains or tests)[0]}; point --manual_dir at a folder holding only one of them')
  if len(csvs) > 1:
    raise sequence_builder.BuildError(
        f'fer2013: found {len(csvs)} FER2013 CSV files under {root} ({", ".join(map(str, csvs))}); '
        'point --manual_dir at a folder holding one')
  if len(ferplus) > 1:
    raise sequence_builder.BuildError(
        f'fer2013: found {len(ferplus)} {FERPLUS_NAME} files under {root} '
        f'({", ".join(map(str, ferplus))}); keep one')
  if csvs:
    return Copy(csv=csvs[0], ferplus=ferplus[0] if ferplus else None)
  for name, found in (('train', trains), ('test', tests)):
    if len(found) > 1:
      raise sequence_builder.BuildError(
          f'fer2013: found {len(found)} {name}/ folders with class folders under {root} '
          f'({", ".join(map(str, found))}); point --manual_dir at one copy')
  if trains and tests:
    return Copy(train_dir=trains[0], test_dir=tests[0])
  archives = _files_named(root, ARCHIVE_NAMES)
  if archives:
    problem = f'found the archive {archives[0]} but no fer2013.csv: unpack it first'
  elif trains or tests:
    problem = (f'found {(trains or tests)[0]} but no {"test" if trains else "train"}/ folder '
               'with class folders')
  else:
    problem = 'found no FER2013 data'
  raise sequence_builder.manual_dir_error('fer2013', root, EXPECTED_LAYOUT, problem=problem)


# ----------------------------------------------------------------------------------------------------------
# The CSV form.


def image_id(row: int) -> str:
  """The sequence id of data row ``row`` (0-based) of fer2013.csv: FER+'s image name without '.png'."""
  return f'fer{row:07d}'


def _columns(header: list[str], path: pathlib.Path, expected: tuple[str, ...]) -> dict[str, int]:
  names = [h.strip() for h in header]
  missing = [c for c in expected if c not in names]
  if missing:
    raise sequence_builder.BuildError(
        f'fer2013: {path} lacks the column(s) {missing}: expected a header with {list(expected)}, '
        f'found {names}')
  return {c: names.index(c) for c in expected}


def _parse_pixels(text: str) -> np.ndarray:
  """'0 255 ...' -> uint8 [48, 48]; ValueError naming what was found."""
  try:
    with warnings.catch_warnings():  # An empty string warns "input contained no data".
      warnings.simplefilter('ignore', UserWarning)
      pixels = np.loadtxt([text], dtype=np.int64, ndmin=1)  # ~5x faster than int() per value
  except ValueError:
    bad = next((v for v in text.split() if not v.lstrip('-').isdigit()), text[:20])
    raise ValueError(f'expected integer pixel values, found {bad!r}') from None
  if pixels.size != NUM_PIXELS:
    raise ValueError(f'expected {NUM_PIXELS} pixel values ({SIZE}x{SIZE}), found {pixels.size}')
  outside = np.flatnonzero((pixels < 0) | (pixels > 255))
  if outside.size:
    raise ValueError(f'expected pixel values in 0-255, found {pixels[outside[0]]} '
                     f'(value {outside[0] + 1})')
  return pixels.astype(np.uint8).reshape(SIZE, SIZE)


def read_csv(path: os.PathLike | str) -> Iterator[Image | Skipped]:
  """Every data row of fer2013.csv, in file order: an Image, or a Skipped with its line number.

  Raises:
    BuildError: the file has no header or lacks one of the columns emotion, pixels, Usage.
  """
  path = pathlib.Path(path)
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise sequence_builder.BuildError(f'fer2013: {path} is empty; expected a header {CSV_COLUMNS}')
    columns = _columns(header, path, CSV_COLUMNS)
    for row_index, row in enumerate(reader):
      line, sequence_id = reader.line_num, image_id(row_index)
      split = None
      try:
        if len(row) != len(header):
          raise ValueError(f'expected {len(header)} fields ({", ".join(h.strip() for h in header)}), '
                           f'found {len(row)} (a truncated row?)')
        usage = row[columns['Usage']].strip()
        split = USAGE_SPLITS.get(usage)
        if split is None:
          raise ValueError(f'expected Usage in {list(USAGE_SPLITS)}, found {usage!r}')
        code = row[columns['emotion']].strip()
        if code not in {str(i) for i in range(len(EMOTION_CODES))}:
          raise ValueError(f'expected emotion 0-{len(EMOTION_CODES) - 1}, found {code!r}')
        pixels = _parse_pixels(row[columns['pixels']])
      except ValueError as e:
        yield Skipped(sequence_id, split, str(path), line, str(e))
        continue
      yield Image(sequence_id, split, EMOTION_CODES[int(code)], pixels, str(path), line)


def ferplus_label(votes: np.ndarray) -> tuple[str | None, str]:
  """FER+ majority label of one row's 10 vote counts, as the FER+ reference code's 'majority' mode.

  Following ``FERPlusReader._process_data`` / ``load_folders`` of github.com/microsoft/FERPlus
  (src/ferplus.py): counts of one vote are removed as outliers; the emotion with more than half of the
  remaining votes is the label; otherwise (no strict majority, so ties are never resolved), or when the
  majority is ``unknown`` or ``NF`` (not a face), the row is excluded.

  Returns:
    (label, '') or (None, why it is excluded).
  """
  votes = np.where(np.asarray(votes, np.float64) <= 1, 0.0, votes)
  top = int(np.argmax(votes))
  if not votes[top] > 0.5 * votes.sum():
    return None, 'FER+: no emotion has a majority of the votes (single votes removed)'
  if top >= 8:
    return None, f'FER+: the majority vote is {FERPLUS_COLUMNS[top]!r}' + (
        ' (not a face)' if FERPLUS_COLUMNS[top] == 'NF' else '')
  return FERPLUS_COLUMNS[top], ''


def read_ferplus(path: os.PathLike | str) -> list[tuple[int, np.ndarray | None, str]]:
  """fer2013new.csv -> one (line, votes int64 [10] or None, problem) per data row, in file order.

  Raises:
    BuildError: the header lacks a vote column.
  """
  path = pathlib.Path(path)
  out = []
  with open(path, newline='') as f:
    reader = csv.reader(f)
    header = next(reader, None) or []
    columns = _columns(header, path, FERPLUS_COLUMNS)
    for row in reader:
      try:
        votes = np.array([int(float(row[columns[c]])) for c in FERPLUS_COLUMNS], np.int64)
        out.append((reader.line_num, votes, ''))
      except (ValueError, IndexError):
        out.append((reader.line_num, None, f'FER+: unreadable vote counts in line {reader.line_num} '
                                           f'of {path}'))
  return out


# ----------------------------------------------------------------------------------------------------------
# The image-folder form.


def _is_image(path: pathlib.Path) -> bool:
  return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not media.is_hidden(path.name)


def validation_rank(name: str) -> tuple[int, str]:
  """Sort key of a train file for the held-out validation share: CRC-32 of its name, then the name.

  Stable across machines and file-system orders, and unrelated to the file's class or numbering.
  """
  return zlib.crc32(name.encode()), name


def read_folders(copy: Copy, validation_every: int) -> Iterator[Image | Skipped]:
  """Every image file of the folder form; ``validation_every`` = k puts every k-th train image of each
  class (ordered by :func:`validation_rank`) into ``validation`` (0: none).

  Files are read as grey; a file that cannot be decoded, or is not 48x48, is Skipped with the reason.
  """
  for split_name, folder in (('train', copy.train_dir), ('test', copy.test_dir)):
    for class_dir in _class_dirs(folder):
      label = CLASS_FOLDERS[class_dir.name.lower()]
      files = sorted((p for p in class_dir.iterdir() if _is_image(p)),
                     key=lambda p: validation_rank(p.name))
      for i, path in enumerate(files):
        split = split_name
        if split_name == 'train' and validation_every and i % validation_every == validation_every - 1:
          split = 'validation'
        sequence_id = f'{folder.name}/{class_dir.name}/{path.name}'
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
          yield Skipped(sequence_id, split, str(path), 0, 'OpenCV could not decode the image')
        elif grey.shape != (SIZE, SIZE):
          yield Skipped(sequence_id, split, str(path), 0,
                        f'expected a {SIZE}x{SIZE} image, found {grey.shape[1]}x{grey.shape[0]}')
        else:
          yield Image(sequence_id, split, label, grey, str(path))


def encode_png(pixels: np.ndarray) -> bytes:
  """uint8 [48, 48] grey -> PNG bytes (lossless: the stored image is exactly the CSV's pixels)."""
  ok, buf = cv2.imencode('.png', pixels)
  if not ok:
    raise ValueError(f'OpenCV could not PNG-encode an image of shape {pixels.shape}')
  return buf.tobytes()
