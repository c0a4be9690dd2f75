"""ferjax.inference.run: the checkpoint a run selects, what a run records (run.json) and how a model
family defined outside the repository is imported from it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from ferjax import models, predict, train
from ferjax.data import datasets, protocols
from ferjax.inference import run as run_lib

sys.path.insert(0, os.path.dirname(__file__))
import predict_helpers as helpers  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, synthetic_tiny):
  return helpers.shared_run(tmp_path_factory, 'res_rbg_6_steps', helpers.train_tiny_run, synthetic_tiny)


def _params(tree) -> dict:
  """'backbone/conv1/kernel' -> array of a restored state's params (nnx's 'value' leaves dropped)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree['params'])[0]
  return {'/'.join(str(k.key) for k in path if k.key != 'value'): np.asarray(v) for path, v in leaves}


def test_init_checkpoint_restores_the_checkpoint_the_run_selected(run_dir, tmp_path):
  """A run whose best_checkpoint/ (step 3) is older than its latest checkpoint (step 6): the trainer's
  init.checkpoint takes best_checkpoint/, as predict and export do, not the newest step."""
  run = tmp_path / 'run'
  shutil.copytree(run_dir, run)
  with ocp.StandardCheckpointer() as checkpointer:
    latest = checkpointer.restore(run / 'checkpoints' / '6' / 'state')
    best = {**latest, 'params': jax.tree.map(lambda x: np.asarray(x) * 0.5, latest['params'])}
    checkpointer.save(run / 'best_checkpoint' / '3' / 'state', best)
    checkpointer.wait_until_finished()
  assert run_lib.select_checkpoint(run)[0] == run / 'best_checkpoint' / '3'
  config = helpers.tiny_config('')
  config.init.checkpoint = str(run)
  model = train._init_model(config, 7)  # pylint: disable=protected-access
  loaded = {'/'.join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  expected, newest = _params(best), _params(latest)
  assert loaded.keys() == expected.keys()
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)
  assert any(np.abs(newest[k]).sum() > 0 and not np.array_equal(loaded[k], newest[k]) for k in loaded)


def test_run_records_the_training_sequences_typical_length(run_dir, synthetic_tiny, tmp_path, capsys):
  """run.json holds the median frame count of the training split's sequences (by hand from the
  dataset), and predict's default window is that length."""
  info = run_lib.read_info(run_dir)
  config = json.loads(open(os.path.join(run_dir, 'config.json')).read())
  datasets._register_builder('synthetic_expressions')  # pylint: disable=protected-access
  splits = protocols.splits_for(protocols.dataset_splits('synthetic_expressions/tiny', synthetic_tiny),
                                config['dataset']['fold'], False, 0)
  source = tfds.data_source('synthetic_expressions/tiny', split=splits.train, data_dir=synthetic_tiny)
  lengths = sorted(int(source[i]['num_frames']) for i in range(len(source)))
  assert info['sequence_length'] == {'median': int(round(float(np.median(lengths)))), 'min': lengths[0],
                                     'max': lengths[-1], 'records_read': len(lengths),
                                     'records': len(lengths)}
  median = info['sequence_length']['median']
  assert median != helpers.T  # Else the default window could not tell the two apart.
  assert info['class_names'] == ['anger', 'contempt', 'disgust', 'fear', 'happiness', 'sadness', 'surprise']
  assert info['family'] == {'name': 'res_rbg', 'module': 'ferjax.models.res_rbg'}
  video = helpers.write_video(tmp_path / 'v.avi', helpers.face_frames('fear', 12))
  assert predict.run(['--workdir', run_dir, video, '--json', str(tmp_path / 'p.json'), '--quiet']) == 0, \
      capsys.readouterr().err
  report = json.loads((tmp_path / 'p.json').read_text())
  assert report['options']['window'] == median
  assert report['model']['preprocessing']['window'] == {
      'frames': median, 'source': 'median length of the training sequences'}
  assert [w['end'] - w['start'] for w in report['results'][0]['windows']] == \
      [median] * len(report['results'][0]['windows'])


FAMILY_FILE = '''
"""A family defined in a file outside any package: registering it is all the file does."""
from flax import nnx
from ferjax import config as config_lib, models


class Mean(nnx.Module):

  def __init__(self, num_classes, *, rngs):
    self.head = nnx.Linear(3, num_classes, rngs=rngs)

  def __call__(self, batch, *, train=False, rngs=None):
    return {'logits': self.head(batch['frames'].mean(axis=(1, 2, 3)))}


models.register(models.Family(name='outside_mean', schema={'scale': config_lib.number(0)},
                              from_config=lambda c, num_classes, rngs: Mean(num_classes, rngs=rngs)))
'''


def _load_file(path):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('some_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)


def test_a_family_from_a_file_outside_the_repository_is_imported_from_the_run(tmp_path):
  """The run copies the defining file (named by its hash) and records it; a fresh interpreter that never
  saw the file gets the family from the run alone. An edited copy and an unknown family are one-line
  errors that say what to do."""
  source = tmp_path / 'elsewhere' / 'my_family.py'
  source.parent.mkdir()
  source.write_text(FAMILY_FILE)
  _load_file(source)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  recipe = run_lib.family_recipe(models.get_family('outside_mean'), workdir)
  digest = recipe['sha256']
  assert recipe == {'name': 'outside_mean', 'file': f'family/{digest[:12]}_my_family.py', 'sha256': digest,
                    'copied_from': str(source)}
  assert (workdir / recipe['file']).read_text() == FAMILY_FILE
  (workdir / run_lib.RUN_FILE).write_text(json.dumps({'family': recipe}))
  edited = tmp_path / 'edited'  # A run whose copy was changed after it was recorded.
  shutil.copytree(workdir, edited)
  (edited / recipe['file']).write_text(FAMILY_FILE + '# edited\n')
  source.unlink()  # The run needs only its own copy.
  code = textwrap.dedent(f'''
      from ferjax import models
      from ferjax.inference import run
      assert 'outside_mean' not in models.names()
      try:
        run.import_family('outside_mean', {str(edited)!r})
      except run.RunError as e:
        print('refused:', e)
      family = run.import_family('outside_mean', {str(workdir)!r})
      print(family.name, sorted(family.schema))
  ''')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': helpers.REPO})
  assert proc.returncode == 0, proc.stderr[-2000:]
  refused, loaded = proc.stdout.strip().splitlines()
  assert refused.startswith(f'refused: {edited / recipe["file"]}: changed since the run recorded it')
  assert loaded.split() == ['outside_mean', "['scale']"]

  with pytest.raises(run_lib.RunError) as error:
    run_lib.import_family('never_registered', tmp_path)
  message = str(error.value)
  assert '\n' not in message and "model.name='never_registered' is not a known model family" in message
  assert '"family": {"module": "<module that registers it>"}' in message
