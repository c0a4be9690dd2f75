"""`python -m ferjax.crossval --parallel_folds`: every fold in one program equals the folds run one by one.

STSTNet (BatchNorm, dropout) on the built-in synthetic_expressions/micro_tiny (6 subjects, 18 clips, real
TFDS + ArrayRecord + grain + Orbax), 2 subject-independent folds, a few steps of batch 8.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Device count before jax starts (the subprocess of the two-device test runs this file).
if __name__ == '__main__':
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  os.environ['JAX_PLATFORMS'] = 'cpu'

from absl import flags  # noqa: E402
from etils import epath  # noqa: E402
import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from ferjax import checkpointing, config as config_lib, crossval, parallel_folds  # noqa: E402
from ferjax.data import pipeline, spec  # noqa: E402
from ferjax.data import datasets  # noqa: E402
from ferjax.models import ststnet  # noqa: E402,F401  # Registers the family and its input.

STEPS = 4
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _config(data_dir: str, folds: int = 2):
  path = os.path.join(CONFIGS, 'ststnet.py')
  module_spec = importlib.util.spec_from_file_location('ststnet_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  c = module.get_config(f'synthetic,subject_folds={folds}')
  c.dataset.config = 'micro_tiny'
  c.dataset.data_dir = data_dir
  c.input.batch_size = c.input.eval_batch_size = 8
  c.train.num_steps = STEPS
  c.train.learning_rate = 5e-3  # Large enough that 4 steps move the parameters far from the start.
  c.train.log_every_steps = 2
  return c


def _saved(directory: epath.Path) -> dict[str, np.ndarray]:
  """'params/...' and 'model_state/...' arrays of the newest Orbax checkpoint in `directory`."""
  step = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointHandler().restore(directory / str(step) / 'state')
  leaves = jax.tree_util.tree_flatten_with_path({k: state[k] for k in ('params', 'model_state')})[0]
  return {jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}


@pytest.fixture(scope='module')
def micro_dir(tmp_path_factory):
  import tfds_builders.synthetic_expressions as synthetic_expressions  # pylint: disable=import-outside-toplevel
  flags.FLAGS.mark_as_parsed()
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  synthetic_expressions.build(data_dir, config='micro_tiny', workers=1)
  return data_dir


@pytest.fixture(scope='module')
def both(micro_dir, tmp_path_factory):
  """(sequential results, parallel results, their workdirs) of the same 2-fold cross-validation."""
  root = tmp_path_factory.mktemp('runs')
  seq = crossval.run(_config(micro_dir), str(root / 'seq'))
  par = crossval.run(_config(micro_dir), str(root / 'par'), parallel=True)
  return seq, par, root


def test_parallel_folds_equal_sequential_folds(both):
  seq, par, root = both
  for fold in ('0', '1'):
    a, b = seq['folds'][fold], par['folds'][fold]
    assert a['split'] == b['split'] and a['num_examples'] == b['num_examples'] == 9
    assert a['confusion_matrix'] == b['confusion_matrix']
    assert a['war'] == b['war'] and a['uar'] == b['uar']
  assert seq['summary']['pooled'] == par['summary']['pooled']
  stacked = _saved(root / 'par' / parallel_folds.SUBDIR / 'checkpoints')
  start = _saved(root / 'seq' / 'fold_0' / 'checkpoints')  # Only to size the changes below.
  for fold in (0, 1):
    single = _saved(root / 'seq' / f'fold_{fold}' / 'checkpoints')
    assert single.keys() == stacked.keys()
    for key, value in single.items():
      assert stacked[key].shape == (2, *value.shape), key
      np.testing.assert_allclose(stacked[key][fold], value, rtol=1e-5, atol=1e-6, err_msg=key)
  # The folds trained on different subjects: their parameters differ far beyond the tolerance.
  kernel = next(k for k in start if 'fc' in k and 'kernel' in k)
  assert np.abs(stacked[kernel][0] - stacked[kernel][1]).max() > 1e-3
  # Each fold has its own record, report and training curve, as a sequential fold.
  for fold in (0, 1):
    fold_dir = root / 'par' / f'fold_{fold}'
    report = json.loads((fold_dir / 'report.json').read_text())
    assert report['fold'] == fold and report['selection']['trained'] == 'parallel folds'
    assert json.loads((fold_dir / 'config.json').read_text())['dataset']['fold'] == fold
    records = [json.loads(line) for line in (fold_dir / 'metrics.jsonl').read_text().splitlines()]
    seq_records = [json.loads(line) for line in
                   (root / 'seq' / f'fold_{fold}' / 'metrics.jsonl').read_text().splitlines()]
    losses = [r['loss'] for r in records if r['split'] == 'train']
    seq_losses = [r['loss'] for r in seq_records if r['split'] == 'train']
    np.testing.assert_allclose(losses, seq_losses, rtol=1e-5)
  assert 'parallel_folds' not in par['config']  # The table's config is the sequential one.


def test_rerun_checks_and_resume(both, micro_dir, tmp_path):
  _, _, root = both
  # A finished table is not retrained; another config is refused as for sequential folds.
  again = crossval.run(_config(micro_dir), str(root / 'par'), parallel=True)
  assert again['folds'] == crossval.run(_config(micro_dir), str(root / 'par'))['folds']
  changed = _config(micro_dir)
  changed.model.dropout = 0.25
  with pytest.raises(crossval.CrossvalError, match='model.dropout'):
    crossval.run(changed, str(root / 'par'), parallel=True)
  # Stopped after 2 steps, resumed to 4 from the stacked checkpoint: the 4-step run's parameters.
  short = _config(micro_dir)
  short.train.num_steps = 2
  parallel_folds.train_and_evaluate(short, str(tmp_path), [0, 1])
  parallel_folds.train_and_evaluate(_config(micro_dir), str(tmp_path), [0, 1])
  resumed = _saved(tmp_path / parallel_folds.SUBDIR / 'checkpoints')
  whole = _saved(root / 'par' / parallel_folds.SUBDIR / 'checkpoints')
  for key, value in whole.items():
    np.testing.assert_allclose(resumed[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  history = (tmp_path / parallel_folds.SUBDIR / 'config_history.jsonl').read_text().splitlines()
  assert json.loads(history[-1])['resumed_from_step'] == 2
  # Other folds in the same directory: the stacked checkpoint belongs to folds [0, 1].
  with pytest.raises(checkpointing.CheckpointMismatchError, match='parallel_folds'):
    parallel_folds.train_and_evaluate(_config(micro_dir), str(tmp_path), [1])


def test_refusals_and_what_the_model_reads(micro_dir):
  validated = _config(micro_dir, folds=3)
  validated.dataset.holdout_validation = True
  with pytest.raises(config_lib.ConfigError, match='holdout_validation'):
    parallel_folds.train_and_evaluate(validated, '/nonexistent/never-created', [0, 1])
  c = _config(micro_dir)
  dataset = datasets.prepare(c.dataset)
  family = ststnet.registry.get_family('ststnet')
  table, offsets = parallel_folds.example_table(c, dataset, family.inputs)
  assert len(table['label']) == 18 and list(offsets.values()) == list(range(0, 18, 3))
  from ferjax import models, steps  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  tx = steps.make_optimizer(c.train, STEPS, 0)
  graphdef, state = steps.init_state(models.create_model(c.model, 3, rngs=nnx.Rngs(params=0)), tx, 0)
  read = parallel_folds.read_inputs(graphdef, tx, state, table, family.losses(c), 'unit', {})
  assert read == ['label', 'onset_apex_flow']  # The carried frame is never read.
  # Where the model reads an input that the training stream draws at random, the table cannot stand in.
  with pytest.raises(config_lib.ConfigError, match=r"change with the epoch.*\['frames'\]"):
    parallel_folds.check_record_determined(c, dataset, table, ['frames'], family.inputs)
  parallel_folds.check_record_determined(c, dataset, table, read, family.inputs)


def test_train_record_order_is_the_loaders_order(micro_dir):
  c = _config(micro_dir)
  dataset = datasets.prepare(c.dataset)
  source = dataset.source('subject_s001+subject_s002+subject_s004')
  inputs = ('frames', ststnet.INPUT)
  loader = iter(spec.train_loader(c, source, (0, 1, 4), 0, inputs))
  order = pipeline.train_record_order(len(source), c.seed)
  table, _ = parallel_folds.example_table(c, dataset, inputs)
  rows = parallel_folds.fold_rows(dataset, {s: 3 * i for i, s in enumerate(dataset.split_names)},
                                  'subject_s001+subject_s002+subject_s004')
  for i in range(6):  # 24 positions: two and a half epochs of 9 records.
    batch = next(loader)
    expected = table[ststnet.INPUT][rows[[order[4 * i + j] for j in range(4)]]]
    np.testing.assert_array_equal(batch[ststnet.INPUT], expected)


@pytest.mark.slow  # A second JAX process with its own compilation.
def test_folds_split_over_two_devices(both, micro_dir, tmp_path):
  """Two simulated CPU devices, one fold each: the numbers of the one-device run."""
  _, par, root = both
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(CONFIGS),
                                                      os.environ.get('PYTHONPATH', '')]))
  out = subprocess.run([sys.executable, __file__, micro_dir, str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['devices'] == 2 and result['fold_axis_devices'] == 2
  assert result['folds'] == {k: v['confusion_matrix'] for k, v in par['folds'].items()}
  two = dict(np.load(tmp_path / 'params.npz'))  # Read back there: the checkpoint names 2 devices.
  one = _saved(root / 'par' / parallel_folds.SUBDIR / 'checkpoints')
  for key, value in one.items():
    np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def _two_devices(data_dir: str, workdir: str) -> None:
  flags.FLAGS.mark_as_parsed()
  results = crossval.run(_config(data_dir), workdir, parallel=True)
  report = json.loads((epath.Path(workdir) / 'fold_0' / 'report.json').read_text())
  np.savez(os.path.join(workdir, 'params.npz'),
           **_saved(epath.Path(workdir) / parallel_folds.SUBDIR / 'checkpoints'))
  print(json.dumps({'devices': jax.device_count(),
                    'fold_axis_devices': report['selection']['fold_axis_devices'],
                    'folds': {k: v['confusion_matrix'] for k, v in results['folds'].items()}}))


if __name__ == '__main__':
  _two_devices(sys.argv[1], sys.argv[2])
