r"""Trains and evaluates a sequence model: `python -m ferjax.train --config configs/res_rbg.py --workdir DIR`.

The one training loop of ferjax. It runs unchanged on a CPU, a GPU or every host of a TPU pod (start the same
command on each host; `jax.distributed.initialize()` finds the others). Rerunning the same command in the
same workdir resumes from the last checkpoint, with the data pipeline at the same position.

Protocol (`ferjax/data/protocols.py`): by default the model trains on every non-test fold and the final
model is reported, as the papers do. With `dataset.holdout_validation=True` the next fold is held out, the
model is validated every `train.eval_every_steps`, and the checkpoint with the best validation UAR (ties go to
the later step) is the one evaluated on the test split. The test split never influences training or selection.

Workdir contents: `config.json` (+ `config_history.jsonl`), `checkpoints/` (Orbax), `best_checkpoint/` (with a
validation split), `metrics.jsonl`, `tensorboard/`, `run.lock` while running, and at the end `report.json`
(WAR, UAR, macro-F1, per-class scores, confusion matrix, which checkpoint was selected) and
`confusion_matrix.png`.

Validation is scored with its own test-time augmentation setting (`eval.validation_tta_copies`, default
none); `eval.tta_copies` scores the test split. A checkpoint that cannot be read because it is corrupt is
moved aside and the previous one is used; any other read failure stops the run with nothing moved; a run
whose checkpoints are all unreadable starts over only with `--start_over` (docs/training-reliability.md).

Exit codes of the CLI: 0 done; 1 a user error (one line on stderr); EXIT_PREEMPTED (143) after SIGTERM,
once the state is saved: schedulers' requeue rules treat it as "terminated by a signal, run again".
"""

from collections.abc import Sequence
import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable

from absl import app, flags, logging
from etils import epath
from flax import nnx
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np

from ferjax import (checkpointing, config as config_lib, metrics, paths, plateau, provenance, sharding,
                    steps, workdir as workdir_lib)
from ferjax import models
from ferjax.models import convert
from ferjax.data import datasets, pipeline, protocols, spec
from ferjax.inference import run as run_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/<family>.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the report go.')
_MULTIPROCESS = flags.DEFINE_bool(
    'multiprocess', None, 'Call jax.distributed.initialize() (default: on TPU VMs / SLURM / when '
    'JAX_COORDINATOR_ADDRESS is set).')
_DEBUG = flags.DEFINE_bool('debug', False, 'Show the full traceback of errors.')
_START_OVER = flags.DEFINE_bool(
    'start_over', False, 'Train from step 0 although the workdir holds checkpoints that cannot be read '
    '(they stay in checkpoints_unreadable/).')

# 128 + SIGTERM: what a scheduler sees from a job its preemption signal ended, so requeue rules match it.
EXIT_PREEMPTED = 128 + signal.SIGTERM


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


class Preempted(RuntimeError):
  """SIGTERM (or JAX's multi-host preemption notice) arrived; the state was saved at `step`."""

  def __init__(self, step: int):
    super().__init__(f'preempted: saved step {step}; rerun the same command to resume')
    self.step = step


# Errors a user can fix; the CLI prints them in one line.
USER_ERRORS = (config_lib.ConfigError, checkpointing.CheckpointMismatchError, workdir_lib.WorkdirError,
               checkpointing.CheckpointReadError, checkpointing.NoReadableCheckpointError,
               protocols.DatasetNotPreparedError, convert.WeightsMismatchError, TrainingDiverged,
               pipeline.RecordError)


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


@dataclasses.dataclass
class _Run:
  """Everything the loop needs, built once by `_set_up`."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  dataset: datasets.PreparedDataset
  splits: protocols.Splits
  mesh: jax.sharding.Mesh
  total_steps: int
  train_iter: Any
  eval_batches: Callable
  graphdef: Any
  state: steps.TrainState
  abstract_state: Any
  train_fn: Callable
  eval_fn: Callable
  checkpointer: checkpointing.Checkpointer
  best: checkpointing.BestCheckpoint | None


def _loaders(config, dataset, splits, shard):
  inputs = models.get_family(config.model.name).inputs
  train = spec.train_loader(config, dataset.source(splits.train), shard[:3], config.input.worker_count,
                            inputs)

  def evaluation(split, validation=False):
    return spec.eval_batches(config, dataset.source(split), (shard[0], shard[1], shard[3]), inputs,
                             validation=validation)
  return train, evaluation


def _init_model(config, num_classes):
  model = models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=config.seed))
  family = models.get_family(config.model.name)
  weights = {k: v for k, v in config.init.items() if k != 'checkpoint'}
  if family.pretrained and any(weights.values()):
    family.pretrained(model, weights)
    _log('Imported pretrained weights: ' + ', '.join(
        f'{k}={v}' for k, v in config.init.items() if v and k.endswith('_weights')))
  if config.init.get('checkpoint', ''):
    # After the weight files: a previous run (e.g. RFSCNN's stage 1) sets every array, from the
    # checkpoint that run selected (its best validation UAR when it kept one).
    loaded = run_lib.init_from_run(model, config.init.checkpoint)
    _log(f'Initialised {loaded["loaded"]} arrays from {loaded["path"]} ({loaded["selection"]}, '
         f'step {loaded["step"]})')
  return model


def _describe_params(model) -> None:
  counts = models.count_params(model)
  width = max(map(len, counts))
  _log('Parameters:\n' + '\n'.join(f'  {k:<{width}} {v:>13,}' for k, v in counts.items()))


def _splits(config, dataset) -> protocols.Splits:
  try:
    return protocols.splits_for(dataset.split_names, config.dataset.fold,
                                config.dataset.holdout_validation, config.dataset.subject_folds)
  except ValueError as e:
    raise config_lib.ConfigError(
        f'config.dataset.fold / holdout_validation / subject_folds: {e}') from None


def _batch_sizes(config, mesh) -> tuple[int, int]:
  try:
    return (sharding.check_batch_size(config.input.batch_size, mesh),
            sharding.check_batch_size(config.input.eval_batch_size, mesh, 'input.eval_batch_size'))
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None


def _set_up(config, workdir: epath.Path) -> _Run:
  """Dataset, protocol, mesh, input pipelines, model, optimizer, jitted steps and checkpointers."""
  dataset = datasets.prepare(config.dataset)
  splits = _splits(config, dataset)
  if plateau.uses_plateau(config.train) and not splits.validation:
    raise config_lib.ConfigError(
        "config.train.schedule='plateau' and train.early_stop_patience > 0 follow the validation UAR; "
        f'expected a validation split (dataset.holdout_validation=True), found none for {dataset.name}')
  try:
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  except ValueError as e:
    raise config_lib.ConfigError(f'config.mesh: {e}') from None
  local_batch, local_eval_batch = _batch_sizes(config, mesh)
  shard = (jax.process_index(), jax.process_count(), local_batch, local_eval_batch)
  train_loader, eval_batches = _loaders(config, dataset, splits, shard)

  num_train = len(dataset.source(splits.train))
  steps_per_epoch = max(num_train // config.input.batch_size, 1)
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else math.ceil(config.train.num_epochs * steps_per_epoch))
  selection = 'best validation UAR' if splits.validation else 'final step'
  _log(f'Dataset {dataset.name}: {len(dataset.class_names)} classes {list(dataset.class_names)}\n'
       f'  train {splits.train} ({num_train} sequences), validation {splits.validation or "-"}, '
       f'test {splits.test}; reported model: {selection}\n'
       f'Mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, '
       f'{jax.process_count()} process(es); global batch {config.input.batch_size}, '
       f'{total_steps} steps ({total_steps / steps_per_epoch:.1f} epochs)')

  optimizer = steps.Optimizer.from_config(
      config.train, total_steps, round(config.train.warmup_epochs * steps_per_epoch),
      no_decay=models.get_family(config.model.name).no_decay(config), steps_per_epoch=steps_per_epoch)
  tx = optimizer.tx
  if any(config.init.values()):  # Weight files are read on the host into the built model, then placed.
    model = _init_model(config, len(dataset.class_names))
    _describe_params(model)
    graphdef, state = steps.init_state(model, tx, config.seed)
    del model
    state_sharding = sharding.state_shardings(state, mesh)
    state = jax.device_put(state, state_sharding)
  else:  # Created directly in its shardings: under FSDP no device (nor the host) holds the full state.
    def make_model(rngs):
      return models.create_model(config.model, len(dataset.class_names), rngs=rngs)
    _describe_params(nnx.eval_shape(lambda: make_model(nnx.Rngs(params=config.seed))))
    graphdef, state, state_sharding = steps.init_sharded_state(make_model, tx, config.seed, mesh)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sharding)

  batch_sharding = sharding.batch_sharding(mesh)
  family = models.get_family(config.model.name)
  normalization = config.dataset.normalization
  train_fn = steps.jit_train_step(graphdef, optimizer, family.losses(config), state_sharding,
                                  batch_sharding, sharding.replicated(mesh),
                                  normalization=normalization, extra_metrics=family.metrics(config))
  eval_fn = steps.jit_eval_step(graphdef, state_sharding, batch_sharding, normalization=normalization)
  checkpointer = checkpointing.Checkpointer(
      os.fspath(workdir / 'checkpoints'), max_to_keep=config.train.max_to_keep,
      save_every_steps=config.train.checkpoint_every_steps)
  return _Run(config, workdir, dataset, splits, mesh, total_steps, iter(train_loader), eval_batches,
              graphdef, state, abstract_state, train_fn, eval_fn, checkpointer, None)


def _restore_or_init(run: _Run, start_over: bool = False) -> None:
  """Resumes from the newest readable checkpoint (same config required), opens the best checkpoint
  (moving aside one that is not this run's) and records the config."""
  config_dict = config_lib.to_dict(run.config)
  restored = run.checkpointer.restore_latest(run.abstract_state, run.train_iter, config_dict, log=_log,
                                             start_over=start_over)
  resumed_from, changes = None, []
  if restored is not None:
    resumed_from, run.state, changes = restored
    _log(f'Resumed from {run.checkpointer.directory} at step {resumed_from}'
         + (f' (changed: {"; ".join(changes)})' if changes else ''))
  if run.splits.validation:
    run.best = checkpointing.BestCheckpoint(os.fspath(run.workdir / 'best_checkpoint'), config_dict,
                                            fresh_start=restored is None, log=_log)
  if jax.process_index() == 0:
    workdir_lib.record_config(run.workdir, config_dict, resumed_from=resumed_from, changes=changes)
    # How predict/export import the family, the class names, the typical sequence length (run.json).
    run_lib.record_run(run.workdir, config_dict, run.dataset.class_names,
                       run.dataset.source(run.splits.train))


def _aggregate(index: np.ndarray, label: np.ndarray, prob: np.ndarray):
  """Mean class probabilities and label per record (`index`), and the number of rows each record had."""
  records, inverse, rows = np.unique(index, return_inverse=True, return_counts=True)
  mean = np.zeros((len(records), prob.shape[-1]), np.float64)
  np.add.at(mean, inverse, prob)
  labels = np.zeros(len(records), label.dtype)
  labels[inverse] = label
  if np.any(labels[inverse] != label):
    raise ValueError('evaluation rows of one record carry different labels')
  return mean / rows[:, None], labels, rows


def _scoring(frames: int, rows: np.ndarray, views: str) -> str:
  """report['scoring']: how a sequence's prediction was made from the model's outputs."""
  if rows.max(initial=1) == 1:
    return ('argmax of the sequence class probabilities' if frames == 1 else
            f'argmax of the mean class probabilities of {frames} frames per sequence')
  count = (f'{rows.min()}' if rows.min() == rows.max() else f'{rows.min()}-{rows.max()}')
  return (f'argmax of the mean class probabilities of {count} rows per sequence'
          + (f' ({views})' if views else '')
          + (f', each row the mean of {frames} frames' if frames > 1 else ''))


def evaluate(eval_fn, state, batches, mesh, class_names, stop: Callable[[], bool] = lambda: False,
             groups: Sequence[str] | None = None):
  """Runs the model over every example of `batches` (padded rows masked out) -> classification report.

  A record may have several rows (test-time augmentation copies, windows of a long video; rows carry
  the record's `index`): its class probabilities are the mean over its rows, then the argmax; a per-frame
  model's row probabilities are already the mean of its frames'. `report['scoring']` says which, and
  `report['num_examples']` counts records. `groups` (one name per record, e.g. FERV39k's scenes) adds
  `report['by_group']`: WAR, UAR and per-class recall of each group. Returns None when `stop()` turns True
  between batches (preemption during evaluation).
  """
  labels, probs, indices, frames_scored = [], [], [], []
  for position, batch in enumerate(batches):
    if stop():
      return None
    if 'index' not in batch:  # One row per record, in order.
      batch = {**batch, 'index': np.full(len(batch['label']), -1, np.int32)}
    batch = sharding.global_batch(batch, mesh)
    out = eval_fn(state, batch)
    prob, label, keep, scored, index = (
        np.asarray(multihost_utils.process_allgather(x, tiled=True))
        for x in (out['probs'], batch['label'], batch['mask'], out['frames_scored'], batch['index']))
    if np.all(index[keep] == -1):
      index = position * len(index) + np.arange(len(index))
    labels.append(label[keep])
    probs.append(prob[keep])
    indices.append(index[keep])
    frames_scored.append(scored[keep])
  if not labels:
    raise ValueError('the evaluation split is empty')
  prob, label, rows = _aggregate(np.concatenate(indices), np.concatenate(labels), np.concatenate(probs))
  report = metrics.classification_report(label, prob.argmax(-1), class_names, probs=prob)
  scored = int(np.concatenate(frames_scored).max(initial=1))
  report['scoring'] = _scoring(scored, rows, getattr(batches, 'views', ''))
  if groups is not None:
    records = np.unique(np.concatenate(indices))  # The records scored, in the order of `prob`.
    report['by_group'] = metrics.group_reports(label, prob.argmax(-1),
                                               [groups[int(i)] for i in records], class_names)
  return report


def _record_groups(dataset, split: str, feature: str = 'scene') -> list[str] | None:
  """The `feature` (e.g. FERV39k's scene) of every record of `split`, or None without such a feature."""
  source = dataset.source(split)
  if not len(source) or feature not in source[0]:
    return None
  return [str(v) for v in source.feature(feature)]  # That feature alone, not every record's frames.


def evaluate_test_split(eval_fn, state, batches, mesh, dataset, split: str,
                        stop: Callable[[], bool] = lambda: False):
  """`evaluate` of the test split `split`, with its per-group results: FERV39k's scenes (`by_scene`) or a
  composite's source datasets (`by_dataset`: casme2 / samm / smic, crossval's UF1 / UAR per dataset)."""
  scenes = _record_groups(dataset, split)
  sources = None if scenes is not None else _record_groups(dataset, split, 'source_dataset')
  report = evaluate(eval_fn, state, batches, mesh, dataset.class_names, stop=stop,
                    groups=scenes if scenes is not None else sources)
  if report is not None and scenes is not None:  # FERV39k (report.json 'by_scene', scenes.md).
    report['by_scene'] = report.pop('by_group')
  elif report is not None and sources is not None:
    report['by_dataset'] = report.pop('by_group')
  return report


def _validate(run: _Run, step: int, writer: metrics.MetricWriter) -> None:
  """Validation report of `step`; keeps the state as the best checkpoint when its UAR is the best."""
  report = evaluate(run.eval_fn, run.state, run.eval_batches(run.splits.validation, validation=True),
                    run.mesh, run.dataset.class_names)
  scores = {k: report[k] for k in ('war', 'uar', 'macro_f1')}
  writer.write(step, 'validation', scores)
  kept = run.best.update(step, run.state, scores, scoring=report['scoring'])
  _log(f'  validation ({run.splits.validation}): WAR {100 * report["war"]:.2f}%  '
       f'UAR {100 * report["uar"]:.2f}%' + ('  (best so far)' if kept else ''))
  # Plateau schedule / early stopping: their state is in the optimizer state, saved with the step.
  opt_state, observed = plateau.observe(run.state.opt_state, scores['uar'], run.config.train)
  if observed is not None:
    run.state = run.state.replace(opt_state=opt_state)
    lr = float(observed.scale) * run.config.train.learning_rate
    writer.write(step, 'plateau', {'learning_rate_scale': float(observed.scale),
                                   'evaluations_since_best': int(observed.since_best)})
    _log(f'  plateau: learning rate {lr:.3g} (x{float(observed.scale):.3g}), '
         f'{int(observed.since_best)} evaluation(s) since the best')


def _train_scalars(summed: dict, num_steps: int, rate: float) -> dict:
  """Per-step means of the summed step metrics; every loss term and family metric keeps its name
  ('loss/<term>', 'metric/<name>')."""
  return {'loss': summed['loss'] / num_steps, 'accuracy': summed['correct'] / summed['count'],
          'grad_norm': summed['grad_norm'] / num_steps, 'steps_per_sec': rate,
          **{k: v / num_steps for k, v in summed.items() if k.startswith(('loss/', 'metric/'))}}


def _describe_loss(scalars: dict) -> str:
  """'loss 1.2345', with the terms in brackets when there is more than one, then the family's metrics."""
  terms = [f'{k[len("loss/"):]} {v:.4f}' for k, v in scalars.items() if k.startswith('loss/')]
  extra = ''.join(f'  {k[len("metric/"):]} {v:.4g}' for k, v in scalars.items() if k.startswith('metric/'))
  return f'loss {scalars["loss"]:.4f}' + (f' ({", ".join(terms)})' if len(terms) > 1 else '') + extra


class _EndLoop(Exception):
  """Raised by a periodic action to end training normally (early stopping)."""


@dataclasses.dataclass
class _Progress:
  """What the periodic actions share: the step reached, and the step metrics not yet summed."""
  step: int
  last_saved: int | None
  pending: list = dataclasses.field(default_factory=list)  # Device metrics of steps not yet checked.
  summed: dict | None = None  # Host sums of the checked steps since the last log.
  summed_steps: int = 0
  clock: tuple[float, int] | None = None  # (time, step) once the first (compiling) step is done.


@dataclasses.dataclass
class PeriodicAction:
  """One concern of the training loop: after a step, `act(step)` runs when `due(step)`.

  The loop runs its actions in order after every step; an action may raise Preempted (stop after saving)
  or _EndLoop (stop normally).
  """
  name: str
  due: Callable[[int], bool]
  act: Callable[[int], None]


def _periodic_actions(run: _Run, writer: metrics.MetricWriter, progress: _Progress) -> list[PeriodicAction]:
  """The loop's actions, in the order they run after a step: check for NaN before anything logs, selects
  or saves; log; validate; save; stop on preemption; stop early; start the clock."""
  config, checkpointer = run.config, run.checkpointer

  def last(step):
    return step == run.total_steps

  def stopping():
    return plateau.should_stop(run.state.opt_state, config.train)

  def check_finite(step):
    host = jax.device_get(progress.pending)
    summed = jax.tree.map(lambda *xs: float(np.sum(xs)), *host)
    progress.summed = summed if progress.summed is None else jax.tree.map(
        lambda a, b: a + b, progress.summed, summed)
    progress.summed_steps += len(host)
    progress.pending = []
    if summed['nonfinite']:
      raise TrainingDiverged(
          f'the training loss became NaN/inf by step {step}; training stopped. The last good '
          f'checkpoint (step {progress.last_saved if progress.last_saved is not None else "none"}) is kept '
          f'in {checkpointer.directory}. Lower train.learning_rate or set train.grad_clip.')

  def log_train(step):
    rate = 0.0
    if progress.clock and step > progress.clock[1]:
      rate = (step - progress.clock[1]) / (time.perf_counter() - progress.clock[0])
    scalars = _train_scalars(progress.summed, progress.summed_steps, rate)
    writer.write(step, 'train', scalars)
    _log(f'step {step:>6}/{run.total_steps}  {_describe_loss(scalars)}  '
         f'acc {100 * scalars["accuracy"]:5.1f}%  {rate:.2f} steps/s  '
         f'ETA {_eta((run.total_steps - step) / rate) if rate else "-"}')
    progress.summed, progress.summed_steps = None, 0

  def save(step):
    _save(run, step)
    progress.last_saved = step

  def preempt(step):
    _save(run, step)
    raise Preempted(step)

  def stop_early(step):
    _log(f'Early stop at step {step}: {config.train.early_stop_patience} validations without '
         'improvement of the UAR.')
    raise _EndLoop

  def start_clock(step):
    jax.block_until_ready(run.state)
    progress.clock = (time.perf_counter(), step)

  logs = PeriodicAction('log', lambda s: s % config.train.log_every_steps == 0 or last(s)
                        or checkpointer.should_save(s), log_train)
  validates = PeriodicAction('validate', lambda s: run.best is not None and (
      s % config.train.eval_every_steps == 0 or last(s)), lambda s: _validate(run, s, writer))
  saves = PeriodicAction('save', lambda s: checkpointer.should_save(s) or last(s) or stopping(), save)
  checks = PeriodicAction('check finite', lambda s: any(a.due(s) for a in (logs, validates, saves)),
                          check_finite)
  return [checks, logs, validates, saves,
          PeriodicAction('preempt', checkpointer.preempted, preempt),
          PeriodicAction('early stop', lambda s: stopping(), stop_early),
          PeriodicAction('clock', lambda s: progress.clock is None, start_clock)]


def _train_loop(run: _Run, writer: metrics.MetricWriter, step_hooks=()) -> None:
  """Steps until `total_steps`, running the periodic actions after each step; raises Preempted after
  saving when SIGTERM arrives. `step_hooks` are called with (step, state) after every step, before
  the actions (fault injection in tests, custom monitoring)."""
  progress = _Progress(step=int(run.state.step), last_saved=run.checkpointer.latest_step)
  actions = _periodic_actions(run, writer, progress)
  guards = [a for a in actions if a.name in ('preempt', 'early stop')]
  try:
    for action in guards:  # A resumed run that had stopped early, or a signal before the first step.
      if progress.step < run.total_steps and action.due(progress.step):
        action.act(progress.step)
    while progress.step < run.total_steps:
      batch = sharding.global_batch(next(run.train_iter), run.mesh)
      run.state, step_metrics = run.train_fn(run.state, batch)
      progress.step += 1
      progress.pending.append(step_metrics)
      for hook in step_hooks:
        hook(progress.step, run.state)
      for action in actions:
        if action.due(progress.step):
          action.act(progress.step)
  except _EndLoop:
    return
  if run.checkpointer.preempted(progress.step):
    raise Preempted(progress.step)


def _save(run: _Run, step: int) -> None:
  if run.checkpointer.latest_step != step:
    run.checkpointer.save(step, run.state, run.train_iter, config_lib.to_dict(run.config))


def _plain_eval_batches(run: _Run, split: str):
  """Evaluation batches of `split` without test-time augmentation (one row per window)."""
  config = run.config.copy_and_resolve_references()
  config.eval.tta_copies = 0
  local_batch = _batch_sizes(config, run.mesh)[1]
  return spec.eval_batches(config, run.dataset.source(split),
                           (jax.process_index(), jax.process_count(), local_batch),
                           models.get_family(config.model.name).inputs)


def _final_report(run: _Run, writer: metrics.MetricWriter) -> dict:
  """Evaluates the selected checkpoint on the test split; writes report.json and the confusion matrix."""
  state, selection = run.state, {'mode': 'final', 'step': int(run.state.step)}
  if run.best is not None:
    if run.best.step is None:  # A finished run always validated its last step; be safe anyway.
      _validate(run, int(run.state.step), writer)
    validation = run.best.validation()
    state = run.best.restore(run.abstract_state)
    selection = {'mode': 'best_validation_uar', 'step': int(validation['step']),
                 'validation_split': run.splits.validation,
                 'validation': {k: validation[k] for k in ('war', 'uar', 'macro_f1')},
                 'validation_scoring': validation.get('scoring', '')}
  report = evaluate_test_split(run.eval_fn, state, run.eval_batches(run.splits.test), run.mesh,
                               run.dataset, run.splits.test,
                               stop=lambda: run.checkpointer.preempted(selection['step']))
  if report is None:
    raise Preempted(int(run.state.step))
  if run.config.eval.tta_copies > 1:  # The papers report both (e.g. RMN: 74.14 % with TTA).
    plain = evaluate(run.eval_fn, state, _plain_eval_batches(run, run.splits.test), run.mesh,
                     run.dataset.class_names, stop=lambda: run.checkpointer.preempted(selection['step']))
    if plain is None:
      raise Preempted(int(run.state.step))
    report['without_tta'] = {k: plain[k] for k in ('war', 'uar', 'macro_f1', 'macro_precision',
                                                    'macro_roc_auc', 'scoring')}
  # What is needed to repeat the run: code and library versions, devices, the dataset's version.
  report['provenance'] = {**provenance.collect(),
                          'dataset': provenance.dataset_version(run.dataset.name, run.dataset.data_dir)}
  report.update(dataset=run.dataset.name, split=run.splits.test, fold=run.config.dataset.fold,
                step=int(run.state.step), selection=selection)
  writer.write(selection['step'], 'test', {k: report[k] for k in ('war', 'uar', 'macro_f1')})
  if jax.process_index() == 0:
    (run.workdir / 'report.json').write_text(json.dumps(report, indent=2))
    if 'by_scene' in report:
      (run.workdir / 'scenes.md').write_text(metrics.group_table(report['by_scene']))
    metrics.save_confusion_matrix_png(
        np.array(report['confusion_matrix']), report['class_names'],
        os.fspath(run.workdir / 'confusion_matrix.png'),
        title=f'{run.dataset.name} {run.splits.test} (step {selection["step"]})')
  where = (f'best validation UAR, step {selection["step"]}' if run.best else
           f'final step {selection["step"]}')
  _log(f'Test ({run.splits.test}, {report["num_examples"]} sequences, {where}): '
       f'WAR {100 * report["war"]:.2f}%  UAR {100 * report["uar"]:.2f}%  '
       f'macro-F1 {100 * report["macro_f1"]:.2f}%  macro precision {100 * report["macro_precision"]:.2f}%  '
       f'macro ROC AUC {report["macro_roc_auc"]:.4f}'
       + (f'  (without TTA: WAR {100 * report["without_tta"]["war"]:.2f}%)' if 'without_tta' in report else '')
       + (f'\nPer scene ({run.workdir / "scenes.md"}):\n' + metrics.group_table(report['by_scene'])
          if 'by_scene' in report else '')
       + f'\nReport: {run.workdir / "report.json"}')
  return report


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, start_over: bool = False,
                       step_hooks=()) -> dict:
  """Trains `config`'s model on its fold's training split, evaluates on the test split; returns the report.

  Raises Preempted (after saving) when SIGTERM arrives; the same call then resumes. `start_over` trains
  from step 0 when the workdir's checkpoints exist but none can be read (otherwise an error).
  `step_hooks`: callables `(step, state)` run after every training step.
  """
  config_lib.validate(paths.resolve_config_paths(config))
  workdir = epath.Path(paths.resolve(workdir))
  workdir_lib.prepare(workdir)
  lock = workdir_lib.RunLock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
    if lock.took_over:
      _log(f'note: took over the lock of a run that ended without releasing it: {lock.took_over}')
  run = None
  try:
    run = _set_up(config, workdir)
    _restore_or_init(run, start_over)
    writer = metrics.MetricWriter(os.fspath(workdir))
    try:
      _train_loop(run, writer, step_hooks)
      return _final_report(run, writer)
    finally:
      writer.close()
  finally:
    if run is not None:
      run.checkpointer.close()
      if run.best is not None:
        run.best.close()
    if lock is not None:
      lock.release()


def maybe_initialize_distributed() -> None:
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
        raise config_lib.ConfigError(f'{name} must be an integer; found {value!r}') from None
  try:
    jax.distributed.initialize(**explicit)
  except ValueError as e:  # JAX found no cluster to take the missing values from.
    if 'must be defined' not in str(e):
      raise
    raise config_lib.ConfigError(
        f'jax.distributed.initialize(): {e} Outside a cluster JAX recognises (TPU VM, SLURM, Open MPI, '
        '...) set JAX_COORDINATOR_ADDRESS=<host:port of process 0>, JAX_NUM_PROCESSES and '
        'JAX_PROCESS_ID (0 .. JAX_NUM_PROCESSES-1) on every process.') from None


# Older name, for callers not yet on maybe_initialize_distributed.
_maybe_initialize_distributed = maybe_initialize_distributed


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  if not flags.FLAGS['config'].present or not _WORKDIR.value:
    sys.exit('usage: python -m ferjax.train --config configs/<family>.py[:arg] --workdir DIR')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO logs (Orbax, TFDS) with --verbosity=0.
  try:
    config = config_lib.load_config(_CONFIG)
    maybe_initialize_distributed()
    train_and_evaluate(config, paths.resolve(_WORKDIR.value), start_over=_START_OVER.value)
  except Preempted as e:
    _log(f'Preempted: saved step {e.step}; rerun the same command to resume '
         f'(exit code {EXIT_PREEMPTED}).')
    sys.exit(EXIT_PREEMPTED)
  except USER_ERRORS as e:
    if _DEBUG.value:
      raise
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
