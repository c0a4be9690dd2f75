"""MAFW (Liu et al., ACM MM 2022): the 9,172 single-labelled clips in 11 classes, five released folds.

Config ``frames`` (default) reads ``data/frames/<clip>/``, ``clips`` the videos ``data/clips/<clip>.mp4``
(``layout.py``). MAFW ships no face crops: the builder detects the face (Haar by default; the detector is
recorded in ``info.metadata['crop_options']``) and stores one stable square crop per clip, at most
``max_frames`` (64) evenly spaced frames. Splits ``fold_1`` ... ``fold_5`` are the released
``single/no_caption/set_k/test.txt``; the train set of fold k is the other four, which the builder checks
against the released ``set_k/train.txt`` (differences recorded as ``fold_train_mismatch``). The folds are
not subject-independent; ``subject`` is the empty string.

Reported with counts (``info.metadata``): clips listed but absent, clips that cannot be decoded or show no
face (``skipped``), clips present but unlisted, unusable split-file lines (``bad_lines``).

Build (no TensorFlow needed)::

  python -m tfds_builders mafw --manual_dir ~/data/MAFW [--config clips]
"""

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from tfds_builders import sequence_builder
from tfds_builders import split_files
from tfds_builders.mafw import layout

DEFAULT_MAX_FRAMES = 64


@dataclasses.dataclass(eq=False)
class MafwConfig(sequence_builder.SequenceConfig):
  """Builder config of mafw (the crop fields of SequenceConfig, plus ``source``: 'frames' or 'clips')."""
  source: str = 'frames'


class Builder(sequence_builder.SequenceDatasetBuilder):
  """MAFW single-label set: 9,172 clips, 11 classes, 5 released folds; faces detected by the builder."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Frames or clips; faces detected and cropped; folds from the released lists.'}
  BUILDER_CONFIGS = [
      MafwConfig(name=source, source=source, max_frames=DEFAULT_MAX_FRAMES,
                 description=f'data/{source}/: 256x256 face crops (Haar), at most {DEFAULT_MAX_FRAMES} '
                             'evenly spaced frames per clip.')
      for source in layout.SOURCES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'frames'
  CLASS_NAMES = layout.EMOTIONS
  EXPECTED_LAYOUT = layout.EXPECTED_LAYOUT
  HOMEPAGE = 'https://mafw-database.github.io/MAFW/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
MAFW (Liu et al., 2022) is released by its authors ({HOMEPAGE}) to researchers who sign its licence
agreement. Unpack data/ (frames and/or clips) and "Train & Test Set/" anywhere below the manual dir; the
builder searches for:
{layout.EXPECTED_LAYOUT}"""

  def _find_sources(self, manual_dir: Path) -> list[sequence_builder.SequenceSource]:
    source = self.builder_config.source
    split_root = layout.find_split_root(manual_dir)
    found = layout.find_media(manual_dir, source)
    tests, trains, bad = {}, {}, []
    for k in range(1, layout.NUM_FOLDS + 1):
      for kind, target in (('test', tests), ('train', trains)):
        path = split_root / f'set_{k}' / f'{kind}.txt'
        lines, wrong = layout.read_split_file(path) if path.is_file() else ([], [])
        target[f'fold_{k}'] = lines
        bad += wrong
    for entry in bad:
      print(f'mafw: line {entry.line} of {entry.path} skipped: {entry.reason}', flush=True)
    sources = []
    for fold, lines in tests.items():
      for line in lines:
        where = found.get(line.clip_id)
        images = tuple(str(p) for p in layout.frame_files(where)) if where and source == 'frames' else ()
        if where is None or (source == 'frames' and not images):
          reason = 'no such ' + ('frame folder' if source == 'frames' else 'video') if where is None else (
              'no image in its frame folder')
          self._skip_source(line.clip_id, where or split_root, f'listed in {fold.replace("fold", "set")}'
                            f'/test.txt line {line.line}, but {reason}', split=fold, line=line.line)
          continue
        sources.append(sequence_builder.SequenceSource(
            sequence_id=line.clip_id, split=fold, label=line.label, subject='', images=images,
            video=str(where) if source == 'clips' else None, line=line.line))
    listed = {l.clip_id for lines in list(tests.values()) + list(trains.values()) for l in lines}
    self._metadata = {
        'source': source, 'split_root': str(split_root),
        'bad_lines': [dataclasses.asdict(b) for b in bad], 'num_bad_lines': len(bad),
        'fold_train_mismatch': split_files.fold_train_mismatch(
            {f: [l.clip_id for l in lines] for f, lines in tests.items()},
            {f: [l.clip_id for l in lines] for f, lines in trains.items() if lines}),
        **split_files.reconcile(listed, found),
    }
    for fold, diff in self._metadata['fold_train_mismatch'].items():
      print(f'mafw: the released train list of {fold} is not the other four test folds: '
            f'{diff["num_only_in_train_file"]} clips only in the train file, '
            f'{diff["num_only_in_other_folds"]} only in the other folds', flush=True)
    print(f'mafw: {len(sources)} clips in 5 folds from data/{source}; '
          f'{self._metadata["num_listed_but_absent"]} listed but absent, '
          f'{self._metadata["num_present_but_unlisted"]} present but unlisted, {len(bad)} bad lines',
          flush=True)
    return sources

  def _extra_metadata(self, sources):
    del sources
    return dict(getattr(self, '_metadata', {}))
