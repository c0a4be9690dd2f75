"""The onset and apex frames of a micro-expression clip as model inputs: ``onset_frame`` and ``apex_frame``.

Each is uint8 [S, S, 3]: the record's frame at its ``onset`` / ``apex`` index (``micro_flow.onset_apex``:
the first and the last frame where a record has none), through the same output -> source warp as the
example's sampled ``frames`` (training augmentation, or evaluation's centre crop), so the three inputs
show the face in the same place. Photometric jitter and random masks, which the pipeline applies to
``frames`` after the warp, are not applied: the key frames are the warped source pixels.

Importing this module registers both inputs; a family names them in its ``Family.inputs``.
"""

from __future__ import annotations

import numpy as np

from ferjax import checks
from ferjax.data import augment
from ferjax.data import inputs as inputs_lib
from ferjax.data import micro_flow

ONSET = 'onset_frame'
APEX = 'apex_frame'


def _key_frame(which: int):
  def compute(view: inputs_lib.View) -> np.ndarray:
    if view.record is None:
      raise ValueError(f'{(ONSET, APEX)[which]} needs the record (its onset and apex indices and frames)')
    index = micro_flow.onset_apex(view.record)[which]
    frame = micro_flow.record_frame(view.record, index)
    fill = view.options.get('augment.fill', 'reflect')
    return augment.warp([frame], view.matrix, view.size, fill)[0]
  return compute


def _shape(t: int, s: int) -> tuple[int, ...]:
  del t  # One frame per clip, whatever the number of sampled frames.
  return (s, s, 3)


def _random(t: int, s: int, rng: np.random.Generator) -> np.ndarray:
  return rng.integers(0, 256, _shape(t, s), dtype=np.uint8)


_RULES = {'augment.fill': checks.one_of(*augment.FILLS)}
inputs_lib.register(ONSET, inputs_lib.Input(_key_frame(0), _shape, np.uint8, _random, rules=_RULES))
inputs_lib.register(APEX, inputs_lib.Input(_key_frame(1), _shape, np.uint8, _random, rules=_RULES))
