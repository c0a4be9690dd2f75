"""Writes the `dummy_data/` of the image builders (CK+, Oulu-CASIA, FER2013, RAF-DB, DFEW, FERV39k) in each dataset's real layout.

Usage::

  python scripts/make_dummy_data.py                  # every builder's dummy_data/
  python scripts/make_dummy_data.py ck_plus_benchmark --out /tmp/ck_bench   # throughput layout
  python scripts/make_dummy_data.py dfew_benchmark --out /tmp/dfew_bench     # (also ferv39k_, mafw_, raf_db_)
  python scripts/make_dummy_data.py ck_plus          # one
  python scripts/make_dummy_data.py ck_plus --out /tmp/ck   # somewhere else

One function per dataset, registered in ``DATASETS`` (name -> function(out_dir)); the video datasets have
theirs in ``scripts/make_dummy_data_videos.py``. The folder structure and irregularities follow
/work/shared/datasets.md; no real dataset content is used. Frames are small drawings of a cartoon face that
OpenCV's default frontal-face Haar cascade detects (checked: down to 64x48 pixels), so the builders run their
real detection on this data. Output is deterministic: rerunning reproduces the same files.
"""

from collections.abc import Callable
import argparse
from pathlib import Path
import shutil

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent

DATASETS: dict[str, Callable[[Path], None]] = {}


def register(name: str):
  """Adds a dummy-data function to ``DATASETS``."""
  def wrap(fn):
    DATASETS[name] = fn
    return fn
  return wrap


# ----------------------------------------------------------------------------------------------------------
# Drawing.


def face_geometry(width: int, height: int, shift: tuple[float, float] = (0, 0),
                  scale: float = 1.0) -> tuple[int, int, int]:
  """Centre and "radius" of the cartoon face: about 38 % of the height, shifted by a fraction of it."""
  s = int(round(0.38 * height * scale))
  return int(width / 2 + shift[0] * height), int(height / 2 + shift[1] * height), s


def draw_face(width: int, height: int, *, t: float = 0.0, shift: tuple[float, float] = (0, 0),
              scale: float = 1.0, background: tuple[int, int, int] = (90, 90, 90),
              skin: tuple[int, int, int] = (205, 195, 185)) -> np.ndarray:
  """An RGB uint8 frame with a cartoon face; ``t`` in [0, 1] opens the mouth (neutral -> peak)."""
  cx, cy, s = face_geometry(width, height, shift, scale)
  img = np.empty((height, width, 3), np.uint8)
  img[:] = background
  lw = max(1, s // 12)
  cv2.ellipse(img, (cx, cy), (int(s * 0.8), s), 0, 0, 360, skin, -1)
  for side in (-1, 1):  # Eyes and brows: dark bars above a light cheek band is what Haar keys on.
    cv2.ellipse(img, (cx + side * int(s * 0.35), cy - int(s * 0.25)),
                (max(1, int(s * 0.16)), max(1, int(s * 0.08))), 0, 0, 360, (40, 40, 40), -1)
    cv2.line(img, (cx + side * int(s * 0.2), cy - int(s * (0.45 + 0.04 * t))),
             (cx + side * int(s * 0.55), cy - int(s * (0.45 + 0.04 * t))), (60, 60, 60), lw)
  cv2.line(img, (cx, cy - int(s * 0.15)), (cx, cy + int(s * 0.2)), (170, 165, 160), max(1, s // 10))
  cv2.ellipse(img, (cx, cy + int(s * 0.45)), (max(2, int(s * 0.3)), max(1, int(s * (0.06 + 0.04 * t)))),
              0, 0, 360, (60, 40, 40), -1)
  return cv2.GaussianBlur(img, (3, 3), 0)


def face_landmarks(width: int, height: int, shift: tuple[float, float] = (0, 0),
                   scale: float = 1.0) -> np.ndarray:
  """68 (x, y) points in the iBUG order's rough places on the cartoon face (jaw, brows, nose, eyes, mouth)."""
  cx, cy, s = face_geometry(width, height, shift, scale)
  a = np.linspace(np.pi * 0.05, np.pi * 0.95, 17)
  jaw = np.stack([cx - 0.8 * s * np.cos(a), cy + s * np.sin(a) * 0.95], 1)
  brows = np.concatenate([np.stack([cx + side * np.linspace(0.55, 0.2, 5) * s,
                                    np.full(5, cy - 0.45 * s)], 1) for side in (-1, 1)])
  nose = np.stack([np.full(9, cx), np.linspace(cy - 0.15 * s, cy + 0.2 * s, 9)], 1)
  eyes = np.concatenate([np.stack([cx + side * 0.35 * s + 0.16 * s * np.cos(b),
                                   cy - 0.25 * s + 0.08 * s * np.sin(b)], 1)
                         for side in (-1, 1) for b in [np.linspace(0, 2 * np.pi, 6, endpoint=False)]])
  m = np.linspace(0, 2 * np.pi, 20, endpoint=False)
  mouth = np.stack([cx + 0.3 * s * np.cos(m), cy + 0.45 * s + 0.1 * s * np.sin(m)], 1)
  return np.concatenate([jaw, brows, nose, eyes, mouth]).astype(np.float32)


def write_image(path: Path, rgb: np.ndarray, *, grey: bool = False, quality: int = 80) -> None:
  """PNG or JPEG (by suffix), grey or colour, written deterministically with OpenCV."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if grey else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
  params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1] if path.suffix.lower() in ('.jpg', '.jpeg') else [
      cv2.IMWRITE_PNG_COMPRESSION, 9]
  if not cv2.imwrite(str(path), image, params):
    raise OSError(f'OpenCV could not write {path}')


def write_ds_store(folder: Path) -> None:
  """A macOS ``.DS_Store`` (bytes that decode as nothing), as real copies contain."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1' + bytes(24))


# ----------------------------------------------------------------------------------------------------------
# CK+.

# (subject, sequence, emotion code 1..7 or None for unlabelled, frames, options). Labelled subjects: 13,
# so the sorted-subject rule (index mod 10) puts two subjects in folds 0-2 and one in the others.
CK_SEQUENCES = [
    ('S005', '001', 3, 4, {}),
    ('S005', '002', None, 3, {}),                            # Unlabelled: no Emotion folder at all.
    ('S010', '002', 1, 4, {'colour': True}),
    ('S010', '004', 7, 3, {'landmarks': True}),
    ('S011', '001', 5, 4, {'rows': 49}),                     # 490-row analogue (scaled 64x49).
    ('S022', '003', 2, 3, {'landmarks': True}),
    ('S022', '005', None, 3, {'empty_emotion': True}),       # Unlabelled: empty Emotion folder.
    ('S026', '002', 4, 4, {'full_size': 490}),               # Real size 640x490 (grey).
    ('S032', '004', 6, 3, {'landmarks': True, 'colour': True}),
    ('S037', '003', 1, 4, {'full_size': 480, 'colour': True}),  # Real size 640x480, colour.
    ('S046', '001', 7, 3, {}),
    ('S050', '004', 5, 4, {'landmarks': True}),
    ('S055', '001', 3, 3, {'corrupt': True}),                # Undecodable frame: skipped, listed.
    ('S055', '002', 2, 3, {}),
    ('S100', '001', 6, 4, {'rows': 49}),
    ('S506', '002', 4, 3, {'landmarks': True}),
    ('S895', '001', None, 3, {'no_emotion_file': True}),     # Unlabelled subject (only unlabelled seqs).
    ('S999', '001', 7, 4, {}),
]


@register('ck_plus')
def make_ck_plus(out: Path) -> None:
  """CK+ in a nested layout: ``extended-cohn-kanade-images/cohn-kanade-images/``, ``Emotion_labels/``
  holding the ``S***`` folders directly, ``Landmarks/Landmarks/`` (some sequences only), ``FACS/`` and
  ``.DS_Store`` files; grey and colour PNGs, 48/49-row (scaled) and 480/490-row (real-size) frames.

  Expected result: 15 labelled sequences of 13 subjects, 14 built (S055_001 is skipped: corrupt PNG);
  3 unlabelled sequences (S005_002: no Emotion folder, S022_005: empty folder, S895_001: only a
  .DS_Store). Examples per fold: 2, 3, 2, 1, 1, 1, 1, 1, 1, 1.
  """
  images = out / 'extended-cohn-kanade-images' / 'cohn-kanade-images'
  emotions = out / 'Emotion_labels'
  landmarks = out / 'Landmarks' / 'Landmarks'
  facs = out / 'FACS'
  write_ds_store(out)
  write_ds_store(images)
  for k, (subject, seq, emotion, n, opt) in enumerate(CK_SEQUENCES):
    width, height = (640, opt['full_size']) if 'full_size' in opt else (64, opt.get('rows', 48))
    shift = (0.04 * ((k % 3) - 1), 0.02 * ((k % 2) * 2 - 1))
    folder = images / subject / seq
    for i in range(n):
      frame = draw_face(width, height, t=i / max(n - 1, 1), shift=shift,
                        background=(60 + 7 * k % 40, 80, 90))
      path = folder / f'{subject}_{seq}_{i + 1:08d}.png'
      write_image(path, frame, grey=not opt.get('colour', False))
      if opt.get('landmarks'):
        points = face_landmarks(width, height, shift)
        lpath = landmarks / subject / seq / f'{subject}_{seq}_{i + 1:08d}_landmarks.txt'
        lpath.parent.mkdir(parents=True, exist_ok=True)
        lpath.write_text(''.join(f'   {x:.7e}   {y:.7e}\n' for x, y in points))
    if opt.get('corrupt'):
      (folder / f'{subject}_{seq}_{n:08d}.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(40))
    if k % 4 == 0:
      write_ds_store(folder)
    last = f'{subject}_{seq}_{n:08d}'
    if emotion is not None:
      (emotions / subject / seq).mkdir(parents=True, exist_ok=True)
      (emotions / subject / seq / f'{last}_emotion.txt').write_text(f'   {emotion:.7e}\n')
      if k % 5 == 0:
        write_ds_store(emotions / subject / seq)
    elif opt.get('empty_emotion'):
      (emotions / subject / seq).mkdir(parents=True, exist_ok=True)
    elif opt.get('no_emotion_file'):
      write_ds_store(emotions / subject / seq)  # Folder with only a .DS_Store: still unlabelled.
    facs_file = facs / subject / seq / f'{last}_facs.txt'
    facs_file.parent.mkdir(parents=True, exist_ok=True)
    facs_file.write_text('   1.0000000e+00   0.0000000e+00\n')


@register('ck_plus_benchmark')
def make_ck_plus_benchmark(out: Path, num_subjects: int = 20, sequences_per_subject: int = 3,
                           num_frames: int = 18) -> None:
  """A CK+-sized layout for measuring build throughput (not committed): real-size 640x490 grey PNGs,
  ``num_frames`` per sequence (CK+ averages ~18), all labelled, no landmarks (so faces are detected).
  Defaults: 60 sequences, 1080 frames."""
  images = out / 'cohn-kanade-images'
  emotions = out / 'Emotion'
  for s in range(num_subjects):
    subject = f'S{100 + s:03d}'
    for q in range(sequences_per_subject):
      seq = f'{q + 1:03d}'
      shift = (0.05 * ((s % 3) - 1), 0.02 * ((q % 2) * 2 - 1))
      for i in range(num_frames):
        frame = draw_face(640, 490, t=i / (num_frames - 1), shift=shift, background=(70, 80, 90))
        # Sensor-like noise so PNG decoding costs about what it costs on camera images.
        noise = np.random.default_rng(s * 1000 + q * 100 + i).integers(-12, 13, frame.shape)
        frame = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        write_image(images / subject / seq / f'{subject}_{seq}_{i + 1:08d}.png', frame, grey=True)
      label = emotions / subject / seq / f'{subject}_{seq}_{num_frames:08d}_emotion.txt'
      label.parent.mkdir(parents=True, exist_ok=True)
      label.write_text(f'   {1 + (s + q) % 7:.7e}\n')


# ----------------------------------------------------------------------------------------------------------
# Oulu-CASIA.

OULU_EMOTIONS = ('Anger', 'Disgust', 'Fear', 'Happiness', 'Sadness', 'Surprise')
OULU_SUBJECTS = [f'P{i:03d}' for i in range(1, 12)]


@register('oulu_casia')
def make_oulu_casia(out: Path) -> None:
  """Oulu-CASIA nested as ``B_OriginalImg/OriginalImg/{VL,NI}/Strong/P***/<Emotion>/NNN.jpeg`` (64x48
  instead of 320x240) plus the official cropped set for VL only, under ``PreProcess_Img/VL_Acropped/Strong``
  (32x32 face crops), with ``.DS_Store`` files. 11 subjects x 6 emotions = 66 sequences per modality (2-3
  frames each); folds of the sorted-subject rule [i::10]: fold 0 holds 2 subjects (12 sequences), the
  others 1 (6 sequences).
  NI has no cropped set, so its builds detect faces in the original images.
  """
  original = out / 'B_OriginalImg' / 'OriginalImg'
  cropped = out / 'PreProcess_Img' / 'VL_Acropped' / 'Strong'
  write_ds_store(out)
  for s, subject in enumerate(OULU_SUBJECTS):
    for e, emotion in enumerate(OULU_EMOTIONS):
      n = 2 + (s + e) % 2  # Frame counts vary between sequences.
      shift = (0.05 * ((s % 3) - 1), 0.03 * ((e % 2) * 2 - 1))
      for modality in ('VL', 'NI'):
        folder = original / modality / 'Strong' / subject / emotion
        for i in range(n):
          t = i / max(n - 1, 1)
          if modality == 'VL':
            frame = draw_face(64, 48, t=t, shift=shift, background=(50 + 5 * s, 75, 85 + 4 * e))
          else:  # Near-infrared: grey-looking three-channel JPEGs.
            frame = draw_face(64, 48, t=t, shift=shift, background=(70, 70, 70),
                              skin=(190, 190, 190))
          write_image(folder / f'{i:03d}.jpeg', frame)
          if modality == 'VL':
            crop = draw_face(40, 40, t=t, background=(120, 110, 100))[4:36, 4:36]
            write_image(cropped / subject / emotion / f'{i:03d}.jpeg', crop)
      if (s + e) % 7 == 0:
        write_ds_store(original / 'VL' / 'Strong' / subject / emotion)
        write_ds_store(cropped / subject / emotion)


# ----------------------------------------------------------------------------------------------------------
# FER2013: both published forms (csv/ and folders/), no real content.

# One data row of fer2013.csv per entry: (emotion code, Usage, pixel problem or None, FER+ votes in
# fer2013new.csv's column order: neutral happiness surprise sadness anger disgust fear contempt unknown NF).
FER_ROWS = [
    (0, 'Training', None, (0, 0, 0, 0, 10, 0, 0, 0, 0, 0)),      # 0 anger
    (1, 'Training', None, (4, 0, 0, 0, 0, 0, 0, 6, 0, 0)),       # 1 FER+: contempt (6 of 10)
    (3, 'Training', None, (0, 5, 4, 0, 0, 0, 1, 0, 0, 0)),       # 2 FER+: happiness once fear's 1 vote goes
    (4, 'Training', None, (5, 0, 0, 5, 0, 0, 0, 0, 0, 0)),       # 3 FER+: tie -> excluded
    (6, 'Training', None, (4, 0, 0, 0, 0, 0, 0, 0, 6, 0)),       # 4 FER+: unknown -> excluded
    (5, 'Training', 'short', (0, 0, 10, 0, 0, 0, 0, 0, 0, 0)),   # 5 2303 values: skipped
    (2, 'Training', None, (0, 0, 0, 0, 0, 0, 0, 0, 0, 10)),      # 6 FER+: not a face -> excluded
    (2, 'Training', None, (0, 0, 8, 0, 0, 0, 2, 0, 0, 0)),       # 7 FER+: surprise
    (3, 'Training', None, (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)),
    (4, 'Training', None, (1, 0, 0, 9, 0, 0, 0, 0, 0, 0)),
    (5, 'Training', 'range', (0, 0, 10, 0, 0, 0, 0, 0, 0, 0)),   # 10 a value of 256: skipped
    (6, 'Training', None, (10, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    (0, 'Training', None, (0, 0, 0, 0, 7, 3, 0, 0, 0, 0)),
    (1, 'Training', None, (0, 0, 0, 0, 2, 8, 0, 0, 0, 0)),
    (0, 'PublicTest', None, (0, 0, 0, 0, 9, 0, 0, 0, 1, 0)),
    (1, 'PublicTest', None, (0, 0, 0, 0, 0, 10, 0, 0, 0, 0)),
    (2, 'PublicTest', None, (0, 0, 0, 0, 0, 0, 10, 0, 0, 0)),
    (7, 'PublicTest', None, (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)),    # 17 emotion 7: skipped
    (3, 'PublicTest', None, (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)),
    (4, 'PublicTest', None, (0, 0, 0, 10, 0, 0, 0, 0, 0, 0)),
    (6, 'PublicTest', None, (10, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    (0, 'PrivateTest', None, (0, 0, 0, 0, 10, 0, 0, 0, 0, 0)),
    (1, 'PrivateTest', None, (0, 0, 0, 0, 3, 7, 0, 0, 0, 0)),
    (2, 'PrivateTest', None, (0, 0, 0, 0, 0, 0, 10, 0, 0, 0)),
    (3, 'PrivateTest', None, (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)),
    (4, 'PrivateTest', None, (0, 0, 0, 10, 0, 0, 0, 0, 0, 0)),
    (5, 'PrivateTest', None, (0, 0, 10, 0, 0, 0, 0, 0, 0, 0)),
    (6, 'PrivateTest', None, (10, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    (4, 'PrivateTest', 'truncated', (0, 0, 0, 10, 0, 0, 0, 0, 0, 0)),  # 28 cut off at the end: skipped
]
FER_FOLDERS = {  # split -> class folder -> file names; 'big.jpg' is 64x64, 'broken.jpg' is not an image.
    'train': {'angry': ['a1.jpg', 'a2.jpg', 'a3.jpg'], 'disgust': ['d1.jpg', 'd2.jpg'],
              'fear': ['f1.jpg', 'f2.jpg'], 'happy': ['h1.jpg', 'h2.jpg', 'h3.png', 'h4.jpg'],
              'neutral': ['n1.jpg', 'n2.jpg'], 'sad': ['s1.jpg', 's2.jpg'],
              'surprise': ['u1.jpg', 'u2.jpg', 'big.jpg', 'broken.jpg']},
    'test': {'angry': ['PublicTest_1.jpg'], 'disgust': ['PrivateTest_2.jpg'], 'fear': ['t3.jpg'],
             'happy': ['colour.jpg', 't5.jpg'], 'neutral': ['t6.jpg'], 'sad': ['t7.jpg'],
             'surprise': ['t8.jpg']},
}


def fer_pixels(index: int) -> np.ndarray:
  """A deterministic 48x48 grey face, different for every index."""
  rng = np.random.default_rng([2013, index])
  grey = cv2.cvtColor(draw_face(48, 48, t=(index % 5) / 4), cv2.COLOR_RGB2GRAY).astype(np.int64)
  return np.clip(grey + rng.integers(-20, 21, grey.shape), 0, 255).astype(np.uint8)


@register('fer2013')
def make_fer2013(out: Path) -> None:
  """csv/fer2013/{fer2013.csv, fer2013new.csv} (29 rows, 4 unusable) and folders/FER2013/{train,test}/."""
  lines, ferplus = ['emotion,pixels,Usage'], [
      'Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF']
  for i, (code, usage, problem, votes) in enumerate(FER_ROWS):
    values = [str(v) for v in fer_pixels(i).ravel()]
    if problem == 'short':
      values = values[:-1]
    elif problem == 'range':
      values[100] = '256'
    pixels = ' '.join(values)
    lines.append(f'{code},{pixels[:200]}' if problem == 'truncated' else f'{code},{pixels},{usage}')
    name = '' if votes[-1] == 10 else f'fer{i:07d}.png'  # FER+ leaves non-faces unnamed.
    ferplus.append(','.join([usage, name] + [str(v) for v in votes]))
  folder = out / 'csv' / 'fer2013'
  folder.mkdir(parents=True)
  (folder / 'fer2013.csv').write_text('\n'.join(lines))  # No newline after the truncated row.
  (folder / 'fer2013new.csv').write_text('\n'.join(ferplus) + '\n')
  index = 100
  for split, classes in FER_FOLDERS.items():
    for class_name, names in classes.items():
      for name in names:
        path = out / 'folders' / 'FER2013' / split / class_name / name
        index += 1
        grey = fer_pixels(index)
        if name == 'broken.jpg':
          path.parent.mkdir(parents=True, exist_ok=True)
          path.write_bytes(b'not an image')
        elif name == 'big.jpg':
          write_image(path, cv2.resize(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), (64, 64)), grey=True)
        elif name == 'colour.jpg':
          write_image(path, draw_face(48, 48, background=(40, 90, 160)))
        else:
          write_image(path, cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), grey=True)
  write_ds_store(out / 'folders' / 'FER2013' / 'train' / 'happy')


# ----------------------------------------------------------------------------------------------------------
# RAF-DB (basic emotion set): label file, aligned and original images.

# (file name in the label file, label text, what is on disk). Labels 1-7 = surprise, fear, disgust,
# happiness, sadness, anger, neutral.
RAF_LINES = [(f'train_{i + 1:05d}.jpg', str(i % 7 + 1), 'ok') for i in range(14)] + [
    ('train_00015.jpg', '8', 'ok'),          # Label out of range: skipped (line 15).
    ('train_00016.jpg', '3', 'absent'),      # Listed, no image: skipped (line 16).
] + [(f'test_{i + 1:04d}.jpg', str(i + 1), 'ok') for i in range(7)] + [
    ('test_0008.jpg', '4', 'broken'),        # Not an image: skipped when read (line 24).
]


@register('raf_db')
def make_raf_db(out: Path) -> None:
  """``basic/EmoLabel/list_patition_label.txt`` (24 lines, 3 unusable), ``basic/Image/aligned/`` (100x100)
  and ``basic/Image/original/`` (96x72, a face the Haar cascade finds), an unlisted image and a .DS_Store.

  Expected result: train 14 lines (validation_every=2: one per class to validation), test 7; skipped: line
  15 (label 8), line 16 (image absent), line 24 (unreadable image).
  """
  root = out / 'basic'
  lines = []
  for k, (name, label, state) in enumerate(RAF_LINES):
    lines.append(f'{name} {label}')
    stem = name[:-4]
    aligned, original = root / 'Image' / 'aligned' / f'{stem}_aligned.jpg', root / 'Image' / 'original' / name
    if state == 'absent':
      continue
    if state == 'broken':
      for path in (aligned, original):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'\xff\xd8 not really a JPEG')
      continue
    shift = (0.05 * ((k % 3) - 1), 0.03 * ((k % 2) * 2 - 1))
    write_image(aligned, draw_face(100, 100, t=(k % 5) / 4, background=(60 + 9 * (k % 7), 80, 90)))
    write_image(original, draw_face(96, 72, t=(k % 5) / 4, shift=shift, background=(70, 80 + 5 * (k % 5), 90)))
  write_image(root / 'Image' / 'aligned' / 'train_00099_aligned.jpg', draw_face(100, 100))  # Unlisted.
  write_image(root / 'Image' / 'original' / 'train_00099.jpg', draw_face(96, 72))
  write_ds_store(root / 'Image' / 'aligned')
  (root / 'EmoLabel').mkdir(parents=True)
  (root / 'EmoLabel' / 'list_patition_label.txt').write_text('\n'.join(lines) + '\n\n')


# ----------------------------------------------------------------------------------------------------------
# DFEW: Clip/clip_224x224{,_16f}/<id>/<id>_<frame>.jpg and EmoLabel_DataSplit/{train,test}(single-labeled).

# clip id -> (test fold, label code 1-7, frames in clip_224x224, what is special). Frames are 32x32 (the
# test config's size, so they are stored as they are) unless noted.
DFEW_CLIPS = {
    '00001': (1, 1, 4, ''), '00002': (1, 2, 3, ''), '00003': (2, 3, 5, ''), '00004': (2, 4, 3, ''),
    '00005': (3, 5, 4, ''), '00006': (3, 6, 3, ''),
    '00099': (3, 7, 0, 'absent'),       # Listed in test set_3, no frame folder.
    '00007': (4, 7, 4, ''),
    '00008': (4, 1, 3, 'truncated'),    # A frame cut off: the clip is skipped.
    '00009': (5, 2, 3, ''),
    '00010': (5, 4, 3, 'resize'),       # 40x40 frames: centre-cropped, resized, re-encoded.
    '00011': (5, 5, 4, 'gap'),          # Frame 3 missing: kept, gap recorded.
    '00012': (0, 3, 3, 'unlisted'),     # A multi-labelled clip: in no split file.
}


def _dfew_frames(folder: Path, clip: str, n: int, special: str, k: int, size: int = 32,
                 noise: bool = False) -> None:
  numbers = [1, 2, 4, 5] if special == 'gap' else list(range(1, n + 1))
  side = 40 if special == 'resize' else size
  for j, number in enumerate(numbers):
    frame = draw_face(side, side, t=j / max(len(numbers) - 1, 1), background=(50 + 13 * (k % 9), 80, 90))
    if noise:  # Camera-like noise, so JPEG sizes and decoding costs are realistic.
      grain = np.random.default_rng([k, j]).integers(-10, 11, frame.shape)
      frame = np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    write_image(folder / f'{clip}_{number:05d}.jpg', frame, quality=90)
  if special == 'truncated':
    path = folder / f'{clip}_{numbers[-1]:05d}.jpg'
    path.write_bytes(path.read_bytes()[:200])


def _dfew_csvs(out: Path, clips: dict, bad_line: bool = True,
               train_drop: tuple[int, str] | None = None) -> None:
  """test set_k = the clips of fold k; train set_k = the other folds (minus ``train_drop``)."""
  for kind in ('train', 'test'):
    folder = out / 'EmoLabel_DataSplit' / f'{kind}(single-labeled)'
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, 6):
      rows = ['video_name,label']
      for clip, (fold, code, *_rest) in clips.items():
        dropped = kind == 'train' and train_drop == (k, clip)
        if fold and (fold == k) == (kind == 'test') and not dropped:
          rows.append(f'{int(clip)},{code}')
      if kind == 'test' and k == 2 and bad_line:
        rows.append('abc,3')  # An unreadable line: skipped and reported with its line number.
      (folder / f'set_{k}.csv').write_text('\n'.join(rows) + '\n')


@register('dfew')
def make_dfew(out: Path) -> None:
  """DFEW's released layout with both frame sets, 13 clips (see ``DFEW_CLIPS``), 32x32 frames; the train
  CSV of set 5 lacks clip 1 (so the fold check reports one difference), test set_2.csv has an unreadable
  line (line 4).

  Expected result (both configs): fold_1 2, fold_2 2, fold_3 2, fold_4 1, fold_5 3 clips; skipped 00099
  (absent) and 00008 (truncated frame); 00012 present but unlisted; 00011 has a gap (frame 3).
  """
  for k, (clip, (_fold, _code, n, special)) in enumerate(DFEW_CLIPS.items()):
    if special == 'absent':
      continue
    _dfew_frames(out / 'Clip' / 'clip_224x224' / clip, clip, n, special, k)
    _dfew_frames(out / 'Clip' / 'clip_224x224_16f' / clip, clip, 16, '' if special == 'gap' else special, k)
  write_ds_store(out / 'Clip' / 'clip_224x224' / '00001')
  _dfew_csvs(out, DFEW_CLIPS, train_drop=(5, '00001'))


@register('dfew_benchmark')
def make_dfew_benchmark(out: Path, num_clips: int = 40, num_frames: int = 71) -> None:
  """A DFEW replica at real frame size for build throughput (not committed): ``num_clips`` clips of
  ``num_frames`` 224x224 JPEG frames (the median clip length of the all-frames release), 8 per fold."""
  clips = {f'{i + 1:05d}': (i % 5 + 1, i % 7 + 1, num_frames, '') for i in range(num_clips)}
  for k, clip in enumerate(clips):
    _dfew_frames(out / 'Clip' / 'clip_224x224' / clip, clip, num_frames, '', k, size=224, noise=True)
  _dfew_csvs(out, clips, bad_line=False)


# ----------------------------------------------------------------------------------------------------------
# FERV39k: 2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/*.jpg and 4_setups/All_scenes/{train,test}_All.csv.

FERV_EMOTIONS = ('Angry', 'Disgust', 'Fear', 'Happy', 'Neutral', 'Sad', 'Surprise')
# (split file, scene, emotion, id, what is special): two scenes, each emotion twice in train per scene,
# once in test for the first scene.
FERV_CLIPS = (
    [('train', scene, e, f'{100 * s + 2 * i + j + 1:04d}', '') for s, scene in enumerate(('Action', 'Crime'))
     for i, e in enumerate(FERV_EMOTIONS) for j in range(2)]
    + [('test', 'Action', e, f'{500 + i:04d}', '') for i, e in enumerate(FERV_EMOTIONS)]
    + [('test', 'Crime', 'Happy', '0600', 'absent'),      # Listed, no folder: skipped.
       ('test', 'Crime', 'Sad', '0601', 'truncated'),     # A frame cut off: skipped.
       ('train', 'Crime', 'Fear', '0602', 'resize'),      # 40x40 crops: resized.
       ('none', 'Crime', 'Angry', '0603', 'unlisted')])   # In no split file.


@register('ferv39k')
def make_ferv39k(out: Path) -> None:
  """FERV39k's released layout: 2 scenes, 36 clip folders of 3 32x32 frames (see ``FERV_CLIPS``) and the
  two split files, with a line whose label disagrees with its path (train_All.csv line 30) and one with an
  unknown emotion (test_All.csv line 10).

  Expected result (validation_every=2): train 15, validation 14, test 7 clips; skipped 0600 (absent), 0601
  (truncated frame); 0603 present but unlisted.
  """
  lines = {'train': [], 'test': []}
  for k, (split, scene, emotion, clip, special) in enumerate(FERV_CLIPS):
    if split in lines:
      lines[split].append(f'{scene}/{emotion}/{clip} {emotion}')
    if special == 'absent':
      continue
    folder = out / '2_ClipsforFaceCrop' / scene / emotion / clip
    side = 40 if special == 'resize' else 32
    for j in range(3):
      write_image(folder / f'{j + 1:03d}.jpg', draw_face(side, side, t=j / 2, background=(40 + 11 * (k % 13), 80, 90)))
    if special == 'truncated':
      (folder / '003.jpg').write_bytes((folder / '003.jpg').read_bytes()[:150])
  lines['train'].insert(29, 'Crime/Happy/0013 Sad')    # Label and emotion folder disagree.
  lines['test'].insert(10, 'Crime/Happy/0014 Joyful')  # Not an emotion.
  setups = out / '4_setups' / 'All_scenes'
  setups.mkdir(parents=True)
  for split, rows in lines.items():
    (setups / f'{split}_All.csv').write_text('\n'.join(rows) + '\n')
  write_ds_store(out / '2_ClipsforFaceCrop' / 'Action')


# ----------------------------------------------------------------------------------------------------------
# Replicas at real frame sizes, for build throughput (docs/benchmarks.md; not committed).


def _noisy_face(width: int, height: int, seed: list[int], **kwargs) -> np.ndarray:
  """A drawn face with camera-like noise, so JPEG sizes and decoding costs are realistic."""
  frame = draw_face(width, height, **kwargs)
  grain = np.random.default_rng(seed).integers(-10, 11, frame.shape)
  return np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)


@register('ferv39k_benchmark')
def make_ferv39k_benchmark(out: Path, num_clips: int = 140, num_frames: int = 28) -> None:
  """FERV39k replica: ``num_clips`` clips of ``num_frames`` (the release's median) 224x224 face crops."""
  lines = []
  for k in range(num_clips):
    emotion = FERV_EMOTIONS[k % 7]
    clip = f'Action/{emotion}/{k:04d}'
    for j in range(num_frames):
      write_image(out / '2_ClipsforFaceCrop' / clip / f'{j + 1:03d}.jpg',
                  _noisy_face(224, 224, [k, j], t=j / (num_frames - 1)), quality=90)
    lines.append(f'{clip} {emotion}')
  setups = out / '4_setups' / 'All_scenes'
  setups.mkdir(parents=True)
  (setups / 'train_All.csv').write_text('\n'.join(lines[:num_clips * 4 // 5]) + '\n')
  (setups / 'test_All.csv').write_text('\n'.join(lines[num_clips * 4 // 5:]) + '\n')


@register('mafw_benchmark')
def make_mafw_benchmark(out: Path, num_clips: int = 20, num_frames: int = 64, width: int = 1280,
                        height: int = 720) -> None:
  """MAFW replica: ``num_clips`` frame folders of ``num_frames`` 1280x720 JPEG frames (faces detected)."""
  folder = out / 'Train & Test Set' / 'single' / 'no_caption'
  emotions = ('anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise', 'contempt',
              'anxiety', 'helplessness', 'disappointment')
  rows = {k: [] for k in range(1, 6)}
  for c in range(num_clips):
    clip = f'{c + 1:05d}'
    for j in range(num_frames):
      write_image(out / 'data' / 'frames' / clip / f'{j + 1}.jpg',
                  _noisy_face(width, height, [c, j], t=j / (num_frames - 1), scale=0.8), quality=90)
    rows[c % 5 + 1].append(f'{clip}.mp4 {emotions[c % 11]}')
  for k in range(1, 6):
    (folder / f'set_{k}').mkdir(parents=True)
    (folder / f'set_{k}' / 'test.txt').write_text('\n'.join(rows[k]) + '\n')
    others = [r for f in range(1, 6) if f != k for r in rows[f]]
    (folder / f'set_{k}' / 'train.txt').write_text('\n'.join(others) + '\n')


@register('raf_db_benchmark')
def make_raf_db_benchmark(out: Path, num_images: int = 1000) -> None:
  """RAF-DB replica: ``num_images`` aligned 100x100 faces and 640x480 originals."""
  lines = []
  for k in range(num_images):
    name = f'train_{k + 1:05d}.jpg' if k % 5 else f'test_{k + 1:04d}.jpg'
    lines.append(f'{name} {k % 7 + 1}')
    write_image(out / 'Image' / 'aligned' / f'{name[:-4]}_aligned.jpg', _noisy_face(100, 100, [k]), quality=90)
    write_image(out / 'Image' / 'original' / name, _noisy_face(640, 480, [k, 1], scale=0.7), quality=90)
  (out / 'EmoLabel').mkdir(parents=True)
  (out / 'EmoLabel' / 'list_patition_label.txt').write_text('\n'.join(lines) + '\n')


def dummy_data_dir(name: str) -> Path:
  """Where a builder's dummy data lives: ``tfds_builders/<name>/dummy_data``."""
  return REPO / 'tfds_builders' / name / 'dummy_data'


def generate(name: str, out: Path | None = None) -> Path:
  """(Re)writes one dataset's dummy data from scratch and returns its folder."""
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; known: {sorted(DATASETS)}')
  out = Path(out) if out is not None else dummy_data_dir(name)
  if out.exists():
    shutil.rmtree(out)
  out.mkdir(parents=True)
  DATASETS[name](out)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('names', nargs='*', help=f'datasets (default: all of {sorted(DATASETS)})')
  parser.add_argument('--out', type=Path, help='output folder (only with one dataset)')
  args = parser.parse_args()
  names = args.names or sorted(n for n in DATASETS if (REPO / 'tfds_builders' / n).is_dir())
  if args.out is not None and len(names) != 1:
    parser.error('--out needs exactly one dataset name')
  for name in names:
    out = generate(name, args.out)
    files = [p for p in out.rglob('*') if p.is_file()]
    print(f'{name}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.0f} KiB in {out}')


if __name__ == '__main__':
  main()
