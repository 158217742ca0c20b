"""Video in and out through imageio's ffmpeg plugin and the ffmpeg binary bundled in its wheel."""

import os
import pathlib

import numpy as np
import pytest

from jhmr.io import video

pytest.importorskip("imageio_ffmpeg")


def moving_square(t=30, h=48, w=64):
  frames = np.full((t, h, w, 3), 20, np.uint8)
  for i in range(t):
    x = (2 * i) % (w - 16)
    frames[i, 12:28, x : x + 16] = (230, 120, 30)
  return frames


def test_bundled_ffmpeg_is_used():
  import imageio_ffmpeg

  exe = pathlib.Path(video.ffmpeg_exe())
  assert exe.is_file()
  if not os.environ.get("IMAGEIO_FFMPEG_EXE"):
    assert pathlib.Path(imageio_ffmpeg.__file__).parent in exe.parents


def test_round_trip(tmp_path):
  frames = moving_square()
  path = tmp_path / "clip.mp4"
  video.write_mp4(path, frames, fps=30.0)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp file left
  got, fps = video.read_frames(path)
  assert got.dtype == np.uint8
  assert got.shape == frames.shape
  assert fps == pytest.approx(30.0)
  assert np.abs(got.astype(np.int32) - frames).mean() < 2.0  # H.264 at crf 18 is nearly exact
  # The square moves: frame-to-frame differences survive the codec.
  assert np.abs(got[10].astype(np.int32) - got[0]).mean() > 5.0


def test_fps_resampling_and_max_frames(tmp_path):
  path = tmp_path / "clip.mp4"
  video.write_mp4(path, moving_square(t=30), fps=30.0)
  half, fps = video.read_frames(path, fps=15.0)
  assert fps == 15.0
  assert half.shape[0] == 15
  first, fps = video.read_frames(path, max_frames=4)
  assert first.shape == (4, 48, 64, 3) and fps == pytest.approx(30.0)


def test_odd_sizes_are_padded(tmp_path):
  frames = moving_square(t=6, h=47, w=63)
  path = tmp_path / "odd.mp4"
  video.write_mp4(path, frames, fps=24.0)
  got, fps = video.read_frames(path)
  assert got.shape == (6, 48, 64, 3)
  assert fps == pytest.approx(24.0)
  assert np.abs(got[:, :47, :63].astype(np.int32) - frames).mean() < 3.0


def test_overwrite_is_atomic_and_bad_input_keeps_old_file(tmp_path):
  path = tmp_path / "clip.mp4"
  video.write_mp4(path, moving_square(t=4), fps=30.0)
  before = path.read_bytes()
  with pytest.raises(ValueError, match="uint8"):
    video.write_mp4(path, moving_square(t=4).astype(np.float32), fps=30.0)
  assert path.read_bytes() == before
  video.write_mp4(path, moving_square(t=8), fps=30.0)
  assert video.read_frames(path)[0].shape[0] == 8
  assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_corrupt_file_raises_value_error_naming_it(tmp_path):
  path = tmp_path / "garbage.mp4"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(ValueError, match="garbage.mp4") as err:
    video.read_frames(path)
  assert "cannot read video" in str(err.value)


def test_truncated_file_raises_value_error(tmp_path):
  good = tmp_path / "good.mp4"
  video.write_mp4(good, moving_square(), fps=30.0)
  path = tmp_path / "cut.mp4"
  path.write_bytes(good.read_bytes()[:1500])
  with pytest.raises(ValueError, match="cut.mp4"):
    video.read_frames(path)


def test_missing_file_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.mp4"):
    video.read_frames(tmp_path / "nope.mp4")


def test_side_by_side():
  left, right = moving_square(t=3), np.zeros((3, 48, 64, 3), np.uint8)
  out = video.side_by_side(left, right)
  assert out.shape == (3, 48, 128, 3)
  np.testing.assert_array_equal(out[:, :, :64], left)
  np.testing.assert_array_equal(out[:, :, 64:], right)
  with pytest.raises(ValueError, match="equal"):
    video.side_by_side(left, right[:, :, :32])


def test_image_folder_reads_in_name_order_and_names_bad_files(tmp_path):
  from PIL import Image

  frames = np.random.default_rng(0).integers(0, 255, (3, 6, 8, 3), dtype=np.uint8)
  for i, frame in zip((10, 2, 7), frames):  # name order != write order
    Image.fromarray(frame).save(tmp_path / f"f{i:03d}.png")
  (tmp_path / "notes.txt").write_text("not an image")
  got, fps = video.read_video_or_images(tmp_path, fps=12.0)
  np.testing.assert_array_equal(got, frames[[1, 2, 0]])
  assert fps == 12.0
  Image.fromarray(frames[0][:4]).save(tmp_path / "f999.png")
  with pytest.raises(ValueError, match="f999.png.*share one size"):
    video.read_images(tmp_path)
  (tmp_path / "f999.png").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="cannot read image.*f999.png"):
    video.read_images(tmp_path)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="holds no"):
    video.read_images(empty)
  with pytest.raises(FileNotFoundError):
    video.read_images(tmp_path / "missing")
