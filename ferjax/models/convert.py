"""Import and export PyTorch-layout weights: torchvision/timm ResNets, ``nn.GRU`` and ``nn.LSTM`` layers.

Files are ``.safetensors`` or ``.npz`` (read with ``allow_pickle=False``); pickle-based formats
(``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are never read. Convert those once with PyTorch yourself
(see docs/training.md).

Layout. Every ferjax module tree has a PyTorch-style "state dict" view (``torch_layout``):
module paths joined with dots (``layer1.0.conv1``; a ResNet's ``downsample.conv``/``downsample.bn``
are torchvision's ``downsample.0``/``downsample.1``) and, per layer type:

==================  ==========================================  =================================
ferjax              PyTorch key                                  layout change
==================  ==========================================  =================================
Conv ``kernel``     ``weight``                                   [kh, kw, I, O] ↔ [O, I, kh, kw]
Linear ``kernel``   ``weight``                                   [I, O] ↔ [O, I]
BatchNorm           ``weight, bias, running_mean, running_var``  (``num_batches_tracked`` ignored)
GRU, LSTM           ``weight_ih_l0, weight_hh_l0, bias_*_l0``    none
BiGRU, BiLSTM       ``..._l0`` (index 0), ``..._l0_reverse`` (1)  direction axis split
  [2, ...]
Stacked layer k     ``..._l<k>[_reverse]``                       (``load_stack``)
ECA/G-ECA conv      ``weight``                                   [k, 1, 1] ↔ [1, 1, k] (Conv1d)
anything else       its attribute name                           none
==================  ==========================================  =================================

Loading checks the file against that view and raises ``WeightsMismatchError`` (a ValueError)
listing missing keys, unexpected keys and shape mismatches before anything is written, so a
model is either fully loaded or left untouched. A file that cannot be read at all (missing,
pickle-based, truncated, not the format its name says) raises ``WeightsFileError``, a subclass of
``WeightsMismatchError`` whose one-line message names the file, so callers that show one show both.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import re
import sys
import zipfile
import zlib
from typing import Callable, Iterable, Mapping

import jax
import numpy as np
from absl import logging
from flax import nnx

from ferjax import paths
from ferjax.models import attention as attention_lib
from ferjax.models import recurrent
from ferjax.models import resnet as resnet_lib

PICKLE_SUFFIXES = ('.pt', '.pth', '.bin', '.ckpt', '.pkl', '.pickle')
ALWAYS_IGNORED = ('*num_batches_tracked',)
# Channel attention does not exist in torchvision/timm ResNets: keep its init if absent.
ATTENTION_KEYS = ('*.attn.*',)
_RECURRENT_KEY = re.compile(r'(^|\.)(weight|bias)_(ih|hh)_l\d+(_reverse)?$')
_MAX_LISTED = 20


class WeightsMismatchError(ValueError):
  """A weights file does not fit the model (missing/unexpected keys, wrong shapes)."""


class WeightsFileError(WeightsMismatchError):
  """A weights file cannot be read: missing, pickle-based, truncated/corrupt, or an unknown format.

  The message is one line that starts with the file name.
  """


# ------------------------------------------------------------------------------------------------
# Files.

_CONVERT_HINT = (
    'Convert it once where PyTorch is installed: load the state dict there, then `from '
    'safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in '
    'state_dict.items()}, "weights.safetensors")` (docs/training.md: "Starting from ImageNet weights").')
_PICKLE_MAGIC = b'\x80'  # pickle protocol >= 2
_ZIP_MAGIC = b'PK\x03\x04'  # .npz, and torch.save's default (zip) format


def _head(path: str, size: int = 4) -> bytes:
  with open(path, 'rb') as f:
    return f.read(size)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return dict(load_file(path))
  except SafetensorError as e:
    # The Rust library's message ("incomplete metadata, file not fully covered") names no file.
    head = _head(path)
    if head.startswith(_PICKLE_MAGIC) or head.startswith(_ZIP_MAGIC):
      raise WeightsFileError(f'{path}: not a safetensors file but, by its first bytes, a PyTorch '
                             'checkpoint (pickle), which ferjax never reads. '
                             f'{_CONVERT_HINT}') from e
    raise WeightsFileError(f'{path}: truncated or corrupt safetensors file ({_one_line(e)}); '
                           'download or convert it again.') from e


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise WeightsFileError(f'{path}: a single .npy array, not an .npz archive of named arrays '
                             '(write it with np.savez).')
    with loaded as f:
      arrays = {k: f[k] for k in f.files}
  except ValueError as e:
    if isinstance(e, WeightsFileError):
      raise
    if 'pickle' not in str(e):
      raise WeightsFileError(f'{path}: unreadable .npz file ({_one_line(e)}).') from e
    # numpy's message ("This file contains pickled (object) data ...") names no file.
    raise WeightsFileError(
        f'{path}: holds pickled Python objects, not plain arrays, and ferjax never unpickles '
        '(allow_pickle=False). Save plain arrays with np.savez(path, **arrays), or convert a '
        'PyTorch checkpoint as docs/training.md shows ("Starting from ImageNet weights").') from e
  except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
    raise WeightsFileError(f'{path}: truncated or corrupt .npz file ({type(e).__name__}: '
                           f'{_one_line(e)}); download or convert it again.') from e
  # A zip of other files (e.g. torch.save's archive/data.pkl): NpzFile gives their raw bytes.
  others = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
  if others:
    raise WeightsFileError(f'{path}: a zip archive with non-array members '
                           f'({", ".join(others[:3])}), not an .npz of arrays; a renamed PyTorch '
                           f'checkpoint? {_CONVERT_HINT}')
  return arrays


def _one_line(e: BaseException) -> str:
  return ' '.join(str(e).split())


def read_weights(path: str) -> dict[str, np.ndarray]:
  """Reads a ``.safetensors`` or ``.npz`` file into ``{key: float array}``; never unpickles.

  Raises:
    WeightsFileError: the file is pickle-based (``.pt``/``.pth``/``.bin``/...; not even opened),
      missing, truncated or corrupt, or of an unknown format; the one-line message names it.
  """
  lower = path.lower()
  if lower.endswith(PICKLE_SUFFIXES):
    raise WeightsFileError(
        f'{path}: pickle-based PyTorch files are not read by ferjax (they can run code). '
        f'{_CONVERT_HINT}')
  if not lower.endswith(('.safetensors', '.npz')):
    raise WeightsFileError(f'{path}: unknown weights format; expected a .safetensors or .npz file.')
  if not os.path.isfile(path):
    found = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise WeightsFileError(f'{path}: weights file {found}.')
  return _read_safetensors(path) if lower.endswith('.safetensors') else _read_npz(path)


def write_weights(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes ``arrays`` to ``.safetensors`` or ``.npz`` (chosen by the suffix)."""
  arrays = {k: np.asarray(v, order='C') for k, v in arrays.items()}  # keeps 0-d arrays 0-d
  if path.lower().endswith('.safetensors'):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(arrays, path)
  elif path.lower().endswith('.npz'):
    np.savez(path, **arrays)
  else:
    raise WeightsFileError(f'{path}: unknown weights format; expected a .safetensors or .npz file.')


# ------------------------------------------------------------------------------------------------
# The PyTorch view of a ferjax module tree.


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch tensor: which ferjax variable (and direction index) and how its layout maps."""
  variable: nnx.Variable
  index: int | None = None  # direction of a BiGRU variable
  to_torch: Callable[[np.ndarray], np.ndarray] = lambda a: a
  from_torch: Callable[[np.ndarray], np.ndarray] = lambda a: a

  def ferjax_shape(self) -> tuple[int, ...]:
    shape = tuple(self.variable.shape)
    return shape[1:] if self.index is not None else shape

  def torch_shape(self) -> tuple[int, ...]:
    # to_torch only transposes/indexes, so a zero-stride view gives the shape without memory.
    return self.to_torch(np.broadcast_to(np.float32(0), self.ferjax_shape())).shape

  def get(self) -> np.ndarray:
    value = np.asarray(self.variable[...])
    return self.to_torch(value[self.index] if self.index is not None else value)


def _conv_to_torch(a):  # [*k, I, O] -> [O, I, *k]
  return np.transpose(a, (a.ndim - 1, a.ndim - 2, *range(a.ndim - 2)))


def _conv_from_torch(a):  # [O, I, *k] -> [*k, I, O]
  return np.transpose(a, (*range(2, a.ndim), 1, 0))


def _key(path: Iterable) -> str:
  parts = [str(p) for p in path]
  # torchvision's downsample is Sequential(conv, bn): children "0" and "1".
  for i in range(len(parts) - 1):
    if parts[i] == 'downsample' and parts[i + 1] in ('conv', 'bn'):
      parts[i + 1] = '0' if parts[i + 1] == 'conv' else '1'
  return '.'.join(parts)


def _own_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
  return {k: v for k, v in vars(module).items() if isinstance(v, nnx.Variable)}


def _conv_entries(own, p):
  out = {p + 'weight': Entry(own['kernel'], None, _conv_to_torch, _conv_from_torch)}
  if 'bias' in own:
    out[p + 'bias'] = Entry(own['bias'])
  return out


def _linear_entries(own, p):
  out = {p + 'weight': Entry(own['kernel'], None, np.transpose, np.transpose)}
  if 'bias' in own:
    out[p + 'bias'] = Entry(own['bias'])
  return out


def _batchnorm_entries(own, p):
  names = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
  return {p + names[k]: Entry(v) for k, v in own.items()}


def _layer_entries(own, p):
  return {f'{p}{k}_l0': Entry(v) for k, v in own.items()}


def _bidirectional_entries(own, p):
  out = {}
  for k, v in own.items():
    out[f'{p}{k}_l0'] = Entry(v, 0)
    out[f'{p}{k}_l0_reverse'] = Entry(v, 1)
  return out


def _channel_conv_entries(own, p):
  return {p + 'weight': Entry(own['kernel'], None, _conv_to_torch, _conv_from_torch)}


# PyTorch keys of the variables a layer holds directly, by layer type: `(own variables, 'prefix.') ->
# {torch key: Entry}`. A family with a layer of its own registers its layout (`register_layout`); a layer
# of no registered type keeps its attribute names.
_LAYOUTS: dict[type, Callable[[dict, str], dict]] = {
    nnx.Conv: _conv_entries, nnx.Linear: _linear_entries, nnx.BatchNorm: _batchnorm_entries,
    recurrent.GRU: _layer_entries, recurrent.BiGRU: _bidirectional_entries,
    recurrent.LSTM: _layer_entries, recurrent.BiLSTM: _bidirectional_entries,
    attention_lib.ChannelConv1D: _channel_conv_entries,
}


def register_layout(layer_type: type, entries: Callable[[dict, str], dict]) -> None:
  """Registers the PyTorch layout of `layer_type` (see `_LAYOUTS`); it wins over its base classes'."""
  _LAYOUTS[layer_type] = entries


def _module_entries(module: nnx.Module, prefix: str) -> dict[str, Entry]:
  """PyTorch keys for the variables held directly by ``module`` (its type's registered layout, the most
  derived registered class first)."""
  own = _own_variables(module)
  p = prefix + '.' if prefix else ''
  for cls in type(module).__mro__:
    if cls in _LAYOUTS:
      return _LAYOUTS[cls](own, p)
  return {p + k: Entry(v) for k, v in own.items()}


def torch_layout(module: nnx.Module, *,
                 where: Callable[[nnx.Module], bool] | None = None) -> dict[str, Entry]:
  """The PyTorch state-dict view of ``module``: ``{torch key: Entry}``, keys relative to it.

  ``where`` restricts the view to submodules for which it returns True.
  """
  entries = {}
  for path, sub in nnx.iter_modules(module):
    if where is None or where(sub):
      entries.update(_module_entries(sub, _key(path)))
  return entries


def export_state_dict(module: nnx.Module, *, prefix: str = '',
                      where: Callable[[nnx.Module], bool] | None = None) -> dict[str, np.ndarray]:
  """``module``'s variables as a PyTorch-layout state dict (float32 numpy arrays)."""
  return {prefix + k: e.get() for k, e in torch_layout(module, where=where).items()}


# ------------------------------------------------------------------------------------------------
# Loading.


def _listing(title: str, items: list[str]) -> str:
  shown = ', '.join(items[:_MAX_LISTED])
  more = f' ... and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
  return f'\n  {title} ({len(items)}): {shown}{more}'


def _matches(key: str, patterns: Iterable[str]) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _select(state_dict, prefix, ignore, consider):
  """File keys under ``prefix`` (stripped) that are neither ignored nor filtered out."""
  file_keys, skipped = {}, 0
  for k, v in state_dict.items():
    rel = k[len(prefix):] if k.startswith(prefix) else None
    if rel is None or _matches(rel, ignore) or (consider is not None and not consider(rel)):
      skipped += 1
    else:
      file_keys[rel] = v
  return file_keys, skipped


def _check(entries: Mapping[str, Entry], file_keys, *, prefix: str, optional, source: str,
           target: str, all_keys: Iterable[str] = ()) -> None:
  """Raises WeightsMismatchError listing every way ``file_keys`` does not fit ``entries``."""
  missing = sorted(k for k in entries if k not in file_keys and not _matches(k, optional))
  unexpected = sorted(k for k in file_keys if k not in entries)
  mismatched = [f'{prefix}{k}: file {tuple(np.shape(v))} vs model {entries[k].torch_shape()}'
                for k, v in sorted(file_keys.items())
                if k in entries and tuple(np.shape(v)) != entries[k].torch_shape()]
  if not (missing or unexpected or mismatched):
    return
  msg = (f'Cannot load {source} into {target}: {len(missing)} missing, {len(unexpected)} '
         f'unexpected, {len(mismatched)} shape mismatches.')
  if missing:
    msg += _listing('missing keys (model has them, file does not)', [prefix + k for k in missing])
  if unexpected:
    msg += _listing('unexpected keys (file has them, model does not)',
                    [prefix + k for k in unexpected])
  if mismatched:
    msg += _listing('shape mismatches', mismatched)
  if not file_keys and all_keys:
    sample = ', '.join(sorted(all_keys)[:3])
    msg += (f'\n  No usable key in the file starts with prefix {prefix!r}; its keys look '
            f'like: {sample}')
  msg += ('\n  Check the architecture (arch, width, stage_sizes, hidden, merge) and the key '
          "prefix ('module.' from DataParallel, 'backbone.' from a larger model).")
  raise WeightsMismatchError(msg)


def _write(entries: Mapping[str, Entry], file_keys) -> int:
  """Writes the file's tensors into the variables; returns how many tensors were loaded."""
  # Assemble every variable first (a BiGRU variable comes from two keys), then assign.
  new_values: dict[int, tuple[nnx.Variable, np.ndarray]] = {}
  loaded = 0
  for k, e in entries.items():
    if k not in file_keys:
      continue
    var = e.variable
    if id(var) not in new_values:
      new_values[id(var)] = (var, np.array(var[...]))
    current = new_values[id(var)][1]
    value = e.from_torch(np.asarray(file_keys[k])).astype(current.dtype)
    if e.index is None:
      new_values[id(var)] = (var, value)
    else:
      current[e.index] = value
    loaded += 1
  for var, value in new_values.values():
    var[...] = value
  return loaded


def load_state_dict(module: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
                    prefix: str = '', optional: Iterable[str] = (),
                    ignore: Iterable[str] = (), consider: Callable[[str], bool] | None = None,
                    where: Callable[[nnx.Module], bool] | None = None,
                    source: str = 'state dict') -> dict[str, int]:
  """Loads a PyTorch-layout ``state_dict`` into ``module`` (in place), all or nothing.

  Args:
    module: the ferjax module (concrete, not from ``nnx.eval_shape``).
    state_dict: ``{key: array}``; only keys starting with ``prefix`` are considered, with the
      prefix stripped.
    prefix: e.g. ``'backbone.'`` when the file holds a larger model.
    optional: key patterns (fnmatch, relative) the model has but the file may lack; they keep
      their current values.
    ignore: key patterns (relative) in the file that are skipped.
    consider: if given, relative file keys for which it returns False are skipped silently.
    where: restricts the model side to submodules for which it returns True.
    source: name of the file for error messages.

  Returns:
    Counts: ``loaded`` tensors, ``kept`` (model tensors absent from the file, all optional) and
    ``skipped`` file keys (other prefix, ignored or filtered out).

  Raises:
    WeightsMismatchError: listing missing keys, unexpected keys and shape mismatches; nothing is
      written then.
  """
  entries = torch_layout(module, where=where)
  file_keys, skipped = _select(state_dict, prefix, tuple(ignore) + ALWAYS_IGNORED, consider)
  _check(entries, file_keys, prefix=prefix, optional=tuple(optional), source=source,
         target=type(module).__name__, all_keys=state_dict.keys())
  loaded = _write(entries, file_keys)
  return {'loaded': loaded, 'kept': len(entries) - loaded, 'skipped': skipped}


def _resnet_rules(classifier: bool) -> dict:
  """``optional``/``ignore`` patterns for torchvision/timm ResNet files."""
  return dict(optional=ATTENTION_KEYS + (() if classifier else ('fc.*',)),
              ignore=() if classifier else ('fc.*',))


def _as_state_dict(weights, what: str) -> tuple[Mapping[str, np.ndarray], str]:
  if isinstance(weights, (str, os.PathLike)):
    return read_weights(os.fspath(weights)), os.fspath(weights)
  return weights, what


def load_resnet(model: resnet_lib.ResNet, weights, *, prefix: str = '',
                classifier: bool = False) -> dict[str, int]:
  """Loads torchvision/timm-layout ResNet weights (a path or a state dict) into ``model``.

  Convolutions and BatchNorm (weights and running statistics) must all be present. Channel
  attention parameters (``*.attn.*``, absent from torchvision/timm files) are loaded when present
  (ferjax exports) and otherwise keep their init. The classifier ``fc.*`` is loaded only with
  ``classifier=True`` (then the model must have ``fc`` of the file's size); otherwise the file's
  ``fc.*`` is ignored and the model's ``fc``, if any, keeps its init.
  """
  if not isinstance(model, resnet_lib.ResNet):
    raise TypeError(f'load_resnet expects a ferjax ResNet, got {type(model).__name__}.')
  state_dict, source = _as_state_dict(weights, 'ResNet state dict')
  if classifier and model.fc is None:
    raise ValueError('classifier=True but the ResNet has no fc (build it with num_classes).')
  return load_state_dict(model, state_dict, prefix=prefix, source=source,
                         **_resnet_rules(classifier))


def export_resnet(model: resnet_lib.ResNet, path: str | None = None) -> dict[str, np.ndarray]:
  """torchvision-layout state dict of ``model`` (attention as ``*.attn.*``, classifier as ``fc.*``);
  writes it if given a ``.safetensors``/``.npz`` path. ``load_resnet`` of the result restores
  ``model`` exactly (with ``classifier=True`` for ``fc``)."""
  state_dict = export_state_dict(model)
  # PyTorch's BatchNorm buffers include a step counter; add it so `load_state_dict(strict=True)`
  # of a torchvision model accepts the file (ferjax ignores it on import).
  for key in [k for k in state_dict if k.endswith('.running_mean')]:
    state_dict[key[:-len('running_mean')] + 'num_batches_tracked'] = np.array(0, np.int64)
  if path is not None:
    write_weights(path, state_dict)
  return state_dict


_LAYER_TYPES = (recurrent.GRU, recurrent.BiGRU, recurrent.LSTM, recurrent.BiLSTM)


def _is_recurrent(m: nnx.Module) -> bool:
  return isinstance(m, _LAYER_TYPES)


def _layer_keys(state_dict, prefix: str, layer_index: int, to: str = '') -> dict[str, np.ndarray]:
  """The recurrent keys of PyTorch layer ``layer_index`` under ``prefix``, renamed ``<to>..._l0[_reverse]``."""
  suffix = re.compile(rf'_l{layer_index}(_reverse)?$')
  renamed = {}
  for k, v in state_dict.items():
    if k.startswith(prefix) and _RECURRENT_KEY.search(k) and suffix.search(k):
      renamed[to + suffix.sub(lambda m: '_l0' + (m.group(1) or ''), k[len(prefix):])] = v
  return renamed


def load_layer(layer, weights, *, prefix: str = '', layer_index: int = 0) -> dict[str, int]:
  """Loads layer ``layer_index`` of a PyTorch ``nn.GRU``/``nn.LSTM`` state dict (keys
  ``<prefix>weight_ih_l<k>`` ..., plus ``*_reverse`` for a bidirectional layer) into one ferjax GRU, BiGRU,
  LSTM or BiLSTM layer. Other layers' keys are skipped; a unidirectional layer rejects ``*_reverse`` keys,
  and a file of the other cell type fails on shapes (3H vs 4H gate rows)."""
  if not _is_recurrent(layer):
    raise TypeError(f'load_layer expects a ferjax GRU, BiGRU, LSTM or BiLSTM, got {type(layer).__name__}.')
  state_dict, source = _as_state_dict(weights, 'recurrent state dict')
  return load_state_dict(layer, _layer_keys(state_dict, prefix, layer_index),
                         source=f'{source} (layer {layer_index})')


def load_gru(layer: recurrent.GRU | recurrent.BiGRU, weights, *, prefix: str = '',
             layer_index: int = 0) -> dict[str, int]:
  """``load_layer`` for a GRU/BiGRU (a PyTorch ``nn.GRU`` state dict)."""
  if not isinstance(layer, (recurrent.GRU, recurrent.BiGRU)):
    raise TypeError(f'load_gru expects a ferjax GRU or BiGRU, got {type(layer).__name__}.')
  return load_layer(layer, weights, prefix=prefix, layer_index=layer_index)


def load_lstm(layer: recurrent.LSTM | recurrent.BiLSTM, weights, *, prefix: str = '',
              layer_index: int = 0) -> dict[str, int]:
  """``load_layer`` for an LSTM/BiLSTM (a PyTorch ``nn.LSTM`` state dict)."""
  if not isinstance(layer, (recurrent.LSTM, recurrent.BiLSTM)):
    raise TypeError(f'load_lstm expects a ferjax LSTM or BiLSTM, got {type(layer).__name__}.')
  return load_layer(layer, weights, prefix=prefix, layer_index=layer_index)


def load_stack(stack: recurrent.Stacked, weights, *, prefix: str = '') -> dict[str, int]:
  """Loads a PyTorch ``num_layers=k`` ``nn.GRU``/``nn.LSTM`` state dict into a ``recurrent.Stacked`` of k
  layers (PyTorch layer ``l<j>`` into ``stack.layers[j]``), all layers or nothing."""
  if not isinstance(stack, recurrent.Stacked):
    raise TypeError(f'load_stack expects a ferjax recurrent.Stacked, got {type(stack).__name__}.')
  state_dict, source = _as_state_dict(weights, 'recurrent state dict')
  renamed = {}
  for k in range(len(stack.layers)):
    renamed.update(_layer_keys(state_dict, prefix, k, to=f'layers.{k}.'))
  extra = sorted(k for k in state_dict if k.startswith(prefix) and _RECURRENT_KEY.search(k)
                 and int(re.search(r'_l(\d+)', k[len(prefix):]).group(1)) >= len(stack.layers))
  if extra:
    raise WeightsMismatchError(f'Cannot load {source} into a {len(stack.layers)}-layer recurrent stack: '
                               f'the file has more layers ({", ".join(extra[:4])}).')
  return load_state_dict(stack, renamed, source=source)


def load_recurrent(model: nnx.Module, weights, *, prefix: str = '') -> dict[str, int]:
  """Loads every GRU/BiGRU/LSTM/BiLSTM layer of ``model`` from PyTorch-layout keys named by module path, e.g.
  ``temporal.0.gru.1.weight_hh_l0`` or ``temporal.1.bigru.3.bias_ih_l0_reverse`` for Res-RBG.

  Only recurrent keys (``(weight|bias)_(ih|hh)_l<k>[_reverse]``) of the file are considered, so a
  full-model file works too; all recurrent layers of the model must be present.
  """
  state_dict, source = _as_state_dict(weights, 'GRU state dict')
  return load_state_dict(model, state_dict, prefix=prefix, where=_is_recurrent,
                         consider=lambda k: bool(_RECURRENT_KEY.search(k)), source=source)


def export_stack(stack: recurrent.Stacked) -> dict[str, np.ndarray]:
  """``stack`` as a PyTorch ``nn.GRU``/``nn.LSTM(num_layers=len(stack.layers))`` state dict (layer ``k``'s
  keys end in ``_l<k>[_reverse]``); ``load_stack`` of it restores ``stack``."""
  out = {}
  for k, layer in enumerate(stack.layers):
    for key, value in export_state_dict(layer).items():
      out[re.sub(r'_l0(_reverse)?$', lambda m: f'_l{k}' + (m.group(1) or ''), key)] = value
  return out


# Converters of weight files into submodules, `(matches(submodule) -> bool, load(submodule, path, *,
# prefix))`, most recently registered first: ResNets take torchvision/timm files, one GRU/BiGRU/LSTM/BiLSTM
# one PyTorch nn.GRU/nn.LSTM layer, a `recurrent.Stacked` a multi-layer one, a module holding recurrent
# layers every layer by path. A family registers converters for its
# own submodules with `register_converter`.
_CONVERTERS: list[tuple[Callable[[nnx.Module], bool], Callable[..., dict]]] = []


def register_converter(matches: Callable[[nnx.Module], bool], load: Callable[..., dict]) -> None:
  """Makes `init.<name>_weights` load with `load(submodule, path, prefix=...)` into every submodule for
  which `matches(submodule)` is True; it is tried before the converters registered earlier."""
  _CONVERTERS.insert(0, (matches, load))


def _contains_recurrent(m: nnx.Module) -> bool:
  return any(_is_recurrent(sub) for _, sub in nnx.iter_modules(m))


register_converter(_contains_recurrent, load_recurrent)
register_converter(_is_recurrent, load_layer)
register_converter(lambda m: isinstance(m, recurrent.Stacked), load_stack)
register_converter(lambda m: isinstance(m, resnet_lib.ResNet), load_resnet)


def _submodules(model: nnx.Module) -> list[str]:
  """Names of the model's attributes that a weights file can load into (a converter matches them)."""
  return sorted(name for name, sub in vars(model).items()
                if isinstance(sub, nnx.Module) and _loader(sub) is not None)


def _loader(sub: nnx.Module):
  """The first registered converter that matches the submodule; None if none does."""
  for matches, load in _CONVERTERS:
    if matches(sub):
      return load
  return None


def _load_submodule(model: nnx.Module, name: str, path: str, prefix: str) -> dict[str, int]:
  sub = getattr(model, name, None)
  if name == 'backbone' and isinstance(model, resnet_lib.ResNet):
    sub = model  # A bare ResNet model takes init.backbone_weights itself.
  loader = _loader(sub) if isinstance(sub, nnx.Module) else None
  if loader is None:
    raise WeightsMismatchError(
        f'init.{name}_weights={path!r}: {type(model).__name__} has no submodule {name!r} with a '
        f'PyTorch layout; expected one of {_submodules(model)}')
  return loader(sub, path, prefix=prefix)


def apply_pretrained(model: nnx.Module, init_config) -> dict[str, dict[str, int]]:
  """Applies pretrained weights named in ``init_config`` to ``model`` in place (before training).

  Reads (ConfigDict or mapping; absent/empty = skip):
    <name>_weights: ``.safetensors``/``.npz`` loaded into the submodule ``model.<name>`` with the
      converter its type calls for: a ResNet takes a torchvision/timm-layout file (``load_resnet``;
      Res-RBG's ``backbone``, RFSCNN's ``backbone_rgb`` and ``backbone_flow``), a GRU/BiGRU/LSTM/BiLSTM
      one PyTorch ``nn.GRU``/``nn.LSTM`` layer (``load_layer``), a ``recurrent.Stacked`` a multi-layer
      one (``load_stack``), a module holding recurrent layers every layer by path (``load_recurrent``). ``backbone_weights`` also loads into a model that is itself a ResNet.
    <name>_prefix: key prefix in that file (default ''), e.g. 'module.' or 'backbone.'.
    gru_weights / gru_prefix: PyTorch GRU keys named by module path for every GRU/BiGRU layer of the
      whole model (``load_recurrent``).

  Returns per-file counts (see ``load_state_dict``) under ``<name>`` ('backbone', 'gru', ...). Raises
  ``WeightsMismatchError`` naming the missing/unexpected keys and shape mismatches if a file does not
  fit, or the loadable submodules if ``<name>`` is not one of them.
  """
  items = dict(init_config.items()) if hasattr(init_config, 'items') else dict(vars(init_config))
  summary = {}
  for key, path in items.items():
    if not key.endswith('_weights') or not path:
      continue
    name = key[:-len('_weights')]
    path = paths.resolve(path)  # ferjax.paths resolves only the fields it knows; these may be new.
    prefix = items.get(f'{name}_prefix', '') or ''
    if name == 'gru':
      summary[name] = load_recurrent(model, path, prefix=prefix)
    else:
      summary[name] = _load_submodule(model, name, path, prefix)
    logging.info('Loaded %s weights from %s: %s', name, path, summary[name])
  return summary


# ------------------------------------------------------------------------------------------------
# Command line: check a file against an architecture, or export a fresh/converted ResNet.


def _build_resnet(args, abstract: bool):
  stage_sizes = tuple(int(s) for s in args.stage_sizes.split(',')) if args.stage_sizes else None
  make = lambda: resnet_lib.ResNet(args.arch, width=args.width, stage_sizes=stage_sizes,
                                   attention=args.attention, num_classes=args.num_classes,
                                   rngs=nnx.Rngs(0))
  return nnx.eval_shape(make) if abstract else make()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m ferjax.models.convert',
      description='Check or re-export torchvision/timm-layout ResNet weights for ferjax.')
  sub = parser.add_subparsers(dest='command', required=True)
  for name, help_ in (('check', 'check that FILE fits a ferjax ResNet (shapes only)'),
                      ('export', 'load FILE into a ferjax ResNet and export it to --out')):
    p = sub.add_parser(name, help=help_)
    p.add_argument('file')
    p.add_argument('--arch', default='resnet50', choices=sorted(resnet_lib.RESNET_SPECS))
    p.add_argument('--width', type=int, default=64)
    p.add_argument('--stage_sizes', default='', help='e.g. 3,4,6,3 (default: the arch\'s)')
    p.add_argument('--attention', default='none', choices=attention_lib.ATTENTION_NAMES)
    p.add_argument('--num_classes', type=int, default=None, help='also load fc.*')
    p.add_argument('--prefix', default='')
    if name == 'export':
      p.add_argument('--out', required=True, help='.safetensors or .npz')
  args = parser.parse_args(argv)
  try:
    return _run(args)
  except WeightsMismatchError as e:  # WeightsFileError included: one message, no traceback.
    print(f'error: {e}', file=sys.stderr)
    return 1


def _run(args) -> int:
  if args.command == 'export' and not args.out.lower().endswith(('.safetensors', '.npz')):
    # Checked before the (slow) load, not after it.
    raise WeightsFileError(f'{args.out}: unknown output format; expected a .safetensors or .npz '
                           'file.')
  state_dict = read_weights(args.file)
  model = _build_resnet(args, abstract=args.command == 'check')
  if args.command == 'check':
    # Shapes only, against the abstract model: nothing is allocated or written.
    rules = _resnet_rules(args.num_classes is not None)
    entries = torch_layout(model)
    file_keys, _ = _select(state_dict, args.prefix, rules['ignore'] + ALWAYS_IGNORED, None)
    _check(entries, file_keys, prefix=args.prefix, optional=rules['optional'],
           source=args.file, target=f'{args.arch} width {args.width}', all_keys=state_dict.keys())
    print(f'{args.file}: OK for {args.arch} width {args.width} '
          f'({sum(k in file_keys for k in entries)} of {len(entries)} tensors in the file).')
    return 0
  counts = load_resnet(model, state_dict, prefix=args.prefix,
                       classifier=args.num_classes is not None)
  export_resnet(model, args.out)
  print(f'loaded {counts}, wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
