"""Config files and validation: presets load, bad keys/values fail early with one line naming the key."""

import os
import subprocess
import sys

import ml_collections
import pytest

from ferjax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(arg=None):
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  try:
    import res_rbg
  finally:
    sys.path.pop(0)
  return res_rbg.get_config(arg)


@pytest.mark.parametrize('arg', [None, 'ck_plus', 'synthetic', 'oulu_casia,fold=3', 'rml,fold=2',
                                 'ck_plus,rbg_blocks=3'])
def test_presets_are_valid(arg):
  config = config_lib.validate(_load(arg))
  assert config.model.name == 'res_rbg'


def test_preset_arguments():
  assert _load('oulu_casia,fold=3').dataset.fold == 3
  assert _load('oulu_casia').dataset.name == 'oulu_casia'
  assert _load('ck_plus,rbg_blocks=1').model.rbg_blocks == 1
  assert _load().dataset.name == 'ck_plus' and _load().model.rbg_blocks == 2
  with pytest.raises(ValueError, match='fold'):
    _load('ck_plus,bogus=1')


@pytest.mark.parametrize('key,value,expected', [
    ('model.attention', 'ecaa', "one of 'none', 'se', 'eca', 'geca'"),
    ('model.dropout', 1.5, '< 1'),
    ('dataset.num_frames', 0, '>= 1'),
    ('train.optimizer', 'adam', "one of 'adamw', 'sgd'"),
    ('augment.crop_scale', (0.9, 0.5), 'min <= max'),
    ('mesh.data', 0, '-1'),
])
def test_invalid_values_name_key_and_allowed(key, value, expected):
  config = _load('synthetic')
  section, field = key.split('.')
  config[section][field] = value
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(config)
  message = str(info.value)
  assert key in message and expected in message and '\n' not in message


def test_unknown_key_in_config_file():
  config = _load('synthetic')
  config.model.hiden = 3
  with pytest.raises(config_lib.ConfigError, match="'model.hiden' is unknown"):
    config_lib.validate(config)


def test_missing_key():
  config = ml_collections.ConfigDict(_load('synthetic').to_dict())
  del config.train['label_smoothing']
  with pytest.raises(config_lib.ConfigError, match='train.label_smoothing'):
    config_lib.validate(config)


def _run_train(*args, tmp_path):
  return subprocess.run(
      [sys.executable, '-m', 'ferjax.train', '--config', 'configs/res_rbg.py:synthetic',
       '--workdir', str(tmp_path / 'w'), *args],
      cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('override,key', [
    ('--config.model.hiden=3', 'hiden'),
    ('--config.model.attention=ecaa', 'model.attention'),
    ('--config.train.learning_rate=fast', 'learning_rate'),
])
def test_cli_rejects_bad_overrides_in_one_line(override, key, tmp_path):
  result = _run_train(override, tmp_path=tmp_path)
  assert result.returncode != 0
  lines = [line for line in result.stderr.strip().splitlines() if line.startswith('error')]
  assert len(lines) == 1 and key in lines[0], result.stderr
  assert 'Traceback' not in result.stderr
  # Nothing was prepared or compiled: the workdir holds no checkpoint.
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_ablation_rows_are_cumulative_and_end_at_the_full_model():
  rows = {row: _load(f'ck_plus,ablation={row}') for row in
          ('baseline', 'rm', 'bigru', 'rbg', 'eca', 'geca')}
  for config in rows.values():
    config_lib.validate(config)
  b = rows['baseline']
  assert (b.model.attention, b.augment.mask_prob, b.model.rbg_blocks, b.model.bigru_layers,
          b.model.block_norm, b.model.residual) == ('none', 0.0, 1, 0, False, False)
  assert rows['rm'].augment.mask_prob == 0.5 and rows['rm'].model.bigru_layers == 0
  assert rows['bigru'].model.bigru_layers == 4 and not rows['bigru'].model.residual
  r = rows['rbg']
  assert (r.model.residual, r.model.block_norm, r.model.rbg_blocks, r.model.attention) == (
      True, True, 2, 'none')
  assert rows['eca'].model.attention == 'eca'
  assert rows['geca'].to_dict() == _load('ck_plus').to_dict()  # The last row is the full model.
  assert _load('ck_plus,ablation=rbg,rbg_blocks=3').model.rbg_blocks == 3
  with pytest.raises(ValueError, match="ablation='bogus'.*baseline"):
    _load('ck_plus,ablation=bogus')


def test_paper_presets_train_on_every_non_test_fold_and_relu_before_every_gru():
  for arg in ('ck_plus', 'oulu_casia', 'synthetic'):
    config = _load(arg)
    assert config.dataset.holdout_validation is False
    assert config.model.relu_before_gru is True


def test_subject_folds_is_validated():
  config = _load('rml')
  assert config.dataset.subject_folds == 0  # Leave-one-subject-out by default.
  config.dataset.subject_folds = -1
  with pytest.raises(config_lib.ConfigError, match=r'config\.dataset\.subject_folds: expected an integer >= 0'):
    config_lib.validate(config)
