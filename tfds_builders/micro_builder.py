"""What the micro-expression builders share: CASME II, SAMM, SMIC-HS and the MEGC2019 composite.

* Coding sheets (:func:`read_sheet`): ``.xlsx`` (openpyxl), the same table exported as ``.csv``, or
  CASME II's older ``.xls`` (needs ``xlrd``, not a dependency: save it as ``.xlsx`` or ``.csv``). The header
  row is found by its column names wherever it is (SAMM's sheet has title rows above it); column names are
  compared without case, spaces or punctuation (``OnsetFrame`` = ``Onset Frame``). Rows keep the number the
  spreadsheet shows (the header of a sheet that starts with it is row 1), so a skipped row can be found.
* One clip (:class:`Clip`): the frames from onset to offset of one sample, with ``onset``, ``apex`` and
  ``offset`` as indices into them. :func:`annotated_clip` checks a sheet row against the frame files on
  disk (file names carry the frame numbers the sheet uses) and returns the reason when the row cannot be
  used: no frame folder or no frames in it, an onset / apex / offset that is not a frame number (CASME II
  writes ``/`` for an unknown apex), not in order, or a frame the folder lacks. Frames missing between
  onset and offset do not skip a clip: ``frame_indices`` (frame number - onset frame number) shows the gap.
  :func:`whole_clip` takes a folder that holds exactly one sample (SMIC-HS: no onset / apex / offset in
  the release), onset = first frame, offset = last, and the apex a stand-in at ``apex_position`` of the
  clip (0.5: the middle frame; the builder configs' field).
* :class:`MicroBuilder`: the features (those of the sequence builders plus ``onset``, ``apex``, ``offset``,
  ``action_units``, ``emotion`` = the dataset's own label, ``source_dataset``), one split per subject
  (``subject_<id>``: leave-one-subject-out, ``ferjax.data.protocols``), released face crops stored as
  released (centred square, resized; ``face_detector='none'``), raw frames face-cropped with the config's
  detector (one box per clip), and the rows skipped with their row number and reason in
  ``info.metadata['skipped']``.

The ``onset_apex_flow`` model input (``ferjax.data.micro_flow``) reads ``frames``, ``onset`` and ``apex`` of
these records, as it does the built-in ``synthetic_expressions/micro``.
"""

import csv
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ferjax.data import media
from tfds_builders import sequence_builder as sb

DATASETS = ('casme2', 'samm', 'smic')
SHEET_SUFFIXES = ('.xlsx', '.csv', '.xls')


class SheetError(ValueError):
  """A coding sheet that cannot be read as the expected table."""


def column_key(name: Any) -> str:
  """'Onset Frame' -> 'onsetframe': how column names are compared."""
  return re.sub(r'[^a-z0-9]', '', str(name or '').lower())


def cell_text(value: Any) -> str:
  """A cell as text: 46.0 -> '46', None -> '', text stripped."""
  if value is None:
    return ''
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def _raw_rows(path: Path) -> list[list[list[Any]]]:
  """The cells of every sheet of the file (a CSV has one), row by row."""
  suffix = path.suffix.lower()
  if suffix == '.csv':
    with open(path, newline='', encoding='utf-8-sig', errors='replace') as f:
      return [list(csv.reader(f))]
  if suffix == '.xlsx':
    import openpyxl  # pylint: disable=import-outside-toplevel
    try:
      book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises zipfile, KeyError and its own errors for a damaged file.
      raise SheetError(f'{path}: not a readable .xlsx file ({type(e).__name__}: {e})') from e
    try:
      return [[list(row) for row in sheet.iter_rows(values_only=True)] for sheet in book.worksheets]
    finally:
      book.close()
  if suffix == '.xls':
    try:
      import xlrd  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise SheetError(f'{path}: reading .xls needs the xlrd package (pip install xlrd); or save the sheet '
                       'as .xlsx or .csv next to it') from e
    book = xlrd.open_workbook(str(path))
    return [[sheet.row_values(i) for i in range(sheet.nrows)] for sheet in book.sheets()]
  raise SheetError(f'{path}: expected a {", ".join(SHEET_SUFFIXES)} coding sheet')


def read_sheet(path: str | Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
  """(row number, {column key: cell text}) of every non-empty row below the header of the first sheet that
  has all ``required`` columns (compared with :func:`column_key`).

  Raises:
    SheetError: no sheet has such a header row (the message shows the first rows found).
  """
  path = Path(path)
  wanted = [column_key(c) for c in required]
  sheets = _raw_rows(path)
  for rows in sheets:
    for i, row in enumerate(rows[:50]):
      header = [column_key(c) for c in row]
      if all(w in header for w in wanted):
        out = []
        for number, cells in enumerate(rows[i + 1:], i + 2):
          texts = [cell_text(c) for c in cells]
          if any(texts):
            out.append((number, {h: t for h, t in zip(header, texts) if h}))
        return out
  first = [[cell_text(c) for c in row][:8] for row in (sheets[0][:3] if sheets else [])]
  raise SheetError(f'{path}: found no header row with the columns {list(required)}; its first rows are '
                   f'{first}')


def frame_files(folder: Path) -> dict[int, Path]:
  """Frame number -> image file of a clip folder; the number is the last digits of the file name
  (``img46.jpg``, ``reg_img46.jpg``, ``006_05562.jpg``, ``reg_image012345.bmp``)."""
  out = {}
  for path in media.list_images(folder):
    match = re.search(r'(\d+)$', path.stem)
    if match:
      out[int(match.group(1))] = path
  return out


@dataclasses.dataclass(frozen=True)
class Clip:
  """One sample: frames from onset to offset and its annotation.

  Attributes:
    dataset: 'casme2', 'samm' or 'smic'.
    subject: the dataset's subject id as the composite's list writes it ('sub01', '006', 's01').
    sample: the sample name as the list writes it ('EP02_01f', '006_1_2', 's01_ne_01').
    emotion: the dataset's own label, lower case ('repression', 'anger', 'negative').
    action_units: the sheet's action units as written ('' where the dataset has none).
    frames: image files from onset to offset, in order.
    numbers: their frame numbers.
    onset, apex, offset: indices into ``frames``.
    cropped: the frames are a released face crop (stored as released, not detected).
    row: the sheet row (None for datasets without a sheet).
  """
  dataset: str
  subject: str
  sample: str
  emotion: str
  action_units: str
  frames: tuple[Path, ...]
  numbers: tuple[int, ...]
  onset: int
  apex: int
  offset: int
  cropped: bool
  row: int | None = None

  @property
  def key(self) -> str:
    """Unique within a dataset: CASME II repeats file names across subjects."""
    return f'{self.subject}/{self.sample}' if self.dataset == 'casme2' else self.sample


@dataclasses.dataclass(frozen=True)
class Skip:
  """A sample that cannot be used, and why."""
  sequence_id: str
  path: str
  reason: str
  row: int | None = None


def _frame_number(text: str) -> int | None:
  try:
    value = float(text)
  except ValueError:
    return None
  return int(value) if value.is_integer() else None


def annotated_clip(dataset: str, subject: str, sample: str, emotion: str, action_units: str,
                   folder: Path | None, marks: tuple[str, str, str], cropped: bool,
                   row: int | None) -> Clip | Skip:
  """The clip of one sheet row (onset, apex, offset frame numbers as written in ``marks``), or why not."""
  key = f'{subject}/{sample}' if dataset == 'casme2' else sample
  where = str(folder) if folder is not None else ''
  if folder is None or not folder.is_dir():
    return Skip(key, where, f'frames missing: no folder {sample} for subject {subject}', row)
  files = frame_files(folder)
  if not files:
    return Skip(key, where, 'frames missing: the folder has no numbered image files', row)
  numbers = []
  for name, text in zip(('onset', 'apex', 'offset'), marks):
    number = _frame_number(text)
    if number is None:
      return Skip(key, where, f'{name} frame is {text!r}, not a frame number', row)
    numbers.append(number)
  onset, apex, offset = numbers
  if not onset <= apex <= offset or onset == offset:
    return Skip(key, where, f'onset {onset}, apex {apex}, offset {offset} are not in order', row)
  for name, number in zip(('onset', 'apex', 'offset'), numbers):
    if number not in files:
      return Skip(key, where, f'{name} frame {number} is outside the clip: the folder has frames '
                              f'{min(files)}..{max(files)}' + (' (with gaps)' if number in range(
                                  min(files), max(files) + 1) else ''), row)
  kept = sorted(n for n in files if onset <= n <= offset)
  return Clip(dataset, subject, sample, emotion, action_units, tuple(files[n] for n in kept), tuple(kept),
              kept.index(onset), kept.index(apex), kept.index(offset), cropped, row)


def whole_clip(dataset: str, subject: str, sample: str, emotion: str, folder: Path, cropped: bool,
               apex_position: float) -> Clip | Skip:
  """A folder holding one sample from onset to offset (SMIC-HS); the apex stand-in is the frame at
  ``apex_position`` of the clip: index round(apex_position * (num_frames - 1))."""
  files = frame_files(folder)
  if len(files) < 2:
    return Skip(sample, str(folder), f'frames missing: {len(files)} numbered image file(s) in the folder')
  kept = sorted(files)
  apex = int(apex_position * (len(kept) - 1) + 0.5)  # Round half up: the later of two middle frames.
  return Clip(dataset, subject, sample, emotion, '', tuple(files[n] for n in kept), tuple(kept), 0, apex,
              len(kept) - 1, cropped)


def subject_split(subject: str) -> str:
  """'sub01' -> 'subject_sub01'; 'casme2/sub01' -> 'subject_casme2_sub01' (TFDS split names are words)."""
  return 'subject_' + re.sub(r'\W', '_', subject)


@dataclasses.dataclass(eq=False)
class MicroConfig(sb.SequenceConfig):
  """Config of the micro-expression builders.

  Attributes (beyond the sequence builders'):
    size: side of the stored square frames (default 128: the flow input is 28 x 28; the released CASME II
      and SMIC crops are 130-280 px).
    apex_position: SMIC-HS has no apex annotation: the stand-in is the frame at this fraction of the clip
      (0.5: the middle frame, index round(0.5 * (num_frames - 1))).
    use_released_crops: take a release's face crops (CASME II ``Cropped/``, ``SMIC_all_cropped``) as they
      are (centred square, resized) where present, rather than the raw frames through the detector.
  """
  size: int = 128
  apex_position: float = 0.5
  use_released_crops: bool = True

  def crop_options(self) -> sb.CropOptions:
    if self.max_frames is not None:
      raise ValueError('the micro-expression builders keep every frame from onset to offset (onset, apex '
                       f'and offset index them); max_frames must be None, got {self.max_frames}')
    if not 0.0 <= self.apex_position <= 1.0:
      raise ValueError(f'apex_position must be in [0, 1], got {self.apex_position}')
    return super().crop_options()


class MicroBuilder(sb.SequenceDatasetBuilder, skip_registration=True):
  """Base class: subclasses set ``CLASS_NAMES`` and implement ``_find_clips`` and ``_label``."""

  def _find_clips(self, manual_dir: Path) -> tuple[list[Clip], list[Skip]]:
    raise NotImplementedError

  def _label(self, clip: Clip) -> str | None:
    """The class of ``clip``; None leaves it out of this config (counted as excluded, not skipped)."""
    raise NotImplementedError

  def _subject(self, clip: Clip) -> str:
    return clip.subject

  def _sequence_id(self, clip: Clip) -> str:
    return clip.key

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.size
    text, index = tfds.features.Text(), tfds.features.Scalar(np.int32)
    features = tfds.features.FeaturesDict({
        'frames': tfds.features.Sequence(
            tfds.features.Image(shape=(size, size, 3), encoding_format='jpeg')),
        'label': tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
        'subject': text, 'sequence_id': text, 'num_frames': index,
        'frame_indices': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        'face_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
        'onset': index, 'apex': index, 'offset': index,
        'action_units': text, 'emotion': text, 'source_dataset': text,
    })
    return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or '').strip(), features=features,
                                 supervised_keys=None, homepage=self.HOMEPAGE, citation=self._citation(),
                                 metadata=tfds.core.MetadataDict())

  def _find_sources(self, manual_dir: Path) -> list[sb.SequenceSource]:
    clips, skips = self._find_clips(manual_dir)
    for skip in skips:
      self._skip_source(skip.sequence_id, skip.path, skip.reason, line=skip.row)
    self._excluded, self._cropped, sources = [], set(), []
    for clip in clips:
      label = self._label(clip)
      sequence_id = self._sequence_id(clip)
      if label is None:
        self._excluded.append({'sequence_id': sequence_id, 'emotion': clip.emotion, 'row': clip.row})
        continue
      if clip.cropped and self.builder_config.use_released_crops:
        self._cropped.add(sequence_id)
      subject = self._subject(clip)
      sources.append(sb.SequenceSource(
          sequence_id=sequence_id, split=subject_split(subject), label=label, subject=subject,
          images=tuple(str(p) for p in clip.frames),
          image_indices=tuple(n - clip.numbers[0] for n in clip.numbers), line=clip.row,
          extras=(('onset', np.int32(clip.onset)), ('apex', np.int32(clip.apex)),
                  ('offset', np.int32(clip.offset)), ('action_units', clip.action_units),
                  ('emotion', clip.emotion), ('source_dataset', clip.dataset))))
    return sources

  def _source_options(self, source: sb.SequenceSource, options: sb.CropOptions) -> sb.CropOptions:
    if source.sequence_id in self._cropped:
      return dataclasses.replace(options, face_detector='none', margin=0.0)
    return options

  def _extra_metadata(self, sources):
    subjects = sorted({s.subject for s in sources})
    return {'num_subjects': len(subjects), 'subjects': subjects,
            'num_excluded': len(self._excluded), 'excluded': self._excluded,
            'num_released_crops': len(self._cropped),
            'apex_position': self.builder_config.apex_position,
            'class_counts': {c: sum(s.label == c for s in sources) for c in self.CLASS_NAMES}}
