"""Tests for ferjax.data.augment."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from ferjax.data import augment

T, H, S = 4, 48, 32
NONE = augment.AugmentOptions.none()


def _frames(seed=0, t=T, h=H, w=H):
  return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_shapes_dtypes_and_determinism():
  frames = _frames()
  options = augment.AugmentOptions()
  out = augment.train_augment(frames, S, options, np.random.default_rng(7))
  assert out.shape == (T, S, S, 3) and out.dtype == np.uint8  # Normalised on the device.
  np.testing.assert_array_equal(out, augment.train_augment(frames, S, options, np.random.default_rng(7)))
  assert not np.array_equal(out, augment.train_augment(frames, S, options, np.random.default_rng(8)))
  ev = augment.eval_preprocess(_frames(h=40, w=56), S, options)
  assert ev.shape == (T, S, S, 3) and ev.dtype == np.uint8


def test_same_transform_on_every_frame():
  # Identical frames stay identical: every random choice is made once per sequence.
  frames = np.repeat(_frames(t=1), T, axis=0)
  out = augment.train_augment(frames, S, augment.AugmentOptions(mask_prob=1.0), np.random.default_rng(0))
  for t in range(1, T):
    np.testing.assert_array_equal(out[t], out[0])


def test_identity_without_augmentation():
  frames = _frames(h=S, w=S)
  out = augment.train_augment(frames, S, NONE, np.random.default_rng(0))
  np.testing.assert_array_equal(out, frames)


def test_flip_flips():
  frames = _frames(h=S, w=S)
  options = dataclasses.replace(NONE, flip=True)
  plain, flipped = frames, frames[:, :, ::-1]
  seen = set()
  for seed in range(12):
    out = augment.train_augment(frames, S, options, np.random.default_rng(seed))
    is_plain, is_flipped = np.array_equal(out, plain), np.array_equal(out, flipped)
    assert is_plain != is_flipped
    seen.add(is_flipped)
  assert seen == {True, False}


def test_rotation_and_crop_change_the_image():
  frames = _frames(h=S, w=S)
  plain = frames
  for options in (dataclasses.replace(NONE, rotation=20.0),
                  dataclasses.replace(NONE, crop_scale=(0.3, 0.5))):
    out = augment.train_augment(frames, S, options, np.random.default_rng(0))
    assert out.shape == plain.shape and not np.array_equal(out, plain)


def test_brightness_contrast_jitter():
  frames = np.full((T, S, S, 3), 128, np.uint8)
  frames[:, :, : S // 2] = 64
  options = dataclasses.replace(NONE, brightness=0.5, contrast=0.5)
  outs = [augment.train_augment(frames, S, options, np.random.default_rng(s)) for s in range(4)]
  means = {round(float(o.mean()), 4) for o in outs}
  spreads = {round(float(o.std()), 4) for o in outs}
  assert len(means) == 4 and len(spreads) == 4


def _jitter_by_hand(frames, b, c, mean):
  jittered = frames.astype(np.float32) * np.float32(b)
  return np.rint(np.clip((jittered - mean) * np.float32(c) + mean, 0.0, 255.0)).astype(np.uint8)


def test_photometric_equals_per_pixel_jitter():
  """The lookup-table jitter is bit-identical to jittering every pixel in float32 around the exact mean
  (brightness * integer pixel sum / count), in place or not."""
  rng = np.random.default_rng(0)
  for _ in range(10):
    frames = rng.integers(0, 256, (T, H, H, 3), dtype=np.uint8)
    b, c = rng.uniform(0.5, 1.5, 2)
    mean = np.float32(b * int(frames.sum(dtype=np.int64)) / frames.size)
    want = _jitter_by_hand(frames, b, c, mean)
    np.testing.assert_array_equal(augment.photometric(frames, b, c), want)
    copy = frames.copy()
    assert augment.photometric(copy, b, c, inplace=True) is copy
    np.testing.assert_array_equal(copy, want)


def test_photometric_mean_is_exact():
  """The jitter pivots on the exact mean: a frame of one grey value v jittered by contrast alone keeps
  v; two values a < b keep their midpoint, whatever the contrast (up to rounding)."""
  frames = np.full((2, 8, 8, 3), 37, np.uint8)
  np.testing.assert_array_equal(augment.photometric(frames, 1.0, 1.7), frames)
  frames[1] = 201  # Mean 119: 37 -> 119 - 82 * 0.5 = 78, 201 -> 160.
  out = augment.photometric(frames, 1.0, 0.5)
  assert out[0].max() == out[0].min() == 78 and out[1].max() == out[1].min() == 160
  # The old float32 mean of the jittered pixels differs from the exact one by ~1e-5 grey levels: never
  # more than 1 level apart after rounding, on random frames.
  rng = np.random.default_rng(1)
  for _ in range(5):
    frames = rng.integers(0, 256, (T, H, H, 3), dtype=np.uint8)
    b, c = rng.uniform(0.5, 1.5, 2)
    old = _jitter_by_hand(frames, b, c, (frames.astype(np.float32) * np.float32(b)).mean())
    assert np.abs(old.astype(int) - augment.photometric(frames, b, c)).max() <= 1


def test_warp_writes_every_frame_in_place():
  """`warp` (each frame warped into its slot of one output) equals cv2.warpAffine frame by frame, for an
  array and for a list of frames, uint8 and 2-channel float32."""
  import cv2
  frames = _frames(t=5)
  d = augment.draw(H, H, S, augment.AugmentOptions(), np.random.default_rng(4))
  want = np.stack([cv2.warpAffine(f, d.matrix, (S, S), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT_101) for f in frames])
  np.testing.assert_array_equal(augment.warp(frames, d.matrix, S), want)
  np.testing.assert_array_equal(augment.warp(list(frames), d.matrix, S), want)
  field = np.random.default_rng(5).normal(size=(2, H, H, 2)).astype(np.float32)
  np.testing.assert_array_equal(
      augment.warp(field, d.matrix, S)[1],
      cv2.warpAffine(field[1], d.matrix, (S, S), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                     borderMode=cv2.BORDER_REFLECT_101))
  # apply on a list = on the array (the pipeline passes decoded frames unstacked).
  np.testing.assert_array_equal(augment.apply(list(frames), d, S), augment.apply(frames, d, S))


def test_eval_preprocess_by_hand():
  import cv2
  frames = _frames(h=40, w=56)
  options = augment.AugmentOptions(eval_crop=0.8)  # 32 px of the shorter side: no resize at S = 32.
  np.testing.assert_array_equal(augment.eval_preprocess(frames, S, options), frames[:, 4:36, 12:44])
  out = augment.eval_preprocess(list(frames), 16, options)  # A list, shrunk with area averaging.
  np.testing.assert_array_equal(out, np.stack([cv2.resize(f[4:36, 12:44], (16, 16),
                                                          interpolation=cv2.INTER_AREA) for f in frames]))
  with pytest.raises(ValueError, match=r'expected frames of shape \[T, H, W, 3\]; got \(4, 8, 8\)'):
    augment.eval_preprocess(np.zeros((4, 8, 8), np.uint8), S, options)


@pytest.mark.parametrize('count', [1, 3])
def test_masking(count):
  frames = np.full((T, S, S, 3), 200, np.uint8)  # Far from the mean: masked pixels stand out.
  fill = augment.MASK_FILL  # The ImageNet mean colour: ~0 once normalised on the device.
  np.testing.assert_allclose(augment.normalize(fill[None, None, None]), 0.0, atol=0.01)
  always = dataclasses.replace(NONE, mask_prob=1.0, mask_size=(0.2, 0.4), mask_count=count)
  for seed in range(5):
    out = augment.train_augment(frames, S, always, np.random.default_rng(seed))
    masked = np.all(out == fill, axis=-1)  # [T, S, S]
    assert masked[0].any()
    for t in range(1, T):
      np.testing.assert_array_equal(masked[t], masked[0])  # Same rectangles on every frame.
    assert masked[0].mean() <= count * 0.4 ** 2 + 1e-6
  never = dataclasses.replace(always, mask_prob=0.0)
  for seed in range(5):
    out = augment.train_augment(frames, S, never, np.random.default_rng(seed))
    assert not np.any(np.all(out == fill, axis=-1))
  half = dataclasses.replace(always, mask_prob=0.5)
  hits = [np.all(augment.train_augment(frames, S, half, np.random.default_rng(s)) == fill, -1).any()
          for s in range(40)]
  assert 8 < sum(hits) < 32


def test_normalisation_stats():
  np.testing.assert_allclose(
      augment.normalize(np.round(augment.IMAGENET_MEAN * 255)[None, None, None]),
      0.0, atol=0.01)
  out = augment.normalize(np.full((1, 2, 2, 3), 255, np.uint8))
  np.testing.assert_allclose(out[0, 0, 0], (1 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD, rtol=1e-6)
  # Uniform noise in [0, 255]: mean (0.5 - m) / s, std (1 / sqrt(12)) / s per channel.
  out = augment.normalize(np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8))
  np.testing.assert_allclose(out.mean((0, 1, 2)), (0.5 - augment.IMAGENET_MEAN) / augment.IMAGENET_STD,
                             atol=0.02)
  np.testing.assert_allclose(out.std((0, 1, 2)), (12 ** -0.5) / augment.IMAGENET_STD, rtol=0.01)


def test_eval_centre_crop():
  frames = np.zeros((1, 64, 64, 3), np.uint8)
  frames[:, 4:60, 4:60] = 255  # A white square inside a 4-pixel black border.
  out = augment.eval_preprocess(frames, 56, dataclasses.replace(NONE, eval_crop=0.875))
  np.testing.assert_array_equal(out, 255)  # Border cropped away.
  np.testing.assert_array_equal(augment.eval_preprocess(frames, 32, NONE),
                                augment.eval_preprocess(frames, 32, NONE))


def test_from_config_and_validation():
  config = ml_collections.ConfigDict(dict(crop_scale=(0.5, 1.0), flip=False, mask_count=2,
                                          eval_crop=0.9))
  options = augment.AugmentOptions.from_config(config)
  assert options.crop_scale == (0.5, 1.0) and options.flip is False and options.mask_count == 2
  assert options.rotation == augment.AugmentOptions().rotation  # Absent -> default.
  with pytest.raises(ValueError, match=r'crop_scale must be \(min, max\).*got \(0.9, 0.5\)'):
    augment.AugmentOptions(crop_scale=(0.9, 0.5))
  with pytest.raises(ValueError, match='mask_prob must be in'):
    augment.AugmentOptions(mask_prob=1.5)
  with pytest.raises(ValueError, match=r'expected frames of shape \[T, H, W, 3\]'):
    augment.eval_preprocess(np.zeros((4, 8, 8), np.uint8), 8, NONE)


def _matrix(a, size, src_centre):
  """2x3 output->source matrix with linear part `a` mapping the output centre to `src_centre`."""
  a = np.asarray(a, np.float64)
  dst = np.full(2, size / 2 - 0.5)
  return np.concatenate([a, (np.asarray(src_centre) - a @ dst)[:, None]], axis=1)


def test_flow_warp_corrects_vectors_for_flip_rotation_and_zoom():
  size = 16
  flow = np.zeros((2, size, size, 3), np.float32)
  flow[..., 0], flow[..., 1] = 2.0, 1.0  # Every pixel moves 2 right, 1 down.
  flow[..., 2] = np.hypot(2.0, 1.0)
  centre = (size / 2 - 0.5,) * 2
  identity = augment.warp_flow(flow, _matrix(np.eye(2), size, centre), size)
  np.testing.assert_allclose(identity, flow, atol=1e-5)
  flipped = augment.warp_flow(flow, _matrix(np.diag([-1.0, 1.0]), size, centre), size)
  np.testing.assert_allclose(flipped[..., :2], np.broadcast_to([-2.0, 1.0], flipped[..., :2].shape),
                             atol=1e-5)
  # Output x runs along source y (a 90-degree rotation): the vector (2, 1) becomes (1, -2).
  rotated = augment.warp_flow(flow, _matrix([[0.0, -1.0], [1.0, 0.0]], size, centre), size)
  np.testing.assert_allclose(rotated[..., :2], np.broadcast_to([1.0, -2.0], rotated[..., :2].shape),
                             atol=1e-5)
  # A crop of half the side zoomed to the full side: displacements double; magnitude follows.
  zoomed = augment.warp_flow(flow, _matrix(0.5 * np.eye(2), size, centre), size)
  np.testing.assert_allclose(zoomed[..., :2], np.broadcast_to([4.0, 2.0], zoomed[..., :2].shape), atol=1e-5)
  np.testing.assert_allclose(zoomed[..., 2], np.hypot(4.0, 2.0), atol=1e-5)


def test_flow_warp_moves_positions_like_the_frames():
  # A flow field that is non-zero on one pixel lands where the frames' warp puts that pixel.
  size = 8
  flow = np.zeros((1, size, size, 2), np.float32)
  flow[0, 2, 1] = (3.0, 0.0)
  flip = _matrix(np.diag([-1.0, 1.0]), size, (size / 2 - 0.5,) * 2)
  out = augment.warp_flow(flow, flip, size)
  frame = np.zeros((1, size, size, 3), np.uint8)
  frame[0, 2, 1] = 255
  moved = augment.warp(frame, flip, size)[0, ..., 0] > 0
  assert np.argwhere(moved).tolist() == [[2, size - 2]]
  np.testing.assert_allclose(out[0, 2, size - 2], (-3.0, 0.0), atol=1e-5)
  assert np.abs(out).sum() == pytest.approx(3.0, abs=1e-4)


def test_draw_then_apply_equals_train_augment():
  frames = _frames()
  options = augment.AugmentOptions(mask_prob=1.0)
  d = augment.draw(H, H, S, options, np.random.default_rng(3))
  applied = augment.apply_mask(augment.photometric(augment.warp(frames, d.matrix, S), d.brightness,
                                                   d.contrast), d.boxes)
  np.testing.assert_array_equal(applied, augment.train_augment(frames, S, options, np.random.default_rng(3)))
  assert d.boxes and d.matrix.shape == (2, 3)


def test_fill_black_zeroes_the_corners_a_rotation_uncovers():
  """fill='black' (the Residual Masking Network's imgaug Affine: constant 0) vs 'reflect' (mirrored):
  on a white frame rotated by 30 degrees without a crop, the output's corners come from outside the
  frame, its centre from inside; flow gets zero motion there."""
  frames = np.full((2, H, H, 3), 255, np.uint8)
  options = augment.AugmentOptions(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False,
                                    rotation=30.0, brightness=0.0, contrast=0.0, mask_prob=0.0)
  rng = np.random.default_rng(0)
  d = augment.draw(H, H, S, options, rng)
  while abs(np.degrees(np.arctan2(d.matrix[1, 0], d.matrix[0, 0]))) < 15:  # A clear rotation.
    d = augment.draw(H, H, S, options, rng)
  black = augment.warp(frames, d.matrix, S, 'black')
  reflect = augment.warp(frames, d.matrix, S, 'reflect')
  assert reflect.min() == 255  # Mirrored white is white.
  for y, x in ((0, 0), (0, S - 1), (S - 1, 0), (S - 1, S - 1)):
    np.testing.assert_array_equal(black[:, y, x], 0)
  np.testing.assert_array_equal(black[:, S // 2, S // 2], 255)
  assert augment.warp(frames, d.matrix, S).min() == 255  # 'reflect' stays the generic default.
  # train_augment reads the option (no jitter or masking here: the warp alone).
  black_options = dataclasses.replace(options, fill='black')
  matrix = augment.draw(H, H, S, black_options, np.random.default_rng(1)).matrix
  np.testing.assert_array_equal(augment.train_augment(frames, S, black_options, np.random.default_rng(1)),
                                augment.warp(frames, matrix, S, 'black'))
  field = np.ones((1, H, H, 2), np.float32)
  moved = augment.warp_flow(field, d.matrix, S, magnitude=True, fill='black')
  mirrored = augment.warp_flow(field, d.matrix, S, magnitude=True)
  np.testing.assert_array_equal(moved[0, 0, 0], 0.0)
  # Inside, the same vectors: (1, 1) source pixels, sqrt(2) long, zoomed by S / H into output pixels.
  np.testing.assert_allclose(moved[0, S // 2, S // 2], mirrored[0, S // 2, S // 2])
  np.testing.assert_allclose(mirrored[0, ..., 2], np.sqrt(2) * S / H, rtol=1e-5)
  with pytest.raises(ValueError, match=r"fill must be one of \('reflect', 'black'\); got 'mirror'"):
    augment.AugmentOptions(fill='mirror')


def _geometric(**fields):
  return augment.AugmentOptions(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, brightness=0.0,
                                contrast=0.0, mask_prob=0.0, **fields)


def test_padded_crop_is_torchvision_random_crop_of_the_zero_padded_image():
  """pad_crop=p without rotation: every draw equals np.pad(frame, p)[i:i+S, j:j+S] for some i, j in
  0..2p (torchvision's RandomCrop(S, padding=p) on the output-size frame, zero fill), every i, j occurs,
  and the warp's linear part stays the identity."""
  pad = 2
  frames = _frames(t=2, h=S, w=S)
  options = _geometric(rotation=0.0, pad_crop=pad, fill='black')
  padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rng, seen = np.random.default_rng(0), set()
  for _ in range(100):
    d = augment.draw(S, S, S, options, rng)
    np.testing.assert_allclose(d.matrix[:, :2], np.eye(2), atol=1e-12)
    dx, dy = d.matrix[:, 2]  # Output pixel (x, y) reads source (x + dx, y + dy).
    assert dx == int(dx) and dy == int(dy) and max(abs(dx), abs(dy)) <= pad
    i, j = int(dy) + pad, int(dx) + pad
    np.testing.assert_array_equal(augment.warp(frames, d.matrix, S, 'black'), padded[:, i:i + S, j:j + S])
    seen.add((i, j))
  assert seen == {(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)}


def test_padded_crop_shifts_after_the_rotation():
  """DAN's order, rotation then crop: output pixel p reads the rotated image at p + shift, so the
  matrix is the rotation's with the translation moved by A @ shift."""
  options = _geometric(rotation=20.0, pad_crop=32)
  d = augment.draw(224, 224, 224, options, np.random.default_rng(5))
  a = d.matrix[:, :2]
  theta = np.arctan2(a[1, 0], a[0, 0])
  np.testing.assert_allclose(a, [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  centre = np.full(2, 223 / 2)
  shift = np.linalg.solve(a, d.matrix[:, 2] - centre + a @ centre)
  np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
  assert np.all(np.abs(shift) <= 32) and abs(np.degrees(theta)) <= 20


@pytest.mark.parametrize('prob', [0.0, 0.2, 1.0])
def test_rotate_crop_prob_applies_rotation_and_crop_together(prob):
  """p=0: never (the warp is the identity), p=1: always, p=0.2: in about 20 % of sequences; the rotation
  and the shift come and go together."""
  options = _geometric(rotation=20.0, pad_crop=4, rotate_crop_prob=prob)
  rng, applied, n = np.random.default_rng(1), 0, 1000
  for _ in range(n):
    m = augment.draw(S, S, S, options, rng).matrix
    identity = np.array_equal(m, [[1, 0, 0], [0, 1, 0]])
    rotated = m[1, 0] != 0  # sin(theta): exactly 0 only when nothing was applied.
    assert identity == (not rotated)
    applied += not identity
  if prob in (0.0, 1.0):
    assert applied == prob * n
  else:  # Binomial(1000, 0.2): sd 12.6; a shift-only identity draw (0 degrees exactly) has probability 0.
    assert abs(applied - 200) < 50
  frames = _frames(h=S, w=S)
  if prob == 0.0:
    np.testing.assert_array_equal(augment.train_augment(frames, S, options, np.random.default_rng(2)), frames)


def test_defaults_draw_what_they_drew_before_the_rotate_crop_fields():
  """rotate_crop_prob=1 and pad_crop=0 (every existing config) consume the random stream as before the
  fields: the matrices and jitter of two successive draws equal the values the earlier code drew."""
  rng = np.random.default_rng(9)
  options = augment.AugmentOptions(rotation=15.0)
  first, second = augment.draw(H, H, S, options, rng), augment.draw(H, H, S, options, rng)
  np.testing.assert_allclose(first.matrix, [[1.3924636505, -0.3227854349, 7.1640465922],
                                            [0.3077177933, 1.4606467185, -3.8731260355]], atol=1e-9)
  np.testing.assert_allclose(second.matrix, [[1.3947827785, 0.1685041134, -0.1008812617],
                                             [-0.161568955, 1.4546521976, 3.228303615]], atol=1e-9)
  assert second.brightness == pytest.approx(1.1130363661312526, abs=1e-12)
