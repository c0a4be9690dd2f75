"""The casme2, samm, smic and megc2019 builders on tiny copies of the released layouts (tests/micro_dummy.py),
built for real (TFDS + ArrayRecord) from .xlsx and .csv coding sheets, and the composite through
`python -m ferjax.crossval` with its UF1 / UAR rows per dataset."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import micro_dummy as dummy  # noqa: E402  pylint: disable=wrong-import-position

from ferjax import crossval, metrics  # noqa: E402
from ferjax.data import inputs, micro_flow, protocols  # noqa: E402
from ferjax.models import ststnet  # noqa: E402,F401  # Registers the onset_apex_flow input.
from tfds_builders import micro_builder as mb  # noqa: E402
from tfds_builders import sequence_builder as sb  # noqa: E402
from tfds_builders import testing  # noqa: E402
from tfds_builders.casme2 import casme2_dataset_builder as casme2  # noqa: E402
from tfds_builders.megc2019 import megc2019_dataset_builder as megc2019  # noqa: E402
from tfds_builders.samm import samm_dataset_builder as samm  # noqa: E402
from tfds_builders.smic import smic_dataset_builder as smic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {'size': 32, 'face_detector': 'none'}  # Noise frames: no detector would find a face in them.


@pytest.fixture(autouse=True)
def _one_worker(monkeypatch):
  monkeypatch.setenv('FERJAX_NUM_WORKERS', '1')


def _build(builder_cls, config, tmp_path, manual_dir):
  data_dir = tmp_path / 'tfds'
  builder = testing.build(builder_cls, config, data_dir, manual_dir)
  name = f'{builder.name}/{config.name}'
  return builder, testing.read_all(name, builder.info.splits.keys(), data_dir)


def _skips(builder):
  return {s['sequence_id']: (s.get('line'), s['reason']) for s in builder.info.metadata['skipped']}


def _assert_skips(builder, expected):
  skips = _skips(builder)
  assert sorted(skips) == sorted(expected)
  for key, (row, words) in expected.items():
    assert skips[key][0] == row and words in skips[key][1], (key, skips[key])


def test_read_sheet_finds_the_header_below_title_rows_in_both_forms(tmp_path):
  rows = {}
  for form in ('xlsx', 'csv'):
    path = dummy.write_samm(tmp_path / form, form)
    rows[form] = mb.read_sheet(path, samm.layout.COLUMNS)
  assert rows['xlsx'] == rows['csv']
  number, cells = rows['xlsx'][0]
  assert number == 4  # Two title rows and the header above it, as the spreadsheet numbers rows.
  assert (cells['subject'], cells['filename'], cells['onsetframe'], cells['estimatedemotion']) == (
      '006', '006_1_2', '5562', 'Happiness')
  with pytest.raises(mb.SheetError, match='no header row with the columns'):
    mb.read_sheet(path, ['Subject', 'No Such Column'])


@pytest.mark.parametrize('form', ['xlsx', 'csv'])
def test_casme2_clips_onset_to_offset_and_irregular_rows_skipped(form, tmp_path):
  dummy.write_casme2(tmp_path / 'copy', form)
  builder, records = _build(casme2.Builder, casme2.Casme2Config(name=f'test_{form}', **TINY), tmp_path,
                            tmp_path / 'copy')
  assert list(builder.info.splits) == ['subject_sub01', 'subject_sub02', 'subject_sub03']
  assert sorted(records) == ['sub01/EP02_01f', 'sub01/EP19_05f', 'sub02/EP14_01', 'sub03/EP01_2',
                             'sub03/EP07_04']
  r = records['sub01/EP02_01f']  # Frames 44-54 on disk; onset 46, apex 49, offset 52.
  assert (r['num_frames'], r['onset'], r['apex'], r['offset']) == (7, 0, 3, 6)
  assert list(r['frame_indices']) == list(range(7)) and r['frames'][0].shape == (32, 32, 3)
  assert (r['subject'], r['action_units'], r['emotion'], r['source_dataset']) == (
      b'sub01', b'12', b'happiness', b'casme2')
  names = builder.info.features['label'].names
  assert names == list(casme2.layout.EMOTIONS) and names[r['label']] == 'happiness'
  assert (records['sub02/EP14_01']['apex'], records['sub02/EP14_01']['offset']) == (1, 6)
  _assert_skips(builder, dummy.EXPECTED_SKIPS['casme2'])
  assert builder.info.metadata['num_skipped'] == 3
  assert builder.info.metadata['num_released_crops'] == 5  # Cropped/: stored as released.
  # The model input reads this record's onset and apex frames.
  flow = inputs.get(micro_flow.NAME).compute(inputs.View(
      r['frames'], np.arange(1), r['num_frames'], np.eye(2, 3), 28, record=r))
  np.testing.assert_allclose(flow, micro_flow.flow_strain(r['frames'][0], r['frames'][3], 28), atol=1e-6)


def test_casme2_5class_leaves_out_sadness_and_fear(tmp_path):
  dummy.write_casme2(tmp_path / 'copy')
  builder, records = _build(casme2.Builder, casme2.Casme2Config(
      name='test_5class', classes=casme2.FIVE_CLASSES, **TINY), tmp_path, tmp_path / 'copy')
  assert builder.info.features['label'].names == ['disgust', 'happiness', 'others', 'repression', 'surprise']
  assert 'sub03/EP07_04' not in records and len(records) == 4
  assert builder.info.metadata['excluded'] == [{'sequence_id': 'sub03/EP07_04', 'emotion': 'sadness',
                                                'row': 9}]
  assert builder.info.metadata['num_skipped'] == 3  # Excluded by the setting, not skipped.


@pytest.mark.parametrize('form', ['xlsx', 'csv'])
def test_samm_sheet_with_title_rows_grey_frames_and_a_row_out_of_order(form, tmp_path):
  dummy.write_samm(tmp_path / 'copy', form)
  builder, records = _build(samm.Builder, mb.MicroConfig(name=f'test_{form}', **TINY), tmp_path,
                            tmp_path / 'copy')
  assert list(builder.info.splits) == ['subject_006', 'subject_007']
  assert sorted(records) == ['006_1_2', '006_1_3', '007_3_2', '007_6_1']
  r = records['006_1_2']  # Frames 5560-5569; onset 5562, apex 5565, offset 5568.
  assert (r['num_frames'], r['onset'], r['apex'], r['offset'], r['subject']) == (7, 0, 3, 6, b'006')
  assert r['frames'][0].shape == (32, 32, 3)  # Grey frames stored as three equal channels.
  np.testing.assert_array_equal(r['frames'][0][..., 0], r['frames'][0][..., 2])
  names = builder.info.features['label'].names
  assert names[records['007_6_1']['label']] == 'other' and records['006_1_3']['emotion'] == b'anger'
  _assert_skips(builder, dummy.EXPECTED_SKIPS['samm'])
  assert builder.info.metadata['num_released_crops'] == 0


def test_smic_hs_apex_stand_in_and_a_folder_without_frames(tmp_path):
  dummy.write_smic(tmp_path / 'copy')
  builder, records = _build(smic.Builder, mb.MicroConfig(name='test', **TINY), tmp_path, tmp_path / 'copy')
  assert sorted(records) == ['s01_ne_01', 's01_po_01', 's02_sur_01']  # HS, not VIS.
  a, b = records['s01_ne_01'], records['s02_sur_01']
  assert (a['num_frames'], a['onset'], a['apex'], a['offset']) == (7, 0, 3, 6)  # The middle of 7.
  assert (b['num_frames'], b['apex'], b['subject']) == (6, 3, b's02')  # Of 6: index 2.5 rounds up.
  assert builder.info.metadata['apex_position'] == 0.5
  _assert_skips(builder, dummy.EXPECTED_SKIPS['smic'])
  builder, records = _build(smic.Builder, mb.MicroConfig(name='test_q', apex_position=0.25, **TINY),
                            tmp_path, tmp_path / 'copy')
  assert records['s01_ne_01']['apex'] == 2  # round(0.25 * 6) = 1.5 -> 2.


def test_composite_relabels_by_the_list_and_reports_missing_samples(tmp_path, capsys):
  root = dummy.write_all(tmp_path / 'copy')
  config = megc2019.Megc2019Config(name='test', list_file=str(dummy.write_list(tmp_path / 'list.csv')),
                                   **TINY)
  builder, records = _build(megc2019.Builder, config, tmp_path, root)
  assert builder.info.features['label'].names == ['negative', 'positive', 'surprise']
  names = builder.info.features['label'].names
  got = {k: (names[r['label']], r['subject'].decode(), r['source_dataset'].decode(), r['emotion'].decode())
         for k, r in records.items()}
  assert got == {
      'casme2/sub01/EP02_01f': ('positive', 'casme2/sub01', 'casme2', 'happiness'),
      'casme2/sub01/EP19_05f': ('negative', 'casme2/sub01', 'casme2', 'disgust'),
      'casme2/sub02/EP14_01': ('surprise', 'casme2/sub02', 'casme2', 'surprise'),
      'samm/006_1_2': ('positive', 'samm/006', 'samm', 'happiness'),
      'samm/006_1_3': ('negative', 'samm/006', 'samm', 'anger'),
      'samm/007_3_2': ('surprise', 'samm/007', 'samm', 'surprise'),
      'smic/s01_ne_01': ('negative', 'smic/s01', 'smic', 'negative'),  # Folder s1/micro/negative/s1_ne_01.
      'smic/s01_po_01': ('positive', 'smic/s01', 'smic', 'positive'),
      'smic/s02_sur_01': ('surprise', 'smic/s02', 'smic', 'surprise'),
  }
  assert records['samm/006_1_2']['onset'] == 0 and records['samm/006_1_2']['apex'] == 3
  meta = builder.info.metadata
  assert (meta['num_missing'], meta['missing']) == (1, ['casme2/sub04/EP12_02f'])
  assert 'WARNING: 1 of the 11 listed samples are not in your copy' in capsys.readouterr().out
  _assert_skips(builder, {'casme2/sub02/EP09_01': (4, "apex frame is '/'")})  # Listed, row unusable.
  assert meta['samples_by_dataset'] == {'casme2': 3, 'samm': 3, 'smic': 3}
  splits = protocols.dataset_splits('megc2019/test', str(tmp_path / 'tfds'))
  assert splits == ['subject_casme2_sub01', 'subject_casme2_sub02', 'subject_samm_006', 'subject_samm_007',
                    'subject_smic_s01', 'subject_smic_s02']
  assert protocols.num_folds(splits) == 6
  assert testing.assert_subject_independent('megc2019/test', tmp_path / 'tfds', records) == 6


def test_composite_reports_a_whole_dataset_absent_and_one_part_alone(tmp_path, capsys):
  dummy.write_smic(tmp_path / 'copy')
  listed = str(dummy.write_list(tmp_path / 'list.csv'))
  builder, records = _build(megc2019.Builder, megc2019.Megc2019Config(name='test', list_file=listed, **TINY),
                            tmp_path, tmp_path / 'copy')
  assert sorted(records) == ['smic/s01_ne_01', 'smic/s01_po_01', 'smic/s02_sur_01']
  meta = builder.info.metadata
  assert meta['num_missing'] == 8 and set(meta['absent_datasets']) == {'casme2', 'samm'}
  assert 'WARNING: 8 of the 11 listed samples' in capsys.readouterr().out
  builder, records = _build(megc2019.Builder, megc2019.Megc2019Config(
      name='test_smic', datasets=('smic',), list_file=listed, **TINY), tmp_path, tmp_path / 'copy')
  assert len(records) == 3 and builder.info.metadata['num_missing'] == 0


@pytest.mark.parametrize('preset, name, config, classes', [
    ('megc2019', 'megc2019', 'full', 3), ('casme2', 'megc2019', 'casme2', 3), ('samm', 'megc2019', 'samm', 3),
    ('smic', 'megc2019', 'smic', 3), ('casme2_5class', 'casme2', '5class', 5)])
def test_ststnet_presets_name_the_built_datasets(preset, name, config, classes):
  spec = importlib.util.spec_from_file_location('ststnet_config', os.path.join(REPO, 'configs', 'ststnet.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(preset)
  assert (c.dataset.name, c.dataset.config, c.dataset.subject_folds) == (name, config, 0)
  assert (c.model.name, c.dataset.image_size, c.train.learning_rate) == ('ststnet', 28, 5e-5)
  builder = sb.builder_class(name, config)
  chosen = next(b for b in builder.BUILDER_CONFIGS if b.name == config)
  kept = chosen.classes if name == 'casme2' else megc2019.CLASSES
  assert len(kept) == classes


def test_official_list_counts():
  rows = megc2019.read_list(megc2019.LIST_FILE)
  assert len(rows) == 442
  counts = {d: sum(r['dataset'] == d for r in rows) for d in mb.DATASETS}
  assert counts == {'casme2': 145, 'samm': 133, 'smic': 164}
  assert len({(r['dataset'], r['subject']) for r in rows}) == 68
  labels = [r['label'] for r in rows]
  assert [labels.count(c) for c in megc2019.CLASSES] == [250, 109, 83]


@pytest.mark.parametrize('name', ['casme2', 'samm', 'smic', 'megc2019'])
def test_wrong_manual_dir_is_one_message_naming_the_layout(name, tmp_path, capsys):
  (tmp_path / 'copy' / 'unrelated').mkdir(parents=True)
  assert sb.main([name, '--manual_dir', str(tmp_path / 'copy'), '--data_dir', str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: found ') and 'Expected (at any depth below it)' in err
  assert 'Traceback' not in err and 'unrelated/' in err


def test_pooled_uf1_uar_per_dataset_by_hand():
  fold = {'war': 0.5, 'uar': 0.5, 'macro_f1': 0.5, 'num_examples': 4}
  results = {
      '0': {**fold, 'confusion_matrix': [[2, 0, 0], [0, 1, 1], [0, 0, 0]],
            'by_dataset': {'casme2': {'confusion_matrix': [[2, 0, 0], [0, 0, 0], [0, 0, 0]]},
                           'smic': {'confusion_matrix': [[0, 0, 0], [0, 1, 1], [0, 0, 0]]}}},
      '1': {**fold, 'confusion_matrix': [[0, 1, 0], [0, 0, 0], [0, 0, 1]],
            'by_dataset': {'samm': {'confusion_matrix': [[0, 1, 0], [0, 0, 0], [0, 0, 1]]}}},
  }
  scores = crossval.aggregate(results, ['negative', 'positive', 'surprise'])['uf1_uar']
  # Pooled [[2,1,0],[0,1,1],[0,0,1]]: F1 = 4/5, 2/4, 2/3; recall = 2/3, 1/2, 1/1.
  assert scores['full']['uf1'] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
  assert scores['full']['uar'] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  # CASME II: only class 0, all right; classes neither true nor predicted are left out.
  assert (scores['casme2']['uf1'], scores['casme2']['uar']) == (1.0, 1.0)
  # SMIC: class 1 F1 2/3, class 2 predicted but never true F1 0; recall of class 1 alone.
  assert scores['smic']['uf1'] == pytest.approx(1 / 3) and scores['smic']['uar'] == 0.5
  # SAMM: class 0 missed (F1 0, recall 0), class 1 only predicted (F1 0), class 2 right.
  assert scores['samm']['uf1'] == pytest.approx(1 / 3) and scores['samm']['uar'] == 0.5
  assert [scores[k]['num_examples'] for k in ('full', 'casme2', 'samm', 'smic')] == [6, 2, 2, 2]


@pytest.mark.slow  # Two trainings in a subprocess, 30-70 s on 2 cores; the pooling is checked by hand above.
@pytest.mark.parametrize('extra', [[], ['--parallel_folds']])  # Folds one by one, or in one program.
def test_crossval_on_the_composite_shows_uf1_uar_per_dataset(extra, tmp_path):
  root = dummy.write_all(tmp_path / 'copy')
  config = megc2019.Megc2019Config(name='dummy', list_file=str(dummy.write_list(tmp_path / 'list.csv')),
                                   **TINY)
  testing.build(megc2019.Builder, config, tmp_path / 'tfds', root)
  overrides = {'dataset.data_dir': tmp_path / 'tfds', 'dataset.config': 'dummy', 'input.batch_size': 4,
               'input.eval_batch_size': 4, 'train.num_steps': 2, 'train.log_every_steps': 1,
               'train.eval_every_steps': 2, 'train.checkpoint_every_steps': 2, 'dataset.micro_flow': 'dis'}
  args = [sys.executable, '-m', 'ferjax.crossval', '--config', 'configs/ststnet.py:megc2019,subject_folds=2',
          '--workdir', str(tmp_path / 'run'), *[f'--config.{k}={v}' for k, v in overrides.items()], *extra]
  done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / 'run' / 'results.json').read_text())
  # Two subject-independent folds over the 6 subjects (sorted, dealt [i::2]): each has all three datasets.
  assert results['manifest']['0']['test']['subjects'] == ['casme2/sub01', 'samm/006', 'smic/s01']
  scores = results['summary']['uf1_uar']
  assert list(scores) == ['full', 'casme2', 'samm', 'smic']
  assert [scores[k]['num_examples'] for k in scores] == [9, 3, 3, 3]
  # The pooled rows are uf1_uar of the pooled predictions: rebuild them from the folds' confusion matrices.
  for name in ('casme2', 'samm', 'smic'):
    cm = sum(np.asarray(results['folds'][f]['by_dataset'][name]['confusion_matrix']) for f in ('0', '1'))
    labels = np.repeat(np.arange(3), cm.sum(axis=1))
    preds = np.concatenate([np.repeat(np.arange(3), row) for row in cm])
    assert scores[name] == metrics.uf1_uar(labels, preds, 3)
  table = (tmp_path / 'run' / 'results.md').read_text()
  rows = [line.split(' | ')[0].strip('| ') for line in table.splitlines()
          if line.startswith(('| Full', '| SMIC', '| CASME II', '| SAMM'))]
  assert rows == ['Full', 'SMIC', 'CASME II', 'SAMM']
