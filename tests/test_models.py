"""Tests for ferjax.models: ResNet, channel attention, Res-RBG, registry and parameter counts."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ferjax import models
from ferjax.models import attention
from ferjax.models import resnet


def tiny_config(**overrides):
  cfg = dict(name='res_rbg', backbone='resnet50', width=4, stage_sizes=(1, 1, 1, 1),
             attention='geca', rbg_blocks=1, hidden=8, merge='concat', pooling='mean',
             dropout=0.5, dtype='float32')
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def frames(b=2, t=4, size=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (b, t, size, size, 3), jnp.float32)


@nnx.jit(static_argnames='train')
def call(model, x, train=False, rngs=None):
  """Jitted model call (one compile instead of op-by-op dispatch); updates BatchStats in place."""
  fn = getattr(model, 'logits', model)  # Res-RBG's array API; plain layers are called directly.
  return fn(x, train=train) if rngs is None else fn(x, train=train, rngs=rngs)


@pytest.fixture(scope='module')
def tiny_model():
  return models.create_model(tiny_config(), 7, rngs=nnx.Rngs(params=0))


def fresh(model):
  return nnx.merge(*nnx.split(model), copy=True)


@pytest.mark.parametrize('arch,num_features', [('resnet18', 64), ('resnet34', 64),
                                               ('resnet50', 256)])
def test_tiny_resnet_shapes(arch, num_features):
  # Abstract evaluation runs the same code without spending time on compute.
  net = nnx.eval_shape(lambda: resnet.ResNet(arch, width=8, stage_sizes=(1, 1, 1, 1),
                                             attention='eca', num_classes=5, rngs=nnx.Rngs(0)))
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  assert nnx.eval_shape(lambda n, x: n.features(x), net, x).shape == (2, 1, 1, num_features)
  assert net.num_features == num_features
  assert nnx.eval_shape(lambda n, x: n(x), net, x).shape == (2, 5)
  # Block structure follows torchvision: downsample only where shapes change.
  assert net.layer2[0].downsample is not None
  assert (net.layer1[0].downsample is None) == (arch != 'resnet50')


def test_resnet_real_depths():
  net = nnx.eval_shape(lambda: resnet.ResNet('resnet50', rngs=nnx.Rngs(0)))
  assert [len(stage) for stage in net.layers] == [3, 4, 6, 3]
  # torchvision's resnet50 without fc has 23,508,032 parameters.
  assert models.count_params(net)['total'] == 23_508_032


def test_resnet_rejects_bad_input():
  net = nnx.eval_shape(lambda: resnet.ResNet('resnet18', width=4, stage_sizes=(1, 1, 1, 1),
                                             rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match='NHWC'):
    net(jnp.ones((2, 3, 32, 32)))
  with pytest.raises(ValueError, match='resnet18'):
    resnet.ResNet('resnet99', rngs=nnx.Rngs(0))


@pytest.mark.parametrize('channels,k', [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5),
                                        (2048, 7)])
def test_eca_kernel_size(channels, k):
  assert attention.eca_kernel_size(channels) == k
  assert attention.ECA(channels, rngs=nnx.Rngs(0)).conv.kernel.shape == (k, 1, 1)


def _conv1d_same(s, w):
  """Reference zero-padded cross-correlation of descriptors s [N, C] with kernel w [k]."""
  k = len(w)
  p = (k - 1) // 2
  padded = np.pad(s, ((0, 0), (p, p)))
  return np.stack([padded[:, i:i + k] @ w for i in range(s.shape[1])], axis=1)


def test_eca_and_geca_match_their_formulas_and_differ():
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 16))
  eca = attention.ECA(16, rngs=nnx.Rngs(3))
  geca = attention.GECA(16, rngs=nnx.Rngs(3))
  w = np.asarray(eca.conv.kernel[...])[:, 0, 0]
  np.testing.assert_array_equal(w, np.asarray(geca.conv.kernel[...])[:, 0, 0])
  xn = np.asarray(x)
  avg, mx = xn.mean(axis=(1, 2)), xn.max(axis=(1, 2))
  sig = lambda v: 1 / (1 + np.exp(-v))
  want_eca = xn * sig(_conv1d_same(avg, w))[:, None, None]
  want_geca = xn * sig(_conv1d_same(avg, w) + _conv1d_same(mx, w))[:, None, None]
  np.testing.assert_allclose(eca(x), want_eca, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(geca(x), want_geca, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(eca(x)) - np.asarray(geca(x))).max() > 1e-3


@pytest.mark.parametrize('name,kwargs', [('se', {}), ('geca', {'variant': 'ghost'})])
def test_other_attention_variants(name, kwargs):
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 32))
  module = attention.make_attention(name, 32, rngs=nnx.Rngs(0), **kwargs)
  y = module(x)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  assert attention.make_attention('none', 32, rngs=nnx.Rngs(0)) is None
  with pytest.raises(ValueError, match='cbam'):
    attention.make_attention('cbam', 32, rngs=nnx.Rngs(0))


def test_batchnorm_train_vs_eval(tiny_model):
  net = fresh(tiny_model).backbone
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  before = jax.tree.map(jnp.copy, nnx.state(net, nnx.BatchStat))
  y_eval = call(net, x, train=False)
  unchanged = nnx.state(net, nnx.BatchStat)
  jax.tree.map(np.testing.assert_array_equal, before, unchanged)
  y_train = call(net, x, train=True)
  after = nnx.state(net, nnx.BatchStat)
  np.testing.assert_allclose(after['bn1']['mean'][...],
                             0.1 * jnp.mean(net.conv1(x), axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  # The running variance moves the same way from its initial 1, towards the batch's variance.
  np.testing.assert_allclose(before['bn1']['var'][...], 1.0)
  np.testing.assert_allclose(after['bn1']['var'][...],
                             0.9 + 0.1 * jnp.var(net.conv1(x), axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  assert not np.allclose(y_eval, y_train)
  # Eval is deterministic and uses the (now updated) running statistics.
  y_eval2 = call(net, x)
  np.testing.assert_array_equal(y_eval2, call(net, x))
  assert not np.allclose(y_eval, y_eval2)


def test_default_param_count_close_to_paper():
  cfg = ml_collections.ConfigDict({'name': 'res_rbg'})
  model = nnx.eval_shape(lambda: models.create_model(cfg, 7, rngs=nnx.Rngs(0)))
  counts = models.count_params(model)
  assert set(counts) == {'backbone', 'temporal', 'head', 'total'}
  assert counts['total'] == counts['backbone'] + counts['temporal'] + counts['head']
  assert counts['head'] == 560 * 7 + 7
  assert counts['total'] == 63_720_045 and abs(counts['total'] / 64.20e6 - 1) < 0.01, counts
  # The full-size forward traces (abstractly) at the paper's input size: T=16, 224 px.
  x = jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m.logits(x), model, x).shape == (2, 7)


def test_res_rbg_forward_and_grad(tiny_model):
  model = fresh(tiny_model)
  x = frames()
  labels = jnp.array([1, 3])

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, rest, key):
    m = nnx.merge(graphdef, params, rest, copy=True)
    logits = m.logits(x, train=True, rngs=nnx.Rngs(dropout=key))
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return loss, nnx.state(m, nnx.BatchStat)

  (loss, new_stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, rest, jax.random.key(0))
  assert np.isfinite(loss)
  logits = call(model, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  for part in ('backbone', 'temporal', 'head'):
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads[part])]
    assert all(np.isfinite(norms)) and sum(norms) > 0, part
  # Recurrent weights of both RBG layer kinds receive gradient.
  assert float(jnp.abs(grads['temporal'][0]['gru'][0]['weight_hh'][...]).sum()) > 0
  assert float(jnp.abs(grads['temporal'][0]['bigru'][3]['weight_hh'][...]).sum()) > 0
  assert not np.allclose(new_stats['backbone']['bn1']['mean'][...],
                         rest['backbone']['bn1']['mean'][...])


def test_dropout_uses_call_time_rngs(tiny_model):
  x = frames()
  run = lambda key: call(fresh(tiny_model), x, train=True, rngs=nnx.Rngs(dropout=key))
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))
  with pytest.raises(ValueError, match='rngs'):
    tiny_model.logits(x, train=True)
  # Eval ignores dropout entirely.
  np.testing.assert_array_equal(call(tiny_model, x, rngs=nnx.Rngs(dropout=5)),
                                call(tiny_model, x))


@pytest.mark.parametrize('merge,pooling', [('sum', 'last'), ('mean', 'mean')])
def test_res_rbg_variants(merge, pooling):
  cfg = tiny_config(merge=merge, pooling=pooling, backbone='resnet18', attention='se')
  model = nnx.eval_shape(lambda: models.create_model(cfg, 3, rngs=nnx.Rngs(0)))
  assert model.temporal[0].out_features == 8
  x = jax.ShapeDtypeStruct((2, 3, 32, 32, 3), jnp.float32)
  assert nnx.eval_shape(lambda m, x: m.logits(x), model, x).shape == (2, 3)


def test_state_holds_only_params_and_batch_stats(tiny_model):
  model = tiny_model
  kinds = {type(v) for _, v in nnx.to_flat_state(nnx.state(model))}
  assert kinds == {nnx.Param, nnx.BatchStat}


def test_bfloat16_compute_returns_float32_logits(tiny_model):
  model = models.create_model(tiny_config(dtype='bfloat16'), 7, rngs=nnx.Rngs(params=0))
  params = nnx.state(model, nnx.Param)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = call(model, frames())
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  ref = call(tiny_model, frames())
  np.testing.assert_allclose(logits, ref, atol=0.1 * float(jnp.abs(ref).max()) + 0.05)


def test_model_contract_takes_the_batch_and_returns_a_dict(tiny_model):
  x = frames()
  outputs = nnx.jit(lambda m, b: m(b))(tiny_model, {'frames': x, 'label': jnp.zeros(2, jnp.int32)})
  np.testing.assert_allclose(outputs['logits'], call(tiny_model, x), rtol=1e-5, atol=1e-5)


def test_create_model_rejects_bad_values():
  # Validation happens before any parameter is created.
  with pytest.raises(ValueError, match='model.merge'):
    models.create_model(tiny_config(merge='max'), 7, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='model.name'):
    models.create_model(tiny_config(name='nope'), 7, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='model.dtype'):
    models.create_model(tiny_config(dtype='float16'), 7, rngs=nnx.Rngs(0))


def _rbg_reference(block, x, relu_before_gru):
  """Algorithm 1 written out layer by layer (eval mode), for comparison with RBGBlock.__call__."""
  for gru in block.gru:
    y, _ = gru(jax.nn.relu(x) if relu_before_gru else x)
    x = y + x if y.shape == x.shape else y
  for norm, bigru in zip(block.norm, block.bigru):
    y, _ = bigru(jax.nn.relu(norm(x, use_running_average=True)))
    x = y + x if y.shape == x.shape else y
  return x


@pytest.mark.parametrize('relu_before_gru', [True, False])
def test_rbg_block_follows_algorithm_1(relu_before_gru):
  from ferjax.models import res_rbg
  block = res_rbg.RBGBlock(6, 6, merge='sum', relu_before_gru=relu_before_gru, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 6))
  np.testing.assert_allclose(block(x, train=False), _rbg_reference(block, x, relu_before_gru),
                             rtol=1e-6, atol=1e-6)
  # ReLU before the GRUs matters: negative inputs change the result.
  other = _rbg_reference(block, x, not relu_before_gru)
  assert np.abs(np.asarray(other) - np.asarray(block(x, train=False))).max() > 1e-3


def test_rbg_block_plain_stack_options():
  from ferjax.models import res_rbg
  plain = res_rbg.RBGBlock(6, 6, bigru_layers=0, residual=False, norm=False, rngs=nnx.Rngs(0))
  assert len(plain.bigru) == 0 and plain.out_features == 6
  x = jax.random.normal(jax.random.key(1), (2, 5, 6))
  y, _ = plain.gru[0](jax.nn.relu(x))
  y, _ = plain.gru[1](jax.nn.relu(y))
  np.testing.assert_allclose(plain(x), y, rtol=1e-6, atol=1e-6)  # No residual additions.
  no_norm = res_rbg.RBGBlock(6, 6, norm=False, rngs=nnx.Rngs(0))
  assert all(n is None for n in no_norm.norm) and len(no_norm.bigru) == 4


def test_head_zero_init_and_zero_init_residual():
  model = models.create_model(tiny_config(head_zero_init=True, zero_init_residual=True), 3,
                              rngs=nnx.Rngs(0))
  assert not np.asarray(model.head.kernel[...]).any()
  assert not np.asarray(model.backbone.layer1[0].bn3.scale[...]).any()
  default = models.create_model(tiny_config(), 3, rngs=nnx.Rngs(0))
  assert np.asarray(default.head.kernel[...]).any() and np.asarray(default.backbone.layer1[0].bn3.scale[...]).all()


def test_res_rbg_head_computes_in_float32_with_pytorch_init():
  """Under bfloat16 compute the classifier still runs in float32: the logits equal the float32 product
  of the pooled features and the float32 kernel (a bfloat16 product cast afterwards is off by ~1e-2
  relative). With head_init='pytorch' its initial kernel and bias are PyTorch's nn.Linear default,
  U(+-1/sqrt(fan_in)); the default, 'lecun_normal', has a zero bias."""
  default = models.create_model(tiny_config(hidden=64), 7, rngs=nnx.Rngs(params=0))
  assert not np.asarray(default.head.bias[...]).any() and np.asarray(default.head.kernel[...]).any()
  model = models.create_model(
      tiny_config(dtype='bfloat16', hidden=64, dropout=0.0, head_init='pytorch'), 7,
      rngs=nnx.Rngs(params=0))
  x = frames()
  b, t = x.shape[:2]

  @nnx.jit
  def pooled(model, x):
    h = model.backbone(x.reshape(b * t, *x.shape[2:]), False).reshape(b, t, -1)
    for block in model.temporal:
      h = block(h, False)
    return jnp.mean(h, axis=1)

  features = np.asarray(pooled(model, x), np.float64)
  kernel = np.asarray(model.head.kernel[...], np.float64)
  bias = np.asarray(model.head.bias[...], np.float64)
  logits = call(model, x)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), features @ kernel + bias, rtol=1e-5, atol=1e-6)
  # The PyTorch initialisation: uniform within the bound, reaching near it, bias included.
  bound = 1 / np.sqrt(64 * 2)  # fan_in: the concatenated BiGRU directions of tiny_config.
  assert model.head.kernel.shape == (128, 7)
  for values in (kernel, bias):
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.8 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.1)
