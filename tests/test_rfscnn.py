"""RFSCNN: the temporal layer, fusion, heads and losses by hand; short trainings; two-stage training;
weights into named submodules; the config presets."""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from ferjax import config as config_lib
from ferjax import models, steps
from ferjax.models import convert, rfscnn, resnet
from ferjax.inference import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, S, CLASSES = 4, 32, 3
TINY = dict(name='rfscnn', num_frames=T, backbone='resnet18', width=4, stage_sizes=(1, 1, 1, 1), grid=1,
            spatial_hidden=8, spatial_proj=2, spatial_out=4, temporal_hidden=8, temporal_proj=2,
            temporal_out=4, dropout=0.0, flow_scale=1.0)


def get_config(arg):
  spec = importlib.util.spec_from_file_location('rfscnn_config', os.path.join(REPO, 'configs/rfscnn.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny(seed=0, **overrides):
  return models.create_model({**TINY, **overrides}, CLASSES, rngs=nnx.Rngs(params=seed))


def batch(seed=0, size=6):
  """Class c: frames brightest in colour channel c, flow moving along direction c (dx, dy, diagonal)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(size) % CLASSES
  frames = rng.normal(0, 0.5, (size, T, S, S, 3)).astype(np.float32)
  frames[np.arange(size), :, :, :, labels] += 1.5
  directions = np.array([[2.0, 0.0], [0.0, 2.0], [-1.5, 1.5]], np.float32)
  flow = rng.normal(0, 0.3, (size, T - 1, S, S, 3)).astype(np.float32)
  flow[..., :2] += directions[labels][:, None, None, None, :]
  flow[..., 2] = np.hypot(flow[..., 0], flow[..., 1])
  return {'frames': jnp.asarray(frames), 'flow': jnp.asarray(flow), 'label': jnp.asarray(labels, jnp.int32)}


def reference_temporal(layer, m):
  """The paper's equations one step at a time: q_t = tanh(U m_t + W q_{t-1} + b) forward and backward,
  q~ = q^T G (L -> L_d) per direction, o = P^f q~^f + P^b q~^b."""
  rnn = layer.rnn
  w_ih, w_hh, b = rnn.weight_ih[...], rnn.weight_hh[...], rnn.bias[...]
  length = m.shape[1]
  outs = []
  for d, order in enumerate((range(length), range(length - 1, -1, -1))):
    q = jnp.zeros((m.shape[0], w_hh.shape[-1]))
    states = [None] * length
    for t in order:
      q = jnp.tanh(m[:, t] @ w_ih[d] + q @ w_hh[d] + b[d])
      states[t] = q
    states = jnp.stack(states, 1)  # [B, L, H]
    projected = jnp.einsum('blh,lq->bqh', states, layer.sparse_proj[d])
    outs.append(projected @ layer.weight_out[d])  # [B, L_d, O]
  return (outs[0] + outs[1]).reshape(m.shape[0], -1)


def test_temporal_layer_matches_the_equations():
  layer = rfscnn.TemporalRecurrent(5, 6, length=4, proj_steps=3, out_features=2, rngs=nnx.Rngs(0))
  m = jax.random.normal(jax.random.key(1), (2, 4, 5))
  np.testing.assert_allclose(layer(m), reference_temporal(layer, m), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'expects \[B, 4, F\] \(L = 4 steps\), got shape \(2, 5, 5\)'):
    layer(jnp.zeros((2, 5, 5)))


def test_temporal_gru_cell_runs_both_directions():
  layer = rfscnn.TemporalRecurrent(5, 6, length=4, proj_steps=3, out_features=2, cell='gru',
                                   rngs=nnx.Rngs(0))
  m = jax.random.normal(jax.random.key(1), (2, 4, 5))
  q, _ = layer.rnn(m)
  # The backward half of the last step depends only on the last input.
  q2, _ = layer.rnn(m.at[:, :3].set(0.0))
  np.testing.assert_allclose(q[:, 3, 6:], q2[:, 3, 6:], rtol=1e-6)
  assert not np.allclose(q[:, 3, :6], q2[:, 3, :6])
  assert layer(m).shape == (2, 6)


@pytest.mark.parametrize('fusion', rfscnn.FUSIONS)
def test_fusions_combine_the_two_streams_as_documented(fusion):
  model = tiny(fusion=fusion)
  b = batch()
  rgb = model.stream('rgb', b['frames'], False)
  flow = model.stream('flow', b['flow'], False)
  fused = {'concat': jnp.concatenate([rgb, flow], -1), 'sum': rgb + flow, 'product': rgb * flow}[fusion]
  want = fused @ model.head.kernel[...] + model.head.bias[...]
  np.testing.assert_allclose(model(b)['logits'], want, rtol=1e-5, atol=1e-6)


def test_flow_is_scaled_and_streams_check_their_inputs():
  b = batch()
  half = tiny(flow_scale=0.5)(b)['logits']
  np.testing.assert_allclose(half, tiny(flow_scale=1.0)({**b, 'flow': b['flow'] * 0.5})['logits'],
                             rtol=1e-5, atol=1e-6)
  model = tiny()
  with pytest.raises(ValueError, match=r'needs batch\["flow"\]'):
    model({'frames': b['frames']})
  with pytest.raises(ValueError, match=r'expects flow \[B, 3, S, S, 3\], got shape \(6, 4, 32, 32, 3\)'):
    model({'frames': b['frames'], 'flow': b['frames']})
  with pytest.raises(ValueError, match=r'model.grid=2 but the rgb ResNet gives a 1x1 feature map'):
    tiny(grid=2)(b)
  rgb_only = tiny(streams='rgb')
  assert rgb_only(b)['logits'].shape == (6, CLASSES) and not hasattr(rgb_only, 'backbone_flow')


def _config(**model):
  c = get_config('synthetic')
  c.model.update({**TINY, **model})
  return c


def test_losses_by_hand():
  model = tiny(head='svm')
  params = nnx.state(model, nnx.Param)
  # Make a known share of the sparse projections exactly zero.
  g = model.spatial_rgb.sparse_proj
  g[...] = g[...].at[0].set(0.0)
  params = nnx.state(model, nnx.Param)
  b = batch()
  outputs = model(b)
  c = _config(head='svm', svm_l2=0.1, l1_weight=0.01)
  total, terms = rfscnn.rfscnn_losses(c)(outputs, b, params)
  sparse = [model.spatial_rgb.sparse_proj, model.spatial_flow.sparse_proj,
            model.temporal_rgb.sparse_proj, model.temporal_flow.sparse_proj]
  l1 = sum(float(jnp.abs(p[...]).sum()) for p in sparse)
  near = sum(int((jnp.abs(p[...]) < 1e-3).sum()) for p in sparse) / sum(p[...].size for p in sparse)
  assert near >= model.spatial_rgb.sparse_proj[...][0].size / sum(p[...].size for p in sparse)
  scores = np.asarray(outputs['logits'])
  labels = np.asarray(b['label'])
  hinge = np.mean([max(0.0, 1 + max(s[j] for j in range(CLASSES) if j != y) - s[y])
                   for s, y in zip(scores, labels)])
  l2 = float(jnp.square(model.head.kernel[...]).sum())
  np.testing.assert_allclose(terms['hinge'], hinge, rtol=1e-5)
  np.testing.assert_allclose(terms['svm_l2'], l2, rtol=1e-5)
  np.testing.assert_allclose(terms['l1'], l1, rtol=1e-5)
  np.testing.assert_allclose(terms['sparsity'], near, rtol=1e-6)
  np.testing.assert_allclose(total, hinge + 0.1 * l2 + 0.01 * l1, rtol=1e-5)
  softmax_terms = rfscnn.rfscnn_losses(_config(head='softmax'))(outputs, b, params)[1]
  assert set(softmax_terms) == {'cross_entropy', 'l1', 'sparsity'}


def test_one_vs_rest_hinge_by_hand():
  """svm_multiclass='one_vs_rest': one binary hinge per class (+1 for the true class, -1 for the others),
  summed over classes, mean over the batch; Crammer-Singer stays the default."""
  model = tiny(head='svm')
  params = nnx.state(model, nnx.Param)
  b = batch()
  outputs = model(b)
  scores, labels = np.asarray(outputs['logits']), np.asarray(b['label'])
  want = np.mean([sum(max(0.0, 1 - (1 if c == y else -1) * s[c]) for c in range(CLASSES))
                  for s, y in zip(scores, labels)])
  c = _config(head='svm', svm_multiclass='one_vs_rest', svm_l2=0.0, l1_weight=0.0)
  total, terms = rfscnn.rfscnn_losses(config_lib.validate(c))(outputs, b, params)
  np.testing.assert_allclose(terms['hinge'], want, rtol=1e-5)
  np.testing.assert_allclose(total, want, rtol=1e-5)
  crammer = rfscnn.rfscnn_losses(_config(head='svm'))(outputs, b, params)[1]['hinge']
  assert get_config('synthetic').model.svm_multiclass == 'crammer_singer'
  assert not np.isclose(float(crammer), want)


@pytest.mark.parametrize('head', rfscnn.HEADS)
def test_svm_head_is_regularised_once(head):
  """The SVM's kernel is regularised by svm_l2 alone: the family exempts it from the optimizer's weight
  decay (a zero-gradient AdamW step leaves it unchanged while every other kernel shrinks by lr * wd);
  a softmax head decays like every other kernel."""
  c = config_lib.validate(_config(head=head))
  c.train.weight_decay, c.train.learning_rate, c.train.grad_clip = 0.5, 0.1, 0.0
  c.train.warmup_epochs = 0.0
  family = models.get_family('rfscnn')
  tx = steps.make_optimizer(c.train, 10, 0, no_decay=family.no_decay(c))
  params = nnx.state(tiny(head=head), nnx.Param)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  lr = float(optax.warmup_cosine_decay_schedule(0.0, 0.1, 0, 10)(0))
  for path, u in nnx.to_flat_state(updates):
    name = '/'.join(map(str, path))
    value = np.asarray(dict(nnx.to_flat_state(params))[path][...])
    if name == 'head/kernel':
      expected = 0.0 if head == 'svm' else -lr * 0.5 * value
    elif path[-1] == 'kernel' or str(path[-1]).startswith('weight_'):
      expected = -lr * 0.5 * value
    else:
      expected = 0.0
    np.testing.assert_allclose(np.asarray(u[...]), expected, rtol=1e-6, atol=1e-9, err_msg=name)


def test_dtype_auto_is_accepted_and_resolves_by_backend():
  c = config_lib.validate(_config(dtype='auto'))
  model = models.create_model(c.model, CLASSES, rngs=nnx.Rngs(params=0))
  assert model.dtype == (jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16)
  assert model(batch())['logits'].dtype == jnp.float32


def _train(model, config, steps_count, lr=3e-3, seed=0):
  c = config
  c.train.learning_rate = lr
  c.train.warmup_epochs = 0.0
  c.train.grad_clip = 0.0
  tx = steps.make_optimizer(c.train, steps_count, 0)
  graphdef, state = steps.init_state(model, tx, seed)
  step = jax.jit(functools.partial(steps.train_step, graphdef, tx, rfscnn.rfscnn_losses(c)))
  for i in range(steps_count):
    state, metrics = step(state, batch(seed=i, size=12))
  return graphdef, state, metrics


def _accuracy(graphdef, state):
  b = batch(seed=999, size=30)
  return float((steps.eval_step(graphdef, state, b)['pred'] == b['label']).mean())


@pytest.mark.slow  # Trains every fusion x head combination: CI's slow stage.
@pytest.mark.parametrize('head', rfscnn.HEADS)
@pytest.mark.parametrize('fusion', rfscnn.FUSIONS)
def test_each_fusion_and_head_learns_well_above_chance(fusion, head):
  # Product + SVM is the paper's configuration; with the centred product (product_offset=0)
  # it reached 0.50 here.
  c = _config(fusion=fusion, head=head)
  model = tiny(fusion=fusion, head=head)
  graphdef, state, _ = _train(model, c, 25)
  assert _accuracy(graphdef, state) >= 0.65  # chance: 1/3, on 30 held-out sequences


def test_product_fusion_starts_at_one_plus_each_standardised_stream():
  """Issue 10: the product of two centred streams, a * b, sends stream a the head's signal times b
  (zero-mean, not yet class-dependent), which averages out, so product fusion stalled at chance on the
  synthetic set. The offset 1 makes the fused features (1 + a) * (1 + b) = 1 + a + b + a * b."""
  b = batch()
  for fusion, offset, mean in [('product', 1.0, 1.0), ('product', 0.0, 0.0), ('concat', 1.0, 0.0)]:
    model = tiny(fusion=fusion, product_offset=offset)
    rgb, flow = model.stream('rgb', b['frames'], True), model.stream('flow', b['flow'], True)
    # Train-mode BatchNorm: batch mean = the offset, standard deviation 1 (epsilon aside).
    np.testing.assert_allclose(rgb.mean(0), mean, atol=1e-4)
    np.testing.assert_allclose(flow.mean(0), mean, atol=1e-4)
    np.testing.assert_allclose(rgb.std(0), 1.0, atol=0.05)
  assert tiny(fusion='product').norm_rgb.bias[...].mean() == 1.0  # The default.


def test_second_stage_trains_only_the_head_on_frozen_streams(tmp_path):
  c = _config()
  c.train.trainable = r'^head/'
  model = tiny(freeze_streams=True)
  params0 = jax.tree.map(np.array, nnx.state(model, nnx.Param))
  stats0 = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  graphdef, state, _ = _train(model, c, 3)
  flat0 = dict(nnx.to_flat_state(params0))
  changed = []
  for path, value in nnx.to_flat_state(state.params):
    same = np.array_equal(np.asarray(value[...]), np.asarray(flat0[path][...]))
    if path[0] == 'head':
      changed.append(not same)
    else:
      assert same, f'{path} changed although frozen'
  assert changed and all(changed)
  for path, value in nnx.to_flat_state(state.model_state):  # BatchNorm statistics: inference mode.
    np.testing.assert_array_equal(np.asarray(value[...]), np.asarray(dict(nnx.to_flat_state(stats0))[path][...]))
  # No weight decay on frozen parameters: a zero-gradient step with decay leaves them unchanged too.
  c.train.weight_decay = 0.5
  tx = steps.make_optimizer(c.train, 10, 0)
  zeros = jax.tree.map(jnp.zeros_like, state.params)
  updates, _ = tx.update(zeros, tx.init(state.params), state.params)
  for path, u in nnx.to_flat_state(updates):
    assert (np.abs(np.asarray(u[...])).sum() > 0) == (path[0] == 'head' and path[-1] == 'kernel'), path


def test_trainable_pattern_that_matches_nothing_is_a_config_error():
  c = _config()
  c.train.trainable = '^nothing/'
  tx = steps.make_optimizer(c.train, 10, 0)
  with pytest.raises(config_lib.ConfigError, match=r"config.train.trainable: .* found '\^nothing/'"):
    tx.init(nnx.state(tiny(), nnx.Param))


def test_init_checkpoint_loads_a_previous_runs_params_and_checks_shapes(tmp_path):
  source = tiny(seed=1)
  _, state = steps.init_state(source, optax.adam(1e-3), 0)
  with ocp.StandardCheckpointer() as checkpointer:  # the layout of ferjax.checkpointing's `state` item
    checkpointer.save(tmp_path / 'run' / 'checkpoints' / '7' / 'state', state)
    checkpointer.wait_until_finished()
  target = tiny(seed=2, head='svm')  # the head type is a loss, not a shape
  counts = run_lib.init_from_run(target, str(tmp_path / 'run'))
  assert counts['step'] == 7 and counts['loaded'] > 10
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(source)), nnx.to_flat_state(nnx.state(target))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))
  other = tiny(seed=3, temporal_out=5)
  kept = np.asarray(other.head.kernel[...])
  with pytest.raises(convert.WeightsMismatchError, match=r'shape mismatches.*head\.kernel: checkpoint \(8, 3\) '
                     r'vs model \(10, 3\)'):
    run_lib.init_from_run(other, str(tmp_path / 'run'))
  np.testing.assert_array_equal(np.asarray(other.head.kernel[...]), kept)  # nothing written
  with pytest.raises(convert.WeightsFileError, match='names no run with a checkpoint'):
    run_lib.init_from_run(other, str(tmp_path / 'nothing'))


def test_weights_files_load_into_named_submodules(tmp_path):
  donor = resnet.ResNet('resnet18', width=4, stage_sizes=(1, 1, 1, 1), rngs=nnx.Rngs(5))
  path = str(tmp_path / 'r18.safetensors')
  convert.export_resnet(donor, path)
  model = tiny()
  rgb_before = convert.export_state_dict(model.backbone_rgb)
  summary = convert.apply_pretrained(model, ml_collections.ConfigDict(
      {'backbone_flow_weights': path, 'backbone_flow_prefix': '', 'backbone_rgb_weights': '',
       'checkpoint': ''}))
  assert summary['backbone_flow']['loaded'] > 0
  flow_after = convert.export_state_dict(model.backbone_flow)
  for key, value in convert.export_state_dict(donor).items():
    np.testing.assert_array_equal(flow_after[key], value)
  for key, value in convert.export_state_dict(model.backbone_rgb).items():
    np.testing.assert_array_equal(rgb_before[key], value)
  with pytest.raises(convert.WeightsMismatchError,
                     match=r"no submodule 'backbone' .*expected one of \['backbone_flow', 'backbone_rgb'\]"):
    convert.apply_pretrained(model, {'backbone_weights': path})
  gru_model = tiny(temporal_cell='gru')
  assert 'temporal_rgb' in convert._submodules(gru_model)  # pylint: disable=protected-access


@pytest.mark.parametrize('arg', ['synthetic', 'enterface05', 'rml,fold=3,fusion=sum,head=softmax',
                                 'afew,stage=2', 'enterface05,seed=2,fusion=concat'])
def test_presets_validate(arg):
  c = config_lib.validate(get_config(arg))
  assert c.model.num_frames == c.dataset.num_frames
  # The paper's central clip on the real datasets; the synthetic quickstart samples TSN segments (its
  # sequences end at the apex, which a central clip of a long one misses; see configs/rfscnn.py).
  assert c.dataset.sampling == ('segments' if arg == 'synthetic' else 'clip')
  if 'stage=2' in arg:
    assert c.model.freeze_streams and c.train.trainable == r'^head/'


def test_bad_preset_arguments_are_one_line_errors():
  with pytest.raises(ValueError, match=r"preset 'nope' is unknown"):
    get_config('nope')
  with pytest.raises(ValueError, match=r"key one of \('fusion'"):
    get_config('rml,color=red')
  with pytest.raises(config_lib.ConfigError, match=r"config.model.fusion: expected one of 'concat', 'sum', "
                     r"'product', found 'max'"):
    config_lib.validate(get_config('rml,fusion=max'))


def test_parameter_count_of_the_paper_config():
  c = get_config('enterface05')
  model = nnx.eval_shape(lambda: models.create_model(c.model, 6, rngs=nnx.Rngs(params=0)))
  counts = models.count_params(model)
  assert counts['backbone_rgb'] == counts['backbone_flow'] == 11_176_512  # torchvision ResNet-18 - fc
  assert counts['temporal_rgb'] > counts['temporal_flow']  # L = 16 vs 15 steps in the sparse projection
  assert counts['total'] == sum(v for k, v in counts.items() if k != 'total')


def test_init_keys_follow_the_submodule_pattern_and_are_resumable():
  c = get_config('synthetic')
  c.init.backbone_head_weights = 3  # a new key of the pattern is checked as a string path
  with pytest.raises(config_lib.ConfigError, match=r'config.init.backbone_head_weights: expected a string'):
    config_lib.validate(c)
  c = get_config('synthetic')
  c.init.colour = 'x'
  with pytest.raises(config_lib.ConfigError, match=r"config key 'init.colour' is unknown"):
    config_lib.validate(c)
  assert 'init.backbone_flow_prefix' in config_lib.RESUMABLE_CHANGES
  assert 'init.checkpoint' in config_lib.RESUMABLE_CHANGES and 'model.fusion' not in config_lib.RESUMABLE_CHANGES
  c = get_config('synthetic')
  c.train.trainable = '('
  with pytest.raises(config_lib.ConfigError, match=r'config.train.trainable: expected a regular expression'):
    config_lib.validate(c)
