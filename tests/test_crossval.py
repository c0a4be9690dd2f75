"""Cross-validation in one command: exact resume after SIGKILL, subject-independent manifests, results,
the side-by-side report, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from ferjax import crossval, report
from ferjax.data import datasets, protocols

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import REPO, TINY  # noqa: E402

# TINY: 6 steps per fold, checkpoints at steps 2, 4 and 6; the kill below comes at fold 1's first.
FOLDS = TINY


@pytest.fixture(scope='module')
def data_dir(synthetic_tiny):
  return synthetic_tiny


def _args(data_dir, workdir, *extra, **overrides):
  args = [sys.executable, '-m', 'ferjax.crossval', '--config', 'configs/res_rbg.py:synthetic',
          '--workdir', str(workdir), *extra]
  for key, value in {**FOLDS, 'dataset.data_dir': data_dir, **overrides}.items():
    args.append(f'--config.{key}={value}')
  return args


def _run(args):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def _comparable(results):
  return {k: results[k] for k in ('folds', 'summary', 'manifest', 'num_folds', 'protocol', 'class_names')}


def test_three_folds_killed_in_the_second_resume_to_the_same_results(data_dir, tmp_path):
  reference = _run(_args(data_dir, tmp_path / 'a', '--folds', '0,1,2'))
  assert reference.returncode == 0, reference.stderr[-3000:]
  assert '=== Fold 1 (2 of 3' in reference.stdout
  expected = json.loads((tmp_path / 'a' / 'results.json').read_text())

  workdir = tmp_path / 'b'
  process = subprocess.Popen(_args(data_dir, workdir, '--folds', '0,1,2'), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 400
    while not (workdir / 'fold_1' / 'checkpoints' / '2').is_dir():
      assert process.poll() is None, 'the cross-validation ended before fold 1 checkpointed'
      assert time.time() < deadline
      time.sleep(0.01)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert not (workdir / 'fold_1' / 'report.json').exists(), 'killed too late'
  resumed = _run(_args(data_dir, workdir, '--folds', '0,1,2'))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert '(1 finished earlier)' in resumed.stdout and 'Resumed from' in resumed.stdout
  assert _comparable(json.loads((workdir / 'results.json').read_text())) == _comparable(expected)

  # What the results hold.
  s = expected['summary']
  assert s['folds'] == ['0', '1', '2'] and set(expected['folds']) == {'0', '1', '2'}
  wars = [expected['folds'][f]['war'] for f in s['folds']]
  assert s['war']['mean'] == pytest.approx(sum(wars) / 3)
  assert s['pooled']['num_examples'] == sum(expected['folds'][f]['num_examples'] for f in s['folds'])
  assert expected['provenance']['versions']['jax'] and 'git_commit' in expected['provenance']
  assert expected['dataset']['version'] == '1.1.0'
  for name in ('results.md', 'confusion_matrix.png', 'curves.png'):
    assert (tmp_path / 'a' / name).stat().st_size > 100
  assert '**mean ± std**' in (tmp_path / 'a' / 'results.md').read_text()

  # The side-by-side report reads both runs.
  table = report.table([report.load_run(str(tmp_path / d)) for d in ('a', 'b')])
  assert table.count('| res_rbg | synthetic_expressions/tiny | 3/10 |') == 2


def _config(data_dir, **overrides):
  from test_train import _config as train_config  # pylint: disable=import-outside-toplevel
  return train_config(data_dir, **overrides)


def test_bad_input(data_dir, tmp_path):
  result = _run(_args(data_dir, tmp_path, '--folds', '12'))
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'fold(s) [12] out of range: this protocol has 10 folds (0-9)' in result.stderr

  first = crossval.run(_config(data_dir), str(tmp_path), '0')
  with pytest.raises(crossval.CrossvalError, match='train.learning_rate: 0.001 there, 0.5 now'):
    crossval.run(_config(data_dir, **{'train.learning_rate': 0.5}), str(tmp_path), '0')

  # A finished fold's directory deleted by hand: reported, its recorded scores kept, nothing retrained.
  os.rename(tmp_path / 'fold_0', tmp_path / 'elsewhere')
  again = crossval.run(_config(data_dir), str(tmp_path), '0')
  assert not (tmp_path / 'fold_0').exists()
  assert again['folds']['0'] == first['folds']['0']


def test_a_rerun_of_another_config_stops_or_retrains_never_mixes(data_dir, tmp_path):
  # Lengths 6 and 12: runs of two lengths, one compiled train step (its numbers are arguments).
  crossval.run(_config(data_dir), str(tmp_path), '0')
  # Another length: the finished fold would be reported next to folds of 12 steps.
  with pytest.raises(crossval.CrossvalError) as info:
    crossval.run(_config(data_dir, **{'train.num_steps': 12}), str(tmp_path), '0,1')
  message = str(info.value)
  assert 'fold(s) 0 ' in message and 'train.num_steps: 6 there, 12 now' in message
  assert '--retrain 0' in message
  assert not (tmp_path / 'fold_1').exists()  # Stopped before training anything.
  # Cadences, paths and worker counts may change: the finished fold is kept as it is.
  cadences = {'train.log_every_steps': 1, 'train.checkpoint_every_steps': 1, 'input.worker_count': 1}
  kept = crossval.run(_config(data_dir, **cadences), str(tmp_path), '0')
  assert kept['folds']['0']['selection']['step'] == 6
  # --retrain: the old fold is kept aside and trained again with this config.
  retrained = crossval.run(_config(data_dir, **{'train.num_steps': 12}), str(tmp_path), '0', '0')
  assert retrained['folds']['0']['selection']['step'] == 12
  assert [d for d in os.listdir(tmp_path) if d.startswith('fold_0.replaced-')]
  assert retrained['config']['train']['num_steps'] == 12


def test_start_up_reads_only_the_subject_of_each_record(make_sequence_dataset, tmp_path, monkeypatch):
  name, data_dir = make_sequence_dataset(tmp_path, splits={'fold_0': 3, 'fold_1': 2, 'fold_2': 2})
  dataset = datasets.PreparedDataset(name, data_dir, ('anger', 'contempt', 'disgust'),
                                     ('fold_0', 'fold_1', 'fold_2'))
  full_reads = []
  original = datasets.EncodedFrames.__getitem__
  monkeypatch.setattr(datasets.EncodedFrames, '__getitem__',
                      lambda self, i: full_reads.append(i) or original(self, i))
  subjects = crossval._subjects_by_split(dataset)  # pylint: disable=protected-access
  assert subjects == {'fold_0': ['fold_0'], 'fold_1': ['fold_1'], 'fold_2': ['fold_2']}
  assert full_reads == []  # No record was parsed with its frames.


@pytest.mark.parametrize('layout', ['kfold', 'loso', 'afew'])
@pytest.mark.parametrize('holdout', [False, True])
def test_every_fold_manifest_is_subject_independent(layout, holdout):
  splits = {'kfold': [f'fold_{i}' for i in range(10)],
            'loso': [f'subject_{i}' for i in (1, 2, 3, 5, 8, 13)],
            'afew': ['train', 'validation']}[layout]
  # Two subjects per split, as the builders write them (subjects never span splits).
  subjects = {name: [f'{name}/a', f'{name}/b'] for name in splits}
  if layout == 'afew' and holdout:  # A record-level hold-out of train: the subjects each part reads.
    subjects.update({'train[10%:]': ['train/a'], 'train[:10%]': ['train/b']})
  folds = list(range(protocols.num_folds(splits)))
  m = crossval.manifest(splits, subjects, holdout, folds)
  assert sorted(m, key=int) == [str(k) for k in folds]
  for entry in m.values():
    parts = [set(entry[p]['subjects']) for p in ('train', 'validation', 'test')]
    assert not parts[0] & parts[2] and not parts[1] & parts[2] and not parts[0] & parts[1]
    assert set().union(*parts) == {s for v in subjects.values() for s in v}
  # A subject in two splits is a leak, refused with its name.
  leaky = dict(subjects, **{splits[1]: [f'{splits[0]}/a']})
  with pytest.raises(crossval.CrossvalError, match=f"{splits[0]}/a"):
    crossval.manifest(splits, leaky, holdout, folds)


@pytest.mark.parametrize('splits', [['train', 'validation'], ['train', 'validation', 'test']])
def test_datasets_without_subject_ids_use_their_official_splits(splits):
  # AFEW and FER2013 records carry subject '' (unknown): not a subject shared by every split.
  subjects = {name: [''] for name in splits}
  m = crossval.manifest(splits, subjects, False, [0])
  assert m['0']['test']['splits'] == [splits[-1]]
  config = ml_collections.ConfigDict({'dataset': {'holdout_validation': False}})
  assert crossval._protocol_name(splits, config) == {  # pylint: disable=protected-access
      2: 'train / validation', 3: 'official train / validation / test splits'}[len(splits)]


def test_report_of_a_single_run_and_missing_results(tmp_path):
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'report.json').write_text(json.dumps(
      {'war': 0.5, 'uar': 0.25, 'macro_f1': 0.2, 'dataset': 'ck_plus', 'fold': 3}))
  (tmp_path / 'run' / 'config.json').write_text(json.dumps({'model': {'name': 'res_rbg'}}))
  text = report.table([report.load_run(str(tmp_path / 'run'))])
  assert '| res_rbg | ck_plus | fold 3 | 50.00 | 25.00 | 20.00 | 25.00 | 98.10 (Res-RBG' in text
  with pytest.raises(report.ReportError, match='neither results.json'):
    report.load_run(str(tmp_path))
