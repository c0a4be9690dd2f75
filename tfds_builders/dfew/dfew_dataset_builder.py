"""DFEW (Dynamic Facial Expression in the Wild, Jiang et al., ACM MM 2020): the 11,697 single-labelled
clips in the released five folds, from the released aligned 224x224 face frames.

Config ``clip_224x224`` (default) reads every frame of each clip, ``clip_224x224_16f`` the 16-frame
time-interpolated release (``layout.py``). The frames already are aligned 224x224 faces: their JPEG bytes are
stored as they are (no decoding, re-encoding or detection); a frame of another size is centre-cropped and
resized (``face_detector='none'``). Splits ``fold_1`` ... ``fold_5`` are the released test sets
``test(single-labeled)/set_k.csv``; the train set of fold k is the other four, which the builder checks
against the released ``train(single-labeled)/set_k.csv`` (differences are printed and recorded as
``fold_train_mismatch``). The folds are not described as subject-independent: ``subject`` is the empty string.

Reported with counts (``info.metadata``): clips listed but absent and clips whose frames cannot be read
(``skipped``), clips present but unlisted (``present_but_unlisted``: DFEW's 4,675 multi-labelled clips are
among them), clips with gaps in their frame numbers (``frame_gaps``), unreadable CSV lines.

Build (no TensorFlow needed)::

  python -m tfds_builders dfew --manual_dir ~/data/DFEW [--config clip_224x224_16f]
"""

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders import split_files
from tfds_builders.dfew import layout


@dataclasses.dataclass(eq=False)
class DfewConfig(sequence_builder.SequenceConfig):
  """Builder config of dfew (the crop fields of SequenceConfig, plus ``frame_set``: which released frame
  folder, 'clip_224x224' or 'clip_224x224_16f')."""
  frame_set: str = 'clip_224x224'


class Builder(sequence_builder.SequenceDatasetBuilder):
  """DFEW: 11,697 single-labelled movie clips, 7 classes, 5 released folds."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Released face frames stored as they are; folds from the released CSVs.'}
  BUILDER_CONFIGS = [
      DfewConfig(
          name=name, frame_set=name, size=224, face_detector='none', keep_jpeg=True,
          description=f'Clip/{name}/: {"16 time-interpolated" if name.endswith("16f") else "all"} frames '
                      'per clip, the released 224x224 JPEGs stored as they are.')
      for name in layout.FRAME_SETS
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'clip_224x224'
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'https://dfew-dataset.github.io/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
DFEW (Jiang et al., 2020) is released by its authors ({HOMEPAGE}) to researchers who sign its licence
agreement. Unpack Clip/ (the clip_224x224 and/or clip_224x224_16f frames) and EmoLabel_DataSplit/ anywhere
below the manual dir; the builder searches for:
{layout.EXPECTED_LAYOUT}"""

  def _frame_set(self) -> str:
    frame_set = self.builder_config.frame_set
    if frame_set not in layout.FRAME_SETS:
      raise sequence_builder.BuildError(f'dfew: frame_set must be one of {layout.FRAME_SETS}, got '
                                        f'{frame_set!r}')
    return frame_set

  def _find_sources(self, manual_dir: Path) -> list[sequence_builder.SequenceSource]:
    files = layout.find_split_files(manual_dir)
    frame_root = layout.find_frame_root(manual_dir, self._frame_set())
    tests, trains, bad = {}, {}, []
    for kind, target in (('test', tests), ('train', trains)):
      for k, path in files[kind].items():
        rows, bad_rows = layout.read_split_file(path)
        target[f'fold_{k}'] = rows
        bad.extend(bad_rows)
    codes = {r.code for rows in list(tests.values()) + list(trains.values()) for r in rows}
    base = 0 if 0 in codes and 7 not in codes else 1
    self._metadata = {
        'frame_set': self._frame_set(), 'frame_root': str(frame_root), 'label_base': base,
        'bad_csv_lines': [vars(b) for b in bad], 'num_bad_csv_lines': len(bad),
        'fold_train_mismatch': split_files.fold_train_mismatch(
            {f: [r.clip_id for r in rows] for f, rows in tests.items()},
            {f: [r.clip_id for r in rows] for f, rows in trains.items()}),
    }
    for entry in bad:
      print(f'dfew: line {entry.line} of {entry.path} skipped: {entry.reason}', flush=True)
    for fold, diff in self._metadata['fold_train_mismatch'].items():
      print(f'dfew: the released train list of {fold} is not the other four test folds: '
            f'{diff["num_only_in_train_file"]} clips only in the train file, '
            f'{diff["num_only_in_other_folds"]} only in the other folds', flush=True)
    present = {p.name: p for p in sequence_builder.subdirs(frame_root, r'\d+')}
    sources, gaps = [], {}
    for fold, rows in sorted(tests.items()):
      for row in rows:
        if not 0 <= row.code - base < len(layout.EMOTION_CODES):
          self._skip_source(row.clip_id, row.path, f'line {row.line}: label {row.code} outside '
                            f'{base}-{base + 6}', split=fold, line=row.line)
          continue
        folder = present.get(row.clip_id)
        frames, numbers = layout.clip_frames(folder) if folder else ([], [])
        if not frames:
          where = f'{frame_root / row.clip_id} does not exist' if folder is None else (
              f'{folder} holds no JPEG frame')
          self._skip_source(row.clip_id, folder or frame_root / row.clip_id,
                            f'listed in {Path(row.path).name} line {row.line}, but {where}',
                            split=fold, line=row.line)
          continue
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers)) if (
            numbers[0] >= 0) else []
        if missing:
          gaps[row.clip_id] = missing
        first = 1 if numbers[0] >= 1 else 0
        sources.append(sequence_builder.SequenceSource(
            sequence_id=row.clip_id, split=fold, label=layout.EMOTION_CODES[row.code - base], subject='',
            images=tuple(str(p) for p in frames), line=row.line,
            image_indices=tuple(max(n - first, 0) for n in numbers) if numbers[0] >= 0 else None))
    listed = {r.clip_id for rows in list(tests.values()) + list(trains.values()) for r in rows}
    self._metadata.update(split_files.reconcile(listed, present))
    self._metadata.update(frame_gaps=gaps, num_clips_with_frame_gaps=len(gaps))
    print(f'dfew: {len(sources)} clips in {len(tests)} folds from {frame_root}; '
          f'{self._metadata["num_listed_but_absent"]} listed but absent, '
          f'{self._metadata["num_present_but_unlisted"]} present but unlisted, '
          f'{len(gaps)} with gaps in their frame numbers', flush=True)
    return sources

  def _extra_metadata(self, sources):
    del sources
    return dict(getattr(self, '_metadata', {}))
