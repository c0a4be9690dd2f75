"""End to end: train_and_evaluate on the built-in dataset (tiny config), resume, bad workdirs, NaN."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ferjax import checkpointing, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Overrides that make the quickstart config tiny: the same code path, seconds instead of minutes.
# Runs of this model share their compiled programs through the session's compilation cache
# (tests/conftest.py), whatever their length, learning rate or seed: those are arguments of the compiled
# train step and init (`steps.Optimizer`, `steps.init_sharded_state`).
TINY = {
    'dataset.config': 'tiny', 'dataset.num_frames': 4, 'dataset.image_size': 32,
    'input.batch_size': 8, 'input.eval_batch_size': 8, 'input.worker_count': 0,
    'model.width': 4, 'model.stage_sizes': (1, 1, 1, 1), 'model.hidden': 8, 'model.rbg_blocks': 1,
    'model.bigru_layers': 1,  # One BiGRU layer of the block's 4: a third less to trace, lower, compile.
    'train.num_steps': 6, 'train.log_every_steps': 2, 'train.eval_every_steps': 3,
    'train.checkpoint_every_steps': 2, 'train.warmup_epochs': 0.0,
}


@pytest.fixture(scope='module')
def data_dir(synthetic_tiny):
  return synthetic_tiny


def _config(data_dir, **overrides):
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import res_rbg
  finally:
    sys.path.pop(0)
  config = res_rbg.get_config('synthetic')
  for key, value in {**TINY, 'dataset.data_dir': data_dir, **overrides}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _cli_args(data_dir, workdir, **overrides):
  args = [sys.executable, '-m', 'ferjax.train', '--config', 'configs/res_rbg.py:synthetic',
          '--workdir', str(workdir)]
  for key, value in {**TINY, 'dataset.data_dir': data_dir, **overrides}.items():
    args.append(f'--config.{key}={value}')
  return args


def _final_state(workdir, step, directory='checkpoints'):
  manager = ocp.CheckpointManager(os.path.join(workdir, directory),
                                  item_handlers={'state': ocp.StandardCheckpointHandler()})
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  manager.close()
  return state


def test_train_evaluate_report(data_dir, tmp_path):
  report = train.train_and_evaluate(_config(data_dir), str(tmp_path))
  assert set(report) >= {'war', 'uar', 'macro_f1', 'per_class_recall', 'confusion_matrix'}
  assert report['split'] == 'fold_0' and report['num_examples'] > 0
  assert np.array(report['confusion_matrix']).sum() == report['num_examples']
  # The papers' protocol (the default): train on every non-test fold, report the final model.
  assert report['selection'] == {'mode': 'final', 'step': 6}
  # What is needed to repeat the run.
  p = report['provenance']
  assert p['versions']['jax'] and p['versions']['flax'] and p['devices']['device_count'] >= 1
  assert 'git_commit' in p and p['dataset']['name'] == 'synthetic_expressions/tiny'
  assert p['dataset']['version'] == '1.1.0'
  saved = json.loads((tmp_path / 'report.json').read_text())
  assert saved['war'] == report['war']
  assert (tmp_path / 'confusion_matrix.png').read_bytes()[:4] == b'\x89PNG'
  assert json.loads((tmp_path / 'config.json').read_text())['model']['hidden'] == 8
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['split'] == 'train'] == [2, 4, 6]
  assert not [r for r in records if r['split'] == 'validation']
  assert [r['split'] for r in records][-1] == 'test'
  assert all(np.isfinite(r['loss']) for r in records if r['split'] == 'train')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6']  # max_to_keep=2
  assert not (tmp_path / 'best_checkpoint').exists()


def test_holdout_validation_selects_the_best_validation_checkpoint(data_dir, tmp_path):
  config = _config(data_dir, **{'dataset.holdout_validation': True, 'train.eval_every_steps': 1,
                                'train.num_steps': 6, 'train.learning_rate': 3e-3})
  report = train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  validation = [(r['uar'], r['step']) for r in records if r['split'] == 'validation']
  assert [s for _, s in validation] == [1, 2, 3, 4, 5, 6]
  best_uar, best_step = max(validation)  # Ties go to the later step.
  selection = report['selection']
  assert selection['mode'] == 'best_validation_uar' and selection['validation_split'] == 'fold_1'
  assert (selection['step'], selection['validation']['uar']) == (best_step, best_uar)
  assert report['step'] == 6 and [r['step'] for r in records if r['split'] == 'test'] == [best_step]
  # The test split was evaluated with the selected parameters: re-evaluate them by hand.
  best = _final_state(tmp_path, best_step, directory='best_checkpoint')
  run = train._set_up(config, tmp_path / 'again')
  state = run.state.replace(params=_like(run.state.params, best['params']),
                            model_state=_like(run.state.model_state, best['model_state']))
  again = train.evaluate(run.eval_fn, state, run.eval_batches('fold_0'), run.mesh, ('a',) * 7)
  assert again['confusion_matrix'] == report['confusion_matrix']
  run.checkpointer.close()


def _like(target, restored):
  """Restored nested dicts (string keys) -> the structure of `target`, leaf by leaf in order."""
  return jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(restored))


def test_workdir_of_another_model_is_a_clear_error(data_dir, tmp_path):
  train.train_and_evaluate(_config(data_dir), str(tmp_path))
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r'model\.hidden: 8 in the checkpoint, 16 now'):
    train.train_and_evaluate(_config(data_dir, **{'model.hidden': 16}), str(tmp_path))
  # The other model's checkpoint is untouched.
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6']


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
  # Warm-up makes step 1's learning rate exactly 0 (a finite step, checkpointed); step 2's is ~1e29,
  # which overflows the parameters' norm: the run must stop there and keep checkpoint 1.
  config = _config(data_dir, **{'train.num_steps': 8, 'train.learning_rate': 1e30,
                                'train.warmup_epochs': 1000.0, 'train.checkpoint_every_steps': 1,
                                'train.log_every_steps': 1})
  with pytest.raises(train.TrainingDiverged, match='NaN') as info:
    train.train_and_evaluate(config, str(tmp_path))
  assert 'by step 2' in str(info.value) and 'checkpoint (step 1)' in str(info.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']
  state = _final_state(tmp_path, 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_nan_is_caught_before_a_validation_selects_it(data_dir, tmp_path):
  # Validation at every 2nd step, logging and saving only at the end: the NaN parameters of step 2 must
  # neither become the best checkpoint nor reach the plateau rule.
  config = _config(data_dir, **{'dataset.holdout_validation': True, 'train.num_steps': 8,
                                'train.learning_rate': 1e30, 'train.warmup_epochs': 1000.0,
                                'train.eval_every_steps': 2, 'train.log_every_steps': 100,
                                'train.checkpoint_every_steps': 100})
  with pytest.raises(train.TrainingDiverged, match='by step 2'):
    train.train_and_evaluate(config, str(tmp_path))
  best = tmp_path / 'best_checkpoint'
  assert not best.exists() or not [d for d in os.listdir(best) if d.isdigit()]
  assert not (tmp_path / 'metrics.jsonl').exists() or 'validation' not in (
      tmp_path / 'metrics.jsonl').read_text()


def test_validation_without_tta_and_a_stale_best_checkpoint_moved_aside(data_dir, tmp_path):
  holdout = {'dataset.holdout_validation': True, 'train.num_steps': 2, 'train.eval_every_steps': 2,
             'eval.tta_copies': 2}
  first = train.train_and_evaluate(_config(data_dir, **holdout), str(tmp_path))
  # The test split is scored with the 2 TTA copies, validation (selection) without them.
  assert '2 test-time augmentation copies' in first['scoring']
  assert first['selection']['validation_scoring'] == 'argmax of the sequence class probabilities'
  # A fresh start of another run in the same workdir (its checkpoints removed, another augmentation: a
  # change of the trajectory that needs no new compiled program): the old best checkpoint is moved
  # aside, not compared with, and the report selects from this run.
  shutil.rmtree(tmp_path / 'checkpoints')
  second = train.train_and_evaluate(_config(data_dir, **holdout, **{'augment.flip': False}),
                                    str(tmp_path))
  assert os.listdir(tmp_path / 'best_checkpoint_previous') == ['step_2']
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert second['selection']['step'] == 2
  assert second['selection']['validation']['uar'] == [r['uar'] for r in records
                                                      if r['split'] == 'validation'][-1]
  saved = _final_state(tmp_path, 2, directory='best_checkpoint')
  mine = _final_state(tmp_path, 2)
  for x, y in zip(jax.tree.leaves(saved['params']), jax.tree.leaves(mine['params'])):
    np.testing.assert_array_equal(x, y)


def test_pretrained_backbone_weights(data_dir, tmp_path):
  weights = os.path.join(REPO, 'tests', 'data', 'resnet50_w8.safetensors')
  matching = {'model.backbone': 'resnet50', 'model.width': 8, 'model.stage_sizes': (2, 1, 1, 1), 'model.attention': 'none',
              'init.backbone_weights': weights, 'train.num_steps': 1}
  model = train._init_model(_config(data_dir, **matching), num_classes=7)
  from ferjax.models import convert
  exported = convert.export_resnet(model.backbone)
  expected = convert.read_weights(weights)
  np.testing.assert_array_equal(exported['layer1.0.conv2.weight'], expected['layer1.0.conv2.weight'])
  # A file of another architecture stops the run before anything is compiled, naming the problem.
  with pytest.raises(convert.WeightsMismatchError, match='shape'):
    train.train_and_evaluate(_config(data_dir, **{**matching, 'model.width': 4}), str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_relative_workdir_and_data_dir_from_another_directory(data_dir, tmp_path):
  # Orbax rejects relative checkpoint paths in a background thread; the CLI resolves every path first.
  cwd = tmp_path / 'here'
  cwd.mkdir()
  os.symlink(data_dir, cwd / 'data')
  args = [sys.executable, '-m', 'ferjax.train', '--config', os.path.join(REPO, 'configs/res_rbg.py:synthetic'),
          '--workdir', 'runs/rel']
  overrides = {**TINY, 'dataset.data_dir': 'data', 'train.num_steps': 2, 'train.checkpoint_every_steps': 2}
  args += [f'--config.{k}={v}' for k, v in overrides.items()]
  env = {**os.environ, 'PYTHONPATH': REPO}
  first = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = cwd / 'runs' / 'rel'
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2']
  assert json.loads((workdir / 'config.json').read_text())['dataset']['data_dir'] == str(cwd / 'data')
  # Extending the run resumes from step 2 and checkpoints again, all through relative paths.
  args = [a.replace('train.num_steps=2', 'train.num_steps=6') for a in args]
  second = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resumed from' in second.stdout and 'at step 2' in second.stdout
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['4', '6']
  assert json.loads((workdir / 'report.json').read_text())['step'] == 6
