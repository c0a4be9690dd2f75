"""A model family defined in a config file outside the repository works everywhere, with no file of
ferjax edited: it trains, cross-validates (2 folds), predicts on a video and exports.

The family brings its own input (`motion`: the mean absolute change between consecutive sampled frames,
scaled by its own config key `dataset.motion_scale`), its own loss term (`logit_l2`) and its own training
metric (`confidence`), all registered from the config file.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import predict_helpers as helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAMILY_CONFIG = '''
"""Motion toy: per-frame mean colour and the frame-to-frame motion -> MLP -> logits."""
import importlib.util

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from ferjax import checks, losses, registry
from ferjax.data import inputs


def motion(view):
  """float32 [T - 1]: mean |frame t+1 - frame t| of the sampled source frames, times dataset.motion_scale."""
  frames = np.stack([np.asarray(f, np.float32) for f in view.frames])
  change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3)) / 255.0
  return (change * view.options.get('dataset.motion_scale', 1.0)).astype(np.float32)


def random_motion(t, s, rng):
  return rng.uniform(0, 1, (t - 1,)).astype(np.float32)


inputs.register('motion', inputs.Input(motion, lambda t, s: (t - 1,), np.float32, random_motion,
                                       rules={'dataset.motion_scale': checks.number(0, lo_open=True)}))


class MotionToy(nnx.Module):

  def __init__(self, num_classes, hidden, *, rngs):
    self.colour = nnx.Linear(3, hidden, rngs=rngs)
    self.motion = nnx.Linear(1, hidden, rngs=rngs)
    self.head = nnx.Linear(2 * hidden, num_classes, rngs=rngs)

  def __call__(self, batch, *, train=False, rngs=None):
    colour = nnx.relu(self.colour(batch['frames'].mean(axis=(2, 3)))).mean(axis=1)
    moving = nnx.relu(self.motion(batch['motion'][..., None])).mean(axis=1)
    return {'logits': self.head(jnp.concatenate([colour, moving], -1))}


def make_losses(config):
  return losses.Loss((
      ('cross_entropy', 1.0, losses.cross_entropy(config.train.label_smoothing)),
      ('logit_l2', config.model.logit_l2, lambda outputs, batch, params: jnp.mean(outputs['logits'] ** 2))))


def confidence(outputs, batch):
  return jnp.mean(jnp.max(jax.nn.softmax(outputs['logits']), axis=-1))


registry.register(registry.Family(
    name='motion_toy',
    schema={'hidden': checks.number(1, integer=True), 'logit_l2': checks.number(0)},
    from_config=lambda c, num_classes, rngs: MotionToy(num_classes, c.hidden, rngs=rngs),
    inputs=('frames', 'motion'),
    losses=make_losses,
    metrics=lambda config: {'confidence': confidence}))


def get_config(arg=None):
  spec = importlib.util.spec_from_file_location('ferjax_configs_common', 'REPO/configs/common.py')
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)

  def synthetic():
    c = common.base()
    c.dataset.name = 'synthetic_expressions'
    c.dataset.motion_scale = 10.0
    c.model.name = 'motion_toy'
    c.model.hidden = 8
    c.model.logit_l2 = 0.01
    return c
  return common.parse(arg, presets={'synthetic': synthetic}, default='synthetic')
'''

TINY = {'dataset.config': 'tiny', 'dataset.num_frames': 4, 'dataset.image_size': 32,
        'input.batch_size': 8, 'input.eval_batch_size': 8, 'input.worker_count': 0,
        'train.num_steps': 3, 'train.log_every_steps': 1, 'train.checkpoint_every_steps': 3,
        'train.eval_every_steps': 3, 'train.warmup_epochs': 0.0}


@pytest.fixture(scope='module')
def family_config(tmp_path_factory):
  """The config file, in a folder outside the repository."""
  path = tmp_path_factory.mktemp('elsewhere') / 'motion_toy.py'
  path.write_text(FAMILY_CONFIG.replace('REPO', REPO))
  return str(path)


def _cli(module, *args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', f'ferjax.{module}', *args], cwd=cwd, capture_output=True,
                        text=True, timeout=600, env={**os.environ, 'PYTHONPATH': REPO})


def _overrides(data_dir, **extra):
  return [f'--config.{k}={v}' for k, v in {**TINY, 'dataset.data_dir': data_dir, **extra}.items()]


@pytest.fixture(scope='module')
def trained(family_config, synthetic_tiny, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('motion_run') / 'run'
  # One grain worker process: it computes the family's input from the config file's function, which
  # it cannot import by name (ferjax.data.inputs pickles such functions by value).
  run = _cli('train', '--config', f'{family_config}:synthetic', '--workdir', str(workdir),
             *_overrides(synthetic_tiny, **{'input.worker_count': 1}))
  assert run.returncode == 0, run.stderr[-3000:]
  return workdir


def test_trains_with_its_own_input_loss_term_and_metric(trained):
  records = [json.loads(line) for line in (trained / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train] == [1, 2, 3]
  for r in train:  # Its loss term and its metric, logged by name; the total is the weighted sum.
    np.testing.assert_allclose(r['loss'], r['loss/cross_entropy'] + 0.01 * r['loss/logit_l2'], rtol=1e-5)
    assert r['loss/logit_l2'] > 0
    assert 1 / 7 - 1e-6 <= r['metric/confidence'] <= 1.0  # A mean max-probability over 7 classes.
  config = json.loads((trained / 'config.json').read_text())
  assert config['model'] == {'name': 'motion_toy', 'hidden': 8, 'logit_l2': 0.01}
  assert config['dataset']['motion_scale'] == 10.0
  assert json.loads((trained / 'report.json').read_text())['step'] == 3


def test_its_input_reads_its_own_config_key(family_config, synthetic_tiny, tmp_path):
  """A bad value of the input's key is a one-line error naming it, before anything is built."""
  run = _cli('train', '--config', f'{family_config}:synthetic', '--workdir', str(tmp_path / 'w'),
             *_overrides(synthetic_tiny, **{'dataset.motion_scale': -1.0}))
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
      'error: config.dataset.motion_scale: expected a number > 0, found -1.0')


def test_cross_validates_two_folds(family_config, synthetic_tiny, tmp_path):
  workdir = tmp_path / 'cv'
  run = _cli('crossval', '--config', f'{family_config}:synthetic', '--workdir', str(workdir),
             '--folds', '0,1', *_overrides(synthetic_tiny, **{'train.num_steps': 2,
                                                               'train.checkpoint_every_steps': 2}))
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert sorted(results['folds']) == ['0', '1'] and results['summary']['folds'] == ['0', '1']
  assert results['model'] == 'motion_toy'
  for fold in (0, 1):
    report = json.loads((workdir / f'fold_{fold}' / 'report.json').read_text())
    assert report['step'] == 2 and report['num_examples'] > 0


# Needs ferjax.inference (a run records how to import its family; predict and export import it from
# there): strict, so the mark must go when that lands.
@pytest.mark.xfail(strict=True, reason="predict/export cannot yet import a family the run's workdir "
                   'records (ferjax.inference)')
def test_predicts_on_a_video_and_exports(trained, tmp_path):
  """predict and export load the family the run recorded, in processes that never saw the config file."""
  video = helpers.write_video(tmp_path / 'happy.avi', helpers.face_frames('happiness', 8, size=32))
  run = _cli('predict', '--workdir', str(trained), video, '--crop', 'frame', '--json',
             str(tmp_path / 'p.json'), '--quiet', cwd=tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads((tmp_path / 'p.json').read_text())['results'][0]
  scored = [w for w in result['windows'] if w['probs'] is not None]
  assert scored and all(abs(sum(w['probs'].values()) - 1) < 1e-5 for w in scored)

  artifact = tmp_path / 'motion.ferjax'
  run = _cli('export', '--workdir', str(trained), '--format', 'jax', '--output', str(artifact),
             cwd=tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  from ferjax import serving  # pylint: disable=import-outside-toplevel
  model = serving.load(artifact)
  assert model.inputs == ('frames', 'motion')
  # The input's own config key travels with the model: predict computes `motion` as training did.
  assert model.metadata['preprocessing']['input_options'] == {'dataset.motion_scale': 10.0}
  rng = np.random.default_rng(0)
  probs = model.predict(rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8),
                        motion=rng.uniform(0, 1, (2, 3)).astype(np.float32))
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)
