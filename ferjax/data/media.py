"""Reading image sequences and videos with OpenCV, and choosing evenly spaced frames.

Every reader returns RGB ``uint8`` arrays of shape ``[H, W, 3]``: grey images are repeated to three channels
so that colour and grey frames of the same dataset (CK+ has both) look alike downstream. Failures raise
:class:`MediaError`, which names the file and what went wrong, so a builder can skip the sequence with that
reason.
"""

from collections.abc import Iterable, Sequence
import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
VIDEO_EXTENSIONS = ('.avi', '.mp4', '.mov', '.mkv', '.mpg', '.mpeg', '.wmv', '.flv', '.webm', '.m4v')


class MediaError(ValueError):
  """An image or video that cannot be read (missing, undecodable, or without frames)."""


def evenly_spaced(num_total: int, max_frames: int | None) -> list[int]:
  """Indices of at most ``max_frames`` evenly spaced frames out of ``num_total``, first and last included.

  ``max_frames=None`` (or a value >= ``num_total``) keeps every frame. Indices are sorted and unique.
  """
  if num_total < 0:
    raise ValueError(f'num_total must be >= 0, got {num_total}')
  if max_frames is not None and max_frames < 1:
    raise ValueError(f'max_frames must be >= 1 or None, got {max_frames}')
  if max_frames is None or num_total <= max_frames:
    return list(range(num_total))
  if max_frames == 1:
    return [(num_total - 1) // 2]  # The middle frame: the most representative single frame.
  # round(linspace) with num_total > max_frames gives strictly increasing integers.
  return [int(round(i * (num_total - 1) / (max_frames - 1))) for i in range(max_frames)]


def to_rgb(image: np.ndarray) -> np.ndarray:
  """OpenCV's BGR / BGRA / grey (any bit depth) -> RGB uint8."""
  if image.dtype == np.uint16:
    image = (image >> 8).astype(np.uint8)  # 16-bit PNGs: keep the high byte.
  elif image.dtype != np.uint8:
    raise MediaError(f'unsupported pixel type {image.dtype}')
  if image.ndim == 2:
    return np.repeat(image[..., None], 3, axis=-1)
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 4:
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_to_rgb = to_rgb  # Older name, for callers not yet on to_rgb.


def read_image(path: str | os.PathLike) -> np.ndarray:
  """One image file -> RGB uint8 [H, W, 3]; grey images are repeated to three channels."""
  path = Path(path)
  try:
    data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode: works for any path encoding.
  except OSError as e:
    raise MediaError(f'cannot read {path}: {e}') from e
  image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
  if image is None:
    raise MediaError(f'OpenCV cannot decode {path} ({data.size} bytes)')
  return to_rgb(image)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # Frame headers (not DHT, JPG, DAC).


def jpeg_size(data: bytes, name: str | os.PathLike = 'JPEG data') -> tuple[int, int]:
  """(height, width) of a JPEG from its frame header, without decoding it.

  Raises MediaError when ``data`` is not a JPEG, has no frame header, or is cut off before its end marker
  (a truncated download), so that a file stored without decoding is at least complete.
  """
  if data[:2] != b'\xff\xd8':
    raise MediaError(f'{name} is not a JPEG file (no start-of-image marker)')
  if not data.rstrip(b'\x00').endswith(b'\xff\xd9'):
    raise MediaError(f'{name} is cut off: no JPEG end-of-image marker')
  i = 2
  while i + 4 <= len(data):
    if data[i] != 0xFF:
      break
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
      continue
    if marker in _SOF_MARKERS and i + 9 <= len(data):
      return int.from_bytes(data[i + 5:i + 7], 'big'), int.from_bytes(data[i + 7:i + 9], 'big')
    i += 2 + int.from_bytes(data[i + 2:i + 4], 'big')
  raise MediaError(f'{name} has no readable JPEG frame header')


def read_images(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
  """Several image files -> list of RGB uint8 arrays (shapes may differ between files)."""
  if not paths:
    raise MediaError('an image sequence needs at least one file, got none')
  return [read_image(p) for p in paths]


def is_hidden(name: str) -> bool:
  """Hidden or OS bookkeeping files (``.DS_Store``, ``._x.png``, ``Thumbs.db``) that datasets ship with."""
  return name.startswith('.') or name.lower() in ('thumbs.db', 'desktop.ini')


def list_files(folder: str | os.PathLike, extensions: Iterable[str]) -> list[Path]:
  """Non-hidden files in ``folder`` with one of ``extensions`` (case-insensitive), sorted by name."""
  extensions = tuple(e.lower() for e in extensions)
  return sorted(
      p for p in Path(folder).iterdir()
      if p.is_file() and not is_hidden(p.name) and p.suffix.lower() in extensions)


def list_images(folder: str | os.PathLike) -> list[Path]:
  """The image files of one frame folder, sorted by name (zero-padded frame numbers sort correctly)."""
  return list_files(folder, IMAGE_EXTENSIONS)


def count_video_frames(path: str | os.PathLike) -> int:
  """The number of frames OpenCV can decode from a video.

  Decodes the whole file: ``CAP_PROP_FRAME_COUNT`` comes from the container header and is wrong for some
  AVIs, and a builder must know the true count to choose evenly spaced frames.
  """
  capture = cv2.VideoCapture(str(path))
  if not capture.isOpened():
    raise MediaError(f'OpenCV cannot open video {path}')
  try:
    count = 0
    while capture.grab():
      count += 1
  finally:
    capture.release()
  return count


def read_video(path: str | os.PathLike,
               max_frames: int | None = None) -> tuple[list[np.ndarray], list[int]]:
  """At most ``max_frames`` evenly spaced frames of a video, and their indices in the video.

  Returns ``(frames, indices)``: RGB uint8 arrays and the 0-based positions of those frames among all
  decodable frames. With ``max_frames=None`` every frame is kept (one decoding pass); otherwise the video is
  decoded twice (count, then keep) so that long videos never sit in memory whole.
  """
  path = Path(path)
  if not path.is_file():
    raise MediaError(f'no such video file: {path}')
  keep = None
  if max_frames is not None:
    total = count_video_frames(path)
    if total == 0:
      raise MediaError(f'OpenCV decodes no frames from {path}')
    keep = set(evenly_spaced(total, max_frames))
  capture = cv2.VideoCapture(str(path))
  if not capture.isOpened():
    raise MediaError(f'OpenCV cannot open video {path}')
  frames, indices = [], []
  try:
    index = 0
    while capture.grab():
      if keep is None or index in keep:
        ok, frame = capture.retrieve()
        if not ok or frame is None:
          raise MediaError(f'OpenCV cannot decode frame {index} of {path}')
        frames.append(to_rgb(frame))
        indices.append(index)
      index += 1
  finally:
    capture.release()
  if not frames:
    raise MediaError(f'OpenCV decodes no frames from {path}')
  return frames, indices


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float = 25.0,
                fourcc: str = 'MJPG') -> None:
  """Writes RGB uint8 frames to a video file (used for dummy data and tests)."""
  if not frames:
    raise ValueError('write_video needs at least one frame')
  h, w = frames[0].shape[:2]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
  if not writer.isOpened():
    raise MediaError(f'OpenCV cannot open a {fourcc} video writer for {path}')
  try:
    for frame in frames:
      if frame.shape[:2] != (h, w):
        raise ValueError(f'all frames must be {h}x{w}, got {frame.shape[:2]}')
      writer.write(cv2.cvtColor(_to_rgb_uint8(frame), cv2.COLOR_RGB2BGR))
  finally:
    writer.release()


def _to_rgb_uint8(frame: np.ndarray) -> np.ndarray:
  if frame.dtype != np.uint8:
    raise ValueError(f'expected uint8 frames, got {frame.dtype}')
  return np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame
