r"""Every fold of a dataset's protocol in one command: `python -m ferjax.crossval --config ... --workdir DIR`.

Each fold is a normal training run (`ferjax.train.train_and_evaluate`) in `DIR/fold_<k>/`, subject-independent
by construction (ferjax/data/protocols.py), with the same model selection as a single run (the final model, or
the best validation UAR with `dataset.holdout_validation=True`; never the test fold). Rerunning the command
skips finished folds and resumes an interrupted one exactly; `--folds 0,3` runs a subset.

A table never mixes settings: a rerun must use the config the finished (and started) folds were run with,
except for cadences, paths and worker counts (`RERUN_CHANGES`); otherwise it stops with an error naming the
fields and folds, unless those folds are retrained (`--retrain 0,3`, the old runs are kept aside).

`DIR/crossval.json` records the config, the protocol and every finished fold's scores, so a table survives a
fold directory deleted by hand (it is reported, and retrained only with `--retrain k`). At the end:
`results.json` and `results.md` (per-fold WAR, UAR, macro-F1, their mean ± sample standard deviation, pooled
scores, per-class recall, each fold's per-scene table where the dataset has scenes (FERV39k), the fold ->
subjects manifest, provenance), `confusion_matrix.png` (pooled over the
folds, counts and row-normalised) and `curves.png` (training loss and validation UAR of every fold).
"""

import copy
import datetime
import json
import os
import sys
import time
from typing import Any

from absl import app, flags, logging
from etils import epath
import jax
import numpy as np

from ferjax import checkpointing, config as config_lib, metrics, parallel_folds, paths, provenance, train
from ferjax.data import datasets, protocols

# --config, --workdir, --multiprocess and --debug are ferjax.train's flags (absl flags are global).
_FOLDS = flags.DEFINE_string('folds', '', 'Comma-separated folds to run (default: all).')
_RETRAIN = flags.DEFINE_string('retrain', '', 'Comma-separated folds to train again although finished.')
_PARALLEL_FOLDS = flags.DEFINE_bool(
    'parallel_folds', False, 'Train the unfinished folds together in one program (jax.vmap over a fold '
    'axis; ferjax/parallel_folds.py says which configs it supports).')

STATE = 'crossval.json'
SUMMARY_KEYS = ('war', 'uar', 'macro_f1')

# Fields a rerun may change without retraining finished folds: how often things happen, where the data
# is, how many processes read it. `train.eval_every_steps` only without a validation split (with one, it
# decides which checkpoint is selected).
RERUN_CHANGES = frozenset({'train.log_every_steps', 'train.checkpoint_every_steps', 'train.max_to_keep',
                           'train.eval_every_steps', 'input.worker_count', 'input.eval_batch_size',
                           'dataset.data_dir'})


class CrossvalError(ValueError):
  """A cross-validation cannot run as asked (bad folds, another config in the workdir)."""


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def parse_folds(text: str, num_folds: int, what: str = '--folds') -> list[int]:
  """'0,3' -> [0, 3]; every fold must exist in the protocol."""
  if not text.strip():
    return []
  try:
    folds = sorted({int(part) for part in text.split(',') if part.strip()})
  except ValueError:
    raise CrossvalError(f'{what}: expected comma-separated fold numbers, found {text!r}') from None
  bad = [k for k in folds if not 0 <= k < num_folds]
  if bad:
    raise CrossvalError(f'{what}: fold(s) {bad} out of range: this protocol has {num_folds} folds '
                        f'(0-{num_folds - 1})')
  return folds


def _fold_config(config, fold: int):
  c = copy.deepcopy(config)
  c.dataset.fold = fold
  return c


def _identity(config) -> dict[str, Any]:
  """The config without the fold: what every fold of one cross-validation shares."""
  d = config_lib.to_dict(config)
  d['dataset'] = {k: v for k, v in d['dataset'].items() if k != 'fold'}
  return d


def _rerun_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """The fields that differ between a fold's recorded config and this one and are not RERUN_CHANGES."""
  validated = current['dataset'].get('holdout_validation') or saved['dataset'].get('holdout_validation')
  return [(k, a, b) for k, a, b in config_lib.changed_fields(checkpointing.with_validation_tta(saved),
                                                             current)
          if k not in RERUN_CHANGES or (validated and k == 'train.eval_every_steps')]


def _load_state(workdir: epath.Path, config) -> dict[str, Any]:
  """crossval.json: the latest config, every finished fold's scores and the config it ran with."""
  path = workdir / STATE
  if not path.exists():
    return {'config': _identity(config), 'folds': {}, 'fold_configs': {}}
  state = json.loads(path.read_text())
  state.setdefault('fold_configs', {})
  for fold in state['folds']:  # Written before per-fold configs were recorded: the one config.
    state['fold_configs'].setdefault(fold, state['config'])
  return state


def _fold_run_config(fold_dir: epath.Path) -> dict[str, Any] | None:
  """The identity of the config a started fold last ran with (its config.json), if it started."""
  path = fold_dir / 'config.json'
  if not path.exists():
    return None
  saved = json.loads(path.read_text())
  saved['dataset'] = {k: v for k, v in saved.get('dataset', {}).items() if k != 'fold'}
  return saved


def check_rerun(workdir: epath.Path, state: dict[str, Any], config, folds: list[int],
                again: set[int]) -> None:
  """Raises CrossvalError when a finished or started fold of `folds` ran with another config (beyond
  RERUN_CHANGES) and is not in `again` (--retrain)."""
  identity = _identity(config)
  differing = {}
  for fold in folds:
    saved = state['fold_configs'].get(str(fold)) or _fold_run_config(workdir / f'fold_{fold}')
    if saved is not None and fold not in again:
      changes = _rerun_changes(saved, identity)
      if changes:
        differing[fold] = changes
  if differing:
    folds_text = ','.join(map(str, differing))
    fields = {k: (a, b) for changes in differing.values() for k, a, b in changes}
    listed = '; '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in list(fields.items())[:6])
    raise CrossvalError(
        f'{workdir} holds fold(s) {folds_text} of a cross-validation of another config ({listed}'
        f'{"; ..." if len(fields) > 6 else ""}); a table would mix both. Rerun with the config they were '
        f'run with, train them again with --retrain {folds_text}, or use a new --workdir.')


def _save_state(workdir: epath.Path, state: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    tmp = workdir / f'{STATE}.tmp'
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(workdir / STATE)


def _subjects_by_split(dataset: datasets.PreparedDataset, splits=()) -> dict[str, list[str]]:
  """Subjects of every split of the dataset and of `splits` (sliced names such as 'train[:10%]'), from
  each record's `subject` feature alone (frames are not parsed)."""
  return {split: sorted({str(s) for s in dataset.source(split).feature('subject')})
          for split in dict.fromkeys([*dataset.split_names, *splits])}


def manifest(split_names, subjects: dict[str, list[str]], holdout_validation: bool,
             folds: list[int], subject_folds: int = 0) -> dict[str, Any]:
  """fold -> {train, validation, test: {splits, subjects}}; raises if a subject is in two parts.

  Records without a subject id (``''``: AFEW, FER2013) cannot be checked: their datasets' official splits
  are taken as they are, and ``''`` is not reported as a shared subject.
  """
  out = {}
  for fold in folds:
    splits = protocols.splits_for(split_names, fold, holdout_validation, subject_folds)
    parts = {'train': splits.train, 'validation': splits.validation, 'test': splits.test}
    entry = {}
    for part, expression in parts.items():
      names = expression.split('+') if expression else []
      entry[part] = {'splits': names, 'subjects': sorted(
          {s for name in names for s in subjects.get(name, subjects[protocols.base_split(name)])})}
    for a, b in (('train', 'test'), ('validation', 'test'), ('train', 'validation')):
      leaked = (set(entry[a]['subjects']) & set(entry[b]['subjects'])) - {''}
      if leaked:
        raise CrossvalError(f'fold {fold}: subjects {sorted(leaked)[:5]} are in both {a} and {b}; '
                            'the dataset\'s splits are not subject-independent')
    out[str(fold)] = entry
  return out


def _summary(report: dict[str, Any]) -> dict[str, Any]:
  keep = ('war', 'uar', 'macro_f1', 'num_examples', 'per_class_recall', 'confusion_matrix', 'selection',
          'split', 'class_names', 'by_scene', 'by_dataset')
  return {k: report[k] for k in keep if k in report}


def _mean_std(values: list[float]) -> dict[str, float]:
  a = np.asarray(values, np.float64)
  return {'mean': float(a.mean()), 'std': float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def aggregate(fold_results: dict[str, dict[str, Any]], class_names) -> dict[str, Any]:
  """Mean ± sample std of the per-fold scores, and the scores of the pooled confusion matrix."""
  folds = sorted(fold_results, key=int)
  per_fold = {k: [fold_results[f][k] for f in folds] for k in SUMMARY_KEYS}
  cm = np.sum([np.asarray(fold_results[f]['confusion_matrix']) for f in folds], axis=0)
  labels = np.repeat(np.arange(len(class_names)), cm.sum(axis=1))
  preds = np.concatenate([np.repeat(np.arange(len(class_names)), row) for row in cm])
  pooled = metrics.classification_report(labels, preds, class_names)
  return {
      'folds': folds,
      **{k: _mean_std(v) for k, v in per_fold.items()},
      'pooled': {k: pooled[k] for k in ('war', 'uar', 'macro_f1', 'num_examples',
                                        'per_class_recall', 'confusion_matrix')},
      'uf1_uar': pooled_uf1_uar(fold_results, folds, len(class_names)),
  }


def _from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(labels, predictions) with the counts of a confusion matrix (rows true, columns predicted)."""
  n = len(cm)
  labels = np.repeat(np.arange(n), cm.sum(axis=1))
  return labels, np.concatenate([np.repeat(np.arange(n), row) for row in cm])


def pooled_uf1_uar(fold_results, folds, num_classes: int) -> dict[str, dict[str, float]]:
  """UF1 / UAR (``metrics.uf1_uar``) over the predictions of all folds pooled: ``'full'``, and each source
  dataset of a composite (the folds' ``by_dataset``: casme2, samm, smic), as the micro-expression tables."""
  groups: dict[str, np.ndarray] = {
      'full': np.sum([np.asarray(fold_results[f]['confusion_matrix']) for f in folds], axis=0)}
  for f in folds:
    for name, report in sorted(fold_results[f].get('by_dataset', {}).items()):
      cm = np.asarray(report['confusion_matrix'])
      groups[name] = groups[name] + cm if name in groups else cm
  return {name: metrics.uf1_uar(*_from_confusion(cm), num_classes) for name, cm in groups.items()}


# Row names and order of the UF1 / UAR table (the MEGC2019 literature's Full / SMIC / CASME II / SAMM).
DATASET_NAMES = {'full': 'Full', 'smic': 'SMIC', 'casme2': 'CASME II', 'samm': 'SAMM'}


def _pct(x: float) -> str:
  return f'{100 * x:.2f}'


def markdown(results: dict[str, Any]) -> str:
  agg, folds = results['summary'], results['folds']
  lines = [f'# Cross-validation: {results["model"]} on {results["dataset"]["name"]}', '',
           f'Protocol: {results["protocol"]}; {len(folds)} of {results["num_folds"]} folds; reported model: '
           f'{results["selection"]}.', '',
           '| fold | test split | sequences | WAR % | UAR % | macro-F1 % | reported step |',
           '| ---: | --- | ---: | ---: | ---: | ---: | ---: |']
  for fold in agg['folds']:
    r = folds[fold]
    lines.append(f'| {fold} | {r.get("split", "")} | {r["num_examples"]} | {_pct(r["war"])} | '
                 f'{_pct(r["uar"])} | {_pct(r["macro_f1"])} | {r.get("selection", {}).get("step", "")} |')
  lines.append(f'| **mean ± std** | | | **{_pct(agg["war"]["mean"])} ± {_pct(agg["war"]["std"])}** | '
               f'**{_pct(agg["uar"]["mean"])} ± {_pct(agg["uar"]["std"])}** | '
               f'**{_pct(agg["macro_f1"]["mean"])} ± {_pct(agg["macro_f1"]["std"])}** | |')
  pooled = agg['pooled']
  lines += ['', f'Pooled over the folds ({pooled["num_examples"]} sequences): WAR {_pct(pooled["war"])} %, '
            f'UAR {_pct(pooled["uar"])} % (mean of per-fold UARs: {_pct(agg["uar"]["mean"])} %; folds may '
            f'lack a class), macro-F1 {_pct(pooled["macro_f1"])} %.', '',
            '| class | pooled recall % |', '| --- | ---: |']
  for name, recall in pooled['per_class_recall'].items():
    lines.append(f'| {name} | {"-" if recall is None else _pct(recall)} |')
  lines += ['', 'UF1 and UAR over the predictions of all folds pooled (the micro-expression '
            'literature\'s scores):', '', '| data | samples | UF1 % | UAR % |', '| --- | ---: | ---: | ---: |']
  scores = agg.get('uf1_uar', {})
  for name in sorted(scores, key=lambda n: (list(DATASET_NAMES).index(n) if n in DATASET_NAMES else 9, n)):
    r = scores[name]
    lines.append(f'| {DATASET_NAMES.get(name, name)} | {r["num_examples"]} | {_pct(r["uf1"])} | '
                 f'{_pct(r["uar"])} |')
  for fold in agg['folds']:  # FERV39k: each fold's results per scene (the dataset's `scene` feature).
    if folds[fold].get('by_scene'):
      lines += ['', f'Fold {fold} per scene:', '', metrics.group_table(folds[fold]['by_scene']).rstrip()]
  p = results['provenance']
  lines += ['', f'Code {p["git_commit"] or "?"}{" (uncommitted changes)" if p["git_dirty"] else ""}; '
            f'jax {p["versions"]["jax"]}, flax {p["versions"]["flax"]}; '
            f'{p["devices"]["device_count"]} x {p["devices"]["device_kind"]}.', '']
  return '\n'.join(lines)


def _plot_curves(workdir: epath.Path, folds: list[str], path: str) -> None:
  import matplotlib  # Imported here: only the end of a cross-validation needs it.
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
  for fold in folds:
    try:
      records = metrics.read_metrics(os.fspath(workdir / f'fold_{fold}'))
    except FileNotFoundError:
      continue
    train_r = [r for r in records if r['split'] == 'train']
    val_r = [r for r in records if r['split'] == 'validation']
    left.plot([r['step'] for r in train_r], [r['loss'] for r in train_r], label=f'fold {fold}', lw=1)
    if val_r:
      right.plot([r['step'] for r in val_r], [r['uar'] for r in val_r], label=f'fold {fold}', lw=1)
  left.set(xlabel='step', ylabel='training loss', title='training loss')
  right.set(xlabel='step', ylabel='UAR', title='validation UAR (with a validation split)')
  left.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png')
  plt.close(fig)


def _write_results(workdir, results) -> None:
  if jax.process_index() != 0:
    return
  (workdir / 'results.json').write_text(json.dumps(results, indent=2))
  (workdir / 'results.md').write_text(markdown(results))
  pooled = results['summary']['pooled']
  metrics.save_confusion_matrix_png(np.array(pooled['confusion_matrix']), results['class_names'],
                                    os.fspath(workdir / 'confusion_matrix.png'),
                                    title=f'{results["dataset"]["name"]}: pooled over '
                                          f'{len(results["summary"]["folds"])} folds')
  _plot_curves(workdir, results['summary']['folds'], os.fspath(workdir / 'curves.png'))


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def _sliced_splits(split_names, config, folds) -> list[str]:
  """Split names with a slice ('train[:10%]') that the protocol's folds read."""
  names = set()
  for fold in folds:
    s = protocols.splits_for(split_names, fold, config.dataset.holdout_validation,
                             config.dataset.subject_folds)
    names.update(n for part in (s.train, s.validation or '', s.test) for n in part.split('+') if '[' in n)
  return sorted(names)


def _set_aside(workdir: epath.Path, fold: int) -> None:
  """--retrain: the fold's previous run moves to fold_<k>.replaced-<time>, never deleted."""
  fold_dir = workdir / f'fold_{fold}'
  if fold_dir.exists():
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    fold_dir.rename(workdir / f'fold_{fold}.replaced-{stamp}')
    _log(f'--retrain {fold}: moved the previous run to fold_{fold}.replaced-{stamp}')


def run(config, workdir: str, folds: str = '', retrain: str = '', *,
        start_over: bool = False, parallel: bool = False) -> dict[str, Any]:
  """Runs (or resumes) the cross-validation; returns results.json's content. `start_over` is passed to
  every fold (ferjax.train.train_and_evaluate); `parallel` trains the unfinished folds together
  (ferjax.parallel_folds)."""
  config_lib.validate(paths.resolve_config_paths(config))
  workdir = epath.Path(paths.resolve(workdir))
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = datasets.prepare(config.dataset)
  subject_folds = config.dataset.subject_folds
  num_folds = protocols.num_folds(dataset.split_names, subject_folds)
  wanted = parse_folds(folds, num_folds) or list(range(num_folds))
  again = set(parse_folds(retrain, num_folds, '--retrain'))
  state = _load_state(workdir, config)
  check_rerun(workdir, state, config, wanted, again)
  state['config'] = _identity(config)
  subjects = _subjects_by_split(dataset, _sliced_splits(dataset.split_names, config, wanted))
  fold_manifest = manifest(dataset.split_names, subjects, config.dataset.holdout_validation, wanted,
                           subject_folds)
  _save_state(workdir, state)

  todo = [k for k in wanted if str(k) not in state['folds'] or k in again]
  _log(f'Cross-validation of {dataset.name}: {num_folds} folds, running {len(wanted)} '
       f'({len(wanted) - len(todo)} finished earlier)')
  started, done_now = time.perf_counter(), 0
  if parallel and todo:
    for fold in todo:
      if fold in again:
        _set_aside(workdir, fold)
    reports = parallel_folds.train_and_evaluate(config, os.fspath(workdir), todo, start_over=start_over)
    for fold in todo:
      state['folds'][str(fold)] = _summary(reports[fold])
      state['fold_configs'][str(fold)] = _identity(config)
    _save_state(workdir, state)
    todo = []
  for i, fold in enumerate(wanted, 1):
    fold_dir = workdir / f'fold_{fold}'
    if fold not in todo:
      if not (fold_dir / 'report.json').exists():
        _log(f'note: fold {fold} finished earlier but {fold_dir} is gone; its recorded scores are kept '
             f'in {workdir / STATE}. Pass --retrain {fold} to train it again.')
      continue
    if fold in again:  # Train again from scratch; keep the old run aside.
      _set_aside(workdir, fold)
    eta = ((time.perf_counter() - started) / done_now * (len(todo) - done_now)) if done_now else None
    _log(f'=== Fold {fold} ({i} of {len(wanted)}; ETA of the table {_eta(eta) if eta else "-"}) ===')
    report = train.train_and_evaluate(_fold_config(config, fold), os.fspath(fold_dir),
                                      start_over=start_over)
    state['folds'][str(fold)] = _summary(report)
    state['fold_configs'][str(fold)] = _identity(config)
    _save_state(workdir, state)
    done_now += 1

  finished = {str(k): state['folds'][str(k)] for k in wanted if str(k) in state['folds']}
  results = {
      'model': config.model.name,
      'dataset': {**provenance.dataset_version(dataset.name, dataset.data_dir)},
      'protocol': _protocol_name(dataset.split_names, config, subject_folds),
      'num_folds': num_folds,
      'selection': ('best validation UAR' if config.dataset.holdout_validation
                    and num_folds > 1 else 'final step'),
      'class_names': list(dataset.class_names),
      'folds': finished,
      'summary': aggregate(finished, dataset.class_names),
      'manifest': fold_manifest,
      'config': state['config'],
      'provenance': provenance.collect(),
  }
  _write_results(workdir, results)
  s = results['summary']
  _log(f'Cross-validation ({len(finished)} folds): WAR {_pct(s["war"]["mean"])} ± {_pct(s["war"]["std"])} %  '
       f'UAR {_pct(s["uar"]["mean"])} ± {_pct(s["uar"]["std"])} %  macro-F1 '
       f'{_pct(s["macro_f1"]["mean"])} ± {_pct(s["macro_f1"]["std"])} %\n'
       f'Results: {workdir / "results.md"}')
  return results


def _protocol_name(split_names, config, subject_folds: int = 0) -> str:
  kind, _ = protocols.layout(split_names)
  num = protocols.num_folds(split_names, subject_folds)
  kfold = (f'{num} released folds (not subject-independent)' if protocols.released_folds(split_names)
           else f'{num}-fold subject-independent')
  name = {'kfold': kfold, 'train_validation': 'train / validation',
          'train_validation_test': 'official train / validation / test splits',
          'loso': (f'{num}-fold subject-independent (over {len(split_names)} subjects)' if subject_folds
                   else 'leave-one-subject-out')}[kind]
  return name + (' with a held-out validation fold' if config.dataset.holdout_validation else '')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  if not flags.FLAGS['config'].present or not flags.FLAGS.workdir:
    sys.exit('usage: python -m ferjax.crossval --config configs/<family>.py[:arg] --workdir DIR '
             '[--folds 0,3] [--retrain 3] [--parallel_folds]')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  try:
    config = config_lib.load_config(flags.FLAGS['config'])
    train.maybe_initialize_distributed()
    run(config, paths.resolve(flags.FLAGS.workdir), _FOLDS.value, _RETRAIN.value,
        start_over=flags.FLAGS.start_over, parallel=_PARALLEL_FOLDS.value)
  except train.Preempted as e:
    _log(f'Preempted in a fold: saved step {e.step}; rerun the same command to resume '
         f'(exit code {train.EXIT_PREEMPTED}).')
    sys.exit(train.EXIT_PREEMPTED)
  except (CrossvalError, *train.USER_ERRORS) as e:
    if flags.FLAGS.debug:
      raise
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
