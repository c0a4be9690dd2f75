"""train.evaluate scores a record by the mean class probabilities of its rows (TTA copies, windows)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax import sharding, train
from ferjax.data import augment, pipeline

T, S, K = 4, 32, 3
OPTIONS = augment.AugmentOptions(crop_scale=(0.5, 0.9), flip=True, rotation=10.0)


def _source():
  """Six records of frames with a bright left or right half (so a flip changes what the model sees)."""
  rng = np.random.default_rng(0)
  records = []
  for i in range(6):
    frames = rng.integers(0, 120, (5, 40, 40, 3), dtype=np.uint8)
    frames[:, :, :20 + 4 * (i % 3)] += 100  # A brightness edge at a different place per record.
    records.append({'frames': list(frames), 'label': i % 3})
  return records


@jax.jit
def _eval_fn(state, batch):
  """A tiny 'model': logits from the left-right and top-bottom brightness differences."""
  x = batch['frames'].astype(jnp.float32).mean(axis=(1, 4)) / 255.0  # [B, S, S]
  lr = x[:, :, :S // 2].mean((1, 2)) - x[:, :, S // 2:].mean((1, 2))
  tb = x[:, :S // 2].mean((1, 2)) - x[:, S // 2:].mean((1, 2))
  logits = state * jnp.stack([lr, -lr, 10 * tb + 0.05], -1)
  return {'probs': jax.nn.softmax(logits, -1),
          'frames_scored': jnp.ones(logits.shape[:1], jnp.int32)}


def _by_hand(batches):
  """Per-record mean of the rows' probabilities, computed here from the same model."""
  rows = {}
  for b in batches:
    probs = np.asarray(_eval_fn(30.0, b)['probs'])
    for i, p, keep, label in zip(b['index'], probs, b['mask'], b['label']):
      if keep:
        rows.setdefault(int(i), []).append((p, int(label)))
  means = {i: np.mean([p for p, _ in v], axis=0) for i, v in rows.items()}
  first = {i: v[0][0] for i, v in rows.items()}
  labels = {i: v[0][1] for i, v in rows.items()}
  return means, first, labels, rows


def _confusion(pred: dict, labels: dict) -> np.ndarray:
  m = np.zeros((3, 3), int)
  for i in pred:
    m[labels[i], int(np.argmax(pred[i]))] += 1
  return m


def test_aggregate_by_hand():
  index = np.array([3, 1, 3, 1, 3])
  probs = np.array([[0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.3, 0.7]])
  mean, labels, rows = train._aggregate(index, np.array([1, 0, 1, 0, 1]), probs)  # pylint: disable=protected-access
  np.testing.assert_allclose(mean, [[0.3, 0.7], [0.4, 0.6]])  # Records 1 and 3, sorted.
  assert labels.tolist() == [0, 1] and rows.tolist() == [2, 3]
  with pytest.raises(ValueError, match='different labels'):
    train._aggregate(index, np.array([1, 0, 0, 0, 1]), probs)  # pylint: disable=protected-access


@pytest.mark.parametrize('batch_size', [4, 7])
def test_tta_rows_are_averaged_per_record(batch_size):
  mesh = sharding.make_mesh(-1, 1)
  kw = dict(num_frames=T, image_size=S, options=OPTIONS, batch_size_per_host=batch_size, tta_copies=K)
  means, first, labels, rows = _by_hand(pipeline.eval_batches(_source(), **kw))
  assert all(len(v) == K for v in rows.values()) and sorted(rows) == list(range(6))
  # The test can tell a mean from the plain row alone: they disagree on some record.
  assert not np.array_equal(_confusion(means, labels), _confusion(first, labels))
  report = train.evaluate(_eval_fn, 30.0, pipeline.eval_batches(_source(), **kw), mesh, ('a', 'b', 'c'))
  assert report['num_examples'] == 6  # Records, not rows.
  np.testing.assert_array_equal(report['confusion_matrix'], _confusion(means, labels))
  assert report['scoring'] == ('argmax of the mean class probabilities of 3 rows per sequence (3 '
                               'test-time augmentation copies (1 plain + 2 with the training '
                               'flip/crop/rotation))')


def test_one_row_per_record_scores_as_before():
  mesh = sharding.make_mesh(-1, 1)
  kw = dict(num_frames=T, image_size=S, options=OPTIONS, batch_size_per_host=4)
  means, _, labels, rows = _by_hand(pipeline.eval_batches(_source(), **kw))
  assert all(len(v) == 1 for v in rows.values())
  report = train.evaluate(_eval_fn, 30.0, pipeline.eval_batches(_source(), **kw), mesh, ('a', 'b', 'c'))
  np.testing.assert_array_equal(report['confusion_matrix'], _confusion(means, labels))
  assert report['scoring'] == 'argmax of the sequence class probabilities'


def test_all_windows_are_averaged():
  mesh = sharding.make_mesh(-1, 1)
  kw = dict(num_frames=2, image_size=S, options=OPTIONS, batch_size_per_host=4, windows='all',
            sampling_mode='clip')
  means, _, labels, rows = _by_hand(pipeline.eval_batches(_source(), **kw))
  assert all(len(v) == 3 for v in rows.values())  # ceil(5 frames / 2).
  report = train.evaluate(_eval_fn, 30.0, pipeline.eval_batches(_source(), **kw), mesh, ('a', 'b', 'c'))
  np.testing.assert_array_equal(report['confusion_matrix'], _confusion(means, labels))
  assert report['scoring'] == ('argmax of the mean class probabilities of 3 rows per sequence (every '
                               'consecutive 2-frame window)')
