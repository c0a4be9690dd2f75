"""End to end on the dummy copies of RAF-DB, DFEW, FERV39k and MAFW: each builder's dummy data built for
real, then a tiny Res-RBG run (32 px, T = 4, 2 steps) through `python -m ferjax.train` or
`train_and_evaluate`, and a cross-validation over DFEW's released folds; the config presets of the
benchmarks."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from ferjax import config as config_lib
from ferjax import crossval
from ferjax import train
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


def _tiny(name, data_dir):
  config = _res_rbg('synthetic')
  with config.unlocked():
    for key, value in {**STEPS, 'dataset.name': name, 'dataset.data_dir': data_dir}.items():
      section, field = key.split('.')
      config[section][field] = value
  return config


def test_ferv39k_through_the_cli_reports_each_scene(data_dir, tmp_path):
  args = [sys.executable, '-m', 'ferjax.train', '--config', 'configs/res_rbg.py:synthetic',
          '--workdir', str(tmp_path)]
  args += [f'--config.{k}={v}' for k, v in {**STEPS, 'dataset.name': 'ferv39k',
                                            'dataset.data_dir': data_dir,
                                            'dataset.holdout_validation': True}.items()]
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['split'] == 'test' and report['num_examples'] == 7
  assert report['selection']['validation_split'] == 'validation'
  # The dummy test split holds scene Action only (7 clips): its row is the whole test set's scores.
  assert list(report['by_scene']) == ['Action']
  scene = report['by_scene']['Action']
  assert scene['num_examples'] == 7 and scene['war'] == report['war'] and scene['uar'] == report['uar']
  assert (tmp_path / 'scenes.md').read_text().startswith('| scene | sequences | WAR (%) | UAR (%) |')


@pytest.mark.parametrize('name', ['raf_db', 'mafw'])
def test_tiny_run(name, data_dir, tmp_path):
  report = train.train_and_evaluate(_tiny(name, data_dir), str(tmp_path))
  expected = {'raf_db': ('test', 7, 7), 'mafw': ('fold_1', 2, 11)}[name]
  assert (report['split'], report['num_examples'], len(report['class_names'])) == expected
  assert set(report['per_class_recall']) == set(report['class_names'])
  assert 'by_scene' not in report


def test_crossval_over_dfew_released_folds(data_dir, tmp_path):
  results = crossval.run(_tiny('dfew', data_dir), str(tmp_path), folds='0,4')
  assert results['protocol'] == '5 released folds (not subject-independent)'
  assert sorted(results['folds'], key=int) == ['0', '4']
  manifest = results['manifest']
  assert manifest['0']['test']['splits'] == ['fold_1']
  assert manifest['4']['train']['splits'] == ['fold_1', 'fold_2', 'fold_3', 'fold_4']
  assert [results['folds'][f]['num_examples'] for f in ('0', '4')] == [2, 3]
  assert {'uar', 'war'} <= set(results['summary'])


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
