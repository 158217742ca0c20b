"""Video in and out without system packages: imageio's ffmpeg plugin on the ffmpeg binary that the
`imageio-ffmpeg` wheel ships (`imageio_ffmpeg.get_ffmpeg_exe()`; `$IMAGEIO_FFMPEG_EXE` overrides).

Frames are uint8 RGB arrays [T, H, W, 3]. Writing is H.264 (libx264, yuv420p) in an .mp4; yuv420p
needs even sizes, so odd heights / widths are padded by one row / column (edge replicated) and
read back at the padded size. Rendering meshes is `jhmr.render`'s job; `side_by_side` only puts
an input video next to its overlay.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from jhmr.io.files import atomic_path

FFMPEG_PLUGIN = "ffmpeg"


def ffmpeg_exe() -> str:
  """Path of the ffmpeg binary used (the one bundled in the imageio-ffmpeg wheel by default)."""
  import imageio_ffmpeg

  return imageio_ffmpeg.get_ffmpeg_exe()


def read_frames(
  path: str | os.PathLike, fps: float | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, float]:
  """Decodes a video file -> (frames uint8 [T, H, W, 3], fps).

  Args:
    path: any container / codec the bundled ffmpeg decodes.
    fps: resample to this frame rate with ffmpeg's `fps` filter (`-vf fps=...`), which drops or
      duplicates frames by timestamp (a 1 s clip at 30 fps read at 15 gives 15 frames; imageio's
      own `fps=` option passes `-r`, which pads the end with extra frames); the returned fps is
      then `fps`. None keeps the file's frames and returns its native fps.
    max_frames: stop after this many (decoded, resampled) frames.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: ffmpeg cannot read it (corrupt, truncated, not a video) or it holds no frames.
  """
  import imageio.v2 as iio

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"video file {str(path)!r} not found")
  if fps is not None and not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  if max_frames is not None and max_frames < 0:
    raise ValueError(f"max_frames must be >= 0, got {max_frames}")
  kwargs = {"output_params": ["-vf", f"fps=fps={float(fps)!r}"]} if fps is not None else {}
  frames = []
  try:
    reader = iio.get_reader(str(path), FFMPEG_PLUGIN, **kwargs)
    try:
      fps_out = float(fps) if fps is not None else float(reader.get_meta_data().get("fps", 0.0))
      for frame in reader:
        if max_frames is not None and len(frames) >= max_frames:
          break
        frames.append(np.asarray(frame, np.uint8)[..., :3])
    finally:
      reader.close()
  except Exception as e:  # imageio / ffmpeg errors come as OSError, RuntimeError, IndexError ...
    problem = str(e).strip().splitlines()
    problem = problem[-1] if problem else type(e).__name__
    raise ValueError(
      f"cannot read video {str(path)!r}: ffmpeg could not decode it (corrupt, truncated or not "
      f"a video): {type(e).__name__}: {problem}"
    ) from None
  if not frames and max_frames != 0:
    raise ValueError(f"video {str(path)!r} holds no decodable frames")
  if not frames:
    return np.zeros((0, 0, 0, 3), np.uint8), fps_out
  return np.stack(frames), fps_out


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def image_files(directory: str | os.PathLike) -> list[pathlib.Path]:
  """The image files of a folder (`IMAGE_SUFFIXES`, any case), sorted by name: frame i is the
  i-th. Raises FileNotFoundError (no folder) or ValueError (no images)."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"image folder {str(directory)!r} not found")
  files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise ValueError(f"image folder {str(directory)!r} holds no {'/'.join(IMAGE_SUFFIXES)} files")
  return files


def read_image(path: str | os.PathLike) -> np.ndarray:
  """One image file -> uint8 RGB [H, W, 3] (grey and RGBA converted); ValueError naming it."""
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"), np.uint8)
  except (OSError, UnidentifiedImageError) as e:
    raise ValueError(f"cannot read image {str(path)!r}: {e}") from None


def read_images(directory: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
  """The images of a folder (`image_files` order) -> uint8 [T, H, W, 3]; all must share one size.

  Raises:
    FileNotFoundError / ValueError: no folder, no images, an unreadable image (named), or sizes
      that differ (the first offending file named).
  """
  frames = []
  for path in image_files(directory)[:max_frames]:
    frame = read_image(path)
    if frames and frame.shape != frames[0].shape:
      raise ValueError(
        f"image {str(path)!r} is {frame.shape[1]}x{frame.shape[0]} px, the folder's first image "
        f"{frames[0].shape[1]}x{frames[0].shape[0]} px: frames must share one size"
      )
    frames.append(frame)
  return np.stack(frames)


def read_video_or_images(
  path: str | os.PathLike, fps: float | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, float | None]:
  """A video file (`read_frames`) or a folder of images (`read_images`; fps is then `fps` as
  given, None when not given) -> (frames uint8 [T, H, W, 3], fps)."""
  if pathlib.Path(path).is_dir():
    return read_images(path, max_frames), fps
  return read_frames(path, fps, max_frames)


def _check_frames(frames, name: str = "frames") -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"{name} must have shape [T, H, W, 3], got {frames.shape}")
  if frames.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8, got {frames.dtype}")
  return frames


def pad_to_even(frames: np.ndarray) -> np.ndarray:
  """Pads [T, H, W, C] at the bottom / right (edge replicated) so that H and W are even."""
  _, h, w, _ = frames.shape
  if h % 2 == 0 and w % 2 == 0:
    return frames
  return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(path: str | os.PathLike, frames, fps: float = 30.0, *, crf: int = 18) -> None:
  """Writes uint8 frames [T, H, W, 3] as an H.264 (libx264, yuv420p) .mp4.

  Odd sizes are padded to even (see `pad_to_even`). The file is written to a temporary name in
  the same directory and renamed over `path`, so readers never see a half-written video. `crf` is
  x264's constant rate factor (0 lossless-ish luma, 18 visually lossless, 23 x264's default).
  """
  import imageio.v2 as iio

  frames = pad_to_even(_check_frames(frames))
  if frames.shape[0] == 0:
    raise ValueError("write_mp4 needs at least one frame")
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  with atomic_path(path, suffix=".tmp.mp4") as tmp:
    writer = iio.get_writer(
      tmp,
      FFMPEG_PLUGIN,
      fps=float(fps),
      codec="libx264",
      pixelformat="yuv420p",
      quality=None,
      macro_block_size=2,  # sizes are already even: imageio must not resize
      output_params=["-crf", str(int(crf)), "-movflags", "+faststart"],
      ffmpeg_log_level="error",
    )
    try:
      for frame in frames:
        writer.append_data(frame)
    finally:
      writer.close()


def side_by_side(left, right) -> np.ndarray:
  """[T, H, W, 3] and [T, H, W, 3] -> [T, H, 2W, 3] (e.g. input frame | rendered mesh)."""
  left, right = np.asarray(left), np.asarray(right)
  if left.shape != right.shape or left.ndim != 4:
    raise ValueError(
      f"side_by_side needs two equal [T, H, W, 3] arrays, got {left.shape} and {right.shape}"
    )
  if left.dtype != right.dtype:
    raise ValueError(f"side_by_side needs equal dtypes, got {left.dtype} and {right.dtype}")
  return np.concatenate([left, right], axis=2)
