"""Composable loss terms: the train step minimises the weighted sum and logs every term by name.

A term is a function ``term(outputs, batch, params) -> scalar`` over a model's output dict, the batch
(``label`` int32 [B], the model's inputs) and the trainable parameters (an ``nnx.State``). A ``Loss`` is a
tuple of named, weighted terms; a family picks its terms from its config (``Family.losses``), and the
default is cross-entropy with the config's label smoothing. Values are means over the batch, so a
gradient-accumulated or sharded batch gives the same number.
"""

from collections.abc import Callable, Mapping
import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

Term = Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array], Any], jax.Array]


def _labels(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """Labels shaped like the scores' leading axes: a per-frame model's frames carry their sequence's."""
  return jnp.broadcast_to(labels[:, None], scores.shape[:2]) if scores.ndim == 3 else labels


def cross_entropy(label_smoothing: float = 0.0, logits: str = 'logits') -> Term:
  """Softmax cross-entropy of ``outputs[logits]`` ([B, C], or [B, T, C] per frame) against
  ``batch['label']`` with label smoothing."""
  def term(outputs, batch, params):
    del params
    scores = outputs[logits]
    labels = _labels(scores, batch['label'])
    targets = optax.smooth_labels(jax.nn.one_hot(labels, scores.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(scores, targets).mean()
  return term


def multiclass_hinge(margin: float = 1.0, logits: str = 'logits') -> Term:
  """Crammer-Singer multiclass SVM hinge: mean of max(0, margin + max_{j != y} s_j - s_y)."""
  def term(outputs, batch, params):
    del params
    scores = outputs[logits]
    onehot = jax.nn.one_hot(_labels(scores, batch['label']), scores.shape[-1], dtype=scores.dtype)
    true = jnp.sum(scores * onehot, -1)
    rival = jnp.max(jnp.where(onehot > 0, -jnp.inf, scores), -1)
    return jnp.maximum(0.0, margin + rival - true).mean()
  return term


def one_vs_rest_hinge(margin: float = 1.0, logits: str = 'logits') -> Term:
  """One-vs-rest SVM hinge: one binary SVM per class (target +1 for the true class, -1 for every other),
  summed over classes, mean over the batch: mean_i sum_c max(0, margin - t_ic s_ic). With an L2 term on
  the weights this is the sum of the C binary SVM objectives (liblinear's and LinearSVC's multiclass
  form, with the plain hinge)."""
  def term(outputs, batch, params):
    del params
    scores = outputs[logits]
    onehot = jax.nn.one_hot(_labels(scores, batch['label']), scores.shape[-1], dtype=scores.dtype)
    return jnp.maximum(0.0, margin - (2 * onehot - 1) * scores).sum(-1).mean()
  return term


def param_path(path) -> str:
  """'backbone_rgb/layer1/0/conv1/kernel': a parameter's pytree path without NNX's `.value` keys (the
  names that loss patterns, weight decay and `train.trainable` match)."""
  names = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
  return '/'.join(n for n in names if n != 'value')


def l1_penalty(pattern: str) -> Term:
  """Sum of |w| over the parameters whose path ('temporal/0/proj/kernel') matches regex ``pattern``
  (``re.search``); e.g. RFSCNN's sparse projections. A pattern that matches nothing is an error."""
  regex = re.compile(pattern)

  def term(outputs, batch, params):
    del outputs, batch
    leaves = [jnp.abs(x).sum() for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
              if regex.search(param_path(path))]
    if not leaves:
      raise ValueError(f'l1_penalty({pattern!r}) matches no parameter')
    return sum(leaves)
  return term


def l1_reconstruction(prediction: str = 'reconstruction', target: str = 'reconstruction_target') -> Term:
  """Mean absolute error between two model outputs (the model says what it reconstructs, e.g. its
  normalised input frames); the Residual Masking Network follow-up's reconstruction loss."""
  def term(outputs, batch, params):
    del batch, params
    return jnp.abs(outputs[prediction] - jax.lax.stop_gradient(outputs[target])).mean()
  return term


def output_mean(key: str) -> Term:
  """The mean of ``outputs[key]``: a loss a model computes itself (e.g. a margin on mask weights)."""
  def term(outputs, batch, params):
    del batch, params
    return jnp.mean(outputs[key])
  return term


@dataclasses.dataclass(frozen=True)
class Loss:
  """Weighted sum of named terms: ``loss(outputs, batch, params) -> (total, {name: value})``."""
  terms: tuple[tuple[str, float, Term], ...]

  def __post_init__(self):
    names = [name for name, _, _ in self.terms]
    if not names or len(set(names)) != len(names):
      raise ValueError(f'a Loss needs at least one term and unique names; got {names}')

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(name for name, _, _ in self.terms)

  def __call__(self, outputs, batch, params) -> tuple[jax.Array, dict[str, jax.Array]]:
    values = {name: term(outputs, batch, params).astype(jnp.float32) for name, _, term in self.terms}
    total = sum(weight * values[name] for name, weight, _ in self.terms)
    return total, values


def classification(label_smoothing: float = 0.0) -> Loss:
  """The default loss: cross-entropy with label smoothing, logged as 'cross_entropy'."""
  return Loss((('cross_entropy', 1.0, cross_entropy(label_smoothing)),))
