"""Reading a training run: the checkpoint it selects, its config, its model family and its parameters.

Every reader of a run goes through this module: `ferjax.predict`, `ferjax.export` (and so the artifacts
`ferjax.serving` runs) and the trainer's `init.checkpoint` (e.g. RFSCNN's second stage).

**Which checkpoint.** A run *selects* `best_checkpoint/<step>` (the best validation UAR) when it has one,
else the newest step of `checkpoints/`: the model its report evaluated. A step folder, or a folder of
step folders (its newest step), can be named instead (`checkpoint=`).

**What is restored.** Only the parameters and the BatchNorm statistics (an Orbax partial restore, never
the optimizer state), checked against the shapes the run's config builds.

**The family.** `run.json` (written by `record_run` when training starts) says how to import the run's
model family in a fresh process: a module name (`{"module": "mypackage.myfamily"}`), or, for a family
defined in a config file outside any package, a copy of that file in the workdir with its SHA-256
(`{"file": "family/<hash>_<name>.py", "sha256": ...}`). A family defined in a config file outside the
repository therefore predicts and exports like a built-in one. It also records the class names, the
training sequences' typical length (the default window of `ferjax.predict`) and the compute dtype the
run trained with.
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
from pathlib import Path
import sys
from typing import Any

from etils import epath
import numpy as np

RUN_FILE = 'run.json'
FAMILY_DIR = 'family'
# How many records (evenly spaced) the typical sequence length is measured on: the median of a few
# hundred is as good as the whole split's, and each read costs a record's encoded frames.
LENGTH_SAMPLE = 256


class RunError(ValueError):
  """A run (or checkpoint) that cannot be read: one line naming what was expected and what was found."""


# ----------------------------------------------------------------------------------------------------------
# Which checkpoint a run selects.


def _latest_step_dir(directory: Path) -> Path | None:
  steps = sorted((int(p.name), p) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
  return steps[-1][1] if steps else None


def select_checkpoint(workdir: str | os.PathLike | None = None,
                      checkpoint: str | os.PathLike | None = None) -> tuple[Path, Path]:
  """(step folder holding `state/`, the run's workdir) for a run (`workdir`) or a `checkpoint` folder.

  A workdir's `best_checkpoint/` (best validation UAR) wins over `checkpoints/` (latest step).
  """
  if workdir:
    root = Path(os.path.abspath(os.path.expanduser(workdir)))
    if not root.is_dir():
      raise RunError(f'--workdir {root}: no such folder')
    for name in ('best_checkpoint', 'checkpoints'):
      if (root / name).is_dir() and (step := _latest_step_dir(root / name)) is not None:
        return step, root
    raise RunError(f'--workdir {root}: expected a training run with best_checkpoint/<step> or '
                   'checkpoints/<step>; found neither')
  path = Path(os.path.abspath(os.path.expanduser(checkpoint)))
  if not path.is_dir():
    raise RunError(f'--checkpoint {path}: no such folder')
  if (path / 'state').is_dir():
    return path, path.parent.parent
  step = _latest_step_dir(path)
  if step is None or not (step / 'state').is_dir():
    raise RunError(f'--checkpoint {path}: expected a step folder with state/ or a folder of step '
                   'folders (RUN/checkpoints, RUN/best_checkpoint); found neither')
  return step, path.parent


def selection(step_dir: Path) -> str:
  return 'best validation UAR' if step_dir.parent.name == 'best_checkpoint' else 'latest checkpoint'


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def read_config(step_dir: Path, workdir: Path) -> dict:
  """The config the checkpoint was saved with (its `config` item), else the workdir's config.json."""
  for candidate in (step_dir / 'config' / 'metadata', workdir / 'config.json'):
    config = _read_json(candidate)
    if isinstance(config, dict) and 'model' in config:
      return config
  raise RunError(f'{step_dir}: found no config (expected {step_dir / "config"} or '
                 f'{workdir / "config.json"})')


def read_info(workdir: Path) -> dict:
  """The run's `run.json` ({} for runs made before it was written)."""
  info = _read_json(Path(workdir) / RUN_FILE)
  return info if isinstance(info, dict) else {}


# ----------------------------------------------------------------------------------------------------------
# The model family: recorded when training starts, imported when the run is read.


def _defining_object(family):
  """The function (or class) whose source file defines `family`."""
  fn = family.from_config
  while hasattr(fn, 'func'):  # functools.partial
    fn = fn.func
  return getattr(fn, '__func__', fn)  # bound methods


def _source_file(obj) -> str | None:
  code = getattr(obj, '__code__', None)
  if code is not None:
    return code.co_filename
  try:
    return inspect.getfile(obj)
  except (TypeError, OSError):
    return None


def _importable_module(obj) -> str | None:
  """`obj`'s module name when a fresh process imports the same file by that name, else None (a config
  file loaded by path, a test module, `__main__`)."""
  name, file = getattr(obj, '__module__', None), _source_file(obj)
  if not name or name == '__main__' or not file:
    return None
  # Found by an import finder (sys.path, an editable install's finder), not only in sys.modules, where a
  # config file loaded by path also sits.
  top = name.split('.')[0]
  if not any(getattr(finder, 'find_spec', None) and finder.find_spec(top, None) is not None
             for finder in sys.meta_path):
    return None
  try:
    spec = importlib.util.find_spec(name)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.origin or not os.path.exists(spec.origin):
    return None
  return name if os.path.samefile(spec.origin, file) else None


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def family_recipe(family, workdir) -> dict:
  """How to import `family` in another process: its module, and (unless it is ferjax's own) a copy of
  its file in `workdir`, used when the module cannot be imported there."""
  obj = _defining_object(family)
  module = _importable_module(obj)
  recipe = {'name': family.name, **({'module': module} if module else {})}
  file = _source_file(obj)
  if (module or '').startswith('ferjax.') or not file or not os.path.isfile(file):
    return recipe  # Built in; or defined interactively: nothing to copy.
  source = Path(file)
  digest = _sha256(source)
  name = f'{FAMILY_DIR}/{digest[:12]}_{source.name}'
  copy = epath.Path(workdir) / name
  if not copy.exists():  # Named by content: an edited file gets a new copy, never overwrites one.
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(source.read_bytes())
  return {**recipe, 'file': name, 'sha256': digest, 'copied_from': os.fspath(source)}


def _exec_file(path: Path, name: str) -> None:
  module_name = f'ferjax_family_{name}_{_sha256(path)[:12]}'
  if module_name in sys.modules:
    return
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[module_name]
    raise


def import_family(name: str, workdir: Path):
  """The registered family `name`, imported first as `workdir/run.json` records when it is unknown."""
  from ferjax import models  # pylint: disable=import-outside-toplevel  # flax: only when a run is read.
  if name in models.names():
    return models.get_family(name)
  recipe = read_info(workdir).get('family') or {}
  where = Path(workdir) / RUN_FILE
  try:
    if recipe.get('module'):
      try:
        importlib.import_module(recipe['module'])
      except ImportError:
        if not recipe.get('file'):
          raise
    if name not in models.names() and recipe.get('file'):
      path = Path(workdir) / recipe['file']
      if not path.is_file():
        raise RunError(f'{where}: the family file {path} it names is missing')
      if recipe.get('sha256') and _sha256(path) != recipe['sha256']:
        raise RunError(f'{path}: changed since the run recorded it (sha256 {recipe["sha256"][:12]}...); '
                       'restore it or remove "sha256" from run.json to accept the change')
      _exec_file(path, name)
  except RunError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Any failure of the user's code: one line.
    raise RunError(f'{where}: importing the model family {name!r} ({recipe}) failed: '
                   f'{type(e).__name__}: {" ".join(str(e).split())[:200]}') from None
  if name in models.names():
    return models.get_family(name)
  raise RunError(
      f'model.name={name!r} is not a known model family (known: {", ".join(models.names())}); make it '
      f'known by recording in {where} "family": {{"module": "<module that registers it>"}} or '
      '{"file": "<config file that registers it>"}')


# ----------------------------------------------------------------------------------------------------------
# What training records: run.json.


def typical_length(source, sample: int = LENGTH_SAMPLE) -> dict:
  """The median frame count of a split's sequences (on up to `sample` evenly spaced records), with
  the range seen. `source` is random access; its records have `num_frames` or `frames`."""
  n = len(source)
  if not n:
    return {}
  picks = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(int))
  lengths = []
  for i in picks:
    record = source[int(i)]
    if 'num_frames' in record or 'frames' in record:
      lengths.append(int(record['num_frames']) if 'num_frames' in record else len(record['frames']))
  if not lengths:
    return {}
  return {'median': int(round(float(np.median(lengths)))), 'min': min(lengths), 'max': max(lengths),
          'records_read': len(lengths), 'records': n}


def record_run(workdir, config, class_names, train_source) -> dict:
  """Writes `workdir/run.json`: the family's import recipe, the class names, the training sequences'
  typical length and the compute dtype of this host. Returns what it wrote."""
  from ferjax import models  # pylint: disable=import-outside-toplevel
  workdir = epath.Path(workdir)
  model = dict(config['model'])
  info = {
      'family': family_recipe(models.get_family(model['name']), workdir),
      'class_names': list(class_names),
      'sequence_length': typical_length(train_source),
      'compute_dtype': compute_dtype(model),
  }
  (workdir / RUN_FILE).write_text(json.dumps(info, indent=2))
  return info


def compute_dtype(model_config: dict, platforms=None) -> str | None:
  """The compute dtype of `model.dtype` ('auto' resolved for `platforms`, default: this host's
  backend); None for a family without a dtype field. Several platforms must agree."""
  if 'dtype' not in model_config:
    return None
  from ferjax.models import precision  # pylint: disable=import-outside-toplevel
  names = {np.dtype(precision.resolve_dtype(model_config['dtype'], p)).name
           for p in (platforms or [None])}
  if len(names) > 1:
    raise RunError(f"model.dtype='auto' means {' on '.join(sorted(names))} for the platforms "
                   f'{list(platforms)}: export them separately, or choose one with --dtype')
  return names.pop()


# ----------------------------------------------------------------------------------------------------------
# Restoring the parameters.


def _strip_value(tree):
  """A saved nnx.State tree ({..., 'kernel': {'value': array}}) -> the pure dict ({'kernel': array})."""
  if isinstance(tree, dict):
    if set(tree) == {'value'}:
      return tree['value']
    return {k: _strip_value(v) for k, v in tree.items()}
  return tree


def _like(saved, target):
  """`saved` (Orbax's string keys: '0', '1') with the keys of `target` (nnx pure dicts use ints)."""
  if isinstance(target, dict):
    return {k: _like(saved[str(k)] if str(k) in saved else saved[k], v) for k, v in target.items()}
  return saved


def _flat(tree, prefix='') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}/'))
    return out
  return {prefix[:-1]: tree}


def restore_arrays(step_dir: Path) -> dict:
  """{'params': pure dict, 'model_state': pure dict} of a checkpoint's `state` (host numpy arrays)."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    tree = checkpointer.metadata(step_dir / 'state')
  except Exception as e:  # pylint: disable=broad-except  # Any unreadable checkpoint.
    raise RunError(f'{step_dir / "state"}: Orbax cannot read it ({type(e).__name__}: '
                   f'{" ".join(str(e).split())[:200]})') from None
  tree = getattr(tree, 'item_metadata', tree)
  tree = getattr(tree, 'tree', tree)
  if not isinstance(tree, dict) or not {'params', 'model_state'} <= set(tree):
    raise RunError(f'{step_dir / "state"}: expected a ferjax train state (params, model_state); '
                   f'found {sorted(tree) if isinstance(tree, dict) else type(tree).__name__}')
  item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                      {k: tree[k] for k in ('params', 'model_state')})
  restored = checkpointer.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  return _strip_value({k: restored[k] for k in item})


def _shape_differences(saved: dict, target: dict) -> list[str]:
  a = {k: tuple(np.shape(v)) for k, v in _flat(saved).items()}
  b = {k: tuple(np.shape(v)) for k, v in _flat(target).items()}
  return [f'{k}: {a.get(k)} in the checkpoint, {b.get(k)} in the config' for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


@dataclasses.dataclass
class Run:
  """A run read for inference.

  Attributes:
    config: the config the selected checkpoint was saved with (a plain dict).
    family: its registered model family.
    class_names: in the order of the model's outputs.
    graphdef, params, model_state: the model split as the trainer splits it (`nnx.split(model,
      nnx.Param, ...)`); params/model_state are templates, the values are `variables`.
    variables: {'params': ..., 'model_state': ...} pure dicts of device arrays, the checkpoint's values.
    step_dir, workdir: the selected step folder and the run's workdir.
    info: the run's run.json ({} for older runs).
  """
  config: dict
  family: Any
  class_names: tuple[str, ...]
  graphdef: Any
  params: Any
  model_state: Any
  variables: dict
  step_dir: Path
  workdir: Path
  info: dict

  @property
  def step(self) -> int:
    return int(self.step_dir.name)

  @property
  def selection(self) -> str:
    return selection(self.step_dir)

  def state(self, variables: dict | None = None):
    """A `steps.TrainState` holding only the model's variables (what `steps.eval_step` reads)."""
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from ferjax import steps  # pylint: disable=import-outside-toplevel
    variables = self.variables if variables is None else variables
    p, s = nnx.State(self.params), nnx.State(self.model_state)
    nnx.replace_by_pure_dict(p, variables['params'])
    nnx.replace_by_pure_dict(s, variables['model_state'])
    return steps.TrainState(step=None, params=p, model_state=s, opt_state=None, rng=None)


def class_names_of(config: dict, workdir: Path, info: dict, dataset_info=None) -> tuple[str, ...]:
  """From run.json, else the run's report.json, else the dataset builder's label feature."""
  if info.get('class_names'):
    return tuple(info['class_names'])
  report = _read_json(workdir / 'report.json')
  if isinstance(report, dict) and report.get('class_names'):
    return tuple(report['class_names'])
  if dataset_info is not None:
    return tuple(dataset_info.features['label'].names)
  raise RunError(f'{workdir}: cannot tell the class names (no run.json nor report.json, and the dataset '
                 f'{config["dataset"]["name"]!r} has no builder here)')


def load_run(workdir: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None, *,
             model_overrides: dict | None = None, dataset_info=None) -> Run:
  """The run's selected checkpoint (or `checkpoint`), its config, family, class names and parameters.

  `model_overrides` replace fields of the model config that do not change any array's shape (e.g.
  `{'dtype': 'bfloat16'}` for an export to an accelerator).
  """
  # pylint: disable=import-outside-toplevel  # The trainer's stack only when a checkpoint is read.
  from flax import nnx
  import jax
  import ml_collections
  from ferjax import models
  step_dir, run_dir = select_checkpoint(workdir, checkpoint)
  config = read_config(step_dir, run_dir)
  if model_overrides:
    config = {**config, 'model': {**config['model'], **model_overrides}}
  info = read_info(run_dir)
  family = import_family(config['model']['name'], run_dir)
  class_names = class_names_of(config, run_dir, info, dataset_info)
  model_config = ml_collections.ConfigDict(config['model'])
  abstract = nnx.eval_shape(lambda: models.create_model(model_config, len(class_names),
                                                         rngs=nnx.Rngs(0)))
  graphdef, params, model_state = nnx.split(abstract, nnx.Param, ...)
  target = {'params': nnx.to_pure_dict(params), 'model_state': nnx.to_pure_dict(model_state)}
  saved = restore_arrays(step_dir)
  bad = _shape_differences(saved, target)
  if bad:
    from ferjax import checkpointing  # pylint: disable=import-outside-toplevel
    raise checkpointing.CheckpointMismatchError(
        f'{step_dir} does not fit its config ({len(bad)} arrays differ, e.g. {"; ".join(bad[:3])}); '
        'use the config the checkpoint was trained with')
  variables = jax.device_put(_like(saved, target))
  return Run(config, family, class_names, graphdef, params, model_state, variables, step_dir, run_dir,
             info)


def init_from_run(model, workdir: str | os.PathLike) -> dict:
  """Sets `model`'s parameters and BatchNorm statistics from the checkpoint run `workdir` selects
  (`init.checkpoint`; best_checkpoint/ when the run has one). Every array of the model must be in the
  checkpoint with the same shape, and the checkpoint may hold no other: else
  `convert.WeightsMismatchError` lists the problems before anything is written. Returns
  {'loaded': number of arrays, 'step': step, 'path': the step folder, 'selection': why it}."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ferjax import paths  # pylint: disable=import-outside-toplevel
  from ferjax.models import convert  # pylint: disable=import-outside-toplevel
  try:
    step_dir, _ = select_checkpoint(paths.resolve(os.fspath(workdir)))
    saved = restore_arrays(step_dir)
  except RunError as e:
    raise convert.WeightsFileError(f'init.checkpoint names no run with a checkpoint: {e}') from None
  flat = {k.replace('/', '.'): v for section in ('params', 'model_state')
          for k, v in _flat(saved[section]).items()}
  live = {'.'.join(str(p) for p in path): var
          for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
  missing = sorted(k for k in live if k not in flat)
  unexpected = sorted(k for k in flat if k not in live)
  mismatched = [f'{k}: checkpoint {tuple(np.shape(flat[k]))} vs model {tuple(live[k].shape)}'
                for k in sorted(live) if k in flat and tuple(np.shape(flat[k])) != tuple(live[k].shape)]
  if missing or unexpected or mismatched:
    msg = (f'Cannot initialise {type(model).__name__} from {step_dir}: {len(missing)} missing, '
           f'{len(unexpected)} unexpected, {len(mismatched)} shape mismatches.')
    for title, items in (('missing (model has them, checkpoint does not)', missing),
                         ('unexpected (checkpoint has them, model does not)', unexpected),
                         ('shape mismatches', mismatched)):
      if items:
        msg += f'\n  {title} ({len(items)}): {", ".join(items[:20])}' + (
            f' ... and {len(items) - 20} more' if len(items) > 20 else '')
    msg += '\n  init.checkpoint needs a run of the same architecture (model.* fields).'
    raise convert.WeightsMismatchError(msg)
  for key, var in live.items():
    var[...] = np.asarray(flat[key]).astype(var[...].dtype)
  return {'loaded': len(live), 'step': int(step_dir.name), 'path': os.fspath(step_dir),
          'selection': selection(step_dir)}
