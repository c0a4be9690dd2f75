"""Helpers shared by the builder tests: build from dummy data, read every split, check the protocol."""

import collections
from collections.abc import Iterable
import os

import tensorflow_datasets as tfds

from ferjax.data import protocols


def build(builder_cls, config, data_dir: os.PathLike, manual_dir: os.PathLike):
  """Builds `builder_cls` with `config` from `manual_dir` into `data_dir` (ArrayRecord); the builder."""
  builder = builder_cls(data_dir=data_dir, config=config, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def read_all(name: str, splits: Iterable[str], data_dir: os.PathLike) -> dict[str, dict]:
  """Every record of `splits` via tfds.data_source, keyed by sequence_id, with its split added."""
  examples = {}
  for split in splits:
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    for i in range(len(source)):
      record = source[i]
      examples[record['sequence_id'].decode()] = dict(record, split=split)
  return examples


def assert_subject_independent(name: str, data_dir: os.PathLike, examples: dict[str, dict]) -> int:
  """For every fold of the dataset's protocol, with and without a held-out validation split, the train,
  validation and test sets are non-empty and share no subject. Returns the number of folds."""
  subjects = collections.defaultdict(set)
  for record in examples.values():
    subjects[record['split']].add(record['subject'])
  available = protocols.dataset_splits(name, data_dir=str(data_dir))
  num_folds = protocols.num_folds(available)
  for fold in range(num_folds):
    for holdout in (False, True):
      splits = protocols.splits_for(available, fold, holdout_validation=holdout)
      parts = [splits.train, splits.test] + ([splits.validation] if splits.validation else [])
      sets = [set().union(*(subjects[s] for s in part.split('+'))) for part in parts]
      assert all(sets), (fold, holdout, parts)
      for i, a in enumerate(sets):
        for b in sets[i + 1:]:
          assert not a & b, (fold, holdout, a & b)
  return num_folds
