"""`python -m ferjax.benchmark`: the step benchmark (FLOPs, MFU, sweep, profile, JSON) at a tiny size, and
`--input`, the input pipeline alone, on a tiny prepared dataset."""

import json
import os
import subprocess
import sys

import pytest

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


def test_resnet50_forward_flops_match_the_published_count():
  """XLA's count for a ResNet-50 forward at 224 px, batch 1, is the published 4.1 GMACs = 8.2 GFLOPs
  (He et al., 2016, Table 1: 3.8 x 10^9 FLOPs counted as multiply-adds of the conv layers; torchvision
  lists 4.09 GMACs with the classifier) within 10 %."""
  from flax import nnx
  from ferjax.models import resnet
  model = nnx.eval_shape(lambda: resnet.ResNet('resnet50', num_classes=1000, rngs=nnx.Rngs(0)))
  flops = benchmark.forward_flops(model, (1, 224, 224, 3))
  assert abs(flops / 8.2e9 - 1) < 0.10, flops
  # Linear in the batch: the count is per example, not a fixed overhead.
  tiny = nnx.eval_shape(lambda: resnet.ResNet('resnet18', width=4, stage_sizes=(1, 1, 1, 1),
                                              rngs=nnx.Rngs(0)))
  one, four = (benchmark.forward_flops(tiny, (n, 32, 32, 3)) for n in (1, 4))
  assert abs(four / one - 4) < 0.05


def test_peak_tflops_per_device_kind():
  expected = {'TPU v4': 275, 'TPU v5 lite': 197, 'TPU v5e': 197, 'TPU v5p': 459, 'TPU v5': 459,
              'TPU v6 lite': 918, 'NVIDIA A100-SXM4-80GB': 312, 'NVIDIA H100 80GB HBM3': 989,
              'NVIDIA H100 PCIe': 756, 'NVIDIA H200': 989, 'cpu': None}
  assert {kind: benchmark.peak_tflops(kind) for kind in expected} == expected


def test_sweep_values_parse_keys_and_values():
  assert benchmark._sweep_values(['batch=2,4', 'T=8', 'model.dtype=float32,bfloat16',
                                  'model.residual=True,False', 'train.learning_rate=0.5']) == [
      ('input.batch_size', [2, 4]), ('dataset.num_frames', [8]),
      ('model.dtype', ['float32', 'bfloat16']), ('model.residual', [True, False]),
      ('train.learning_rate', [0.5])]
  with pytest.raises(ValueError, match='KEY=V1,V2'):
    benchmark._sweep_values(['batch'])


def test_cli_sweeps_profiles_and_writes_json(tmp_path):
  """`python -m ferjax.benchmark` on a tiny Res-RBG: a batch sweep (the FLOPs double with the batch),
  MFU against a given peak (consistent with the FLOPs and the median step time), a profiler trace whose
  busiest operations include the convolutions, and the JSON it writes."""
  out = tmp_path / 'bench.json'
  args = [sys.executable, '-m', 'ferjax.benchmark', '--config', f'{REPO}/configs/res_rbg.py:synthetic',
          '--config.model.width=4', '--config.model.stage_sizes=(1,1,1,1)',
          '--config.model.hidden=8', '--config.model.rbg_blocks=1', '--config.model.bigru_layers=1',
          '--config.dataset.num_frames=4', '--config.dataset.image_size=32',
          '--steps=2', '--noeval', '--sweep=batch=2,4', '--peak_tflops=0.001',
          f'--profile={tmp_path / "trace"}', '--profile_steps=1', f'--json={out}']
  proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| batch_size | num_frames |' in proc.stdout
  rows = json.loads(out.read_text())
  assert [r['sweep'] for r in rows] == [{'input.batch_size': 2}, {'input.batch_size': 4}]
  small, large = rows
  assert 1.8 < large['train_gflops_per_step'] / small['train_gflops_per_step'] < 2.2
  for row in rows:
    assert row['compile_s'] > 0 and row['compile_cpu_s'] > 0 and row['train_step_s'] > 0
    assert row['timed_steps'] == 2
    lo, q1, q3, hi = row['train_step_s_spread']
    assert lo <= q1 <= row['train_step_s'] <= q3 <= hi
    assert row['train_frames_per_s'] == pytest.approx(
        row['batch_size'] * 4 / row['train_step_s'], rel=0.01)
    assert row['mfu'] == pytest.approx(
        row['train_gflops_per_step'] * 1e9 / row['train_step_s'] / 1e9, rel=0.01)
    assert row['compiled_memory_gib_per_device'] > 0
    assert os.path.exists(row['profile']['trace'])
    assert any('conv' in op for op in row['profile']['top_ops_ms']), row['profile']
  assert large['step_vs_first'] == pytest.approx(
      large['train_step_s'] / small['train_step_s'], rel=0.01)


def _tiny_res_rbg(hidden=8):
  config = _config('synthetic', '')
  config.model.width, config.model.stage_sizes, config.model.hidden = 4, (1, 1, 1, 1), hidden
  config.model.rbg_blocks, config.model.bigru_layers = 1, 1
  return config


def test_breakdown_flops_add_up_and_count_every_gru_step():
  """The backbone-only step and the RBG part add up to the whole step (they share only the head, 7 x 65
  weights); the GRU scans are counted T times: against the rolled loop (XLA counts its body once) the
  count grows by T - 1 recurrent steps of 4 recurrences (two GRUs, a BiGRU's two directions), each
  [B, h] x [h, 3h] forward, twice that backward (input and weight gradients), plus the weight gradient's
  3 h^2 accumulation: (T - 1) * 4 * (18 B + 3) h^2 FLOPs, hand-counted; the gates' elementwise work
  (O(B h) per step) is the rest, under 5 % at h = 128."""
  config = _tiny_res_rbg(hidden=128)
  b, t, h = config.input.batch_size, config.dataset.num_frames, 128
  parts = benchmark.breakdown_flops(config, 7)
  assert (parts['backbone_step'] + parts['rbg_part']) / parts['train_step'] == pytest.approx(1, abs=0.01)
  fn, args = benchmark._rbg_part_step(config, 7)  # config.model.unroll is 1: the rolled loop.
  rolled = benchmark.flops(fn.lower(*args))
  expected = (t - 1) * 4 * (18 * b + 3) * h * h
  assert 1.0 <= (parts['rbg_part'] * 1e9 - rolled) / expected < 1.05


def test_cli_breakdown_reports_consistent_shares(tmp_path):
  """`--breakdown` on a tiny Res-RBG: the shares follow from the reported FLOPs and CPU seconds."""
  out = tmp_path / 'breakdown.json'
  args = [sys.executable, '-m', 'ferjax.benchmark', '--config', f'{REPO}/configs/res_rbg.py:synthetic',
          '--config.model.width=4', '--config.model.stage_sizes=(1,1,1,1)',
          '--config.model.hidden=8', '--config.model.rbg_blocks=1', '--config.model.bigru_layers=1',
          '--config.dataset.num_frames=4', '--config.dataset.image_size=32',
          '--config.input.batch_size=2', '--steps=2', '--breakdown', f'--json={out}']
  proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'rbg_flop_share' in proc.stdout
  r = json.loads(out.read_text())
  assert r['gflops_parts_over_whole'] == pytest.approx(1, abs=0.01)
  assert r['rbg_flop_share'] == pytest.approx(r['gflops_rbg_part'] / r['gflops_train_step'], rel=0.01)
  assert 0 < r['rbg_flop_share'] < 1
  assert r['rbg_time_share_alone'] == pytest.approx(r['cpu_s_rbg_part'] / r['cpu_s_train_step'],
                                                    rel=0.01)
  assert r['rbg_time_share_by_difference'] == pytest.approx(
      1 - r['cpu_s_backbone_step'] / r['cpu_s_train_step'], abs=0.01)
  assert len(r['cpu_s_train_step_all']) == len(r['cpu_s_backbone_step_all']) == r['timed_steps'] == 2
  with pytest.raises(ValueError, match='rbg_blocks >= 1'):
    config = _tiny_res_rbg()
    config.model.rbg_blocks = 0
    benchmark.breakdown(config, 1, 7)
