"""Tests for ferjax.data.sampling."""

import numpy as np
import pytest

from ferjax.data import sampling

CASES = [(1, 4), (3, 8), (5, 8), (8, 8), (9, 8), (17, 4), (100, 16), (16, 16), (15, 16)]


@pytest.mark.parametrize('n, t', CASES)
def test_train_indices(n, t):
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = sampling.train_indices(n, t, rng)
    assert idx.shape == (t,) and idx.dtype == np.int32
    assert idx.min() >= 0 and idx.max() < n
    diffs = np.diff(idx)
    assert np.all(diffs > 0) if n >= t else np.all(diffs >= 0)
    if n < t:
      counts = np.bincount(idx, minlength=n)
      assert counts.min() == t // n and counts.max() <= t // n + 1  # every frame, evenly repeated
    else:
      # Each index lies in its own segment.
      seg = np.arange(t)
      assert np.all(idx >= seg * n // t) and np.all(idx < (seg + 1) * n // t)


def test_train_indices_are_random_and_reproducible():
  draws = [sampling.train_indices(100, 8, np.random.default_rng(s)) for s in (1, 1, 2)]
  np.testing.assert_array_equal(draws[0], draws[1])
  assert not np.array_equal(draws[0], draws[2])
  # Over many draws every frame of a long sequence is reached (segments are sampled uniformly).
  rng = np.random.default_rng(0)
  seen = np.concatenate([sampling.train_indices(40, 8, rng) for _ in range(200)])
  assert set(seen) == set(range(40))
  # Short sequences: which frame is repeated varies.
  short = {tuple(sampling.train_indices(3, 4, rng)) for _ in range(50)}
  assert len(short) == 3


@pytest.mark.parametrize('n, t', CASES)
def test_eval_indices(n, t):
  idx = sampling.eval_indices(n, t)
  assert idx.shape == (t,) and idx.dtype == np.int32
  assert idx.min() >= 0 and idx.max() < n
  np.testing.assert_array_equal(idx, sampling.eval_indices(n, t))
  if n >= t:
    assert np.all(np.diff(idx) > 0)
  else:
    assert np.all(np.diff(idx) >= 0) and set(idx) == set(range(n))


def test_eval_indices_are_segment_centres():
  np.testing.assert_array_equal(sampling.eval_indices(16, 4), [2, 6, 10, 14])
  np.testing.assert_array_equal(sampling.eval_indices(2, 4), [0, 0, 1, 1])
  np.testing.assert_array_equal(sampling.eval_indices(1, 3), [0, 0, 0])


def test_clip_indices():
  np.testing.assert_array_equal(sampling.clip_indices(20, 16), np.arange(2, 18))
  np.testing.assert_array_equal(sampling.clip_indices(3, 7), [0, 0, 0, 1, 2, 2, 2])
  np.testing.assert_array_equal(sampling.clip_indices(5, 5), np.arange(5))


def test_apex_indices():
  np.testing.assert_array_equal(sampling.apex_indices(20, 4), [16, 17, 18, 19])
  np.testing.assert_array_equal(sampling.apex_indices(3, 5), [0, 0, 0, 1, 2])  # First frame repeated.
  np.testing.assert_array_equal(sampling.apex_indices(7, 1), [6])  # T = 1: the apex frame.
  np.testing.assert_array_equal(sampling.apex_indices(4, 4), [0, 1, 2, 3])


def test_modes_train_and_eval():
  rng = np.random.default_rng(0)
  # segments: random per segment in training, segment centres in evaluation.
  np.testing.assert_array_equal(sampling.indices('segments', 16, 4), [2, 6, 10, 14])
  draws = {tuple(sampling.indices('segments', 16, 4, rng)) for _ in range(10)}
  assert len(draws) > 1
  # clip and apex: the same indices in training and evaluation (no temporal jitter).
  for _ in range(5):
    np.testing.assert_array_equal(sampling.indices('clip', 10, 4, rng), [3, 4, 5, 6])
    np.testing.assert_array_equal(sampling.indices('apex', 10, 4, rng), [6, 7, 8, 9])
  np.testing.assert_array_equal(sampling.indices('clip', 10, 4), [3, 4, 5, 6])
  np.testing.assert_array_equal(sampling.indices('apex', 2, 3), [0, 0, 1])
  with pytest.raises(ValueError, match="sampling mode must be one of .*got 'middle'"):
    sampling.indices('middle', 10, 4)


@pytest.mark.parametrize('n, t, expected', [
    (10, 4, [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]),  # The last window ends at the last frame.
    (8, 4, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    (4, 4, [[0, 1, 2, 3]]),
    (3, 5, [[0, 0, 1, 2, 2]]),  # Short: one window, the mode's evaluation indices (clip here).
])
def test_windows_cover_every_frame(n, t, expected):
  count = sampling.num_windows(n, t)
  got = [sampling.window_indices('clip', n, t, w).tolist() for w in range(count)]
  assert got == expected
  assert set(np.concatenate(got)) == set(range(n))
  with pytest.raises(ValueError, match=f'window must be in \\[0, {count - 1}\\]'):
    sampling.window_indices('clip', n, t, count)


@pytest.mark.parametrize('n, t', [(1, 4), (5, 3), (17, 4), (100, 16), (33, 8)])
def test_windows_are_consecutive_and_cover(n, t):
  windows = [sampling.window_indices('segments', n, t, w) for w in range(sampling.num_windows(n, t))]
  assert set(np.concatenate(windows)) == set(range(n))
  for w in windows:
    assert w.shape == (t,) and w.dtype == np.int32 and w.min() >= 0 and w.max() < n
    if n >= t:
      assert np.all(np.diff(w) == 1)


@pytest.mark.parametrize('fn', [
    lambda n, t: sampling.train_indices(n, t, np.random.default_rng(0)),
    sampling.eval_indices, sampling.clip_indices, sampling.apex_indices])
def test_bad_input(fn):
  with pytest.raises(ValueError, match='num_frames=0'):
    fn(0, 4)
  with pytest.raises(ValueError, match='got 0'):
    fn(4, 0)


def test_uniform_and_consecutive_modes_by_hand():
  rng = np.random.default_rng(0)
  # 'uniform': the segment centres in training too (no jitter): N = 20, T = 4 -> 2, 7, 12, 17.
  assert list(sampling.indices('uniform', 20, 4, rng)) == [2, 7, 12, 17]
  assert list(sampling.indices('uniform', 20, 4)) == [2, 7, 12, 17]
  # 'consecutive_s2': 4 frames 2 apart span 7 frames; evaluation centres them: start (20 - 7) // 2 = 6.
  assert list(sampling.indices('consecutive_s2', 20, 4)) == [6, 8, 10, 12]
  starts = set()
  for _ in range(200):
    picks = sampling.indices('consecutive_s2', 20, 4, rng)
    assert list(np.diff(picks)) == [2, 2, 2] and 0 <= picks[0] <= 13
    starts.add(int(picks[0]))
  assert starts == set(range(14))  # Every start in [0, N - span] is drawn.
  # Too short: centred, ends repeated. N = 5, span 7: start -1 -> -1, 1, 3, 5 clipped to 0, 1, 3, 4.
  assert list(sampling.indices('consecutive_s2', 5, 4, rng)) == [0, 1, 3, 4]
  assert list(sampling.indices('consecutive', 10, 4)) == list(sampling.clip_indices(10, 4))
