"""Classification report (WAR, UAR, macro-F1) and the workdir metric files."""

import json

import numpy as np
import pytest

from ferjax import metrics

NAMES = ('anger', 'happiness', 'surprise')


def test_report_numbers():
  labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
  preds = np.array([0, 0, 0, 1, 1, 1, 2, 0])
  r = metrics.classification_report(labels, preds, NAMES)
  assert r['war'] == pytest.approx(6 / 8)
  # Recalls 3/4, 2/2, 1/2 -> UAR differs from WAR on imbalanced data.
  assert r['uar'] == pytest.approx((0.75 + 1.0 + 0.5) / 3)
  assert r['per_class_recall'] == pytest.approx({'anger': 0.75, 'happiness': 1.0, 'surprise': 0.5})
  # Precisions 3/4, 2/3, 1/1.
  f1 = [2 * p * q / (p + q) for p, q in ((0.75, 0.75), (2 / 3, 1.0), (1.0, 0.5))]
  assert r['macro_f1'] == pytest.approx(np.mean(f1))
  assert r['confusion_matrix'] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_absent_class_is_not_counted_in_uar():
  r = metrics.classification_report(np.array([0, 1]), np.array([0, 0]), NAMES)
  assert r['per_class_recall']['surprise'] is None
  assert r['uar'] == pytest.approx(0.5)


def test_writer_and_png(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  writer.write(10, 'train', {'loss': 1.5, 'accuracy': 0.25})
  writer.write(20, 'validation', {'war': 0.5})
  writer.close()
  records = metrics.read_metrics(str(tmp_path))
  assert records == [{'step': 10, 'split': 'train', 'loss': 1.5, 'accuracy': 0.25},
                     {'step': 20, 'split': 'validation', 'war': 0.5}]
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  png = tmp_path / 'cm.png'
  metrics.save_confusion_matrix_png(np.array([[3, 1], [0, 2]]), NAMES[:2], str(png))
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  json.dumps(metrics.classification_report(np.array([0]), np.array([0]), NAMES))


def test_macro_f1_counts_a_predicted_but_absent_class_like_scikit_learn():
  # True classes {0, 1}; class 2 is predicted once but never true.
  labels = np.array([0, 0, 1, 1])
  preds = np.array([0, 2, 1, 1])
  r = metrics.classification_report(labels, preds, NAMES)
  # By hand: F1(0) = 2*1/(2*1+0+1) = 2/3, F1(1) = 1, F1(2) = 0 (one FP, no TP):
  # sklearn.metrics.f1_score(labels, preds, average='macro') = (2/3 + 1 + 0) / 3.
  assert r['macro_f1'] == pytest.approx((2 / 3 + 1 + 0) / 3)
  # UAR is over the classes present in the labels only: (1/2 + 1) / 2.
  assert r['uar'] == pytest.approx(0.75)
  assert r['per_class_f1'] == pytest.approx({'anger': 2 / 3, 'happiness': 1.0, 'surprise': 0.0})
  assert r['per_class_precision']['surprise'] == 0.0 and r['per_class_recall']['surprise'] is None


def test_macro_f1_ignores_classes_neither_true_nor_predicted():
  r = metrics.classification_report(np.array([0, 1]), np.array([0, 1]), NAMES)
  assert r['macro_f1'] == 1.0 and r['per_class_f1']['surprise'] is None


def test_roc_auc_and_macro_precision_by_hand():
  labels = np.array([0, 0, 1, 2])
  probs = np.array([[0.6, 0.3, 0.1],
                    [0.3, 0.3, 0.4],
                    [0.5, 0.4, 0.1],
                    [0.3, 0.1, 0.6]])
  r = metrics.classification_report(labels, probs.argmax(-1), NAMES, probs=probs)
  # anger: positives score 0.6, 0.3; negatives 0.5, 0.3 -> pairs won 1, 1, 0 and one tie (1/2) of 4.
  assert r['per_class_roc_auc'] == pytest.approx({'anger': 0.625, 'happiness': 1.0, 'surprise': 1.0})
  assert r['macro_roc_auc'] == pytest.approx((0.625 + 1 + 1) / 3)
  # Predictions 0, 2, 0, 2: precision 1/2, happiness never predicted (0, as scikit-learn), 1/2.
  assert r['macro_precision'] == pytest.approx(1 / 3)
  assert r['per_class_precision'] == {'anger': 0.5, 'happiness': None, 'surprise': 0.5}
  # Without probabilities there is no AUC.
  assert 'macro_roc_auc' not in metrics.classification_report(labels, probs.argmax(-1), NAMES)


def test_roc_auc_equals_the_pair_count_and_skips_a_class_without_examples():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, 40) / 4.0  # many ties
  positive = rng.random(40) < 0.3
  pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
           for p in scores[positive] for n in scores[~positive]]
  assert metrics.roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
  assert metrics.roc_auc(scores, np.zeros(40, bool)) is None
  labels = np.array([0, 0, 1, 1])
  probs = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0]])
  r = metrics.classification_report(labels, probs.argmax(-1), NAMES, probs=probs)
  assert r['per_class_roc_auc']['surprise'] is None
  assert r['per_class_roc_auc']['anger'] == pytest.approx(0.75)  # 0.9 beats 0.2, 0.7; 0.4 beats 0.2
  assert r['macro_roc_auc'] == pytest.approx(0.75)
  with pytest.raises(ValueError, match=r'probs must be \[4, 3\]'):
    metrics.classification_report(labels, probs.argmax(-1), NAMES, probs=probs[:, :2])


def test_uf1_uar_pool_the_folds_by_hand():
  # Two LOSO folds (negative=0, positive=1, surprise=2). Fold A: labels 0 0 1, preds 0 1 1;
  # fold B: labels 2 2 0, preds 2 0 0. Pooled confusion: TP = (2, 1, 1), FP = (1, 1, 0), FN = (1, 0, 1).
  labels = np.array([0, 0, 1] + [2, 2, 0])
  preds = np.array([0, 1, 1] + [2, 0, 0])
  scores = metrics.uf1_uar(labels, preds, 3)
  f1 = [2 * 2 / (4 + 1 + 1), 2 * 1 / (2 + 1 + 0), 2 * 1 / (2 + 0 + 1)]  # 2/3, 2/3, 2/3
  assert scores['uf1'] == pytest.approx(np.mean(f1)) == pytest.approx(2 / 3)
  assert scores['uar'] == pytest.approx((2 / 3 + 1 / 1 + 1 / 2) / 3)
  assert scores['num_examples'] == 6
  # Pooled is not the mean of the folds' scores: each fold alone has UAR 3/4 (fold A: recalls 1/2, 1;
  # fold B: 1/2, 1; the class absent from a fold is left out), their mean 3/4 > the pooled 13/18.
  fold_a = metrics.uf1_uar(labels[:3], preds[:3], 3)
  fold_b = metrics.uf1_uar(labels[3:], preds[3:], 3)
  assert fold_a['uar'] == pytest.approx(0.75) and fold_b['uar'] == pytest.approx(0.75)
  assert scores['uar'] == pytest.approx(13 / 18)


def test_uf1_uar_absent_classes():
  # Class 2 neither true nor predicted: left out of both means.
  s = metrics.uf1_uar(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
  assert s['uf1'] == pytest.approx((2 / 3 + 2 / 3) / 2)  # F1_0 = 2/(2+1), F1_1 = 2/(2+1)
  assert s['uar'] == pytest.approx((1 + 1 / 2) / 2)
  # Class 2 predicted but never true: F1 = 0 counts in UF1; no recall, so not in UAR.
  s = metrics.uf1_uar(np.array([0, 1]), np.array([0, 2]), 3)
  assert s['uf1'] == pytest.approx((1 + 0 + 0) / 3)
  assert s['uar'] == pytest.approx((1 + 0) / 2)
  s = metrics.uf1_uar(np.array([], np.int64), np.array([], np.int64), 3)
  assert np.isnan(s['uf1']) and np.isnan(s['uar']) and s['num_examples'] == 0


def test_uf1_uar_by_group_splits_the_pool_by_source_dataset():
  labels = np.array([0, 1, 2, 0, 1, 2])
  preds = np.array([0, 1, 2, 1, 1, 0])
  groups = ['casme2', 'casme2', 'casme2', 'smic', 'smic', 'smic']
  out = metrics.uf1_uar_by_group(labels, preds, groups, 3)
  assert set(out) == {'full', 'casme2', 'smic'}
  assert out['casme2']['uf1'] == pytest.approx(1.0) and out['casme2']['uar'] == pytest.approx(1.0)
  # smic: TP = (0, 1, 0), FP = (1, 1, 0), FN = (1, 0, 1): F1 = (0, 2/3, 0); recall = (0, 1, 0).
  assert out['smic']['uf1'] == pytest.approx(2 / 9) and out['smic']['uar'] == pytest.approx(1 / 3)
  assert out['full'] == metrics.uf1_uar(labels, preds, 3)
  with pytest.raises(ValueError, match='one entry per sample'):
    metrics.uf1_uar_by_group(labels, preds, groups[:2], 3)


def test_group_reports_by_hand():
  # Group a: labels 0 0 1, predictions 0 1 1 -> WAR 2/3, recalls 1/2 and 1 -> UAR 3/4.
  # Group b: labels 1 2, predictions 1 0 -> WAR 1/2, recalls 1 and 0 -> UAR 1/2.
  reports = metrics.group_reports([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ['a', 'a', 'a', 'b', 'b'],
                                  ['x', 'y', 'z'])
  assert list(reports) == ['a', 'b']
  assert reports['a']['num_examples'] == 3 and reports['a']['war'] == pytest.approx(2 / 3)
  assert reports['a']['uar'] == pytest.approx(0.75)
  assert reports['a']['per_class_recall'] == {'x': 0.5, 'y': 1.0, 'z': None}
  assert (reports['b']['war'], reports['b']['uar']) == (0.5, 0.5)
  assert metrics.group_table(reports).splitlines()[2] == '| a | 3 | 66.67 | 75.00 |'
  with pytest.raises(ValueError, match='one entry per example'):
    metrics.group_reports([0], [0], ['a', 'b'], ['x'])
