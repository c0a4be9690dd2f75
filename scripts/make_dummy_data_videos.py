"""Writes the `dummy_data/` of the video builders (eNTERFACE'05, RML, AFEW, MAFW): tiny AVIs in each real layout.

Usage::

  python scripts/make_dummy_data_videos.py                       # all three
  python scripts/make_dummy_data_videos.py enterface05 afew
  python scripts/make_dummy_data_videos.py rml --out /tmp/rml    # somewhere else

One function per dataset, registered in ``DATASETS`` (name -> function(out_dir)), like
``scripts/make_dummy_data.py`` for the image-sequence datasets.

Each dataset's folder structure and irregularities follow /work/shared/datasets.md (and the builders'
READMEs); no real dataset content is used. Frames are 64x48 MJPG with a drawn cartoon face that OpenCV's
default Haar cascade detects, so the builders run their real face detection on this data; blank clips give
a real "no face" and a garbage file a real decoding failure. The videos are written deterministically, so
rerunning the script reproduces the same files.
"""

import argparse
from collections.abc import Callable
import pathlib
import shutil

import cv2
import numpy as np

from ferjax.data import media

REPO = pathlib.Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 64, 48


def draw_face(index: int, num_frames: int, *, width: int = WIDTH, height: int = HEIGHT,
              tint: tuple[int, int, int] = (90, 90, 90), mouth: float = 0.3) -> np.ndarray:
  """One RGB frame with a cartoon face that the Haar cascade detects, drifting slowly sideways.

  Haar needs dark eyes under brows, a lighter nose bridge and a dark mouth on a bright face; 18 px
  "face radius" in a 64x48 frame is detected reliably. `mouth` (width as a fraction of the radius) and
  `tint` (background colour) vary between clips so clips differ.
  """
  s = int(0.38 * height)
  cx = width // 2 + int(round(4 * np.sin(2 * np.pi * index / max(num_frames, 1))))
  cy = height // 2
  img = np.empty((height, width, 3), np.uint8)
  img[:] = tint
  cv2.ellipse(img, (cx, cy), (int(s * 0.8), s), 0, 0, 360, (205, 195, 185), -1)
  for side in (-1, 1):
    cv2.ellipse(img, (cx + side * int(s * 0.35), cy - int(s * 0.25)),
                (int(s * 0.16), int(s * 0.08)), 0, 0, 360, (40, 40, 40), -1)
    cv2.line(img, (cx + side * int(s * 0.2), cy - int(s * 0.45)),
             (cx + side * int(s * 0.55), cy - int(s * 0.45)), (60, 60, 60), max(1, s // 12))
  cv2.ellipse(img, (cx, cy + int(s * 0.45)), (max(2, int(s * mouth)), int(s * 0.08)),
              0, 0, 360, (60, 40, 40), -1)
  cv2.line(img, (cx, cy - int(s * 0.15)), (cx, cy + int(s * 0.2)), (170, 165, 160), max(1, s // 10))
  return cv2.GaussianBlur(img, (3, 3), 0)


def write_face_clip(path: pathlib.Path, num_frames: int = 6, variant: int = 0) -> None:
  """A clip of `num_frames` face frames; `variant` changes background and mouth."""
  tint = (70 + 15 * (variant % 4), 90, 110 - 10 * (variant % 3))
  mouth = 0.2 + 0.05 * (variant % 4)
  frames = [draw_face(i, num_frames, tint=tint, mouth=mouth) for i in range(num_frames)]
  path.parent.mkdir(parents=True, exist_ok=True)
  media.write_video(path, frames)


def write_blank_clip(path: pathlib.Path, num_frames: int = 6) -> None:
  """A decodable clip with no face at all (uniform grey with a little structure)."""
  frame = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
  cv2.rectangle(frame, (5, 5), (20, 40), (130, 130, 130), -1)  # Not a face.
  path.parent.mkdir(parents=True, exist_ok=True)
  media.write_video(path, [frame] * num_frames)


def write_garbage(path: pathlib.Path, num_bytes: int = 512) -> None:
  """A file with a video name that no decoder can read."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(np.random.default_rng(0).integers(0, 256, num_bytes, np.uint8).tobytes())


def make_enterface05(out: pathlib.Path) -> None:
  """eNTERFACE'05 with its irregularities, nested one level (``eNTERFACE05/enterface database/...``).

  Usable clips (12; subject: count): 3: 3, 11: 2, 12: 2, 14: 2, 16: 2, 23: 1.
  * subject 3: typo'd name ``s_3_ha_1.avi``; an extra sub-folder level in ``sadness/sentence 2``; an empty
    ``neutral`` folder; a ``Thumbs.db``;
  * subject 6: two unsegmented recordings without a sentence level (excluded, reported);
  * subject 11: files named ``s12_*``, while subject 12 has its own ``s12_*`` files with the same names;
  * subject 14: a long clip (20 frames) to exercise evenly spaced frame selection;
  * subject 16: typo'd ``s16_su_3avi.avi``;
  * subject 23: missing recordings (an empty sentence folder).
  """
  root = out / 'eNTERFACE05' / 'enterface database'
  clips = {
      'subject 3/anger/sentence 1/s3_an_1.avi': 6,
      'subject 3/happiness/sentence 1/s_3_ha_1.avi': 6,
      'subject 3/sadness/sentence 2/sentence 2/s3_sa_2.avi': 7,
      'subject 11/anger/sentence 1/s12_an_1.avi': 6,
      'subject 11/fear/sentence 3/s12_fe_3.avi': 6,
      'subject 12/anger/sentence 1/s12_an_1.avi': 6,
      'subject 12/disgust/sentence 2/s12_di_2.avi': 8,
      'subject 14/anger/sentence 2/s14_an_2.avi': 20,
      'subject 14/fear/sentence 1/s14_fe_1.avi': 6,
      'subject 16/surprise/sentence 3/s16_su_3avi.avi': 6,
      'subject 16/happiness/sentence 5/s16_ha_5.avi': 7,
      'subject 23/anger/sentence 1/s23_an_1.avi': 6,
      # Subject 6: long unsegmented recordings, no sentence level.
      'subject 6/anger/s6_an.avi': 10,
      'subject 6/surprise/s6_su.avi': 10,
  }
  for i, (relative, num_frames) in enumerate(clips.items()):
    write_face_clip(root / relative, num_frames, variant=i)
  # Git keeps no empty folders: a hidden placeholder keeps them (builders ignore hidden files).
  for empty in ('subject 3/neutral', 'subject 23/disgust/sentence 4'):
    (root / empty).mkdir(parents=True)
    (root / empty / '.gitkeep').write_bytes(b'')
  (root / 'subject 3' / 'anger' / 'sentence 1' / 'Thumbs.db').write_bytes(b'\0' * 16)


def make_rml(out: pathlib.Path) -> None:
  """RML: ``rml-1/s1, s2`` and ``rml-2/s6`` (language sub-folders), ``rml-2/s7``; label = file name prefix.

  Usable clips (9; subject: count): 1: 2, 2: 2, 6: 3, 7: 2. File names mix case (``Sa1.avi``).
  """
  clips = {
      'rml-1/s1/an1.avi': 6,
      'rml-1/s1/ha1.avi': 6,
      'rml-1/s2/di1.avi': 6,
      'rml-1/s2/Sa1.avi': 7,
      'rml-2/s6/english/su1.avi': 6,
      'rml-2/s6/mandarin/fe1.avi': 6,
      'rml-2/s6/mandarin/an2.avi': 18,
      'rml-2/s7/ha2.avi': 6,
      'rml-2/s7/sa2.avi': 6,
  }
  for i, (relative, num_frames) in enumerate(clips.items()):
    write_face_clip(out / relative, num_frames, variant=i)


def make_afew(out: pathlib.Path) -> None:
  """AFEW: ``Train_AFEW`` and ``Val_AFEW`` in different places, 7 class folders, 9-digit clip ids.

  Train: 7 usable clips (one per class) + one clip without a face (skipped) + the released face-crop folder
  ``AlignedFaces_LBPTOP_Points`` (ignored). Validation (nested under ``Val/``): 4 usable clips, one of them
  with the same id as a training clip, + one undecodable file (skipped).
  """
  train = out / 'Train_AFEW'
  val = out / 'Val' / 'Val_AFEW'
  clips = {
      train / 'Angry' / '000046280.avi': 6,
      train / 'Disgust' / '000147120.avi': 6,
      train / 'Fear' / '000200520.avi': 6,
      train / 'Happy' / '000324160.avi': 16,
      train / 'Neutral' / '000412480.avi': 6,
      train / 'Sad' / '000535600.avi': 6,
      train / 'Surprise' / '000617360.avi': 6,
      val / 'Angry' / '005150814.avi': 6,
      val / 'Happy' / '000324160.avi': 6,  # Same id as a training clip (another segment).
      val / 'Sad' / '011603980.avi': 6,
      val / 'Surprise' / '004510640.avi': 6,
  }
  for i, (path, num_frames) in enumerate(clips.items()):
    write_face_clip(path, num_frames, variant=i)
  write_blank_clip(train / 'Neutral' / '000999999.avi')
  write_garbage(val / 'Fear' / '002233445.avi')
  faces_dir = train / 'AlignedFaces_LBPTOP_Points' / 'Faces' / '000046280'
  faces_dir.mkdir(parents=True)
  cv2.imwrite(str(faces_dir / '0001.jpg'), draw_face(0, 1)[..., ::-1])


# MAFW: clip id -> (test fold, label, frames, what is special).
MAFW_CLIPS = {
    '00001': (1, 'anger', 5, ''), '00002': (1, 'anxiety', 11, ''), '00003': (2, 'contempt', 5, ''),
    '00004': (2, 'disappointment', 5, ''), '00005': (3, 'disgust', 5, ''), '00006': (3, 'fear', 5, ''),
    '00007': (4, 'happiness', 5, ''), '00008': (4, 'helplessness', 5, ''), '00009': (5, 'neutral', 5, ''),
    '00010': (5, 'sadness', 5, ''),
    '00900': (2, 'surprise', 0, 'absent'),     # Listed, neither frames nor video: skipped.
    '00901': (3, 'surprise', 5, 'blank'),      # No face: skipped.
    '00902': (5, 'anger', 5, 'garbage'),       # Undecodable video / frame: skipped.
    '00903': (0, 'fear', 5, 'unlisted'),       # In no split file.
}


def make_mafw(out: pathlib.Path) -> None:
  """MAFW: ``data/clips/<id>.mp4`` and ``data/frames/<id>/<n>.jpg`` of the same clips (see ``MAFW_CLIPS``),
  and ``Train & Test Set/single/{no_caption,with_caption}/set_1..set_5/{train,test}.txt``; set_4/test.txt
  has a line with an unknown class (line 3).

  Expected result (both configs): 2 clips in each of the 5 folds; skipped 00900 (absent), 00901 (no face),
  00902 (undecodable); 00903 present but unlisted.
  """
  data = out / 'MAFW' / 'data'
  for i, (clip, (_fold, _label, n, special)) in enumerate(MAFW_CLIPS.items()):
    if special == 'absent':
      continue
    video, frames_dir = data / 'clips' / f'{clip}.mp4', data / 'frames' / clip
    if special == 'garbage':
      write_garbage(video)
      frames_dir.mkdir(parents=True)
      (frames_dir / '1.jpg').write_bytes(b'not a JPEG')
      continue
    if special == 'blank':  # Uniform grey with a rectangle: not a face.
      blank = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
      cv2.rectangle(blank, (5, 5), (20, 40), (130, 130, 130), -1)
      frames = [blank] * n
    else:
      tint = (70 + 15 * (i % 4), 90, 110 - 10 * (i % 3))
      frames = [draw_face(j, n, tint=tint, mouth=0.2 + 0.05 * (i % 4)) for j in range(n)]
    video.parent.mkdir(parents=True, exist_ok=True)
    media.write_video(video, frames, fourcc='mp4v')
    frames_dir.mkdir(parents=True)
    for j, frame in enumerate(frames):
      cv2.imwrite(str(frames_dir / f'{j + 1}.jpg'), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
  for caption in ('no_caption', 'with_caption'):
    for k in range(1, 6):
      folder = out / 'MAFW' / 'Train & Test Set' / 'single' / caption / f'set_{k}'
      folder.mkdir(parents=True)
      for kind in ('train', 'test'):
        rows = [f'{clip}.mp4 {label}' + ('\ta caption' if caption == 'with_caption' else '')
                for clip, (fold, label, _n, _s) in MAFW_CLIPS.items()
                if fold and (fold == k) == (kind == 'test')]
        if caption == 'no_caption' and kind == 'test' and k == 4:
          rows.append('00904.mp4 joy')  # An unknown class: a bad line.
        (folder / f'{kind}.txt').write_text('\n'.join(rows) + '\n')


DATASETS: dict[str, Callable[[pathlib.Path], None]] = {
    'enterface05': make_enterface05,
    'rml': make_rml,
    'afew': make_afew,
    'mafw': make_mafw,
}


def dummy_data_dir(name: str) -> pathlib.Path:
  return REPO / 'tfds_builders' / name / 'dummy_data'


def generate(name: str, out: pathlib.Path | None = None) -> pathlib.Path:
  """(Re)writes one dataset's dummy data into `out` (default: the builder's ``dummy_data/``)."""
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; expected one of {sorted(DATASETS)}')
  out = dummy_data_dir(name) if out is None else pathlib.Path(out)
  if out.exists():
    shutil.rmtree(out)
  out.mkdir(parents=True)
  DATASETS[name](out)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('names', nargs='*', help=f'datasets (default: all of {sorted(DATASETS)})')
  parser.add_argument('--out', type=pathlib.Path, help='output folder (only with one dataset)')
  args = parser.parse_args()
  names = args.names or sorted(DATASETS)
  if args.out is not None and len(names) != 1:
    parser.error('--out needs exactly one dataset name')
  for name in names:
    out = generate(name, args.out)
    files = [p for p in out.rglob('*') if p.is_file()]
    print(f'{name}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.0f} KiB in {out}')


if __name__ == '__main__':
  main()
