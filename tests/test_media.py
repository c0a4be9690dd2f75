"""ferjax.data.media: reading frames (grey/colour/16-bit images, videos) and evenly spaced selection."""

import cv2
import numpy as np
import pytest

from ferjax.data import media


@pytest.mark.parametrize('total,k,expected', [
    (10, 4, [0, 3, 6, 9]), (3, 8, [0, 1, 2]), (5, None, [0, 1, 2, 3, 4]), (9, 1, [4]), (0, 4, []),
    (20, 8, [0, 3, 5, 8, 11, 14, 16, 19])])
def test_evenly_spaced(total, k, expected):
  assert media.evenly_spaced(total, k) == expected


def test_evenly_spaced_is_sorted_unique_with_ends():
  for total in range(2, 60):
    for k in range(2, total + 1):
      picks = media.evenly_spaced(total, k)
      assert len(set(picks)) == len(picks) == k and picks == sorted(picks)
      assert picks[0] == 0 and picks[-1] == total - 1


def test_evenly_spaced_rejects_bad_counts():
  with pytest.raises(ValueError, match='max_frames'):
    media.evenly_spaced(5, 0)


def test_read_image_grey_colour_16bit(tmp_path):
  grey = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
  cv2.imwrite(str(tmp_path / 'grey.png'), grey)
  colour = np.zeros((49, 64, 3), np.uint8)
  colour[..., 2] = 200  # Red in OpenCV's BGR order.
  cv2.imwrite(str(tmp_path / 'colour.png'), colour)
  cv2.imwrite(str(tmp_path / 'deep.png'), (grey.astype(np.uint16) << 8))
  g = media.read_image(tmp_path / 'grey.png')
  assert g.shape == (48, 64, 3) and g.dtype == np.uint8
  np.testing.assert_array_equal(g[..., 0], grey)
  np.testing.assert_array_equal(g[..., 0], g[..., 2])
  c = media.read_image(tmp_path / 'colour.png')
  assert c.shape == (49, 64, 3) and tuple(c[0, 0]) == (200, 0, 0)  # RGB.
  np.testing.assert_array_equal(media.read_image(tmp_path / 'deep.png')[..., 1], grey)


def test_unreadable_files_raise_media_error(tmp_path):
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(40))
  with pytest.raises(media.MediaError, match='broken.png'):
    media.read_image(tmp_path / 'broken.png')
  with pytest.raises(media.MediaError, match='missing.png'):
    media.read_image(tmp_path / 'missing.png')
  with pytest.raises(media.MediaError, match='at least one'):
    media.read_images([])
  (tmp_path / 'garbage.avi').write_bytes(bytes(range(256)) * 4)
  with pytest.raises(media.MediaError, match='garbage.avi'):
    media.read_video(tmp_path / 'garbage.avi', max_frames=4)
  with pytest.raises(media.MediaError, match='garbage.avi'):
    media.read_video(tmp_path / 'garbage.avi')


def test_list_images_skips_hidden_and_other_files(tmp_path):
  for name in ('S005_001_00000002.png', 'S005_001_00000001.png', '.DS_Store', '._x.png', 'a.txt',
               'Thumbs.db', 'b.JPEG'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'sub.png').mkdir()
  assert [p.name for p in media.list_images(tmp_path)] == [
      'S005_001_00000001.png', 'S005_001_00000002.png', 'b.JPEG']


def test_video_round_trip_keeps_evenly_spaced_frames(tmp_path):
  # Frame i has grey level 10 * i, so decoded frames can be told apart despite MJPG compression.
  frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(20)]
  path = tmp_path / 'clip.avi'
  media.write_video(path, frames)
  assert media.count_video_frames(path) == 20
  all_frames, all_indices = media.read_video(path)
  assert all_indices == list(range(20)) and all_frames[0].shape == (48, 64, 3)
  kept, indices = media.read_video(path, max_frames=8)
  assert indices == [0, 3, 5, 8, 11, 14, 16, 19]
  levels = [int(round(f.mean())) for f in kept]
  assert all(abs(level - 10 * i) <= 2 for level, i in zip(levels, indices)), levels


def test_jpeg_size_from_the_header_without_decoding():
  for height, width in ((224, 224), (31, 57)):
    for flags in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
      ok, data = cv2.imencode('.jpg', np.zeros((height, width, 3), np.uint8), flags)
      assert ok and media.jpeg_size(data.tobytes()) == (height, width)
  ok, data = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(media.MediaError, match='cut off'):
    media.jpeg_size(data.tobytes()[:-10], 'x.jpg')
  with pytest.raises(media.MediaError, match='not a JPEG'):
    media.jpeg_size(b'\x89PNG\r\n', 'x.png')
