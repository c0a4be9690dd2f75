r"""Every fold of a cross-validation trained in one program: `python -m ferjax.crossval ... --parallel_folds`.

For models so small that one fold leaves the machine idle (STSTNet: 1,683 parameters; a LOSO table has 68
folds), the folds' train states are stacked along a leading fold axis and one jitted step updates them all:
`jax.vmap(steps.train_step)` over (state, batch). Each fold trains only on its own training subjects and
sees the batches its sequential run would see, in the same order: the training examples are computed once
per record into one table (on the device), and fold f's batch at step i gathers the rows of
`pipeline.train_record_order` (the sequential loader's shuffle and repeat) mapped to the fold's training
records. The test subject of a fold never enters its table rows. Every fold starts from the parameters
the sequential run starts from (the same seed) and draws the same dropout keys, so the trained parameters
and the per-fold scores equal the sequential folds' within float tolerance (`tests/test_parallel_folds.py`).

Devices: the fold axis is split over the mesh's `data` axis when the number of folds divides it (each device
trains its own folds, no communication); otherwise each fold's batch is split over it as in sequential
training. The table is replicated (it is small: 442 flow images of 28 x 28 x 3 are 4 MB).

Workdir: `DIR/parallel_folds/` holds the stacked state's Orbax checkpoints (`checkpoints/`, resumable: a
rerun of the same command continues from the last one; its config records the folds), `config.json` and
`run.lock`; every fold still gets `DIR/fold_<k>/` with its `config.json`, `metrics.jsonl` (training loss
per fold) and, at the end, `report.json` and `confusion_matrix.png`, so `ferjax.crossval`'s table, rerun
checks and curves work as for sequential folds.

What it supports (`unsupported` lists what is refused, with the reason): the final model of every fold
(no validation split: per-fold model selection, plateau schedules and early stopping stop folds at
different steps); a fresh initialisation from `config.seed` (no weight files or `init.checkpoint`); no
FSDP; one process; folds with the same number of steps and warm-up steps (`train.num_steps` makes them
equal); and training examples that are a function of the record alone in every input the model reads
(no random augmentation or frame sampling that the model sees; STSTNet reads only the flow image, so its
carried frame does not count). BatchNorm statistics are part of the stacked state, so each fold keeps its
own. Evaluation runs per fold on its test split through the same `ferjax.train.evaluate_test_split` as
sequential folds (test-time augmentation, per-scene and per-source-dataset results included).
"""

from collections.abc import Sequence
import copy
import functools
import json
import math
import os
import time
from typing import Any

from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from ferjax import (checkpointing, config as config_lib, metrics, models, paths, plateau, provenance,
                    sharding, steps, train, workdir as workdir_lib)
from ferjax.data import datasets, pipeline, protocols, spec

SUBDIR = 'parallel_folds'


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def unsupported(config) -> list[str]:
  """Why `config` cannot train its folds in one program (empty when it can), from the config alone."""
  reasons = []
  if config.dataset.holdout_validation:
    reasons.append('dataset.holdout_validation=True: each fold would select its own checkpoint on its '
                   'own validation split')
  if plateau.uses_plateau(config.train):
    reasons.append('a plateau schedule or early stopping: folds would change learning rate or stop at '
                   'different steps')
  if any(config.init.values()):
    reasons.append(f'init.* weights ({", ".join(k for k, v in config.init.items() if v)}): only a fresh '
                   'initialisation from config.seed')
  if config.mesh.fsdp != 1:
    reasons.append(f'mesh.fsdp={config.mesh.fsdp}: the fold axis replaces parameter sharding')
  if jax.process_count() > 1:
    reasons.append(f'{jax.process_count()} processes: one process only')
  return reasons


def _plain_eval(config):
  """The config whose evaluation examples are one plain row per record (no TTA, one window)."""
  c = config.copy_and_resolve_references()
  c.eval.tta_copies = 0
  c.eval.windows = 'one'
  return c


def example_table(config, dataset: datasets.PreparedDataset, inputs: Sequence[str]
                  ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """Every record's example (its evaluation example: no augmentation, the sampling mode's evaluation
  frames), split after split of `dataset.split_names`, and the first row of every split."""
  plain = _plain_eval(config)
  parts, offsets, start = [], {}, 0
  for split in dataset.split_names:
    source = dataset.source(split)
    rows = {}
    for batch in spec.eval_batches(plain, source, (0, 1, config.input.eval_batch_size), inputs):
      keep = np.asarray(batch['mask'])
      for key, value in batch.items():
        rows.setdefault(key, []).append(np.asarray(value)[keep])
    split_rows = {k: np.concatenate(v) for k, v in rows.items()}
    order = np.argsort(split_rows.pop('index'), kind='stable')
    split_rows.pop('mask')
    parts.append({k: v[order] for k, v in split_rows.items()})
    offsets[split] = start
    start += len(source)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, offsets


def fold_rows(dataset: datasets.PreparedDataset, offsets: dict[str, int], expression: str) -> np.ndarray:
  """Table rows of the records of a split expression ('subject_s01+subject_s03'), in the order of
  `dataset.source(expression)` (the order the sequential fold's loader indexes)."""
  names = expression.split('+')
  unknown = [n for n in names if n not in offsets]
  if unknown:
    raise config_lib.ConfigError(
        f'--parallel_folds: expected whole splits of {dataset.name} in the protocol, found {unknown}')
  rows = np.concatenate([offsets[n] + np.arange(len(dataset.source(n))) for n in names])
  if len(rows) != len(dataset.source(expression)):
    raise AssertionError(f'{expression}: {len(rows)} rows for {len(dataset.source(expression))} records')
  return rows


def read_inputs(graphdef, tx, state, table: dict[str, np.ndarray], loss, normalization: str,
                extra_metrics) -> list[str]:
  """The batch entries the training step reads (model, losses and metrics), from its jaxpr.

  An entry the step never touches is carried by the pipeline only (STSTNet's frame): its content cannot
  change the training. Frames are traced as float32 so that their normalisation does not count as a read.
  """
  batch = {k: jax.ShapeDtypeStruct((2, *v.shape[1:]), jnp.float32 if k == 'frames' else v.dtype)
           for k, v in table.items()}
  step = functools.partial(steps.train_step, graphdef, tx, loss, normalization=normalization,
                           extra_metrics=extra_metrics)
  jaxpr = jax.make_jaxpr(step)(state, batch).jaxpr
  used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
  batch_vars = jaxpr.invars[len(jax.tree.leaves(state)):]
  names = [path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(batch)[0]]
  return [name for name, var in zip(names, batch_vars) if id(var) in used]


def check_record_determined(config, dataset, table, read: Sequence[str], inputs, probes: int = 3) -> None:
  """Raises ConfigError unless the training examples of a few records equal their table rows in every
  entry in `read`, at two record indices and two epochs (augmentation and frame sampling draw from
  (seed, record index, epoch))."""
  split = dataset.split_names[0]
  source = dataset.source(split)
  records = [source[i] for i in range(min(probes, len(source)))]
  k = len(records)
  loader = spec.train_loader(config, records, (0, 1, 2 * k), 0, inputs)
  batch = next(iter(loader))
  order = pipeline.train_record_order(k, config.seed)
  rows = np.array([order[p] for p in range(2 * k)])
  start = 0  # The first split's rows start the table.
  differ = [key for key in read if key in batch and not np.allclose(
      np.asarray(batch[key], np.float64), np.asarray(table[key][start + rows], np.float64),
      rtol=1e-5, atol=1e-6)]
  if differ:
    raise config_lib.ConfigError(
        f'--parallel_folds: the training examples of {dataset.name} change with the epoch or the record\'s '
        f'position in {differ} (random augmentation or frame sampling that the model reads); one table of '
        'examples cannot reproduce them. Turn the augmentation off (config.augment.*) and use '
        "dataset.sampling='clip' or 'apex', or train the folds sequentially.")


class _Position:
  """The data position of the stacked run for its Orbax checkpoint (grain's iterator item): the batches
  are a function of the step, so the state is the step alone."""

  def __init__(self):
    self.step = 0

  def get_state(self) -> bytes:
    return json.dumps({'step': self.step}).encode()

  def set_state(self, state: bytes) -> None:
    self.step = int(json.loads(state.decode())['step'])

  def start_prefetch(self) -> None:
    pass


class _Orders:
  """Fold f's table rows of step i: its training rows at positions i*B ... i*B+B-1 of the sequential
  loader's record order; per-epoch permutations are shared by folds with as many training records."""

  def __init__(self, rows: list[np.ndarray], batch_size: int, seed: int):
    self.rows, self.batch_size, self.seed = rows, batch_size, seed
    self._epochs: dict[tuple[int, int], np.ndarray] = {}

  def _epoch(self, n: int, epoch: int) -> np.ndarray:
    key = (n, epoch)
    if key not in self._epochs:
      order = pipeline.train_record_order(n, self.seed)
      self._epochs[key] = np.array([order[epoch * n + i] for i in range(n)], np.int64)
      for old in [k for k in self._epochs if k[0] == n and k[1] < epoch - 1]:
        del self._epochs[old]
    return self._epochs[key]

  def step(self, i: int) -> np.ndarray:
    out = np.empty((len(self.rows), self.batch_size), np.int32)
    for f, rows in enumerate(self.rows):
      n = len(rows)
      positions = i * self.batch_size + np.arange(self.batch_size)
      epochs, within = np.divmod(positions, n)
      local = np.empty(self.batch_size, np.int64)
      for epoch in np.unique(epochs):
        sel = epochs == epoch
        local[sel] = self._epoch(n, int(epoch))[within[sel]]
      out[f] = rows[local]
    return out


def _steps_of(config, num_train: int) -> tuple[int, int]:
  per_epoch = max(num_train // config.input.batch_size, 1)
  total = (config.train.num_steps if config.train.num_steps > 0
           else math.ceil(config.train.num_epochs * per_epoch))
  return total, round(config.train.warmup_epochs * per_epoch)


def _fold_config(config, fold: int):
  c = copy.deepcopy(config)
  c.dataset.fold = fold
  return c


def _shardings(mesh, num_folds: int, batch_size: int):
  """(fold-axis spec, batch spec): folds over `data` when they divide it, else each fold's batch."""
  devices = mesh.shape['data']
  if num_folds % devices == 0:
    return P('data'), P('data', None)
  if batch_size % devices:
    raise config_lib.ConfigError(
        f'--parallel_folds over {devices} devices: expected the number of folds ({num_folds}) or '
        f'input.batch_size ({batch_size}) to be a multiple of {devices}')
  return P(), P(None, 'data')


def _stack(mesh, state, num_folds: int, fold_spec):
  """The single state repeated along a new leading fold axis (every fold starts from the same draw)."""
  stacked_sharding = jax.tree.map(lambda x: NamedSharding(mesh, fold_spec), state)
  stack = jax.jit(lambda s: jax.tree.map(lambda x: jnp.broadcast_to(x, (num_folds, *x.shape)), s),
                  out_shardings=stacked_sharding)
  return stack(state), stacked_sharding


def train_and_evaluate(config, workdir: str, folds: Sequence[int], *, start_over: bool = False
                       ) -> dict[int, dict[str, Any]]:
  """Trains `folds` of `config`'s protocol together in `workdir/parallel_folds/`, evaluates each on its
  test split, writes `workdir/fold_<k>/report.json`; returns {fold: report}."""
  config_lib.validate(paths.resolve_config_paths(config))
  reasons = unsupported(config)
  if reasons:
    raise config_lib.ConfigError('--parallel_folds cannot train these folds together: '
                                 + '; '.join(reasons) + '. Train them sequentially (without the flag).')
  workdir = epath.Path(workdir)
  run_dir = workdir / SUBDIR
  workdir_lib.prepare(run_dir)
  folds = list(folds)
  lock = workdir_lib.RunLock(run_dir)
  lock.acquire()
  try:
    return _run(config, workdir, run_dir, folds, start_over)
  finally:
    lock.release()


def _run(config, workdir, run_dir, folds, start_over):
  dataset = datasets.prepare(config.dataset)
  family = models.get_family(config.model.name)
  splits = {f: protocols.splits_for(dataset.split_names, f, False, config.dataset.subject_folds)
            for f in folds}
  table, offsets = example_table(config, dataset, family.inputs)
  rows = [fold_rows(dataset, offsets, splits[f].train) for f in folds]
  counts = {f: _steps_of(config, len(r)) for f, r in zip(folds, rows)}
  if len(set(counts.values())) > 1:
    listed = ', '.join(f'fold {f}: {t} steps ({w} warm-up)' for f, (t, w) in counts.items())
    raise config_lib.ConfigError(
        f'--parallel_folds: expected every fold to train for the same number of steps, found {listed}; '
        'set train.num_steps (and train.warmup_epochs=0) or train the folds sequentially')
  total_steps, warmup_steps = counts[folds[0]]
  try:
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  except ValueError as e:
    raise config_lib.ConfigError(f'config.mesh: {e}') from None
  fold_spec, rows_spec = _shardings(mesh, len(folds), config.input.batch_size)
  _log(f'Parallel folds {folds} of {dataset.name}: {total_steps} steps each, global batch '
       f'{config.input.batch_size} per fold; fold axis '
       f'{"split over" if fold_spec != P() else "replicated on"} {mesh.shape["data"]} device(s)')

  tx = steps.make_optimizer(config.train, total_steps, warmup_steps, no_decay=family.no_decay(config))
  num_classes = len(dataset.class_names)

  def make_model(rngs):
    return models.create_model(config.model, num_classes, rngs=rngs)
  # The sequential run's jitted init on the same mesh (replicated: no FSDP), bit for bit.
  graphdef, single, _ = steps.init_sharded_state(make_model, tx, config.seed, mesh)
  loss, extra = family.losses(config), dict(family.metrics(config))
  read = read_inputs(graphdef, tx, single, table, loss, config.dataset.normalization, extra)
  check_record_determined(config, dataset, table, read, family.inputs)
  table = {k: v for k, v in table.items() if k in read or k == 'label'}
  state, state_sharding = _stack(mesh, single, len(folds), fold_spec)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                          state_sharding)

  replicated = sharding.replicated(mesh)
  table_device = jax.device_put(table, replicated)
  rows_sharding = NamedSharding(mesh, rows_spec)
  metric_sharding = NamedSharding(mesh, fold_spec)
  one_step = functools.partial(steps.train_step, graphdef, tx, loss,
                               normalization=config.dataset.normalization, extra_metrics=extra)

  def step_fn(state, table, rows):
    batch = jax.tree.map(lambda t: t[rows], table)  # [F, B, ...]: each fold's own records.
    return jax.vmap(one_step)(state, batch)
  train_fn = jax.jit(step_fn, in_shardings=(state_sharding, replicated, rows_sharding),
                     out_shardings=(state_sharding, metric_sharding), donate_argnums=(0,))

  config_dict = {**config_lib.to_dict(config), 'parallel_folds': list(folds)}
  checkpointer = checkpointing.Checkpointer(
      os.fspath(run_dir / 'checkpoints'), max_to_keep=config.train.max_to_keep,
      save_every_steps=config.train.checkpoint_every_steps)
  position = _Position()
  writers = {}
  try:
    restored = checkpointer.restore_latest(abstract, position, config_dict, log=_log, start_over=start_over)
    step, changes = 0, []
    if restored is not None:
      step, state, changes = restored
      _log(f'Resumed the parallel folds from {checkpointer.directory} at step {step}')
    workdir_lib.record_config(run_dir, config_dict, resumed_from=restored and step, changes=changes)
    for f in folds:
      fold_dir = workdir / f'fold_{f}'
      fold_dir.mkdir(parents=True, exist_ok=True)
      workdir_lib.record_config(fold_dir, config_lib.to_dict(_fold_config(config, f)),
                                resumed_from=restored and step, changes=changes)
      writers[f] = metrics.MetricWriter(os.fspath(fold_dir))
    state = _train(config, train_fn, state, table_device, _Orders(rows, config.input.batch_size,
                                                                 config.seed),
                   rows_sharding, step, total_steps, folds, writers, checkpointer, position, config_dict)
    layout = {'folds': folds, 'fold_axis_devices': mesh.shape['data'] if fold_spec != P() else 1}
    return _evaluate_folds(config, dataset, graphdef, state, splits, mesh, workdir, family, writers,
                           layout)
  finally:
    for writer in writers.values():
      writer.close()
    checkpointer.close()


def _train(config, train_fn, state, table, orders, rows_sharding, step, total_steps, folds, writers,
           checkpointer, position, config_dict):
  """The stacked loop: one update of every fold per step; logs per fold, checks for NaN, saves."""
  pending, last_saved, clock = [], checkpointer.latest_step, None
  every = config.train.log_every_steps
  while step < total_steps:
    rows = jax.device_put(orders.step(step), rows_sharding)
    state, step_metrics = train_fn(state, table, rows)
    step += 1
    pending.append(step_metrics)
    last = step == total_steps
    save = last or checkpointer.should_save(step)
    if step % every == 0 or save:
      host = jax.device_get(pending)
      summed = jax.tree.map(lambda *xs: np.sum(xs, axis=0, dtype=np.float64), *host)
      bad = [f for f, n in zip(folds, summed['nonfinite']) if n]
      if bad:
        raise train.TrainingDiverged(
            f'the training loss of fold(s) {bad} became NaN/inf by step {step}; training stopped. The last '
            f'good checkpoint (step {last_saved if last_saved is not None else "none"}) is kept in '
            f'{checkpointer.directory}. Lower train.learning_rate or set train.grad_clip.')
      rate = (step - clock[1]) / (time.perf_counter() - clock[0]) if clock and step > clock[1] else 0.0
      for i, f in enumerate(folds):
        per_fold = {k: v[i] for k, v in summed.items()}
        writers[f].write(step, 'train', {'loss': per_fold['loss'] / len(host),
                                         'accuracy': per_fold['correct'] / per_fold['count'],
                                         'grad_norm': per_fold['grad_norm'] / len(host),
                                         'steps_per_sec': rate})
      losses = summed['loss'] / len(host)
      _log(f'step {step:>6}/{total_steps}  loss over folds {losses.mean():.4f} '
           f'(min {losses.min():.4f}, max {losses.max():.4f})  {rate:.2f} steps/s')
      pending = []
    if save:
      position.step = step
      if checkpointer.latest_step != step:
        checkpointer.save(step, state, position, config_dict)
      last_saved = step
    if checkpointer.preempted(step):
      if last_saved != step:
        position.step = step
        checkpointer.save(step, state, position, config_dict)
      checkpointer.wait()
      raise train.Preempted(step)
    if clock is None:
      jax.block_until_ready(state)
      clock = (time.perf_counter(), step)
  return state


def _evaluate_folds(config, dataset, graphdef, state, splits, mesh, workdir, family, writers, layout):
  """Every fold's final model on its test split (`ferjax.train.evaluate`), written as its report.json."""
  replicated = sharding.replicated(mesh)
  single_sharding = jax.tree.map(lambda _: replicated, jax.tree.map(lambda x: x[0], state))
  eval_fn = steps.jit_eval_step(graphdef, single_sharding, sharding.batch_sharding(mesh),
                                normalization=config.dataset.normalization)
  local_eval = sharding.check_batch_size(config.input.eval_batch_size, mesh, 'input.eval_batch_size')
  reports = {}
  step = int(np.asarray(jax.device_get(state.step))[0])
  for i, f in enumerate(layout['folds']):
    fold_state = jax.device_put(jax.tree.map(lambda x: x[i], state), single_sharding)
    test = splits[f].test
    batches = spec.eval_batches(config, dataset.source(test), (0, 1, local_eval), family.inputs)
    report = train.evaluate_test_split(eval_fn, fold_state, batches, mesh, dataset, test)
    if config.eval.tta_copies > 1:  # As a sequential fold: the scores without test-time augmentation too.
      plain_config = config.copy_and_resolve_references()
      plain_config.eval.tta_copies = 0
      plain = train.evaluate(eval_fn, fold_state, spec.eval_batches(
          plain_config, dataset.source(test), (0, 1, local_eval), family.inputs), mesh, dataset.class_names)
      report['without_tta'] = {k: plain[k] for k in ('war', 'uar', 'macro_f1', 'macro_precision',
                                                     'macro_roc_auc', 'scoring')}
    report['provenance'] = {**provenance.collect(),
                            'dataset': provenance.dataset_version(dataset.name, dataset.data_dir)}
    selection = {'mode': 'final', 'step': step, 'trained': 'parallel folds', **layout}
    report.update(dataset=dataset.name, split=test, fold=f, step=step, selection=selection)
    fold_dir = workdir / f'fold_{f}'
    writers[f].write(step, 'test', {k: report[k] for k in ('war', 'uar', 'macro_f1')})
    if jax.process_index() == 0:
      (fold_dir / 'report.json').write_text(json.dumps(report, indent=2))
      metrics.save_confusion_matrix_png(np.array(report['confusion_matrix']), report['class_names'],
                                        os.fspath(fold_dir / 'confusion_matrix.png'),
                                        title=f'{dataset.name} {test} (step {step})')
    _log(f'Fold {f} (test {test}, {report["num_examples"]} sequences, final step {step}): '
         f'WAR {100 * report["war"]:.2f}%  UAR {100 * report["uar"]:.2f}%')
    reports[f] = report
  return reports
