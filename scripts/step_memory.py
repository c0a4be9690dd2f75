"""Compile time and memory of the Res-RBG train step, with and without remat (nothing is run).

    python scripts/step_memory.py --batch 2 --frames 8 --size 112                       # compile time
    python scripts/step_memory.py --batch 32 --frames 16 --size 224 --remat none blocks  # memory
    python scripts/step_memory.py --set "model.stage_sizes=(2,2,2,2)"  # what scanning stages could save

For every `--remat` mode it builds the config's model abstractly (`nnx.eval_shape`), lowers and compiles
the jitted train step on abstract arguments, and prints one JSON line with:

* `compile_s`, `compile_cpu_s`: lowering + XLA compile time of the train step (this machine's backend),
  wall and CPU seconds;
* `xla`: the compiled step's `memory_analysis()` (argument, output, alias, temp bytes) and
  `xla_total` = argument + output - alias + temp, XLA's own estimate of the step's device memory;
* `residual_bytes`: the activations the backward pass keeps from the forward pass, from JAX's
  `saved_residuals` at `--estimate-dtype` (bfloat16 = what 'auto' picks on an accelerator);
  `estimate` = 4 x float32 parameter bytes (parameters, gradients, AdamW's two moments) + BatchNorm
  statistics + the uint8 batch + residual_bytes (+ with remat, `block_bytes`: the largest ResNet
  block's own activations, which the backward pass rebuilds one block at a time): an estimate for an
  accelerator whose scheduler frees every activation after its last use (XLA:GPU/TPU's do).

XLA:CPU's scheduler does not exploit remat (its temp bytes do not shrink, measured on a 16-layer MLP
too), so on CPU the residual estimate is the one that shows what remat buys on an accelerator.
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


def _largest_block_residuals(graphdef, state, args) -> int:
  """Activation bytes one ResNet block saves for its backward pass, the largest over the stages (each
  stage's first and second block), traced without remat: what remat recomputes at a time."""
  model = nnx.eval_shape(lambda: nnx.merge(graphdef, state.params, state.model_state, copy=True))
  backbone = model.backbone
  n, size, cin, largest = args.batch * args.frames, args.size // 4, backbone.layer1[0].conv1.in_features, 0
  for stage in backbone.layers:
    for block in list(stage)[:2]:
      block_graphdef, params, rest = nnx.split(block, nnx.Param, ...)
      x = jax.ShapeDtypeStruct((n, size, size, cin), model.dtype)

      def run(params, rest, x, block_graphdef=block_graphdef):
        return nnx.merge(block_graphdef, params, rest, copy=True)(x, True).astype(jnp.float32).sum()
      residuals = ad_checkpoint.saved_residuals(run, params, rest, x)
      largest = max(largest, _saved_bytes(residuals))
      size //= block.conv2.strides[0]
      cin = block.conv3.out_features if hasattr(block, 'conv3') else block.conv2.out_features
  return largest


def _saved_bytes(residuals) -> int:
  """Bytes of the residuals the backward pass keeps, without the inputs themselves and without
  broadcasts (ReLU's JVP saves a broadcast zero; XLA fuses broadcasts into their users, never stores
  them)."""
  return sum(a.size * a.dtype.itemsize for a, src in residuals
             if not src.startswith('from the argument') and 'broadcast_in_dim' not in src)


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
  residuals = ad_checkpoint.saved_residuals(loss, state.params, state.model_state, frames)
  out['residual_bytes'] = _saved_bytes(residuals)
  out['block_bytes'] = _largest_block_residuals(graphdef, state, args)
  # With remat, the backward pass recomputes one block at a time: add the largest block's activations.
  estimate = (4 * _bytes(state.params) + _bytes(state.model_state)
              + args.batch * args.frames * args.size**2 * 3 + out['residual_bytes']
              + (out['block_bytes'] if remat == 'blocks' else 0))
  out['estimate_gib'] = round(estimate / 2**30, 3)
  out['residual_gib'] = round(out['residual_bytes'] / 2**30, 3)
  out['block_gib'] = round(out['block_bytes'] / 2**30, 3)
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
  parser.add_argument('--skip-compile', action='store_true', help='residual estimate only')
  args = parser.parse_args()
  for remat in args.remat:
    print(json.dumps(measure(args, remat)), flush=True)


if __name__ == '__main__':
  main()
