"""`python -m tfds_builders`: input errors are one message without a traceback; relative paths work.

Runs the real command in a subprocess (the way users meet it), on the CK+ and AFEW dummy data.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

import tfds_builders.ck_plus  # noqa: F401  (registers ck_plus for tfds.builder below)

BUILDERS = pathlib.Path(__file__).resolve().parent.parent / 'tfds_builders'
CK_DUMMY = BUILDERS / 'ck_plus' / 'dummy_data'
AFEW_DUMMY = BUILDERS / 'afew' / 'dummy_data'


def run_cli(*args, cwd):
  env = dict(os.environ, FERJAX_NUM_WORKERS='1')  # No worker pool: the dummy data are tiny.
  return subprocess.run([sys.executable, '-m', 'tfds_builders', *map(str, args)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def assert_user_error(result, *fragments):
  assert result.returncode != 0, result.stdout
  assert 'Traceback' not in result.stderr, result.stderr
  assert 'error: ' in result.stderr
  for fragment in fragments:
    assert fragment in result.stderr, (fragment, result.stderr)


def test_unknown_builder_names_the_known_ones(tmp_path):
  result = run_cli('ck_plsu', '--manual_dir', tmp_path, cwd=tmp_path)
  assert_user_error(result, "unknown builder 'ck_plsu'", 'did you mean ck_plus?',
                    'known builders: afew, casme2, ck_plus, dfew, enterface05, fer2013, ferv39k, mafw, '
                    'megc2019, oulu_casia, raf_db, rml, samm, smic, synthetic_expressions')
  assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_config_names_the_configs(tmp_path):
  result = run_cli('ck_plus', '--config', 'first_last', '--manual_dir', CK_DUMMY, cwd=tmp_path)
  assert_user_error(result, "no config 'first_last'", 'did you mean first_last3?',
                    'all, first_last3')


@pytest.mark.parametrize('case', ['missing', 'empty', 'afew_layout'])
def test_wrong_manual_dir_shows_expected_layout_and_what_is_there(tmp_path, case):
  manual = tmp_path / 'manual'
  found = {'missing': 'does not exist', 'empty': 'is empty', 'afew_layout': 'contains: Train_AFEW/'}
  if case == 'empty':
    manual.mkdir()
  elif case == 'afew_layout':
    shutil.copytree(AFEW_DUMMY, manual)
  result = run_cli('ck_plus', '--manual_dir', 'manual', '--data_dir', 'out', cwd=tmp_path)
  # The absolute path, as the user's relative one resolves, and the CK+ layout that was expected.
  assert_user_error(result, str(manual), 'cohn-kanade-images/S005/001/S005_001_00000001.png',
                    found[case])


def test_debug_shows_the_traceback(tmp_path):
  result = run_cli('ck_plsu', '--manual_dir', tmp_path, '--debug', cwd=tmp_path)
  assert result.returncode != 0 and 'Traceback' in result.stderr
  assert 'BuildError' in result.stderr


def test_relative_manual_and_data_dirs(tmp_path):
  shutil.copytree(CK_DUMMY, tmp_path / 'copy' / 'ck')
  result = run_cli('ck_plus', '--manual_dir', 'copy/ck', '--data_dir', 'out', cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "'fold_1': 3" in result.stdout
  info = tfds.builder('ck_plus', data_dir=tmp_path / 'out').info
  assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  (skipped,) = info.metadata['skipped']  # the undecodable S055_001
  # Recorded paths are absolute: they stay valid from any other working directory.
  assert skipped['path'] == str(tmp_path / 'copy' / 'ck' / 'extended-cohn-kanade-images' /
                                'cohn-kanade-images' / 'S055' / '001')
  assert len(tfds.data_source('ck_plus', split='fold_1', data_dir=tmp_path / 'out')) == 3
