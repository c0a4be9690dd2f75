"""The Residual Masking Network's recipe as generic features: input normalisation, RAdam, reduce-on-plateau,
early stopping (ferjax.plateau), checkpointed and resumed exactly; configs/rmn.py presets."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from ferjax import config as config_lib
from ferjax import plateau, steps, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rmn_configs():
  spec = importlib.util.spec_from_file_location('rmn_config', os.path.join(REPO, 'configs', 'rmn.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _train_config(**fields):
  return ml_collections.ConfigDict({
      **dict(optimizer='radam', learning_rate=1e-2, weight_decay=0.0, momentum=0.9, grad_clip=0.0,
             schedule='plateau', plateau_patience=2, plateau_factor=0.1, min_learning_rate=1e-4,
             early_stop_patience=0), **fields})


def test_unit_and_imagenet_normalisation():
  frames = jnp.array([0, 51, 255], jnp.uint8).reshape(1, 1, 1, 1, 3)
  unit = steps.normalize_inputs({'frames': frames}, 'unit')['frames']
  np.testing.assert_allclose(unit.ravel(), [0.0, 0.2, 1.0])
  imagenet = steps.normalize_inputs({'frames': frames})['frames']
  np.testing.assert_allclose(imagenet.ravel(), (np.array([0.0, 0.2, 1.0]) - [0.485, 0.456, 0.406])
                             / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
  config = _rmn_configs().get_config('synthetic_images')
  config.dataset.normalization = 'standard'
  with pytest.raises(config_lib.ConfigError, match="dataset.normalization: expected one of 'imagenet', "
                                                   "'unit', found 'standard'"):
    config_lib.validate(config)


def test_plateau_drops_after_patience_bad_evaluations_and_stops_early():
  state = plateau.scale_by_plateau().init(None)
  kwargs = dict(reduce=True, patience=2, factor=0.1, min_scale=0.005)
  scales, since = [], []
  for value in (0.5, 0.6, 0.6, 0.55, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7):
    state = plateau.step_values(state, value, **kwargs)
    scales.append(float(state.scale))
    since.append(int(state.since_best))
  # Improvements at 0.5, 0.6, 0.7 (strictly greater); PyTorch's rule: the third bad evaluation in a
  # row drops the rate and restarts the count; the floor is min_scale.
  np.testing.assert_allclose(scales, [1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.005])
  assert since == [0, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6]
  # Early stopping reads the evaluations since the best, whatever the schedule.
  opt_state = (optax.EmptyState(), state)
  assert plateau.should_stop(opt_state, _train_config(early_stop_patience=6))
  assert not plateau.should_stop(opt_state, _train_config(early_stop_patience=7))
  assert not plateau.should_stop(opt_state, _train_config(early_stop_patience=0))


def test_plateau_scale_multiplies_the_optimizer_updates():
  params = {'w': {'kernel': jnp.array([1.0, -2.0, 3.0])}}
  grads = {'w': {'kernel': jnp.array([0.3, 0.1, -0.2])}}
  config = _train_config(plateau_patience=0)
  tx = steps.make_optimizer(config, total_steps=100, warmup_steps=0)
  reference = steps.make_optimizer(_train_config(schedule='cosine'), 100, 0)
  opt_state = tx.init(params)
  assert plateau.find(reference.init(params)) is None  # no link without plateau or early stopping
  opt_state, observed = plateau.observe(opt_state, 0.5, config)  # first evaluation: the best
  opt_state, observed = plateau.observe(opt_state, 0.4, config)  # patience 0: drops at once
  assert float(observed.scale) == pytest.approx(0.1)
  updates, _ = tx.update(grads, opt_state, params)
  # RAdam's first steps are SGD with momentum (rectification off): update = -lr * scale * grad.
  np.testing.assert_allclose(updates['w']['kernel'], -1e-2 * 0.1 * grads['w']['kernel'], rtol=1e-5)
  cosine = steps.make_optimizer(_train_config(schedule='cosine', early_stop_patience=3), 100, 0)
  link = plateau.find(cosine.init(params))
  assert link is not None  # early stopping alone keeps the counters, never the learning rate:
  _, kept = plateau.observe((link,), 0.5, _train_config(schedule='cosine', early_stop_patience=3))
  _, kept = plateau.observe((kept,), 0.1, _train_config(schedule='cosine', plateau_patience=0,
                                                        early_stop_patience=3))
  assert float(kept.scale) == 1.0 and int(kept.since_best) == 1


# ------------------------------------------------------------------------------------------------
# End to end on synthetic_expressions/images_tiny (train / validation / test, one 32 px frame each).

TINY = {
    'dataset.config': 'images_tiny', 'dataset.image_size': 32, 'input.batch_size': 8,
    'input.eval_batch_size': 14, 'input.worker_count': 0, 'model.width': 2,
    'model.stage_sizes': (1, 1, 1, 1), 'model.mask_depths': (1, 1, 1, 1),
    'train.log_every_steps': 1, 'train.eval_every_steps': 1, 'train.checkpoint_every_steps': 2,
    'train.plateau_patience': 0, 'train.min_learning_rate': 1e-9,
}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _config(data_dir, **overrides):
  config = _rmn_configs().get_config('synthetic_images')
  for key, value in {**TINY, 'dataset.data_dir': data_dir, **overrides}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _records(workdir, split):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [r for r in map(json.loads, lines) if r['split'] == split]


def _state(workdir, step):
  manager = ocp.CheckpointManager(os.fspath(workdir / 'checkpoints'),
                                  item_handlers={'state': ocp.StandardCheckpointHandler()})
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  manager.close()
  return state


def test_resume_mid_plateau_continues_with_the_same_learning_rate(data_dir, tmp_path):
  steps_ = {'train.num_steps': 6, 'train.early_stop_patience': 0}
  config = _config(data_dir, **steps_)
  reference = train.train_and_evaluate(config, str(tmp_path / 'a'))
  scales = [r['learning_rate_scale'] for r in _records(tmp_path / 'a', 'plateau')]
  uars = [r['uar'] for r in _records(tmp_path / 'a', 'validation')]
  assert len(scales) == len(uars) == 6
  # The scales follow the validation UARs by the rule (patience 0: every non-improvement drops x0.1).
  expected, best, scale = [], -np.inf, 1.0
  for uar in uars:
    if uar > best:
      best = uar
    else:
      scale = max(scale * 0.1, config.train.min_learning_rate / config.train.learning_rate)
    expected.append(scale)
  np.testing.assert_allclose(scales, expected, rtol=1e-6)
  # Stop after 4 steps (a checkpoint), then resume to 6: the same trajectory, bit for bit.
  train.train_and_evaluate(_config(data_dir, **{**steps_, 'train.num_steps': 4}), str(tmp_path / 'b'))
  resumed = train.train_and_evaluate(_config(data_dir, **steps_), str(tmp_path / 'b'))
  assert [r['learning_rate_scale'] for r in _records(tmp_path / 'b', 'plateau')][-2:] == scales[-2:]
  a, b = _state(tmp_path / 'a', 6), _state(tmp_path / 'b', 6)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert resumed['confusion_matrix'] == reference['confusion_matrix']


def test_early_stopping_ends_the_run_and_reports_the_best_checkpoint(data_dir, tmp_path):
  # A learning rate of ~0: the validation UAR cannot keep improving, so the run stops early.
  config = _config(data_dir, **{'train.num_steps': 12, 'train.early_stop_patience': 2,
                                'train.learning_rate': 1e-9, 'train.min_learning_rate': 1e-12,
                                'eval.tta_copies': 2})
  report = train.train_and_evaluate(config, str(tmp_path))
  uars = [r['uar'] for r in _records(tmp_path, 'validation')]
  best, since, stop = -np.inf, 0, None
  for i, uar in enumerate(uars, start=1):
    best, since = (uar, 0) if uar > best else (best, since + 1)
    if since >= 2:
      stop = i
      break
  assert stop is not None and stop < 12 and len(uars) == stop
  assert max(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()) == stop
  assert report['selection']['mode'] == 'best_validation_uar'
  assert report['selection']['validation']['uar'] == max(uars)
  assert {'macro_precision', 'macro_roc_auc', 'per_class_roc_auc'} <= set(report)
  # With test-time augmentation the report also scores the plain views, as the papers report both.
  assert '2 rows per sequence' in report['scoring']
  assert report['without_tta']['scoring'] == 'argmax of the sequence class probabilities'
  # Rerunning the finished command does not train on: the stop is part of the checkpointed state.
  again = train.train_and_evaluate(config, str(tmp_path))
  assert len(_records(tmp_path, 'validation')) == stop
  assert again['confusion_matrix'] == report['confusion_matrix']


def test_plateau_without_a_validation_split_is_a_config_error(data_dir, tmp_path):
  config = _config(data_dir, **{'train.num_steps': 1, 'dataset.holdout_validation': False})
  with pytest.raises(config_lib.ConfigError, match='validation split'):
    train.train_and_evaluate(config, str(tmp_path))


def test_presets_validate():
  rmn = _rmn_configs()
  for arg in ('fer2013', 'fer2013,reconstruction', 'synthetic_images', 'ck_plus,fold=3'):
    config_lib.validate(rmn.get_config(arg))
  recipe = rmn.get_config('fer2013')
  assert (recipe.train.optimizer, recipe.train.learning_rate, recipe.train.weight_decay) == ('radam', 1e-4, 1e-3)
  assert (recipe.train.plateau_patience, recipe.train.plateau_factor, recipe.train.min_learning_rate,
          recipe.train.early_stop_patience, recipe.train.num_epochs) == (2, 0.1, 1e-6, 8, 50.0)
  assert recipe.dataset.normalization == 'unit' and recipe.input.batch_size == 48
  # The public code validates without test-time augmentation and reports the test set with 10 copies.
  assert (recipe.eval.tta_copies, recipe.eval.validation_tta_copies) == (10, 0)
  assert rmn.get_config('fer2013,reconstruction').model.reconstruction_weight > 0
  assert rmn.get_config('ck_plus').dataset.num_frames > 1
  with pytest.raises(ValueError, match='preset'):
    rmn.get_config('fer2014')
