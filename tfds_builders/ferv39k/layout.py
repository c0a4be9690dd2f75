"""Finds and reads a user's copy of FERV39k (Wang et al., CVPR 2022).

Expected layout (datasets.md), at any depth below the manual dir::

  2_ClipsforFaceCrop/<Scene>/<Emotion>/<4-digit id>/*.jpg     face crops, 8-47 frames per clip
  4_setups/All_scenes/train_All.csv and test_All.csv          'Action/Angry/0001 Angry', no header

The emotion folders and labels are Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise (any case). A line
that cannot be used (not two fields, a path that is not ``<Scene>/<Emotion>/<id>``, an unknown emotion, a
label that disagrees with the path's emotion folder) is returned as a :class:`BadLine` with its number.
"""

import dataclasses
import os
import pathlib

from tfds_builders import sequence_builder

CLASS_NAMES = {'angry': 'anger', 'disgust': 'disgust', 'fear': 'fear', 'happy': 'happiness',
               'neutral': 'neutral', 'sad': 'sadness', 'surprise': 'surprise'}
EMOTIONS = tuple(sorted(CLASS_NAMES.values()))
SPLIT_FILES = {'train': 'train_All.csv', 'test': 'test_All.csv'}

EXPECTED_LAYOUT = """\
  2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/*.jpg  (e.g. 2_ClipsforFaceCrop/Action/Angry/0001/)
  4_setups/All_scenes/train_All.csv and test_All.csv  (lines '<Scene>/<Emotion>/<id> <Emotion>')
"""


@dataclasses.dataclass(frozen=True)
class Clip:
  """One usable line of a split file."""
  sequence_id: str  # '<Scene>/<Emotion>/<id>' as the split file writes it.
  scene: str
  label: str
  split: str
  path: str  # The split file.
  line: int


@dataclasses.dataclass(frozen=True)
class BadLine:
  sequence_id: str
  split: str
  path: str
  line: int
  reason: str


def find_roots(manual_dir: os.PathLike | str) -> tuple[pathlib.Path, pathlib.Path]:
  """(the ``2_ClipsforFaceCrop`` folder, the folder holding ``train_All.csv`` and ``test_All.csv``).

  Raises:
    ManualDirError: either is missing.
  """
  crops = sequence_builder.find_dirs(manual_dir, sequence_builder.name_matches(r'2_ClipsforFaceCrop'))
  setups = sequence_builder.find_dirs(
      manual_dir, lambda p: all((p / f).is_file() for f in SPLIT_FILES.values()))
  if not crops or not setups:
    missing = ' and '.join(
        what for what, found in (('2_ClipsforFaceCrop/', crops), ('train_All.csv + test_All.csv', setups))
        if not found)
    raise sequence_builder.manual_dir_error('FERV39k', manual_dir, EXPECTED_LAYOUT,
                                            problem=f'found no {missing}')
  for what, found in (('2_ClipsforFaceCrop', crops), ('All_scenes split', setups)):
    if len(found) > 1:
      raise sequence_builder.BuildError(f'ferv39k: two {what} folders: {found[0]} and {found[1]}')
  return crops[0], setups[0]


def read_split_file(path: pathlib.Path, split: str) -> tuple[list[Clip], list[BadLine]]:
  """The usable lines of one split file and the ones that are not."""
  clips, bad = [], []
  for number, text in enumerate(path.read_text(errors='replace').splitlines(), 1):
    fields = text.split()
    if not fields:
      continue
    clip_path = fields[0].strip('/')
    parts = clip_path.split('/')
    problem = ''
    if len(fields) != 2:
      problem = f'expected "<Scene>/<Emotion>/<id> <Emotion>", found {text.strip()!r}'
    elif len(parts) != 3:
      problem = f'expected a clip path <Scene>/<Emotion>/<id>, found {fields[0]!r}'
    elif fields[1].lower() not in CLASS_NAMES:
      problem = f'expected an emotion among {sorted(CLASS_NAMES)}, found {fields[1]!r}'
    elif parts[1].lower() != fields[1].lower():
      problem = f'the label {fields[1]!r} disagrees with the emotion folder {parts[1]!r}'
    if problem:
      bad.append(BadLine(clip_path, split, str(path), number, problem))
    else:
      clips.append(Clip(clip_path, parts[0], CLASS_NAMES[fields[1].lower()], split, str(path), number))
  return clips, bad


def present_clips(crops: pathlib.Path) -> dict[str, pathlib.Path]:
  """'<Scene>/<Emotion>/<id>' -> folder, for every clip folder below ``2_ClipsforFaceCrop``."""
  out = {}
  for scene in sequence_builder.subdirs(crops):
    for emotion in sequence_builder.subdirs(scene):
      for clip in sequence_builder.subdirs(emotion):
        out[f'{scene.name}/{emotion.name}/{clip.name}'] = clip
  return out
