"""synthetic_expressions/micro_tiny: built for real (TFDS + ArrayRecord), read back, and what it shows."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import tfds_builders.synthetic_expressions as synthetic_expressions
from ferjax.data import inputs, micro_flow, protocols
from ferjax.models import ststnet  # noqa: F401  # Registers the onset_apex_flow input.
from tfds_builders.synthetic_expressions import faces, micro


@pytest.fixture(scope='module')
def micro_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  synthetic_expressions.build(data_dir, config='micro_tiny', workers=1)
  return data_dir


def test_micro_tiny_layout_features_and_loso(micro_dir):
  splits = protocols.dataset_splits('synthetic_expressions/micro_tiny', micro_dir)
  assert splits == [f'subject_s{i:03d}' for i in range(6)]
  assert protocols.num_folds(splits) == 6
  s = protocols.splits_for(splits, 2)
  assert s.test == 'subject_s002' and 'subject_s002' not in s.train.split('+')
  builder = tfds.builder('synthetic_expressions/micro_tiny', data_dir=micro_dir)
  assert builder.info.features['label'].names == ['negative', 'positive', 'surprise']
  for split in splits:
    records = list(tfds.data_source('synthetic_expressions/micro_tiny', split=split, data_dir=micro_dir))
    assert sorted(r['label'] for r in records) == [0, 1, 2]  # One clip of each class per subject.
    for r in records:
      assert r['subject'].decode() == split.removeprefix('subject_')
      assert 1 <= r['onset'] < r['apex'] < r['offset'] <= r['num_frames'] - 1
      assert len(r['frames']) == r['num_frames'] and 6 <= r['num_frames'] <= 8
      assert r['frames'][0].shape == (32, 32, 3)
      batch_input = inputs.get(micro_flow.NAME).compute(inputs.View(
          r['frames'], np.arange(1), r['num_frames'], np.eye(2, 3), 28, record=r))
      assert batch_input.shape == (28, 28, 3) and 0 <= batch_input.min() and batch_input.max() <= 1


def test_micro_clip_is_neutral_outside_onset_offset_and_low_amplitude():
  identity = faces.sample_identity(np.random.default_rng(5))
  curve = micro.intensity(12, 2, 5, 9)
  assert curve[:3].tolist() == [0, 0, 0] and curve[5] == 1 and curve[9:].tolist() == [0, 0, 0]
  assert np.all(np.diff(curve[2:6]) > 0) and np.all(np.diff(curve[5:10]) < 0)
  # Same generator state, no noise: a micro apex frame lies between neutral and the macro apex.
  quiet = faces.Identity(**{**identity.__dict__, 'noise_sigma': 0.0, 'motion': 0.0})
  frames, (onset, apex, offset) = micro.render_micro_clip(quiet, 'surprise', 12, 64,
                                                          np.random.default_rng(0))
  neutral = faces.render_face(quiet, faces.expression_aus('surprise', quiet, 0.0), 64)
  macro = faces.render_face(quiet, faces.expression_aus('surprise', quiet, 1.0), 64)
  np.testing.assert_array_equal(frames[onset], neutral)
  np.testing.assert_array_equal(frames[-1], neutral)
  micro_change = np.abs(frames[apex].astype(int) - neutral).sum()
  macro_change = np.abs(macro.astype(int) - neutral).sum()
  assert 0 < micro_change < 0.6 * macro_change
  with pytest.raises(ValueError, match='negative'):
    micro.render_micro_clip(quiet, 'anger', 12, 64, np.random.default_rng(0))


def _ststnet_config(arg: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('ststnet_config', 'configs/ststnet.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_ststnet_trains_and_tests_a_left_out_subject(micro_dir, tmp_path):
  from ferjax import train  # pylint: disable=import-outside-toplevel
  config = _ststnet_config('synthetic,fold=2')
  config.dataset.config = 'micro_tiny'
  config.dataset.data_dir = micro_dir
  config.input.batch_size = config.input.eval_batch_size = 5
  config.train.num_steps = 3
  report = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert report['split'] == 'subject_s002' and report['num_examples'] == 3
  assert report['class_names'] == ['negative', 'positive', 'surprise']
  with pytest.raises(ValueError, match='preset'):
    _ststnet_config('casme3')
  with pytest.raises(ValueError, match='key one of'):
    _ststnet_config('synthetic,epochs=3')


def test_mfem_bilstm_trains_and_tests_a_left_out_subject(micro_dir, tmp_path):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from ferjax import train  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'mfem_bilstm.py')
  spec = importlib.util.spec_from_file_location('mfem_bilstm_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('synthetic,fold=1')
  config.dataset.config = 'micro_tiny'
  config.dataset.data_dir = micro_dir
  config.input.batch_size = config.input.eval_batch_size = 5
  config.input.worker_count = 0
  config.train.num_steps = 3
  report = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert report['split'] == 'subject_s001' and report['num_examples'] == 3
  assert report['class_names'] == ['negative', 'positive', 'surprise']


def test_crossval_pooled_macro_f1_and_uar_are_uf1_and_uar():
  from ferjax import metrics  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  labels, preds = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
  preds[labels == 2] = 0  # Class 2 never predicted.
  report = metrics.classification_report(labels, preds, micro.CLASSES)
  scores = metrics.uf1_uar(labels, preds, 3)
  assert report['macro_f1'] == pytest.approx(scores['uf1'])
  assert report['uar'] == pytest.approx(scores['uar'])
