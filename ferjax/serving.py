"""Runs an exported ferjax model without the training code: `ferjax.serving.load(path).predict(frames)`.

`python -m ferjax.export` writes two kinds of artifact; both hold the model *and* what is needed to feed it:

* `.ferjax` (format `jax`): a zip file with `model.jax`, a serialized `jax.export.Exported` (StableHLO,
  symbolic batch dimension `B`), and `metadata.json`. One file, so the model and its class names and
  preprocessing constants cannot be separated. Needs only jax/jaxlib to run (`jax.export.deserialize`);
  no flax, optax, orbax or ferjax model code.
* `.onnx` (format `onnx`): the same function as an ONNX graph (batch dimension `B`), with the same metadata
  JSON in the model's `metadata_props` under the key `ferjax`. Needs onnxruntime (`pip install
  'ferjax[export]'`).

Both take uint8 RGB face crops `[B, T, S, S, 3]` (T = `num_frames`, S = `image_size`) and return float32
class probabilities `[B, C]` in the order of `class_names`; the ImageNet normalisation runs inside the
model. Families with more inputs take them after the frames, in the order of `metadata['inputs']` (name,
dtype, shape with the batch as 'B'), as keyword arguments of `predict`: RFSCNN takes `flow` float32
`[B, T - 1, S, S, 3]` (dx, dy, magnitude in output pixels, computed as `ferjax.data.flow` does with
`preprocessing.flow`; `ferjax.predict` computes it from the window's crops). The metadata also says how the crops were made in training (`preprocessing`), which
`ferjax.predict` follows: a square face box with `face_crop.margin`, resized to `face_crop.size`, then a
centre crop of `eval_crop` of its side resized to S.

This module imports only numpy, jax (for `.ferjax`) or onnxruntime (for `.onnx`), never the trainer.
"""

import json
import os
from pathlib import Path
from typing import Any
import zipfile

import numpy as np

FORMAT = 'ferjax-model/1'
MODEL_FILE = 'model.jax'
METADATA_FILE = 'metadata.json'
ONNX_METADATA_KEY = 'ferjax'
JAX_SUFFIX = '.ferjax'
ONNX_SUFFIX = '.onnx'


class ArtifactError(ValueError):
  """A file that is not a readable ferjax model artifact."""


def input_names(metadata: dict) -> tuple[str, ...]:
  """The model's inputs in call order (`frames` first); artifacts from before `inputs` was recorded
  take frames only."""
  return tuple(i['name'] for i in metadata.get('inputs') or [{'name': 'frames'}])


def check_inputs(metadata: dict, frames: Any, inputs: dict) -> list[np.ndarray]:
  """[frames, *other inputs] in call order as contiguous arrays of the signature's dtype and shape
  (B from the frames), or a one-line ValueError naming what was expected and what was found."""
  t, s = int(metadata['num_frames']), int(metadata['image_size'])
  frames = check_frames(frames, t, s)
  names = input_names(metadata)
  if set(inputs) != set(names[1:]):
    raise ValueError(f'expected inputs {list(names)}; found {["frames", *sorted(inputs)]}')
  arrays = [frames]
  for spec in metadata.get('inputs', [])[1:]:
    value = np.asarray(inputs[spec['name']])
    shape = (len(frames), *spec['shape'][1:])
    if value.shape != shape:
      raise ValueError(f'expected {spec["name"]} {spec["dtype"]} [B, {", ".join(map(str, shape[1:]))}] '
                       f'with B = {len(frames)} (the frames\'); found {value.dtype} {list(value.shape)}')
    arrays.append(np.ascontiguousarray(value, spec['dtype']))
  return arrays


def check_frames(frames: Any, num_frames: int, image_size: int) -> np.ndarray:
  """uint8 [B, T, S, S, 3] as a contiguous array, or a one-line ValueError naming the found shape."""
  frames = np.asarray(frames)
  expected = (num_frames, image_size, image_size, 3)
  if frames.ndim != 5 or frames.shape[1:] != expected or frames.dtype != np.uint8:
    raise ValueError(f'expected uint8 frames [B, {", ".join(map(str, expected))}]; found '
                     f'{frames.dtype} {list(frames.shape)}')
  return np.ascontiguousarray(frames)


class Model:
  """A loaded artifact: `predict(frames_uint8[B, T, S, S, 3], **other_inputs) -> probs float32 [B, C]`.

  Attributes:
    metadata: the artifact's metadata dict (class names, T, S, inputs, preprocessing, provenance).
    class_names, num_frames, image_size: shortcuts into `metadata`.
    inputs: the input names in call order (`frames`, then e.g. `flow` for RFSCNN).
    path: the artifact's file; kind: 'jax' or 'onnx'.
  """

  def __init__(self, path: Path, kind: str, metadata: dict, run):
    self.path, self.kind, self.metadata = path, kind, metadata
    self.class_names = tuple(metadata['class_names'])
    self.num_frames = int(metadata['num_frames'])
    self.image_size = int(metadata['image_size'])
    self.inputs = input_names(metadata)
    self._run = run

  def predict(self, frames, **inputs) -> np.ndarray:
    """Class probabilities of uint8 frames and the model's other inputs (`metadata['inputs']`), e.g.
    `predict(frames, flow=flow)` for a model with an optical-flow stream."""
    arrays = check_inputs(self.metadata, frames, inputs)
    if not len(arrays[0]):
      return np.zeros((0, len(self.class_names)), np.float32)
    return np.asarray(self._run(*arrays), np.float32)

  def __repr__(self) -> str:
    return (f'Model({self.path}, {self.kind}, T={self.num_frames}, S={self.image_size}, '
            f'classes={list(self.class_names)})')


def _check_metadata(metadata: Any, path: Path) -> dict:
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
    found = metadata.get('format') if isinstance(metadata, dict) else type(metadata).__name__
    raise ArtifactError(f'{path}: expected ferjax metadata of format {FORMAT!r}; found {found!r}')
  return metadata


def _load_jax(path: Path) -> Model:
  from jax import export  # pylint: disable=import-outside-toplevel  # Only .ferjax needs jax.
  try:
    with zipfile.ZipFile(path) as archive:
      metadata = json.loads(archive.read(METADATA_FILE))
      blob = archive.read(MODEL_FILE)
  except (zipfile.BadZipFile, KeyError, ValueError) as e:
    raise ArtifactError(f'{path}: not a ferjax jax artifact (a zip with {MODEL_FILE} and '
                        f'{METADATA_FILE}): {e}') from None
  metadata = _check_metadata(metadata, path)
  exported = export.deserialize(bytearray(blob))
  return Model(path, 'jax', metadata, exported.call)


def _load_onnx(path: Path) -> Model:
  try:
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ArtifactError(f'{path}: running an ONNX model needs onnxruntime: '
                        "pip install 'ferjax[export]'") from None
  try:
    session = onnxruntime.InferenceSession(os.fspath(path), providers=['CPUExecutionProvider'])
  except Exception as e:  # pylint: disable=broad-except  # onnxruntime raises its own types.
    raise ArtifactError(f'{path}: onnxruntime cannot load it: {" ".join(str(e).split())[:200]}') from None
  props = session.get_modelmeta().custom_metadata_map
  if ONNX_METADATA_KEY not in props:
    raise ArtifactError(f'{path}: an ONNX model without ferjax metadata (metadata_props key '
                        f'{ONNX_METADATA_KEY!r}); export it with python -m ferjax.export')
  metadata = _check_metadata(json.loads(props[ONNX_METADATA_KEY]), path)
  names = [i.name for i in session.get_inputs()]
  return Model(path, 'onnx', metadata, lambda *arrays: session.run(None, dict(zip(names, arrays)))[0])


def load(path: str | os.PathLike) -> Model:
  """The model in a `.ferjax` (jax.export) or `.onnx` artifact written by `python -m ferjax.export`."""
  path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
  if not path.is_file():
    raise ArtifactError(f'no such model artifact: {path}')
  if path.suffix == ONNX_SUFFIX:
    return _load_onnx(path)
  if zipfile.is_zipfile(path):
    return _load_jax(path)
  raise ArtifactError(f'{path}: expected a {JAX_SUFFIX} (zip) or {ONNX_SUFFIX} model artifact; found '
                      'neither')
