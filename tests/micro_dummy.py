"""Tiny copies of CASME II, SAMM and SMIC-HS in their released layouts (datasets.md), for the builder tests.

Frames are 24 x 20 noise images (a clip's frames differ slightly so that flow has something to find); the
coding sheets have the real file names and columns, as .xlsx (openpyxl) or as the same table in .csv.
Irregular rows are written on purpose; ``EXPECTED_SKIPS`` says which rows the builders must skip and why.
"""

import csv
from pathlib import Path

import cv2
import numpy as np

CASME2_HEADER = ['Subject', 'Filename', None, 'OnsetFrame', 'ApexFrame', 'OffsetFrame', None, 'Action Units',
                 'Estimated Emotion']
# Subject, Filename, onset, apex, offset, AUs, emotion; frames on disk: FRAMES[(subject, name)].
CASME2_ROWS = [
    (1, 'EP02_01f', 46, 49, 52, '12', 'happiness'),      # row 2: used
    (1, 'EP19_05f', 10, 13, 15, '4+7', 'disgust'),       # row 3: used
    (2, 'EP09_01', 10, '/', 16, '14', 'repression'),     # row 4: apex '/'
    (2, 'EP11_01', 20, 23, 40, '1+2', 'surprise'),       # row 5: offset outside the clip's frames
    (2, 'EP13_04', 5, 7, 9, '4', 'disgust'),             # row 6: no frame folder
    (2, 'EP14_01', 30, 31, 36, '1+2', 'surprise'),       # row 7: used
    (3, 'EP01_2', 5, 8, 11, '4', 'others'),              # row 8: used
    (3, 'EP07_04', 2, 4, 6, '1', 'sadness'),             # row 9: used ('all'); left out of '5class'
]
CASME2_FRAMES = {('sub01', 'EP02_01f'): range(44, 55), ('sub01', 'EP19_05f'): range(10, 16),
                 ('sub02', 'EP09_01'): range(10, 17), ('sub02', 'EP11_01'): range(20, 27),
                 ('sub02', 'EP14_01'): range(30, 37), ('sub03', 'EP01_2'): range(5, 12),
                 ('sub03', 'EP07_04'): range(2, 7)}

SAMM_TITLE = [['SAMM Micro-Movement FACS Codes'], ['Version 2']]
SAMM_HEADER = ['Subject', 'Filename', 'Inducement Code', 'Onset Frame', 'Apex Frame', 'Offset Frame',
               'Duration', 'Micro', 'Action Units', 'Notes', 'Estimated Emotion']
SAMM_ROWS = [  # The sheet's rows 4-8 (two title rows, the header in row 3).
    ('006', '006_1_2', 5562, 5565, 5568, 'R12', 'Happiness'),   # row 4: used
    ('006', '006_1_3', 5000, 5003, 5006, '4+7', 'Anger'),       # row 5: used
    ('007', '007_3_1', 100, 98, 106, '1+2', 'Surprise'),        # row 6: apex before onset
    ('007', '007_3_2', 200, 202, 206, '1+2', 'Surprise'),       # row 7: used
    ('007', '007_6_1', 300, 302, 304, '14', 'Other'),           # row 8: used
]
SAMM_FRAMES = {('006', '006_1_2'): range(5560, 5570), ('006', '006_1_3'): range(5000, 5007),
               ('007', '007_3_1'): range(100, 107), ('007', '007_3_2'): range(200, 207),
               ('007', '007_6_1'): range(300, 305)}

# SMIC-HS: (subject folder, class, sample folder) -> frame numbers; s2_ne_02 has one frame (skipped).
SMIC_FRAMES = {('s1', 'negative', 's1_ne_01'): range(100, 107), ('s1', 'positive', 's1_po_01'): range(7),
               ('s2', 'surprise', 's2_sur_01'): range(50, 56), ('s2', 'negative', 's2_ne_02'): range(1)}

EXPECTED_SKIPS = {
    'casme2': {'sub02/EP09_01': (4, "apex frame is '/'"), 'sub02/EP11_01': (5, 'offset frame 40 is outside'),
               'sub02/EP13_04': (6, 'frames missing')},
    'samm': {'007_3_1': (6, 'not in order')},
    'smic': {'s02_ne_02': (None, 'frames missing')},
}

# The composite's list for the dummy copies: one sample with an unusable row, one absent from the copy.
COMPOSITE_LIST = [
    ('casme2', 'sub01', 'EP02_01f', 'positive'), ('casme2', 'sub01', 'EP19_05f', 'negative'),
    ('casme2', 'sub02', 'EP14_01', 'surprise'), ('casme2', 'sub02', 'EP09_01', 'negative'),
    ('casme2', 'sub04', 'EP12_02f', 'negative'),
    ('samm', '006', '006_1_2', 'positive'), ('samm', '006', '006_1_3', 'negative'),
    ('samm', '007', '007_3_2', 'surprise'),
    ('smic', 's01', 's01_ne_01', 'negative'), ('smic', 's01', 's01_po_01', 'positive'),
    ('smic', 's02', 's02_sur_01', 'surprise'),
]


def _frames(folder: Path, names: list[str], seed: int, grey: bool = False) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  base = cv2.GaussianBlur(rng.integers(0, 256, (20, 24, 3), np.uint8), (5, 5), 0)
  for i, name in enumerate(names):
    frame = np.roll(base, i % 3, axis=1)  # A small horizontal movement.
    cv2.imwrite(str(folder / name), frame[..., 0] if grey else frame)


def _write_table(path: Path, rows: list[list], form: str) -> Path:
  if form == 'csv':
    path = path.with_suffix('.csv')
    with open(path, 'w', newline='') as f:
      csv.writer(f).writerows([['' if c is None else c for c in row] for row in rows])
    return path
  import openpyxl  # pylint: disable=import-outside-toplevel
  book = openpyxl.Workbook()
  for row in rows:
    book.active.append(row)
  book.save(path)
  return path


def write_casme2(root: Path, form: str = 'xlsx') -> Path:
  """CASME2/Cropped/sub01/EP02_01f/reg_img46.jpg ... and CASME2-coding-20140508.xlsx (or .csv)."""
  for i, ((subject, name), numbers) in enumerate(CASME2_FRAMES.items()):
    _frames(root / 'CASME2' / 'Cropped' / subject / name, [f'reg_img{n}.jpg' for n in numbers], i)
  rows = [CASME2_HEADER] + [[s, f, None, o, a, e, None, au, emo] for s, f, o, a, e, au, emo in CASME2_ROWS]
  return _write_table(root / 'CASME2' / 'CASME2-coding-20140508.xlsx', rows, form)


def write_samm(root: Path, form: str = 'xlsx') -> Path:
  """SAMM/006/006_1_2/006_05562.jpg ... (grey) and SAMM_Micro_FACS_Codes_v2.xlsx (or .csv)."""
  for i, ((subject, name), numbers) in enumerate(SAMM_FRAMES.items()):
    _frames(root / 'SAMM' / subject / name, [f'{subject}_{n:05d}.jpg' for n in numbers], 100 + i, grey=True)
  rows = SAMM_TITLE + [SAMM_HEADER] + [[s, f, 1, o, a, e, e - o, 'Micro', au, '', emo]
                                       for s, f, o, a, e, au, emo in SAMM_ROWS]
  return _write_table(root / 'SAMM_Micro_FACS_Codes_v2.xlsx', rows, form)


def write_smic(root: Path) -> None:
  """SMIC_all_cropped/HS/s1/micro/negative/s1_ne_01/reg_image000100.bmp ..., and a VIS folder beside HS."""
  for i, ((subject, label, name), numbers) in enumerate(SMIC_FRAMES.items()):
    _frames(root / 'SMIC_all_cropped' / 'HS' / subject / 'micro' / label / name,
            [f'reg_image{n:06d}.bmp' for n in numbers], 200 + i)
  _frames(root / 'SMIC_all_cropped' / 'VIS' / 's1' / 'micro' / 'negative' / 's1_ne_01',
          ['reg_image000001.bmp', 'reg_image000002.bmp'], 300)


def write_list(path: Path, rows=COMPOSITE_LIST) -> Path:
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([('dataset', 'subject', 'sample', 'label'), *rows])
  return path


def write_all(root: Path, form: str = 'xlsx') -> Path:
  """The three copies below ``root`` (as a user keeps them in one folder); returns ``root``."""
  write_casme2(root, form)
  write_samm(root / 'samm_release', form)
  write_smic(root)
  return root
