"""python -m ferjax.predict on a synthetic face video and a frame folder, against the trainer's own
evaluation of the same windows; windows and face marking; every bad-input case.

The tiny model is trained for 6 steps (seconds, not minutes), so it is not accurate: the predictions are
checked to equal the trainer's (`steps.eval_step` on the fully restored train state) for the same frames,
not to be right. The tests marked `slow` train a model to high accuracy (~125 CPU s) and check that it
labels every expression's clip right, and that predict on the dataset's own test sequences equals the
trainer's evaluation of them.
An RFSCNN run (2 steps) checks the optical flow predict computes against the input pipeline's. The trained
runs are shared with test_export.py (predict_helpers.shared_run).
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ferjax import predict
from ferjax.data import faces, media
from ferjax.inference import model as model_lib, outputs, windows

sys.path.insert(0, os.path.dirname(__file__))
import predict_helpers as helpers  # noqa: E402  pylint: disable=wrong-import-position

T = helpers.T
BLANK = (5, 6, 7)  # Frames of the test video replaced by black frames (no face).


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, synthetic_tiny):
  return helpers.shared_run(tmp_path_factory, 'res_rbg_6_steps', helpers.train_tiny_run, synthetic_tiny)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """A 14-frame video (frames 5-7 black) and a 6-frame folder of PNG frames."""
  root = tmp_path_factory.mktemp('inputs')
  frames = helpers.face_frames('happiness', 14)
  frames[list(BLANK)] = 0
  video = helpers.write_video(root / 'happy.avi', frames)
  folder = root / 'surprise_frames'
  folder.mkdir()
  for i, frame in enumerate(helpers.face_frames('surprise', 6, subject=2)):
    cv2.imwrite(str(folder / f'{i:03d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  return {'video': video, 'folder': str(folder), 'root': root}


def test_window_starts():
  assert windows.window_starts(10, 4, 3) == [0, 3, 6]
  assert windows.window_starts(11, 4, 3) == [0, 3, 6, 7]  # The last window ends at the last frame.
  assert windows.window_starts(4, 4, 2) == [0]
  assert windows.window_starts(3, 4, 2) == [0]  # Shorter than a window: one window.
  assert windows.window_starts(14, 4, 2) == [0, 2, 4, 6, 8, 10]


def test_cli_video_and_frame_folder(run_dir, inputs, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  args = [sys.executable, '-m', 'ferjax.predict', '--workdir', os.path.relpath(run_dir, tmp_path),
          os.path.relpath(inputs['video'], tmp_path), inputs['folder'], '--window', str(T), '--stride', '2',
          '--json', 'out/p.json', '--csv', 'out/p.csv', '--annotate', 'out/a.avi', '--plot', 'out/p.png']
  proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'PYTHONPATH': helpers.REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'frames/s' in proc.stdout and 'happy.avi' in proc.stdout and 'clip' in proc.stdout
  report = json.loads((out / 'p.json').read_text())
  names = report['model']['class_names']
  video, folder = report['results']
  assert (video['kind'], video['num_frames'], video['fps']) == ('video', 14, 10.0)
  assert (folder['kind'], folder['num_frames']) == ('frames', 6)

  # Faces: found on every frame but the black ones, which are marked, not given a box.
  assert video['face'] == [i not in BLANK for i in range(14)]
  assert all((box is None) == (i in BLANK) for i, box in enumerate(video['face_boxes']))
  # Windows of T=4 frames every 2: the one with 3 black frames (4-7) is not scored (face in < half).
  assert [(w['start'], w['end']) for w in video['windows']] == [(s, s + T) for s in range(0, 11, 2)]
  assert [w['face_frames'] for w in video['windows']] == [4, 3, 1, 2, 4, 4]
  assert [w['probs'] is None for w in video['windows']] == [False, False, True, False, False, False]

  frames, _ = media.read_video(inputs['video'])
  for result, source in ((video, frames), (folder, media.read_images(media.list_images(inputs['folder'])))):
    scored = [w for w in result['windows'] if w['probs'] is not None]
    got = np.array([[w['probs'][n] for n in names] for w in scored])
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # The same probabilities as the trainer's evaluation of the same windows' face frames (rounded to 6
    # decimals): the black frames of a scored window are never sampled.
    views = np.stack([helpers.training_view([source[i] for i in range(w['start'], w['end'])
                                             if result['face'][i]]) for w in scored])
    np.testing.assert_allclose(got, helpers.reference_probs(run_dir, views), atol=1e-5)
    # The clip: the mean of its scored windows.
    clip = np.array([result['probs'][n] for n in names])
    np.testing.assert_allclose(clip, got.mean(0), atol=1e-5)
    assert result['label'] == names[int(np.argmax(clip))]

  rows = list(csv.DictReader((out / 'p.csv').open()))
  assert len(rows) == len(video['windows']) + 1 + len(folder['windows']) + 1
  assert [r['window'] for r in rows[:7]] == ['0', '1', '2', '3', '4', '5', 'clip']
  assert rows[2]['label'] == 'no face' and rows[2]['p_anger'] == ''
  assert rows[6]['label'] == video['label']

  annotated, _ = media.read_video(out / 'a.happy.avi')
  assert len(annotated) == 14 and annotated[0].shape[0] >= 360  # Upscaled for the text.
  assert (out / 'a.surprise_frames.avi').is_file()
  for name in ('p.happy.png', 'p.surprise_frames.png'):
    assert (out / name).read_bytes()[:4] == b'\x89PNG'


def test_single_image_is_t_copies(run_dir, inputs, tmp_path, capsys):
  image = tmp_path / 'apex.png'
  apex = helpers.face_frames('happiness', 6)[-1]
  cv2.imwrite(str(image), cv2.cvtColor(apex, cv2.COLOR_RGB2BGR))
  code = predict.run(['--workdir', run_dir, str(image), '--json', str(tmp_path / 'p.json'),
                      '--annotate', str(tmp_path / 'a.png'), '--quiet'])
  assert code == 0, capsys.readouterr().err
  result = json.loads((tmp_path / 'p.json').read_text())['results'][0]
  assert result['kind'] == 'image' and len(result['windows']) == 1
  expected = helpers.reference_probs(run_dir, helpers.training_view([apex] * T)[None])[0]
  names = json.loads((tmp_path / 'p.json').read_text())['model']['class_names']
  np.testing.assert_allclose([result['probs'][n] for n in names], expected, atol=1e-5)
  annotated = cv2.imread(str(tmp_path / 'a.png'))
  assert annotated is not None and annotated.shape[0] >= 360


def test_bad_inputs_in_batch_mode(run_dir, inputs, tmp_path, capsys):
  """A folder of videos: a text file named .mp4 and a video without a face are reported in one line
  each; the good video is still predicted; exit code 2."""
  folder = tmp_path / 'videos'
  folder.mkdir()
  shutil.copy(inputs['video'], folder / 'b_good.avi')
  (folder / 'a_not_a_video.mp4').write_text('hello')
  helpers.write_video(folder / 'c_no_face.avi', np.zeros((5, 64, 64, 3), np.uint8))
  code = predict.run(['--workdir', run_dir, str(folder), '--json', str(tmp_path / 'p.json'), '--quiet'])
  err = capsys.readouterr().err
  assert code == predict.EXIT_SOME_FAILED
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(lines) == 2, err
  assert 'a_not_a_video.mp4' in lines[0] and 'OpenCV' in lines[0]
  assert 'c_no_face.avi' in lines[1] and 'no face found in any of its 5 frames' in lines[1]
  assert '2 of 3 input(s) failed' in err
  results = json.loads((tmp_path / 'p.json').read_text())['results']
  assert [r['error'] is None for r in results] == [False, True, False]
  assert results[1]['num_frames'] == 14


def test_missing_input_and_existing_output(run_dir, inputs, tmp_path, capsys):
  assert predict.run(['--workdir', run_dir, str(tmp_path / 'nope.avi')]) == predict.EXIT_USAGE
  err = capsys.readouterr().err
  assert 'nope.avi: no such file or folder' in err and 'no readable input' in err

  existing = tmp_path / 'p.json'
  existing.write_text('keep me')
  code = predict.run(['--workdir', run_dir, inputs['video'], '--json', str(existing)])
  assert code == predict.EXIT_USAGE
  err = capsys.readouterr().err.strip()
  assert err == f'error: {existing} exists; pass --overwrite to replace it'
  assert existing.read_text() == 'keep me'


def test_checkpoint_that_does_not_fit_its_config(run_dir, tmp_path, inputs, capsys):
  bad = tmp_path / 'run'
  shutil.copytree(run_dir, bad)
  step_dir = next((bad / 'checkpoints').iterdir())
  config_file = step_dir / 'config' / 'metadata'
  config = json.loads(config_file.read_text())
  config['model']['hidden'] = 16
  config_file.write_text(json.dumps(config))
  code = predict.run(['--checkpoint', str(step_dir), inputs['video']])
  err = capsys.readouterr().err.strip()
  assert code == predict.EXIT_USAGE
  assert err.startswith(f'error: {step_dir} does not fit its config (') and '\n' not in err
  assert 'in the checkpoint' in err


def test_not_a_run(tmp_path, inputs, capsys):
  assert predict.run(['--workdir', str(tmp_path), inputs['video']]) == predict.EXIT_USAGE
  assert 'expected a training run with best_checkpoint/<step> or checkpoints/<step>' in \
      capsys.readouterr().err


@pytest.fixture(scope='module')
def rfscnn_run(tmp_path_factory, synthetic_tiny):
  return helpers.shared_run(tmp_path_factory, 'rfscnn_2_steps', helpers.train_tiny_rfscnn_run,
                            synthetic_tiny)


def test_rfscnn_window_equals_the_trainers_evaluation_with_flow(rfscnn_run, tmp_path, capsys):
  """RFSCNN needs optical flow: predict computes it from the window's crops as the input pipeline's
  evaluation does. Reference: `pipeline.eval_batches` on a record holding the same frames (frames and
  DIS flow made by the pipeline) through the trainer's `steps.eval_step`. Tolerance 1e-5: the same XLA
  program on the same inputs (the JSON rounds to 6 decimals)."""
  from ferjax.data import augment, pipeline  # pylint: disable=import-outside-toplevel
  frames = helpers.face_frames('surprise', 6, size=helpers.SIZE)  # The dataset's own 32 px renders.
  folder = tmp_path / 'surprise'
  folder.mkdir()
  for i, frame in enumerate(frames):  # PNG: lossless, so both paths read the same pixels.
    cv2.imwrite(str(folder / f'{i:03d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  code = predict.run(['--workdir', rfscnn_run, str(folder), '--window', '6', '--detector', 'none',
                      '--json', str(tmp_path / 'p.json'), '--quiet'])
  assert code == 0, capsys.readouterr().err
  report = json.loads((tmp_path / 'p.json').read_text())
  assert [i['name'] for i in report['model']['inputs']] == ['frames', 'flow']
  (window,) = report['results'][0]['windows']
  got = np.array([window['probs'][n] for n in report['model']['class_names']])

  config = json.loads(open(os.path.join(rfscnn_run, 'config.json')).read())
  record = {'frames': list(frames), 'label': 0, 'sequence_id': 'surprise'}
  batches = pipeline.eval_batches(
      [record], num_frames=T, image_size=helpers.SIZE,
      options=augment.AugmentOptions.none(config['augment']['eval_crop']), batch_size_per_host=1,
      inputs=('frames', 'flow'), sampling_mode=config['dataset']['sampling'],
      flow=config['dataset']['flow'])
  batch = next(iter(batches))
  batch = {'frames': batch['frames'], 'flow': batch['flow']}
  assert np.abs(batch['flow'][..., 2]).max() > 0.1  # The face moves: the flow is not all zero.
  expected = helpers.run_reference(rfscnn_run, batch)[0]
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # The flow matters to this model: without it (zeros) the probabilities differ by far more.
  without = helpers.run_reference(rfscnn_run, {**batch, 'flow': np.zeros_like(batch['flow'])})[0]
  assert np.abs(without - expected).max() > 1e-3, np.abs(without - expected).max()


def test_input_labels_tell_inputs_with_one_name_apart(tmp_path):
  def source(path):
    return windows.Source(tmp_path / path, 'video')
  sources = [source('ck/S005/001'), source('ck/S010/001'), source('x/clip.avi'), source('y/clip.mp4'),
             source('x/clip.mp4'), source('happy.avi')]
  assert outputs.input_labels(sources) == ['S005_001', 'S010_001', 'x_clip_avi', 'y_clip_mp4',
                                           'x_clip_mp4', 'happy']
  # Only the colliding inputs get longer names; a folder deeper down decides with its nearest parents.
  assert outputs.input_labels([source('a/b/c/001'), source('a/d/c/001'), source('e/002')]) == [
      'b_c_001', 'd_c_001', '002']
  with pytest.raises(outputs.OutputError, match='happy.avi is given twice'):
    outputs.input_labels([source('happy.avi'), source('happy.avi')])
  with pytest.raises(outputs.OutputError, match=r'same per-input output files \(a_b\)'):
    outputs.input_labels([source('a/b'), source('c/b'), source('a_b')])  # a/b -> a_b, taken.


def test_batch_outputs_one_file_per_input_and_never_overwrite(run_dir, inputs, tmp_path, capsys):
  """Two CK+-style sequence folders both named 001, and a folder with two videos: every input gets its
  own --annotate/--plot file; a second run without --overwrite writes nothing and exits 1."""
  frames = helpers.face_frames('happiness', 4)
  for subject in ('S005', 'S010'):
    folder = tmp_path / 'ck' / subject / '001'
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
      cv2.imwrite(str(folder / f'{i:03d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  videos = tmp_path / 'videos'
  videos.mkdir()
  helpers.write_video(videos / 'clip.avi', frames)
  shutil.copy(videos / 'clip.avi', videos / 'other.avi')
  out = tmp_path / 'out'
  out.mkdir()
  args = ['--workdir', run_dir, str(tmp_path / 'ck/S005/001'), str(tmp_path / 'ck/S010/001'), str(videos),
          '--annotate', str(out / 'a.png'), '--plot', str(out / 'p.png'), '--quiet']
  assert predict.run(args) == 0, capsys.readouterr().err
  labels = ['S005_001', 'S010_001', 'clip', 'other']
  expected = sorted([f'a.{x}.png' for x in labels] + [f'p.{x}.png' for x in labels])
  assert sorted(os.listdir(out)) == expected
  before = {name: (out / name).read_bytes() for name in expected}
  (out / 'a.clip.png').write_bytes(b'mine')
  capsys.readouterr()
  assert predict.run(args) == predict.EXIT_USAGE
  assert capsys.readouterr().err.strip() == (f'error: {out / "a.S005_001.png"} exists; pass --overwrite '
                                             'to replace it (and 7 more)')
  assert (out / 'a.clip.png').read_bytes() == b'mine'
  assert predict.run([*args, '--overwrite']) == 0
  assert (out / 'a.clip.png').read_bytes() == before['a.clip.png']
  # One output on another, or on an input: refused before anything runs.
  assert predict.run(['--workdir', run_dir, inputs['video'], '--plot', str(out / 'x.png'), '--annotate',
                      str(out / 'x.png')]) == predict.EXIT_USAGE
  assert f'two outputs would be written to {out / "x.png"}' in capsys.readouterr().err
  assert predict.run(['--workdir', run_dir, inputs['video'], '--json', inputs['video'],
                      '--overwrite']) == predict.EXIT_USAGE
  assert 'is an input; an output file must not replace it' in capsys.readouterr().err


def test_help_documents_the_batch_output_names():
  text = ' '.join(predict._parser().format_help().split())  # pylint: disable=protected-access
  assert 'NAME.<input>.EXT' in text and 'NAME.S005_001.EXT' in text and 'without it, nothing is written' in text


EXPRESSIONS = ('anger', 'contempt', 'disgust', 'fear', 'happiness', 'sadness', 'surprise')


# The model trained to high accuracy (predict_helpers.ACCURATE_RUN) costs ~125 CPU s, over the main
# suite's budget: these tests are marked `slow` (deselected by pyproject.toml's addopts; `python -m pytest
# -q -m slow` runs them, as .ci/run's stage 1b does).


@pytest.fixture(scope='module')
def accurate_run(tmp_path_factory, synthetic_tiny):
  """A model trained to high accuracy on the tiny synthetic dataset (folds 1-9), checked on its unseen
  test fold (fold 0: subjects 0 and 10) before any test relies on it."""
  workdir = helpers.shared_run(tmp_path_factory, 'accurate', helpers.train_accurate_run, synthetic_tiny)
  report = json.loads(open(os.path.join(workdir, 'report.json')).read())
  if report['war'] < helpers.ACCURATE_MIN_WAR:
    pytest.fail(f'the accurate model ({helpers.ACCURATE_FAMILY}, {helpers.ACCURATE_RUN}) reached '
                f'{100 * report["war"]:.2f} % test WAR on fold_0; expected >= '
                f'{100 * helpers.ACCURATE_MIN_WAR:.0f} % (see {workdir}/report.json)')
  return workdir


@pytest.mark.slow
def test_clip_label_equals_the_expression(accurate_run, tmp_path, capsys):
  """scripts/synthetic_video.py clips of every expression, for the two test-fold subjects the model
  never saw: subject 0 as videos (MJPG), subject 10 as folders of PNG frames, drawn at the dataset's
  frame side (32 px; see predict_helpers.CLIP_SIZE for why not larger). One window spans each clip (as
  evaluation samples a whole sequence); every clip's label must be its expression but at most one: the
  accurate model's test WAR is 92.86-100 % depending on the machine's floating point (13 or 14 of the 14
  test-fold sequences), and the clip of the expression it confuses can then go the same way."""
  videos = helpers.synthetic_clips(tmp_path, EXPRESSIONS, 0, 'video', size=helpers.CLIP_SIZE)
  folders = helpers.synthetic_clips(tmp_path, EXPRESSIONS, 10, 'frames', size=helpers.CLIP_SIZE)
  capsys.readouterr()
  inputs = [*videos.values(), *folders.values()]
  # --detector none: every frame counts as a face. The 32 px renders are below the size at which
  # BlazeFace's scores pass its threshold on every frame (0.65-0.85 at the apex; tests/test_faces.py
  # and tests/test_predict_faces.py check the detectors); this test is about the labels.
  code = predict.run(['--workdir', accurate_run, *inputs, '--window', '8', '--detector', 'none',
                      '--json', str(tmp_path / 'p.json'), '--quiet'])
  assert code == 0, capsys.readouterr().err
  results = json.loads((tmp_path / 'p.json').read_text())['results']
  assert [r['input'] for r in results] == [os.path.abspath(p) for p in inputs]
  expected = [*videos, *folders]
  got = [r['label'] for r in results]
  wrong = [(e, g, max(r['probs'].values())) for e, g, r in zip(expected, got, results) if e != g]
  assert len(wrong) <= 1, wrong
  for r in results:
    assert len(r['windows']) == 1 and all(r['face'])
    np.testing.assert_allclose(sum(r['probs'].values()), 1.0, atol=1e-5)


@pytest.mark.slow
def test_test_fold_sequences_equal_the_trainers_evaluation(accurate_run, synthetic_tiny, tmp_path,
                                                          capsys):
  """The dataset's own test-fold sequences, written as PNG frame folders, through predict (one window
  per sequence) give the trainer's evaluation probabilities of those sequences (`pipeline.eval_batches`
  + `steps.eval_step`; 1e-5). This run resizes the dataset's 32 px frames to 48 px: predict must first
  shrink its input to the stored frames' side (32), not to the run's image_size (before that fix the
  probabilities differed by up to 0.1)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ferjax.data import augment, datasets, pipeline  # pylint: disable=import-outside-toplevel
  datasets._register_builder('synthetic_expressions')  # pylint: disable=protected-access
  source = tfds.data_source('synthetic_expressions/tiny', split='fold_0', data_dir=synthetic_tiny)
  config = json.loads(open(os.path.join(accurate_run, 'config.json')).read())
  as_rgb = pipeline._as_rgb  # pylint: disable=protected-access  # The trainer's frame decoding.
  records = [{'frames': [as_rgb(f) for f in r['frames']], 'label': int(r['label'])} for r in source]
  assert len(records) == 14
  folders = []
  for k, record in enumerate(records):
    folder = tmp_path / f'seq{k:02d}'
    folder.mkdir()
    for i, frame in enumerate(record['frames']):
      cv2.imwrite(str(folder / f'{i:03d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    folders.append(str(folder))
  batches = pipeline.eval_batches(
      records, num_frames=T, image_size=config['dataset']['image_size'],
      options=augment.AugmentOptions.none(config['augment']['eval_crop']), batch_size_per_host=14,
      sampling_mode=config['dataset']['sampling'])
  expected = helpers.run_reference(accurate_run, {'frames': next(iter(batches))['frames']})
  # --window 8, the longest sequence: every sequence is one window of all its frames.
  assert max(len(r['frames']) for r in records) == 8
  code = predict.run(['--workdir', accurate_run, *folders, '--window', '8', '--detector', 'none',
                      '--json', str(tmp_path / 'p.json'), '--quiet'])  # As above: 32 px frames.
  assert code == 0, capsys.readouterr().err
  report = json.loads((tmp_path / 'p.json').read_text())
  assert report['model']['preprocessing']['face_crop']['size'] == 32
  assert [len(r['windows']) for r in report['results']] == [1] * len(records)
  got = [[r['probs'][n] for n in report['model']['class_names']] for r in report['results']]
  np.testing.assert_allclose(np.array(got), expected[:len(records)], atol=1e-5)


def test_whole_frame_datasets_are_shrunk_to_their_stored_frame_side(synthetic_tiny):
  """For a dataset of whole rendered frames, predict's crop side is the stored frames' side (the
  `frames` feature: 32 px for synthetic_expressions/tiny), whatever the run's dataset.image_size; the
  run's image_size only when the dataset's info cannot be found."""
  dataset = {'name': 'synthetic_expressions', 'config': 'tiny', 'data_dir': synthetic_tiny,
             'image_size': 48}
  config = {'dataset': dataset}
  crop = model_lib.training_crop(config, model_lib.dataset_info(config))
  assert (crop['detector'], crop['margin'], crop['size']) == ('none', 0.0, 32)
  assert model_lib.training_crop(config, None)['size'] == 48


def test_window_flow_is_the_pipelines_evaluation_flow():
  """Without a model: the flow predict computes for a window equals the flow `pipeline.eval_batches`
  makes for a record holding the same frames (exactly), and a one-frame input is a per-input error."""
  from ferjax.data import augment, pipeline  # pylint: disable=import-outside-toplevel
  frames = helpers.face_frames('happiness', 7, size=40)  # Crops of 40 px, evaluated at 32: a real warp.
  options = windows.Options(window=7, stride=7, margin=0.0, crop_size=40, eval_crop=0.875, crop='frame',
                            sampling='segments', flow='dis', inputs=('frames', 'flow'))
  boxes = [faces.centre_box(f.shape) for f in frames]
  inputs, _ = windows.window_crops(list(frames), boxes, T, helpers.SIZE, options)
  batch = next(iter(pipeline.eval_batches(
      [{'frames': list(frames), 'label': 0}], num_frames=T, image_size=helpers.SIZE,
      options=augment.AugmentOptions.none(0.875), batch_size_per_host=1, inputs=('frames', 'flow'))))
  np.testing.assert_array_equal(inputs['frames'], batch['frames'][0])
  # Same functions on the same frames; OpenCV's float warp/DIS may differ by an ulp with its thread
  # count and buffer alignment (tests/test_flow.py uses the same tolerance).
  np.testing.assert_allclose(inputs['flow'], batch['flow'][0], rtol=0, atol=1e-5)
  assert inputs['flow'].shape == (T - 1, helpers.SIZE, helpers.SIZE, 3) and np.abs(inputs['flow']).max() > 0.1
  with pytest.raises(media.MediaError, match='needs optical flow between frames; a single frame has none'):
    windows.window_crops([frames[0]], boxes[:1], T, helpers.SIZE, options)


def test_a_window_feeds_the_model_its_face_frames_only():
  """A window of 8 frames, 3 of them black (no face): the T frames the model sees are the evaluation
  sampling of its 5 face frames, exactly what evaluation makes of a sequence of those 5 frames; no black
  frame reaches the model."""
  frames = helpers.face_frames('happiness', 8)
  black = (1, 4, 6)
  frames[list(black)] = 0
  boxes = [None if i in black else faces.centre_box(f.shape) for i, f in enumerate(frames)]
  options = windows.Options(window=8, stride=8, margin=0.0, crop_size=helpers.SIZE, eval_crop=0.875)
  inputs, box = windows.window_crops(list(frames), boxes, T, helpers.SIZE, options)
  expected = helpers.training_view([f for i, f in enumerate(frames) if i not in black])
  np.testing.assert_array_equal(inputs['frames'], expected)
  assert min(f.mean() for f in inputs['frames']) > 20  # The black frames have mean 0.
  np.testing.assert_array_equal(box, faces.centre_box(frames[0].shape))
  with pytest.raises(faces.NoFaceError, match='no face in any of the 2 frames of the window'):
    windows.window_crops(list(frames[:2]), [None, None], T, helpers.SIZE, options)
