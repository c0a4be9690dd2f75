"""Finds and reads a user's copy of SAMM (Davison et al., IEEE TAC 2018), the micro-movement set.

Expected (datasets.md), at any depth below the manual dir::

  SAMM/006/006_1_2/006_05562.jpg ...            grey 2040x1088 frames (the number is the absolute frame
                                                index of the recording, as the sheet's columns use it)
  SAMM_Micro_FACS_Codes_v2.xlsx                 the coding sheet (or SAMM_20181215_..., or its .csv)

Sheet columns: Subject (6 -> folder 006), Filename (006_1_2), Onset Frame, Apex Frame, Offset Frame,
Action Units, Estimated Emotion (Anger, Contempt, Disgust, Fear, Happiness, Other, Sadness, Surprise); the
header row may have title rows above it.
"""

import re
from pathlib import Path

from tfds_builders import micro_builder as mb
from tfds_builders import sequence_builder as sb
from tfds_builders.casme2 import layout as casme2_layout

EMOTIONS = ('anger', 'contempt', 'disgust', 'fear', 'happiness', 'other', 'sadness', 'surprise')
SUBJECT_RE = r'\d{3}'
SHEET_RE = re.compile(r'samm.*\.(xlsx|csv|xls)', re.IGNORECASE)
COLUMNS = ('Subject', 'Filename', 'Onset Frame', 'Apex Frame', 'Offset Frame', 'Estimated Emotion')

EXPECTED_LAYOUT = """\
  SAMM/006/006_1_2/006_05562.jpg ...   (frames; subject folders of 3 digits)
  SAMM_Micro_FACS_Codes_v2.xlsx        (coding sheet; or the same table as .csv)
"""


def _is_samm_root(folder: Path) -> bool:
  """Subject folders (006) holding clip folders named after them (006_1_2)."""
  subjects = sb.subdirs(folder, SUBJECT_RE)
  return any(sb.subdirs(s, rf'{s.name}_\d+_\d+') for s in subjects[:5])


def find_clips(manual_dir: Path, use_released_crops: bool = True) -> tuple[list[mb.Clip], list[mb.Skip]]:
  """The clips of every usable row of the coding sheet, and the rows skipped with their reasons."""
  roots = sb.find_dirs(manual_dir, _is_samm_root)
  if not roots:
    raise sb.manual_dir_error('SAMM', manual_dir, EXPECTED_LAYOUT,
                              problem='found no SAMM frame folders (006/006_1_2/...)')
  roots.sort(key=lambda r: (casme2_layout.is_cropped(r) != use_released_crops, len(r.parts), str(r)))
  root = roots[0]
  cropped = casme2_layout.is_cropped(root)
  sheet = casme2_layout.find_sheet(manual_dir, SHEET_RE, 'SAMM', EXPECTED_LAYOUT)
  print(f'samm: frames {root} ({"released face crops" if cropped else "raw frames"}), sheet {sheet}',
        flush=True)
  clips, skips = [], []
  for row, cells in mb.read_sheet(sheet, COLUMNS):
    match = re.fullmatch(r'0*(\d+)(?:\.0+)?', cells['subject'])
    sample, emotion = cells['filename'], cells['estimatedemotion'].lower()
    if match is None:
      skips.append(mb.Skip(sample, str(sheet), f'Subject {cells["subject"]!r} is not a subject number', row))
      continue
    subject = f'{int(match.group(1)):03d}'
    if emotion not in EMOTIONS:
      skips.append(mb.Skip(sample, str(sheet), f'Estimated Emotion {emotion!r} is not one of {EMOTIONS}',
                           row))
      continue
    subject_dir = casme2_layout.child(root, subject)
    folder = casme2_layout.child(subject_dir, sample) if subject_dir is not None else None
    marks = (cells['onsetframe'], cells['apexframe'], cells['offsetframe'])
    result = mb.annotated_clip('samm', subject, sample, emotion, cells.get('actionunits', ''),
                               folder or root / subject / sample, marks, cropped, row)
    (clips if isinstance(result, mb.Clip) else skips).append(result)
  return clips, skips
