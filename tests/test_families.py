"""A model family added from a test file alone: a config file that defines, registers and configures it.

The toy family has two inputs (`frames` and `frame_positions`) and an auxiliary loss term; it trains
through `python -m ferjax.train` with no edit to the trainer, steps, config validation or pipeline.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOY_CONFIG = '''
"""Toy family: mean colour of every frame + where the frame lies in time -> MLP -> logits."""
import importlib.util

from flax import nnx
import jax.numpy as jnp

from ferjax import config as config_lib, losses, models


class Toy(nnx.Module):

  def __init__(self, num_classes, hidden, *, rngs):
    self.colour = nnx.Linear(3, hidden, rngs=rngs)
    self.time = nnx.Linear(1, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, batch, *, train=False, rngs=None):
    x = batch['frames'].mean(axis=(2, 3))  # [B, T, 3], normalised on the device.
    t = batch['frame_positions'][..., None]  # [B, T, 1]
    h = nnx.relu(self.colour(x) + self.time(t)).mean(axis=1)
    return {'logits': self.head(h), 'activity': jnp.square(h).mean(axis=-1)}


def toy_losses(config):
  return losses.Loss((
      ('cross_entropy', 1.0, losses.cross_entropy(config.train.label_smoothing)),
      ('activity', config.model.activity_weight, losses.output_mean('activity'))))


models.register(models.Family(
    name='toy',
    schema={'hidden': config_lib.number(1, integer=True), 'activity_weight': config_lib.number(0)},
    from_config=lambda c, num_classes, rngs: Toy(num_classes, c.hidden, rngs=rngs),
    inputs=('frames', 'frame_positions'),
    losses=toy_losses))


def get_config(arg=None):
  spec = importlib.util.spec_from_file_location('common_config', 'REPO/configs/common.py')
  common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(common)
  c = common.base()  # Dataset, input, augment, train, mesh and eval sections.
  c.dataset.name = 'synthetic_expressions'
  c.model = dict(name='toy', hidden=16, activity_weight=0.1)
  return c
'''

TINY = {'dataset.config': 'tiny', 'dataset.num_frames': 4, 'dataset.image_size': 16,
        'input.batch_size': 8, 'input.eval_batch_size': 8, 'input.worker_count': 0,
        'train.num_steps': 4, 'train.log_every_steps': 1, 'train.checkpoint_every_steps': 2,
        'train.warmup_epochs': 0.0}


def test_toy_family_from_a_config_file_trains_through_the_cli(tmp_path, synthetic_tiny):
  config_file = tmp_path / 'toy.py'
  config_file.write_text(TOY_CONFIG.replace('REPO', REPO))
  workdir = tmp_path / 'run'
  args = [sys.executable, '-m', 'ferjax.train', '--config', str(config_file), '--workdir', str(workdir),
          f'--config.dataset.data_dir={synthetic_tiny}']  # The session's build (tests/conftest.py).
  args += [f'--config.{k}={v}' for k, v in TINY.items()]
  run = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'cross_entropy' in run.stdout and 'activity' in run.stdout  # Every term on the console.
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train] == [1, 2, 3, 4]
  for r in train:  # ... and in metrics.jsonl, by name, summing to the logged total.
    np.testing.assert_allclose(r['loss'], r['loss/cross_entropy'] + 0.1 * r['loss/activity'], rtol=1e-5)
    assert r['loss/activity'] > 0
  report = json.loads((workdir / 'report.json').read_text())
  assert report['num_examples'] > 0 and report['step'] == 4
  assert json.loads((workdir / 'config.json').read_text())['model'] == {
      'name': 'toy', 'hidden': 16, 'activity_weight': 0.1}


def test_toy_family_config_is_validated_by_its_schema(tmp_path):
  config_file = tmp_path / 'toy.py'
  config_file.write_text(TOY_CONFIG.replace('REPO', REPO))
  args = [sys.executable, '-m', 'ferjax.train', '--config', str(config_file),
          '--workdir', str(tmp_path / 'run'), '--config.model.hidden=0']
  run = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].endswith('config.model.hidden: expected an integer >= 1, '
                                                      'found 0')


def test_a_key_another_family_owns_is_named_with_its_owner(tmp_path):
  """A config built from Res-RBG's keeps Res-RBG's random-masking keys, which the toy family does not
  read: the error names the key and the family that owns it."""
  config_file = tmp_path / 'toy.py'
  config_file.write_text(TOY_CONFIG.replace('REPO', REPO).replace(
      "  c.model = dict(name='toy'", "  c.augment.mask_prob = 0.5\n  c.model = dict(name='toy'"))
  args = [sys.executable, '-m', 'ferjax.train', '--config', str(config_file),
          '--workdir', str(tmp_path / 'run')]
  run = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1] == (
      "error: config key 'augment.mask_prob' is read by family 'dcn_cbam', family 'mhca', family 'res_rbg', "
      "not by 'toy'; remove it "
      '(configs/common.py holds the keys every family reads)')
