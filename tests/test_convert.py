"""Weight import/export (ferjax.models.convert) against PyTorch outputs saved in tests/data.

tests/data/resnet50_w8.* come from scripts/make_resnet_reference.py (a torchvision-layout
ResNet-50, width 8, stage sizes (2, 1, 1, 1), random weights and BatchNorm statistics, eval mode);
tests/data/gru_reference.npz from scripts/make_gru_reference.py (torch.nn.GRU);
tests/data/lstm_reference.npz from scripts/make_lstm_reference.py (torch.nn.LSTM).
"""

import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ferjax import models
from ferjax.models import convert
from ferjax.models import recurrent
from ferjax.models import resnet

DATA = os.path.join(os.path.dirname(__file__), 'data')
RESNET_FILE = os.path.join(DATA, 'resnet50_w8.safetensors')
GRU_FILE = os.path.join(DATA, 'gru_reference.npz')
LSTM_FILE = os.path.join(DATA, 'lstm_reference.npz')
RTOL = 1e-4


@pytest.fixture(scope='module')
def io():
  with np.load(os.path.join(DATA, 'resnet50_w8_io.npz'), allow_pickle=False) as f:
    return dict(f)


@pytest.fixture(scope='module')
def gru_ref():
  return convert.read_weights(GRU_FILE)


def make_resnet(io, seed=0, **kwargs):
  return resnet.ResNet('resnet50', width=int(io['width']), stage_sizes=tuple(io['stage_sizes']),
                       rngs=nnx.Rngs(seed), **kwargs)


@nnx.jit
def pooled(model, x):
  return jnp.mean(model.features(x), axis=(1, 2))


@nnx.jit
def logits(model, x):
  return model(x)


def assert_rel_close(actual, expected, rtol=RTOL):
  err = np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max()
  assert err <= rtol, err


def test_resnet50_matches_pytorch_eval(io):
  net = make_resnet(io, num_classes=int(io['num_classes']))
  counts = convert.load_resnet(net, RESNET_FILE, classifier=True)
  assert counts['kept'] == 0 and counts['loaded'] == 102
  x = jnp.asarray(io['x'])
  assert_rel_close(logits(net, x), io['logits'])
  assert_rel_close(pooled(net, x), io['features'])
  # file -> ferjax -> file reproduces the torchvision state dict exactly (keys, shapes, values).
  original = convert.read_weights(RESNET_FILE)
  exported = convert.export_resnet(net)
  assert set(exported) == set(original)
  for k, v in original.items():
    assert exported[k].shape == v.shape and np.array_equal(exported[k], v), k


def test_attention_keeps_init_and_classifier_is_optional(io):
  net = make_resnet(io, attention='geca')
  before = {k: np.asarray(e.get()) for k, e in convert.torch_layout(net).items() if '.attn.' in k}
  assert len(before) == 5  # one G-ECA conv per block
  counts = convert.load_resnet(net, RESNET_FILE)  # the file's fc.* is skipped: no classifier
  assert counts['kept'] == 5
  after = convert.export_state_dict(net)
  for k, v in before.items():
    np.testing.assert_array_equal(after[k], v)
  np.testing.assert_array_equal(after['layer1.0.conv2.weight'],
                                convert.read_weights(RESNET_FILE)['layer1.0.conv2.weight'])


@pytest.mark.parametrize('suffix', ['npz', 'safetensors'])
def test_export_import_round_trip_is_exact(io, tmp_path, suffix):
  src = make_resnet(io, seed=1, attention='eca', num_classes=3)
  # Non-trivial running statistics, as after training.
  nnx.jit(lambda m, x: m(x, train=True))(src, jnp.asarray(io['x']))
  path = str(tmp_path / f'export.{suffix}')
  exported = convert.export_resnet(src, path)
  assert 'layer1.0.downsample.0.weight' in exported and 'fc.weight' in exported
  assert exported['layer1.0.conv2.weight'].shape == (8, 8, 3, 3)  # PyTorch [O, I, kh, kw]
  dst = make_resnet(io, seed=2, attention='eca', num_classes=3)
  convert.load_resnet(dst, path, classifier=True)
  a, b = nnx.state(src), nnx.state(dst)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_mismatch_errors_name_keys_and_leave_model_untouched(io):
  weights = convert.read_weights(RESNET_FILE)
  net = make_resnet(io)
  before = jax.tree.map(np.asarray, nnx.state(net))
  bad = dict(weights)
  del bad['layer2.0.conv3.weight']
  bad['layer9.0.conv1.weight'] = np.zeros((1,), np.float32)
  bad['bn1.running_var'] = np.ones((16,), np.float32)
  with pytest.raises(convert.WeightsMismatchError) as err:
    convert.load_resnet(net, bad)
  msg = str(err.value)
  assert '1 missing, 1 unexpected, 1 shape mismatches' in msg
  assert 'layer2.0.conv3.weight' in msg and 'layer9.0.conv1.weight' in msg
  assert 'bn1.running_var: file (16,) vs model (8,)' in msg
  jax.tree.map(np.testing.assert_array_equal, before, nnx.state(net))
  # A different width is reported as shape mismatches; a wrong prefix as missing keys.
  wide = resnet.ResNet('resnet50', width=16, stage_sizes=(2, 1, 1, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='shape mismatches'):
    convert.load_resnet(wide, weights)
  with pytest.raises(ValueError, match=r"(?s)100 missing.*module\.conv1\.weight.*prefix 'module"):
    convert.load_resnet(net, weights, prefix='module.')
  prefixed = {'module.' + k: v for k, v in weights.items()}
  assert convert.load_resnet(net, prefixed, prefix='module.')['loaded'] == 100


def test_never_reads_pickle(tmp_path):
  with pytest.raises(convert.WeightsFileError, match='pickle'):
    convert.read_weights(str(tmp_path / 'resnet50.pth'))
  path = str(tmp_path / 'objects.npz')
  np.savez(path, w=np.array([{'a': 1}], dtype=object))
  with pytest.raises(convert.WeightsFileError, match=r'objects\.npz: .*allow_pickle'):
    convert.read_weights(path)
  with pytest.raises(convert.WeightsFileError, match='safetensors or .npz'):
    convert.read_weights(str(tmp_path / 'weights.h5'))


def _pickled_npz(tmp_path):
  """A pickle of a dict of arrays, saved under an .npz name (np.load would unpickle it if allowed)."""
  path = tmp_path / 'pickled.npz'
  path.write_bytes(pickle.dumps({'conv1.weight': np.zeros((8, 3, 7, 7), np.float32)}))
  return path


def _truncated_safetensors(tmp_path):
  data = (pathlib.Path(RESNET_FILE)).read_bytes()
  path = tmp_path / 'truncated.safetensors'
  path.write_bytes(data[:len(data) // 2])
  return path


def _torch_zip_as_npz(tmp_path):
  """What torch.save writes by default (a zip holding archive/data.pkl), renamed to .npz."""
  path = tmp_path / 'renamed.npz'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'w': 1}))
  return path


@pytest.mark.parametrize('make, words', [
    (lambda tmp: tmp / 'resnet50.pth', ('pickle-based', 'Starting from ImageNet weights')),
    (_pickled_npz, ('pickled Python objects', 'allow_pickle=False')),
    (_truncated_safetensors, ('truncated or corrupt safetensors',)),
    (_torch_zip_as_npz, ('archive/data.pkl', 'Starting from ImageNet weights')),
    (lambda tmp: tmp / 'absent.safetensors', ('does not exist',)),
], ids=['pth', 'pickle_as_npz', 'truncated_safetensors', 'torch_zip_as_npz', 'missing'])
def test_unreadable_weights_file_is_one_line_naming_it(tmp_path, capsys, make, words):
  path = make(tmp_path)
  with pytest.raises(convert.WeightsFileError) as err:
    convert.read_weights(str(path))
  assert isinstance(err.value, convert.WeightsMismatchError)  # what the training CLI shows
  message = str(err.value)
  assert message.startswith(str(path)) and '\n' not in message
  assert all(w in message for w in words), message
  # The command line's code: one line on stderr, exit status 1 (in a real process: the test below).
  capsys.readouterr()
  assert convert.main(['check', str(path), '--arch', 'resnet50']) == 1
  assert capsys.readouterr().err.strip() == f'error: {message}'


def test_unreadable_weights_file_in_a_real_process(tmp_path):
  """`python -m ferjax.models.convert`: exit status 1, one line on stderr, no traceback."""
  path = _pickled_npz(tmp_path)
  with pytest.raises(convert.WeightsFileError) as err:
    convert.read_weights(str(path))
  result = subprocess.run(
      [sys.executable, '-m', 'ferjax.models.convert', 'check', str(path), '--arch', 'resnet50'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.strip() == f'error: {err.value}'


def test_gru_and_bigru_match_pytorch(gru_ref):
  x = jnp.asarray(gru_ref['x'])
  gru = recurrent.GRU(6, 4, rngs=nnx.Rngs(0))
  assert convert.load_gru(gru, gru_ref, prefix='uni.')['loaded'] == 4
  out, h_n = gru(x)
  assert_rel_close(out, gru_ref['uni.out'])
  assert_rel_close(h_n, gru_ref['uni.h_n'][0])
  # A 2-layer bidirectional nn.GRU = two chained BiGRU layers (concat merge).
  layers = [recurrent.BiGRU(6, 4, rngs=nnx.Rngs(0)), recurrent.BiGRU(8, 4, rngs=nnx.Rngs(0))]
  for i, layer in enumerate(layers):
    assert convert.load_gru(layer, GRU_FILE, prefix='bi2.', layer_index=i)['loaded'] == 8
  y, h0 = layers[0](x)
  y, h1 = layers[1](y)
  assert_rel_close(y, gru_ref['bi2.out'])
  assert_rel_close(jnp.concatenate([h0, h1]), gru_ref['bi2.h_n'])
  with pytest.raises(ValueError, match='unexpected.*weight_ih_l0_reverse'):
    convert.load_gru(recurrent.GRU(6, 4, rngs=nnx.Rngs(0)), gru_ref, prefix='bi.')


def test_lstm_layers_and_stack_load_pytorch_state_dicts():
  ref = convert.read_weights(LSTM_FILE)
  x = jnp.asarray(ref['x'])
  lstm = recurrent.LSTM(6, 4, rngs=nnx.Rngs(0))
  assert convert.load_lstm(lstm, LSTM_FILE, prefix='uni.')['loaded'] == 4
  out, (h_n, c_n) = lstm(x)
  assert_rel_close(out, ref['uni.out'])
  assert_rel_close(c_n, ref['uni.c_n'][0])
  # nn.LSTM(num_layers=2, bidirectional=True) = a Stacked of two BiLSTMs, loaded all at once.
  stack = recurrent.Stacked([recurrent.BiLSTM(6, 4, rngs=nnx.Rngs(0)),
                             recurrent.BiLSTM(8, 4, rngs=nnx.Rngs(0))])
  assert convert.load_stack(stack, ref, prefix='bi2.')['loaded'] == 16
  y, states = stack(x)
  assert_rel_close(y, ref['bi2.out'])
  assert_rel_close(jnp.concatenate([h for h, _ in states]), ref['bi2.h_n'])
  # The exported view is PyTorch's keys for layer 0 of each layer; a stack round-trips through them.
  assert set(convert.export_state_dict(stack)) == {f'layers.{k}.{n}_l0{r}' for k in (0, 1) for r in ('', '_reverse')
                                                   for n in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')}
  # Wrong cell type or depth: one error, nothing written.
  before = np.asarray(stack.layers[0].weight_ih[...])
  with pytest.raises(convert.WeightsMismatchError, match='more layers.*_l1'):
    convert.load_stack(recurrent.Stacked([recurrent.BiLSTM(6, 4, rngs=nnx.Rngs(0))]), ref, prefix='bi2.')
  with pytest.raises(convert.WeightsMismatchError, match=r'shape mismatches.*\(12, 6\) vs model \(16, 6\)'):
    convert.load_stack(recurrent.Stacked([recurrent.BiLSTM(6, 4, rngs=nnx.Rngs(0)),
                                          recurrent.BiLSTM(8, 4, rngs=nnx.Rngs(0))]), GRU_FILE, prefix='bi2.')
  with pytest.raises(convert.WeightsMismatchError, match='shape mismatches'):
    convert.load_stack(stack, GRU_FILE, prefix='bi2.')
  np.testing.assert_array_equal(stack.layers[0].weight_ih[...], before)
  with pytest.raises(TypeError, match='load_lstm expects'):
    convert.load_lstm(recurrent.GRU(6, 4, rngs=nnx.Rngs(0)), ref, prefix='uni.')


def tiny_res_rbg(seed, **overrides):
  cfg = dict(name='res_rbg', backbone='resnet50', width=8, stage_sizes=(2, 1, 1, 1),
             attention='none', rbg_blocks=1, hidden=4, merge='concat', dropout=0.0)
  cfg.update(overrides)
  return models.create_model(ml_collections.ConfigDict(cfg), 7, rngs=nnx.Rngs(seed))


def test_apply_pretrained(io, tmp_path):
  src = tiny_res_rbg(seed=1)
  gru_path = str(tmp_path / 'rbg.safetensors')
  # A full-model export works as a GRU file: only recurrent keys are considered.
  convert.write_weights(gru_path, convert.export_state_dict(src))
  model = tiny_res_rbg(seed=2)
  init = ml_collections.ConfigDict({'backbone_weights': RESNET_FILE, 'backbone_prefix': '',
                                    'gru_weights': gru_path, 'gru_prefix': ''})
  summary = convert.apply_pretrained(model, init)
  assert summary['backbone']['loaded'] == 100  # the file's fc.* is skipped
  assert summary['gru']['loaded'] == 2 * 4 + 4 * 8  # 2 GRU + 4 BiGRU layers
  assert_rel_close(pooled(model.backbone, jnp.asarray(io['x'])), io['features'])
  for name in ('gru', 'bigru'):
    jax.tree.map(np.testing.assert_array_equal, nnx.state(getattr(src.temporal[0], name)),
                 nnx.state(getattr(model.temporal[0], name)))
  assert convert.apply_pretrained(model, ml_collections.ConfigDict(
      {'backbone_weights': '', 'gru_weights': None})) == {}
  other = tiny_res_rbg(seed=0, hidden=5)
  with pytest.raises(ValueError, match='shape mismatches'):
    convert.apply_pretrained(other, {'gru_weights': gru_path})


def test_cli_check(capsys):
  args = [RESNET_FILE, '--width', '8', '--stage_sizes', '2,1,1,1']
  assert convert.main(['check', *args]) == 0
  assert 'OK for resnet50 width 8' in capsys.readouterr().out
  assert convert.main(['check', RESNET_FILE, '--width', '16']) == 1
  err = capsys.readouterr().err
  assert 'missing' in err and 'shape mismatches' in err
