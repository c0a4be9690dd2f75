"""Compile time and memory of the Res-RBG train step, with and without remat (nothing is run).

    python scripts/step_memory.py --batch 2 --frames 8 --size 112                       # compile time
    python scripts/step_memory.py --batch 32 --frames 16 --size 224 --remat none blocks --skip-compile
    python scripts/step_memory.py --set "model.stage_sizes=(2,2,2,2)"  # what scanning stages could save

For every `--remat` mode it builds the config's model abstractly (`nnx.eval_shape`) and prints one JSON
line with:

* unless `--skip-compile`: `compile_s`, `compile_cpu_s`, the lowering + XLA compile time of the jitted
  train step on abstract arguments (this machine's backend, `--dtype`), wall and CPU seconds; `xla`, the
  compiled step's `memory_analysis()` (argument, output, alias, temp bytes) and `xla_total_gib` =
  argument + output - alias + temp. XLA:CPU cannot show what remat saves: it drops the optimisation
  barriers that keep a recomputation apart and merges it back into the forward pass (a 16-layer MLP
  compiles to the same 191 dots with and without `jax.checkpoint`), so the whole step's figure is no
  remat estimate;
* `estimate_gib`, the step's memory on an accelerator at `--estimate-dtype` (bfloat16 = what 'auto' picks
  there), whose scheduler frees every buffer after its last use (XLA:GPU/TPU's do), as the sum of
  `breakdown_gib`:
  - `params_grads_adam`: 4 x the float32 parameter bytes (parameters, gradients, AdamW's two moments);
    `batch_stats`: BatchNorm's running averages; `batch_uint8`: the batch as it arrives;
  - `saved`: the activations the backward pass keeps from the forward pass, JAX's `saved_residuals` of
    the loss (without its arguments and broadcasts, which XLA fuses into their users). With remat these
    are the remat units' inputs. `saved_by_resolution_gib` splits them by feature-map size and
    `saved_top` lists the largest groups (type, producing operation, function, count, GiB);
  - with remat, `recompute`: the largest remat unit (`recompute_unit`; every unit in `units_gib`)
    while the backward pass rebuilds it: the larger of its own saved residuals (traced without remat)
    and `xla_temp`, the temp bytes of XLA's compiled gradient of that unit alone (no remat inside, so
    XLA:CPU's figure holds; its memory-minimising scheduler, as XLA:GPU/TPU schedule for memory; float32,
    since XLA:CPU computes bfloat16 in float32, scaled to the compute dtype's width; `--skip-unit-compile`
    leaves it out), plus the cotangents of the unit's output and input held meanwhile. `recompute_top`
    lists its largest residual groups.

The estimate is conservative: every saved unit input counts as alive while the largest unit (in the
first stage) is rebuilt, although the backward pass has freed the later stages' by then.
"""

import argparse
import ast
import json
import os
import sys
import time

import jax
# saved_residuals is what the public jax.ad_checkpoint.print_saved_residuals prints, as data.
from jax._src import ad_checkpoint
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import res_rbg as res_rbg_config  # pylint: disable=wrong-import-position  # noqa: E402
from ferjax import models, sharding, steps  # pylint: disable=wrong-import-position  # noqa: E402


def _abstract_state(config, num_classes, tx):
  def init():
    return steps.init_state(
        models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=0)), tx, 0)
  graphdef = nnx.split(nnx.eval_shape(
      lambda: models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=0))),
      nnx.Param, ...)[0]
  return graphdef, jax.eval_shape(lambda: init()[1])


def _segments(graphdef, state, args):
  """(name, function of the model and an input, abstract input) for every unit that `model.remat`
  recomputes as a whole: the stem, the first two blocks of every ResNet stage (the others repeat the
  second's shapes) and the first RBG block (the second repeats its shapes but for the first GRU's input
  width, which is smaller)."""
  def shape(fn, x):
    out = jax.eval_shape(lambda p, r, y: fn(nnx.merge(graphdef, p, r, copy=True), y),
                         state.params, state.model_state, x)
    return jax.ShapeDtypeStruct(out.shape, x.dtype)
  model = nnx.eval_shape(lambda: nnx.merge(graphdef, state.params, state.model_state, copy=True))
  x = jax.ShapeDtypeStruct((args.batch * args.frames, args.size, args.size, 3), model.dtype)
  segments = [('stem', lambda m, y: m.backbone.stem(y, True), x)]
  x = shape(segments[0][1], x)
  for i, stage in enumerate(model.backbone.layers):
    for j in range(min(2, len(stage))):
      segments.append((f'layer{i + 1}[{j}]', lambda m, y, i=i, j=j: m.backbone.layers[i][j](y, True),
                       x))
      x = shape(segments[-1][1], x)
    # Blocks 2.. of a stage have the second block's shapes; x is the next stage's input.
  if len(model.temporal):
    t = jax.ShapeDtypeStruct((args.batch, args.frames, model.backbone.num_features), model.dtype)
    segments.append(('temporal[0]', lambda m, y: m.temporal[0](y, True), t))
  return segments


def _units(graphdef, graphdef32, state, args, compile_units: bool) -> list:
  """Memory of every remat unit while the backward pass rebuilds it, one dict per unit: `residuals`,
  its own saved residuals at the compute dtype (traced without remat); `cotangents`, the cotangents of
  its output and input that the backward pass holds meanwhile; with `compile_units`, `xla_temp`, the
  temp bytes of XLA's compiled gradient of the unit alone (XLA:CPU with its memory-minimising scheduler,
  as XLA:GPU/TPU schedule for memory; float32, since XLA:CPU computes bfloat16 in float32, scaled to
  the compute dtype's width): intermediate buffers included, which the residuals leave out."""
  units = []
  for (name, fn, x) in _segments(graphdef, state, args):
    def run(params, rest, y, fn=fn, graphdef=graphdef):
      return fn(nnx.merge(graphdef, params, rest, copy=True), y).astype(jnp.float32).sum()
    residuals = _kept(ad_checkpoint.saved_residuals(run, state.params, state.model_state, x))
    out = jax.eval_shape(lambda p, r, y, fn=fn: fn(nnx.merge(graphdef, p, r, copy=True), y),
                         state.params, state.model_state, x)
    # The stem's input is the batch: the step needs no cotangent for it.
    argnums = (0,) if name == 'stem' else (0, 2)
    unit = {'name': name, 'residuals': sum(_nbytes(a) for a, _ in residuals),
            'cotangents': _nbytes(out) + (_nbytes(x) if 2 in argnums else 0), 'groups': residuals}
    if compile_units:
      x32 = jax.ShapeDtypeStruct(x.shape, jnp.float32)
      grad = jax.jit(jax.grad(lambda p, r, y, fn=fn: run(p, r, y, fn, graphdef32), argnums=argnums))
      compiled = grad.lower(state.params, state.model_state, x32).compile(
          {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'})
      unit['xla_temp'] = (compiled.memory_analysis().temp_size_in_bytes
                          * jnp.dtype(x.dtype).itemsize // 4)
    unit['total'] = max(unit['residuals'], unit.get('xla_temp', 0)) + unit['cotangents']
    units.append(unit)
  return units


def _kept(residuals):
  """The residuals the backward pass keeps, without the inputs themselves and without broadcasts
  (ReLU's JVP saves a broadcast zero; XLA fuses broadcasts into their users, never stores them)."""
  return [(a, src) for a, src in residuals
          if not src.startswith('from the argument') and 'broadcast_in_dim' not in src]


def _nbytes(aval) -> int:
  return aval.size * jnp.dtype(aval.dtype).itemsize


def _groups(residuals, top: int) -> list:
  """The `top` largest groups of residuals with the same type, producing operation and function:
  [description, count, GiB], largest first."""
  groups = {}
  for aval, src in residuals:
    op = src.split(' from ')[0].replace('output of ', '')
    fn = src.rsplit('(', 1)[-1].rstrip(')') if src.endswith(')') else ''
    key = f'{aval.str_short()} {op} ({fn})'
    count, size = groups.get(key, (0, 0))
    groups[key] = (count + 1, size + _nbytes(aval))
  ranked = sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]
  return [[key, count, round(size / 2**30, 3)] for key, (count, size) in ranked]


def _by_resolution(residuals, args) -> dict:
  """GiB of the saved residuals per feature-map resolution ('224x224', '56x56', ...; 'temporal' for
  [B, T, D] sequences, 'other' for the rest)."""
  out = {}
  for aval, _ in residuals:
    shape = aval.shape
    key = (f'{shape[1]}x{shape[2]}' if len(shape) == 4 and shape[0] == args.batch * args.frames
           else 'temporal' if shape[:2] == (args.batch, args.frames) else 'other')
    out[key] = out.get(key, 0) + _nbytes(aval)
  return {k: round(v / 2**30, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _bytes(tree) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def measure(args, remat: str) -> dict:
  config = res_rbg_config.get_config(args.config)
  for item in args.set:
    key, value = item.split('=', 1)
    section, field = key.split('.')
    config[section][field] = ast.literal_eval(value)
  config.model.remat = remat
  config.model.dtype = args.dtype
  num_classes = 7
  tx = steps.make_optimizer(config.train, 1000, 10)
  graphdef, state = _abstract_state(config, num_classes, tx)
  batch = {'frames': jax.ShapeDtypeStruct((args.batch, args.frames, args.size, args.size, 3),
                                          jnp.uint8),
           'label': jax.ShapeDtypeStruct((args.batch,), jnp.int32)}
  out = {'remat': remat, 'batch': [args.batch, args.frames, args.size], 'dtype': args.dtype,
         'params': sum(x.size for x in jax.tree.leaves(state.params))}
  if not args.skip_compile:
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    fn = steps.jit_train_step(graphdef, tx, 0.1, state_sharding, sharding.batch_sharding(mesh),
                              sharding.replicated(mesh))
    start, cpu_start = time.perf_counter(), time.process_time()
    compiled = fn.lower(state, batch).compile()
    out['compile_s'] = round(time.perf_counter() - start, 2)
    # CPU seconds of all this process's threads: less sensitive than wall time to other jobs' load.
    out['compile_cpu_s'] = round(time.process_time() - cpu_start, 2)
    m = compiled.memory_analysis()
    out['xla'] = {k: getattr(m, f'{k}_size_in_bytes') for k in ('argument', 'output', 'alias', 'temp')}
    out['xla_total_gib'] = round((m.argument_size_in_bytes + m.output_size_in_bytes
                                  - m.alias_size_in_bytes + m.temp_size_in_bytes) / 2**30, 3)
  # Residuals at the accelerator's compute dtype.
  config.model.dtype = args.estimate_dtype
  graphdef, _ = _abstract_state(config, num_classes, tx)
  frames = jax.ShapeDtypeStruct(batch['frames'].shape, jnp.float32)

  def loss(params, model_state, frames):
    model = nnx.merge(graphdef, params, model_state, copy=True)
    logits = model.logits(frames, train=True, rngs=nnx.Rngs(dropout=0))
    return steps.cross_entropy(logits, jnp.zeros((args.batch,), jnp.int32), 0.1).mean()
  residuals = _kept(ad_checkpoint.saved_residuals(loss, state.params, state.model_state, frames))
  fixed = {'params_grads_adam': 4 * _bytes(state.params), 'batch_stats': _bytes(state.model_state),
           'batch_uint8': args.batch * args.frames * args.size**2 * 3}
  saved = sum(_nbytes(a) for a, _ in residuals)
  out['breakdown_gib'] = {k: round(v / 2**30, 3) for k, v in fixed.items()}
  out['breakdown_gib']['saved'] = round(saved / 2**30, 3)
  out['saved_by_resolution_gib'] = _by_resolution(residuals, args)
  out['saved_top'] = _groups(residuals, args.top)
  estimate = sum(fixed.values()) + saved
  if remat != 'none':
    # The backward pass rebuilds one remat unit at a time: add the largest one's activations.
    # Each unit traced and compiled on its own, without remat.
    config.model.remat = 'none'
    unit_graphdef, _ = _abstract_state(config, num_classes, tx)
    config.model.dtype = 'float32'
    graphdef32, _ = _abstract_state(config, num_classes, tx)
    units = _units(unit_graphdef, graphdef32, state, args, not args.skip_unit_compile)
    out['units_gib'] = {u['name']: {k: round(u[k] / 2**30, 3)
                                    for k in ('residuals', 'xla_temp', 'cotangents', 'total') if k in u}
                        for u in units}
    largest = max(units, key=lambda u: u['total'])
    out['breakdown_gib']['recompute'] = round(largest['total'] / 2**30, 3)
    out['recompute_unit'] = largest['name']
    out['recompute_top'] = _groups(largest['groups'], args.top)
    estimate += largest['total']
  out['estimate_gib'] = round(estimate / 2**30, 3)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='ck_plus', help='configs/res_rbg.py argument')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--frames', type=int, default=8)
  parser.add_argument('--size', type=int, default=112)
  parser.add_argument('--dtype', default='float32', help='model.dtype of the compiled step')
  parser.add_argument('--estimate-dtype', default='bfloat16')
  parser.add_argument('--remat', nargs='+', default=['none'])
  parser.add_argument('--set', nargs='*', default=[],
                      help="config overrides, e.g. model.stage_sizes='(2,2,2,2)' model.bigru_layers=1")
  parser.add_argument('--skip-compile', action='store_true',
                      help='no compile of the whole step (its XLA:CPU memory analysis ignores remat)')
  parser.add_argument('--skip-unit-compile', action='store_true',
                      help='remat units: saved residuals only, no XLA memory analysis')
  parser.add_argument('--top', type=int, default=8, help='residual groups listed in the breakdown')
  args = parser.parse_args()
  for remat in args.remat:
    print(json.dumps(measure(args, remat)), flush=True)


if __name__ == '__main__':
  main()
