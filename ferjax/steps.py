"""Train state, optimizer and the functional train/eval steps that `jax.jit` compiles.

The NNX model is split once into a static `GraphDef` and two pytrees: `params` (nnx.Param) and
`model_state` (everything else, i.e. BatchNorm statistics). The steps merge them inside the traced function
(`nnx.merge(..., copy=True)`), so the jitted functions are pure, take and return plain pytrees, and carry no
per-call Python graph traversal.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done.
  params: Any  # nnx.State of nnx.Param.
  model_state: Any  # nnx.State of the rest (BatchNorm statistics).
  opt_state: Any
  rng: jax.Array  # uint32 key data; the step's dropout key is fold_in(rng, step).


def _param_name(path) -> str:
  """The parameter's own name: the last path key that is not an nnx.Variable's `.value` attribute."""
  names = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
  while names and names[-1] == 'value':
    names.pop()
  return names[-1] if names else ''


def decays(path) -> bool:
  """Weight decay on convolution/linear kernels and GRU weight matrices only (torchvision, timm and
  the flax examples exempt biases and normalisation scales/offsets)."""
  name = _param_name(path)
  return name == 'kernel' or name.startswith('weight_')


def decay_mask(params):
  """A pytree of bools shaped like `params`: True where weight decay applies (see `decays`)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def make_optimizer(train: ml_collections.ConfigDict, total_steps: int,
                   warmup_steps: int) -> optax.GradientTransformation:
  """Warm-up + cosine decay; AdamW or SGD with momentum; optional global-norm clipping."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, train.learning_rate, warmup_steps=warmup_steps, decay_steps=max(total_steps, 1),
      end_value=0.0)
  if train.optimizer == 'adamw':
    tx = optax.adamw(schedule, weight_decay=train.weight_decay, mask=decay_mask)
  else:
    tx = optax.chain(optax.add_decayed_weights(train.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=train.momentum, nesterov=True))
  if train.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(train.grad_clip), tx)
  return tx


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int):
  """(graphdef, TrainState) for a freshly created model."""
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))
  return graphdef, state


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, label_smoothing: float,
               state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch; returns the new state and summed metrics."""
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    logits = model(batch['frames'], train=True, rngs=nnx.Rngs(dropout=dropout_key))
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    _, _, model_state = nnx.split(model, nnx.Param, ...)
    return loss, (logits, model_state)

  (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  correct = (jnp.argmax(logits, -1) == batch['label']).sum()
  metrics = {'loss': loss, 'correct': correct, 'count': jnp.asarray(logits.shape[0]),
             'grad_norm': optax.tree.norm(grads),
             # Checked on the host before every save, so no checkpoint ever holds NaN/inf.
             'nonfinite': (~(jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(params))))
                          .astype(jnp.int32)}
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(graphdef: nnx.GraphDef, state: TrainState,
              batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Predictions of the model in inference mode (BatchNorm running averages, no dropout)."""
  model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
  logits = model(batch['frames'], train=False)
  return {'pred': jnp.argmax(logits, -1).astype(jnp.int32), 'probs': jax.nn.softmax(logits, -1)}


def jit_train_step(graphdef, tx, label_smoothing: float, state_sharding, batch_sharding,
                   replicated) -> Callable:
  """The jitted train step with explicit shardings; the incoming state is donated."""
  return jax.jit(
      functools.partial(train_step, graphdef, tx, label_smoothing),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=(0,))


def jit_eval_step(graphdef, state_sharding, batch_sharding) -> Callable:
  return jax.jit(functools.partial(eval_step, graphdef),
                 in_shardings=(state_sharding, batch_sharding), out_shardings=batch_sharding)
