r"""Speed and memory of the jitted train and eval steps: `python -m ferjax.benchmark --config ...`.

Uses random frames of the config's shape, so no dataset is needed, and reports compile time, steps/s,
sequences/s, frames/s and peak memory (device memory where the backend reports it, else the process's peak
RSS). Numbers in the README come from this command; timed assertions never live in tests.

  python -m ferjax.benchmark --config configs/res_rbg.py:synthetic --steps 20
  python -m ferjax.benchmark --config configs/res_rbg.py --config.input.batch_size=32 --json out.json

`--input` measures the grain input pipeline alone instead (no model): reading, decoding, temporal sampling
and augmentation of the config's training split, in the calling process (one worker's throughput), as
frames/s and sequences/s per worker process. It needs the config's dataset prepared.

  python -m ferjax.benchmark --input --config configs/res_rbg.py:ck_plus --batches 20
"""

import json
import platform
import resource
import sys
import time

from absl import app, flags
from flax import nnx
import jax
from ml_collections import config_flags
import numpy as np

from ferjax import config as config_lib, models, sharding, steps
from ferjax.data import datasets, protocols, spec


def _define_flags() -> None:
  """The CLI's flags, defined only when run as a program: ferjax.train defines --config too, and a
  process (a test) that imports both modules would fail with a duplicate flag."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/<family>.py[:arg]).',
                                  lock_config=True)
  flags.DEFINE_integer('steps', 10, 'Timed steps (after one warm-up step).')
  flags.DEFINE_integer('num_classes', 7, 'Classifier width.')
  flags.DEFINE_bool('input', False, 'Time the input pipeline alone (per worker).')
  flags.DEFINE_integer('batches', 20, '--input: timed batches (after one warm-up).')
  flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')


def _peak_memory_bytes() -> tuple[int, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process peak RSS'


def _time(fn, n: int) -> float:
  start = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start


def run(config, num_steps: int, num_classes: int) -> dict:
  """Benchmarks `config`'s model: compile time and throughput of the train and eval steps."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  batch, t, size = config.input.batch_size, config.dataset.num_frames, config.dataset.image_size
  model = models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=config.seed))
  params = models.count_params(model)
  tx = steps.make_optimizer(config.train, total_steps=1000, warmup_steps=10)
  graphdef, state = steps.init_state(model, tx, config.seed)
  del model
  state_sharding = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  batch_sharding = sharding.batch_sharding(mesh)
  family = models.get_family(config.model.name)
  train_fn = steps.jit_train_step(graphdef, tx, family.losses(config), state_sharding,
                                  batch_sharding, sharding.replicated(mesh))
  eval_fn = steps.jit_eval_step(graphdef, state_sharding, batch_sharding)
  rng = np.random.default_rng(0)
  data = sharding.global_batch(spec.random_batch(config, batch, num_classes, rng), mesh)

  start = time.perf_counter()
  compiled = train_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': compiled(state, data)[0]}  # Warm-up step.

  def train_once():
    holder['state'], metrics = compiled(holder['state'], data)
    return metrics
  train_s = _time(train_once, num_steps)
  jax.block_until_ready(eval_fn(holder['state'], data))
  eval_s = _time(lambda: eval_fn(holder['state'], data), num_steps)
  peak, peak_kind = _peak_memory_bytes()
  device = jax.devices()[0]
  return {
      'config': ', '.join(f'{k}={v}' for k, v in config.model.items()),
      'params_total': params['total'],
      'batch_size': batch, 'num_frames': t, 'image_size': size,
      'devices': f'{jax.device_count()} x {device.device_kind} ({device.platform})',
      'host': f'{platform.processor() or platform.machine()}, {jax.local_device_count()} local',
      'compile_s': round(compile_s, 2),
      'train_steps_per_s': round(num_steps / train_s, 3),
      'train_sequences_per_s': round(num_steps * batch / train_s, 2),
      'train_frames_per_s': round(num_steps * batch * t / train_s, 1),
      'eval_sequences_per_s': round(num_steps * batch / eval_s, 2),
      'peak_memory_gib': round(peak / 2**30, 3), 'peak_memory_kind': peak_kind,
  }


def run_input(config, num_batches: int) -> dict:
  """Throughput of the training input pipeline of `config` in this process (worker_count 0)."""
  config_lib.validate(config)
  dataset = datasets.prepare(config.dataset)
  splits = protocols.splits_for(dataset.split_names, config.dataset.fold, False)
  batch = config.input.batch_size
  loader = spec.train_loader(config, dataset.source(splits.train), (0, 1, batch), worker_count=0)
  iterator = iter(loader)
  first = next(iterator)  # Warm-up: opens the source.
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  seconds = time.perf_counter() - start
  iterator.close()
  frames = first['frames']
  return {
      'dataset': f'{dataset.name} {splits.train}',
      'batch': {k: f'{v.dtype}{list(v.shape)}' for k, v in first.items()},
      'batch_bytes': int(sum(v.nbytes for v in first.values())),
      'frames_per_s_per_worker': round(num_batches * batch * frames.shape[1] / seconds, 1),
      'sequences_per_s_per_worker': round(num_batches * batch / seconds, 2),
      'host': platform.processor() or platform.machine(),
  }


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  if f.config is None:
    sys.exit('usage: python -m ferjax.benchmark --config configs/<family>.py[:arg] [--steps N]')
  try:
    result = (run_input(f.config, f.batches) if f.input else run(f.config, f.steps, f.num_classes))
  except (config_lib.ConfigError, protocols.DatasetNotPreparedError) as e:
    sys.exit(f'error: {e}')
  width = max(map(len, result))
  print('\n'.join(f'{k:<{width}}  {v}' for k, v in result.items()))
  if f.json:
    with open(f.json, 'w') as out:
      json.dump(result, out, indent=2)


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
