"""Train state, optimizer and the functional train/eval steps that `jax.jit` compiles.

The NNX model is split once into a static `GraphDef` and two pytrees: `params` (nnx.Param) and
`model_state` (everything else, i.e. BatchNorm statistics). The steps merge them inside the traced function
(`nnx.merge(..., copy=True)`), so the jitted functions are pure, take and return plain pytrees, and carry no
per-call Python graph traversal.
"""

from collections.abc import Callable, Mapping
import dataclasses
import functools
import re
from typing import Any

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ferjax import config as config_lib
from ferjax import losses
from ferjax import normalization as normalization_lib
from ferjax import plateau
from ferjax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done.
  params: Any  # nnx.State of nnx.Param.
  model_state: Any  # nnx.State of the rest (BatchNorm statistics).
  opt_state: Any
  rng: jax.Array  # uint32 key data; the step's dropout key is fold_in(rng, step).


DEFAULT_WEIGHT_DECAY_RULES = config_lib.DEFAULT_WEIGHT_DECAY_RULES


def decay_multiplier(path, rules=DEFAULT_WEIGHT_DECAY_RULES) -> float:
  """The weight-decay multiplier of the parameter at `path`: that of the first (regex, multiplier) rule
  whose regex `re.search`es its path ('backbone/layer1/0/conv1/kernel'); 0 when none does."""
  name = losses.param_path(path)
  for pattern, multiplier in rules:
    if re.search(pattern, name):
      return float(multiplier)
  return 0.0


def decays(path, rules=DEFAULT_WEIGHT_DECAY_RULES) -> bool:
  """Whether weight decay applies to the parameter at `path` (a multiplier > 0)."""
  return decay_multiplier(path, rules) > 0


def decay_mask(params, rules=DEFAULT_WEIGHT_DECAY_RULES):
  """A pytree of bools shaped like `params`: True where weight decay applies (see `decays`)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(path, rules), params)


def decay_multipliers(params, rules=DEFAULT_WEIGHT_DECAY_RULES):
  """A pytree of floats shaped like `params`: each parameter's weight-decay multiplier."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decay_multiplier(path, rules), params)


def add_decayed_weights(weight_decay: float, rules=DEFAULT_WEIGHT_DECAY_RULES
                        ) -> optax.GradientTransformation:
  """`updates + weight_decay * multiplier * params` per parameter (decoupled weight decay), one
  `optax.add_decayed_weights` per distinct multiplier; with the default rules exactly the single masked
  transform of the rule above."""
  rules = tuple((str(p), float(m)) for p, m in rules)
  groups = sorted({m for _, m in rules if m > 0}) or [1.0]

  def group_mask(multiplier):
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: decay_multiplier(path, rules) == multiplier, params)
  parts = [optax.add_decayed_weights(weight_decay * m, mask=group_mask(m)) for m in groups]
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


def optimizer_numbers(train: ml_collections.ConfigDict, total_steps: int, warmup_steps: int,
                      steps_per_epoch: int = 1) -> dict[str, float]:
  """The numbers of `train`'s optimizer for a run of `total_steps` steps: learning rate, schedule
  lengths in steps (the warm-up at most `total_steps - 1`; 'step' decay every `step_every` steps),
  weight decay, momentum and clipping norm. `Optimizer.transformation` reads them."""
  return {'learning_rate': float(train.learning_rate), 'total_steps': float(max(total_steps, 1)),
          'warmup_steps': float(min(warmup_steps, max(total_steps - 1, 0))),
          'step_every': float(max(round(train.get('step_epochs', 1.0) * steps_per_epoch), 1)),
          'step_factor': float(train.get('step_factor', 1.0)),
          'weight_decay': float(train.weight_decay), 'momentum': float(train.get('momentum', 0.0)),
          'grad_clip': float(train.grad_clip)}


def schedule(name: str, numbers: Mapping[str, Any]) -> optax.Schedule:
  """The learning rate at each step: a linear warm-up from 0 over `warmup_steps`, then `name`:
  'cosine' decays to 0 at `total_steps`; 'constant' and 'plateau' stay at `learning_rate` (the plateau
  scale multiplies the updates, `ferjax.plateau`); 'step' multiplies it by `step_factor` every
  `step_every` steps counted from step 0 (PyTorch's `StepLR` stepped once per epoch, e.g. DAN's x0.1
  every 10 epochs).

  The formulas of optax's `linear_schedule`, `cosine_decay_schedule` and `join_schedules`, written so
  that `numbers` may be traced values (optax's versions branch on the lengths in Python).
  """
  peak, warmup = numbers['learning_rate'], numbers['warmup_steps']

  def warming_up(count):  # optax.linear_schedule(0, peak, warmup).
    frac = 1 - jnp.clip(count, 0, warmup) / jnp.maximum(warmup, 1)
    return (0.0 - peak) * frac + peak

  def after_warmup(count):
    if name == 'cosine':  # optax.cosine_decay_schedule(peak, total - warmup), from the warm-up's end.
      decay_steps = numbers['total_steps'] - warmup
      count = jnp.minimum(count - warmup, decay_steps)
      return peak * (0.5 * (1 + jnp.cos(jnp.pi * count / decay_steps)))
    if name == 'step':
      drops = jnp.floor_divide(count, numbers['step_every']).astype(jnp.float32)
      return peak * jnp.power(jnp.asarray(numbers['step_factor'], jnp.float32), drops)
    return jnp.full_like(jnp.asarray(count, jnp.float32), peak)

  def rate(count):
    return jnp.where(count < warmup, warming_up(count), after_warmup(count))
  return rate


def learning_rate_schedule(train: ml_collections.ConfigDict, total_steps: int, warmup_steps: int,
                           steps_per_epoch: int = 1) -> optax.Schedule:
  """`schedule` of `train.schedule` with the numbers of a `total_steps`-step run."""
  return schedule(train.get('schedule', 'cosine'),
                  optimizer_numbers(train, total_steps, warmup_steps, steps_per_epoch))


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizer:
  """The optimizer of a training config, split into its structure (which transformations, which
  parameters decay and train) and its `numbers` (`optimizer_numbers`).

  `jit_train_step` passes the numbers to the compiled step as arguments, not as constants: runs that
  differ only in them (cross-validation folds of different sizes, a resumed run made longer, a
  learning-rate sweep) share one compiled program. `tx` is the optax transformation with the
  numbers as constants (initialisation, eager use).

  `learning_rate_schedule`'s schedule; AdamW, RAdam or SGD with momentum (Nesterov's unless
  `train.nesterov` is False); optional global-norm clipping. RAdam (Liu et al., 2020; the Residual
  Masking Network's optimizer) decays weights decoupled, as the reference implementation the RMN code
  uses (`p -= lr * weight_decay * p`). Weight decay scales each parameter by the multiplier
  `train.weight_decay_rules` gives it (`decay_multiplier`), after the parameters whose path matches
  regex `no_decay` (the family's `Family.no_decay`: parameters its loss regularises, e.g. RFSCNN's SVM
  kernel) got multiplier 0.
  """
  train: ml_collections.ConfigDict
  numbers: Mapping[str, float]
  no_decay: str = ''

  @classmethod
  def from_config(cls, train: ml_collections.ConfigDict, total_steps: int, warmup_steps: int, *,
                  no_decay: str = '', steps_per_epoch: int = 1) -> 'Optimizer':
    return cls(train, optimizer_numbers(train, total_steps, warmup_steps, steps_per_epoch), no_decay)

  @property
  def tx(self) -> optax.GradientTransformation:
    return self.transformation(self.numbers)

  def transformation(self, numbers: Mapping[str, Any]) -> optax.GradientTransformation:
    """The optax transformation with `numbers` (floats, or traced scalars inside a jitted step)."""
    train = self.train
    rate = schedule(train.get('schedule', 'cosine'), numbers)
    rules = tuple(train.get('weight_decay_rules', DEFAULT_WEIGHT_DECAY_RULES))
    if self.no_decay:  # The family's own regularised parameters come first, at 0.
      rules = ((self.no_decay, 0.0),) + rules
    decay = add_decayed_weights(numbers['weight_decay'], rules)
    if train.optimizer == 'adamw':  # optax.adamw's chain, with the configured decay.
      tx = optax.chain(optax.scale_by_adam(), decay, optax.scale_by_learning_rate(rate))
    elif train.optimizer == 'radam':
      tx = optax.chain(optax.scale_by_radam(), decay, optax.scale_by_learning_rate(rate))
    else:
      tx = optax.chain(decay, optax.sgd(rate, momentum=numbers['momentum'],
                                        nesterov=bool(train.get('nesterov', True))))
    if train.grad_clip > 0:  # The structure follows the config; the norm is one of the numbers.
      tx = optax.chain(optax.clip_by_global_norm(numbers['grad_clip']), tx)
    if train.get('trainable', ''):
      tx = train_only(tx, train.trainable)
    if plateau.uses_plateau(train):  # Last: its scale multiplies the final updates.
      tx = optax.chain(tx, plateau.scale_by_plateau())
    return tx


def make_optimizer(train: ml_collections.ConfigDict, total_steps: int,
                   warmup_steps: int, *, no_decay: str = '', steps_per_epoch: int = 1
                   ) -> optax.GradientTransformation:
  """The optax transformation of `Optimizer.from_config(...)`, its numbers as constants."""
  return Optimizer.from_config(train, total_steps, warmup_steps, no_decay=no_decay,
                               steps_per_epoch=steps_per_epoch).tx


def train_only(tx: optax.GradientTransformation, pattern: str) -> optax.GradientTransformation:
  """`tx` on the parameters whose path matches regex `pattern` (`re.search`); the others are frozen: a
  zero update (bit-identical values) and no weight decay or clipping share (e.g. RFSCNN's second stage,
  `train.trainable='^head/'`). A pattern that matches no parameter is an error."""
  regex = re.compile(pattern)

  def labels(params):
    tree = jax.tree_util.tree_map_with_path(
        lambda path, _: 'train' if regex.search(losses.param_path(path)) else 'freeze', params)
    if 'train' not in jax.tree.leaves(tree):
      raise config_lib.ConfigError(
          f'config.train.trainable: expected a regex matching some parameter path, found {pattern!r} '
          f'(paths look like {losses.param_path(jax.tree_util.tree_flatten_with_path(params)[0][0][0])!r})')
    return tree
  return optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int | jax.Array):
  """(graphdef, TrainState) for a freshly created model; `seed` keys the dropout of every step."""
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))
  return graphdef, state


def init_sharded_state(make_model: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation,
                       seed: int, mesh: jax.sharding.Mesh, min_size: int = sharding.FSDP_MIN_SIZE):
  """(graphdef, TrainState, state shardings): the state created directly in its shardings.

  `make_model` (which builds the model from scratch from the `nnx.Rngs` it is given, e.g.
  `lambda rngs: create_model(..., rngs=rngs)`) and the optimizer's init run inside
  `jax.jit(..., out_shardings=state_shardings)`: XLA partitions the initialisation itself, so under FSDP
  every device computes only its own slices (random numbers are sharding-invariant:
  `jax_threefry_partitionable`, on by default) and no device or host ever holds the full parameter set.
  The values equal the replicated jitted init's bit for bit, and the eager
  `init_state(make_model(nnx.Rngs(params=seed)), ...)`'s to 1 float32 ulp (op-by-op dispatch fuses
  initialisers differently). The seed is an argument of the compiled init, not a constant in it: runs
  of other seeds reuse the program.
  """
  graphdef = None

  def init(seed):
    nonlocal graphdef
    graphdef, state = init_state(make_model(nnx.Rngs(params=jax.random.key(seed))), tx, seed)
    return state

  seed = jnp.asarray(seed, jnp.int32)
  state_sharding = sharding.state_shardings(jax.eval_shape(init, seed), mesh, min_size)
  state = jax.jit(init, out_shardings=state_sharding)(seed)
  return graphdef, state, state_sharding


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


NORMALIZATIONS = normalization_lib.NORMALIZATIONS
normalize_inputs = normalization_lib.normalize_inputs


def _as_loss(loss: 'losses.Loss | float') -> losses.Loss:
  """A Loss; a number is the label smoothing of the default cross-entropy (the older signature)."""
  return loss if isinstance(loss, losses.Loss) else losses.classification(float(loss))


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss,
               state: TrainState, batch: dict[str, jax.Array],
               normalization: str = 'imagenet',
               extra_metrics: Mapping[str, Callable] | None = None) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch; returns the new state and summed metrics.

  Metrics: `loss` (the weighted total), `loss/<term>` for every term of `loss`, `metric/<name>` for
  every family metric (`extra_metrics`: `(outputs, batch) -> scalar`, on the training forward pass),
  `correct`, `count`, `grad_norm`, `nonfinite`.
  """
  loss = _as_loss(loss)
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  inputs = normalize_inputs(batch, normalization)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    outputs = model(inputs, train=True, rngs=nnx.Rngs(dropout=dropout_key))
    total, terms = loss(outputs, inputs, params)
    extra = {name: jax.lax.stop_gradient(fn(outputs, inputs)).astype(jnp.float32)
             for name, fn in (extra_metrics or {}).items()}
    _, _, model_state = nnx.split(model, nnx.Param, ...)
    return total, (outputs['logits'], terms, extra, model_state)

  (total, (logits, terms, extra, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  correct = (jnp.argmax(sequence_probabilities(logits), -1) == batch['label']).sum()
  metrics = {'loss': total, 'correct': correct, 'count': jnp.asarray(logits.shape[0]),
             'grad_norm': optax.tree.norm(grads),
             **{f'loss/{name}': value for name, value in terms.items()},
             **{f'metric/{name}': value for name, value in extra.items()},
             # Checked on the host before every save, so no checkpoint ever holds NaN/inf.
             'nonfinite': (~(jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(params))))
                          .astype(jnp.int32)}
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  return new_state, metrics


def sequence_probabilities(logits: jax.Array) -> jax.Array:
  """Class probabilities [B, C] of sequence logits [B, C], or of per-frame logits [B, T, C] (an image
  model run on every frame): then the mean of the frames' probabilities scores the sequence."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
  return probs.mean(axis=1) if probs.ndim == 3 else probs


def eval_step(graphdef: nnx.GraphDef, state: TrainState, batch: dict[str, jax.Array],
              normalization: str = 'imagenet') -> dict[str, jax.Array]:
  """Sequence class probabilities (and their argmax) in inference mode (BatchNorm running averages,
  no dropout); `frames_scored` [B] is 1 for sequence logits, T when frame probabilities were averaged."""
  model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
  logits = model(normalize_inputs(batch, normalization), train=False)['logits']
  probs = sequence_probabilities(logits)
  frames_scored = logits.shape[1] if logits.ndim == 3 else 1
  return {'pred': jnp.argmax(probs, -1).astype(jnp.int32), 'probs': probs,
          'frames_scored': jnp.full(probs.shape[:1], frames_scored, jnp.int32)}


def jit_train_step(graphdef, tx: 'Optimizer | optax.GradientTransformation',
                   loss: 'losses.Loss | float', state_sharding, batch_sharding, replicated,
                   normalization: str = 'imagenet',
                   extra_metrics: Mapping[str, Callable] | None = None) -> Callable:
  """The jitted train step `(state, batch) -> (state, metrics)` with explicit shardings; the incoming
  state is donated.

  `tx` is an `Optimizer` (its numbers become arguments of the compiled step, see `Optimizer`) or an
  optax transformation (compiled in); `loss` a `losses.Loss` (a number means cross-entropy with that
  label smoothing); `extra_metrics` the family's training metrics (`Family.metrics(config)`).
  """
  loss, extra_metrics = _as_loss(loss), dict(extra_metrics or {})
  if not isinstance(tx, Optimizer):
    return jax.jit(functools.partial(train_step, graphdef, tx, loss, normalization=normalization,
                                     extra_metrics=extra_metrics),
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  optimizer = tx

  def step(state, batch, numbers):
    return train_step(graphdef, optimizer.transformation(numbers), loss, state, batch,
                      normalization=normalization, extra_metrics=extra_metrics)
  step.__name__ = step.__qualname__ = 'train_step'  # The name profiles and the compilation cache show.
  jitted = jax.jit(step, in_shardings=(state_sharding, batch_sharding, replicated),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  numbers = {name: jax.make_array_from_callback((), replicated,
                                                lambda _, v=value: np.asarray(v, np.float32))
             for name, value in optimizer.numbers.items()}
  return _WithNumbers(jitted, numbers)


@dataclasses.dataclass(frozen=True)
class _WithNumbers:
  """A jitted train step with its optimizer numbers bound: called, lowered and compiled as
  `(state, batch)`; other attributes (`as_text`, `cost_analysis`, ...) are the wrapped stage's."""
  stage: Any  # The jitted function, its `Lowered` or its `Compiled`, taking (state, batch, numbers).
  numbers: dict

  def __call__(self, state, batch):
    return self.stage(state, batch, self.numbers)

  def lower(self, state, batch) -> '_WithNumbers':
    return _WithNumbers(self.stage.lower(state, batch, self.numbers), self.numbers)

  def compile(self, *args, **kwargs) -> '_WithNumbers':
    return _WithNumbers(self.stage.compile(*args, **kwargs), self.numbers)

  def __getattr__(self, name):
    if name in ('stage', 'numbers'):  # Not yet set (copy, pickle): no recursion.
      raise AttributeError(name)
    return getattr(self.stage, name)


def jit_eval_step(graphdef, state_sharding, batch_sharding,
                  normalization: str = 'imagenet') -> Callable:
  return jax.jit(functools.partial(eval_step, graphdef, normalization=normalization),
                 in_shardings=(state_sharding, batch_sharding), out_shardings=batch_sharding)
