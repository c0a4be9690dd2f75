r"""A/B timing of the ferjax train step under model-code formulations, alternating in one process.

Each variant sets the formulation fields of `config.model` (`fused_batchnorm`, `dot_1x1`: every switch,
so a variant means the same program whatever the configs' defaults), compiles the project's jitted train
step (`ferjax.benchmark._setup`) on the same random batch, and the timed steps then alternate A, B, A,
B, ... so both see the same machine load.
Times are process CPU seconds per step (`time.process_time`, all threads of this process), which a
machine shared with other jobs inflates far less than wall time; with `--threads 1` (the default) XLA
runs single-threaded (`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1` added to
$XLA_FLAGS), so CPU time is the step's own work. Prints per-variant medians and each variant's ratio to
the first; the losses of the first step are printed too (the variants must compute the same function).

  python scripts/ab_formulation.py --variants flax_bn fused_bn --repeats 5
  python scripts/ab_formulation.py --batch 1 --frames 4 --px 112 --variants flax_bn fused_bn
"""

import argparse
import importlib.util
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Variant name -> the config.model formulation fields it sets (ferjax/models/resnet.py:formulation).
VARIANTS = {
    'flax_bn': {'fused_batchnorm': False, 'dot_1x1': False},
    'fused_bn': {'fused_batchnorm': True, 'dot_1x1': False},
    'dot1x1': {'fused_batchnorm': True, 'dot_1x1': True},
}

SINGLE_THREAD_FLAGS = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


def load_config(spec: str):
  """`get_config(arg)` of `path[:arg]`, a config file path relative to the repository."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('ferjax_config', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/res_rbg.py', help='configs/res_rbg.py[:arg]')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--frames', type=int, default=8)
  p.add_argument('--px', type=int, default=112)
  p.add_argument('--repeats', type=int, default=5, help='timed steps per variant, alternating')
  p.add_argument('--threads', type=int, default=1, help='1: XLA single-threaded (see above)')
  p.add_argument('--variants', nargs='+', default=['flax_bn', 'fused_bn'], choices=sorted(VARIANTS))
  p.add_argument('--json', default=None)
  args = p.parse_args(argv)
  if args.threads == 1:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + SINGLE_THREAD_FLAGS).strip()

  import jax  # pylint: disable=import-outside-toplevel  # After XLA_FLAGS is set.
  import numpy as np  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, REPO)
  from ferjax import benchmark, config as config_lib  # pylint: disable=import-outside-toplevel

  base = load_config(args.config)
  base.input.batch_size, base.dataset.num_frames = args.batch, args.frames
  base.dataset.image_size, base.model.dropout = args.px, 0.0
  runs = {}
  for name in args.variants:
    config = base.copy_and_resolve_references()
    config.model.update(VARIANTS[name])
    config_lib.validate(config)
    _, train_fn, _, state, data = benchmark._setup(config, 7)  # pylint: disable=protected-access
    start = time.process_time()
    compiled = train_fn.lower(state, data).compile()
    compile_cpu_s = time.process_time() - start
    state, metrics = compiled(state, data)  # Warm-up; the first loss.
    runs[name] = {'formulation': VARIANTS[name], 'compiled': compiled, 'state': state, 'data': data,
                  'times': [], 'loss_0': float(metrics['loss']), 'compile_cpu_s': round(compile_cpu_s, 1)}
  for _ in range(args.repeats):
    for run in runs.values():
      start = time.process_time()
      run['state'], metrics = run['compiled'](run['state'], run['data'])
      jax.block_until_ready(metrics)
      run['times'].append(time.process_time() - start)
  first = float(np.median(runs[args.variants[0]]['times']))
  result = {'config': args.config, 'batch': args.batch, 'frames': args.frames, 'px': args.px,
            'threads': args.threads, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'jax': jax.__version__, 'variants': {}}
  for name, run in runs.items():
    median = float(np.median(run['times']))
    result['variants'][name] = {
        'step_cpu_s_median': round(median, 3), 'step_cpu_s': [round(t, 3) for t in run['times']],
        'vs_first': round(median / first, 3), 'loss_0': run['loss_0'], 'formulation': run['formulation'],
        'compile_cpu_s': run['compile_cpu_s']}
  print(json.dumps(result, indent=1))
  if args.json:
    with open(args.json, 'w') as out:
      json.dump(result, out, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
