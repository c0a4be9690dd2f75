"""Procedural micro-expressions: short, low-amplitude negative / positive / surprise movements.

The `micro` configs of `synthetic_expressions` draw the same cartoon identities as the macro set
(`faces.Identity`), but each clip is neutral, then a brief movement, then neutral again, like the clips
of CASME II, SAMM and SMIC (onset -> apex -> offset):

  * classes: the MEGC2019 composite's three, `negative` (the anger, disgust, fear or sadness prototype,
    drawn per clip), `positive` (happiness) and `surprise`;
  * apex intensity: `amplitude` of the macro set's apex (a few tenths; uniform in the config's range
    per clip), per-AU factors in [0.85, 1.15] as the macro set;
  * timing (frame indices): onset in [1, N/4], apex 2..N/3 frames after it, offset as far after the apex;
    intensity 0 up to the onset, a cosine rise to the apex, a cosine fall to 0 at the offset, 0 after;
  * head jitter: a smooth random head path (roll and shift, the macro set's random walk) plus
    sensor noise in every frame, so the difference of two frames is dominated by head motion and noise
    rather than by the expression; the onset -> apex flow of a rigid head motion has no optical strain.

`render_micro_clip` is a pure function of its arguments and the generator's state.
"""

import numpy as np

from tfds_builders.synthetic_expressions import faces

CLASSES = ('negative', 'positive', 'surprise')
# The macro prototypes each class draws from (one per clip).
SOURCES = {'negative': ('anger', 'disgust', 'fear', 'sadness'), 'positive': ('happiness',),
           'surprise': ('surprise',)}


def timing(num_frames: int, rng: np.random.Generator) -> tuple[int, int, int]:
  """(onset, apex, offset) frame indices: 1 <= onset < apex < offset <= num_frames - 1."""
  if num_frames < 6:
    raise ValueError(f'a micro-expression clip needs at least 6 frames; got {num_frames}')
  onset = int(rng.integers(1, max(2, num_frames // 4 + 1)))
  rise = int(rng.integers(2, max(3, num_frames // 3 + 1)))
  apex = min(onset + rise, num_frames - 2)
  offset = min(apex + max(1, int(rng.integers(2, max(3, num_frames // 3 + 1)))), num_frames - 1)
  return onset, apex, offset


def intensity(num_frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
  """0 up to `onset`, cosine rise to 1 at `apex`, cosine fall to 0 at `offset`, 0 after."""
  t = np.arange(num_frames, dtype=np.float64)
  rise = np.clip((t - onset) / (apex - onset), 0.0, 1.0)
  fall = np.clip((offset - t) / (offset - apex), 0.0, 1.0)
  return np.where(t <= apex, 0.5 - 0.5 * np.cos(np.pi * rise), 0.5 - 0.5 * np.cos(np.pi * fall))


def render_micro_clip(identity: faces.Identity, label: str, num_frames: int, size: int,
                      rng: np.random.Generator, *, amplitude: tuple[float, float] = (0.2, 0.35),
                      jitter_scale: float = 1.0, supersample: int = 4,
                      background: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
  """Frames [num_frames, size, size, 3] uint8 RGB of `identity` showing micro-expression `label`
  (one of CLASSES), and its (onset, apex, offset) indices."""
  if label not in SOURCES:
    raise ValueError(f'unknown micro-expression class {label!r}; expected one of {CLASSES}')
  prototype = SOURCES[label][int(rng.integers(len(SOURCES[label])))]
  onset, apex, offset = timing(num_frames, rng)
  strength = rng.uniform(*amplitude)
  au_jitter = {name: float(rng.uniform(0.85, 1.15)) for name in faces.AUS}
  curve = strength * intensity(num_frames, onset, apex, offset)
  # Head path: the macro set's smooth random walk (roll in degrees, shift in canvas units).
  steps = rng.normal(0.0, 1.0, (num_frames, 3)) * np.array([0.5, 0.002, 0.002]) * (
      identity.motion * jitter_scale)
  velocity, pose, path = np.zeros(3), np.zeros(3), np.zeros((num_frames, 3))
  for i in range(num_frames):
    velocity = 0.7 * velocity + steps[i]
    pose = np.clip(pose + velocity, [-5.0, -0.03, -0.03], [5.0, 0.03, 0.03])
    path[i] = pose
  if background is None:
    background = faces.draw_background(identity, size, supersample)
  frames = np.stack([
      faces.render_face(identity, faces.expression_aus(prototype, identity, curve[i], au_jitter), size,
                        roll=path[i, 0], shift=path[i, 1:], rng=rng, supersample=supersample,
                        background=background)
      for i in range(num_frames)])
  return frames, (onset, apex, offset)
