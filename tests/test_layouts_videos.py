"""Layout discovery of the video datasets (eNTERFACE'05, RML, AFEW) on generated copies of their layouts."""

import collections
import importlib.util
import pathlib
import shutil

import pytest

from ferjax.data import faces
from ferjax.data import media
from tfds_builders.afew import layout as afew_layout
from tfds_builders.enterface05 import layout as enterface_layout
from tfds_builders.rml import layout as rml_layout

_SCRIPT = pathlib.Path(__file__).resolve().parent.parent / 'scripts' / 'make_dummy_data_videos.py'


def _load_generators():
  spec = importlib.util.spec_from_file_location('make_dummy_data_videos', _SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


dummy = _load_generators()


def _subject_label(clip):
  return clip.subject, clip.label


@pytest.fixture(scope='module')
def copies(tmp_path_factory):
  """Freshly generated dummy copies of the three datasets (the same code writes dummy_data/)."""
  root = tmp_path_factory.mktemp('copies')
  return {name: dummy.generate(name, root / name) for name in dummy.DATASETS}


# ---------------------------------------------------------------------------------------------- eNTERFACE


def test_enterface_subjects_and_labels_come_from_folders(copies):
  clips, excluded = enterface_layout.find_clips(copies['enterface05'])
  by_id = {c.sequence_id: c for c in clips}
  # Typo'd file names: subject and label still from the folders.
  assert _subject_label(by_id['subject 3/happiness/sentence 1/s_3_ha_1.avi']) == ('3', 'happiness')
  assert _subject_label(by_id['subject 16/surprise/sentence 3/s16_su_3avi.avi']) == ('16', 'surprise')
  # Subject 11's files are named s12_*, and subject 12 has files with the same names.
  assert _subject_label(by_id['subject 11/anger/sentence 1/s12_an_1.avi']) == ('11', 'anger')
  assert _subject_label(by_id['subject 12/anger/sentence 1/s12_an_1.avi']) == ('12', 'anger')
  # Extra sub-folder level below a sentence folder.
  assert _subject_label(by_id['subject 3/sadness/sentence 2/sentence 2/s3_sa_2.avi']) == ('3', 'sadness')
  assert collections.Counter(c.subject for c in clips) == {
      '3': 3, '11': 2, '12': 2, '14': 2, '16': 2, '23': 1}
  assert len(by_id) == len(clips) == 12
  assert all(c.path.is_file() for c in clips)


def test_enterface_subject_6_unsegmented_excluded_and_reported(copies):
  clips, excluded = enterface_layout.find_clips(copies['enterface05'])
  assert '6' not in {c.subject for c in clips}
  assert [e.sequence_id for e in excluded] == [
      'subject 6/anger/s6_an.avi', 'subject 6/surprise/s6_su.avi']
  assert all('unsegmented' in e.reason for e in excluded)


def test_enterface_layout_irregularities(tmp_path):
  root = tmp_path / 'x' / 'y' / 'Enterface Database'
  for relative in ('Subject 2/Anger/Sentence 1/a.AVI',     # case variants
                   'subject 2/neutral/sentence 1/n.avi',   # not one of the six emotions
                   'subject 2/stray.avi'):                 # not in an emotion folder
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(b'')
  clips, excluded = enterface_layout.find_clips(tmp_path)
  assert [(c.subject, c.label, c.sequence_id) for c in clips] == [
      ('2', 'anger', 'Subject 2/Anger/Sentence 1/a.AVI')]
  reasons = {e.sequence_id: e.reason for e in excluded}
  assert 'six emotions' in reasons['subject 2/neutral/sentence 1/n.avi']
  assert 'emotion folder' in reasons['subject 2/stray.avi']


def test_enterface_wrong_or_empty_manual_dir(tmp_path):
  (tmp_path / 'some_other_dataset' / 'S005').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"(?s)subject <n>.*some_other_dataset/"):
    enterface_layout.find_clips(tmp_path)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    enterface_layout.find_clips(tmp_path / 'missing')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match='is empty'):
    enterface_layout.find_clips(empty)


def test_enterface_two_copies_is_an_error(tmp_path, copies):
  shutil.copytree(copies['enterface05'], tmp_path / 'a')
  shutil.copytree(copies['enterface05'], tmp_path / 'b')
  with pytest.raises(ValueError, match='several'):
    enterface_layout.find_clips(tmp_path)


# ---------------------------------------------------------------------------------------------------- RML


def test_rml_subjects_languages_and_labels(copies):
  clips, excluded = rml_layout.find_clips(copies['rml'])
  assert not excluded
  assert collections.Counter(c.subject for c in clips) == {'1': 2, '2': 2, '6': 3, '7': 2}
  by_id = {c.sequence_id: c for c in clips}
  assert _subject_label(by_id['s6/mandarin/fe1.avi']) == ('6', 'fear')     # language sub-folder
  assert _subject_label(by_id['s6/english/su1.avi']) == ('6', 'surprise')
  assert _subject_label(by_id['s2/Sa1.avi']) == ('2', 'sadness')           # upper-case code
  assert len(by_id) == len(clips) == 9


def test_rml_label_from_name_and_exclusions(tmp_path):
  assert rml_layout.label_from_name('an1.avi') == 'anger'
  assert rml_layout.label_from_name('SU_2_x.avi') == 'surprise'
  assert rml_layout.label_from_name('ne1.avi') is None
  speaker = tmp_path / 'RML' / 'S3'
  speaker.mkdir(parents=True)
  for name in ('ha1.avi', 'xx1.avi', '.hidden.avi', 'notes.txt'):
    (speaker / name).write_bytes(b'')
  clips, excluded = rml_layout.find_clips(tmp_path)
  assert [(c.subject, c.label, c.sequence_id) for c in clips] == [('3', 'happiness', 'S3/ha1.avi')]
  assert [e.sequence_id for e in excluded] == ['S3/xx1.avi']


def test_rml_errors(tmp_path, copies):
  (tmp_path / 'rml-1' / 's1').mkdir(parents=True)  # A speaker folder without videos is no copy.
  with pytest.raises(FileNotFoundError, match=r"(?s)rml-1/s1.*rml-1/"):
    rml_layout.find_clips(tmp_path)
  twice = tmp_path / 'twice'
  shutil.copytree(copies['rml'], twice / 'a')
  shutil.copytree(copies['rml'], twice / 'b')
  with pytest.raises(ValueError, match='appears twice'):
    rml_layout.find_clips(twice)


# --------------------------------------------------------------------------------------------------- AFEW


def test_afew_splits_labels_and_ids(copies):
  clips = afew_layout.find_clips(copies['afew'])
  counts = collections.Counter(c.split for c in clips)
  assert counts == {'train': 8, 'validation': 5}  # Incl. the blank and the garbage file.
  ids = [c.sequence_id for c in clips]
  assert len(set(ids)) == len(ids)
  assert 'train/Happy/000324160' in ids and 'validation/Happy/000324160' in ids
  labels = {c.sequence_id: c.label for c in clips}
  assert labels['train/Angry/000046280'] == 'anger'
  assert labels['train/Happy/000324160'] == 'happiness'
  assert labels['validation/Sad/011603980'] == 'sadness'
  assert {c.label for c in clips if c.split == 'train'} == set(afew_layout.EMOTIONS)
  assert afew_layout.EMOTIONS == (
      'anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise')
  assert not any('AlignedFaces' in i for i in ids)


def test_afew_errors(tmp_path):
  (tmp_path / 'Train_AFEW' / 'NotAClass').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"(?s)Train_AFEW/<class>.*Train_AFEW/"):
    afew_layout.find_clips(tmp_path)
  for name in ('a/Val_AFEW/Sad', 'b/Val_AFEW/Sad'):
    (tmp_path / name).mkdir(parents=True)
  with pytest.raises(ValueError, match='Two validation folders'):
    afew_layout.find_clips(tmp_path)


# --------------------------------------------------------------------------------------- generated videos


def test_generated_clips_decode_and_show_a_detectable_face(copies):
  """The dummy clips exercise real decoding and real Haar detection: faces found, blank/garbage not."""
  detector = faces.make_detector('haar')
  clips = afew_layout.find_clips(copies['afew'])
  results = {}
  for clip in clips:
    try:
      frames, _ = media.read_video(clip.path, max_frames=4)
      faces.crop_faces(frames, detector, size=32)
      results[clip.sequence_id] = 'ok'
    except media.MediaError:
      results[clip.sequence_id] = 'undecodable'
    except faces.NoFaceError:
      results[clip.sequence_id] = 'no face'
  assert results.pop('train/Neutral/000999999') == 'no face'
  assert results.pop('validation/Fear/002233445') == 'undecodable'
  assert set(results.values()) == {'ok'}


def test_dummy_data_in_repo_matches_generator(copies):
  """The committed dummy_data/ has the same files as the generator writes (rerun the script if not)."""
  for name, fresh in copies.items():
    committed = dummy.dummy_data_dir(name)
    list_files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob('*')
                                     if p.is_file())
    assert list_files(committed) == list_files(fresh), name
    size = sum(p.stat().st_size for p in committed.rglob('*') if p.is_file())
    assert size < 300 * 1024, (name, size)
