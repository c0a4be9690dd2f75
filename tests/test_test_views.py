"""Fixed test views (`eval.temporal_views` x `eval.spatial_views`): which frames and which crop boxes each
view takes, checked by hand, and that a sequence's score is the mean over its views' scores."""

import os
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax import config as config_lib
from ferjax import sharding, train
from ferjax.data import augment, flow, pipeline, sampling, spec

T, S = 4, 32


def test_temporal_views_by_hand():
  # segments / uniform: offset (k + 0.5) / K inside each of the T segments of 16 / 4 = 4 frames.
  assert sampling.view_indices('segments', 16, T, 0, 2).tolist() == [1, 5, 9, 13]
  assert sampling.view_indices('uniform', 16, T, 1, 2).tolist() == [3, 7, 11, 15]
  assert sampling.view_indices('segments', 16, T, 1, 4).tolist() == [1, 5, 9, 13]  # 4 * 1.5 / 4 = 1.5
  assert sampling.view_indices('segments', 16, T, 3, 4).tolist() == [3, 7, 11, 15]  # 4 * 3.5 / 4 = 3.5
  # consecutive_s2: span 7 of 20 frames, slack 13: starts 0, 13 // 2 = 6, 13 (the last frame is 19).
  views = [sampling.view_indices('consecutive_s2', 20, T, k, 3).tolist() for k in range(3)]
  assert views == [[0, 2, 4, 6], [6, 8, 10, 12], [13, 15, 17, 19]]
  assert [sampling.view_indices('clip', 10, T, k, 2).tolist() for k in range(2)] == [[0, 1, 2, 3],
                                                                                    [6, 7, 8, 9]]
  # One view is the mode's evaluation frames; a sequence no longer than the span has one position.
  for mode in ('segments', 'uniform', 'clip', 'consecutive', 'consecutive_s4', 'apex'):
    np.testing.assert_array_equal(sampling.view_indices(mode, 23, T, 0, 1), sampling.indices(mode, 23, T))
  for k in range(3):
    np.testing.assert_array_equal(sampling.view_indices('consecutive_s2', 5, T, k, 3),
                                  sampling.consecutive_indices(5, T, 2))
  with pytest.raises(ValueError, match="'apex' has a single temporal position"):
    sampling.view_indices('apex', 16, T, 0, 2)
  with pytest.raises(ValueError, match=r'view must be in \[0, 1\]; got 2'):
    sampling.view_indices('segments', 16, T, 2, 2)


def test_spatial_view_boxes_by_hand():
  box = augment.Box
  # 40 x 40, eval_crop 0.75: side 30, 10 pixels of slack each way.
  assert augment.view_boxes(40, 40, 0.75, 1) == [box(5, 5, 30)]
  assert augment.view_boxes(40, 40, 0.75, 3) == [box(5, 5, 30), box(5, 0, 30), box(5, 10, 30)]
  five = [box(5, 5, 30), box(0, 0, 30), box(0, 10, 30), box(10, 0, 30), box(10, 10, 30)]
  assert augment.view_boxes(40, 40, 0.75, 5) == five
  assert augment.view_boxes(40, 40, 0.75, 10) == five + [box(b.y0, b.x0, 30, True) for b in five]
  # Three crops run along the longer side: the width of a landscape frame, the height of a portrait one.
  assert augment.view_boxes(40, 60, 1.0, 3) == [box(0, 10, 40), box(0, 0, 40), box(0, 20, 40)]
  assert augment.view_boxes(60, 40, 1.0, 3) == [box(10, 0, 40), box(0, 0, 40), box(20, 0, 40)]
  with pytest.raises(ValueError, match=r'spatial views must be one of \(1, 3, 5, 10\); got 4'):
    augment.view_boxes(40, 40, 1.0, 4)


def test_crops_and_their_matrices():
  """A box's pixels, mirrored or not, and its output -> source matrix (what flow inputs warp with) agree:
  warping the source with the matrix gives the crop exactly when no resize is involved."""
  frame = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  for b in augment.view_boxes(40, 50, 0.75, 10):
    crop = augment.crop_resize([frame], b, b.side)[0]
    plain = frame[b.y0:b.y0 + b.side, b.x0:b.x0 + b.side]
    np.testing.assert_array_equal(crop, plain[:, ::-1] if b.flip else plain)
    warped = cv2.warpAffine(frame, b.matrix(b.side), (b.side, b.side),
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    np.testing.assert_array_equal(warped, crop)
  # The plain evaluation crop is view 0, and its matrix the one flow inputs used before views existed.
  np.testing.assert_array_equal(augment.eval_preprocess([frame], S, augment.AugmentOptions()),
                                augment.crop_resize([frame], augment.view_boxes(40, 50, 0.875, 1)[0], S))
  np.testing.assert_allclose(flow.eval_matrix(40, 50, S, 0.875),
                             [[35 / S, 0, 7 + 17.5 / S - 0.5], [0, 35 / S, 2 + 17.5 / S - 0.5]])


def _source():
  """Six records of 9 textured frames with a bright band at a different place per record."""
  rng = np.random.default_rng(0)
  records = []
  for i in range(6):
    frames = rng.integers(0, 120, (9, 40, 48, 3), dtype=np.uint8)
    frames[:, :, 6 * (i % 3) + 10:] += 100
    frames[5:, :12 + 4 * i] += 30  # Later frames differ: temporal views see different frames.
    records.append({'frames': list(frames), 'label': i % 3})
  return records


def _batches(source, temporal, spatial, batch=5, mode='segments'):
  return pipeline.eval_batches(source, num_frames=T, image_size=S, options=augment.AugmentOptions(),
                               batch_size_per_host=batch, sampling_mode=mode, temporal_views=temporal,
                               spatial_views=spatial)


def _view(record, mode, k, temporal, v, spatial):
  frames = np.stack(record['frames'])[sampling.view_indices(mode, 9, T, k, temporal)]
  return augment.crop_resize(frames, augment.view_boxes(40, 48, 0.875, spatial)[v], S)


@pytest.mark.parametrize('mode', ['segments', 'consecutive'])
def test_view_rows_show_the_hand_made_views(mode):
  source = _source()
  rows = pipeline.eval_rows(source, T, temporal_views=2, spatial_views=3)
  assert rows.tolist() == [[i, w, c] for i in range(6) for w in (-1, -2) for c in range(3)]
  batches = list(_batches(source, 2, 3, batch=7, mode=mode))
  frames = np.concatenate([b['frames'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  index = np.concatenate([b['index'] for b in batches])
  assert mask.sum() == 36 and index[mask].tolist() == [i for i in range(6) for _ in range(6)]
  for row, (i, w, c) in enumerate(rows.tolist()):
    np.testing.assert_array_equal(frames[row], _view(source[i], mode, -1 - w, 2, c, 3))


@jax.jit
def _eval_fn(state, batch):
  """A tiny 'model': logits from left-right / top-bottom brightness differences and the mean brightness."""
  x = batch['frames'].astype(jnp.float32).mean(axis=(1, 4)) / 255.0  # [B, S, S]
  lr = x[:, :, :S // 2].mean((1, 2)) - x[:, :, S // 2:].mean((1, 2))
  tb = x[:, :S // 2].mean((1, 2)) - x[:, S // 2:].mean((1, 2))
  logits = state * jnp.stack([lr, -lr - 0.03, 4 * tb + 2 * (x.mean((1, 2)) - 0.45)], -1)
  return {'probs': jax.nn.softmax(logits, -1), 'frames_scored': jnp.ones(logits.shape[:1], jnp.int32)}


def _confusion(probs, labels):
  m = np.zeros((3, 3), int)
  for p, label in zip(probs, labels):
    m[label, int(np.argmax(p))] += 1
  return m


def test_views_are_averaged_per_sequence():
  """The report of a K x V pass = argmax of the mean of the model's probabilities on each hand-made
  view; and it differs from the plain 1 x 1 report on this data (the averaging is seen)."""
  source, mesh = _source(), sharding.make_mesh(-1, 1)
  labels = [r['label'] for r in source]
  mean, plain = [], []
  for record in source:
    views = np.stack([_view(record, 'segments', k, 2, v, 10) for k in range(2) for v in range(10)])
    probs = np.asarray(_eval_fn(30.0, {'frames': views})['probs'])
    mean.append(probs.mean(0))
    plain.append(np.asarray(_eval_fn(30.0, {'frames': _view(record, 'segments', 0, 1, 0, 1)[None]})['probs'])[0])
  report = train.evaluate(_eval_fn, 30.0, _batches(source, 2, 10), mesh, ('a', 'b', 'c'))
  assert report['num_examples'] == 6
  np.testing.assert_array_equal(report['confusion_matrix'], _confusion(mean, labels))
  assert report['scoring'] == ('argmax of the mean class probabilities of 20 rows per sequence (2 '
                               'temporal views spread over the sequence x 10 spatial crops (centre, four '
                               'corners and their mirror images))')
  one = train.evaluate(_eval_fn, 30.0, _batches(source, 1, 1), mesh, ('a', 'b', 'c'))
  np.testing.assert_array_equal(one['confusion_matrix'], _confusion(plain, labels))
  assert not np.array_equal(_confusion(mean, labels), _confusion(plain, labels))


def _res_rbg(preset='dfew'):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs'))
  try:
    import res_rbg  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  return res_rbg.get_config(preset)


def test_test_views_score_the_test_split_only():
  config = _res_rbg('synthetic')
  with config.unlocked():
    config.dataset.update(num_frames=T, image_size=S)
    config.eval.update(temporal_views=2, spatial_views=5)
  shard = (0, 1, 4)
  assert spec.eval_batches(config, _source(), shard).views == (
      '2 temporal views spread over the sequence x 5 spatial crops (centre and four corners)')
  assert spec.eval_batches(config, _source(), shard, validation=True).views == ''


@pytest.mark.parametrize('changes, message', [
    (dict(temporal_views=2, windows='all'), "temporal_views=2 and windows='all' both choose"),
    (dict(spatial_views=3, tta_copies=4), 'spatial_views=3 and tta_copies=4 both choose'),
    (dict(temporal_views=3, sampling='apex'), "sampling 'apex' has one temporal position"),
    (dict(spatial_views=4), r'eval.spatial_views.*one of 1, 3, 5, 10'),
])
def test_conflicting_or_unknown_views_are_config_errors(changes, message):
  config = _res_rbg()
  assert (config.eval.temporal_views, config.eval.spatial_views) == (1, 1)  # Today's scoring by default.
  config_lib.validate(config)
  if 'sampling' in changes:
    config.dataset.sampling = changes.pop('sampling')
  config.eval.update(changes)
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_pipeline_refuses_conflicting_views():
  with pytest.raises(ValueError, match="temporal_views=2 and windows='all'"):
    pipeline.eval_rows(_source(), T, 'all', 0, temporal_views=2)
  with pytest.raises(ValueError, match='spatial_views=10 and tta_copies=2'):
    pipeline.eval_rows(_source(), T, 'one', 2, spatial_views=10)
  with pytest.raises(ValueError, match=r'spatial_views must be one of \(1, 3, 5, 10\); got 2'):
    pipeline.eval_rows(_source(), T, spatial_views=2)
