"""`python -m ferjax.benchmark --input`: repeated rounds, the per-CPU-second figures, the input profile and
the built-in moving-texture source (tiny sizes; no timing is asserted)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ferjax import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(flow: bool = False):
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import res_rbg
  finally:
    sys.path.pop(0)
  config = res_rbg.get_config('synthetic')
  config.dataset.num_frames, config.dataset.image_size, config.input.batch_size = 4, 32, 2
  config.dataset.sampling = 'clip' if flow else 'segments'
  return config


def test_moving_texture_source_repeats_distinct_sequences():
  records = benchmark.moving_texture_source(10, 5, 40, distinct=3)
  assert len(records) == 10 and len({r['sequence_id'] for r in records}) == 10
  assert [r['label'] for r in records] == [i % 7 for i in range(10)]
  assert records[4]['frames'] is records[1]['frames']  # Shared, not re-encoded.
  assert len({r['frames'][0] for r in records}) == 3
  assert all(isinstance(f, bytes) and len(r['frames']) == 5 for r in records for f in r['frames'])
  # Without `distinct`, every record is its own sequence (what tests/test_flow.py relies on).
  assert len({r['frames'][0] for r in benchmark.moving_texture_source(4, 2, 24)}) == 4


def test_rounds_and_per_cpu_second_figures():
  rounds = 3
  result = benchmark.run_input(_config(flow=True), num_batches=1, flow=True, source_px=40,
                               repeats=rounds)
  assert result['rounds'] == '3 x 1 batches (median round below)'
  for key, per_batch in (('frames_per_cpu_s', 2 * 4), ('flow_frames_per_cpu_s', 2 * 3)):
    per_round = result[f'{key}_rounds']
    assert len(per_round) == rounds and all(v > 0 for v in per_round)
    # The reported figure is the median round's (an odd count of rounds: one of them).
    assert result[key] == pytest.approx(float(np.median(per_round)), rel=1e-3)
  # Both per-wall-second and per-CPU-second figures, and their ratio is the process's CPU load.
  assert result['frames_per_s_per_worker'] > 0 and result['sequences_per_cpu_s'] > 0
  assert result['cpu_load'] == pytest.approx(
      result['frames_per_s_per_worker'] / result['frames_per_cpu_s'], rel=0.05, abs=0.02)
  with pytest.raises(ValueError, match='needs batches >= 1 and repeats >= 1; found 1 and 0'):
    benchmark.run_input(_config(), num_batches=1, source_px=40, repeats=0)


def test_input_profile_sees_the_work_of_the_reader_threads():
  """The profile runs the batches in the calling thread, so decoding and warping show up (a profiler of
  the calling thread around the loader's iterator would see only waiting)."""
  result = benchmark.run_input(_config(flow=True), num_batches=1, flow=True, source_px=40, repeats=1,
                               profile_batches=2)
  profile = result['input_profile_cpu_ms_per_frame']
  assert 0 < len(profile) <= 12
  assert {'imdecode', 'warpAffine', 'cv2.DenseOpticalFlow.calc'} <= set(profile), profile
  assert all(v >= 0 for v in profile.values())
  assert 'input_profile_cpu_ms_per_frame' not in benchmark.run_input(_config(), num_batches=1,
                                                                     source_px=40, repeats=1)


def test_cli_input_repeats_profile_and_json(tmp_path):
  out = tmp_path / 'input.json'
  args = [sys.executable, '-m', 'ferjax.benchmark', '--input', '--config',
          f'{REPO}/configs/res_rbg.py:synthetic', '--config.dataset.num_frames=4',
          '--config.dataset.image_size=32', '--config.input.batch_size=2', '--source_px=40',
          '--batches=1', '--repeats=2', '--input_profile=1', f'--json={out}']
  proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert len(result['frames_per_cpu_s_rounds']) == 2 and 'imdecode' in result['input_profile_cpu_ms_per_frame']
  assert 'frames_per_cpu_s' in proc.stdout and 'input_profile_cpu_ms_per_frame:' in proc.stdout
