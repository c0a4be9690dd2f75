"""Evaluation protocols: which TFDS splits form train / validation / test for one fold.

This is the one place that knows the split layouts of DESIGN.md:

* k-fold datasets (CK+, Oulu-CASIA, the synthetic set) expose ``fold_0 .. fold_{k-1}``; fold ``f`` tests on
  ``fold_f``, validates on ``fold_{(f+1) % k}`` when a hold-out validation set is asked for, and trains on
  the rest. Datasets released with numbered folds (DFEW, MAFW: ``set_1 .. set_5``) expose
  ``fold_1 .. fold_k``; fold index ``f`` then tests on ``fold_{f+1}``, the f-th in order, and the rest is
  the same. Their folds are the release's, not drawn by subject: DFEW's and MAFW's are not
  subject-independent.
* leave-one-subject-out datasets (eNTERFACE'05, RML, the micro-expression sets: CASME II, SAMM, SMIC-HS,
  the MEGC2019 composite's 68 subjects) expose ``subject_<id>``; subjects are sorted
  naturally (``subject_2 < subject_10``), fold ``f`` tests on the f-th subject, validates on the next one
  (cyclically) when asked, and trains on the rest.
* AFEW exposes ``train`` and ``validation`` (its test labels are not public); there is one fold: train on
  ``train``, test on ``validation``. With a hold-out validation set, a fixed ``HOLDOUT_PERCENT`` % of
  ``train`` is held out (TFDS split slicing, ``train[:10%]``: the same records on every run, in the
  builder's stored order, which TFDS shuffles by key when it writes the dataset) and the rest trains
  (``train[10%:]``). AFEW records carry no subject ids, so this hold-out is by record, not by subject.
* FER2013, RAF-DB, FERV39k (and the built-in ``synthetic_expressions/images``) expose ``train``,
  ``validation`` and ``test`` (FER2013's Training, PublicTest and PrivateTest; RAF-DB's and FERV39k's
  ``validation`` is carved out of their released train list by the builder); there is one fold and it always tests on ``test``. With a
  hold-out validation set it trains on ``train`` and validates on ``validation`` (the published FER2013
  recipes); without one it trains on ``train+validation``, like every other layout, which trains on all the
  labelled data that is not the test set.

Train sets are TFDS split arithmetic (``'fold_1+fold_2+...'``), so ``tfds.data_source(name, split=...)``
reads them directly.
"""

import dataclasses
import re
from collections.abc import Sequence

import tensorflow_datasets as tfds

_FOLD = re.compile(r'fold_(\d+)')
_SUBJECT = re.compile(r'subject_(.+)')
_TRAIN_VALIDATION = ('train', 'validation')
_TRAIN_VALIDATION_TEST = ('train', 'validation', 'test')
_SINGLE_FOLD = ('train_validation', 'train_validation_test')


# Percentage of AFEW's `train` split held out for validation with `dataset.holdout_validation=True`.
HOLDOUT_PERCENT = 10


class DatasetNotPreparedError(FileNotFoundError):
  """The TFDS dataset has not been built in the given data_dir."""


@dataclasses.dataclass(frozen=True)
class Splits:
  """TFDS split expressions for one fold; ``validation`` is None when no hold-out set is used."""
  train: str
  validation: str | None
  test: str

  def split_names(self) -> list[str]:
    """The plain split names the three expressions cover, in order train, validation, test."""
    parts = [self.train] + ([self.validation] if self.validation else []) + [self.test]
    return [name for part in parts for name in part.split('+')]


def base_split(name: str) -> str:
  """'train[:10%]' -> 'train': the stored split a (possibly sliced) split name reads."""
  return name.split('[', 1)[0]


def _natural_key(name: str) -> list:
  """Sort key that orders embedded numbers numerically: subject_2 < subject_10."""
  return [int(tok) if tok.isdigit() else tok for tok in re.split(r'(\d+)', name)]


def layout(available: Sequence[str]) -> tuple[str, list[str]]:
  """(kind, ordered split names), kind in {'kfold', 'loso', 'train_validation', 'train_validation_test'}."""
  names = list(available)
  if names and all(_FOLD.fullmatch(n) for n in names):
    folds = sorted(names, key=_natural_key)
    # Released folds keep their release's numbering (DFEW's and MAFW's set_1 ... set_5 -> fold_1 ...
    # fold_5); the protocol's fold index is the position in this list either way.
    start = 1 if folds[0] == 'fold_1' else 0
    expected = [f'fold_{i}' for i in range(start, start + len(folds))]
    if folds != expected:
      raise ValueError(f'k-fold splits must be exactly {expected} (numbered from 0 or from 1); found '
                       f'{sorted(names)}')
    return 'kfold', folds
  if names and all(_SUBJECT.fullmatch(n) for n in names):
    return 'loso', sorted(names, key=_natural_key)
  if sorted(names) == sorted(_TRAIN_VALIDATION):
    return 'train_validation', list(_TRAIN_VALIDATION)
  if sorted(names) == sorted(_TRAIN_VALIDATION_TEST):
    return 'train_validation_test', list(_TRAIN_VALIDATION_TEST)
  raise ValueError(
      'unknown split layout: expected fold_0..fold_{k-1}, subject_<id> splits, train+validation, or '
      f'train+validation+test; found {sorted(names)}')


_layout = layout  # Older name, for callers not yet on layout.


def _groups(available: Sequence[str], subject_folds: int) -> tuple[str, list[str]]:
  """(kind, the protocol's fold units): split names, or '+'-joined groups of subject splits."""
  kind, names = layout(available)
  if subject_folds and kind == 'loso':
    if not 2 <= subject_folds <= len(names):
      raise ValueError(f'subject_folds must be in [2, {len(names)}] for {len(names)} subjects; '
                       f'got {subject_folds}')
    # Subject-independent k-fold: the naturally sorted subjects dealt round-robin, [i::k].
    return 'kfold', ['+'.join(names[i::subject_folds]) for i in range(subject_folds)]
  return kind, names


def num_folds(available: Sequence[str], subject_folds: int = 0) -> int:
  """Number of folds the protocol of these splits has (k, number of subjects, or 1 for AFEW / FER2013).

  ``subject_folds=k`` turns a leave-one-subject-out dataset into subject-independent k-fold.
  """
  kind, names = _groups(available, subject_folds)
  return 1 if kind in _SINGLE_FOLD else len(names)


def released_folds(available: Sequence[str]) -> bool:
  """True for folds numbered as their release numbers them (``fold_1 .. fold_k``: DFEW, MAFW); such folds
  are the release's, not drawn by subject, so nothing makes them subject-independent."""
  return _layout(available)[0] == 'kfold' and 'fold_0' not in available


def splits_for(available: Sequence[str], fold: int, holdout_validation: bool = False,
               subject_folds: int = 0) -> Splits:
  """The train / validation / test split expressions of ``fold`` for a dataset with ``available`` splits.

  Args:
    available: the dataset's split names (e.g. from :func:`dataset_splits`).
    fold: which fold, in ``[0, num_folds(available))``.
    holdout_validation: also hold out the next fold / subject as a validation set; for AFEW (train and
      validation only), ``HOLDOUT_PERCENT`` % of ``train``; for train/validation/test datasets, validate
      on ``validation`` instead of training on it.
    subject_folds: 0 keeps leave-one-subject-out; k >= 2 groups the subjects of a LOSO dataset into k
      subject-independent folds (subjects sorted naturally, fold i = subjects [i::k]).

  Returns:
    Splits whose train, validation and test are disjoint and together cover every available split.
  """
  kind, names = _groups(available, subject_folds)
  n = 1 if kind in _SINGLE_FOLD else len(names)
  if not 0 <= fold < n:
    raise ValueError(f'fold must be in [0, {n - 1}] for splits {names}; got {fold}')
  if kind == 'train_validation':
    if holdout_validation:
      return Splits(train=f'train[{HOLDOUT_PERCENT}%:]', validation=f'train[:{HOLDOUT_PERCENT}%]',
                    test='validation')
    return Splits(train='train', validation=None, test='validation')
  if kind == 'train_validation_test':
    if holdout_validation:
      return Splits(train='train', validation='validation', test='test')
    return Splits(train='train+validation', validation=None, test='test')
  if n < (3 if holdout_validation else 2):
    raise ValueError(
        f'{n} split(s) {names} are too few for a train/{"validation/" if holdout_validation else ""}'
        'test protocol')
  test = names[fold]
  validation = names[(fold + 1) % n] if holdout_validation else None
  train = [s for s in names if s not in (test, validation)]
  return Splits(train='+'.join(train), validation=validation, test=test)


def dataset_splits(name: str, data_dir: str | None = None) -> list[str]:
  """The split names of a prepared TFDS dataset.

  Raises:
    DatasetNotPreparedError: the dataset is not built in data_dir; the message says how to build it.
  """
  base, _, config = name.partition('/')
  how = (f'Build it first from your copy of the dataset: `python -m tfds_builders {base} '
         f'--manual_dir <your copy>{f" --config {config}" if config else ""} '
         f'--data_dir {data_dir or "~/tensorflow_datasets"}` (see tfds_builders/{base}/README.md).')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotPreparedError(
        f'dataset {name!r} is neither registered nor prepared in data_dir={data_dir!r}. {how}') from e
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f'dataset {name!r} is not prepared in data_dir={data_dir!r}. {how}')
  return list(builder.info.splits.keys())
