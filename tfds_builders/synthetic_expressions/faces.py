"""Procedural cartoon faces that move from neutral to an expression apex (OpenCV drawing only).

The drawing is separated from the TFDS builder so that it can be looked at, tested and reused on its
own:

  identity = sample_identity(np.random.default_rng([BASE_SEED, 0, 7]))
  frames = render_sequence(identity, 'surprise', num_frames=16, size=64,
                           rng=np.random.default_rng(1))        # [16, 64, 64, 3] uint8 RGB

Geometry lives in *normalised canvas units* (0..1 across the frame, y down). A frame is drawn at
`size * supersample` pixels with anti-aliased primitives and shrunk with INTER_AREA, which keeps
features that are 1–3 output pixels wide legible at 32–64 px.

What varies between subjects (`Identity`): face and jaw shape, skin tone, hair colour and style, ear
size, eye/brow/nose/mouth size and spacing, iris colour, clothes, background gradient, lighting
direction and strength, brightness, sensor-noise level, resting head pose and how much the head
moves. What varies between sequences of one subject: the number of frames, when the onset starts and
the apex is reached, per-AU intensity (±~15 %), the head-motion path and the per-frame noise.

Expressions are built from action-unit-like controls (`AUS`, FACS numbers in brackets) whose apex
values per expression are in `PROTOTYPES` (after the EMFACS prototypes). The choices that make the
seven classes separable at 48–64 px: anger = lowered V-shaped brows + glabella furrows + pressed
lips; contempt = ONE lip corner raised with a dimple (side fixed per subject); disgust = nose
wrinkle + raised upper lip showing teeth + lowered corners; fear = raised-and-drawn-together brows +
wide eyes + horizontally stretched open mouth; happiness = both corners up + open smile with teeth +
cheek folds; sadness = inner brows raised (slanted the other way from anger) + corners down;
surprise = high arched brows + forehead lines + wide eyes + round dropped jaw.
"""

from collections.abc import Sequence
import dataclasses
import math

import cv2
import numpy as np

# The seven CK+ expression classes in the project's canonical (alphabetical) order.
EXPRESSIONS = ('anger', 'contempt', 'disgust', 'fear', 'happiness', 'sadness', 'surprise')

# Action-unit-like controls. All are 0..1 except eye_open and lip_stretch, which are -1..1.
AUS = (
    'brow_raise',        # AU1+2 whole brow up
    'brow_inner_raise',  # AU1 inner ends up (sad / fearful slant)
    'brow_lower',        # AU4 brows down and together, inner ends lowest (V), glabella furrows
    'eye_open',          # AU5 (+) upper lid raised, whites above the iris / AU7 (-) lids narrowed
    'cheek_raise',       # AU6 cheek bulge under the eyes, nasolabial folds
    'nose_wrinkle',      # AU9 lines across the nose bridge, nostrils pulled up
    'upper_lip_raise',   # AU10 upper lip up, upper teeth visible
    'lip_corner_up_l',   # AU12/14 left lip corner up (image left)
    'lip_corner_up_r',   # AU12/14 right lip corner up (image right)
    'lip_corner_down',   # AU15 both corners down
    'lip_stretch',       # AU20 (+) corners pulled sideways / (-) mouth rounded
    'lip_press',         # AU23/24 lips pressed thin
    'mouth_open',        # AU25/26/27 lips part, jaw drops
)

# Apex AU values per expression. Contempt's corner is mirrored per subject
# (`Identity.contempt_side`).
PROTOTYPES = {
    'anger': dict(brow_lower=1.0, eye_open=-0.25, lip_press=1.0, lip_corner_down=0.25),
    'contempt': dict(lip_corner_up_r=1.0, eye_open=-0.15, brow_lower=0.15),
    'disgust': dict(nose_wrinkle=1.0, upper_lip_raise=1.0, brow_lower=0.55, lip_corner_down=0.7,
                    eye_open=-0.55, cheek_raise=0.3),
    'fear': dict(brow_raise=0.8, brow_inner_raise=0.9, brow_lower=0.45, eye_open=1.0,
                 lip_stretch=1.0, mouth_open=0.6),
    'happiness': dict(lip_corner_up_l=1.0, lip_corner_up_r=1.0, cheek_raise=1.0, eye_open=-0.45,
                      mouth_open=0.6, lip_stretch=0.3),
    'sadness': dict(brow_inner_raise=1.0, lip_corner_down=1.0, eye_open=-0.4, brow_lower=0.15),
    'surprise': dict(brow_raise=1.0, eye_open=1.0, mouth_open=1.0, lip_stretch=-0.7),
}

# A rough light-to-dark range of skin tones (RGB); identities interpolate between neighbours.
_SKIN_TONES = np.array([(255, 226, 204), (241, 198, 160), (224, 172, 128), (198, 140, 96),
                        (160, 104, 66), (118, 74, 46), (84, 54, 36)], np.float32)
_HAIR_COLOURS = np.array([(25, 20, 18), (60, 40, 28), (110, 72, 40), (200, 160, 90), (150, 70, 35),
                          (170, 170, 170), (235, 225, 200)], np.float32)
_IRIS_COLOURS = np.array([(60, 40, 25), (90, 60, 30), (70, 100, 140), (80, 110, 70), (30, 25, 20)],
                         np.float32)


@dataclasses.dataclass(frozen=True)
class Identity:
  """Everything that makes one synthetic subject look like themselves (normalised canvas units)."""
  face_center: tuple[float, float]
  face_axes: tuple[float, float]       # half width, half height of the skull ellipse
  jaw_width: float                     # jaw ellipse half width relative to face_axes[0]
  skin: tuple[float, float, float]     # RGB 0..255
  hair: tuple[float, float, float]
  hair_style: int                      # 0 bald, 1 short cap, 2 long
  hair_line: float                     # fringe depth (fraction of the forehead covered)
  ear_size: float
  eye_dx: float                        # half distance between the eye centres
  eye_dy: float                        # eye height relative to the face centre (negative = up)
  eye_axes: tuple[float, float]        # resting half width / half height of an eye
  iris: tuple[float, float, float]
  brow_gap: float                      # resting brow height above the eye centre
  brow_len: float
  brow_thick: float
  nose_len: float
  nose_width: float
  mouth_dy: float                      # mouth height below the face centre
  mouth_half_width: float
  lip_thick: float
  lip: tuple[float, float, float]
  clothes: tuple[float, float, float]
  background: tuple[tuple[float, float, float], tuple[float, float, float]]
  background_angle: float              # direction of the background gradient (radians)
  light_angle: float                   # direction the light comes from (radians)
  light_strength: float                # 0 = flat; brightness changes by ±strength across the frame
  brightness: float
  noise_sigma: float                   # per-pixel Gaussian noise (0..255 scale), fresh each frame
  pose: tuple[float, float, float]     # resting roll (deg), dx, dy
  motion: float                        # head-motion scale (1 = default amplitude)
  contempt_side: int                   # +1: right corner (image right) rises in contempt, -1: left


def _mix(palette: np.ndarray, t: float) -> np.ndarray:
  """Linear interpolation along a palette at position t in [0, 1]."""
  x = t * (len(palette) - 1)
  i = min(int(x), len(palette) - 2)
  return palette[i] + (x - i) * (palette[i + 1] - palette[i])


def _colour(rng: np.random.Generator, base, jitter: float) -> tuple[float, float, float]:
  c = np.clip(np.asarray(base, np.float32) + rng.normal(0.0, jitter, 3), 0, 255)
  return tuple(float(v) for v in c)


def sample_identity(rng: np.random.Generator) -> Identity:
  """Draws a random subject. Ranges are chosen so every draw still reads as a frontal face crop."""
  u = rng.uniform
  face_w, face_h = u(0.3, 0.36), u(0.38, 0.44)
  skin = _colour(rng, _mix(_SKIN_TONES, u(0, 1)), 6)
  hair = _colour(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 8)
  lip = _colour(rng, np.asarray(skin) * np.array([0.85, 0.55, 0.55]) + np.array([20, 0, 5]), 6)
  bg_a = rng.uniform(30, 230, 3)
  bg_b = np.clip(bg_a + rng.normal(0, 45, 3), 0, 255)
  return Identity(
      face_center=(0.5 + u(-0.02, 0.02), 0.52 + u(-0.01, 0.02)),
      face_axes=(face_w, face_h),
      jaw_width=u(0.7, 0.95),
      skin=skin,
      hair=hair,
      hair_style=int(rng.choice(3, p=[0.15, 0.5, 0.35])),
      hair_line=u(0.35, 0.7),
      ear_size=u(0.8, 1.2),
      eye_dx=face_w * u(0.36, 0.46),
      eye_dy=-face_h * u(0.05, 0.18),
      eye_axes=(face_w * u(0.17, 0.22), face_w * u(0.085, 0.11)),
      iris=_colour(rng, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], 8),
      brow_gap=face_h * u(0.15, 0.2),
      brow_len=face_w * u(0.3, 0.4),
      brow_thick=face_w * u(0.05, 0.08),
      nose_len=face_h * u(0.28, 0.36),
      nose_width=face_w * u(0.14, 0.2),
      mouth_dy=face_h * u(0.42, 0.52),
      mouth_half_width=face_w * u(0.3, 0.38),
      lip_thick=face_h * u(0.035, 0.055),
      lip=lip,
      clothes=_colour(rng, rng.uniform(20, 235, 3), 0),
      background=(tuple(float(v) for v in bg_a), tuple(float(v) for v in bg_b)),
      background_angle=u(0, 2 * math.pi),
      light_angle=u(0, 2 * math.pi),
      light_strength=u(0.0, 0.3),
      brightness=u(0.85, 1.12),
      noise_sigma=u(1.0, 7.0),
      pose=(u(-4, 4), u(-0.02, 0.02), u(-0.02, 0.02)),
      motion=u(0.3, 1.0),
      contempt_side=int(rng.choice([-1, 1])),
  )


def expression_aus(expression: str, identity: Identity, intensity: float = 1.0,
                   jitter: dict[str, float] | None = None) -> dict[str, float]:
  """AU values of `expression` at `intensity` (0 = neutral, 1 = apex), times per-AU factors."""
  if expression not in PROTOTYPES:
    raise ValueError(f'unknown expression {expression!r}; expected one of {EXPRESSIONS}')
  aus = dict.fromkeys(AUS, 0.0)
  for name, value in PROTOTYPES[expression].items():
    if expression == 'contempt' and name == 'lip_corner_up_r' and identity.contempt_side < 0:
      name = 'lip_corner_up_l'
    aus[name] = value * intensity * (jitter or {}).get(name, 1.0)
  return aus


class _Pen:
  """Draws in normalised canvas units through a head pose (roll about the face centre + shift)."""

  def __init__(self, canvas: np.ndarray, center, roll_deg: float, shift):
    self.canvas = canvas
    self.px = canvas.shape[0]
    self.roll = roll_deg
    a = math.radians(roll_deg)
    self._cos, self._sin = math.cos(a), math.sin(a)
    self._c = np.asarray(center, np.float64)
    self._t = self._c + np.asarray(shift, np.float64)

  def pts(self, points) -> np.ndarray:
    p = np.asarray(points, np.float64).reshape(-1, 2) - self._c
    rot = np.stack([p[:, 0] * self._cos - p[:, 1] * self._sin,
                    p[:, 0] * self._sin + p[:, 1] * self._cos], axis=-1)
    return np.round((rot + self._t) * self.px).astype(np.int32)

  def _n(self, v: float) -> int:
    return max(1, int(round(v * self.px)))

  def ellipse(self, center, axes, colour, angle=0.0, start=0, end=360, thickness=-1):
    c = tuple(int(v) for v in self.pts(center)[0])
    ax = (self._n(axes[0]), self._n(axes[1]))
    th = -1 if thickness < 0 else self._n(thickness)
    cv2.ellipse(self.canvas, c, ax, angle + self.roll, start, end, colour, th, cv2.LINE_AA)

  def circle(self, center, radius, colour):
    c = tuple(int(v) for v in self.pts(center)[0])
    cv2.circle(self.canvas, c, self._n(radius), colour, -1, cv2.LINE_AA)

  def polygon(self, points, colour):
    cv2.fillPoly(self.canvas, [self.pts(points)], colour, cv2.LINE_AA)

  def line(self, points, colour, thickness):
    cv2.polylines(self.canvas, [self.pts(points)], False, colour, self._n(thickness), cv2.LINE_AA)


def _bezier(p0, p1, p2, n: int = 12) -> np.ndarray:
  """Quadratic Bezier from p0 to p2 with control point p1, sampled at n points."""
  t = np.linspace(0.0, 1.0, n)[:, None]
  p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
  return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _through(p0, mid, p2, n: int = 12) -> np.ndarray:
  """Quadratic Bezier from p0 to p2 that passes through `mid` at t = 0.5."""
  ctrl = 2 * np.asarray(mid, np.float64) - 0.5 * (np.asarray(p0) + np.asarray(p2))
  return _bezier(p0, ctrl, p2, n)


def _shade(colour, factor: float):
  return tuple(float(min(255.0, c * factor)) for c in colour)


def _draw_background(identity: Identity, px: int) -> np.ndarray:
  """Linear two-colour gradient plus the subject's clothes (neither moves with the head)."""
  xy = (np.arange(px, dtype=np.float32) + 0.5) / px - 0.5
  d = (np.cos(identity.background_angle) * xy[None, :]
       + np.sin(identity.background_angle) * xy[:, None]) + 0.5
  a, b = (np.asarray(c, np.float32) for c in identity.background)
  canvas = (a + np.clip(d, 0, 1)[..., None] * (b - a)).astype(np.uint8)
  cx = identity.face_center[0]
  cv2.ellipse(canvas, (int(cx * px), int(1.08 * px)), (int(0.48 * px), int(0.2 * px)), 0, 0, 360,
              identity.clothes, -1, cv2.LINE_AA)
  return canvas


def draw_background(identity: Identity, size: int, supersample: int = 4) -> np.ndarray:
  """The subject's background canvas at size * supersample px (the same for all its frames)."""
  return _draw_background(identity, size * supersample)


def _draw_head(pen: _Pen, idn: Identity):
  """Hair behind the head, neck, ears, face, fringe: the parts no expression changes."""
  cx, cy = idn.face_center
  fw, fh = idn.face_axes
  skin, dark_skin = idn.skin, _shade(idn.skin, 0.82)
  if idn.hair_style == 2:  # long hair: a tall ellipse behind the face down to the shoulders
    pen.ellipse((cx, cy + 0.05 * fh), (fw * 1.22, fh * 1.12), idn.hair)
    pen.polygon([(cx - fw * 1.22, cy), (cx + fw * 1.22, cy), (cx + fw * 1.3, cy + fh * 1.5),
                 (cx - fw * 1.3, cy + fh * 1.5)], idn.hair)
  neck_w = fw * 0.5
  pen.polygon([(cx - neck_w, cy + fh * 0.5), (cx + neck_w, cy + fh * 0.5),
               (cx + neck_w * 1.1, cy + fh * 1.6), (cx - neck_w * 1.1, cy + fh * 1.6)], dark_skin)
  for s in (-1, 1):
    pen.ellipse((cx + s * fw * 0.98, cy + idn.eye_dy + fh * 0.12),
                (fw * 0.14 * idn.ear_size, fh * 0.2 * idn.ear_size), dark_skin)
  if idn.hair_style >= 1:  # skull cap of hair slightly larger than the face
    pen.ellipse((cx, cy - fh * 0.08), (fw * 1.07, fh * 0.98), idn.hair)
  pen.ellipse((cx, cy), (fw, fh), skin)
  pen.ellipse((cx, cy + fh * 0.25), (fw * idn.jaw_width, fh * 0.75), skin)
  if idn.hair_style >= 1:  # fringe: the top of the face ellipse in hair colour, above the brows
    top = cy - fh
    line = top + (fh + idn.eye_dy - idn.brow_gap - 0.05 * fh) * idn.hair_line
    pen.ellipse((cx, line), (fw * 1.02, line - top + 0.01), idn.hair, start=180, end=360)


def _draw_brows(pen: _Pen, idn: Identity, au: dict[str, float]):
  cx, cy = idn.face_center
  fw, fh = idn.face_axes
  ink = _shade(idn.hair, 0.7) if idn.hair_style else _shade(idn.skin, 0.45)
  line_ink = _shade(idn.skin, 0.6)
  up = au['brow_raise'] * fh * 0.16
  inner_up = au['brow_inner_raise'] * fh * 0.13
  lower = au['brow_lower'] * fh * 0.07
  ey = cy + idn.eye_dy
  for s in (-1, 1):
    ex = cx + s * idn.eye_dx
    base = ey - idn.brow_gap
    inner_x = ex - s * idn.brow_len * (0.55 - 0.25 * au['brow_lower'])
    outer_x = ex + s * idn.brow_len * 0.6
    inner = (inner_x, base - up - inner_up + 2.2 * lower)
    mid = (ex + s * idn.brow_len * 0.05,
           base - up * 1.15 - inner_up * 0.35 + lower * 0.8 - fh * 0.02)
    outer = (outer_x, base - up * 0.8 + lower * 0.4 + inner_up * 0.25)
    pen.line(_through(inner, mid, outer, 8), ink, idn.brow_thick)
  if au['brow_lower'] > 0.3:  # vertical glabella furrows between the lowered brows
    a = (au['brow_lower'] - 0.3) / 0.7
    for s in (-1, 1):
      x = cx + s * fw * 0.07
      top = (x - s * fw * 0.02, ey - idn.brow_gap - fh * 0.09 * a)
      pen.line([(x, ey - idn.brow_gap + fh * 0.05), top], line_ink, 0.006)
  if au['brow_raise'] > 0.3:  # horizontal forehead lines above the raised brows
    a = (au['brow_raise'] - 0.3) / 0.7
    for k in range(3):
      y = ey - idn.brow_gap - up - fh * (0.1 + 0.065 * k)
      pen.line(_through((cx - fw * 0.4 * a, y), (cx, y - fh * 0.03), (cx + fw * 0.4 * a, y), 6),
               line_ink, 0.005)


def _draw_eyes(pen: _Pen, idn: Identity, au: dict[str, float]):
  cx, cy = idn.face_center
  fh = idn.face_axes[1]
  rx, ry = idn.eye_axes
  open_ = au['eye_open']
  ry_eff = ry * (1.0 + 0.9 * open_) if open_ >= 0 else ry * (1.0 + 0.65 * open_)
  ry_eff = max(ry_eff, ry * 0.15)
  iris_r = ry * 1.0
  ey = cy + idn.eye_dy
  lid_ink = _shade(idn.skin, 0.35)
  for s in (-1, 1):
    ex = cx + s * idn.eye_dx
    # Narrowed eyes close mostly from below (cheek push, AU6/7): shift the eye centre up a little.
    c = (ex, ey - max(0.0, -open_) * ry * 0.25 + au['cheek_raise'] * ry * 0.15)
    pen.ellipse(c, (rx, ry_eff), (245, 245, 240))
    # A circle no larger than the eye's smaller half axis stays inside the eye: no clipping needed.
    r = min(iris_r, ry_eff, rx)
    pen.circle(c, r, idn.iris)
    pen.circle(c, r * 0.45, (10, 10, 10))
    pen.ellipse(c, (rx, ry_eff), lid_ink, start=180, end=360, thickness=ry * 0.35)
    if au['cheek_raise'] > 0.05:  # lower-lid bulge / crow's feet of a real (Duchenne) smile
      ink = _shade(idn.skin, 1.0 - 0.3 * au['cheek_raise'])
      pen.ellipse((ex, c[1] + ry_eff + ry * 0.55), (rx * 0.9, ry * 0.45), ink, start=20, end=160,
                  thickness=fh * 0.018)


def _draw_nose(pen: _Pen, idn: Identity, au: dict[str, float]):
  cx, cy = idn.face_center
  fw, fh = idn.face_axes
  top = cy + idn.eye_dy + fh * 0.05
  tip = top + idn.nose_len
  wr = au['nose_wrinkle']
  nose_ink = _shade(idn.skin, 0.72)
  pen.line([(cx + fw * 0.03, top), (cx + fw * 0.05, tip - fh * 0.04)], nose_ink, 0.006)
  lift = wr * fh * 0.035
  flare = 1.0 + 0.35 * wr
  for s in (-1, 1):
    pen.ellipse((cx + s * idn.nose_width * 0.55 * flare, tip - lift),
                (idn.nose_width * 0.3 * flare, fh * 0.028), _shade(idn.skin, 0.45))
  pen.ellipse((cx, tip - fh * 0.02 - lift), (idn.nose_width * 0.5, fh * 0.04),
              _shade(idn.skin, 0.92), start=0, end=180)
  if wr > 0.05:  # wrinkles across the bridge and the pulled-up skin at the nose wings (AU9)
    ink = _shade(idn.skin, 1.0 - 0.55 * wr)
    for k in range(3):
      y = top + idn.nose_len * (0.12 + 0.16 * k)
      w = idn.nose_width * (0.7 + 0.15 * k)
      arc = _through((cx - w, y + fh * 0.01), (cx, y - fh * 0.012), (cx + w, y + fh * 0.01), 6)
      pen.line(arc, ink, 0.007)
    for s in (-1, 1):
      pen.line([(cx + s * idn.nose_width * 1.0, tip - lift - fh * 0.06),
                (cx + s * idn.nose_width * 1.5, tip - lift + fh * 0.02)], ink, 0.007)


def _draw_mouth(pen: _Pen, idn: Identity, au: dict[str, float]):
  cx, cy = idn.face_center
  fw, fh = idn.face_axes
  my = cy + idn.mouth_dy
  press, stretch, open_ = au['lip_press'], au['lip_stretch'], au['mouth_open']
  half_w = idn.mouth_half_width * (1.0 + 0.45 * stretch - 0.2 * press)
  down = au['lip_corner_down'] * fh * 0.13
  corners = []
  for s, key in ((-1, 'lip_corner_up_l'), (1, 'lip_corner_up_r')):
    up = au[key]
    corners.append(np.array([cx + s * (half_w + up * fw * 0.06), my - up * fh * 0.15 + down]))
  left, right = corners
  thick = idn.lip_thick * (1.0 - 0.85 * press)
  # A round (stretch < 0) jaw drop opens tallest; a sideways stretch opens wide but lower.
  gap = open_ * fh * (0.26 if stretch < 0 else 0.22 * (1.0 - 0.15 * stretch))
  raise_ = au['upper_lip_raise'] * fh * 0.09
  # Smiling pulls the lip centre up less than the corners, which bends the mouth into a U.
  mean_up = 0.5 * (au['lip_corner_up_l'] + au['lip_corner_up_r'])
  seam_y = my - mean_up * fh * 0.02 + 0.3 * down
  upper_in = np.array([cx, seam_y - 0.2 * gap - raise_])
  lower_in = np.array([cx, seam_y + 0.8 * gap])
  upper_out = upper_in - [0, thick * 1.05]
  lower_out = lower_in + [0, thick * 1.25]
  lip = _shade(idn.lip, 1.0 - 0.3 * press)
  outline = np.concatenate([_through(left, upper_out, right), _through(right, lower_out, left)])
  pen.polygon(outline, lip)
  is_open = gap + raise_ > fh * 0.012
  if is_open:
    inner_top = _through(left, upper_in, right)
    inner_bottom = _through(right, lower_in, left)
    teeth = 0.6 * mean_up + 1.0 * au['upper_lip_raise'] + 0.3 * max(stretch, 0.0)
    teeth_h = min(0.5 * (lower_in[1] - upper_in[1]), fh * 0.06 * teeth)
    pen.polygon(np.concatenate([inner_top, inner_bottom]), (245, 240, 230))
    dark_top = _through(left, upper_in + [0, teeth_h], right)
    pen.polygon(np.concatenate([dark_top, inner_bottom]), (45, 15, 20))
  seam = _through(left, upper_in if is_open else (cx, seam_y), right)
  pen.line(seam, _shade(idn.lip, 0.45), 0.006 + 0.008 * press)
  # Nasolabial folds deepen when the corners are pulled up (smile, contempt's side).
  unilateral = abs(au['lip_corner_up_l'] - au['lip_corner_up_r']) > 0.4
  for corner, s, key in ((left, -1, 'lip_corner_up_l'), (right, 1, 'lip_corner_up_r')):
    up = max(au[key], au['cheek_raise'] * 0.7)
    if up <= 0.1:
      continue
    ink = _shade(idn.skin, 1.0 - 0.35 * up)
    start = (cx + s * idn.nose_width * 1.5, cy + idn.eye_dy + fh * 0.05 + idn.nose_len * 0.85)
    end = corner + [s * fw * 0.06, -fh * 0.01]
    mid = (0.5 * (start[0] + end[0]) + s * fw * 0.06, 0.5 * (start[1] + end[1]))
    pen.line(_through(start, mid, end, 8), ink, 0.007)
    if unilateral and au[key] > 0.4:  # the dimple (AU14) beside contempt's raised corner
      pen.ellipse(corner + [s * fw * 0.04, fh * 0.005], (fw * 0.025, fh * 0.035), ink,
                  start=-80 if s > 0 else 100, end=80 if s > 0 else 260, thickness=0.006)


def render_face(identity: Identity, aus: dict[str, float], size: int, *, roll: float = 0.0,
                shift=(0.0, 0.0), rng: np.random.Generator | None = None, supersample: int = 4,
                background: np.ndarray | None = None) -> np.ndarray:
  """One RGB uint8 [size, size, 3] frame of `identity` showing `aus`.

  roll (degrees) and shift (canvas units) move the head on top of the subject's resting pose; `rng`
  draws the per-frame sensor noise (no noise when None). `background` may pass a pre-drawn
  `_draw_background(identity, size * supersample)` to save time when rendering many frames.
  """
  px = size * supersample
  canvas = (_draw_background(identity, px) if background is None else background).copy()
  r0, dx0, dy0 = identity.pose
  pen = _Pen(canvas, identity.face_center, r0 + roll, (dx0 + shift[0], dy0 + shift[1]))
  _draw_head(pen, identity)
  _draw_brows(pen, identity, aus)
  _draw_eyes(pen, identity, aus)
  _draw_nose(pen, identity, aus)
  _draw_mouth(pen, identity, aus)
  img = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
  img *= _lighting(identity, size)[..., None]
  if rng is not None and identity.noise_sigma > 0:
    img += rng.normal(0.0, identity.noise_sigma, img.shape).astype(np.float32)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


KEYPOINTS = ('eye_left', 'eye_right', 'nose', 'mouth_left', 'mouth_right')  # left = the image's left.


def keypoints(identity: Identity, roll: float = 0.0, shift=(0.0, 0.0)) -> np.ndarray:
  """float32 [5, 2]: where `render_face` draws the eye centres, the nose tip and the mouth corners of
  the neutral face, (x, y) as fractions of the frame side, through the resting pose plus roll / shift."""
  cx, cy = identity.face_center
  fh = identity.face_axes[1]
  points = np.array([
      (cx - identity.eye_dx, cy + identity.eye_dy), (cx + identity.eye_dx, cy + identity.eye_dy),
      (cx, cy + identity.eye_dy + fh * 0.05 + identity.nose_len),
      (cx - identity.mouth_half_width, cy + identity.mouth_dy),
      (cx + identity.mouth_half_width, cy + identity.mouth_dy)])
  r0, dx0, dy0 = identity.pose
  a = math.radians(r0 + roll)
  p = points - (cx, cy)  # The rotation of _Pen.pts, without its rounding to canvas pixels.
  rot = np.stack([p[:, 0] * math.cos(a) - p[:, 1] * math.sin(a),
                  p[:, 0] * math.sin(a) + p[:, 1] * math.cos(a)], axis=-1)
  return (rot + (cx + dx0 + shift[0], cy + dy0 + shift[1])).astype(np.float32)


def _lighting(identity: Identity, size: int) -> np.ndarray:
  """Multiplicative light falloff across the frame from the subject's light direction."""
  xy = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
  d = np.cos(identity.light_angle) * xy[None, :] + np.sin(identity.light_angle) * xy[:, None]
  return identity.brightness * (1.0 + 2.0 * identity.light_strength * d)


def intensity_curve(num_frames: int, onset: float, apex: float) -> np.ndarray:
  """Expression intensity per frame: 0 until `onset`, smooth (cosine) rise, 1 from `apex` on.

  onset/apex are fractions of the sequence. Frame 0 is always exactly neutral and the last frame is
  always the apex, as in CK+ and Oulu-CASIA sequences.
  """
  if num_frames < 2:
    raise ValueError(f'a sequence needs at least 2 frames (neutral and apex), got {num_frames}')
  if not 0.0 <= onset < apex <= 1.0:
    raise ValueError(f'need 0 <= onset < apex <= 1, got onset={onset}, apex={apex}')
  t = np.arange(num_frames) / (num_frames - 1)
  x = np.clip((t - onset) / (apex - onset), 0.0, 1.0)
  out = 0.5 - 0.5 * np.cos(np.pi * x)
  out[0], out[-1] = 0.0, 1.0
  return out


def render_sequence(identity: Identity, expression: str, num_frames: int, size: int,
                    rng: np.random.Generator, *, supersample: int = 4,
                    keep: Sequence[int] | None = None,
                    background: np.ndarray | None = None) -> np.ndarray:
  """A neutral-to-apex sequence [num_frames, size, size, 3] uint8 RGB of `identity`, `expression`.

  From `rng`: onset in [0, 0.25] and apex in [0.6, 1.0] of the sequence, per-AU intensity factors in
  [0.85, 1.15], an overall apex intensity in [0.85, 1.0], a smooth head-motion path (roll, shift)
  that starts at the subject's resting pose, and per-frame noise.

  `keep` (frame positions) draws only those frames, [len(keep), size, size, 3]; they are identical to
  the same frames of the full sequence, because the skipped frames' noise is still drawn from `rng`
  (drawing is the cost, the noise draw is cheap). The image dataset keeps the apex frame this way.
  `background`: `draw_background(identity, size, supersample)`, to draw it once per subject.
  """
  onset, apex = rng.uniform(0.0, 0.25), rng.uniform(0.6, 1.0)
  strength = rng.uniform(0.85, 1.0)
  jitter = {name: float(rng.uniform(0.85, 1.15)) for name in AUS}
  curve = intensity_curve(num_frames, onset, apex)
  # Head motion: a random walk with momentum, so it drifts smoothly; zero at frame 0.
  steps = rng.normal(0.0, 1.0, (num_frames, 3)) * np.array([0.5, 0.002, 0.002]) * identity.motion
  steps[0] = 0.0
  velocity = np.zeros(3)
  pose, motion = np.zeros(3), np.zeros((num_frames, 3))
  for i in range(num_frames):
    velocity = 0.7 * velocity + steps[i]
    pose = np.clip(pose + velocity, [-5.0, -0.03, -0.03], [5.0, 0.03, 0.03])
    motion[i] = pose
  keep = list(range(num_frames)) if keep is None else [int(i) for i in keep]
  if any(not 0 <= i < num_frames for i in keep):
    raise ValueError(f'keep must hold frame positions in [0, {num_frames}); got {keep}')
  if background is None:
    background = draw_background(identity, size, supersample)
  frames = np.empty((len(keep), size, size, 3), np.uint8)
  for i in range(num_frames):
    if i not in keep:
      if identity.noise_sigma > 0:  # render_face's noise draw, so later frames stay the same
        rng.normal(0.0, identity.noise_sigma, (size, size, 3))
      continue
    aus = expression_aus(expression, identity, strength * curve[i], jitter)
    frame = render_face(identity, aus, size, roll=motion[i, 0], shift=motion[i, 1:], rng=rng,
                        supersample=supersample, background=background)
    for j, k in enumerate(keep):
      if k == i:
        frames[j] = frame
  return frames
