"""The optimizer and the train step, checked against hand-computed values.

Weight decay (which leaves decay, and by how much), the warm-up + cosine schedule, global-norm clipping,
label smoothing, and the train step's metrics. Each test fails if the behaviour is missing: e.g. a decay
mask that is all False leaves every parameter unchanged under zero gradients.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from ferjax import losses, sharding, steps
from ferjax.models import res_rbg


def _train_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      optimizer='adamw', learning_rate=0.1, weight_decay=0.5, momentum=0.0, grad_clip=0.0,
      warmup_epochs=0.0, label_smoothing=0.0))
  c.update(overrides)
  return c


@functools.cache
def _tiny_model() -> res_rbg.ResRBG:
  # Built once per process (creating a model compiles every initialiser); no test mutates it.
  return res_rbg.ResRBG(3, backbone='resnet18', width=4, stage_sizes=(1, 1, 1, 1), attention='geca',
                        rbg_blocks=1, hidden=4, dropout=0.0, rngs=nnx.Rngs(0))


def _names(params) -> dict[str, bool]:
  mask = steps.decay_mask(params)
  return {'/'.join(str(getattr(k, 'key', k)) for k in path if getattr(k, 'name', None) != 'value'):
          bool(v) for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}


def test_decay_mask_over_a_real_res_rbg():
  _, params, _ = nnx.split(_tiny_model(), nnx.Param, ...)
  mask = _names(params)
  decayed = {k for k, v in mask.items() if v}
  kept = {k for k, v in mask.items() if not v}
  # Kernels of convolutions (backbone, G-ECA's 1-D conv), the classifier and GRU weight matrices decay.
  for name in ('backbone/conv1/kernel', 'backbone/layer1/0/conv2/kernel', 'backbone/layer1/0/attn/conv/kernel',
               'head/kernel', 'temporal/0/gru/0/weight_ih', 'temporal/0/gru/0/weight_hh',
               'temporal/0/bigru/3/weight_hh'):
    assert name in decayed, (name, sorted(decayed)[:10])
  # Biases and normalisation parameters never do.
  for name in ('backbone/bn1/scale', 'backbone/bn1/bias', 'head/bias', 'temporal/0/gru/0/bias_ih',
               'temporal/0/gru/0/bias_hh', 'temporal/0/norm/0/scale', 'temporal/0/norm/0/bias'):
    assert name in kept, (name, sorted(kept)[:10])
  assert all(k.endswith(('kernel', 'weight_ih', 'weight_hh')) for k in decayed)
  assert all(k.endswith(('bias', 'scale', 'bias_ih', 'bias_hh')) for k in kept)


@pytest.mark.parametrize('optimizer', ['adamw', 'sgd'])
def test_zero_gradient_update_shrinks_exactly_the_decayed_leaves(optimizer):
  _, params, _ = nnx.split(_tiny_model(), nnx.Param, ...)
  lr, wd = 0.1, 0.5
  tx = steps.make_optimizer(_train_config(optimizer=optimizer, learning_rate=lr, weight_decay=wd),
                            total_steps=100, warmup_steps=0)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, opt_state, params)
  new = optax.apply_updates(params, updates)
  mask = jax.tree.leaves(steps.decay_mask(params))
  # Step 0 of the cosine schedule is the peak rate: decayed leaves become p * (1 - lr * wd).
  for decays, before, after in zip(mask, jax.tree.leaves(params), jax.tree.leaves(new)):
    expected = before * (1 - lr * wd) if decays else before
    np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-7)
  assert sum(mask) > 10 and sum(not m for m in mask) > 10


def test_warmup_cosine_schedule_values():
  config = _train_config(optimizer='sgd', learning_rate=1.0, weight_decay=0.0)
  tx = steps.make_optimizer(config, total_steps=110, warmup_steps=10)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  rates = []
  for _ in range(111):
    updates, state = tx.update({'w': jnp.ones(())}, state, params)
    rates.append(-float(updates['w']))  # SGD without momentum: the update is -lr(t) * g, g = 1.
  # Linear warm-up from 0 to the peak over 10 steps, then cosine to 0 at step 110.
  np.testing.assert_allclose(rates[:11], np.linspace(0, 1, 11), atol=1e-6)
  t = np.array([10, 35, 60, 85, 110])
  np.testing.assert_allclose([rates[i] for i in t], 0.5 * (1 + np.cos(np.pi * (t - 10) / 100)),
                             atol=1e-6)


def _rates(tx, n):
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  rates = []
  for _ in range(n):
    updates, state = tx.update({'w': jnp.ones(())}, state, params)
    rates.append(-float(updates['w']))  # SGD without momentum: the update is -lr(t) * g, g = 1.
  return np.array(rates)


def test_step_schedule_values():
  """'step' (PyTorch's StepLR stepped per epoch, DAN's x0.1 every 10 epochs): 3 steps per epoch, every
  2 epochs x0.5; drops counted from step 0, the warm-up (2 steps) rising linearly underneath."""
  config = _train_config(optimizer='sgd', learning_rate=0.8, weight_decay=0.0, schedule='step',
                         step_epochs=2.0, step_factor=0.5)
  rates = _rates(steps.make_optimizer(config, 30, warmup_steps=0, steps_per_epoch=3), 20)
  np.testing.assert_allclose(rates, [0.8] * 6 + [0.4] * 6 + [0.2] * 6 + [0.1] * 2, rtol=1e-6)
  warm = _rates(steps.make_optimizer(config, 30, warmup_steps=2, steps_per_epoch=3), 8)
  np.testing.assert_allclose(warm, [0.0, 0.4, 0.8, 0.8, 0.8, 0.8, 0.4, 0.4], rtol=1e-6)


def test_sgd_momentum_nesterov_or_pytorch_default():
  """g = 1 every step, lr 1, momentum 0.9: PyTorch's SGD (nesterov=False) steps by the buffer 1, 1.9,
  2.71; Nesterov's (the default) by g + 0.9 * buffer = 1.9, 2.71, 3.439."""
  config = _train_config(optimizer='sgd', learning_rate=1.0, weight_decay=0.0, momentum=0.9,
                         schedule='constant')
  np.testing.assert_allclose(_rates(steps.make_optimizer(config, 10, 0), 3), [1.9, 2.71, 3.439], rtol=1e-6)
  config.nesterov = False
  np.testing.assert_allclose(_rates(steps.make_optimizer(config, 10, 0), 3), [1.0, 1.9, 2.71], rtol=1e-6)


def test_global_norm_clipping():
  config = _train_config(optimizer='sgd', learning_rate=1.0, weight_decay=0.0, grad_clip=1.0)
  tx = steps.make_optimizer(config, total_steps=10, warmup_steps=0)
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(1)}
  grads = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}  # Global norm 5 -> scaled by 1/5.
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['a'], [-0.6, 0.0], atol=1e-6)
  np.testing.assert_allclose(updates['b'], [-0.8], atol=1e-6)
  small = {'a': jnp.array([0.3, 0.0]), 'b': jnp.array([0.4])}  # Norm 0.5 <= 1: unchanged.
  updates, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(updates['b'], [-0.4], atol=1e-6)


def test_label_smoothing_cross_entropy():
  logits = jnp.array([[2.0, 0.0, 0.0]])
  log_p = np.asarray(jax.nn.log_softmax(logits))[0]
  # Smoothing 0.3 over 3 classes: targets (0.8, 0.1, 0.1).
  expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
  np.testing.assert_allclose(steps.cross_entropy(logits, jnp.array([0]), 0.3), [expected], rtol=1e-6)
  np.testing.assert_allclose(steps.cross_entropy(logits, jnp.array([0]), 0.0), [-log_p[0]], rtol=1e-6)


def _step_inputs(model, **train):
  tx = steps.make_optimizer(_train_config(**train), total_steps=10, warmup_steps=0)
  graphdef, state = steps.init_state(model, tx, seed=0)
  frames = jax.random.normal(jax.random.key(1), (4, 2, 32, 32, 3))
  return graphdef, tx, state, {'frames': frames, 'label': jnp.array([0, 1, 2, 0])}


def _jit_step(graphdef, tx):
  return jax.jit(functools.partial(steps.train_step, graphdef, tx, 0.0))


def test_train_step_metrics_count_correct_predictions():
  model = _tiny_model()
  graphdef, tx, state, batch = _step_inputs(model)
  logits = jax.jit(lambda s, f: nnx.merge(graphdef, s.params, s.model_state).logits(f, train=True))(
      state, steps.normalize_inputs(batch)['frames'])
  _, metrics = _jit_step(graphdef, tx)(state, batch)
  assert int(metrics['count']) == 4
  assert int(metrics['correct']) == int((jnp.argmax(logits, -1) == batch['label']).sum())
  assert int(metrics['nonfinite']) == 0
  np.testing.assert_allclose(
      metrics['loss'], steps.cross_entropy(logits, batch['label'], 0.0).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss/cross_entropy'], metrics['loss'], rtol=1e-6)


def test_train_step_flags_a_nonfinite_parameter():
  graphdef, tx, state, batch = _step_inputs(_tiny_model())
  leaves, treedef = jax.tree.flatten(state.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.inf)
  state = state.replace(params=jax.tree.unflatten(treedef, leaves))
  _, metrics = _jit_step(graphdef, tx)(state, batch)
  assert int(metrics['nonfinite']) == 1


class _PerFrame(nnx.Module):
  """An image model run on every frame: logits [B, T, 3] = scale * the frame's top-left pixel."""

  def __init__(self):
    self.scale = nnx.Param(jnp.ones(()))

  def __call__(self, batch, *, train=False, rngs=None):
    return {'logits': self.scale[...] * batch['frames'][:, :, 0, 0, :]}


def test_per_frame_model_is_scored_per_sequence_by_mean_probability():
  tx = optax.sgd(0.0)
  graphdef, state = steps.init_state(_PerFrame(), tx, 0)
  # Sequence 0: two frames mildly for class 0, one strongly for class 2 -> a frame vote says 0, the mean
  # of probabilities says 2. Sequence 1: all frames for class 1.
  frames = np.zeros((2, 3, 2, 2, 3), np.float32)
  frames[0, :2, 0, 0] = [1.0, 0.0, 0.0]
  frames[0, 2, 0, 0] = [0.0, 0.0, 8.0]
  frames[1, :, 0, 0] = [0.0, 2.0, 0.0]
  out = jax.jit(functools.partial(steps.eval_step, graphdef))(state, {'frames': jnp.asarray(frames)})
  expected = jax.nn.softmax(jnp.asarray(frames[:, :, 0, 0]), -1).mean(1)
  np.testing.assert_allclose(out['probs'], expected, rtol=1e-6)
  assert out['pred'].tolist() == [2, 1] and out['frames_scored'].tolist() == [3, 3]
  # Training: every frame carries its sequence's label.
  loss = losses.cross_entropy()({'logits': jnp.asarray(frames[:, :, 0, 0])}, {'label': jnp.array([2, 1])},
                                {})
  by_hand = -jax.nn.log_softmax(jnp.asarray(frames[:, :, 0, 0]), -1)[
      jnp.arange(2)[:, None], jnp.arange(3)[None], jnp.array([[2] * 3, [1] * 3])].mean()
  np.testing.assert_allclose(loss, by_hand, rtol=1e-6)


@pytest.mark.parametrize('name', ['cosine', 'constant', 'step'])
def test_schedule_with_traced_numbers_equals_optax_schedules(name):
  """`steps.schedule` takes its numbers as traced values (so they can be arguments of the compiled
  step); at every step it equals optax's own schedules built with the numbers as constants."""
  config = _train_config(learning_rate=0.3, schedule=name, step_epochs=2.0, step_factor=0.1)
  rate = jax.jit(lambda count, numbers: steps.schedule(name, numbers)(count))
  for total, warmup in ((20, 0), (20, 5), (7, 6), (1, 0)):
    numbers = steps.optimizer_numbers(config, total, warmup, steps_per_epoch=3)
    if name == 'cosine':
      reference = optax.warmup_cosine_decay_schedule(0.0, 0.3, min(warmup, total - 1), max(total, 1))
    else:
      ramp = optax.linear_schedule(0.0, 0.3, max(warmup, 1))
      after = (optax.constant_schedule(0.3) if name == 'constant' else
               optax.exponential_decay(0.3, 6, 0.1, staircase=True))  # Every 2 epochs of 3 steps.
      reference = optax.join_schedules([ramp, lambda c: after(c + warmup)], [warmup])
    counts = jnp.arange(total + 3)
    np.testing.assert_allclose([rate(c, numbers) for c in counts], [reference(c) for c in counts],
                               rtol=1e-6, atol=1e-8, err_msg=f'{name} total={total} warmup={warmup}')


class _Tiny(nnx.Module):
  """A convolution and a linear classifier on frames [B, T, H, W, 3]: a few initialisers, quick to
  compile."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, batch, *, train=False, rngs=None):
    x = self.conv(batch['frames'].reshape((-1,) + batch['frames'].shape[2:]))
    x = x.mean((1, 2)).reshape(batch['frames'].shape[:2] + (4,)).mean(1)
    return {'logits': self.head(x)}


def test_optimizer_numbers_are_arguments_of_one_compiled_train_step():
  """Runs that differ only in the optimizer's numbers (learning rate, length, warm-up, weight decay,
  clipping norm) compile the same program, and each still trains with its own numbers: one step equals
  the step compiled with that run's numbers as constants."""
  mesh = sharding.make_mesh()
  replicated = sharding.replicated(mesh)
  _, _, _, batch = _step_inputs(_Tiny(nnx.Rngs(0)))
  programs, params = [], []
  for train, total, warmup in (({}, 10, 0), ({'learning_rate': 0.02, 'weight_decay': 0.1,
                                              'grad_clip': 0.5}, 300, 30)):
    optimizer = steps.Optimizer.from_config(_train_config(**{'grad_clip': 1.0, **train}), total,
                                            warmup)
    graphdef, state = steps.init_state(_Tiny(nnx.Rngs(0)), optimizer.tx, seed=0)
    step = steps.jit_train_step(graphdef, optimizer, 0.0, replicated, replicated, replicated)
    programs.append(step.lower(state, batch).as_text())
    constant, _ = _jit_step(graphdef, optimizer.tx)(state, batch)
    new, _ = step(state, batch)  # Donates `state`.
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(constant.params)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    params.append(new.params)
  assert programs[0] == programs[1]
  assert not all(np.allclose(a, b) for a, b in zip(*map(jax.tree.leaves, params)))


def test_seed_is_an_argument_of_the_compiled_init():
  """`init_sharded_state` compiles its init once for every seed (with the session's persistent
  compilation cache, tests/conftest.py, a second seed's init is a cache hit, not a compilation) and each
  seed still gets its own values: the eager initialisation's."""
  tx = steps.make_optimizer(_train_config(), 10, 0)
  mesh = sharding.make_mesh()
  events = []

  def listener(event, **kwargs):
    del kwargs
    events.append(event)
  jax.monitoring.register_event_listener(listener)
  try:
    states = []
    for seed in (0, 5):
      events.clear()
      states.append(steps.init_sharded_state(_Tiny, tx, seed, mesh)[1])
  finally:
    jax.monitoring.unregister_event_listener(listener)
  requests = events.count('/jax/compilation_cache/compile_requests_use_cache')
  assert requests >= 1 and events.count('/jax/compilation_cache/cache_hits') == requests, events
  for seed, state in zip((0, 5), states):
    eager = steps.init_state(_Tiny(nnx.Rngs(params=seed)), tx, seed)[1]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(eager)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not all(np.allclose(a, b) for a, b in zip(*(jax.tree.leaves(s.params) for s in states)))
