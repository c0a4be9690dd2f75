r"""Speed, FLOPs, MFU and memory of the jitted train and eval steps: `python -m ferjax.benchmark --config ...`.

Uses random frames of the config's shape, so no dataset is needed. Reports the train step's compile time (wall and CPU seconds),
its median steady-state time over `--steps` steps with the spread (min, quartiles, max; every step is
waited for, so the times are the device's), sequences/s and frames/s at the median, the FLOPs of one
step from XLA's cost analysis of the compiled program, the achieved TFLOP/s and, on accelerators, the
MFU against the chip's dense bfloat16 peak (`PEAK_TFLOPS`; CPUs have no entry, so no MFU), and memory:
the compiled program's own estimate (arguments + outputs + temporaries - donated) and the measured peak
(device `peak_bytes_in_use` where the backend reports it, else the process's peak RSS). Numbers in
docs/performance.md come from this command; timed assertions never live in tests.

  python -m ferjax.benchmark --config configs/res_rbg.py:synthetic --steps 20
  python -m ferjax.benchmark --config configs/res_rbg.py --config.input.batch_size=32 --json out.json
  python -m ferjax.benchmark --config configs/res_rbg.py --sweep batch=2,4,8 --sweep T=4,8,16
  python -m ferjax.benchmark --config configs/res_rbg.py --sweep model.rbg_blocks=0,2  # RBG share
  python -m ferjax.benchmark --config configs/res_rbg.py:synthetic --profile /tmp/trace

`--sweep KEY=V1,V2,...` (repeatable; the runs are the product of all sweeps) reruns the benchmark for every
value: KEY is `batch` (input.batch_size), `T` (dataset.num_frames), `px` (dataset.image_size) or any
dotted config field. It prints one table row per run with the step time relative to the first row.
`--profile DIR` records a JAX profiler trace (TensorBoard/XProf/Perfetto) of `--profile_steps` train
steps after the timed ones and prints the XLA operations that took the most time in it.

FLOPs caveats: XLA counts a convolution or matmul as 2 FLOPs per multiply-add (the convention of MFU), and
counts the body of a `while` loop (the GRU's `lax.scan`) once, not once per time step, so recurrent
layers are under-counted by about their trip count (for Res-RBG at the paper's size the GRUs are ~1 % of
the step). With more than one device the compiled program is one device's share (SPMD), and the totals
below multiply it by the device count.

`--breakdown` (Res-RBG) splits the train step: GFLOPs of the whole step, of the backbone-only step
(`model.rbg_blocks=0`) and of the RBG stack's part alone (its forward and backward on the backbone's
features and its optimizer update; the GRU scans unrolled for the count, so they are counted T times),
which add up to the whole, and the three programs' process CPU seconds per step, alternating, so the
RBG stack's share shows both ways (1 - backbone / whole, and part / whole):

  python -m ferjax.benchmark --config configs/res_rbg.py --breakdown --config.input.batch_size=1 --steps 3

`--deformable` times the DCNv2 layer (`ferjax.models.deformable.DeformConv`: offset/mask convolution +
deformable sampling + the 3x3 convolution) against a plain 3x3 convolution of the same shape, forward and
backward (gradients of the input and every parameter), alternating the two programs, and prints the
median wall and process CPU seconds of each and their ratios (no config needed):

  python -m ferjax.benchmark --deformable                      # batch 32, 14 x 14 x 256
  python -m ferjax.benchmark --deformable --deformable_method gather

`--input` measures the grain input pipeline alone instead (no model): reading, decoding, temporal sampling
and augmentation of the config's training split, in the calling process (one worker's throughput), as
frames/s and sequences/s per worker process. It needs the config's dataset prepared.

  python -m ferjax.benchmark --input --config configs/res_rbg.py:ck_plus --batches 20

For a family whose inputs include optical flow (RFSCNN) it also reports flow images/s per worker; `--flow`
adds flow to any family, and `--source_px N` reads built-in moving-texture JPEG sequences of N px instead
of a dataset (docs/performance.md's flow figure):

  python -m ferjax.benchmark --input --config configs/rfscnn.py --source_px 256 --batches 10

Input figures come per wall second and per CPU second of the process (all its threads): on a shared
machine only the latter say what a worker with a core of its own reaches. `--repeats R` (default 3) times
R rounds of `--batches` and reports the median round and every round's frames per CPU second;
`--input_profile N` adds the CPU milliseconds per frame of the costliest functions (cProfile) while N
batches are made in the calling thread (decode, warp, jitter, flow, copies):

  python -m ferjax.benchmark --input --config configs/res_rbg.py --source_px 256 --batches 8 \
      --config.input.batch_size=8 --input_profile 4
"""

import collections
import glob
import itertools
import json
import os
import platform
import re
import resource
import sys
import time

from absl import app, flags
import cv2
from flax import nnx
import jax
import jax.numpy as jnp
import jaxlib
from ml_collections import config_flags
import numpy as np
import optax

from ferjax import config as config_lib, models, sharding, steps
from ferjax.data import datasets, protocols, spec, tfds_common

# Dense bfloat16 peak TFLOP/s per chip (what one jax device is on these; vendors' data sheets, without
# sparsity). Matched in order against the lower-cased `device_kind`, so 'lite' TPUs come before the others.
PEAK_TFLOPS = (
    (('tpu v6 lite', 'tpu v6e'), 918.0),
    (('tpu v5 lite', 'tpu v5e'), 197.0),
    (('tpu v5p', 'tpu v5'), 459.0),
    (('tpu v4',), 275.0),
    (('h200',), 989.0),
    (('h100 pcie',), 756.0),
    (('h100',), 989.0),  # SXM.
    (('a100',), 312.0),
)

# Short names accepted by --sweep, and the config fields they set.
SWEEP_KEYS = {'batch': 'input.batch_size', 'T': 'dataset.num_frames', 'px': 'dataset.image_size'}


def _define_flags() -> None:
  """The CLI's flags, defined only when run as a program: ferjax.train defines --config too, and a
  process (a test) that imports both modules would fail with a duplicate flag."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/<family>.py[:arg]).',
                                  lock_config=True)
  flags.DEFINE_integer('steps', 10, 'Timed steps (after one warm-up step).')
  flags.DEFINE_integer('num_classes', 7, 'Classifier width.')
  flags.DEFINE_bool('eval', True, 'Also time the eval step.')
  flags.DEFINE_multi_string('sweep', [], 'KEY=V1,V2,...: rerun for every value (KEY: batch, T, px '
                            'or a dotted config field); several sweeps run their product.')
  flags.DEFINE_string('profile', None, 'Write a JAX profiler trace of a few train steps here.')
  flags.DEFINE_integer('profile_steps', 3, '--profile: traced train steps.')
  flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s per device for MFU (0 = from PEAK_TFLOPS).')
  flags.DEFINE_bool('input', False, 'Time the input pipeline alone (per worker).')
  flags.DEFINE_integer('batches', 20, '--input: timed batches (after one warm-up).')
  flags.DEFINE_bool('flow', False, '--input: add the optical-flow input even if the family does not '
                    'ask for it (a family that does always gets it).')
  flags.DEFINE_integer('repeats', 3, '--input: timed rounds of --batches batches (median reported).')
  flags.DEFINE_integer('input_profile', 0, '--input: also profile this many batches made in the calling '
                       'thread (CPU ms per frame of the costliest functions).')
  flags.DEFINE_integer('source_px', 0, '--input: 0 = the config\'s dataset; N = built-in moving-texture '
                       'JPEG sequences of N x N px (no dataset needed).')
  flags.DEFINE_bool('deformable', False, 'Time the deformable 3x3 layer against a plain 3x3 conv '
                    '(forward + backward, --deformable_batch x --deformable_px^2 x --deformable_channels).')
  flags.DEFINE_integer('deformable_batch', 32, '--deformable: batch.')
  flags.DEFINE_integer('deformable_px', 14, '--deformable: map side.')
  flags.DEFINE_integer('deformable_channels', 256, '--deformable: input and output channels.')
  flags.DEFINE_enum('deformable_method', 'auto', ['auto', 'dense', 'gather'],
                    '--deformable: the sampling formulation (ferjax.models.deformable).')
  flags.DEFINE_string('json', None, 'Also write the results to this JSON file.')
  flags.DEFINE_bool('breakdown', False, 'Res-RBG: the RBG stack\'s share of the train step (FLOPs and '
                    'CPU time of the whole step, the backbone-only step and the RBG part alone).')


def peak_tflops(device_kind: str) -> float | None:
  """Dense bfloat16 peak TFLOP/s of one device of `device_kind`; None when unknown (CPUs)."""
  kind = device_kind.lower()
  for patterns, peak in PEAK_TFLOPS:
    if any(p in kind for p in patterns):
      return peak
  return None


def _cost(analysis) -> dict:
  """XLA's cost analysis as one dict: jax returns a dict, older versions a list of one per program."""
  if analysis is None:
    return {}
  if isinstance(analysis, (list, tuple)):
    out = collections.Counter()
    for part in analysis:
      out.update({k: v for k, v in (part or {}).items() if isinstance(v, (int, float))})
    return dict(out)
  return dict(analysis)


def flops(staged) -> float | None:
  """FLOPs of a `jax.jit(...).lower(...)` or `.compile()` result from XLA's cost analysis (None if the
  backend has none). A lowered computation is analysed before optimisation, without compiling."""
  try:
    value = _cost(staged.cost_analysis()).get('flops')
  except NotImplementedError:
    return None
  return float(value) if value is not None and value >= 0 else None


def forward_flops(module: nnx.Module, input_shape: tuple[int, ...], dtype=jax.numpy.float32) -> float:
  """FLOPs of `module(x)` for one input of `input_shape`, from XLA's cost analysis of the lowered (not
  compiled) forward pass; `module` may be abstract (`nnx.eval_shape`), so nothing is allocated."""
  graphdef, state = nnx.split(module)
  lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(
      state, jax.ShapeDtypeStruct(input_shape, dtype))
  return flops(lowered)


def _sig(x: float | None, digits: int = 4) -> float | None:
  """`x` rounded to `digits` significant digits (tiny test models and big ones in one table)."""
  return None if x is None or x == 0 else float(f'{x:.{digits}g}')


def compiled_memory_bytes(compiled) -> int | None:
  """The compiled program's memory estimate: arguments + outputs + temporaries - donated (aliased)."""
  try:
    m = compiled.memory_analysis()
  except NotImplementedError:
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _peak_memory_bytes() -> tuple[int, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process peak RSS'


def _step_times(fn, n: int) -> np.ndarray:
  """Seconds of each of `n` calls of `fn`, each waited for."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return np.asarray(times)


def _setup(config, num_classes: int):
  """Mesh, jitted train/eval steps, initial state and a random global batch of `config`'s shape."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  model = models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=config.seed))
  params = models.count_params(model)['total']
  optimizer = steps.Optimizer.from_config(config.train, total_steps=1000, warmup_steps=10)
  graphdef, state = steps.init_state(model, optimizer.tx, config.seed)
  del model
  state_sharding = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  batch_sharding = sharding.batch_sharding(mesh)
  family = models.get_family(config.model.name)
  train_fn = steps.jit_train_step(graphdef, optimizer, family.losses(config), state_sharding,
                                  batch_sharding, sharding.replicated(mesh))
  eval_fn = steps.jit_eval_step(graphdef, state_sharding, batch_sharding)
  rng = np.random.default_rng(0)
  data = sharding.global_batch(
      spec.random_batch(config, config.input.batch_size, num_classes, rng, family.inputs), mesh)
  return params, train_fn, eval_fn, state, data


def run(config, num_steps: int, num_classes: int, *, eval_step: bool = True,
        profile_dir: str | None = None, profile_steps: int = 3,
        peak_tflops_per_device: float | None = None) -> dict:
  """Benchmarks `config`'s model: compile time, step time, FLOPs, MFU and memory of the train step
  (and the eval step's throughput unless `eval_step` is False)."""
  config_lib.validate(config)
  if num_steps < 1:
    raise ValueError(f'the benchmark needs at least 1 timed step; found {num_steps}')
  batch, t, size = config.input.batch_size, config.dataset.num_frames, config.dataset.image_size
  params, train_fn, eval_fn, state, data = _setup(config, num_classes)

  start, start_cpu = time.perf_counter(), time.process_time()
  compiled = train_fn.lower(state, data).compile()
  compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
  holder = {'state': compiled(state, data)[0]}  # Warm-up step.

  def train_once():
    holder['state'], metrics = compiled(holder['state'], data)
    return metrics
  times = _step_times(train_once, num_steps)
  median = float(np.median(times))
  device = jax.devices()[0]
  n_dev = jax.device_count()
  step_flops = flops(compiled)
  peak = peak_tflops_per_device or peak_tflops(device.device_kind)
  result = {
      'config': ', '.join(f'{k}={v}' for k, v in config.model.items()),
      'params_total': params,
      'batch_size': batch, 'num_frames': t, 'image_size': size,
      'devices': f'{n_dev} x {device.device_kind} ({device.platform})',
      'host': f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
              f'{jax.local_device_count()} local devices',
      'versions': f'jax {jax.__version__}, jaxlib {jaxlib.__version__}',
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'compile_s': round(compile_s, 2),
      # CPU seconds of this process while compiling: XLA compiles mostly on one thread, so on a machine
      # shared with other jobs this is close to the wall time the compile takes on an idle one.
      'compile_cpu_s': round(compile_cpu_s, 2),
      'train_step_s': _sig(median),
      'train_step_s_spread': [_sig(float(q)) for q in np.quantile(times, (0, .25, .75, 1))],
      'timed_steps': num_steps,
      'train_steps_per_s': round(1 / median, 3),
      'train_sequences_per_s': round(batch / median, 2),
      'train_frames_per_s': round(batch * t / median, 1),
      'train_gflops_per_step': None if step_flops is None else _sig(step_flops * n_dev / 1e9),
      'train_tflops_per_s': None if step_flops is None else _sig(step_flops * n_dev / median / 1e12),
      'peak_tflops_per_device': peak,
      'mfu': (None if step_flops is None or peak is None
              else _sig(step_flops / median / (peak * 1e12))),
  }
  if peak is None:
    result['mfu_note'] = f'no peak known for {device.device_kind!r}: MFU not reported'
  mem = compiled_memory_bytes(compiled)
  result['compiled_memory_gib_per_device'] = None if mem is None else _sig(mem / 2**30)
  if eval_step:
    eval_compiled = eval_fn.lower(holder['state'], data).compile()
    jax.block_until_ready(eval_compiled(holder['state'], data))
    eval_times = _step_times(lambda: eval_compiled(holder['state'], data), num_steps)
    eval_flops = flops(eval_compiled)
    result['eval_sequences_per_s'] = round(batch / float(np.median(eval_times)), 2)
    result['eval_gflops_per_step'] = (None if eval_flops is None
                                      else _sig(eval_flops * n_dev / 1e9))
  if profile_dir:
    result['profile'] = profile(train_once, profile_dir, profile_steps)
  peak_bytes, peak_kind = _peak_memory_bytes()
  result['peak_memory_gib'] = round(peak_bytes / 2**30, 3)
  result['peak_memory_kind'] = peak_kind
  return result


def profile(fn, log_dir: str, num_steps: int, top: int = 12) -> dict:
  """Traces `num_steps` calls of `fn` into `log_dir` (jax.profiler) and sums the trace's XLA operation
  events by name: {'trace': path of the .xplane.pb, 'top_ops_ms': {op: ms per step}}."""
  log_dir = os.path.abspath(log_dir)
  with jax.profiler.trace(log_dir):
    for _ in range(num_steps):
      jax.block_until_ready(fn())
  paths = sorted(glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    return {'trace': None, 'top_ops_ms': {}}
  return {'trace': paths[-1], 'top_ops_ms': top_ops(paths[-1], num_steps, top)}


# Trace events that are runtime bookkeeping, not XLA operations.
_NOT_OPS = ('ThreadpoolListener', 'ThunkExecutor', 'PjRt', 'CommonPjRt', 'PjitFunction', 'Execute', 'end: ',
            'ParseArguments', 'Handle inputs', 'Allocate', 'PythonRefManager', '$')


def top_ops(xplane_path: str, num_steps: int = 1, top: int = 12) -> dict[str, float]:
  """Milliseconds per step of the `top` kinds of XLA operation in a profiler trace: events summed over
  every host thread by name without the HLO instance number (`convolution.12` -> `convolution`), so a
  kind's share of the step shows even when it is spread over many instances."""
  data = jax.profiler.ProfileData.from_file(xplane_path)
  totals = collections.Counter()
  for plane in data.planes:
    if not plane.name.startswith('/host:CPU') and not plane.name.startswith('/device:'):
      continue
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        if not event.name.startswith(_NOT_OPS):
          totals[re.sub(r'\.\d+$', '', event.name)] += event.duration_ns
  return {name: round(ns / 1e6 / num_steps, 2) for name, ns in totals.most_common(top)}


def _sweep_values(sweeps: list[str]) -> list[tuple[str, list]]:
  """[('input.batch_size', [2, 4]), ...] from ['batch=2,4', ...]; values parsed as int, float or str."""
  out = []
  for item in sweeps:
    key, sep, values = item.partition('=')
    if not sep or not values:
      raise ValueError(f'--sweep expects KEY=V1,V2,...; found {item!r}')
    parsed = []
    for v in values.split(','):
      if v in ('True', 'False'):
        parsed.append(v == 'True')
        continue
      for cast in (int, float):
        try:
          v = cast(v)
          break
        except ValueError:
          pass
      parsed.append(v)
    out.append((SWEEP_KEYS.get(key, key), parsed))
  return out


def sweep(config, sweeps: list[str], num_steps: int, num_classes: int, **kwargs) -> list[dict]:
  """`run` for every combination of the `--sweep` values; each row records the fields it set and
  `step_vs_first`, its median step time relative to the first row's."""
  axes = _sweep_values(sweeps)
  rows = []
  for values in itertools.product(*(v for _, v in axes)):
    c = config.copy_and_resolve_references()
    with c.unlocked():
      for (key, _), value in zip(axes, values):
        section, _, field = key.rpartition('.')
        target = c
        for part in section.split('.') if section else ():
          target = target[part]
        if field not in target:
          raise ValueError(f'--sweep key {key!r} is not a config field')
        target[field] = value
    row = {'sweep': dict(zip((k for k, _ in axes), values))}
    row.update(run(c, num_steps, num_classes, **kwargs))
    row['step_vs_first'] = round(row['train_step_s'] / rows[0]['train_step_s'], 3) if rows else 1.0
    rows.append(row)
  return rows


SWEEP_COLUMNS = ('batch_size', 'num_frames', 'image_size', 'compile_cpu_s', 'train_step_s',
                 'step_vs_first', 'train_frames_per_s', 'train_gflops_per_step', 'train_tflops_per_s',
                 'mfu', 'compiled_memory_gib_per_device')


def sweep_table(rows: list[dict]) -> str:
  """A Markdown table of sweep rows: the swept fields, then SWEEP_COLUMNS."""
  keys = list(rows[0]['sweep']) if rows else []
  extra = [k for k in keys if k not in SWEEP_KEYS.values()]
  header = extra + list(SWEEP_COLUMNS)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  for row in rows:
    cells = [row['sweep'][k] for k in extra] + [row.get(k) for k in SWEEP_COLUMNS]
    lines.append('| ' + ' | '.join('-' if c is None else str(c) for c in cells) + ' |')
  return '\n'.join(lines)


class _TemporalPart(nnx.Module):
  """What follows the backbone in a Res-RBG: the RBG blocks, temporal pooling and the head (dropout off:
  the breakdown's step sets it to 0 too)."""

  def __init__(self, model):
    self.temporal, self.head, self.pooling = model.temporal, model.head, model.pooling

  def __call__(self, x, train: bool):
    for block in self.temporal:
      x = block(x, train)
    x = jnp.mean(x, axis=1) if self.pooling == 'mean' else x[:, -1]
    return self.head(x).astype(jnp.float32)


def _rbg_part_step(config, num_classes: int):
  """The RBG stack's share of a train step, alone: forward and backward of `_TemporalPart` on the
  backbone's features [B, T, D] (gradients for its parameters and for the features, which the backbone's
  backward needs) and the optimizer's update of its parameters. Returns (jitted fn, args)."""
  model = models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=config.seed))
  part = _TemporalPart(model)
  graphdef, params, rest = nnx.split(part, nnx.Param, ...)
  optimizer = steps.Optimizer.from_config(config.train, total_steps=1000, warmup_steps=10)
  opt_state = optimizer.tx.init(params)
  numbers = {k: np.float32(v) for k, v in optimizer.numbers.items()}  # Arguments, as in the train step.
  batch, t = config.input.batch_size, config.dataset.num_frames
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(batch, t, model.backbone.num_features)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32)
  smoothing = config.train.label_smoothing

  def fn(params, opt_state, rest, features, labels, numbers):
    def loss_fn(params, features):
      m = nnx.merge(graphdef, params, rest, copy=True)
      logits = m(features, train=True)
      loss = jnp.mean(steps.cross_entropy(logits, labels, smoothing))
      return loss, nnx.state(m, nnx.Not(nnx.Param))
    (loss, rest), (grads, d_features) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
        params, features)
    updates, opt_state = optimizer.transformation(numbers).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # The train step's metrics that scale with the parameters (steps.train_step): their norms.
    norms = optax.tree.norm(grads) + optax.tree.norm(params)
    return params, opt_state, rest, d_features, loss + 0 * norms
  return jax.jit(fn), (params, opt_state, rest, features, labels, numbers)


def _with_model(config, **fields):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for k, v in fields.items():
      c.model[k] = v
  return c


def breakdown_flops(config, num_classes: int) -> dict:
  """GFLOPs of the whole train step, of the backbone-only train step (`model.rbg_blocks=0`: backbone,
  head, loss, optimizer) and of the RBG stack's part alone (`_rbg_part_step`), from XLA's cost analysis
  of the lowered (not compiled) programs. The GRU scans are unrolled over T for the count
  (`model.unroll=T`), since XLA counts a loop body once: every part is counted in full. The two parts
  share only the tiny head, so they add up to the whole (tests/test_benchmark.py)."""
  counted = _with_model(config, unroll=max(1, min(config.dataset.num_frames, 64)), dropout=0.0)
  out = {}
  for name, c in (('train_step', counted), ('backbone_step', _with_model(counted, rbg_blocks=0))):
    _, train_fn, _, state, data = _setup(c, num_classes)
    out[name] = flops(train_fn.lower(state, data)) / 1e9
  fn, args = _rbg_part_step(counted, num_classes)
  out['rbg_part'] = flops(fn.lower(*args)) / 1e9
  return out


def breakdown(config, num_steps: int, num_classes: int) -> dict:
  """How much of the Res-RBG train step the RBG stack costs: its FLOP share (`breakdown_flops`) and its
  time share, measured two ways in process CPU seconds per step (robust to other jobs on the machine;
  all of this process's threads), alternating the programs step by step: 1 - backbone-only step / whole
  step, and the RBG part alone / whole step. With dropout 0, so the programs differ only by the RBG stack."""
  config_lib.validate(config)
  if config.model.name != 'res_rbg':
    raise ValueError(f'--breakdown splits a Res-RBG step; found model.name={config.model.name!r}')
  if config.model.rbg_blocks < 1:
    raise ValueError(f'--breakdown needs model.rbg_blocks >= 1; found {config.model.rbg_blocks}')
  gflops = breakdown_flops(config, num_classes)
  config = _with_model(config, dropout=0.0)
  programs = {}
  for name, c in (('train_step', config), ('backbone_step', _with_model(config, rbg_blocks=0))):
    _, train_fn, _, state, data = _setup(c, num_classes)
    compiled = train_fn.lower(state, data).compile()
    programs[name] = (lambda compiled, data: lambda s: compiled(s, data))(compiled, data), [state]
  fn, args = _rbg_part_step(config, num_classes)
  rbg_compiled = fn.lower(*args).compile()
  programs['rbg_part'] = (lambda s: (rbg_compiled(*s, *args[2:])[:2], None)), [args[:2]]
  cpu = {name: [] for name in programs}
  for i in range(num_steps + 1):  # The first round is the warm-up.
    for name, (step, holder) in programs.items():
      start = time.process_time()
      holder[0], _ = jax.block_until_ready(step(holder[0]))
      if i:
        cpu[name].append(time.process_time() - start)
  median = {name: float(np.median(v)) for name, v in cpu.items()}
  return {
      'config': ', '.join(f'{k}={v}' for k, v in config.model.items()),
      'batch_size': config.input.batch_size, 'num_frames': config.dataset.num_frames,
      'image_size': config.dataset.image_size, 'timed_steps': num_steps,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'gflops_train_step': _sig(gflops['train_step']),
      'gflops_backbone_step': _sig(gflops['backbone_step']),
      'gflops_rbg_part': _sig(gflops['rbg_part']),
      'gflops_parts_over_whole': _sig((gflops['backbone_step'] + gflops['rbg_part'])
                                      / gflops['train_step']),
      'rbg_flop_share': _sig(gflops['rbg_part'] / gflops['train_step'], 3),
      'cpu_s_train_step': _sig(median['train_step']),
      'cpu_s_backbone_step': _sig(median['backbone_step']),
      'cpu_s_rbg_part': _sig(median['rbg_part']),
      'rbg_time_share_by_difference': _sig(1 - median['backbone_step'] / median['train_step'], 3),
      'rbg_time_share_alone': _sig(median['rbg_part'] / median['train_step'], 3),
      'cpu_s_train_step_all': [_sig(t) for t in cpu['train_step']],
      'cpu_s_backbone_step_all': [_sig(t) for t in cpu['backbone_step']],
  }


def moving_texture_source(num_records: int, num_frames: int, px: int, seed: int = 0,
                          distinct: int | None = None) -> list[dict]:
  """In-memory records of JPEG frames (px x px) of a blurred-noise texture moving 1-3 px per frame:
  an input-benchmark source with realistic decoding and optical-flow cost, without a dataset.

  `distinct` < `num_records` encodes only that many sequences and repeats them (record i shares the
  frames of record i % distinct): the source has a real dataset's length (grain's shuffle costs ~26 / N
  ms per example on an N-record source, 0.8 ms at N = 32 but 0.1 ms at CK+'s ~300) in little memory.
  """
  rng = np.random.default_rng(seed)
  distinct = num_records if distinct is None else min(distinct, num_records)
  sequences = []
  for _ in range(distinct):
    dx, dy = rng.integers(1, 4, 2) * rng.choice([-1, 1], 2)
    margin = 3 * num_frames
    noise = (rng.random((px + 2 * margin, px + 2 * margin)) * 255).astype(np.uint8)
    big = np.repeat(cv2.GaussianBlur(noise, (0, 0), 2.0)[..., None], 3, axis=-1)
    sequences.append([tfds_common.encode_jpeg(np.ascontiguousarray(
        big[margin + k * dy:margin + k * dy + px, margin + k * dx:margin + k * dx + px]))
                      for k in range(num_frames)])
  return [{'frames': sequences[i % distinct], 'label': i % 7, 'sequence_id': f'moving_texture/{i}'}
          for i in range(num_records)]


# --input --source_px: records of the built-in source; as many as a real training split (CK+ ~300
# sequences), 32 of them distinct.
INPUT_SOURCE_RECORDS, INPUT_SOURCE_DISTINCT, INPUT_SOURCE_FRAMES = 320, 32, 24


def _input_rounds(iterator, num_batches: int, repeats: int) -> list[tuple[float, float]]:
  """(wall s, process CPU s) of `repeats` rounds of `num_batches` batches each."""
  rounds = []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
      next(iterator)
    rounds.append((time.perf_counter() - start, time.process_time() - cpu_start))
  return rounds


def profile_input(batches, num_batches: int, units: int, top: int = 12) -> dict[str, float]:
  """CPU milliseconds per unit (frame) of the `top` functions (own time, cProfile with the process CPU
  clock) while making `num_batches` batches of the random-access `batches` in the calling thread: the
  loader's iterator makes examples in reader threads, which a profiler of this thread would not see."""
  import cProfile
  import pstats
  profiler = cProfile.Profile(time.process_time)
  profiler.enable()
  for k in range(num_batches):
    batches[k]
  profiler.disable()
  stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, prim, own, cumulative, callers)}
  own = collections.Counter()
  for (file, _, name), (_, _, tottime, _, _) in stats.items():
    name = re.sub(r"^<method '(\w+)' of '([\w.]+)' objects>$", r'\2.\1', name)  # cv2.X.calc
    name = re.sub(r'^<(built-in method )?|>$', '', name)
    own[name if file == '~' else f'{os.path.basename(file)}:{name}'] += tottime
  return {name: round(seconds * 1e3 / units, 4) for name, seconds in own.most_common(top)}


def run_input(config, num_batches: int, flow: bool = False, source_px: int = 0, repeats: int = 3,
              profile_batches: int = 0) -> dict:
  """Throughput of the training input pipeline of `config` in this process (worker_count 0).

  `flow` adds the optical-flow input; `source_px` > 0 reads `moving_texture_source` records of that
  size (INPUT_SOURCE_* records and frames) instead of the config's dataset. Times `repeats` rounds of `num_batches` batches
  and reports the median round (and every round's frames per CPU second): on a shared machine the wall
  figures vary with the load; the per-CPU-second ones much less. `profile_batches` > 0 adds the CPU time
  per frame of the costliest functions (`profile_input`).
  """
  config_lib.validate(config)
  if repeats < 1 or num_batches < 1:
    raise ValueError(f'--input needs batches >= 1 and repeats >= 1; found {num_batches} and {repeats}')
  batch = config.input.batch_size
  if source_px:
    name = f'moving_texture {source_px}px'
    source = moving_texture_source(INPUT_SOURCE_RECORDS, INPUT_SOURCE_FRAMES, source_px,
                                   distinct=INPUT_SOURCE_DISTINCT)
  else:
    dataset = datasets.prepare(config.dataset)
    splits = protocols.splits_for(dataset.split_names, config.dataset.fold, False)
    name, source = f'{dataset.name} {splits.train}', dataset.source(splits.train)
  inputs = models.get_family(config.model.name).inputs + (('flow',) if flow else ())
  loader = spec.train_loader(config, source, (0, 1, batch), worker_count=0, inputs=inputs)
  iterator = iter(loader)
  first = next(iterator)  # Warm-up: opens the source.
  rounds = _input_rounds(iterator, num_batches, repeats)
  iterator.close()
  seconds, cpu_seconds = (float(np.median(x)) for x in zip(*rounds))
  frames = num_batches * batch * first['frames'].shape[1]
  result = {
      'dataset': name,
      'batch': {k: f'{v.dtype}{list(v.shape)}' for k, v in first.items()},
      'batch_bytes': int(sum(v.nbytes for v in first.values())),
      'sampling': config.dataset.sampling,
      'rounds': f'{repeats} x {num_batches} batches (median round below)',
      'frames_per_s_per_worker': round(frames / seconds, 1),
      'sequences_per_s_per_worker': round(num_batches * batch / seconds, 2),
      # CPU seconds of this process (all its threads) per wall second: well below 1 when other processes
      # share the cores; the *_per_cpu_s figures are then what a worker with a core of its own would reach.
      'cpu_load': round(cpu_seconds / seconds, 2),
      'frames_per_cpu_s': round(frames / cpu_seconds, 1),
      'frames_per_cpu_s_rounds': [round(frames / c, 1) for _, c in rounds],
      'sequences_per_cpu_s': round(num_batches * batch / cpu_seconds, 2),
      'host': platform.processor() or platform.machine(),
  }
  if 'flow' in first:  # Flow images (T - 1 per sequence) per second, decoding and augmentation included.
    flows = num_batches * batch * first['flow'].shape[1]
    result.update(flow=config.dataset.get('flow', 'dis'),
                  flow_frames_per_s_per_worker=round(flows / seconds, 1),
                  flow_frames_per_cpu_s=round(flows / cpu_seconds, 1),
                  flow_frames_per_cpu_s_rounds=[round(flows / c, 1) for _, c in rounds])
  if profile_batches:
    result['input_profile_cpu_ms_per_frame'] = profile_input(
        loader.batches, profile_batches, profile_batches * batch * first['frames'].shape[1])
  return result


def run_deformable(batch: int = 32, px: int = 14, channels: int = 256, num_steps: int = 10,
                   method: str = 'auto') -> dict:
  """Forward + backward of the DCNv2 layer and of a plain 3x3 convolution (both without bias, stride 1,
  padding 1) on random [batch, px, px, channels] maps: median wall and process CPU seconds per step over
  ``num_steps`` alternating steps after one warm-up each, and the deformable/plain ratios."""
  from ferjax.models import deformable  # pylint: disable=import-outside-toplevel
  rngs = nnx.Rngs(0)
  layers = {
      'plain': nnx.Conv(channels, channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                        rngs=rngs),
      'deformable': deformable.DeformConv(channels, channels, 3, padding=1, rngs=rngs),
  }
  # Small random offsets, so the sampling positions are fractional as in a trained layer.
  layers['deformable'].offset.kernel[...] = 1e-3 * jax.random.normal(
      jax.random.key(1), layers['deformable'].offset.kernel.shape)
  x = jax.random.normal(jax.random.key(0), (batch, px, px, channels))

  apply = {'plain': lambda layer, x: layer(x),
           'deformable': lambda layer, x: _deformable_apply(layer, x, method)}

  def make_step(name):
    graphdef, params = nnx.split(layers[name])
    loss = lambda params, x: jnp.mean(jnp.square(apply[name](nnx.merge(graphdef, params), x)))
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(step(params, x))

  fns = {name: make_step(name) for name in layers}
  for fn in fns.values():
    fn()  # Compile and warm up.
  wall = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for _ in range(num_steps):
    for name, fn in fns.items():
      w0, c0 = time.perf_counter(), time.process_time()
      fn()
      wall[name].append(time.perf_counter() - w0)
      cpu[name].append(time.process_time() - c0)
  med = lambda v: float(np.median(v))
  result = {'shape': f'{batch} x {px} x {px} x {channels}', 'method': method,
            'device': jax.devices()[0].device_kind, 'steps': num_steps}
  for name in fns:
    result[f'{name}_wall_s'] = _sig(med(wall[name]))
    result[f'{name}_cpu_s'] = _sig(med(cpu[name]))
  result['ratio_wall'] = _sig(med(wall['deformable']) / med(wall['plain']), 3)
  result['ratio_cpu'] = _sig(med(cpu['deformable']) / med(cpu['plain']), 3)
  return result


def _deformable_apply(layer, x, method: str):
  """``layer(x)`` with the sampling formulation ``method``."""
  from ferjax.models import deformable  # pylint: disable=import-outside-toplevel
  offset, mask = layer.offsets_and_mask(x)
  return deformable.deform_conv2d(x, offset, mask, layer.kernel[...], stride=layer.stride,
                                  padding=layer.padding, dilation=layer.dilation, method=method)


def _print(result: dict) -> None:
  width = max(map(len, result))
  for k, v in result.items():
    if isinstance(v, dict):
      print(f'{k}:')
      for name, value in (v.get('top_ops_ms') or v).items():
        print(f'  {value!s:>10}  {name}')
      if v.get('trace'):
        print(f'  trace: {v["trace"]}')
    else:
      print(f'{k:<{width}}  {v}')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  if f.deformable:
    _print(run_deformable(f.deformable_batch, f.deformable_px, f.deformable_channels, f.steps,
                          f.deformable_method))
    return
  if f.config is None:
    sys.exit('usage: python -m ferjax.benchmark --config configs/<family>.py[:arg] [--steps N] '
             '[--sweep KEY=V1,V2] [--profile DIR]')
  kwargs = {'eval_step': f.eval, 'profile_dir': f.profile, 'profile_steps': f.profile_steps,
            'peak_tflops_per_device': f.peak_tflops or None}
  try:
    if f.input:
      result = run_input(f.config, f.batches, flow=f.flow, source_px=f.source_px,
                         repeats=f.repeats, profile_batches=f.input_profile)
    elif f.breakdown:
      result = breakdown(f.config, f.steps, f.num_classes)
    elif f.sweep:
      result = sweep(f.config, f.sweep, f.steps, f.num_classes, **kwargs)
    else:
      result = run(f.config, f.steps, f.num_classes, **kwargs)
  except (config_lib.ConfigError, protocols.DatasetNotPreparedError, ValueError) as e:
    sys.exit(f'error: {e}')
  if isinstance(result, list):
    _print({k: v for k, v in result[0].items() if k not in SWEEP_COLUMNS and k != 'sweep'})
    print(sweep_table(result))
  else:
    _print(result)
  if f.json:
    with open(f.json, 'w') as out:
      json.dump(result, out, indent=2)


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
