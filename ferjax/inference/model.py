"""The model inference runs: a run's selected checkpoint in process, or an exported artifact.

Both have the interface of `ferjax.serving.Model` (`predict(frames_uint8[B, T, S, S, 3], **inputs) ->
probs [B, C]`, `class_names`, `num_frames`, `image_size`, `inputs`, `metadata`). In process, the model
is `steps.eval_step`, the trainer's evaluation step itself, on the checkpoint's parameters and
BatchNorm statistics. `metadata` is what an artifact carries besides its weights (`ferjax.export`
writes it): the class names, the input signature, how the training data's faces were cropped, the
window, the compute dtype, and where the weights came from.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ferjax import serving
from ferjax.data import augment
from ferjax.inference import run as run_lib

# What the builders crop when a dataset's metadata does not say (tfds_builders.sequence_builder).
BUILDER_DEFAULT_CROP = {'detector': 'haar', 'margin': 0.25, 'size': 256, 'detect_frames': 8}
# Datasets whose frames are whole renders, not detector crops.
UNCROPPED_DATASETS = ('synthetic_expressions',)


def dataset_info(config: dict):
  """The TFDS DatasetInfo of the run's dataset (prepared or not), or None when its builder is unknown."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ferjax.data import datasets  # pylint: disable=import-outside-toplevel
  dataset = config['dataset']
  name = f'{dataset["name"]}/{dataset["config"]}' if dataset.get('config') else dataset['name']
  datasets.register_builder(dataset['name'])
  try:
    return tfds.builder(name, data_dir=dataset.get('data_dir') or None).info
  except Exception:  # pylint: disable=broad-except  # Unknown builder or config: no info.
    return None


def training_crop(config: dict, info) -> dict:
  """How the training data's faces were cropped: detector, margin, crop side (from the dataset's
  metadata `crop_options`; builder defaults when it has none; whole frames for rendered datasets)."""
  if config['dataset']['name'] in UNCROPPED_DATASETS:
    # The side of the stored frames (the `frames` feature, e.g. 32 for synthetic_expressions/tiny), not
    # the run's dataset.image_size: training resizes the stored frames, so predict must first shrink its
    # input to that side too. A model trained at 48 px on 32 px frames that saw 64 px video frames
    # resized straight to 48 got detail it never trained on (probabilities up to 0.1 off the trainer's
  # evaluation of the same frames).
    size = _stored_frame_side(info) or config['dataset']['image_size']
    return {'detector': 'none', 'margin': 0.0, 'size': int(size),
            'source': 'whole rendered frames (the dataset is drawn face-centred)'}
  options = dict(info.metadata.get('crop_options') or {}) if info is not None and info.metadata else {}
  return crop_from_options(options)


def crop_from_options(options: dict) -> dict:
  """predict's face crop from a builder's `crop_options` (the dict its dataset metadata records); the
  builder defaults when there are none."""
  if options:
    return {'detector': options.get('face_detector', 'haar'), 'margin': float(options.get('margin', 0.25)),
            'size': int(options.get('size', 256)), 'detect_frames': int(options.get('detect_frames', 8)),
            'source': 'dataset metadata crop_options'}
  return {**BUILDER_DEFAULT_CROP, 'source': 'builder defaults (the dataset metadata was not found)'}




def _stored_frame_side(info) -> int | None:
  """The side S of the dataset's stored frames (`frames` feature: Sequence(Image(shape=(S, S, 3)))), or
  None when the dataset's info or a fixed frame size is missing."""
  try:
    side = info.features['frames'].shape[-3]
  except (AttributeError, KeyError, IndexError, TypeError):
    return None
  return int(side) if side else None


def _normalization(config: dict) -> dict:
  """The on-device input scaling of the run (`dataset.normalization`), applied inside the model."""
  name = config['dataset'].get('normalization', 'imagenet')
  out = {'name': name, 'scale': 1 / 255, 'applied': 'inside the model'}
  if name == 'imagenet':
    out.update(mean=augment.IMAGENET_MEAN.tolist(), std=augment.IMAGENET_STD.tolist())
  return out


def input_signature(inputs: Sequence[str], num_frames: int, image_size: int) -> list[dict]:
  """The model's inputs in call order: `frames` first, then the family's extra inputs as the input
  pipeline makes them (`ferjax.data.pipeline.INPUTS`: name, dtype, shape with the batch as 'B')."""
  signature = [{'name': 'frames', 'dtype': 'uint8', 'shape': ['B', num_frames, image_size, image_size, 3]}]
  extra = [name for name in inputs if name != 'frames']
  if extra:
    from ferjax.data import pipeline  # pylint: disable=import-outside-toplevel  # grain: only when needed.
    for name in extra:
      spec = pipeline.INPUTS[name]
      signature.append({'name': name, 'dtype': np.dtype(spec.dtype).name,
                        'shape': ['B', *spec.shape(num_frames, image_size)]})
  return signature


def model_metadata(config: dict, class_names: Sequence[str], crop: dict, source: dict,
                   inputs: Sequence[str] = ('frames',), window: dict | None = None,
                   compute_dtype: str | None = None) -> dict:
  """What an artifact (and predict) needs besides the weights; see ferjax.serving."""
  t, s = int(config['dataset']['num_frames']), int(config['dataset']['image_size'])
  window = window or {'frames': t, 'source': 'T'}
  signature = input_signature(inputs, t, s)
  return {
      'format': serving.FORMAT,
      'class_names': list(class_names),
      'num_frames': t,
      'image_size': s,
      'input': '; '.join(f'{i["name"]} {i["dtype"]} [{", ".join(map(str, i["shape"]))}]' for i in signature)
               + '; output float32 class probabilities [B, C]',
      'inputs': signature,
      'preprocessing': {
          'face_crop': crop,
          'eval_crop': float(config['augment']['eval_crop']),
          'normalization': _normalization(config),
          # Which T frames of a window (config.dataset.sampling, evaluation indices).
          'sampling': config['dataset'].get('sampling', 'segments'),
          # Optical flow method (config.dataset.flow), for models whose inputs include flow.
          'flow': config['dataset'].get('flow', 'dis'),
          # Frames a prediction window spans (ferjax.predict's default --window).
          'window': window,
          # The config values the model's other inputs read (`ferjax.data.inputs.options`).
          'input_options': _input_options(config, inputs),
      },
      # What the model computes in ('auto' resolved for the platforms it was made for; None: the
      # family has no dtype field).
      'compute_dtype': compute_dtype,
      'dataset': {'name': config['dataset']['name'], 'config': config['dataset'].get('config', '')},
      'model': config['model'],
      'source': source,
  }


def _input_options(config: dict, inputs: Sequence[str]) -> dict:
  if all(name == 'frames' for name in inputs):
    return {}
  from ferjax.data import inputs as inputs_lib  # pylint: disable=import-outside-toplevel  # grain.
  return inputs_lib.options(config, inputs)


def window(info: dict, num_frames: int) -> dict:
  """The frames a prediction window spans: the training sequences' median length (run.json), else T."""
  median = (info.get('sequence_length') or {}).get('median')
  if median:
    return {'frames': int(median), 'source': 'median length of the training sequences'}
  return {'frames': int(num_frames), 'source': 'T (the run recorded no sequence length)'}


@dataclasses.dataclass
class CheckpointModel:
  """A run's model restored from a checkpoint: the same interface as `serving.Model`, plus `function`
  (pure `(variables, frames_uint8, *extra_inputs) -> probs`, extra inputs in the order of
  `metadata['inputs']`) and `variables` for export."""
  path: Path
  metadata: dict
  function: Callable
  variables: Any
  kind: str = 'checkpoint'
  # The platforms model.dtype='auto' was resolved for; None when the dtype was chosen explicitly.
  auto_dtype_for: tuple[str, ...] | None = None

  def __post_init__(self):
    import jax  # pylint: disable=import-outside-toplevel
    self.class_names = tuple(self.metadata['class_names'])
    self.num_frames = int(self.metadata['num_frames'])
    self.image_size = int(self.metadata['image_size'])
    self.inputs = serving.input_names(self.metadata)
    self._jitted = jax.jit(self.function)

  def predict(self, frames, **inputs) -> np.ndarray:
    """probs float32 [B, C] of uint8 frames [B, T, S, S, 3] and the model's other inputs by name."""
    arrays = serving.check_inputs(self.metadata, frames, inputs)
    if not len(arrays[0]):
      return np.zeros((0, len(self.class_names)), np.float32)
    return np.asarray(self._jitted(self.variables, *arrays), np.float32)


def load_run_model(workdir: str | None = None, checkpoint: str | None = None, *,
                   platforms: Sequence[str] | None = None, dtype: str = 'auto') -> CheckpointModel:
  """The model of a run (`workdir`: its selected checkpoint) or of one checkpoint folder.

  The compute dtype is `dtype` when it is not 'auto', else the run's `model.dtype`, whose 'auto' is
  resolved for `platforms` (default: this host's backend): an artifact for an accelerator computes in
  bfloat16 and one for a CPU in float32, wherever it is exported.
  """
  from ferjax import steps  # pylint: disable=import-outside-toplevel  # The trainer's stack only here.
  step_dir, run_dir = run_lib.select_checkpoint(workdir, checkpoint)
  config = run_lib.read_config(step_dir, run_dir)
  overrides, auto_for = {}, None
  if 'dtype' in config['model']:
    chosen = dtype if dtype != 'auto' else config['model']['dtype']
    overrides['dtype'] = run_lib.compute_dtype({'dtype': chosen}, platforms)
    if chosen == 'auto':
      import jax  # pylint: disable=import-outside-toplevel
      auto_for = tuple(platforms or [jax.default_backend()])
  info = dataset_info(config)
  run = run_lib.load_run(checkpoint=step_dir, model_overrides=overrides, dataset_info=info)
  # dataset.normalization ('imagenet' | 'unit'); configs from before the field was added are 'imagenet'.
  normalization = config['dataset'].get('normalization', 'imagenet')
  extra_names = tuple(name for name in run.family.inputs if name != 'frames')

  def function(variables, frames, *extra):
    batch = {'frames': frames, **dict(zip(extra_names, extra))}
    return steps.eval_step(run.graphdef, run.state(variables), batch, normalization)['probs']

  source = {'kind': 'checkpoint', 'path': os.fspath(step_dir), 'step': run.step,
            'selection': run.selection}
  metadata = model_metadata(config, run.class_names, training_crop(config, info), source,
                            run.family.inputs, window=window(run.info, config['dataset']['num_frames']),
                            compute_dtype=overrides.get('dtype'))
  return CheckpointModel(step_dir, metadata, function, run.variables, auto_dtype_for=auto_for)


def load_model(workdir: str | None = None, checkpoint: str | None = None, model: str | None = None):
  """A model with `predict(frames_uint8[B, T, S, S, 3]) -> probs [B, C]` from exactly one source."""
  given = [name for name, v in (('--workdir', workdir), ('--checkpoint', checkpoint), ('--model', model))
           if v]
  if len(given) != 1:
    raise run_lib.RunError(f'expected exactly one of --workdir, --checkpoint, --model; found '
                           f'{", ".join(given) or "none"}')
  if model:
    try:
      return serving.load(model)
    except serving.ArtifactError as e:
      raise run_lib.RunError(str(e)) from None
  return load_run_model(workdir, checkpoint)


def quiet_library_logs() -> None:
  """Orbax and jax2onnx log INFO/WARNING lines (e.g. a missing optional metadata file) that say nothing
  to a user of the CLI; errors still show."""
  import logging  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.ERROR)
  for name in ('jax2onnx', 'onnx_ir', 'orbax', 'absl'):
    logging.getLogger(name).setLevel(logging.ERROR)
