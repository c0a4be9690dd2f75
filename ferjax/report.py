r"""Side-by-side Markdown table of runs: `python -m ferjax.report RUN_DIR [RUN_DIR ...]`.

A RUN_DIR is a cross-validation (`results.json`, from `python -m ferjax.crossval`) or a single training run
(`report.json`, from `python -m ferjax.train`, shown as one fold). Each row: the run, model, dataset, folds,
WAR / UAR / macro-F1 as mean ± std over the folds, the pooled UAR, and the number the model's paper reports
for that dataset when there is one (PAPER_RESULTS), so ablations and model comparisons read as one table.
"""

import json
import os
import sys
from typing import Any

from absl import app, flags

_OUTPUT = flags.DEFINE_string('output', '', 'Also write the table to this Markdown file.')

# Accuracy (WAR, %) the seed papers report, by (model.name, dataset name without builder config).
PAPER_RESULTS = {
    ('res_rbg', 'ck_plus'): ('98.10', 'Res-RBG, Sensors 2025 (10-fold)'),
    ('res_rbg', 'oulu_casia'): ('88.64', 'Res-RBG, Sensors 2025 (10-fold)'),
    ('rfscnn', 'enterface05'): ('88.67', 'RFSCNN, JIPS (LOSO)'),
    ('rfscnn', 'rml'): ('70.32', 'RFSCNN, JIPS (LOSO)'),
    ('rfscnn', 'afew'): ('63.84', 'RFSCNN, JIPS (AFEW 6.0 validation)'),
    ('rmn', 'fer2013'): ('74.14', 'Residual Masking Network, ICPR 2020 (private test, TTA)'),
}


class ReportError(ValueError):
  """A directory holds neither results.json nor report.json."""


def _pct(x: float) -> str:
  return f'{100 * x:.2f}'


def load_run(run_dir: str) -> dict[str, Any]:
  """A row's data from a cross-validation or a single run directory."""
  results, single = (os.path.join(run_dir, name) for name in ('results.json', 'report.json'))
  if os.path.exists(results):
    r = json.load(open(results))
    s = r['summary']
    return {'run': run_dir, 'model': r['model'], 'dataset': r['dataset']['name'],
            'folds': f'{len(s["folds"])}/{r["num_folds"]}',
            **{k: (s[k]['mean'], s[k]['std']) for k in ('war', 'uar', 'macro_f1')},
            'pooled_uar': s['pooled']['uar']}
  if os.path.exists(single):
    r = json.load(open(single))
    config_path = os.path.join(run_dir, 'config.json')
    model = json.load(open(config_path))['model']['name'] if os.path.exists(config_path) else '?'
    return {'run': run_dir, 'model': model, 'dataset': r.get('dataset', '?'),
            'folds': f'fold {r.get("fold", "?")}',
            **{k: (r[k], None) for k in ('war', 'uar', 'macro_f1')}, 'pooled_uar': r['uar']}
  raise ReportError(f'{run_dir} holds neither results.json (python -m ferjax.crossval) nor report.json '
                    '(python -m ferjax.train); is the run finished?')


def _cell(value: tuple[float, float | None]) -> str:
  mean, std = value
  return _pct(mean) if std is None else f'{_pct(mean)} ± {_pct(std)}'


def table(rows: list[dict[str, Any]]) -> str:
  lines = ['| run | model | dataset | folds | WAR % | UAR % | macro-F1 % | pooled UAR % | paper WAR % |',
           '| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |']
  for r in rows:
    paper = PAPER_RESULTS.get((r['model'], r['dataset'].split('/')[0]))
    lines.append(f'| {r["run"]} | {r["model"]} | {r["dataset"]} | {r["folds"]} | {_cell(r["war"])} | '
                 f'{_cell(r["uar"])} | {_cell(r["macro_f1"])} | {_pct(r["pooled_uar"])} | '
                 f'{f"{paper[0]} ({paper[1]})" if paper else "-"} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) < 2:
    sys.exit('usage: python -m ferjax.report RUN_DIR [RUN_DIR ...] [--output table.md]')
  try:
    text = table([load_run(d) for d in argv[1:]])
  except (ReportError, OSError, KeyError, json.JSONDecodeError) as e:
    sys.exit(f'error: {e}')
  print(text, end='')
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  app.run(main)
