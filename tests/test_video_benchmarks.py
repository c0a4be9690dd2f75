"""End to end on the dummy copies of RAF-DB, DFEW, FERV39k and MAFW: each builder's dummy data built for
real, then a tiny Res-RBG run (32 px, T = 4, 2 steps) through the command line, `python -m ferjax.train`
on each dataset and `python -m ferjax.crossval` over two of DFEW's released folds; the config presets of
the benchmarks."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from ferjax import config as config_lib
from ferjax import crossval
from tfds_builders import testing
from tfds_builders.dfew import dfew_dataset_builder as dfew
from tfds_builders.ferv39k import ferv39k_dataset_builder as ferv39k
from tfds_builders.mafw import mafw_dataset_builder as mafw
from tfds_builders.raf_db import raf_db_dataset_builder as raf_db

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train import REPO, TINY  # noqa: E402

BUILDERS = os.path.join(REPO, 'tfds_builders')
# name -> (builder module, test config, dummy data).
DATASETS = {
    'raf_db': (raf_db, raf_db.RafDbConfig(name='test', size=100, face_detector='none', keep_jpeg=True,
                                          validation_every=2), 'raf_db/dummy_data'),
    'dfew': (dfew, dfew.DfewConfig(name='test', frame_set='clip_224x224_16f', size=32,
                                   face_detector='none', keep_jpeg=True), 'dfew/dummy_data'),
    'ferv39k': (ferv39k, ferv39k.Ferv39kConfig(name='test', size=32, face_detector='none', keep_jpeg=True,
                                               validation_every=2), 'ferv39k/dummy_data'),
    'mafw': (mafw, mafw.MafwConfig(name='test', source='frames', size=32, max_frames=8),
             'mafw/dummy_data'),
}
STEPS = {**TINY, 'dataset.config': 'test', 'train.num_steps': 2, 'train.eval_every_steps': 2,
         'train.checkpoint_every_steps': 2}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('benchmarks')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('FERJAX_NUM_WORKERS', '1')
    for module, config, dummy in DATASETS.values():
      testing.build(module.Builder, config, out, os.path.join(BUILDERS, dummy))
  return str(out)


def _res_rbg(preset: str):
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import res_rbg  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return res_rbg.get_config(preset)


def _cli(module: str, workdir, data_dir, name: str, *args: str, **overrides) -> str:
  """Runs `python -m <module>` on dummy dataset `name` with the tiny settings; returns its log."""
  command = [sys.executable, '-m', module, '--config', 'configs/res_rbg.py:synthetic', '--workdir',
             str(workdir), *args]
  command += [f'--config.{k}={v}' for k, v in {**STEPS, 'dataset.name': name, 'dataset.data_dir': data_dir,
                                              **overrides}.items()]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout + result.stderr


def test_ferv39k_through_the_cli_reports_each_scene(data_dir, tmp_path):
  log = _cli('ferjax.train', tmp_path, data_dir, 'ferv39k', **{'dataset.holdout_validation': True})
  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['split'] == 'test' and report['num_examples'] == 7
  assert report['selection']['validation_split'] == 'validation'
  # The dummy test split holds scene Action only (7 clips): its row is the whole test set's scores.
  assert list(report['by_scene']) == ['Action']
  scene = report['by_scene']['Action']
  assert scene['num_examples'] == 7 and scene['war'] == report['war'] and scene['uar'] == report['uar']
  table = (tmp_path / 'scenes.md').read_text()
  assert table.startswith('| scene | sequences | WAR (%) | UAR (%) |')
  assert table in log  # The run prints the per-scene table too.


@pytest.mark.parametrize('name', ['dfew', 'mafw', 'raf_db'])
def test_train_cli(name, data_dir, tmp_path):
  # DFEW also scores 2 temporal x 3 spatial test views (eval.temporal_views, eval.spatial_views).
  views = {'eval.temporal_views': 2, 'eval.spatial_views': 3} if name == 'dfew' else {}
  log = _cli('ferjax.train', tmp_path, data_dir, name, **views)
  report = json.loads((tmp_path / 'report.json').read_text())
  expected = {'dfew': ('fold_1', 2, 7), 'mafw': ('fold_1', 2, 11), 'raf_db': ('test', 7, 7)}[name]
  assert (report['split'], report['num_examples'], len(report['class_names'])) == expected
  assert set(report['per_class_recall']) == set(report['class_names'])
  assert 'by_scene' not in report and f'Test ({report["split"]}' in log
  if views:
    assert report['scoring'] == ('argmax of the mean class probabilities of 6 rows per sequence (2 '
                                 'temporal views spread over the sequence x 3 spatial crops (centre and '
                                 'both ends of the longer side))')


def test_crossval_cli_over_dfew_released_folds(data_dir, tmp_path):
  _cli('ferjax.crossval', tmp_path, data_dir, 'dfew', '--folds', '0,4')
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['protocol'] == '5 released folds (not subject-independent)'
  assert sorted(results['folds'], key=int) == ['0', '4']
  manifest = results['manifest']
  assert manifest['0']['test']['splits'] == ['fold_1']
  assert manifest['4']['train']['splits'] == ['fold_1', 'fold_2', 'fold_3', 'fold_4']
  assert [results['folds'][f]['num_examples'] for f in ('0', '4')] == [2, 3]
  assert {'uar', 'war'} <= set(results['summary'])
  assert (tmp_path / 'results.md').read_text().startswith('# Cross-validation: res_rbg on dfew')


def test_crossval_results_have_the_per_scene_table():
  scenes = {'Action': {'num_examples': 3, 'war': 2 / 3, 'uar': 0.5},
            'Talkshow': {'num_examples': 1, 'war': 1.0, 'uar': 1.0}}
  fold = {'war': 0.75, 'uar': 0.75, 'macro_f1': 0.7, 'num_examples': 4, 'split': 'test',
          'confusion_matrix': [[1, 1], [0, 2]], 'per_class_recall': {'angry': 0.5, 'happy': 1.0},
          'by_scene': scenes}
  results = {'summary': crossval.aggregate({'0': fold}, ('angry', 'happy')), 'folds': {'0': fold},
             'model': 'res_rbg', 'dataset': {'name': 'ferv39k'}, 'protocol': 'train -> test',
             'num_folds': 1, 'selection': 'final model',
             'provenance': {'git_commit': 'abc', 'git_dirty': False, 'versions': {'jax': '0', 'flax': '0'},
                            'devices': {'device_count': 1, 'device_kind': 'cpu'}}}
  text = crossval.markdown(results)
  assert ('Fold 0 per scene:\n\n| scene | sequences | WAR (%) | UAR (%) |\n| --- | ---: | ---: | ---: |\n'
          '| Action | 3 | 66.67 | 50.00 |\n| Talkshow | 1 | 100.00 | 100.00 |') in text
  del fold['by_scene']
  assert 'per scene' not in crossval.markdown(results)


def test_benchmark_presets():
  c = _res_rbg('dfew,fold=3,size=112')
  assert (c.dataset.name, c.dataset.config, c.dataset.fold, c.dataset.image_size, c.dataset.num_frames) == (
      'dfew', 'clip_224x224', 2, 112, 16)
  c = _res_rbg('mafw,fold=5')
  assert (c.dataset.name, c.dataset.config, c.dataset.fold) == ('mafw', 'frames', 4)
  c = _res_rbg('ferv39k')
  assert (c.dataset.name, c.dataset.holdout_validation, c.dataset.image_size) == ('ferv39k', True, 224)
  c = _res_rbg('dfew_baseline')
  assert (c.dataset.name, c.dataset.config, c.model.backbone, c.model.attention, c.model.rbg_blocks,
          c.model.bigru_layers, c.model.residual) == (
              'dfew', 'clip_224x224_16f', 'resnet18', 'none', 1, 0, False)
  for preset in ('dfew,fold=1', 'dfew_baseline', 'ferv39k', 'mafw,fold=2,size=112'):
    config_lib.validate(_res_rbg(preset))
  with pytest.raises(ValueError, match='released folds'):
    _res_rbg('dfew,fold=0')


@pytest.mark.parametrize('name, expected', [
    ('dfew', 'EmoLabel_DataSplit'), ('ferv39k', '2_ClipsforFaceCrop'), ('mafw', 'no_caption'),
    ('raf_db', 'list_patition_label.txt')])
def test_wrong_manual_dir_is_one_error_naming_the_layout(name, expected, tmp_path, capsys):
  from tfds_builders import sequence_builder  # pylint: disable=g-import-not-at-top
  (tmp_path / 'copy' / 'videos').mkdir(parents=True)
  (tmp_path / 'copy' / 'readme.txt').write_text('not the dataset')
  code = sequence_builder.main([name, '--manual_dir', str(tmp_path / 'copy'),
                                '--data_dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith('error: found no') and expected in err
  assert 'Traceback' not in err and 'readme.txt' in err  # What the folder holds.
