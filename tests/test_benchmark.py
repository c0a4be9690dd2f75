"""`python -m ferjax.benchmark --input`: the input pipeline alone, on a tiny prepared dataset."""

import os
import sys

from ferjax import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, data_dir):
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import res_rbg
  finally:
    sys.path.pop(0)
  config = res_rbg.get_config('synthetic')
  config.dataset.name, config.dataset.data_dir = name, data_dir
  config.dataset.num_frames, config.dataset.image_size, config.input.batch_size = 4, 24, 2
  return config


def test_input_benchmark_reports_frames_per_second(make_sequence_dataset, tmp_path):
  name, data_dir = make_sequence_dataset(tmp_path, splits={f'fold_{k}': 3 for k in range(3)})
  result = benchmark.run_input(_config(name, data_dir), num_batches=2)
  assert result['frames_per_s_per_worker'] > 0 and result['sequences_per_s_per_worker'] > 0
  assert result['dataset'].endswith('fold_1+fold_2')
  assert result['batch']['label'] == 'int32[2]'
