"""Tests for ferjax.data.protocols: disjoint, covering splits for every fold of every protocol."""

import pytest
import tensorflow_datasets as tfds

from ferjax.data import protocols

LAYOUTS = {
    'kfold10': [f'fold_{i}' for i in range(10)],
    'loso8': [f'subject_{i}' for i in range(1, 9)],
    'loso43': [f'subject_{i}' for i in range(1, 44)],
    'afew': ['validation', 'train'],
    'fer2013': ['test', 'train', 'validation'],
}
SINGLE_FOLD = ('afew', 'fer2013')


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('holdout', [False, True])
def test_every_fold_is_disjoint_and_covering(layout, holdout):
  available = LAYOUTS[layout]
  n = protocols.num_folds(available)
  assert n == (1 if layout in SINGLE_FOLD else len(available))
  tests = []
  for fold in range(n):
    s = protocols.splits_for(available, fold, holdout)
    train, test = s.train.split('+'), s.test.split('+')
    validation = s.validation.split('+') if s.validation else []
    assert not set(train) & set(test)
    assert not set(train) & set(validation) and not set(validation) & set(test)
    names = s.split_names()
    assert len(set(names)) == len(names)  # no duplicates
    assert sorted({protocols.base_split(n) for n in names}) == sorted(available)  # union is everything
    assert bool(validation) == holdout
    tests.append(s.test)
  if layout not in SINGLE_FOLD:
    assert sorted(tests) == sorted(available)  # every split is the test set exactly once


def test_kfold_assignment():
  s = protocols.splits_for(LAYOUTS['kfold10'], 9, holdout_validation=True)
  assert s == protocols.Splits(
      train='+'.join(f'fold_{i}' for i in range(1, 9)), validation='fold_0', test='fold_9')
  assert protocols.splits_for(['fold_1', 'fold_0', 'fold_2'], 0).train == 'fold_1+fold_2'


def test_released_folds_numbered_from_one():
  """DFEW / MAFW keep their release's set_1 .. set_5 as fold_1 .. fold_5: fold index f tests on the
  (f+1)-th and trains on the other four."""
  available = [f'fold_{i}' for i in range(1, 6)]
  assert protocols.num_folds(available) == 5
  assert protocols.splits_for(available, 0) == protocols.Splits(
      train='fold_2+fold_3+fold_4+fold_5', validation=None, test='fold_1')
  assert protocols.splits_for(available, 4, holdout_validation=True) == protocols.Splits(
      train='fold_2+fold_3+fold_4', validation='fold_1', test='fold_5')
  with pytest.raises(ValueError, match=r"exactly \['fold_1', 'fold_2', 'fold_3'\]"):
    protocols.splits_for(['fold_1', 'fold_2', 'fold_4'], 0)
  assert protocols.released_folds(available)
  assert not protocols.released_folds([f'fold_{i}' for i in range(5)])
  assert not protocols.released_folds(['train', 'validation', 'test'])


def test_subjects_sort_naturally():
  available = ['subject_10', 'subject_2', 'subject_1']
  assert [protocols.splits_for(available, f).test for f in range(3)] == [
      'subject_1', 'subject_2', 'subject_10']
  assert protocols.splits_for(available, 1, True).validation == 'subject_10'


def test_afew():
  assert protocols.splits_for(['train', 'validation'], 0) == protocols.Splits(
      train='train', validation=None, test='validation')
  # A hold-out validation set: a fixed 10 % of train (by record), never the test split.
  assert protocols.splits_for(['train', 'validation'], 0, True) == protocols.Splits(
      train='train[10%:]', validation='train[:10%]', test='validation')


def test_afew_holdout_reads_disjoint_records_covering_train(make_sequence_dataset, tmp_path):
  name, data_dir = make_sequence_dataset(tmp_path, splits={'train': 20, 'validation': 4})
  s = protocols.splits_for(protocols.dataset_splits(name, data_dir), 0, holdout_validation=True)
  ids = {part: [str(r['sequence_id']) for r in tfds.data_source(name, split=split, data_dir=data_dir)]
         for part, split in (('train', s.train), ('validation', s.validation), ('all', 'train'))}
  assert len(ids['validation']) == 2 and len(ids['train']) == 18
  assert not set(ids['train']) & set(ids['validation'])
  assert sorted(ids['train'] + ids['validation']) == sorted(ids['all'])
  again = [str(r['sequence_id']) for r in tfds.data_source(name, split=s.validation, data_dir=data_dir)]
  assert again == ids['validation']  # The same records every time.


@pytest.mark.parametrize('holdout, expected', [
    (True, protocols.Splits(train='train', validation='validation', test='test')),
    # Without a hold-out set, train on all labelled non-test data (as the k-fold protocols do).
    (False, protocols.Splits(train='train+validation', validation=None, test='test')),
])
def test_train_validation_test(holdout, expected):
  """FER2013: Training -> train, PublicTest -> validation, PrivateTest -> test; one fold."""
  for available in (['train', 'validation', 'test'], ['validation', 'test', 'train']):
    assert protocols.num_folds(available) == 1
    assert protocols.splits_for(available, 0, holdout) == expected
  with pytest.raises(ValueError, match=r'fold must be in \[0, 0\]'):
    protocols.splits_for(['train', 'validation', 'test'], 1, holdout)


@pytest.mark.parametrize('available, fold, match', [
    (LAYOUTS['kfold10'], 10, r'fold must be in \[0, 9\]'),
    (LAYOUTS['loso8'], -1, r'fold must be in \[0, 7\]'),
    (['train', 'validation'], 1, r'\[0, 0\]'),
    (['fold_0', 'fold_2'], 0, r"exactly \['fold_0', 'fold_1'\]"),
    (['train', 'test'], 0, r"unknown split layout.*\['test', 'train'\]"),
    (['train', 'validation', 'test', 'extra'], 0, 'unknown split layout'),
    (['fold_0', 'subject_1'], 0, 'unknown split layout'),
    ([], 0, 'unknown split layout'),
])
def test_bad_input(available, fold, match):
  with pytest.raises(ValueError, match=match):
    protocols.splits_for(available, fold)


def test_too_few_for_holdout():
  with pytest.raises(ValueError, match='too few'):
    protocols.splits_for(['fold_0', 'fold_1'], 0, holdout_validation=True)


def test_data_level_subjects_disjoint(tmp_path, make_sequence_dataset):
  splits = {f'subject_{i}': 2 for i in (1, 2, 10)}
  name, data_dir = make_sequence_dataset(tmp_path, splits=splits)
  available = protocols.dataset_splits(name, data_dir)
  assert sorted(available) == sorted(splits)
  for fold in range(protocols.num_folds(available)):
    s = protocols.splits_for(available, fold, holdout_validation=True)
    subjects = {}
    for part in ('train', 'validation', 'test'):
      source = tfds.data_source(name, split=getattr(s, part), data_dir=data_dir)
      subjects[part] = {source[i]['subject'] for i in range(len(source))}
    assert not subjects['train'] & subjects['test']
    assert not subjects['validation'] & (subjects['train'] | subjects['test'])
    assert len(subjects['train']) == 1 and subjects['test'] == {s.test.encode()}


def test_dataset_not_prepared(tmp_path, make_sequence_dataset):
  with pytest.raises(protocols.DatasetNotPreparedError, match=r'no_such_set.*python -m tfds_builders no_such_set --manual_dir'):
    protocols.dataset_splits('no_such_set', str(tmp_path))
  name, data_dir = make_sequence_dataset(tmp_path / 'a')
  with pytest.raises(protocols.DatasetNotPreparedError, match='not prepared'):
    # Registered builder, empty data_dir (the test builder reads its spec there, so copy it over).
    (tmp_path / 'b').mkdir()
    (tmp_path / 'b' / 'ferjax_test_sequences.json').write_text(
        (tmp_path / 'a' / 'ferjax_test_sequences.json').read_text())
    protocols.dataset_splits(name, str(tmp_path / 'b'))


@pytest.mark.parametrize('holdout', [False, True])
def test_subject_independent_k_fold_over_a_loso_dataset(holdout):
  subjects = [f'subject_{i}' for i in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13)]
  assert protocols.num_folds(subjects) == 12 and protocols.num_folds(subjects, subject_folds=5) == 5
  seen_test = []
  for fold in range(5):
    s = protocols.splits_for(subjects, fold, holdout, subject_folds=5)
    test = s.test.split('+')
    # Naturally sorted subjects dealt round-robin: fold 0 = 1st, 6th, 11th subject.
    assert test == sorted(subjects, key=protocols._natural_key)[fold::5]
    parts = [set(p.split('+')) for p in (s.train, s.validation or '', s.test) if p]
    assert sum(map(len, parts)) == len(subjects) and set().union(*parts) == set(subjects)
    assert bool(s.validation) == holdout
    seen_test += test
  assert sorted(seen_test) == sorted(subjects)  # Every subject is tested exactly once.
  with pytest.raises(ValueError, match=r'subject_folds must be in \[2, 12\]'):
    protocols.splits_for(subjects, 0, subject_folds=13)
  # k-fold datasets ignore subject_folds (their folds are already subject-independent).
  assert protocols.num_folds([f'fold_{i}' for i in range(10)], subject_folds=5) == 10


@pytest.mark.parametrize('holdout', [False, True])
def test_data_level_train_validation_test(tmp_path, make_sequence_dataset, holdout):
  """A FER2013-like dataset of one-frame records: the expressions read exactly the splits they name."""
  splits = {'train': 5, 'validation': 2, 'test': 3}
  name, data_dir = make_sequence_dataset(tmp_path, splits=splits, min_frames=1, max_frames=1)
  available = protocols.dataset_splits(name, data_dir)
  assert protocols.num_folds(available) == 1
  s = protocols.splits_for(available, 0, holdout_validation=holdout)
  read = {}
  for part in ('train', 'validation', 'test'):
    expression = getattr(s, part)
    source = tfds.data_source(name, split=expression, data_dir=data_dir) if expression else []
    read[part] = sorted(source[i]['subject'].decode() for i in range(len(source)))
    assert all(source[i]['num_frames'] == 1 for i in range(len(source)))
  assert read['test'] == ['test'] * 3
  if holdout:
    assert read == {'train': ['train'] * 5, 'validation': ['validation'] * 2, 'test': ['test'] * 3}
  else:
    assert read['train'] == ['train'] * 5 + ['validation'] * 2 and read['validation'] == []


def test_builtin_image_dataset_is_prepared_on_first_use(tmp_path):
  """datasets.prepare builds synthetic_expressions/images_tiny (train/validation/test, one frame per
  record) and its test split feeds the pipeline with T = 1, as an image model (RMN) uses it."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ferjax.data import augment, datasets, pipeline  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(
      {'name': 'synthetic_expressions', 'config': 'images_tiny', 'data_dir': str(tmp_path)})
  dataset = datasets.prepare(config)
  assert sorted(dataset.split_names) == ['test', 'train', 'validation']
  assert len(dataset.class_names) == 7
  splits = protocols.splits_for(dataset.split_names, 0, holdout_validation=True)
  source = dataset.source(splits.test)
  assert len(source) == 14
  batches = list(pipeline.eval_batches(source, num_frames=1, image_size=32,
                                       options=augment.AugmentOptions(), batch_size_per_host=8))
  assert [b['frames'].shape for b in batches] == [(8, 1, 32, 32, 3)] * 2
  assert sum(int(b['mask'].sum()) for b in batches) == 14
