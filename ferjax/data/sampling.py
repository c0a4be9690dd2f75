"""Temporal sampling: which T frames of an N-frame sequence a model sees (pure numpy on indices).

Training uses TSN-style segment sampling (Wang et al., 2016): the sequence is cut into T equal segments
and one frame is drawn at random from each, so every epoch sees a different but always ordered,
whole-sequence subset. Evaluation takes the centre frame of every segment, deterministically.
Sequences shorter than T repeat frames (sorted, so time still runs forward), using every frame at least
once. :func:`clip_indices` is the RFSCNN paper's alternative: the central T consecutive frames, edges
repeated for short sequences. :func:`apex_indices` takes the last T frames (CK+ and Oulu-CASIA sequences
run from neutral to the apex, so with T = 1 it is the apex frame for image models).

``config.dataset.sampling`` picks the mode (``MODES``); :func:`indices` maps a mode to the indices of a
training or an evaluation example. :func:`windows` lists the consecutive T-frame windows that cover a
whole sequence (evaluation of long videos, ``config.eval.windows = 'all'``). :func:`view_indices` gives
the K fixed temporal test views of a mode (``config.eval.temporal_views``).
"""

import numpy as np


def _check(num_frames: int, num_samples: int) -> None:
  if num_frames < 1:
    raise ValueError(f'a sequence needs at least one frame; got num_frames={num_frames}')
  if num_samples < 1:
    raise ValueError(f'the number of sampled frames T must be >= 1; got {num_samples}')


def train_indices(num_frames: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
  """Random segment-based indices: one uniformly random frame from each of T equal segments.

  When ``num_frames >= T`` the indices are strictly increasing. When ``num_frames < T`` every frame
  appears ``T // num_frames`` or ``T // num_frames + 1`` times, which frames get the extra copy is random,
  and the result is sorted.

  Returns:
    int32 array of shape [T] with values in [0, num_frames).
  """
  _check(num_frames, num_samples)
  if num_frames < num_samples:
    repeats, extra = divmod(num_samples, num_frames)
    chosen = rng.choice(num_frames, size=extra, replace=False)
    return np.sort(np.concatenate([np.tile(np.arange(num_frames), repeats), chosen])).astype(np.int32)
  starts = np.arange(num_samples) * num_frames // num_samples
  ends = np.arange(1, num_samples + 1) * num_frames // num_samples  # ends > starts as N >= T
  return rng.integers(starts, ends).astype(np.int32)


def eval_indices(num_frames: int, num_samples: int) -> np.ndarray:
  """Deterministic uniform indices: the centre frame of each of T equal segments.

  Strictly increasing when ``num_frames >= T``; otherwise sorted and covering every frame.

  Returns:
    int32 array of shape [T] with values in [0, num_frames).
  """
  _check(num_frames, num_samples)
  return ((2 * np.arange(num_samples) + 1) * num_frames // (2 * num_samples)).astype(np.int32)


def clip_indices(num_frames: int, num_samples: int) -> np.ndarray:
  """The central T consecutive frames (RFSCNN): longer sequences drop (N - T) / 2 frames at each end
  (the extra odd frame at the end), shorter ones repeat their first and last frames equally.

  Returns:
    int32 array of shape [T] with values in [0, num_frames).
  """
  _check(num_frames, num_samples)
  start = (num_frames - num_samples) // 2  # negative when padding: edges are clipped to 0 / N-1
  return np.clip(np.arange(start, start + num_samples), 0, num_frames - 1).astype(np.int32)


def apex_indices(num_frames: int, num_samples: int) -> np.ndarray:
  """The last T frames (the apex of CK+/Oulu-CASIA sequences); shorter sequences repeat their first frame
  at the start, so the last index is always the apex frame N - 1.

  Returns:
    int32 array of shape [T] with values in [0, num_frames).
  """
  _check(num_frames, num_samples)
  return np.clip(np.arange(num_frames - num_samples, num_frames), 0, None).astype(np.int32)


def consecutive_indices(num_frames: int, num_samples: int, stride: int,
                        rng: np.random.Generator | None = None) -> np.ndarray:
  """T frames ``stride`` apart, (T - 1) * stride + 1 frames in all: a random start in training (``rng``),
  the centred one in evaluation. Shorter sequences are centred and their ends repeated (clipped to
  [0, N - 1]), as :func:`clip_indices` does for stride 1.

  Returns:
    int32 array of shape [T] with values in [0, num_frames).
  """
  _check(num_frames, num_samples)
  if stride < 1:
    raise ValueError(f'stride must be >= 1; got {stride}')
  span = (num_samples - 1) * stride + 1
  slack = num_frames - span
  start = int(rng.integers(0, slack + 1)) if rng is not None and slack > 0 else slack // 2
  return np.clip(start + stride * np.arange(num_samples), 0, num_frames - 1).astype(np.int32)


def _consecutive(stride: int):
  return (lambda n, t, rng: consecutive_indices(n, t, stride, rng),
          lambda n, t: consecutive_indices(n, t, stride))


# config.dataset.sampling -> (training indices (n, T, rng), evaluation indices (n, T)).
# 'clip' and 'apex' are deterministic in training too: the RFSCNN paper takes the central clip and the
# apex is the last frame by construction; shifting them at random would change what they select (the
# frames still get their random spatial augmentation).
MODES = {
    'segments': (train_indices, eval_indices),
    'clip': (lambda n, t, rng: clip_indices(n, t), clip_indices),
    'apex': (lambda n, t, rng: apex_indices(n, t), apex_indices),
    # The DFEW / FERV39k / MAFW repositories disagree on the frames: 'segments' is TSN (above);
    # 'uniform' takes T evenly spaced frames (segment centres) in training too, no temporal jitter;
    # 'consecutive[_s<k>]' takes T consecutive frames k apart, at a random start in training.
    'uniform': (lambda n, t, rng: eval_indices(n, t), eval_indices),
    'consecutive': _consecutive(1),
    'consecutive_s2': _consecutive(2),
    'consecutive_s4': _consecutive(4),
}


def indices(mode: str, num_frames: int, num_samples: int,
            rng: np.random.Generator | None = None) -> np.ndarray:
  """The T indices of sampling ``mode`` (one of ``MODES``): random (training) when ``rng`` is given,
  else the deterministic evaluation indices."""
  if mode not in MODES:
    raise ValueError(f'sampling mode must be one of {sorted(MODES)}; got {mode!r}')
  train, evaluation = MODES[mode]
  return evaluation(num_frames, num_samples) if rng is None else train(num_frames, num_samples, rng)


# The frame spacing of the modes whose evaluation frames are consecutive (their temporal views slide).
_STRIDES = {'clip': 1, 'consecutive': 1, 'consecutive_s2': 2, 'consecutive_s4': 4}


def view_indices(mode: str, num_frames: int, num_samples: int, view: int, views: int) -> np.ndarray:
  """Temporal test view ``view`` of ``views`` K: fixed clips spread evenly over the sequence.

  * 'segments', 'uniform': the frame at offset (view + 0.5) / K inside each of the T equal segments
    (TSN's multi-clip testing); K = 1 is the segment centres, :func:`eval_indices`.
  * 'clip', 'consecutive[_s<k>]': the mode's T frames k apart starting at frame view * (N - span) // (K - 1),
    span = (T - 1) * k + 1: the first view starts at frame 0, the last ends at the last frame (the
    VideoMAE / MAE-DFER test clips); K = 1, or a sequence no longer than the span, is the centred clip.
  * 'apex' has one position by construction: K > 1 is an error.

  Returns:
    int32 array of shape [T] with values in [0, num_frames).
  """
  _check(num_frames, num_samples)
  if mode not in MODES:
    raise ValueError(f'sampling mode must be one of {sorted(MODES)}; got {mode!r}')
  if not 0 <= view < views:
    raise ValueError(f'view must be in [0, {views - 1}]; got {view}')
  if views == 1:
    return indices(mode, num_frames, num_samples)
  if mode in ('segments', 'uniform'):
    # floor((t + (view + 0.5) / K) * N / T) in integers.
    t = np.arange(num_samples)
    return ((2 * views * t + 2 * view + 1) * num_frames // (2 * views * num_samples)).astype(np.int32)
  if mode in _STRIDES:
    stride = _STRIDES[mode]
    slack = num_frames - ((num_samples - 1) * stride + 1)
    if slack <= 0:
      return consecutive_indices(num_frames, num_samples, stride)
    start = view * slack // (views - 1)
    return (start + stride * np.arange(num_samples)).astype(np.int32)
  raise ValueError(f"sampling mode {mode!r} has a single temporal position; temporal views need one of "
                   f"{sorted(('segments', 'uniform', *_STRIDES))}")


def num_windows(num_frames: int, num_samples: int) -> int:
  """How many windows :func:`windows` gives: ceil(N / T), at least 1."""
  _check(num_frames, num_samples)
  return max(1, -(-num_frames // num_samples))


def window_indices(mode: str, num_frames: int, num_samples: int, window: int) -> np.ndarray:
  """Window ``window`` of the consecutive T-frame windows that together cover every frame.

  Windows start at 0, T, 2T, ...; the last one is shifted back to end at the last frame (it overlaps
  its neighbour rather than repeating frames). A sequence of at most T frames has one window: the
  evaluation indices of ``mode``.
  """
  count = num_windows(num_frames, num_samples)
  if not 0 <= window < count:
    raise ValueError(f'window must be in [0, {count - 1}] for {num_frames} frames and T={num_samples}; '
                     f'got {window}')
  if num_frames <= num_samples:
    return indices(mode, num_frames, num_samples)
  start = min(window * num_samples, num_frames - num_samples)
  return np.arange(start, start + num_samples, dtype=np.int32)
