"""What the builders of datasets with released split files share (RAF-DB, DFEW, FERV39k, MAFW).

* :func:`holdout_validation`: a deterministic validation share carved out of a train split, stratified by
  class (every k-th item of each class, ordered by the CRC-32 of its id: stable across machines and
  file-system orders, unrelated to the numbering);
* :func:`fold_train_mismatch`: the check that the train list a release ships for fold k is exactly the
  union of the other folds' test lists (the k-fold protocol the builders expose);
* :func:`reconcile`: listed-but-absent and present-but-unlisted sequences, counted for the metadata.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
import zlib
from typing import Any, TypeVar

T = TypeVar('T')


def holdout_rank(name: str) -> tuple[int, str]:
  """Sort key of a train item for the validation share: CRC-32 of its id, then the id."""
  return zlib.crc32(name.encode()), name


def holdout_validation(items: Sequence[T], every: int, key: Callable[[T], str],
                       group: Callable[[T], str]) -> set[str]:
  """Keys of every ``every``-th item of each group (class), ordered by :func:`holdout_rank`.

  ``every`` = 8 holds out 1/8 of each class (rounded down), as fer2013's image-folder form does.
  """
  if every < 2:
    raise ValueError(f'the validation share needs every >= 2, got {every}')
  by_group: dict[str, list[str]] = {}
  for item in items:
    by_group.setdefault(group(item), []).append(key(item))
  picked = set()
  for keys in by_group.values():
    ordered = sorted(keys, key=holdout_rank)
    picked.update(ordered[every - 1::every])
  return picked


def fold_train_mismatch(test_sets: Mapping[str, Iterable[str]],
                        train_sets: Mapping[str, Iterable[str]]) -> dict[str, dict[str, list[str]]]:
  """For each fold whose released train list differs from the union of the other folds' test lists: the
  ids only in the released train list (``'only_in_train_file'``) and only in the other folds
  (``'only_in_other_folds'``). Empty when the release is a proper k-fold partition."""
  tests = {fold: set(ids) for fold, ids in test_sets.items()}
  out = {}
  for fold, train in train_sets.items():
    released = set(train)
    others = set().union(*(ids for f, ids in tests.items() if f != fold))
    if released != others:
      out[fold] = {'only_in_train_file': sorted(released - others)[:20],
                   'only_in_other_folds': sorted(others - released)[:20],
                   'num_only_in_train_file': len(released - others),
                   'num_only_in_other_folds': len(others - released)}
  return out


def reconcile(listed: Iterable[str], present: Iterable[str]) -> dict[str, Any]:
  """Counts (and the first 100 ids) of sequences listed in the split files but absent on disk, and present
  on disk but listed in no split file."""
  listed, present = set(listed), set(present)
  absent, unlisted = sorted(listed - present), sorted(present - listed)
  return {'num_listed_but_absent': len(absent), 'listed_but_absent': absent[:100],
          'num_present_but_unlisted': len(unlisted), 'present_but_unlisted': unlisted[:100]}
