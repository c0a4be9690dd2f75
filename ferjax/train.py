r"""Trains and evaluates a sequence model: `python -m ferjax.train --config configs/res_rbg.py --workdir DIR`.

The one training loop of ferjax. It runs unchanged on a CPU, a GPU or every host of a TPU pod (start the same
command on each host; `jax.distributed.initialize()` finds the others). Rerunning the same command in the
same workdir resumes from the last checkpoint, with the data pipeline at the same position.

Workdir contents: `config.json`, `checkpoints/` (Orbax), `metrics.jsonl`, `tensorboard/`, and at the end
`report.json` (WAR, UAR, macro-F1, per-class recall, confusion matrix on the test split) and
`confusion_matrix.png`.
"""

import json
import math
import os
import sys
import time

from absl import app, flags, logging
from etils import epath
from flax import nnx
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np

from ferjax import checkpointing, config as config_lib, metrics, sharding, steps
from ferjax import models
from ferjax.models import convert
from ferjax.data import augment, datasets, pipeline, protocols

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/<family>.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the report go.')
_MULTIPROCESS = flags.DEFINE_bool(
    'multiprocess', None, 'Call jax.distributed.initialize() (default: on TPU VMs / SLURM / when '
    'JAX_COORDINATOR_ADDRESS is set).')


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def _loaders(config, dataset, splits, shard):
  options = augment.AugmentOptions.from_config(config.augment)
  common = dict(num_frames=config.dataset.num_frames, image_size=config.dataset.image_size,
                options=options, shard_index=shard[0], shard_count=shard[1])
  train = pipeline.train_loader(
      dataset.source(splits.train), batch_size_per_host=shard[2], seed=config.seed,
      worker_count=config.input.worker_count, **common)

  def evaluation(split):
    return pipeline.eval_batches(dataset.source(split), batch_size_per_host=shard[3], **common)
  return train, evaluation


def _init_model(config, num_classes):
  model = models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=config.seed))
  if config.init.backbone_weights or config.init.gru_weights:
    convert.apply_pretrained(model, config.init)
    _log(f'Imported pretrained weights: {config.init.backbone_weights or "-"} (backbone), '
         f'{config.init.gru_weights or "-"} (GRU)')
  return model


def _describe_params(model) -> None:
  counts = models.count_params(model)
  width = max(map(len, counts))
  _log('Parameters:\n' + '\n'.join(f'  {k:<{width}} {v:>13,}' for k, v in counts.items()))


def evaluate(eval_fn, state, batches, mesh, class_names) -> dict:
  """Runs the model over every example of `batches` (padded rows masked out) -> classification report."""
  labels, preds = [], []
  for batch in batches:
    batch = sharding.global_batch(batch, mesh)
    pred, label, keep = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                         for x in (eval_fn(state, batch)['pred'], batch['label'], batch['mask']))
    labels.append(label[keep])
    preds.append(pred[keep])
  if not labels:
    raise ValueError('the evaluation split is empty')
  return metrics.classification_report(np.concatenate(labels), np.concatenate(preds), class_names)


def _write_report(workdir: epath.Path, report: dict, title: str) -> None:
  if jax.process_index() != 0:
    return
  (workdir / 'report.json').write_text(json.dumps(report, indent=2))
  metrics.save_confusion_matrix_png(np.array(report['confusion_matrix']), report['class_names'],
                                    os.fspath(workdir / 'confusion_matrix.png'), title=title)


def _write_config(workdir: epath.Path, config) -> None:
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(json.dumps(config_lib.to_dict(config), indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config`'s model on its fold's training split, evaluates on the test split; returns the report."""
  config_lib.validate(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  dataset = datasets.prepare(config.dataset)
  splits = protocols.splits_for(dataset.split_names, config.dataset.fold,
                                config.dataset.holdout_validation)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  local_batch = sharding.check_batch_size(config.input.batch_size, mesh)
  local_eval_batch = sharding.check_batch_size(config.input.eval_batch_size, mesh,
                                               'input.eval_batch_size')
  shard = (jax.process_index(), jax.process_count(), local_batch, local_eval_batch)
  train_loader, eval_batches = _loaders(config, dataset, splits, shard)

  num_train = len(dataset.source(splits.train))
  steps_per_epoch = max(num_train // config.input.batch_size, 1)
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else math.ceil(config.train.num_epochs * steps_per_epoch))
  _log(f'Dataset {dataset.name}: {len(dataset.class_names)} classes {list(dataset.class_names)}\n'
       f'  train {splits.train} ({num_train} sequences), validation {splits.validation or "-"}, '
       f'test {splits.test}\n'
       f'Mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, '
       f'{jax.process_count()} process(es); global batch {config.input.batch_size}, '
       f'{total_steps} steps ({total_steps / steps_per_epoch:.1f} epochs)')

  model = _init_model(config, len(dataset.class_names))
  _describe_params(model)
  tx = steps.make_optimizer(config.train, total_steps,
                            round(config.train.warmup_epochs * steps_per_epoch))
  graphdef, state = steps.init_state(model, tx, config.seed)
  del model
  state_sharding = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sharding)

  checkpointer = checkpointing.Checkpointer(
      os.fspath(workdir / 'checkpoints'), max_to_keep=config.train.max_to_keep,
      save_every_steps=config.train.checkpoint_every_steps)
  train_iter = iter(train_loader)
  config_dict = config_lib.to_dict(config)
  if (step := checkpointer.latest_step) is not None:
    checkpointer.check_compatible(step, abstract_state, config_dict)
    state = checkpointer.restore(step, abstract_state, train_iter)
    _log(f'Resumed from {checkpointer.directory} at step {step}')
  _write_config(workdir, config)

  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  train_fn = steps.jit_train_step(graphdef, tx, config.train.label_smoothing, state_sharding,
                                  batch_sharding, replicated)
  eval_fn = steps.jit_eval_step(graphdef, state_sharding, batch_sharding)
  writer = metrics.MetricWriter(os.fspath(workdir))

  step = int(state.step)
  last_saved = step
  pending, t0, t0_step = [], None, step
  while step < total_steps:
    batch = sharding.global_batch(next(train_iter), mesh)
    state, step_metrics = train_fn(state, batch)
    step += 1
    pending.append(step_metrics)
    if step % config.train.log_every_steps == 0 or step == total_steps or \
        checkpointer.should_save(step):
      summed = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(pending))
      if summed['nonfinite']:
        checkpointer.close()
        raise TrainingDiverged(
            f'the training loss became NaN/inf by step {step}; training stopped. The last good '
            f'checkpoint (step {last_saved if checkpointer.latest_step is not None else "none"}) '
            f'is kept in {checkpointer.directory}. Lower train.learning_rate or set '
            f'train.grad_clip.')
      rate = (step - t0_step) / (time.perf_counter() - t0) if t0 and step > t0_step else 0.0
      scalars = {'loss': summed['loss'] / len(pending),
                 'accuracy': summed['correct'] / summed['count'],
                 'grad_norm': summed['grad_norm'] / len(pending), 'steps_per_sec': rate}
      writer.write(step, 'train', scalars)
      _log(f'step {step:>6}/{total_steps}  loss {scalars["loss"]:.4f}  '
           f'acc {100 * scalars["accuracy"]:5.1f}%  {rate:.2f} steps/s  '
           f'ETA {_eta((total_steps - step) / rate) if rate else "-"}')
      pending = []
    if splits.validation and (step % config.train.eval_every_steps == 0 or step == total_steps):
      report = evaluate(eval_fn, state, eval_batches(splits.validation), mesh, dataset.class_names)
      writer.write(step, 'validation', {k: report[k] for k in ('war', 'uar', 'macro_f1')})
      _log(f'  validation ({splits.validation}): WAR {100 * report["war"]:.2f}%  '
           f'UAR {100 * report["uar"]:.2f}%')
    if checkpointer.should_save(step) or step == total_steps:
      checkpointer.save(step, state, train_iter, config_dict)
      last_saved = step
    if checkpointer.preempted(step):
      checkpointer.close()
      _log(f'Preempted: saved step {step}; rerun the same command to resume.')
      sys.exit(0)
    if t0 is None:  # Start the clock after the first (compiling) step.
      jax.block_until_ready(state)
      t0, t0_step = time.perf_counter(), step

  report = evaluate(eval_fn, state, eval_batches(splits.test), mesh, dataset.class_names)
  report.update(dataset=dataset.name, split=splits.test, fold=config.dataset.fold, step=step)
  writer.write(step, 'test', {k: report[k] for k in ('war', 'uar', 'macro_f1')})
  writer.close()
  _write_report(workdir, report, f'{dataset.name} {splits.test} (step {step})')
  checkpointer.close()
  _log(f'Test ({splits.test}, {report["num_examples"]} sequences): WAR {100 * report["war"]:.2f}%  '
       f'UAR {100 * report["uar"]:.2f}%  macro-F1 {100 * report["macro_f1"]:.2f}%\n'
       f'Report: {workdir / "report.json"}')
  return report


def _maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` on TPU VMs, under SLURM, or when asked (see --multiprocess).

  Outside a cluster JAX auto-detects, JAX (0.10) reads only JAX_COORDINATOR_ADDRESS from the environment,
  not the process count nor this process's id, so a hand-started job (e.g. two processes on one machine)
  also sets JAX_NUM_PROCESSES and JAX_PROCESS_ID; they are passed on when present.
  """
  wanted = _MULTIPROCESS.value
  if wanted is None:
    wanted = any(v in os.environ for v in ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID',
                                           'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS'))
  if not wanted:
    return
  explicit = {}
  for name, arg in (('JAX_NUM_PROCESSES', 'num_processes'), ('JAX_PROCESS_ID', 'process_id')):
    if (value := os.environ.get(name, '').strip()):
      try:
        explicit[arg] = int(value)
      except ValueError:
        sys.exit(f'error: {name} must be an integer; found {value!r}')
  try:
    jax.distributed.initialize(**explicit)
  except ValueError as e:  # JAX found no cluster to take the missing values from.
    if 'must be defined' not in str(e):
      raise
    sys.exit(f'error: jax.distributed.initialize(): {e} Outside a cluster JAX recognises (TPU VM, SLURM, '
             'Open MPI, ...) set JAX_COORDINATOR_ADDRESS=<host:port of process 0>, JAX_NUM_PROCESSES '
             'and JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES-1) on every process.')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  if _CONFIG.value is None or not _WORKDIR.value:
    sys.exit('usage: python -m ferjax.train --config configs/<family>.py[:arg] --workdir DIR')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO logs (Orbax, TFDS) with --verbosity=0.
  _maybe_initialize_distributed()
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, checkpointing.CheckpointMismatchError,
          protocols.DatasetNotPreparedError, convert.WeightsMismatchError, TrainingDiverged) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
