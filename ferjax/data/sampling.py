"""Temporal sampling: which T frames of an N-frame sequence a model sees (pure numpy on indices).

Training uses TSN-style segment sampling (Wang et al., 2016): the sequence is cut into T equal segments
and one frame is drawn at random from each, so every epoch sees a different but always ordered,
whole-sequence subset. Evaluation takes the centre frame of every segment, deterministically.
Sequences shorter than T repeat frames (sorted, so time still runs forward), using every frame at least
once. :func:`clip_indices` is the RFSCNN paper's alternative: the central T consecutive frames, edges
repeated for short sequences.
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
