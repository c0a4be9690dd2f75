"""The family contract's open parts: weight-decay rules, formulation fields, registered converters and
inputs, the shared config parser, and resuming runs saved before fields moved."""

import importlib.util
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ferjax import config as config_lib
from ferjax import losses, models, registry, steps
from ferjax.data import inputs as inputs_lib
from ferjax.models import convert, resnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_module(name):
  spec = importlib.util.spec_from_file_location(f'contract_{name}', os.path.join(REPO, 'configs',
                                                                                 f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tiny(family: str) -> ml_collections.ConfigDict:
  arg = {'res_rbg': 'synthetic', 'rfscnn': 'synthetic', 'rmn': 'synthetic_images'}[family]
  c = _config_module(family).get_config(arg)
  c.model.width = 4
  if family != 'rfscnn':
    c.model.stage_sizes = (1, 1, 1, 1)
  if family == 'res_rbg':
    c.model.hidden = 8
  return c


def _multipliers(config) -> dict[str, float]:
  model = nnx.eval_shape(lambda: models.create_model(config.model, 3, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  tree = steps.decay_multipliers(params, config.train.weight_decay_rules)
  return {losses.param_path(p): m for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]}


# Hand-listed parameters of each family under the default rule: kernels and recurrent weight matrices
# decay; biases, normalisation scales/offsets and RFSCNN's L1-penalised sparse projections do not.
DECAYED = {
    'res_rbg': ['backbone/conv1/kernel', 'backbone/layer1/0/conv2/kernel',
                'backbone/layer2/0/downsample/conv/kernel', 'temporal/0/gru/0/weight_ih',
                'temporal/0/gru/1/weight_hh', 'temporal/1/bigru/3/weight_hh', 'head/kernel'],
    'rfscnn': ['backbone_rgb/conv1/kernel', 'backbone_flow/layer4/0/conv2/kernel',
               'spatial_rgb/weight_in', 'spatial_flow/weight_rec', 'spatial_rgb/weight_out',
               'temporal_rgb/rnn/weight_ih', 'temporal_flow/rnn/weight_hh', 'temporal_rgb/weight_out',
               'head/kernel'],
    'rmn': ['backbone/conv1/kernel', 'backbone/layer3/0/conv1/kernel', 'mask1/encoder/0/conv1/kernel',
            'mask2/decoder/0/conv2/kernel', 'mask4/out/conv1/kernel', 'mask1/up/0/conv/kernel',
            'head/kernel'],
}
NOT_DECAYED = {
    'res_rbg': ['backbone/bn1/scale', 'backbone/bn1/bias', 'backbone/layer1/0/bn2/scale',
                'temporal/0/gru/0/bias_ih', 'temporal/0/bigru/0/bias_hh', 'temporal/0/norm/0/scale',
                'temporal/1/norm/3/bias', 'head/bias'],
    'rfscnn': ['backbone_rgb/bn1/scale', 'backbone_flow/layer1/0/bn1/bias', 'spatial_rgb/bias',
               'spatial_flow/sparse_proj', 'temporal_rgb/sparse_proj', 'temporal_flow/rnn/bias',
               'norm_rgb/scale', 'norm_flow/bias', 'head/bias'],
    'rmn': ['backbone/bn1/scale', 'backbone/layer2/0/downsample/bn/bias', 'mask1/encoder/0/bn1/scale',
            'mask3/up/0/bn/bias', 'mask1/up/0/conv/bias', 'head/bias'],
}


@pytest.mark.parametrize('family', ['res_rbg', 'rfscnn', 'rmn'])
def test_weight_decay_mask_of_the_built_in_families(family):
  multipliers = _multipliers(_tiny(family))
  for name in DECAYED[family]:
    assert multipliers[name] == 1.0, name
  for name in NOT_DECAYED[family]:
    assert multipliers[name] == 0.0, name
  # Every parameter is one of the two kinds: nothing else gets a multiplier.
  assert set(multipliers.values()) == {0.0, 1.0}


class _Tiny(nnx.Module):

  def __init__(self):
    self.conv = nnx.Conv(2, 3, (3, 3), rngs=nnx.Rngs(0))
    self.head = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
    self.norm = nnx.BatchNorm(3, rngs=nnx.Rngs(2))


def _train(**kw):
  base = dict(optimizer='adamw', learning_rate=0.1, weight_decay=0.5, momentum=0.9, grad_clip=0.0,
              schedule='cosine', trainable='')
  return ml_collections.ConfigDict({**base, **kw})


def test_weight_decay_rules_scale_each_parameters_decay():
  """A zero-gradient AdamW step at the peak rate multiplies p by 1 - lr * wd * multiplier: head/kernel
  0.25 (first rule), conv/kernel 1 (second), the rest 0 (no rule)."""
  _, params, _ = nnx.split(_Tiny(), nnx.Param, ...)
  rules = ((r'^head/kernel$', 0.25), (r'kernel$', 1.0))
  tx = steps.make_optimizer(_train(weight_decay_rules=rules), total_steps=10, warmup_steps=0)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = nnx.to_pure_dict(optax.apply_updates(params, updates))
  old = nnx.to_pure_dict(params)
  np.testing.assert_allclose(new['head']['kernel'], old['head']['kernel'] * (1 - 0.1 * 0.5 * 0.25),
                             rtol=1e-6)
  np.testing.assert_allclose(new['conv']['kernel'], old['conv']['kernel'] * (1 - 0.1 * 0.5), rtol=1e-6)
  for leaf in (('head', 'bias'), ('conv', 'bias'), ('norm', 'scale'), ('norm', 'bias')):
    np.testing.assert_array_equal(new[leaf[0]][leaf[1]], old[leaf[0]][leaf[1]])


@pytest.mark.parametrize('optimizer', ['adamw', 'radam', 'sgd'])
def test_default_rules_reproduce_the_previous_optimizer_bit_for_bit(optimizer):
  """The default rules give the optimizer the previous code built (optax.adamw / radam / sgd chains with
  the kernel-and-weight_* mask): the same updates over three steps of random gradients, and the same
  optimizer-state structure (old checkpoints restore)."""
  def old_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: (losses.param_path(p).rsplit('/', 1)[-1] == 'kernel'
                      or losses.param_path(p).rsplit('/', 1)[-1].startswith('weight_')), params)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=10, end_value=0.0)
  old = {'adamw': optax.adamw(schedule, weight_decay=0.5, mask=old_mask),
         'radam': optax.chain(optax.scale_by_radam(), optax.add_decayed_weights(0.5, mask=old_mask),
                              optax.scale_by_learning_rate(schedule)),
         'sgd': optax.chain(optax.add_decayed_weights(0.5, mask=old_mask),
                            optax.sgd(schedule, momentum=0.9, nesterov=True))}[optimizer]
  new = steps.make_optimizer(_train(optimizer=optimizer,
                                    weight_decay_rules=config_lib.DEFAULT_WEIGHT_DECAY_RULES),
                             total_steps=10, warmup_steps=2)
  _, params, _ = nnx.split(_Tiny(), nnx.Param, ...)
  s_old, s_new, p_old, p_new = old.init(params), new.init(params), params, params
  assert jax.tree.structure(s_old) == jax.tree.structure(s_new)
  for i in range(3):
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(i), x.shape), params)
    u_old, s_old = old.update(grads, s_old, p_old)
    u_new, s_new = new.update(grads, s_new, p_new)
    p_old, p_new = optax.apply_updates(p_old, u_old), optax.apply_updates(p_new, u_new)
  for a, b in zip(jax.tree.leaves(p_old), jax.tree.leaves(p_new)):
    np.testing.assert_array_equal(a, b)


def test_weight_decay_rules_are_validated():
  c = _tiny('res_rbg')
  c.train.weight_decay_rules = (('kernel', -1.0),)
  with pytest.raises(config_lib.ConfigError, match=r'config.train.weight_decay_rules: expected a '
                     r'sequence of \(regex, multiplier >= 0\) pairs'):
    config_lib.validate(c)
  c.train.weight_decay_rules = (('(kernel', 1.0),)
  with pytest.raises(config_lib.ConfigError, match='weight_decay_rules'):
    config_lib.validate(c)


@pytest.mark.parametrize('family', ['res_rbg', 'rfscnn', 'rmn'])
def test_formulation_switches_are_model_config_fields(family):
  """`model.dot_1x1` / `model.fused_batchnorm` pick the ResNet layers' formulation when the model is built
  (and leave the module defaults as they were)."""
  c = _tiny(family)
  assert (c.model.dot_1x1, c.model.fused_batchnorm) == (True, True)  # The defaults of every config.
  config_lib.validate(c)
  before = resnet.DOT_1X1, resnet.FUSED_BATCHNORM

  def trunk(model_config):
    model = nnx.eval_shape(lambda: models.create_model(model_config, 3, rngs=nnx.Rngs(0)))
    return model.backbone_rgb if family == 'rfscnn' else model.backbone
  plain = c.model.copy_and_resolve_references()
  plain.dot_1x1 = plain.fused_batchnorm = False
  for model_config, expected in ((c.model, True), (plain, False)):
    backbone = trunk(model_config)
    assert isinstance(backbone.layer2[0].downsample.conv, resnet.Conv1x1) == expected
    assert backbone.bn1.fused == expected
  assert (resnet.DOT_1X1, resnet.FUSED_BATCHNORM) == before


class _Scaled(nnx.Module):
  """A layer of a family's own, with weights files in a layout of its own: {'gain': [n]}."""

  def __init__(self, n):
    self.gain = nnx.Param(jnp.ones(n))


class _WithScaled(nnx.Module):

  def __init__(self):
    self.scaler = _Scaled(4)
    self.head = nnx.Linear(4, 2, rngs=nnx.Rngs(0))


def test_a_registered_converter_loads_a_familys_own_submodule(tmp_path):
  model = _WithScaled()
  path = str(tmp_path / 'gain.npz')
  np.savez(path, gain=np.arange(4, dtype=np.float32))
  with pytest.raises(convert.WeightsMismatchError, match="no submodule 'scaler'"):
    convert.apply_pretrained(model, {'scaler_weights': path})

  def load(module, weights, *, prefix=''):
    arrays = convert.read_weights(weights)
    module.gain[...] = jnp.asarray(arrays[prefix + 'gain'])
    return {'loaded': 1}
  convert.register_converter(lambda m: isinstance(m, _Scaled), load)
  summary = convert.apply_pretrained(model, {'scaler_weights': path})
  assert summary == {'scaler': {'loaded': 1}}
  np.testing.assert_array_equal(model.scaler.gain[...], [0, 1, 2, 3])


def test_common_parser_takes_shared_keys_family_keys_and_words():
  common = _config_module('common')
  calls = []

  def preset():
    c = common.base()
    c.dataset.name = 'a'
    return c
  keys = {'width': lambda c, v: calls.append(('width', v)), **common.KEYS}
  words = {'big': lambda c: calls.append('big')}
  c = common.parse('a,fold=3,seed=7,width=2,big', presets={'a': preset}, default='a', keys=keys,
                   words=words)
  assert (c.dataset.name, c.dataset.fold, c.seed, calls) == ('a', 3, 7, [('width', '2'), 'big'])
  assert common.parse('', presets={'a': preset}, default='a').dataset.name == 'a'
  with pytest.raises(ValueError, match=r"config argument 'depth=1': expected key=value with key one of "
                     r"\('width', 'fold', 'seed'\), or one of the words \('big',\)"):
    common.parse('a,depth=1', presets={'a': preset}, default='a', keys=keys, words=words)
  with pytest.raises(ValueError, match=r"config argument fold='x': expected an integer"):
    common.parse('a,fold=x', presets={'a': preset}, default='a')
  with pytest.raises(ValueError, match=r"config preset 'b' is unknown; expected one of \('a',\)"):
    common.parse('b', presets={'a': preset}, default='a')


def test_every_config_file_shares_the_common_sections():
  """The generic sections of every preset are configs/common.py's keys plus the family's own ones."""
  common = _config_module('common').base().to_dict()
  own = {'res_rbg': {'augment.mask_prob', 'augment.mask_size', 'augment.mask_count',
                     'init.backbone_weights', 'init.backbone_prefix', 'init.gru_weights', 'init.gru_prefix'},
         'rfscnn': {'dataset.flow', 'init.backbone_rgb_weights', 'init.backbone_rgb_prefix',
                    'init.backbone_flow_weights', 'init.backbone_flow_prefix'},
         'rmn': {'init.backbone_weights', 'init.backbone_prefix'}}
  shared = {f'{s}.{k}' for s, d in common.items() if isinstance(d, dict) for k in d} | {'seed'}
  for family, extra in own.items():
    c = _tiny(family).to_dict()
    keys = {f'{s}.{k}' for s, d in c.items() if isinstance(d, dict) and s != 'model' for k in d} | {'seed'}
    assert keys == shared | extra, family


def test_runs_saved_before_fields_moved_still_resume():
  """A config.json of an older run (no weight_decay_rules / formulation fields; RFSCNN's and RMN's inert
  masking keys, RMN's flow and GRU keys) equals today's config: resuming it is allowed."""
  for family in ('rfscnn', 'rmn', 'res_rbg'):
    current = _tiny(family).to_dict()
    saved = _tiny(family).to_dict()
    del saved['train']['weight_decay_rules'], saved['model']['dot_1x1'], saved['model']['fused_batchnorm']
    del saved['model']['batchnorm_groups']  # Runs saved before it normalised over the global batch.
    if family != 'res_rbg':
      saved['augment'].update(mask_prob=0.0, mask_size=[0.1, 0.3], mask_count=1)
    if family == 'rmn':
      saved['dataset']['flow'] = 'dis'
      saved['init'].update(gru_weights='', gru_prefix='')
    assert config_lib.changed_fields(saved, current) == [], family
  # Masking that was on is a change; a different formulation is a change.
  current = _tiny('rmn').to_dict()
  saved = _tiny('rmn').to_dict()
  saved['augment'].update(mask_prob=0.5, mask_size=[0.1, 0.3], mask_count=1)
  assert [k for k, _, _ in config_lib.changed_fields(saved, current)] == [
      'augment.mask_count', 'augment.mask_prob', 'augment.mask_size']
  saved = _tiny('rmn').to_dict()
  saved['model']['dot_1x1'] = False
  assert [k for k, _, _ in config_lib.changed_fields(saved, current)] == ['model.dot_1x1']


def test_the_input_registry_is_open_and_says_what_is_missing():
  assert 'flow' in registry.get_family('rfscnn').inputs and 'flow' in inputs_lib.INPUTS
  with pytest.raises(ValueError, match=r"\['wave'\] not registered"):
    inputs_lib.check(('frames', 'wave'))
  with pytest.raises(ValueError, match='other than frames'):
    inputs_lib.register('frames', inputs_lib.INPUTS['flow'])
  with pytest.raises(TypeError, match='ferjax.data.inputs.Input'):
    inputs_lib.register('wave', lambda view: None)
  # The flow input owns its config key: a family without flow rejects it, naming the owner.
  c = _tiny('res_rbg')
  c.dataset.flow = 'dis'
  with pytest.raises(config_lib.ConfigError, match="'dataset.flow' is read by input 'flow', not by "
                     "'res_rbg'"):
    config_lib.validate(c)


def test_an_unknown_family_is_one_line_saying_how_to_make_it_known():
  with pytest.raises(ValueError) as info:
    registry.get_family('nope')
  message = str(info.value)
  assert '\n' not in message and "model.name='nope' is not a known model" in message
  assert 'res_rbg' in message and 'registers it' in message
