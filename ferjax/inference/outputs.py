"""What a prediction writes: the table on stdout, JSON, CSV, the annotated video or frame and the plot
of the probabilities over time, and the names of the per-input output files."""

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ferjax.inference.windows import Result, Source, Window, iter_frames


class OutputError(ValueError):
  """Outputs that cannot be written as asked (two on one path, an input given twice, a codec)."""


def _time(frame: int, fps: float | None) -> str:
  return f'{frame / fps:.2f}s' if fps else '-'


def format_table(result: Result, max_rows: int = 40) -> str:
  """The readable summary of one input: a header line, then per face (track) a line and one row per
  window (the first `max_rows`)."""
  names = result.class_names
  face_count = sum(b is not None for b in result.boxes)
  clip = result.clip_probs
  several = len(result.tracks) > 1
  head = (f'{result.source.path} ({result.source.kind}, {result.num_frames} frames'
          + (f', {result.fps:.1f} fps' if result.fps else '') + '): '
          + (f'{len(result.tracks)} faces (tracks); main face: ' if several else '')
          + (f'{result.label} ({clip.max():.2f})' if clip is not None else 'no window with a face')
          + f', mean of {sum(w.probs is not None for w in result.windows)}/{len(result.windows)} windows; '
          f'face in {face_count}/{result.num_frames} frames; {result.frames_per_second:.1f} frames/s')
  width = max(6, *(len(n) for n in names))
  columns = ('  '.join(f'{n[:width]:>{max(len(n[:width]), 4)}}' for n in names))

  def cells(probs):
    return '  '.join(f'{p:>{max(len(n[:width]), 4)}.2f}' for n, p in zip(names, probs))

  lines = [head]
  for track in result.tracks:
    if several:
      probs = track.clip_probs
      lines.append(f'  face {track.id}: frames {track.first}-{track.last}, seen in {track.face_frames}: '
                   + (f'{result.track_label(track)} ({probs.max():.2f})' if probs is not None else
                      'no window with a face'))
    lines.append(f'  {"window":>6}  {"frames":>11}  {"time":>15}  {"faces":>5}  '
                 f'{"label":<{width}}  {columns}')
    for i, w in enumerate(track.windows[:max_rows]):
      span = f'{_time(w.start, result.fps)}-{_time(w.end - 1, result.fps)}' if result.fps else '-'
      label = names[int(np.argmax(w.probs))] if w.probs is not None else 'no face'
      lines.append(f'  {i:>6}  {f"{w.start}-{w.end - 1}":>11}  {span:>15}  '
                   f'{f"{w.face_frames}/{w.end - w.start}":>5}  {label:<{width}}  '
                   f'{cells(w.probs) if w.probs is not None else ""}'.rstrip())
    if len(track.windows) > max_rows:
      lines.append(f'  ... {len(track.windows) - max_rows} more windows (see --json / --csv)')
    if track.clip_probs is not None:
      frames = f'{track.first}-{track.last}' if several else f'0-{result.num_frames - 1}'
      lines.append(f'  {"clip" if not several else f"face {track.id}":>6}  {frames:>11}  {"":>15}  '
                   f'{"":>5}  {result.track_label(track):<{width}}  {cells(track.clip_probs)}')
  return '\n'.join(lines)


def _probs_dict(names, probs) -> dict | None:
  return None if probs is None else {n: round(float(p), 6) for n, p in zip(names, probs)}


def _windows_json(names, windows) -> list[dict]:
  return [{'start': w.start, 'end': w.end, 'face_frames': w.face_frames,
           'box': None if w.box is None else [round(v, 1) for v in w.box],
           'face_box': None if w.face_box is None else [round(v, 1) for v in w.face_box],
           'label': None if w.probs is None else names[int(np.argmax(w.probs))],
           'probs': _probs_dict(names, w.probs)} for w in windows]


def result_json(result: Result) -> dict:
  """One input's results; `label`, `probs`, `face`, `face_boxes` and `windows` are the main face's
  (the first track), `tracks` has every face."""
  names = result.class_names
  return {
      'input': os.fspath(result.source.path), 'kind': result.source.kind, 'error': None,
      'num_frames': result.num_frames, 'fps': result.fps,
      'frame_size': list(result.frame_size) if result.frame_size else None,
      'label': result.label, 'probs': _probs_dict(names, result.clip_probs),
      'frames_per_second': round(result.frames_per_second, 2),
      'face': [b is not None for b in result.boxes],
      'face_boxes': [None if b is None else [round(v, 1) for v in b] for b in result.boxes],
      'windows': _windows_json(names, result.windows),
      'tracks': [{'track': t.id, 'first_frame': t.first, 'last_frame': t.last, 'face_frames': t.face_frames,
                  'label': result.track_label(t), 'probs': _probs_dict(names, t.clip_probs),
                  'face_boxes': {str(k): [round(v, 1) for v in b] for k, b in boxes.items()},
                  'windows': _windows_json(names, t.windows)}
                 for t, boxes in zip(result.tracks, result.track_boxes)],
  }


def csv_text(results: Sequence[Result], class_names: Sequence[str]) -> str:
  """One row per window of every face (track) and one `clip` row per face; probabilities in class
  order."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['input', 'track', 'window', 'start_frame', 'end_frame', 'start_s', 'end_s',
                   'face_frames', 'label', *[f'p_{n}' for n in class_names]])
  for r in results:
    for track in r.tracks:
      for i, w in enumerate(track.windows):
        times = [f'{w.start / r.fps:.3f}', f'{(w.end - 1) / r.fps:.3f}'] if r.fps else ['', '']
        label = r.class_names[int(np.argmax(w.probs))] if w.probs is not None else 'no face'
        probs = [f'{p:.6f}' for p in w.probs] if w.probs is not None else [''] * len(class_names)
        writer.writerow([os.fspath(r.source.path), track.id, i, w.start, w.end - 1, *times, w.face_frames,
                         label, *probs])
      clip = track.clip_probs
      writer.writerow([os.fspath(r.source.path), track.id, 'clip', track.first, track.last, '', '',
                       track.face_frames, r.track_label(track) or 'no face',
                       *([f'{p:.6f}' for p in clip] if clip is not None else [''] * len(class_names))])
  return out.getvalue()


def frame_window(result: Result, frame: int) -> Window | None:
  """The scored window shown at `frame`: of those covering it, the one whose centre is nearest."""
  covering = [w for w in result.windows if w.probs is not None and w.start <= frame < w.end]
  if not covering:
    return None
  return min(covering, key=lambda w: abs((w.start + w.end - 1) / 2 - frame))


def annotate_frame(rgb: np.ndarray, result: Result, frame: int, min_height: int = 360) -> np.ndarray:
  """`rgb` (upscaled to at least `min_height` rows) with the window's face box (green where this frame
  has a face; 'no face' in red where it has none), the label and one probability bar per class."""
  import cv2  # pylint: disable=import-outside-toplevel
  scale = max(1.0, min_height / rgb.shape[0])
  image = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else \
      rgb.copy()
  h, w = image.shape[:2]
  window = frame_window(result, frame)
  has_face = result.boxes[frame] is not None
  font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(h / 360))
  text_scale = 0.45 * h / 360
  if window is not None and window.face_box is not None:
    x, y, side = (v * scale for v in window.face_box[:3])
    colour = (0, 220, 0) if has_face else (160, 160, 160)
    cv2.rectangle(image, (round(x), round(y)), (round(x + side), round(y + side)), colour, 2 * thick)
  if not has_face:
    cv2.putText(image, 'no face', (8, h - 10), font, 1.5 * text_scale, (255, 40, 40), 2 * thick)
  if window is None:
    return image
  names, probs = result.class_names, window.probs
  best = int(np.argmax(probs))
  row, bar_w = round(18 * h / 360), round(0.25 * w)
  top = round(40 * h / 360)
  panel = image.copy()  # A dark, translucent panel under the text keeps it readable on any frame.
  cv2.rectangle(panel, (0, 0), (min(w, 2 * bar_w + 60), top + len(names) * row + 4), (0, 0, 0), -1)
  image = cv2.addWeighted(panel, 0.6, image, 0.4, 0)
  cv2.putText(image, f'{names[best]} {probs[best]:.2f}', (8, round(26 * h / 360)), font,
              1.6 * text_scale, (255, 255, 0), 2 * thick)
  for i, (name, p) in enumerate(zip(names, probs)):
    y0 = top + i * row
    cv2.rectangle(image, (8, y0), (8 + bar_w, y0 + row - 4), (40, 40, 40), -1)
    cv2.rectangle(image, (8, y0), (8 + round(bar_w * float(p)), y0 + row - 4),
                  (255, 160, 0) if i == best else (0, 160, 255), -1)
    cv2.putText(image, f'{name} {p:.2f}', (14 + bar_w, y0 + row - 6), font, text_scale,
                (255, 255, 255), thick)
  return image


IMAGE_OUTPUT_EXTENSIONS = ('.png', '.jpg', '.jpeg')
VIDEO_CODECS = {'.mp4': 'mp4v', '.avi': 'MJPG'}


def write_annotated(result: Result, path: Path) -> None:
  """The annotated input as a video (.mp4: mp4v, .avi: MJPG), or one annotated frame (.png/.jpg)."""
  import cv2  # pylint: disable=import-outside-toplevel
  suffix = path.suffix.lower()
  if suffix in IMAGE_OUTPUT_EXTENSIONS:
    scored = [w for w in result.windows if w.probs is not None]
    if scored:
      label = result.class_names.index(result.label)
      best = max(scored, key=lambda w: w.probs[label])
      frame = (best.start + best.end - 1) // 2
    else:  # Faces in too few frames of every window: show the middle frame, unlabelled.
      frame = result.num_frames // 2
    for i, rgb in enumerate(iter_frames(result.source)):
      if i == frame:
        cv2.imwrite(os.fspath(path), cv2.cvtColor(annotate_frame(rgb, result, i), cv2.COLOR_RGB2BGR))
        return
  writer = None
  try:
    for i, rgb in enumerate(iter_frames(result.source)):
      image = annotate_frame(rgb, result, i)
      if writer is None:
        writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*VIDEO_CODECS[suffix]),
                                 result.fps or 10.0, (image.shape[1], image.shape[0]))
        if not writer.isOpened():
          raise OutputError(f'{path}: OpenCV cannot write {VIDEO_CODECS[suffix]} video')
      writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  finally:
    if writer is not None:
      writer.release()


def write_plot(result: Result, path: Path) -> None:
  """Class probabilities of every scored window over time (window centres); no-face windows shaded."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  unit = result.fps or 1.0
  fig, ax = plt.subplots(figsize=(8, 3.5))
  centres = np.array([(w.start + w.end - 1) / 2 for w in result.windows]) / unit
  for i, name in enumerate(result.class_names):
    values = [w.probs[i] if w.probs is not None else np.nan for w in result.windows]
    ax.plot(centres, values, marker='o', markersize=3, label=name)
  for w in result.windows:
    if w.probs is None:
      ax.axvspan(w.start / unit, (w.end - 1) / unit, color='0.85', lw=0)
  ax.set_xlabel('time (s), window centre' if result.fps else 'frame, window centre')
  ax.set_ylabel('probability')
  ax.set_ylim(0, 1)
  ax.set_title(f'{result.source.path.name}: {result.label}')
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)


def input_labels(sources: Sequence[Source]) -> list[str]:
  """A distinct name per input for its output files: its stem (`clip` for clip.avi, `001` for a frame
  folder 001/); inputs whose stems collide get as many of their parent folders as tell them apart
  (`S005_001`, `S010_001`), then their extension (`clip_avi`, `clip_mp4`). An input given twice is an
  error."""
  def label(source: Source, depth: int, extension: bool) -> str:
    parents = source.path.parent.parts[1:]
    name = source.path.name.replace('.', '_') if extension else source.path.stem
    return '_'.join((*parents[len(parents) - depth:], name) if depth else (name,))

  labels = [label(s, 0, False) for s in sources]
  for stem in {x for x in labels if labels.count(x) > 1}:
    group = [i for i, x in enumerate(labels) if x == stem]
    depth_limit = max(len(sources[i].path.parent.parts) for i in group)
    for extension in (False, True):
      for depth in range(depth_limit):
        names = [label(sources[i], depth, extension) for i in group]
        if len(set(names)) == len(names):
          break
      else:
        continue
      break
    else:
      raise OutputError(f'{sources[group[0]].path} is given twice; pass each input once')
    for i, name in zip(group, names):
      labels[i] = name
  if len(set(labels)) != len(labels):
    clash = next(x for x in labels if labels.count(x) > 1)
    raise OutputError(f'two inputs would write the same per-input output files ({clash}): '
                       'rename one of them')
  return labels


def per_input_path(path: Path, label: str, several: bool) -> Path:
  """`NAME.ext` for one input; `NAME.<label>.ext` per input when there are several (batch mode)."""
  return path.with_name(f'{path.stem}.{label}{path.suffix}') if several else path
