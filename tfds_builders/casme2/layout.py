"""Finds and reads a user's copy of CASME II (Yan et al., PLoS ONE 2014).

Expected (datasets.md), at any depth below the manual dir::

  CASME2_RAW_selected/sub01/EP02_01f/img46.jpg ...   raw 640x480 frames, or the released face crops
  Cropped/sub01/EP02_01f/reg_img46.jpg ...
  CASME2-coding-20140508.xlsx                        the coding sheet (or the same table as .csv;
                                                     CASME2_label_Ver_2.xls with xlrd installed)

The number in a frame's file name is the frame number the sheet's OnsetFrame / ApexFrame / OffsetFrame
columns use. Sheet columns: Subject (1-26 -> folder sub01), Filename (EP02_01f), OnsetFrame, ApexFrame,
OffsetFrame, Action Units, Estimated Emotion (happiness, disgust, repression, surprise, sadness, fear,
others).
"""

import re
from pathlib import Path

from absl import logging

from tfds_builders import micro_builder as mb
from tfds_builders import sequence_builder as sb

EMOTIONS = ('disgust', 'fear', 'happiness', 'others', 'repression', 'sadness', 'surprise')
SUBJECT_RE = r'sub\d+'
SHEET_RE = re.compile(r'casme.*\.(xlsx|csv|xls)', re.IGNORECASE)
COLUMNS = ('Subject', 'Filename', 'OnsetFrame', 'ApexFrame', 'OffsetFrame', 'Estimated Emotion')

EXPECTED_LAYOUT = """\
  CASME2_RAW_selected/sub01/EP02_01f/img46.jpg ...  (raw frames) and/or
  Cropped/sub01/EP02_01f/reg_img46.jpg ...           (the released face crops)
  CASME2-coding-20140508.xlsx                        (coding sheet; or the same table as .csv)
"""


def find_sheet(manual_dir: Path, pattern: re.Pattern, dataset: str, expected: str) -> Path:
  """The coding sheet below the manual dir: .xlsx before .csv before .xls, then the shallowest."""
  found = [p for p in manual_dir.rglob('*') if p.is_file() and pattern.fullmatch(p.name)
           and not p.name.startswith(('.', '~$'))]
  if not found:
    raise sb.manual_dir_error(dataset, manual_dir, expected, problem=f'found no {dataset} coding sheet')
  order = {'.xlsx': 0, '.csv': 1, '.xls': 2}
  found.sort(key=lambda p: (order[p.suffix.lower()], len(p.parts), str(p)))
  if len(found) > 1:
    logging.warning('%s: several coding sheets, using %s (others: %s)', dataset, found[0], found[1:])
  return found[0]


def is_cropped(root: Path) -> bool:
  """A frame root of released face crops: named so, or its frames are named reg_*."""
  if 'crop' in root.name.lower():
    return True
  folder = root
  for _ in range(5):  # Down to the first clip folder (SMIC: s1/micro/negative/s1_ne_01).
    names = sb.subdirs(folder)
    if not names:
      break
    folder = names[0]
  return any(p.name.lower().startswith('reg_') for p in folder.iterdir())


def frame_root(manual_dir: Path, use_released_crops: bool, subject_re: str, dataset: str,
               expected: str) -> Path:
  """The folder holding the subject folders: the released crops first when asked, else the raw frames."""
  roots = sb.find_dirs(manual_dir, sb.has_subdirs(subject_re))
  if not roots:
    raise sb.manual_dir_error(dataset, manual_dir, expected,
                              problem=f'found no {dataset} frame folders (subject folders {subject_re})')
  roots.sort(key=lambda r: (is_cropped(r) != use_released_crops, len(r.parts), str(r)))
  return roots[0]


def subject_name(text: str) -> str | None:
  """Sheet subject '1' / '1.0' / 'sub01' -> 'sub01'."""
  match = re.fullmatch(r'(?:sub)?0*(\d+)(?:\.0+)?', text.strip(), re.IGNORECASE)
  return f'sub{int(match.group(1)):02d}' if match else None


def child(folder: Path, name: str) -> Path | None:
  """``folder/name``, matched without case (copies differ in case)."""
  exact = folder / name
  if exact.is_dir():
    return exact
  for entry in sb.subdirs(folder):
    if entry.name.lower() == name.lower():
      return entry
  return None


def find_clips(manual_dir: Path, use_released_crops: bool = True) -> tuple[list[mb.Clip], list[mb.Skip]]:
  """The clips of every usable row of the coding sheet, and the rows skipped with their reasons."""
  root = frame_root(manual_dir, use_released_crops, SUBJECT_RE, 'CASME II', EXPECTED_LAYOUT)
  sheet = find_sheet(manual_dir, SHEET_RE, 'CASME II', EXPECTED_LAYOUT)
  cropped = is_cropped(root)
  print(f'casme2: frames {root} ({"released face crops" if cropped else "raw frames"}), sheet {sheet}',
        flush=True)
  clips, skips = [], []
  for row, cells in mb.read_sheet(sheet, COLUMNS):
    subject, sample = subject_name(cells['subject']), cells['filename']
    emotion = cells['estimatedemotion'].lower()
    key = f'{subject or cells["subject"]}/{sample}'
    if subject is None:
      skips.append(mb.Skip(key, str(sheet), f'Subject {cells["subject"]!r} is not a subject number', row))
      continue
    if emotion not in EMOTIONS:
      skips.append(mb.Skip(key, str(sheet), f'Estimated Emotion {emotion!r} is not one of {EMOTIONS}', row))
      continue
    subject_dir = child(root, subject)
    folder = child(subject_dir, sample) if subject_dir is not None else None
    marks = (cells['onsetframe'], cells['apexframe'], cells['offsetframe'])
    result = mb.annotated_clip('casme2', subject, sample, emotion, cells.get('actionunits', ''),
                               folder or root / subject / sample, marks, cropped, row)
    (clips if isinstance(result, mb.Clip) else skips).append(result)
  return clips, skips
