r"""Compile time and step time of RFSCNN's spatial recursive layer: wavefront vs a per-node lax.scan.

  python scripts/benchmark_wavefront.py                 # the default grid: 7x7 (ResNet-18 at 224 px)
  python scripts/benchmark_wavefront.py --grid 8 --batch 64 --hidden 128 --channels 512

Each variant is a jitted forward + backward (value_and_grad of a scalar) over the four directions:
``wavefront`` (h + w - 1 sequential steps, one anti-diagonal per step; ``unroll=1`` and fully unrolled)
and ``per_node_scan`` (h * w sequential steps). The batch N is frames x clips (16 frames x 4 clips by
default). Compile time is wall time of ``lower().compile()``; step time the median of ``--repeats``
runs after one warm-up. On a shared machine both are inflated; compare the ratios.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from ferjax.models import spatial_recurrent as sr


def _variants():
  return {
      'wavefront (scan over diagonals)': lambda u, w: sr.wavefront(u, w, unroll=1),
      'wavefront (diagonals unrolled)': lambda u, w: sr.wavefront(u, w, unroll=True),
      'per-node lax.scan': sr.per_node_scan,
  }


def measure(fn, u, w_rec, repeats: int) -> tuple[float, float]:
  """(compile seconds, median step seconds) of value_and_grad of sum(fn(u, w)**2)."""
  step = jax.jit(jax.value_and_grad(lambda u, w: jnp.sum(jnp.square(fn(u, w))), argnums=(0, 1)))
  start = time.perf_counter()
  compiled = step.lower(u, w_rec).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(u, w_rec))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(u, w_rec))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--grid', type=int, default=7)
  parser.add_argument('--batch', type=int, default=64, help='N = clips x frames')
  parser.add_argument('--hidden', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args(argv)
  r = len(sr.DIRECTIONS)
  u = jax.random.normal(jax.random.key(0), (r, args.batch, args.grid, args.grid, args.hidden))
  w_rec = jax.random.normal(jax.random.key(1), (r, args.hidden, args.hidden)) / args.hidden
  print(f'{jax.devices()[0].platform}: grid {args.grid}x{args.grid}, N {args.batch}, H {args.hidden}, '
        f'4 directions, forward + backward')
  reference = None
  for name, fn in _variants().items():
    out = jax.jit(fn)(u, w_rec)
    reference = out if reference is None else reference
    err = float(jnp.max(jnp.abs(out - reference)))
    compile_s, step_s = measure(fn, u, w_rec, args.repeats)
    print(f'  {name:<34} compile {compile_s:7.2f} s   step {1e3 * step_s:9.2f} ms   '
          f'max |diff| {err:.1e}')


if __name__ == '__main__':
  main()
