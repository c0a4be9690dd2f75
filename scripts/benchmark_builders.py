"""Build throughput of the dataset builders per CPU core, and what a full build takes on an N-core host.

Usage (replicas at real frame sizes from ``scripts/make_dummy_data.py <name>_benchmark``)::

  python scripts/make_dummy_data.py dfew_benchmark --out /tmp/bench/dfew
  python scripts/benchmark_builders.py dfew/clip_224x224=/tmp/bench/dfew [ferv39k/default=/tmp/bench/ferv39k ...]

For each ``builder/config=manual_dir`` it measures, in one process and in CPU seconds (so the figures do
not depend on other load on the machine):

* the per-sequence work that the worker processes share (reading, face detection, cropping, encoding:
  ``sequence_builder.process_sequence`` over every sequence);
* the serial part that the main process does whatever the number of workers: serialising each example
  (``features.serialize_example``; ArrayRecord writing and TFDS's shuffle come on top, not measured).

The estimate for a full dataset on ``--cores`` cores: frames x max(worker part / cores, serial part), i.e.
the workers and the writer overlap and the slower of the two sets the pace.
"""

import argparse
import os
import tempfile
import time

# Frames a full build processes (kept frames): DFEW all frames ~0.9 M and 11,697 x 16; FERV39k 38,935
# clips x 28 (the median length); MAFW 9,172 clips x at most 64 kept frames; RAF-DB 15,339 images.
FULL_FRAMES = {'dfew/clip_224x224': 900_000, 'dfew/clip_224x224_16f': 11_697 * 16,
               'ferv39k/default': 38_935 * 28, 'mafw/frames': 9_172 * 64, 'mafw/clips': 9_172 * 64,
               'raf_db/aligned': 15_339, 'raf_db/original': 15_339}


def measure(spec: str, manual_dir: str, cores: int) -> dict:
  os.environ['FERJAX_NUM_WORKERS'] = '1'
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  from tfds_builders import sequence_builder  # pylint: disable=g-import-not-at-top
  name, config = spec.split('/')
  cls = sequence_builder.builder_class(name, config)
  with tempfile.TemporaryDirectory() as data_dir:
    builder = cls(data_dir=data_dir, config=config, file_format='array_record')
    builder._found_skipped = []  # pylint: disable=protected-access
    sources = builder._find_sources(Path(manual_dir))  # pylint: disable=protected-access
    options = builder._crop_options()  # pylint: disable=protected-access
    start = time.process_time()
    examples = [r.example for r in (sequence_builder.process_sequence(s, options) for s in sources)
                if r.example is not None]
    worker = time.process_time() - start
    start = time.process_time()
    for example in examples:
      builder.info.features.serialize_example(example)
    serial = time.process_time() - start
  frames = sum(int(e['num_frames']) for e in examples)
  full = FULL_FRAMES.get(spec, 0)
  hours = full * max(worker / cores, serial) / frames / 3600
  return {'spec': spec, 'sequences': len(sources), 'frames': frames,
          'worker_fps_per_core': frames / worker, 'serial_fps': frames / max(serial, 1e-9),
          'full_frames': full, 'full_hours': hours}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('specs', nargs='+', help='builder/config=manual_dir')
  parser.add_argument('--cores', type=int, default=16, help='cores of the host for the estimate')
  args = parser.parse_args()
  print(f'| builder/config | replica | worker part, frames/s per core | serial part, frames/s | '
        f'full build on {args.cores} cores |')
  print('| --- | --- | ---: | ---: | ---: |')
  for item in args.specs:
    spec, _, manual_dir = item.partition('=')
    r = measure(spec, manual_dir, args.cores)
    print(f'| `{r["spec"]}` | {r["sequences"]} sequences, {r["frames"]} frames | '
          f'{r["worker_fps_per_core"]:.0f} | {r["serial_fps"]:.0f} | '
          f'{r["full_hours"] * 60:.0f} min ({r["full_frames"]:,} frames) |', flush=True)


if __name__ == '__main__':
  main()
