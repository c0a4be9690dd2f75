"""Tests for the optical-flow input (ferjax/data/flow.py and the pipeline's `flow` input)."""

import math

import cv2
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import build_sequence_dataset
from ferjax import models
from ferjax.data import augment, flow, inputs, pipeline, spec, tfds_common

# The pipeline's flow, without the family that reads it: registered here as RFSCNN's module registers it.
inputs.register('flow', flow.INPUT)

S = 48
SHIFT = (2.0, -1.0)  # The content moves 2 px right and 1 px up per frame.
# DIS and Farneback on a blurred-noise texture with integer shifts: the median vector of the interior
# (8 px from the borders, where the warp reflects) is within 0.15 px of the truth.
TOL = 0.15


def _texture(size: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  grey = cv2.GaussianBlur((rng.random((size, size)) * 255).astype(np.uint8), (0, 0), 1.5)
  grey = cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX)
  return np.repeat(grey[..., None], 3, axis=-1)


def _moving(t: int, size: int, shift=SHIFT, scale: int = 1) -> np.ndarray:
  """t frames of a texture whose content moves by `shift` * scale source pixels per frame."""
  big = _texture(size + 16 * scale * t)
  dx, dy = int(shift[0] * scale), int(shift[1] * scale)
  x0, y0 = 8 * scale * t, 8 * scale * t
  return np.stack([big[y0 - k * dy:y0 - k * dy + size, x0 - k * dx:x0 - k * dx + size]
                   for k in range(t)])


def _interior(field: np.ndarray, margin: int = 8) -> np.ndarray:
  """Median (dx, dy, magnitude) over the interior of [T - 1, H, W, 3] fields."""
  return np.median(field[:, margin:-margin, margin:-margin].reshape(-1, field.shape[-1]), axis=0)


def _matrix(a, size, src_centre):
  a = np.asarray(a, np.float64)
  return np.concatenate([a, (np.asarray(src_centre) - a @ np.full(2, size / 2 - 0.5))[:, None]], axis=1)


IDENTITY = _matrix(np.eye(2), S, (S / 2 - 0.5,) * 2)


@pytest.mark.parametrize('method', ['dis', 'farneback'])  # Source flow, warped.
def test_known_translation(method):
  frames = _moving(4, S)
  raw = flow.compute(frames, method)
  assert raw.shape == (3, S, S, 3) and raw.dtype == np.float32
  np.testing.assert_allclose(_interior(raw)[:2], SHIFT, atol=TOL)
  np.testing.assert_allclose(raw[..., 2], np.hypot(raw[..., 0], raw[..., 1]), rtol=1e-5, atol=1e-5)
  out = flow.sequence_flow(frames, IDENTITY, S, method)  # The identity warp keeps it.
  np.testing.assert_allclose(_interior(out), [*SHIFT, math.hypot(*SHIFT)], atol=TOL)


@pytest.mark.parametrize('method', ['dis', 'farneback'])  # Source flow, warped.
def test_horizontal_flip_negates_dx(method):
  frames = _moving(3, S)
  flip = _matrix(np.diag([-1.0, 1.0]), S, (S / 2 - 0.5,) * 2)
  plain = flow.sequence_flow(frames, IDENTITY, S, method)
  flipped = flow.sequence_flow(frames, flip, S, method)
  np.testing.assert_allclose(_interior(flipped)[:2], (-SHIFT[0], SHIFT[1]), atol=TOL)
  # Pixel by pixel: the flipped field is the mirrored field with dx negated.
  np.testing.assert_allclose(flipped[..., 0], -plain[:, :, ::-1, 0], atol=1e-3)
  np.testing.assert_allclose(flipped[..., 1], plain[:, :, ::-1, 1], atol=1e-3)


def test_rotation_rotates_the_vectors():
  frames = _moving(3, S)
  for degrees in (90.0, 30.0):
    theta = math.radians(degrees)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    out = flow.sequence_flow(frames, _matrix(rotation, S, (S / 2 - 0.5,) * 2), S)
    expected = np.linalg.inv(rotation) @ np.array(SHIFT)  # d_out = A^-1 d_src.
    np.testing.assert_allclose(_interior(out, margin=14)[:2], expected, atol=TOL)
    assert _interior(out, margin=14)[2] == pytest.approx(math.hypot(*SHIFT), abs=TOL)


def test_working_resolution_and_zoom_scale_the_vectors():
  # 96 px sources, output 48 px: flow is computed at 48 px (working scale 0.5) and reported in output
  # pixels: a 4 px source shift is 2 output px.
  frames = _moving(3, 96, scale=2)
  assert flow.working_scale(96, 96, S) == 0.5
  whole = _matrix(2 * np.eye(2), S, (96 / 2 - 0.5,) * 2)  # The whole 96 px frame onto 48 px.
  np.testing.assert_allclose(_interior(flow.sequence_flow(frames, whole, S))[:2], SHIFT, atol=TOL)
  # A centre crop of half the side (48 source px) zoomed onto 48 px: 4 output px per frame.
  half = _matrix(np.eye(2), S, (96 / 2 - 0.5,) * 2)
  np.testing.assert_allclose(_interior(flow.sequence_flow(frames, half, S))[:2],
                             (2 * SHIFT[0], 2 * SHIFT[1]), atol=2 * TOL)
  # The evaluation centre crop's matrix matches augment.eval_preprocess: same pixels.
  m = flow.eval_matrix(96, 80, S, 0.875)
  np.testing.assert_allclose(augment.warp(frames[:1, :, :80], m, S).astype(float),
                             augment.eval_preprocess(frames[:1, :, :80], S,
                                                     augment.AugmentOptions.none(0.875)), atol=12)


def test_list_of_frames_equals_the_array():
  """The pipeline passes decoded frames unstacked (a list): same flow as the stacked array, to float
  rounding (OpenCV's float warps differ by an ulp with memory alignment and thread count)."""
  frames = _moving(4, 64)
  m = flow.eval_matrix(64, 64, S, 0.875)
  np.testing.assert_allclose(flow.sequence_flow(list(frames), m, S), flow.sequence_flow(frames, m, S),
                             atol=1e-5, rtol=0)
  fields = flow.compute(frames)
  np.testing.assert_allclose(augment.warp_flow(list(fields), m, S), augment.warp_flow(fields, m, S),
                             atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match=r'optical flow needs frames of shape .*got \[\(64, 64, 3\), \(8, 8, 3\)\]'):
    flow.compute([frames[0], frames[1, :8, :8]])


@pytest.mark.parametrize('method', ['dis_output', 'farneback_output'])
def test_output_flow_known_translation_and_flip(method):
  """The *_output methods: flow of the warped S x S frames, in output pixels, flipped with the frames."""
  frames = _moving(4, S)
  out = flow.sequence_flow(frames, IDENTITY, S, method)
  assert out.shape == (3, S, S, 3) and out.dtype == np.float32
  np.testing.assert_allclose(_interior(out), [*SHIFT, math.hypot(*SHIFT)], atol=TOL)
  flipped = flow.sequence_flow(frames, _matrix(np.diag([-1.0, 1.0]), S, (S / 2 - 0.5,) * 2), S, method)
  np.testing.assert_allclose(_interior(flipped)[:2], (-SHIFT[0], SHIFT[1]), atol=TOL)
  # It is exactly the flow of the warped frames (`warped`, when the caller has them, is what it reads).
  warped = augment.warp(frames, IDENTITY, S)
  np.testing.assert_allclose(out, flow.compute(warped, method), atol=1e-5, rtol=0)
  np.testing.assert_allclose(flow.sequence_flow(frames, IDENTITY, S, method, warped=warped[::-1]),
                             flow.compute(warped[::-1], method), atol=1e-5, rtol=0)


def test_output_flow_agrees_with_the_warped_source_flow():
  """Flow of the warped frames vs the source flow warped (the default): on a moving texture under the
  training augmentation (crop, flip, rotation, zoom), interior vectors differ by ~0.01 px (median)."""
  frames = _moving(4, 64)
  for seed in range(3):
    d = augment.draw(64, 64, S, augment.AugmentOptions(crop_scale=(0.7, 1.0)), np.random.default_rng(seed))
    source = flow.sequence_flow(frames, d.matrix, S, 'dis')
    output = flow.sequence_flow(frames, d.matrix, S, 'dis_output')
    diff = np.abs(source - output)[:, 8:-8, 8:-8, :2]
    assert np.median(diff) < 0.05 and np.percentile(diff, 90) < 0.1
    assert np.abs(_interior(source)[:2]).min() > 0.5  # Real motion was compared, not zeros.


def test_pipeline_output_flow_is_of_the_unjittered_warped_frames():
  """Training: the flow of the frames' warp before photometric jitter and masking (the pipeline jitters
  the warped frames in place afterwards); evaluation copy 0: of the frames warped with the centre-crop
  matrix, as `ferjax.predict` computes it."""
  source = _loader_source()
  options = augment.AugmentOptions(brightness=0.5, contrast=0.5, mask_prob=1.0, mask_size=(0.3, 0.5))
  spec_ = pipeline.ExampleSpec(T, S, options, ('frames', 'flow'), 'clip', 'dis_output')
  example = pipeline._TrainExample(spec_, seed=3, records_per_epoch=4)(1, (1, source[1]))
  rng = np.random.default_rng([3, 1, 0])
  indices = pipeline.sampling.indices('clip', 6, T, rng)
  frames = [pipeline._as_rgb(source[1]['frames'][i]) for i in indices]
  d = augment.draw(S, S, S, options, rng)
  assert d.boxes and not np.array_equal(example['frames'], augment.warp(frames, d.matrix, S))
  np.testing.assert_allclose(example['flow'], flow.sequence_flow(frames, d.matrix, S, 'dis_output'),
                             atol=1e-5, rtol=0)
  batch = next(pipeline.eval_batches(source, num_frames=T, image_size=S, options=PLAIN,
                                     batch_size_per_host=1, inputs=('frames', 'flow'),
                                     sampling_mode='clip', flow='dis_output'))
  frames = [pipeline._as_rgb(source[0]['frames'][i]) for i in pipeline.sampling.indices('clip', 6, T)]
  np.testing.assert_allclose(batch['flow'][0], flow.sequence_flow(
      frames, flow.eval_matrix(S, S, S, PLAIN.eval_crop), S, 'dis_output'), atol=1e-5, rtol=0)


def test_bad_frames():
  with pytest.raises(ValueError, match=r'needs frames of shape \[T >= 2, H, W, 3\]; got \(1, 8, 8, 3\)'):
    flow.compute(np.zeros((1, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="flow method must be one of .*got 'lk'"):
    flow.compute(np.zeros((2, 8, 8, 3), np.uint8), 'lk')


T = 4
PLAIN = augment.AugmentOptions.none()


def _loader_source():
  """In-memory records of moving texture, JPEG-encoded like a real source."""
  frames = _moving(6, S)
  return [{'frames': [tfds_common.encode_jpeg(f) for f in frames], 'label': i % 2,
           'sequence_id': f'moving/{i}'} for i in range(4)]


def test_train_flow_follows_the_frames_flip():
  source = _loader_source()
  options = augment.AugmentOptions(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=True,
                                   rotation=0.0, brightness=0.3, contrast=0.3, mask_prob=1.0)
  loader = pipeline.train_loader(source, num_frames=T, image_size=S, options=options,
                                 batch_size_per_host=4, seed=0, inputs=('frames', 'flow'),
                                 sampling_mode='clip')
  iterator = iter(loader)
  original = augment.eval_preprocess(_moving(6, S)[1:2], S, PLAIN)[0].astype(float)  # Clip frame 0.
  signs = []
  for batch in (next(iterator), next(iterator)):
    assert batch['flow'].shape == (4, T - 1, S, S, 3) and batch['flow'].dtype == np.float32
    for frames, field in zip(batch['frames'], batch['flow']):
      first = frames[0].astype(float)
      flipped = np.abs(first - original[:, ::-1]).mean() < np.abs(first - original).mean()
      dx, dy, magnitude = _interior(field)
      # Photometric jitter and masking touch the frames, never the flow: it is still the true motion.
      assert dx == pytest.approx(-SHIFT[0] if flipped else SHIFT[0], abs=0.3)
      assert dy == pytest.approx(SHIFT[1], abs=0.3) and magnitude == pytest.approx(math.hypot(*SHIFT), abs=0.3)
      signs.append(flipped)
  assert 0 < sum(signs) < len(signs)  # Both cases were seen.


def test_flow_of_the_real_loader_and_eval_padding(tmp_path):
  name, data_dir = build_sequence_dataset(tmp_path, splits={'fold_0': 3}, size=32, min_frames=3,
                                          max_frames=6)
  from ferjax.data import datasets
  source = datasets.PreparedDataset(name, data_dir, (), ()).source('fold_0')
  kw = dict(num_frames=T, image_size=32, inputs=('frames', 'flow'), sampling_mode='clip')
  batch = next(iter(pipeline.train_loader(source, options=augment.AugmentOptions(), batch_size_per_host=2,
                                          seed=1, worker_count=1, **kw)))
  assert batch['flow'].shape == (2, T - 1, 32, 32, 3) and batch['flow'].dtype == np.float32
  assert batch['frames'].dtype == np.uint8
  # Flat-colour frames have no texture to track: zero flow (no motion is invented).
  assert np.abs(batch['flow']).max() < 0.05
  batches = list(pipeline.eval_batches(source, options=PLAIN, batch_size_per_host=2, **kw))
  assert [b['mask'].tolist() for b in batches] == [[True, True], [True, False]]
  assert batches[1]['flow'].shape == (2, T - 1, 32, 32, 3)
  np.testing.assert_array_equal(batches[1]['flow'][1], 0.0)  # The padding row.


def _one_frame_source():
  frames = [tfds_common.encode_jpeg(f) for f in _moving(3, S)]
  return [{'frames': frames, 'label': 0, 'sequence_id': 'ok/0'},
          {'frames': frames[:1], 'label': 1, 'sequence_id': b'subject_7/single_frame'},
          {'frames': frames, 'label': 0, 'sequence_id': 'ok/1'}]


@pytest.mark.parametrize('worker_count', [0, 1])
def test_one_frame_record_is_named(worker_count):
  """The error of a record without flow reaches the caller naming it, from a grain worker too."""
  loader = pipeline.train_loader(_one_frame_source(), num_frames=T, image_size=S, options=PLAIN,
                                 batch_size_per_host=3, seed=0, worker_count=worker_count,
                                 inputs=('frames', 'flow'))
  with pytest.raises(pipeline.RecordError, match=r"record 'subject_7/single_frame' \(index 1\): optical "
                                                r'flow needs a sequence of at least 2 frames; found 1'):
    next(iter(loader))  # grain re-raises a worker's exception, type and message, in the caller.
  with pytest.raises(pipeline.RecordError, match='subject_7/single_frame'):
    list(pipeline.eval_batches(_one_frame_source(), num_frames=T, image_size=S, options=PLAIN,
                               batch_size_per_host=3, inputs=('frames', 'flow')))


def test_undecodable_frame_is_named():
  source = _one_frame_source()
  source[1] = {**source[2], 'frames': source[2]['frames'][:2] + [b'not a jpeg'], 'sequence_id': 'bad/3'}
  with pytest.raises(pipeline.RecordError, match=r"record 'bad/3' \(index 1\): frame 2: could not decode"):
    list(pipeline.eval_batches(source, num_frames=T, image_size=S, options=PLAIN, batch_size_per_host=3,
                               sampling_mode='clip', inputs=('frames', 'flow')))


def test_random_batch_has_flow():
  family = models.register(models.Family('flow_toy', {}, lambda *a, **k: None,
                                         inputs=('frames', 'flow')))
  config = ml_collections.ConfigDict({'model': {'name': family.name},
                                      'dataset': {'num_frames': T, 'image_size': 32}})
  batch = spec.random_batch(config, 2, 3, np.random.default_rng(0), family.inputs)
  assert batch['flow'].shape == (2, T - 1, 32, 32, 3) and batch['flow'].dtype == np.float32
  np.testing.assert_allclose(batch['flow'][..., 2], np.hypot(batch['flow'][..., 0], batch['flow'][..., 1]),
                             rtol=1e-5)


def test_input_benchmark_reports_flow_frames():
  """`benchmark --input --flow --source_px N`: moving-texture sequences, flow images per second."""
  import os
  import sys
  from ferjax import benchmark
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs'))
  try:
    import res_rbg
  finally:
    sys.path.pop(0)
  config = res_rbg.get_config('synthetic')
  config.dataset.num_frames, config.dataset.image_size, config.input.batch_size = 4, 32, 2
  config.dataset.sampling = 'clip'
  records = benchmark.moving_texture_source(2, 5, 40)
  assert len(records) == 2 and len(records[0]['frames']) == 5 and isinstance(records[0]['frames'][0], bytes)
  # The texture really moves: the flow of a record's clip is its constant shift, non-zero somewhere.
  raw = flow.compute(np.stack([cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR)
                               for f in records[1]['frames']]))
  assert np.abs(_interior(raw)[:2]).min() >= 0.8  # 1-3 px along both axes.
  result = benchmark.run_input(config, num_batches=2, flow=True, source_px=40)
  assert result['batch']['flow'] == 'float32[2, 3, 32, 32, 3]'
  assert result['flow_frames_per_s_per_worker'] > 0 and result['flow_frames_per_cpu_s'] > 0
  assert result['dataset'] == 'moving_texture 40px' and result['flow'] == 'dis'
  without = benchmark.run_input(config, num_batches=1, source_px=40)  # res_rbg asks for no flow.
  assert 'flow' not in without['batch'] and 'flow_frames_per_s_per_worker' not in without
