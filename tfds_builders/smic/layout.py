"""Finds and reads a user's copy of SMIC-HS (Li et al., FG 2013), the 100 fps high-speed camera set.

Expected (datasets.md), at any depth below the manual dir::

  SMIC_all_cropped/HS/s1/micro/negative/s1_ne_01/reg_image012345.bmp ...   released face crops
  (or an uncropped release: .../HS/s1/micro/<class>/s1_ne_01/image012345.bmp)

Each sample folder holds the clip from onset to offset; the class is its folder (negative, positive,
surprise). SMIC has no apex annotation: the stand-in is the frame at ``apex_position`` of the clip (the
builder configs' field; 0.5 = the middle frame). Samples are named as the MEGC2019 list writes them,
``s01_ne_01`` for the folder ``s1_ne_01``; subjects ``s01``.
"""

import re
from pathlib import Path

from tfds_builders import micro_builder as mb
from tfds_builders import sequence_builder as sb
from tfds_builders.casme2 import layout as casme2_layout

EMOTIONS = ('negative', 'positive', 'surprise')
SUBJECT_RE = r's\d+'
_SAMPLE = re.compile(r's(\d+)_([a-z]+)_(\d+)', re.IGNORECASE)

EXPECTED_LAYOUT = """\
  SMIC_all_cropped/HS/s1/micro/negative/s1_ne_01/reg_image*.bmp ...  (classes negative, positive, surprise)
"""


def sample_name(folder_name: str) -> str | None:
  """'s1_ne_01' -> 's01_ne_01' (the MEGC2019 list's spelling); None for another name."""
  match = _SAMPLE.fullmatch(folder_name)
  if match is None:
    return None
  return f's{int(match.group(1)):02d}_{match.group(2).lower()}_{match.group(3)}'


def _is_hs_root(folder: Path) -> bool:
  return any((s / 'micro').is_dir() for s in sb.subdirs(folder, SUBJECT_RE))


def find_clips(manual_dir: Path, use_released_crops: bool = True,
               apex_position: float = 0.5) -> tuple[list[mb.Clip], list[mb.Skip]]:
  """The clips of every sample folder of SMIC-HS, and the folders skipped with their reasons."""
  roots = sb.find_dirs(manual_dir, _is_hs_root)
  # The HS camera's folder; VIS and NIR (25 fps) sit beside it in the full release.
  roots = [r for r in roots if re.fullmatch(r'(smic[-_ ]?)?hs', r.name, re.IGNORECASE)] or roots
  if not roots:
    raise sb.manual_dir_error('SMIC', manual_dir, EXPECTED_LAYOUT,
                              problem='found no SMIC-HS folder (HS/s1/micro/<class>/s1_ne_01/)')
  roots.sort(key=lambda r: (casme2_layout.is_cropped(r) != use_released_crops, len(r.parts), str(r)))
  root = roots[0]
  cropped = casme2_layout.is_cropped(root)
  print(f'smic: frames {root} ({"released face crops" if cropped else "raw frames"}); apex stand-in at '
        f'{apex_position} of each clip', flush=True)
  clips, skips = [], []
  for subject_dir in sorted(sb.subdirs(root, SUBJECT_RE), key=lambda p: int(p.name[1:])):
    subject = f's{int(subject_dir.name[1:]):02d}'
    for class_dir in sb.subdirs(subject_dir / 'micro'):
      emotion = class_dir.name.lower()
      for folder in sb.subdirs(class_dir):
        sample = sample_name(folder.name)
        if emotion not in EMOTIONS or sample is None:
          skips.append(mb.Skip(folder.name, str(folder), f'not a SMIC-HS sample folder: expected '
                                                         f'micro/{{{",".join(EMOTIONS)}}}/s1_ne_01'))
          continue
        result = mb.whole_clip('smic', subject, sample, emotion, folder, cropped, apex_position)
        (clips if isinstance(result, mb.Clip) else skips).append(result)
  return clips, skips
