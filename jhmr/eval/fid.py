"""FID, KID and their person-masked variants (H-FID / H-KID) on Inception-V3 pool features.

The numbers follow clean-fid 0.1.35, which Diffusion-HPC's evaluation ran with its defaults
(`compute_fid` / `compute_kid` between two image folders, "clean" mode):
  * features: the FID Inception-V3's 2048-D pool features (`jhmr.models.inception`), images
    preprocessed in the "clean" convention (PIL bicubic to 299^2, (x - 128) / 128) by default;
  * FID: Frechet distance of the two feature Gaussians, mu = mean, sigma = `np.cov(rowvar=False)`;
    |mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2)) with `scipy.linalg.sqrtm`; if the square
    root is not finite, eps = 1e-6 is added to both diagonals and it is taken again; an imaginary
    part above 1e-3 on the diagonal is an error, a smaller one is dropped;
  * KID: the unbiased MMD^2 estimate with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
    averaged over `num_subsets` = 100 random subsets of m = min(n1, n2, `max_subset_size` = 1000)
    rows of each set, drawn without replacement (set 2 first, then set 1, per subset).
clean-fid draws KID's subsets from numpy's global RNG; here a `np.random.RandomState(seed)` draws
them in the same order, so `kernel_distance(..., seed=s)` equals clean-fid's after
`np.random.seed(s)`.

H-FID / H-KID (Diffusion-HPC `evaluation/produce_masks.py`): the same metrics on images whose
non-person pixels are set to 0. Masks come from the user (a segmenter) or from a rendered body
(`jhmr.render`), as [N, H, W] bool. Diffusion-HPC resizes every image to 299^2 first (PIL default
filter), segments it there (Mask R-CNN, score 0.5) and then either keeps the whole frame with the
union of all person masks ("MPII" folders) or, for single-person folders ("smart"), masks the
first person only and crops a square around its box: integer box (x0, y0, x1, y1), centre
((x0 + x1) // 2, (y0 + y1) // 2), side s = max(x1 - x0, y1 - y0), crop (cx - s // 2, cy - s // 2,
cx + s // 2, cy + s // 2) with zeros outside the frame (PIL `crop`); an image without a person is
left out. `person_masked(..., crop_square=True)` does the latter with the tight box of the mask
(the detector's box is not available from a mask).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from scipy import linalg

from jhmr.errors import InputError
from jhmr.models.inception import CONVENTIONS, Convention, InceptionV3, preprocess

FeaturesFn = Callable[[jax.Array], jax.Array]  # [B, 299, 299, 3] network input -> [B, D]


# -- distances ----------------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """[N, D] features -> (mean [D], covariance [D, D]) as clean-fid computes them (np.cov, N - 1)."""
  features = _features(features, "features")
  return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring).

  Raises:
    ValueError: mismatched shapes, or a square root with a large imaginary part.
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(
      f"Gaussians differ in dimension: means {mu1.shape} vs {mu2.shape}, "
      f"covariances {sigma1.shape} vs {sigma2.shape}"
    )
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn(
      f"FID: singular product of covariances; adding {eps} to their diagonals", stacklevel=2
    )
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1, features2) -> float:
  """FID between two [N, D] feature sets."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def kernel_distance(
  features1, features2, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
  """KID between two [N, D] feature sets: clean-fid's subset estimator (module docstring).

  Args:
    features1, features2: [N1, D], [N2, D] (N >= 2 each).
    num_subsets: number of random subsets averaged (clean-fid: 100).
    max_subset_size: subset size cap (clean-fid: 1000).
    seed: seed of the `np.random.RandomState` that draws the subsets.
  """
  features1 = _features(features1, "features1")
  features2 = _features(features2, "features2")
  if features1.shape[1] != features2.shape[1]:
    raise InputError(f"KID: feature sizes differ: {features1.shape} vs {features2.shape}")
  if num_subsets < 1 or max_subset_size < 2:
    raise InputError(
      f"KID: need num_subsets >= 1, max_subset_size >= 2, got {num_subsets}, {max_subset_size}"
    )
  rng = np.random.RandomState(seed)
  n = features1.shape[1]
  m = min(features1.shape[0], features2.shape[0], max_subset_size)
  total = 0
  for _ in range(num_subsets):
    x = features2[rng.choice(features2.shape[0], m, replace=False)]
    y = features1[rng.choice(features1.shape[0], m, replace=False)]
    a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
    b = (x @ y.T / n + 1) ** 3
    total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
  return float(total / num_subsets / m)


def _features(features, name: str) -> np.ndarray:
  features = np.asarray(features)
  if features.ndim != 2 or features.shape[0] < 2:
    raise InputError(f"{name}: expected [N, D] features with N >= 2, got shape {features.shape}")
  return features


# -- features -----------------------------------------------------------------------------------


def inception_features_fn(variables: Any, model: InceptionV3 | None = None) -> FeaturesFn:
  """A jitted [B, 299, 299, 3] network input -> [B, 2048] pool features of the FID Inception.

  `variables`: `{'params', 'batch_stats'}`, e.g. `jhmr.convert.inception.load_inception(path)`.
  """
  model = model or InceptionV3()
  pool = jax.jit(lambda variables, x: model.apply(variables, x).pool)  # weights: an argument,
  return lambda x: pool(variables, x)  # not constants folded into the compiled program


def extract_features(
  images: np.ndarray | Sequence[np.ndarray],
  features_fn: FeaturesFn,
  *,
  batch_size: int = 50,
  convention: Convention = "clean",
) -> np.ndarray:
  """Images -> [N, D] float32 features, `batch_size` at a time (the last batch padded with zeros,
  so `features_fn` sees one shape and compiles once).

  Args:
    images: [N, H, W, 3], or a sequence of [H, W, 3] images of any sizes; uint8 for "clean"
      (as read from image files; convert float images with `round(x * 255)`), uint8 or float in
      [0, 1] for "pytorch_fid".
    features_fn: e.g. `inception_features_fn(variables)`.
    batch_size: images per call (clean-fid's default is 32, pytorch-fid's 50); the features do not
      depend on it beyond float rounding.
    convention: the preprocessing of `jhmr.models.inception.preprocess`.

  Raises:
    InputError: no images, a bad batch size, convention, shape or dtype.
  """
  if convention not in CONVENTIONS:
    raise InputError(f"unknown FID preprocessing convention {convention!r}; one of {CONVENTIONS}")
  if batch_size < 1:
    raise InputError(f"batch_size must be >= 1, got {batch_size}")
  if len(images) == 0:
    raise InputError("no images to extract features from")
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start : start + batch_size]
    try:
      x = np.asarray(preprocess(chunk, convention))
    except ValueError as error:
      raise InputError(f"images {start}..{start + len(chunk) - 1}: {error}") from None
    count = x.shape[0]
    if count < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - count, *x.shape[1:]), x.dtype)])
    out.append(np.asarray(features_fn(x), np.float32)[:count])
  return np.concatenate(out)


# -- H-FID masking ------------------------------------------------------------------------------


def person_masked(
  images, masks, *, crop_square: bool = False
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
  """Images with non-person pixels set to 0, for H-FID / H-KID (module docstring).

  Args:
    images: [N, H, W, C] (any dtype).
    masks: [N, H, W] bool, True on the person(s).
    crop_square: False: keep the frame ([N, H, W, C] out; an empty mask gives a black image).
      True: crop the square around each mask's box (a list of [s, s, C]; images with an empty
      mask are left out).

  Returns:
    (masked images, indices of the images kept [K]).

  Raises:
    InputError: masks that are not bool or do not match the images' [N, H, W].
  """
  images, masks = np.asarray(images), np.asarray(masks)
  if images.ndim != 4:
    raise InputError(f"images: expected [N, H, W, C], got shape {images.shape}")
  if masks.dtype != np.bool_:
    raise InputError(f"person masks must be bool, got {masks.dtype}")
  if masks.shape != images.shape[:3]:
    raise InputError(
      f"person masks have shape {masks.shape}; expected [N, H, W] = {images.shape[:3]}"
    )
  masked = images * masks[..., None].astype(images.dtype)
  if not crop_square:
    return masked, np.arange(len(images))
  crops, kept = [], []
  for i, (image, mask) in enumerate(zip(masked, masks, strict=True)):
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
      continue
    crops.append(_square_crop(image, cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
    kept.append(i)
  return crops, np.asarray(kept, int)


def _square_crop(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
  """The square around box (x0, y0, x1, y1) (integer, upstream's rounding), zero outside."""
  cx, cy, half = (x0 + x1) // 2, (y0 + y1) // 2, max(x1 - x0, y1 - y0) // 2
  left, top = cx - half, cy - half
  side = 2 * half
  out = np.zeros((side, side, image.shape[-1]), image.dtype)
  h, w = image.shape[:2]
  sy0, sy1 = max(top, 0), min(top + side, h)
  sx0, sx1 = max(left, 0), min(left + side, w)
  if sy1 > sy0 and sx1 > sx0:
    out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1]
  return out


# -- the metrics on images ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FidKid:
  """FID and KID between two image sets (H-FID / H-KID when computed on masked images).

  Attributes:
    fid: Frechet Inception distance (unitless; clean-fid's scale).
    kid: kernel Inception distance (clean-fid's scale, not x1000).
    count1, count2: images that entered each set (H-metrics with crops drop persons-less ones).
  """

  fid: float
  kid: float
  count1: int
  count2: int


def fid_kid(
  images1,
  images2,
  features_fn: FeaturesFn,
  *,
  masks1=None,
  masks2=None,
  crop_square: bool = False,
  convention: Convention = "clean",
  batch_size: int = 50,
  kid_subsets: int = 100,
  kid_max_subset_size: int = 1000,
  seed: int = 0,
) -> FidKid:
  """FID and KID between two image sets; with `masks1` / `masks2`, H-FID and H-KID.

  Args:
    images1, images2: [N, H, W, 3] (see `extract_features` for dtypes).
    features_fn: e.g. `inception_features_fn(variables)`.
    masks1, masks2: [N, H, W] bool person masks, both or neither (`person_masked`).
    crop_square: with masks, crop the square around each person (single-person protocol).
    convention, batch_size: of `extract_features`.
    kid_subsets, kid_max_subset_size, seed: of `kernel_distance`.

  Raises:
    InputError: one mask set without the other, bad shapes, fewer than 2 images in a set.
  """
  if (masks1 is None) != (masks2 is None):
    raise InputError("H-FID needs person masks for both image sets (or neither for FID)")
  if masks1 is not None:
    images1, _ = person_masked(images1, masks1, crop_square=crop_square)
    images2, _ = person_masked(images2, masks2, crop_square=crop_square)
  extract = lambda images: extract_features(
    images, features_fn, batch_size=batch_size, convention=convention
  )
  features1, features2 = extract(images1), extract(images2)
  for name, features in (("images1", features1), ("images2", features2)):
    if features.shape[0] < 2:
      raise InputError(f"{name}: FID/KID need at least 2 images, got {features.shape[0]}")
  return FidKid(
    fid=fid_from_features(features1, features2),
    kid=kernel_distance(features1, features2, kid_subsets, kid_max_subset_size, seed),
    count1=int(features1.shape[0]),
    count2=int(features2.shape[0]),
  )


__all__ = [
  "FidKid",
  "extract_features",
  "feature_statistics",
  "fid_from_features",
  "fid_kid",
  "frechet_distance",
  "inception_features_fn",
  "kernel_distance",
  "person_masked",
]
