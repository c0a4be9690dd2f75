"""The survey's image families (mhca, dcn_cbam) end to end on sequences: a tiny model trained a few steps
with their `synthetic_images` preset, then `ferjax.predict` on a clip (a per-frame model: the window's
probabilities are the mean of its frames' probabilities) and `ferjax.export` (the artifact gives the
same probabilities), through the CLIs' entry points."""

import json
import os

import cv2
import numpy as np
import pytest

import predict_helpers as helpers
from ferjax import export, predict, serving, train
from ferjax.data import augment, pipeline

TINY = {
    'dataset.config': 'tiny', 'dataset.num_frames': helpers.T, 'dataset.image_size': helpers.SIZE,
    'input.batch_size': 8, 'input.eval_batch_size': 8,
    'input.worker_count': 0, 'model.width': 4, 'model.stage_sizes': (1, 1, 1, 1),
    'train.num_steps': 2, 'train.log_every_steps': 2, 'train.eval_every_steps': 2,
    'train.checkpoint_every_steps': 2, 'train.warmup_epochs': 0.0,
}
FAMILIES = {
    'mhca': {'model.num_heads': 2, 'model.spatial_hidden': 8, 'model.channel_hidden': 4},
    'dcn_cbam': {'model.cbam_reduction': 2},  # The deformable stages (3, 4) see 4 x 4 and 2 x 2 maps.
}


def _train(family):
  def train_fn(workdir, data_dir):
    config = helpers._config_module(family).get_config('synthetic_images')  # pylint: disable=protected-access
    for key, value in {**TINY, **FAMILIES[family], 'dataset.data_dir': data_dir}.items():
      section, field = key.split('.')
      config[section][field] = value
    train.train_and_evaluate(config, workdir)
    return workdir
  return train_fn


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def family_run(request, tmp_path_factory, synthetic_tiny):
  family = request.param
  return family, helpers.shared_run(tmp_path_factory, f'tiny_{family}', _train(family), synthetic_tiny)


def test_predict_averages_frames_and_export_agrees(family_run, tmp_path, capsys):
  family, workdir = family_run
  frames = helpers.face_frames('happiness', 6, size=helpers.SIZE)  # The dataset's own 32 px renders.
  folder = tmp_path / 'happy'
  folder.mkdir()
  for i, frame in enumerate(frames):  # PNG: lossless, so predict and the reference read the same pixels.
    cv2.imwrite(str(folder / f'{i:03d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  code = predict.run(['--workdir', workdir, str(folder), '--window', '6', '--detector', 'none',
                      '--json', str(tmp_path / 'p.json'), '--quiet'])
  assert code == 0, capsys.readouterr().err
  report = json.loads((tmp_path / 'p.json').read_text())
  (window,) = report['results'][0]['windows']
  names = report['model']['class_names']
  got = np.array([window['probs'][n] for n in names])

  # The window the model sees: the input pipeline's evaluation of a record holding the same frames.
  config = json.loads(open(os.path.join(workdir, 'config.json')).read())
  record = {'frames': list(frames), 'label': 0, 'sequence_id': 'happy'}
  batch = next(iter(pipeline.eval_batches(
      [record], num_frames=helpers.T, image_size=helpers.SIZE,
      options=augment.AugmentOptions.none(config['augment']['eval_crop']), batch_size_per_host=1,
      inputs=('frames',), sampling_mode=config['dataset']['sampling'])))
  window_frames = np.asarray(batch['frames'])  # [1, T, S, S, 3]
  # Per frame: each frame alone (T = 1) through the trainer's evaluation; the window is their mean.
  per_frame = helpers.run_reference(workdir, {'frames': window_frames[0][:, None]})
  assert per_frame.shape == (helpers.T, len(names))
  np.testing.assert_allclose(got, per_frame.mean(axis=0), atol=1e-5)
  assert np.abs(per_frame - per_frame.mean(axis=0)).max() > 1e-6  # The frames do differ.

  artifact = tmp_path / f'{family}.ferjax'
  assert export.run(['--workdir', workdir, '--format', 'jax', '--output', str(artifact)]) == 0
  model = serving.load(artifact)
  np.testing.assert_allclose(np.asarray(model.predict(window_frames))[0], got, atol=1e-5)
