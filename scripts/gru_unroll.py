"""Times the RBG stack (2 RBG blocks: forward + backward) for GRU scan unroll factors 1/2/4/8.

    python scripts/gru_unroll.py                 # quickstart (B 16, T 8, 128 -> 128) and paper sizes
    python scripts/gru_unroll.py --sizes paper --repeats 3

Sizes: 'quickstart' = batch 16, T 8, 128-d frame features, hidden 128; 'paper' = batch 32, T 16,
2048-d features, hidden 560. Each line: compile seconds and the median of `--steps` timed steps, per
unroll; the unroll factors are visited in a rotated order on every repeat (A/B/C/D, then B/C/D/A, ...)
so that load from other processes spreads over all of them.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax.models import res_rbg

SIZES = {'quickstart': (16, 8, 128, 128), 'paper': (32, 16, 2048, 560)}


def _build(size: str, unroll: int):
  batch, frames, features, hidden = SIZES[size]
  blocks = [res_rbg.RBGBlock(features if i == 0 else hidden, hidden, merge='sum', unroll=unroll,
                             rngs=nnx.Rngs(i)) for i in range(2)]
  graphdef, params, rest = nnx.split(nnx.List(blocks), nnx.Param, ...)
  x = jax.random.normal(jax.random.key(0), (batch, frames, features), jnp.float32)

  def loss(params, x):
    stack = nnx.merge(graphdef, params, rest, copy=True)
    for block in stack:
      x = block(x, train=True)
    return jnp.mean(x**2)
  return jax.jit(jax.value_and_grad(loss)), params, x


def _time(size: str, unroll: int, steps: int) -> dict:
  fn, params, x = _build(size, unroll)
  start = time.perf_counter()
  compiled = fn.lower(params, x).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(params, x))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - start)
  return {'size': size, 'unroll': unroll, 'compile_s': round(compile_s, 2),
          'step_ms': round(1000 * statistics.median(times), 2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', nargs='+', default=list(SIZES), choices=list(SIZES))
  parser.add_argument('--unrolls', nargs='+', type=int, default=[1, 2, 4, 8])
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  for size in args.sizes:
    for r in range(args.repeats):
      order = args.unrolls[r % len(args.unrolls):] + args.unrolls[:r % len(args.unrolls)]
      for unroll in order:
        print(json.dumps(_time(size, unroll, args.steps)), flush=True)


if __name__ == '__main__':
  main()
