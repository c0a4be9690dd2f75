r"""Writes a demo video of the synthetic dataset's faces: one subject showing several expressions in turn.

  python scripts/synthetic_video.py demo.avi --subject 0 --expressions happiness,surprise,anger
  python scripts/synthetic_video.py frames/ --expressions fear --frames 8   # a folder of PNG frames

An OUTPUT ending in .avi (MJPG) or .mp4 (mp4v) is a video; any other name is a folder (created; it must
not hold files yet) of lossless PNG frames 000.png, 001.png, ..., like a CK+ sequence folder.

Each expression is an onset -> apex sequence of `--frames` frames drawn by the synthetic dataset's face
generator (`tfds_builders/synthetic_expressions/faces.py`); `--gap` black frames (no face) separate them.
Subject 0 is in fold 0, the quickstart's test fold, so a quickstart model never saw this identity.
Used for the README's quickstart and docs/inference.md.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ferjax.data import media  # noqa: E402  pylint: disable=wrong-import-position
from tfds_builders.synthetic_expressions import faces  # noqa: E402  pylint: disable=wrong-import-position
from tfds_builders.synthetic_expressions import synthetic_expressions_dataset_builder as builder  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('output', help='the video file (.avi: MJPG, .mp4: mp4v), or a folder for PNG frames')
  parser.add_argument('--subject', type=int, default=0)
  parser.add_argument('--expressions', default='happiness,surprise,anger')
  parser.add_argument('--frames', type=int, default=24, help='frames per expression')
  parser.add_argument('--gap', type=int, default=6, help='black frames between expressions')
  parser.add_argument('--size', type=int, default=192)
  parser.add_argument('--fps', type=float, default=12.0)
  args = parser.parse_args(argv)
  identity = faces.sample_identity(np.random.default_rng([builder.BASE_SEED, 0, args.subject]))
  frames = []
  for k, expression in enumerate(args.expressions.split(',')):
    if expression not in faces.EXPRESSIONS:
      sys.exit(f'error: --expressions: expected names among {faces.EXPRESSIONS}; found {expression!r}')
    if k:
      frames += [np.zeros((args.size, args.size, 3), np.uint8)] * args.gap
    rng = np.random.default_rng([builder.BASE_SEED, 2, args.subject, k])
    frames += list(faces.render_sequence(identity, expression, args.frames, args.size, rng))
  suffix = os.path.splitext(args.output)[1].lower()
  if suffix in VIDEO_CODECS:
    media.write_video(args.output, frames, fps=args.fps, fourcc=VIDEO_CODECS[suffix])
    print(f'Wrote {args.output}: {len(frames)} frames, {args.size}x{args.size}, {args.fps} fps')
    return
  write_frames(args.output, frames)
  print(f'Wrote {args.output}: {len(frames)} PNG frames, {args.size}x{args.size}')


VIDEO_CODECS = {'.avi': 'MJPG', '.mp4': 'mp4v'}


def write_frames(folder: str, frames) -> None:
  """PNG frames 000.png, 001.png, ... in `folder` (created); refuses a folder that already holds files."""
  import cv2  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  if os.listdir(folder):
    sys.exit(f'error: {folder}: expected an empty or new folder for the frames; found files in it')
  for i, frame in enumerate(frames):
    cv2.imwrite(os.path.join(folder, f'{i:03d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


if __name__ == '__main__':
  main()
