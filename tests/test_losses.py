"""Every loss term against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ferjax import losses

LOGITS = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
BATCH = {'label': jnp.array([0, 1])}


def test_cross_entropy_with_and_without_smoothing():
  def ce(row, target):
    return -sum(t * (x - math.log(sum(math.exp(v) for v in row))) for x, t in zip(row, target))
  rows = LOGITS.tolist()
  plain = (ce(rows[0], [1, 0, 0]) + ce(rows[1], [0, 1, 0])) / 2
  term = losses.cross_entropy(0.0)
  np.testing.assert_allclose(term({'logits': LOGITS}, BATCH, {}), plain, rtol=1e-6)
  # Smoothing 0.3 over 3 classes: targets 0.8 / 0.1 / 0.1.
  smooth = (ce(rows[0], [0.8, 0.1, 0.1]) + ce(rows[1], [0.1, 0.8, 0.1])) / 2
  np.testing.assert_allclose(losses.cross_entropy(0.3)({'logits': LOGITS}, BATCH, {}), smooth, rtol=1e-6)


def test_multiclass_hinge():
  # Row 0: true 2.0, best rival 0.0 -> max(0, 1 + 0 - 2) = 0. Row 1: true 0.5, rival 3.0 -> 3.5.
  value = losses.multiclass_hinge(1.0)({'logits': LOGITS}, BATCH, {})
  np.testing.assert_allclose(value, (0.0 + 3.5) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.multiclass_hinge(3.0)({'logits': LOGITS}, BATCH, {}),
                             (1.0 + 5.5) / 2, rtol=1e-6)


def test_l1_penalty_on_named_parameters():
  params = {'spatial': {'proj': {'kernel': jnp.array([[1.0, -2.0]]), 'bias': jnp.array([5.0])}},
            'head': {'kernel': jnp.array([-3.0])}}
  np.testing.assert_allclose(losses.l1_penalty(r'proj/kernel')({}, {}, params), 3.0)
  np.testing.assert_allclose(losses.l1_penalty(r'kernel$')({}, {}, params), 6.0)
  with pytest.raises(ValueError, match='matches no parameter'):
    losses.l1_penalty('nothing')({}, {}, params)


def test_l1_reconstruction_and_output_mean():
  outputs = {'reconstruction': jnp.array([[1.0, 2.0], [3.0, 4.0]]),
             'reconstruction_target': jnp.array([[1.5, 2.0], [1.0, 4.0]]),
             'margin': jnp.array([0.2, 0.4])}
  np.testing.assert_allclose(losses.l1_reconstruction()(outputs, {}, {}), (0.5 + 0 + 2 + 0) / 4)
  np.testing.assert_allclose(losses.output_mean('margin')(outputs, {}, {}), 0.3, rtol=1e-6)


def test_loss_sums_weighted_terms_and_names_them():
  loss = losses.Loss((('cross_entropy', 1.0, losses.cross_entropy()),
                      ('hinge', 0.5, losses.multiclass_hinge())))
  total, terms = loss({'logits': LOGITS}, BATCH, {})
  assert set(terms) == {'cross_entropy', 'hinge'} and loss.names == ('cross_entropy', 'hinge')
  np.testing.assert_allclose(total, terms['cross_entropy'] + 0.5 * terms['hinge'], rtol=1e-6)
  with pytest.raises(ValueError, match='unique'):
    losses.Loss((('a', 1.0, losses.cross_entropy()), ('a', 1.0, losses.cross_entropy())))
