"""Person crops: ONE affine warp, the crop presets of every model, boxes from keypoints, and
image encoding (numpy; PIL and scipy.ndimage as the warp's resampling engines, PIL to encode and
decode files).

`warp_affine(image, matrix, (W, H), border)` is the only resampler: bilinear, with
`cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT)` semantics (pixel centres at integer coordinates,
dst(x, y) = src(M^-1 (x, y, 1)), taps outside the image read `border`; uint8 in -> rounded uint8
out). Every crop below only builds its `[2, 3]` matrix and calls it:

- `crop_image` (datasets, augmentation; SPIN / ScoreHMR / DPMesh convention): a person box is
  `center [2]` (pixels, x then y) and `scale` = the side in pixels of a square box, in continuous
  coordinates (pixel i covers [i, i + 1)); optional rotation about the centre. `crop_points`
  applies the same map to 2D points. `bbox_from_keypoints` takes the tight box of the confident
  keypoints, expands it (`expand`, DPMesh uses 1.2), and makes it square.
- `crop_for_pare` (ScoreHMR's PARE input): square of side max(w, h) on the box, 224 x 224.
- `crop_for_hmr2` (4D-Humans / ScoreHMR's HMR 2.0 input): box to aspect 192:256, then square,
  256 x 256, optional anti-aliasing blur.
- `crop_for_vitpose` (ViTPose's UDP top-down crop): 256 x 192 from `boxes_to_center_scale`.

Difference from cv2: none beyond rounding. uint8 outputs are interpolated in float32 and rounded
to nearest; against `cv2.warpAffine` of opencv-python-headless 5.0.0.93 they agree within one
grey level (random images, borders, rotations, a 0/255 checkerboard; tests/data/crops_test.py).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
from scipy import ndimage

from jhmr.errors import InputError

# The model presets' constants (the models are a floor below; kept in sync by the crop tests).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PARE_SIZE = 224  # jhmr.models.pare.INPUT_SIZE
HMR2_SIZE = 256  # jhmr.models.hmr2.CROP_SIZE
HMR2_BOX_ASPECT = (192, 256)  # jhmr.models.hmr2.BOX_ASPECT (w, h)
VITPOSE_SIZE = (256, 192)  # (h, w), jhmr.models.vitpose image size


def warp_affine(image: np.ndarray, matrix, out_size, border: float = 0.0) -> np.ndarray:
  """`cv2.warpAffine(image, matrix, out_size, INTER_LINEAR, BORDER_CONSTANT, border)`.

  Args:
    image: `[H, W]` or `[H, W, C]`, uint8 or float.
    matrix: `[2, 3]` affine map from image pixels to output pixels (integer pixel centres).
    out_size: `(W, H)` of the output, as cv2.
    border: the value of every tap outside the image.

  Returns:
    `[H_out, W_out(, C)]`: dst(x, y) = bilinear src(M^-1 (x, y, 1)); uint8 in -> rounded,
    saturated uint8 out (as cv2), float in -> the same float dtype (other dtypes -> float64).

  Two engines, one semantics (both checked against a reference resampler in the tests):
  uint8 images go through PIL's `Image.transform(AFFINE, BILINEAR)` one channel at a time in
  float32 mode "F" (a 1-pixel `border` frame turns PIL's edge clamping into cv2's constant border;
  the matrix is shifted to PIL's pixel-centre-at-half convention); the result is rounded as
  float32, so a value within ~1e-5 of a rounding tie may land one grey level away from the exact
  one. Float images go through `scipy.ndimage.affine_transform(order=1, mode='grid-constant')`
  in float64 (exact).
  """
  image = np.asarray(image)
  if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
    raise InputError(f"warp_affine: image must be [H, W] or [H, W, C], got shape {image.shape}")
  m = np.asarray(matrix, np.float64)
  if m.shape != (2, 3) or not np.all(np.isfinite(m)):
    raise InputError(f"warp_affine: matrix must be a finite [2, 3] array, got {m.tolist()}")
  out_w, out_h = (int(v) for v in out_size)
  if out_w < 0 or out_h < 0:
    raise InputError(f"warp_affine: out_size must be (W, H) >= 0, got {tuple(out_size)}")
  a = m[:, :2]
  if abs(np.linalg.det(a)) < 1e-12:
    raise InputError(f"warp_affine: matrix {m.tolist()} is singular")
  a_inv = np.linalg.inv(a)
  b_inv = -a_inv @ m[:, 2]  # output pixel (x, y) samples image pixel a_inv (x, y) + b_inv
  src = image if image.ndim == 3 else image[..., None]
  if image.dtype == np.uint8:
    out = _warp_uint8(src, a_inv, b_inv, out_w, out_h, float(border))
  else:
    dtype = image.dtype if np.issubdtype(image.dtype, np.floating) else np.float64
    out = _warp_float(src, a_inv, b_inv, out_w, out_h, float(border)).astype(dtype, copy=False)
  return out if image.ndim == 3 else out[..., 0]


def _warp_uint8(src, a_inv, b_inv, out_w: int, out_h: int, border: float) -> np.ndarray:
  """`warp_affine` of uint8 `src [H, W, C]` with PIL (mode "F", one channel at a time)."""
  height, width, channels = src.shape
  out = np.empty((out_h, out_w, channels), np.uint8)
  if out.size == 0:
    return out
  # PIL samples output pixel (x, y) at (x + 1/2, y + 1/2), maps it by `coeffs` and puts input
  # pixel centres at half-integers; the 1-pixel frame adds 1 to every input coordinate. Beyond
  # the frame (taps 1.5+ px outside the image) PIL writes `fillcolor`, the border.
  shift = b_inv + 1.5 - a_inv.sum(axis=1) / 2
  coeffs = (*a_inv[0], shift[0], *a_inv[1], shift[1])
  framed = np.full((height + 2, width + 2), border, np.float32)
  for c in range(channels):  # one reused frame and plane: fresh pages cost more than the copies
    framed[1:-1, 1:-1] = src[..., c]
    warped = Image.fromarray(framed).transform(
      (out_w, out_h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=border
    )
    plane = np.rint(np.asarray(warped))
    out[..., c] = np.clip(plane, 0, 255, out=plane)
  return out


def _warp_float(src, a_inv, b_inv, out_w: int, out_h: int, border: float) -> np.ndarray:
  """`warp_affine` of `src [H, W, C]` in float64 with scipy (rows and columns swapped)."""
  matrix = a_inv[::-1, ::-1]
  offset = b_inv[::-1]
  out = np.empty((out_h, out_w, src.shape[2]), np.float64)
  for c in range(src.shape[2] if out.size else 0):
    ndimage.affine_transform(
      np.ascontiguousarray(src[..., c], np.float64),
      matrix,
      offset,
      output_shape=(out_h, out_w),
      output=out[..., c],
      order=1,
      mode="grid-constant",  # interpolates with `cval` beyond the edge pixels, as cv2
      cval=border,
      prefilter=False,
    )
  return out


def bbox_from_keypoints(
  keypoints: np.ndarray, conf: np.ndarray | None = None, expand: float = 1.2, threshold: float = 0.0
) -> tuple[np.ndarray, float]:
  """Square box `(center [2], scale)` around keypoints `[K, 2]` with `conf > threshold`.

  Raises ValueError if no keypoint is confident.
  """
  keypoints = np.asarray(keypoints, np.float64)
  valid = np.ones(len(keypoints), bool) if conf is None else np.asarray(conf) > threshold
  if not valid.any():
    raise ValueError("no confident keypoint to build a bounding box from")
  lo, hi = keypoints[valid].min(0), keypoints[valid].max(0)
  return (lo + hi) / 2, float(max(hi - lo) * expand + 1e-6)


def crop_transform(center, scale: float, size: int, rotation_deg: float = 0.0) -> np.ndarray:
  """`[2, 3]` affine map from image pixels to crop pixels."""
  s = size / scale
  a = np.radians(rotation_deg)
  rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * s
  shift = size / 2 - rot @ np.asarray(center, np.float64)
  return np.concatenate([rot, shift[:, None]], axis=1)


def crop_points(points: np.ndarray, center, scale: float, size: int, rotation_deg=0.0):
  """Image points `[..., 2]` -> crop pixels `[..., 2]` (the map of `crop_image`)."""
  m = crop_transform(center, scale, size, rotation_deg)
  return np.asarray(points) @ m[:, :2].T + m[:, 2]


def crop_image(image: np.ndarray, center, scale: float, size: int, rotation_deg=0.0) -> np.ndarray:
  """`size x size` crop (uint8 `[size, size(, C)]`) of `image` `[H, W(, C)]` (bilinear, zero
  pad). `crop_transform` works in continuous coordinates (pixel centre i + 0.5); the matrix is
  shifted by half a pixel on both sides for `warp_affine`'s integer pixel centres."""
  m = crop_transform(center, scale, size, rotation_deg)
  m = np.concatenate([m[:, :2], (m[:, 2] + m[:, :2] @ [0.5, 0.5] - 0.5)[:, None]], axis=1)
  return warp_affine(np.asarray(image, np.uint8), m, (size, size))


# ----------------------------------------------------------------------------------------------
# Model presets: each only checks its inputs and builds its matrix for `warp_affine`.


def _check_image(image, uint8: bool = False) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
    raise InputError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
  if uint8 and image.dtype != np.uint8:
    raise InputError(f"image must be uint8 RGB, got dtype {image.dtype}")
  return image


def check_box(box, image_size) -> np.ndarray:
  """A detector box (x1, y1, x2, y2) as float64 `[4]`, checked against `image_size` (W, H).

  Raises InputError naming the box if it is not 4 finite numbers, has no area, or lies entirely
  outside the image (a box that overlaps the image is fine: the outside reads zeros).
  """
  box = np.asarray(box, np.float64)
  if box.shape != (4,) or not np.all(np.isfinite(box)):
    raise InputError(f"box must be 4 finite numbers (x1, y1, x2, y2), got {box.tolist()}")
  x1, y1, x2, y2 = box
  if x2 <= x1 or y2 <= y1:
    raise InputError(
      f"degenerate box (x1, y1, x2, y2) = {box.tolist()}: width {x2 - x1} and height "
      f"{y2 - y1} must be > 0"
    )
  width, height = image_size
  if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
    raise InputError(f"box {box.tolist()} lies outside the {width}x{height} image")
  return box


def normalise(crop: np.ndarray) -> np.ndarray:
  """0..255 RGB `[..., 3]` -> float32 `(x / 255 - mean) / std` with ImageNet statistics."""
  x = np.asarray(crop, np.float64) / 255.0
  return ((x - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).astype(np.float32)


def scale_about(center, scale_xy, out_center) -> np.ndarray:
  """`[2, 3]` map scaling by `scale_xy` (sx, sy) that takes image `center` to `out_center`."""
  sx, sy = np.broadcast_to(np.asarray(scale_xy, np.float64), (2,))
  cx, cy = np.asarray(center, np.float64)
  ox, oy = np.asarray(out_center, np.float64)
  return np.array([[sx, 0.0, ox - sx * cx], [0.0, sy, oy - sy * cy]])


def crop_for_pare(image: np.ndarray, box, size: int = PARE_SIZE) -> np.ndarray:
  """ScoreHMR's PARE input: uint8 RGB `image [H, W, 3]`, person `box` (x1, y1, x2, y2) in pixels
  -> normalised float32 crop `[size, size, 3]`.

  The square of side max(w, h) centred on the box (no padding, no blur), `warp_affine`d with
  zeros outside (image index (cx, cy) lands on crop index (size/2, size/2), as ScoreHMR's
  `cv2.warpAffine`), rounded to uint8 as cv2, then ImageNet-normalised. (ScoreHMR reads BGR with
  cv2 and flips to RGB; here the image is RGB already.)

  Raises:
    InputError: the image is not uint8 `[H, W, 3]`, the box is not 4 finite numbers, has no
      area, or lies entirely outside the image.
  """
  image = _check_image(image, uint8=True)
  x1, y1, x2, y2 = check_box(box, image.shape[1::-1])
  side = max(x2 - x1, y2 - y1)
  matrix = scale_about(((x1 + x2) / 2, (y1 + y2) / 2), size / side, (size / 2, size / 2))
  return normalise(warp_affine(image, matrix, (size, size)))


@dataclasses.dataclass(frozen=True)
class HMR2Crop:
  """One person crop: `image` float32 [256, 256, 3] normalised (feed `hmr2_input` of a batch),
  `box_center` [2] (cx, cy) and `box_size` (square side) in pixels, `image_size` [2] (W, H)."""

  image: np.ndarray
  box_center: np.ndarray
  box_size: float
  image_size: np.ndarray


def square_box(box) -> tuple[np.ndarray, float]:
  """Detector box (x0, y0, x1, y1) -> (centre [2], side): expanded to aspect 192:256 (w:h), side
  `max(h, 4 w / 3)` (4D-Humans `expand_to_aspect_ratio(...).max()`).

  Raises InputError for a non-finite box or one with non-positive width or height.
  """
  box = np.asarray(box, np.float64)
  if box.shape != (4,) or not np.all(np.isfinite(box)):
    raise InputError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {box.tolist()}")
  w, h = box[2] - box[0], box[3] - box[1]
  if w <= 0 or h <= 0:
    raise InputError(f"degenerate box {box.tolist()}: width {w} and height {h} must be > 0")
  w_t, h_t = HMR2_BOX_ASPECT
  size = max(h, w * h_t / w_t)  # both branches of expand_to_aspect_ratio, then .max()
  return (box[:2] + box[2:]) / 2.0, float(size)


def crop_for_hmr2(image: np.ndarray, box, blur: bool = False, size: int = HMR2_SIZE) -> HMR2Crop:
  """The HMR 2.0 input crop of one person (4D-Humans `vitdet_dataset.py`; `jhmr.models.hmr2`).

  The box is expanded to aspect 192:256 and made square (`square_box`), scaled to `size` with
  the box centre on crop pixel (size/2, size/2), `warp_affine`d in float (no uint8 rounding)
  with zeros outside, then ImageNet-normalised (x 255).

  Args:
    image: [H, W, 3] RGB, uint8 or float in 0..255.
    box: (x0, y0, x1, y1) detector box in pixels.
    blur: 4D-Humans' anti-aliasing Gaussian blur of the whole image before downsampling
      (sigma (d - 1) / 2 when d = side / size / 2 > 1.1; scipy `gaussian_filter`, mode
      'nearest', truncate 4, what skimage calls). False: ScoreHMR's demo, which does not blur.
    size: crop side (256 for the released model).

  Returns:
    `HMR2Crop`; pass `box_center`, `box_size`, `image_size` to `cam_crop_to_full`.

  Raises:
    InputError: the image is not [H, W, 3], the box is degenerate, or it lies outside the image.
  """
  image = _check_image(image)
  height, width = image.shape[:2]
  center, box_size = square_box(box)
  check_box(box, (width, height))
  pixels = image.astype(np.float64)
  downsampling = box_size / size / 2.0
  if blur and downsampling > 1.1:
    sigma = (downsampling - 1.0) / 2.0
    pixels = ndimage.gaussian_filter(
      pixels, sigma=(sigma, sigma, 0.0), mode="nearest", truncate=4.0
    )
  matrix = scale_about(center, size / box_size, (size / 2.0, size / 2.0))
  crop = warp_affine(pixels, matrix, (size, size))
  return HMR2Crop(
    image=normalise(crop),
    box_center=center,
    box_size=box_size,
    image_size=np.array([width, height], np.float64),
  )


def vitpose_matrix(center, scale, img_size=VITPOSE_SIZE) -> np.ndarray:
  """ViTPose's UDP map (mmpose `get_warp_matrix`, no rotation): crop pixel
  u = (x - c) (size - 1) / (s 200) + (size - 1) / 2 per axis; `scale` (sx, sy) in units of 200 px
  (`jhmr.models.vitpose.boxes_to_center_scale`), `img_size` (h, w)."""
  h, w = img_size
  s = np.asarray(scale, np.float64) * 200.0
  return scale_about(center, ((w - 1) / s[0], (h - 1) / s[1]), ((w - 1) / 2, (h - 1) / 2))


def crop_for_vitpose(
  image: np.ndarray, center, scale, img_size=VITPOSE_SIZE, normalize: bool = True
) -> np.ndarray:
  """UDP top-down crops of one image `[H, W, 3]` (RGB, 0..255) -> `[B, *img_size, 3]` float32.

  `center [B, 2]`, `scale [B, 2]` from `boxes_to_center_scale`; each crop is `warp_affine` of
  `vitpose_matrix` (zeros outside; rounded to integers when `image` is uint8, as cv2's uint8
  output), then `(x / 255 - mean) / std` with ImageNet statistics if `normalize`.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise InputError(f"crop_for_vitpose expects one RGB image [H, W, 3], got {image.shape}")
  center = np.asarray(center, np.float64).reshape(-1, 2)
  scale = np.asarray(scale, np.float64).reshape(-1, 2)
  h, w = img_size
  out = [warp_affine(image, vitpose_matrix(c, s, img_size), (w, h)) for c, s in zip(center, scale)]
  crops = np.stack(out).astype(np.float32) if out else np.zeros((0, h, w, 3), np.float32)
  return normalise(crops) if normalize else crops


def encode_image(image: np.ndarray, format: str = "jpeg", quality: int = 95) -> bytes:
  """uint8 `[H, W, 3]` -> encoded bytes (`jpeg` or `png`)."""
  buffer = io.BytesIO()
  pil = Image.fromarray(np.asarray(image, np.uint8))
  if format == "jpeg":
    pil.save(buffer, format="JPEG", quality=quality)
  else:
    pil.save(buffer, format=format.upper())
  return buffer.getvalue()


def read_image(path) -> np.ndarray:
  """An image file as uint8 RGB `[H, W, 3]` (raises ValueError naming the file if unreadable)."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from None
