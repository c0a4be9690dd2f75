"""Face tracks: a face is what a detector finds in consecutive frames at overlapping places.

Per-frame detectors fire now and then on things that are not faces (letters of a logo, a patterned
shirt) and sometimes miss a real face for a frame or two. A video's faces are therefore the **tracks**
of its detections:

1. Frame by frame, each detection joins the track whose last box it overlaps most (intersection over
   union >= ``iou_threshold``; pairs are taken greedily, best overlap first, so one detection feeds one
   track and one track takes one detection per frame). A detection that overlaps no live track starts a
   new one. A track stays live for ``max_gap`` frames without a detection (a missed frame does not split
   a face in two); after that it ends.
2. A track is a face only when it was seen in ``min_length`` frames close together: ``min_length``
   detections within ``2 * min_length - 1`` consecutive frames (at least every other frame). Isolated
   hits, even many of them at one place over a long video (a logo's letters firing the detector now
   and then), are dropped. Where an input has fewer frames than ``min_length`` (one image, a short
   frame folder), every frame must have the face.

Two faces in a video are two tracks, each with its own boxes; nothing ever averages boxes across
tracks.
"""

from collections.abc import Sequence
import dataclasses

import numpy as np

# Defaults of track_faces(), also predict's: a face must be seen in 5 frames (0.2 s at 25 fps; a
# detector's false hits on real footage come one or two frames at a time); a face that is missed or
# hidden for up to 12 frames (0.5 s at 25 fps: a blink of the detector, a hand, a cut to black) and comes
# back at an overlapping place is the same face.
MIN_TRACK_LENGTH = 5
MAX_GAP = 12
IOU_THRESHOLD = 0.3


@dataclasses.dataclass
class Track:
  """One face over time: ``boxes`` maps a frame index to its detection (x, y, w, h, score)."""
  id: int
  boxes: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def first(self) -> int:
    return min(self.boxes)

  @property
  def last(self) -> int:
    return max(self.boxes)

  @property
  def length(self) -> int:
    """Frames with a detection."""
    return len(self.boxes)

  def box(self, frame: int) -> np.ndarray | None:
    """(x, y, w, h) at ``frame``, or None where the track has no detection there."""
    found = self.boxes.get(frame)
    return None if found is None else found[:4]

  def frame_boxes(self, start: int, end: int) -> list[np.ndarray | None]:
    """(x, y, w, h) or None for every frame in [start, end)."""
    return [self.box(i) for i in range(start, end)]

  @property
  def mean_area(self) -> float:
    return float(np.mean([b[2] * b[3] for b in self.boxes.values()]))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of boxes a [N, >=4] and b [M, >=4], both (x, y, w, h): [N, M]."""
  a = np.asarray(a, np.float64)[:, None, :4]
  b = np.asarray(b, np.float64)[None, :, :4]
  w = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
  h = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
  inter = np.clip(w, 0, None) * np.clip(h, 0, None)
  union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
  return inter / np.maximum(union, 1e-9)


def _seen_close_together(frames: list[int], needed: int) -> bool:
  """Whether `needed` of the sorted `frames` fall within 2 * needed - 1 consecutive frames."""
  return any(frames[i + needed - 1] - frames[i] < 2 * needed - 1 for i in range(len(frames) - needed + 1))


def track_faces(detections: Sequence[np.ndarray], *, min_length: int = MIN_TRACK_LENGTH,
                max_gap: int = MAX_GAP, iou_threshold: float = IOU_THRESHOLD) -> list[Track]:
  """The face tracks of a sequence, longest first (ties: larger faces first).

  Args:
    detections: per frame, the detections [N, 5] (x, y, w, h, score) or [N, 4]; N may be 0.
    min_length: a track needs this many detections within 2 * min_length - 1 consecutive frames, or
      it is dropped (capped at the number of frames, so that one image or a short clip can still hold
      a face).
    max_gap: frames without a detection that a track bridges.
    iou_threshold: smallest overlap between a track's last box and a detection that continues it.
  """
  if min_length < 1 or max_gap < 0 or not 0 < iou_threshold <= 1:
    raise ValueError(f'expected min_length >= 1, max_gap >= 0, 0 < iou_threshold <= 1; found '
                     f'{min_length}, {max_gap}, {iou_threshold}')
  live: list[Track] = []
  done: list[Track] = []
  for frame, found in enumerate(detections):
    found = np.asarray(found, np.float32)
    found = found.reshape(-1, 5 if found.ndim == 2 and found.shape[1] == 5 else 4)
    if found.shape[1] == 4:  # A detector without scores.
      found = np.concatenate([found, np.ones((len(found), 1), np.float32)], 1)
    # A track last seen at frame `last` has missed frame - last - 1 frames.
    done += [t for t in live if frame - t.last - 1 > max_gap]
    live = [t for t in live if frame - t.last - 1 <= max_gap]
    taken = set()
    if live and len(found):
      overlap = iou_matrix(np.stack([t.boxes[t.last] for t in live]), found)
      for k in np.argsort(-overlap, axis=None, kind='stable'):
        i, j = divmod(int(k), len(found))
        if overlap[i, j] < iou_threshold:
          break
        if frame in live[i].boxes or j in taken:
          continue
        live[i].boxes[frame] = found[j]
        taken.add(j)
    for j in range(len(found)):
      if j not in taken:
        live.append(Track(id=-1, boxes={frame: found[j]}))
  needed = min(min_length, max(len(detections), 1))
  tracks = [t for t in done + live if _seen_close_together(sorted(t.boxes), needed)]
  tracks.sort(key=lambda t: (-t.length, -t.mean_area, t.first))
  for k, t in enumerate(tracks):
    t.id = k
  return tracks
