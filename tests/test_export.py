"""python -m ferjax.export: the jax.export artifact (loaded fresh in another process, without the trainer)
and the ONNX model (under onnxruntime) give the in-process model's probabilities.

Tolerances: the .ferjax artifact runs the same XLA computation as the in-process model: equal within
1e-6. ONNX runs different kernels (onnxruntime's convolutions, GRU matmuls): within 1e-5 absolute.
"""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from ferjax import export, predict, serving
from ferjax.inference import model as model_lib

sys.path.insert(0, os.path.dirname(__file__))
import predict_helpers as helpers  # noqa: E402  pylint: disable=wrong-import-position

T, S = helpers.T, helpers.SIZE

# A fresh interpreter: loads the artifact with ferjax.serving alone and reports what got imported.
_FRESH = r'''
import json, sys
import numpy as np
from ferjax import serving
model = serving.load(sys.argv[1])
frames = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(frames))
heavy = [m for m in ('ferjax.train', 'ferjax.steps', 'ferjax.models', 'flax', 'optax', 'orbax.checkpoint',
                     'tensorflow_datasets') if m in sys.modules]
print(json.dumps({'heavy': heavy, 'jax': 'jax' in sys.modules, 'classes': list(model.class_names)}))
'''


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, synthetic_tiny):
  return helpers.shared_run(tmp_path_factory, 'res_rbg_6_steps', helpers.train_tiny_run, synthetic_tiny)


@pytest.fixture(scope='module')
def frames():
  """Two windows of real synthetic faces and one of noise: uint8 [3, T, S, S, 3]."""
  faces = [helpers.training_view(helpers.face_frames(e, 6), 0, 6) for e in ('anger', 'surprise')]
  noise = np.random.default_rng(0).integers(0, 256, (T, S, S, 3), dtype=np.uint8)
  return np.stack([*faces, noise])


def _fresh_process(artifact, frames, tmp_path) -> tuple[np.ndarray, dict]:
  np.save(tmp_path / 'frames.npy', frames)
  proc = subprocess.run([sys.executable, '-c', _FRESH, str(artifact), str(tmp_path / 'frames.npy'),
                         str(tmp_path / 'probs.npy')], capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': helpers.REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return np.load(tmp_path / 'probs.npy'), json.loads(proc.stdout.strip().splitlines()[-1])


def test_jax_artifact_in_a_fresh_process(run_dir, frames, tmp_path):
  out = tmp_path / 'model.ferjax'
  proc = subprocess.run([sys.executable, '-m', 'ferjax.export', '--workdir', os.path.relpath(run_dir),
                         '--format', 'jax', '--output', str(out)], capture_output=True, text=True,
                        timeout=300, env={**os.environ, 'PYTHONPATH': helpers.REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'batch dimension symbolic' in proc.stdout
  with zipfile.ZipFile(out) as archive:
    assert sorted(archive.namelist()) == [serving.METADATA_FILE, serving.MODEL_FILE]
    metadata = json.loads(archive.read(serving.METADATA_FILE))
  assert metadata['class_names'] == ['anger', 'contempt', 'disgust', 'fear', 'happiness', 'sadness',
                                     'surprise']
  assert (metadata['num_frames'], metadata['image_size']) == (T, S)
  assert metadata['preprocessing']['face_crop'] == {
      'detector': 'none', 'margin': 0.0, 'size': S,
      'source': 'whole rendered frames (the dataset is drawn face-centred)'}
  assert metadata['preprocessing']['eval_crop'] == 0.875
  assert metadata['source']['step'] == helpers.TINY_RUN['train.num_steps']

  probs, info = _fresh_process(out, frames, tmp_path)
  assert info['heavy'] == [] and info['jax'] and info['classes'] == metadata['class_names']
  expected = helpers.reference_probs(run_dir, frames)
  np.testing.assert_allclose(probs, expected, atol=1e-6)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
  # The symbolic batch dimension: any batch size, the same rows.
  model = serving.load(out)
  np.testing.assert_allclose(model.predict(frames[1:2]), expected[1:2], atol=1e-6)
  np.testing.assert_allclose(model.predict(np.concatenate([frames] * 3)), np.tile(expected, (3, 1)),
                             atol=1e-6)
  with pytest.raises(ValueError, match=r'expected uint8 frames \[B, 4, 32, 32, 3\]; found uint8 \[3, 4, 16'):
    model.predict(frames[:, :, :16, :16])


def test_predict_from_the_jax_artifact_equals_the_checkpoint(run_dir, tmp_path, capsys):
  out = export.export(model_lib.load_run_model(run_dir), 'jax', tmp_path / 'm.ferjax')
  video = helpers.write_video(tmp_path / 'v.avi', helpers.face_frames('fear', 7))
  results = {}
  for name, source in (('checkpoint', ['--workdir', run_dir]), ('artifact', ['--model', str(out)])):
    assert predict.run([*source, video, '--window', str(T), '--json', str(tmp_path / f'{name}.json'),
                        '--quiet']) == 0
    results[name] = json.loads((tmp_path / f'{name}.json').read_text())['results'][0]
  a, c = results['artifact']['windows'], results['checkpoint']['windows']
  assert [w['box'] for w in a] == [w['box'] for w in c] and len(a) == 3  # 7 frames, T=4, stride 2.
  for wa, wc in zip(a, c):
    np.testing.assert_allclose(list(wa['probs'].values()), list(wc['probs'].values()), atol=2e-6)
  assert 'model jax' in capsys.readouterr().out


def test_onnx_under_onnxruntime(run_dir, frames, tmp_path):
  pytest.importorskip('jax2onnx')
  pytest.importorskip('onnxruntime')
  out = tmp_path / 'model.onnx'
  assert export.run(['--workdir', run_dir, '--format', 'onnx', '--output', str(out)]) == 0
  probs, info = _fresh_process(out, frames, tmp_path)
  assert not info['jax'] and info['heavy'] == []  # onnxruntime alone.
  np.testing.assert_allclose(probs, helpers.reference_probs(run_dir, frames), atol=1e-5)
  model = serving.load(out)
  assert model.kind == 'onnx' and model.metadata['export']['format'] == 'onnx'
  np.testing.assert_allclose(model.predict(frames[:1]), probs[:1], atol=1e-6)


def test_bad_export_arguments(run_dir, tmp_path, capsys):
  existing = tmp_path / 'm.ferjax'
  existing.write_bytes(b'keep')
  assert export.run(['--workdir', run_dir, '--format', 'jax', '--output', str(existing)]) == 1
  assert capsys.readouterr().err.strip() == f'error: {existing} exists; pass --overwrite to replace it'
  assert existing.read_bytes() == b'keep'
  assert export.run(['--workdir', run_dir, '--format', 'onnx', '--output', str(tmp_path / 'n.ferjax')]) == 1
  assert 'onnx artifacts are named *.onnx' in capsys.readouterr().err
  with pytest.raises(serving.ArtifactError, match='expected a .ferjax'):
    serving.load(existing)


@pytest.mark.parametrize('window,strides,padding', [
    ((3, 3), (2, 2), ((1, 1), (1, 1))), ((2, 2), (2, 2), 'VALID'), ((3, 3), (1, 1), 'SAME'),
    ((3, 2), (2, 1), ((0, 1), (1, 0)))])
def test_onnx_friendly_max_pool_equals_flax(window, strides, padding):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(1).normal(size=(3, 9, 8, 5)).astype(np.float32)
  np.testing.assert_array_equal(export._max_pool_hw_last(x, window, strides, padding),
                                nnx.max_pool(x, window, strides, padding))


def test_onnx_friendly_stack_equals_jnp_stack():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  parts = [np.full((2, 3), i, np.float32) for i in range(4)]
  for axis in (0, 1, -1, 2):
    np.testing.assert_array_equal(export._stack_by_concatenate(parts, axis=axis),
                                  jnp.stack(parts, axis=axis))


@pytest.fixture(scope='module')
def rfscnn_run(tmp_path_factory, synthetic_tiny):
  return helpers.shared_run(tmp_path_factory, 'rfscnn_2_steps', helpers.train_tiny_rfscnn_run,
                            synthetic_tiny)


def test_rfscnn_artifact_takes_frames_and_flow(rfscnn_run, tmp_path):
  """A family with two inputs: the .ferjax artifact's signature is (frames, flow), recorded in its
  metadata, and it equals the trainer's eval_step (1e-6, the same XLA program)."""
  out = export.export(model_lib.load_run_model(rfscnn_run), 'jax', tmp_path / 'rf.ferjax')
  model = serving.load(out)
  assert model.inputs == ('frames', 'flow')
  assert model.metadata['inputs'][1] == {'name': 'flow', 'dtype': 'float32', 'shape': ['B', T - 1, S, S, 3]}
  assert model.metadata['preprocessing']['flow'] == 'dis'
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, T, S, S, 3), dtype=np.uint8)
  flow = rng.normal(0.0, 2.0, (3, T - 1, S, S, 3)).astype(np.float32)
  expected = helpers.run_reference(rfscnn_run, {'frames': frames, 'flow': flow})
  np.testing.assert_allclose(model.predict(frames, flow=flow), expected, atol=1e-6)
  np.testing.assert_allclose(model.predict(frames[:1], flow=flow[:1]), expected[:1], atol=1e-6)
  with pytest.raises(ValueError, match=r"expected inputs \['frames', 'flow'\]; found \['frames'\]"):
    model.predict(frames)
  with pytest.raises(ValueError, match=r'expected flow float32 \[B, 3, 32, 32, 3\] with B = 3'):
    model.predict(frames, flow=flow[:2])


def test_rfscnn_onnx_is_a_clear_error(rfscnn_run, tmp_path):
  """jax2onnx (0.13) cannot convert RFSCNN with a symbolic batch (measured: "Symbolic dimension '4*B'
  used in a context that requires a constant"); the error names the family and its inputs and points
  to --format jax, and nothing is written."""
  pytest.importorskip('jax2onnx')
  with pytest.raises(export.ExportError, match=r"jax2onnx cannot convert the 'rfscnn' model \(inputs "
                     r"\['frames', 'flow'\]\): .*; --format jax supports it"):
    export.export(model_lib.load_run_model(rfscnn_run), 'onnx', tmp_path / 'rf.onnx')
  assert not list(tmp_path.iterdir())


def _module_text(artifact) -> str:
  from jax import export as jax_export  # pylint: disable=import-outside-toplevel
  with zipfile.ZipFile(artifact) as archive:
    return jax_export.deserialize(bytearray(archive.read(serving.MODEL_FILE))).mlir_module()


def test_auto_dtype_resolves_for_the_target_platform_not_the_host(run_dir, tmp_path, capsys):
  """The run's model.dtype is 'auto'. Exported on this CPU host for a TPU, the artifact computes in
  bfloat16 (its StableHLO has bf16 convolutions); for a CPU, in float32 (no bf16 anywhere). The metadata
  records the compute dtype, the face crop and the window. Platforms that resolve 'auto' differently
  are one clear error."""
  assert json.loads(open(os.path.join(run_dir, 'config.json')).read())['model']['dtype'] == 'auto'
  texts = {}
  for platform, dtype in (('tpu', 'bfloat16'), ('cpu', 'float32')):
    out = tmp_path / f'{platform}.ferjax'
    assert export.run(['--workdir', run_dir, '--format', 'jax', '--platforms', platform, '--output',
                       str(out)]) == 0, capsys.readouterr().err
    assert f'compute dtype {dtype}' in capsys.readouterr().out
    with zipfile.ZipFile(out) as archive:
      metadata = json.loads(archive.read(serving.METADATA_FILE))
    assert metadata['compute_dtype'] == dtype and metadata['export']['platforms'] == [platform]
    assert metadata['preprocessing']['face_crop']['detector'] == 'none'
    assert metadata['preprocessing']['window']['source'] == 'median length of the training sequences'
    texts[platform] = _module_text(out)
  assert 'bf16' in texts['tpu'] and 'bf16' not in texts['cpu']
  assert export.run(['--workdir', run_dir, '--format', 'jax', '--platforms', 'cpu,tpu', '--output',
                     str(tmp_path / 'both.ferjax')]) == 1
  err = capsys.readouterr().err.strip()
  assert "model.dtype='auto' means" in err and '--dtype' in err and '\n' not in err
  # An API caller that loads the model for one platform and exports it for another is stopped.
  with pytest.raises(export.ExportError, match=r"model.dtype='auto' is bfloat16 on \['tpu'\]"):
    export.export_jax(model_lib.load_run_model(run_dir, platforms=['cpu']), ['tpu'])


def test_bfloat16_export_runs_in_bfloat16(run_dir, frames, tmp_path):
  """`--dtype bfloat16` for a CPU: the artifact equals the in-process bfloat16 model (the same XLA
  program) and differs from the float32 evaluation by bfloat16's rounding, not more."""
  out = tmp_path / 'bf16.ferjax'
  assert export.run(['--workdir', run_dir, '--format', 'jax', '--dtype', 'bfloat16', '--output',
                     str(out)]) == 0
  model = serving.load(out)
  assert model.metadata['compute_dtype'] == 'bfloat16' and 'bf16' in _module_text(out)
  probs = model.predict(frames)
  np.testing.assert_allclose(probs, model_lib.load_run_model(run_dir, dtype='bfloat16').predict(frames),
                             atol=1e-6)
  float32 = helpers.reference_probs(run_dir, frames)
  difference = np.abs(probs - float32).max()
  assert 1e-6 < difference < 0.05, difference
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
