r"""Exports a trained model for deployment: `python -m ferjax.export --workdir RUN --format jax|onnx --output FILE`.

The exported function is the evaluation path of the trainer with the weights baked in: uint8 RGB face crops
`[B, T, S, S, 3]` -> ImageNet normalisation -> the model in inference mode (BatchNorm running averages, no
dropout) -> class probabilities `[B, C]` (`ferjax.steps.eval_step`'s `probs`). The batch dimension B is
symbolic: one artifact serves any batch size. Families with more inputs take them as further arguments
in the order of `metadata['inputs']` (RFSCNN: `frames`, then `flow` float32 `[B, T - 1, S, S, 3]`); the
ONNX graph names its inputs the same way.

* `--format jax` writes a `.ferjax` zip: `model.jax` (`jax.export.export(...).serialize()`, StableHLO for
  the platforms of `--platforms`, default cpu) and `metadata.json` (class names, T, S, the preprocessing
  the model expects, the config's model section and the checkpoint it came from). A zip rather than a
  sidecar JSON so that the weights and their class names travel as one file.
* `--format onnx` writes an ONNX model converted by jax2onnx (`pip install 'ferjax[export]'`), input
  `frames` uint8 [B, T, S, S, 3], output `probs`, the same metadata JSON in `metadata_props['ferjax']`.

The model is the checkpoint the run selects (`ferjax.inference.run`: best validation UAR when the run
kept one, else the latest). Its compute dtype is resolved for the artifact's target, not for the host
that exports: `model.dtype='auto'` is bfloat16 for `--platforms cuda`/`tpu` and float32 for `cpu` (and
for ONNX, which onnxruntime runs on a CPU), on whatever machine the export runs; `--dtype` chooses one
explicitly. The metadata records the compute dtype, the face detector, margin and crop side the
training data was made with, and the window `ferjax.predict` uses (the training sequences' median length).

Run either with `ferjax.serving.load(FILE).predict(frames)` (no trainer code) or
`python -m ferjax.predict --model FILE INPUT...`. Existing files are kept unless `--overwrite` is given.
Exit codes: 0 written; 1 a user error (one line on stderr).
"""

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
import sys
from typing import Sequence
import zipfile

import numpy as np

from ferjax import serving
from ferjax.inference import model as model_lib, run as run_lib


class ExportError(ValueError):
  """A user error: bad arguments, an existing output, a model the format cannot hold."""


def _closed_function(model: model_lib.CheckpointModel):
  """frames -> probs with the weights as constants of the traced function."""
  variables = model.variables

  def probs(frames, *extra):
    return model.function(variables, frames, *extra)
  return probs


def _input_specs(model) -> list:
  """One ShapeDtypeStruct per input of `metadata['inputs']` (frames first), sharing one symbolic B."""
  import jax  # pylint: disable=import-outside-toplevel
  signature = model.metadata.get('inputs') or model_lib.input_signature(
      ('frames',), model.num_frames, model.image_size)
  (batch,) = jax.export.symbolic_shape('B')
  return [jax.ShapeDtypeStruct((batch, *i['shape'][1:]), np.dtype(i['dtype'])) for i in signature]


def _check_dtype(model: model_lib.CheckpointModel, platforms: Sequence[str]) -> None:
  """A model whose dtype is the run's 'auto' must have been resolved for the artifact's platforms."""
  if getattr(model, 'auto_dtype_for', None) is None:
    return
  try:
    expected = run_lib.compute_dtype({'dtype': 'auto'}, platforms)
  except run_lib.RunError as e:
    raise ExportError(str(e)) from None
  if model.metadata['compute_dtype'] != expected:
    raise ExportError(f"model.dtype='auto' is {expected} on {list(platforms)}, but the model was loaded "
                      f"for {model.metadata['compute_dtype']}: load it with "
                      f'load_run_model(..., platforms={list(platforms)})')


def export_jax(model: model_lib.CheckpointModel, platforms: Sequence[str] = ('cpu',)) -> bytes:
  """The `.ferjax` zip (serialized jax.export artifact + metadata.json) as bytes."""
  import jax  # pylint: disable=import-outside-toplevel
  _check_dtype(model, platforms)
  exported = jax.export.export(jax.jit(_closed_function(model)), platforms=tuple(platforms))(
      *_input_specs(model))
  metadata = {**model.metadata, 'export': {'format': 'jax', 'platforms': list(platforms),
                                           'jax_version': jax.__version__,
                                           'calling_convention_version':
                                               exported.calling_convention_version}}
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
    archive.writestr(serving.METADATA_FILE, json.dumps(metadata, indent=1))
    archive.writestr(serving.MODEL_FILE, bytes(exported.serialize()))
  return buffer.getvalue()


def _max_pool_hw_last(inputs, window_shape, strides=None, padding='VALID'):
  """flax's max_pool for NHWC inputs, pooled as [H, W, N*C]: the same values, but a 3-D window.

  jax2onnx (0.13) turns reduce_window_max into an ONNX MaxPool whose spatial axes are all the operand's
  axes; onnxruntime pools at most three ("Unsupported pooling size") and NHWC has four.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax import lax  # pylint: disable=import-outside-toplevel
  n, h, w, c = inputs.shape
  window, strides = tuple(window_shape), tuple(strides or (1, 1))
  pads = (lax.padtype_to_pads((h, w), window, strides, padding) if isinstance(padding, str)
          else [tuple(p) for p in padding])
  x = jnp.transpose(inputs, (1, 2, 0, 3)).reshape(h, w, n * c)
  y = lax.reduce_window(x, -jnp.inf, lax.max, (*window, 1), (*strides, 1), (*pads, (0, 0)))
  return jnp.transpose(y.reshape(y.shape[0], y.shape[1], n, c), (2, 0, 1, 3))


def _stack_by_concatenate(arrays, axis=0, out=None, dtype=None):
  """jnp.stack without JAX's `stack` primitive (new in JAX 0.10; jax2onnx 0.13 has no rule for it)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  del out
  arrays = [jnp.asarray(a, dtype) for a in arrays]
  axis = axis if axis >= 0 else axis + arrays[0].ndim + 1
  return jnp.concatenate([jnp.expand_dims(a, axis) for a in arrays], axis)


@contextlib.contextmanager
def _onnx_friendly_ops():
  """While tracing for ONNX: jnp.stack and nnx.max_pool by ops jax2onnx converts (same values)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  saved = jnp.stack, nnx.max_pool
  jnp.stack, nnx.max_pool = _stack_by_concatenate, _max_pool_hw_last
  try:
    yield
  finally:
    jnp.stack, nnx.max_pool = saved


def export_onnx(model: model_lib.CheckpointModel, opset: int = 21) -> bytes:
  """The ONNX model (jax2onnx) with the metadata JSON in metadata_props, as bytes.

  The function is first traced to a jaxpr with a symbolic batch dimension (with `_onnx_friendly_ops`),
  and jax2onnx converts a replay of that jaxpr: it then sees only JAX primitives, not the flax modules its
  own flax rules would intercept (their conv rule fails on flax's list paddings under JAX >= 0.7).
  """
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
    import onnx  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ExportError("--format onnx needs jax2onnx and onnx: pip install 'ferjax[export]'") from None
  import jax  # pylint: disable=import-outside-toplevel
  _check_dtype(model, ['cpu'])
  specs = _input_specs(model)
  names = list(serving.input_names(model.metadata))
  with _onnx_friendly_ops():
    closed = jax.make_jaxpr(_closed_function(model))(*specs)

  def replay(*arrays):
    return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *arrays)[0]
  try:
    proto = jax2onnx.to_onnx(replay, specs, model_name='ferjax', opset=opset, input_names=names,
                             output_names=['probs'])
  except Exception as e:  # pylint: disable=broad-except  # jax2onnx raises many types for a missing rule.
    family = model.metadata.get('model', {}).get('name', '?')
    raise ExportError(f'jax2onnx cannot convert the {family!r} model (inputs {names}): '
                      f'{type(e).__name__}: {" ".join(str(e).split())[:300]}; --format jax supports it') \
        from None
  metadata = {**model.metadata, 'export': {'format': 'onnx', 'opset': opset,
                                           'jax2onnx_version': _version('jax2onnx')}}
  entry = proto.metadata_props.add()
  entry.key, entry.value = serving.ONNX_METADATA_KEY, json.dumps(metadata)
  onnx.checker.check_model(proto)
  return proto.SerializeToString()


def _version(package: str) -> str | None:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


SUFFIXES = {'jax': serving.JAX_SUFFIX, 'onnx': serving.ONNX_SUFFIX}


def export(model: model_lib.CheckpointModel, fmt: str, output: str | os.PathLike, *,
           overwrite: bool = False, platforms: Sequence[str] = ('cpu',)) -> Path:
  """Writes `model` as a `fmt` ('jax' | 'onnx') artifact to `output`; returns the absolute path."""
  path = Path(os.path.abspath(os.path.expanduser(os.fspath(output))))
  if fmt not in SUFFIXES:
    raise ExportError(f'--format must be one of {sorted(SUFFIXES)}; found {fmt!r}')
  if path.suffix != SUFFIXES[fmt]:
    raise ExportError(f'--output {path}: {fmt} artifacts are named *{SUFFIXES[fmt]}; found '
                      f'{path.suffix or "no suffix"!r}')
  if path.exists() and not overwrite:
    raise ExportError(f'{path} exists; pass --overwrite to replace it')
  if not path.parent.is_dir():
    raise ExportError(f'--output {path}: the folder {path.parent} does not exist')
  data = export_jax(model, platforms) if fmt == 'jax' else export_onnx(model)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(data)
  tmp.replace(path)
  return path


def run(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m ferjax.export', description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', help='a training run (best_checkpoint/ if any, else checkpoints/)')
  parser.add_argument('--checkpoint', help='a checkpoint step folder, or a folder of them (newest)')
  parser.add_argument('--format', required=True, choices=sorted(SUFFIXES))
  parser.add_argument('--output', required=True, help='FILE.ferjax (jax) or FILE.onnx (onnx)')
  parser.add_argument('--platforms', default='cpu',
                      help='jax format: comma-separated platforms to lower for (cpu,cuda,tpu)')
  parser.add_argument('--dtype', default='auto', choices=('auto', 'float32', 'bfloat16'),
                      help="compute dtype (default auto: the run's model.dtype, whose 'auto' is bfloat16 "
                           'for accelerator platforms and float32 for cpu, the platforms exported for)')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing output file')
  args = parser.parse_args(argv)
  from ferjax import checkpointing  # pylint: disable=import-outside-toplevel
  try:
    if bool(args.workdir) == bool(args.checkpoint):
      raise ExportError('expected exactly one of --workdir and --checkpoint')
    target = Path(os.path.abspath(os.path.expanduser(args.output)))
    if target.exists() and not args.overwrite:
      raise ExportError(f'{target} exists; pass --overwrite to replace it')
    if target.suffix != SUFFIXES[args.format]:
      raise ExportError(f'--output {target}: {args.format} artifacts are named '
                        f'*{SUFFIXES[args.format]}; found {target.suffix or "no suffix"!r}')
    platforms = [p.strip() for p in args.platforms.split(',') if p.strip()]
    # The artifact computes as its target does: onnxruntime runs it on a CPU.
    model = model_lib.load_run_model(args.workdir, args.checkpoint, dtype=args.dtype,
                                     platforms=platforms if args.format == 'jax' else ['cpu'])
    path = export(model, args.format, target, overwrite=args.overwrite, platforms=platforms)
  except (ExportError, run_lib.RunError, checkpointing.CheckpointMismatchError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  source = model.metadata['source']
  print(f'Wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {args.format} artifact of {source["path"]} '
        f'({source["selection"]}, step {source["step"]}); {len(model.class_names)} classes, T='
        f'{model.num_frames}, S={model.image_size}, compute dtype {model.metadata["compute_dtype"]}, '
        'batch dimension symbolic')
  return 0


def main() -> None:
  model_lib.quiet_library_logs()
  sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
  main()
