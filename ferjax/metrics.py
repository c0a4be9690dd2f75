"""Metrics: classification report (WAR, UAR, macro-F1, confusion matrix), the micro-expression UF1/UAR
and the workdir's metric logs.

Only process 0 writes files. `metrics.jsonl` is always written (one JSON object per line, with `step` and
`split`); TensorBoard events go next to it through tensorboardX, which needs neither TensorFlow nor the
`tensorboard` package.
"""

from collections.abc import Mapping, Sequence
import json
import math

from etils import epath
import jax
import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """cm[i, j] = number of sequences of true class i predicted as class j."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
  return cm


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
  """Area under the ROC curve of `scores` for the binary labels `positive` (None without positives or
  negatives): the Mann-Whitney statistic P(score of a positive > score of a negative), ties counted 1/2,
  from average ranks."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if n_pos == 0 or n_neg == 0:
    return None
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, tied scores share their mean rank
  rank_sum = average_rank[inverse][positive].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_report(labels: np.ndarray, preds: np.ndarray,
                          class_names: Sequence[str], probs: np.ndarray | None = None) -> dict:
  """WAR (accuracy), UAR, macro-F1, macro precision, per-class recall/precision/F1, the confusion matrix
  and, given class probabilities `probs` [N, C], one-vs-rest ROC AUC per class and macro.

  * UAR (unweighted average recall) is the mean recall over the classes present in `labels` (as
    scikit-learn's `balanced_accuracy_score`): a small test fold without, say, contempt is not scored on a
    class it does not contain. Absent classes get recall None.
  * Macro-F1 is scikit-learn's `f1_score(average='macro')`: the mean F1 over the union of the true and the
    predicted classes, so a class that is predicted but absent from `labels` counts with F1 = 0.
  * Macro precision is scikit-learn's `precision_score(average='macro')` over the same classes: a class
    present in `labels` but never predicted counts with precision 0 (the Residual Masking Reconstruction
    Network paper reports it on FER2013).
  * ROC AUC (one class against the rest, from its probability column; the papers' "ROC AUC") per class,
    None for a class with no positive or no negative example; `macro_roc_auc` is their mean (as
    scikit-learn's `roc_auc_score(multi_class='ovr', average='macro')` when every class is present).
  """
  cm = confusion_matrix(labels, preds, len(class_names))
  support = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  tp = np.diag(cm).astype(np.float64)
  present = support > 0
  scored = present | (predicted > 0)
  recall = np.where(present, tp / np.maximum(support, 1), np.nan)
  precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
  # F1 = 2 TP / (2 TP + FP + FN), which is 0 (not undefined) when TP = 0.
  f1 = 2 * tp / np.maximum(support + predicted, 1)
  total = int(cm.sum())
  auc = None
  if probs is not None:
    probs = np.asarray(probs)
    if probs.shape != (len(labels), len(class_names)):
      raise ValueError(f'probs must be [{len(labels)}, {len(class_names)}] (examples, classes); found '
                       f'{probs.shape}')
    auc = [roc_auc(probs[:, c], np.asarray(labels) == c) for c in range(len(class_names))]
  defined = [a for a in auc or () if a is not None]
  extra = {} if auc is None else {
      'per_class_roc_auc': dict(zip(class_names, auc)),
      'macro_roc_auc': float(np.mean(defined)) if defined else float('nan')}
  return {
      'num_examples': total,
      'war': float(tp.sum() / total) if total else float('nan'),
      'uar': float(np.mean(recall[present])) if present.any() else float('nan'),
      'macro_f1': float(np.mean(f1[scored])) if scored.any() else float('nan'),
      'macro_precision': float(np.mean(precision[scored])) if scored.any() else float('nan'),
      **extra,
      'per_class_recall': {name: (None if math.isnan(r) else float(r))
                           for name, r in zip(class_names, recall)},
      'per_class_precision': {name: (float(p) if n else None)
                              for name, p, n in zip(class_names, precision, predicted)},
      'per_class_f1': {name: (float(f) if s else None) for name, f, s in zip(class_names, f1, scored)},
      'support': {name: int(s) for name, s in zip(class_names, support)},
      'class_names': list(class_names),
      'confusion_matrix': cm.tolist(),
  }


def uf1_uar(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> dict[str, float]:
  """UF1 and UAR of the micro-expression literature (MEGC2019), over the predictions given, which for a
  leave-one-subject-out table are those of all folds pooled (concatenated), not a mean over folds.

  Per class c: F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) and recall_c = TP_c / N_c (N_c = true samples of c);
  UF1 and UAR are their unweighted means over the classes. Absent classes:
    * a class neither true nor predicted has 2 TP + FP + FN = 0 (F1 undefined) and is left out of UF1;
      a class predicted but never true counts with F1 = 0 (it only has false positives);
    * a class with N_c = 0 has no recall and is left out of UAR.
  With all classes present (the composite and each of its parts) both are the plain means over classes.
  Returns ``{'uf1', 'uar', 'num_examples'}``; NaN scores for no examples.
  """
  cm = confusion_matrix(labels, preds, num_classes)
  tp = np.diag(cm).astype(np.float64)
  support, predicted = cm.sum(axis=1), cm.sum(axis=0)
  scored, present = (support + predicted) > 0, support > 0
  f1 = 2 * tp[scored] / (support + predicted)[scored]  # 2TP + FP + FN = N_c + predicted_c.
  recall = tp[present] / support[present]
  return {'uf1': float(f1.mean()) if f1.size else float('nan'),
          'uar': float(recall.mean()) if recall.size else float('nan'),
          'num_examples': int(cm.sum())}


def uf1_uar_by_group(labels: np.ndarray, preds: np.ndarray, groups: Sequence[str],
                     num_classes: int) -> dict[str, dict[str, float]]:
  """``uf1_uar`` of all the pooled predictions (``'full'``) and of each group's share, e.g. the source
  dataset of each sample of the MEGC2019 composite (groups 'casme2', 'samm', 'smic'), as the
  literature's Full / SMIC / CASME II / SAMM columns."""
  labels, preds, groups = np.asarray(labels), np.asarray(preds), np.asarray(groups)
  if not len(labels) == len(preds) == len(groups):
    raise ValueError(f'labels, preds and groups must have one entry per sample; found lengths '
                     f'{len(labels)}, {len(preds)}, {len(groups)}')
  out = {'full': uf1_uar(labels, preds, num_classes)}
  for group in sorted(set(groups.tolist())):
    keep = groups == group
    out[str(group)] = uf1_uar(labels[keep], preds[keep], num_classes)
  return out


def group_reports(labels: np.ndarray, preds: np.ndarray, groups: Sequence[str],
                  class_names: Sequence[str]) -> dict[str, dict]:
  """WAR, UAR, per-class recall, count and confusion matrix of every group of examples (e.g. FERV39k's
  scenes, the composite's source datasets), by name.

  ``groups`` names each example's group, aligned with ``labels`` and ``preds``; UAR is over the classes
  present in the group, as in :func:`classification_report`.
  """
  labels, preds, groups = np.asarray(labels), np.asarray(preds), np.asarray(groups)
  if not len(labels) == len(preds) == len(groups):
    raise ValueError(f'labels, preds and groups must have one entry per example; found {len(labels)}, '
                     f'{len(preds)}, {len(groups)}')
  out = {}
  for group in sorted(set(groups.tolist())):
    keep = groups == group
    r = classification_report(labels[keep], preds[keep], class_names)
    out[group] = {k: r[k] for k in ('num_examples', 'war', 'uar', 'per_class_recall', 'confusion_matrix')}
  return out


def group_table(reports: dict[str, dict], what: str = 'scene') -> str:
  """A Markdown table of :func:`group_reports`: one row per group, WAR and UAR in %."""
  rows = [f'| {what} | sequences | WAR (%) | UAR (%) |', '| --- | ---: | ---: | ---: |']
  for group, r in reports.items():
    rows.append(f'| {group} | {r["num_examples"]} | {100 * r["war"]:.2f} | {100 * r["uar"]:.2f} |')
  return '\n'.join(rows) + '\n'


def save_confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], path: str,
                              title: str = '') -> None:
  """Row-normalised confusion matrix with counts, as a PNG."""
  import matplotlib  # Imported here: only the end of a run needs it.
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  cm = np.asarray(cm)
  rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.7 * n), dpi=120)
  ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f'{rows[i, j]:.2f}\n({cm[i, j]})', ha='center', va='center', fontsize=7,
              color='white' if rows[i, j] > 0.5 else 'black')
  ax.set_xticks(range(n), class_names, rotation=45, ha='right')
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  if title:
    ax.set_title(title)
  fig.tight_layout()
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png')
  plt.close(fig)


class MetricWriter:
  """Appends scalars to `<workdir>/metrics.jsonl` and TensorBoard events (process 0 only)."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    self._path = epath.Path(workdir) / 'metrics.jsonl'
    self._tb = None
    if self._active:
      self._path.parent.mkdir(parents=True, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(epath.Path(workdir) / 'tensorboard'))
      except Exception as e:  # Events are a convenience; metrics.jsonl is the record.
        print(f'TensorBoard events disabled: {e}')

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    if not self._active:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in scalars.items()}}
    with self._path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f'{split}/{k}', float(v), int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl`, in order."""
  path = epath.Path(workdir) / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
