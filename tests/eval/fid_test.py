"""FID / KID equal clean-fid 0.1.35's own functions on the same features; H-FID masking.

The references are `cleanfid.fid.frechet_distance` and `cleanfid.fid.kernel_distance`, imported
with the torchvision stand-in of `tests/inception_reference.py` (clean-fid imports torchvision at
module level; these two functions use only numpy and scipy). FID is also checked on Gaussians
with a closed-form distance.
"""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.errors import InputError
from jhmr.eval import fid

pytest.importorskip("torch")
pytest.importorskip("cleanfid")


@pytest.fixture(scope="module")
def cleanfid():
  from tests.inception_reference import import_with_torchvision_stub

  return import_with_torchvision_stub("cleanfid.fid")


def _features(seed, n=120, d=32, shift=0.0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
  return (rng.normal(size=(n, d)).astype(np.float32) @ mix + shift).astype(np.float32)


def test_fid_equals_clean_fid(cleanfid):
  f1, f2 = _features(0), _features(1, n=90, shift=0.3)
  mu1, s1 = np.mean(f1, axis=0), np.cov(f1, rowvar=False)
  mu2, s2 = np.mean(f2, axis=0), np.cov(f2, rowvar=False)
  ref = cleanfid.frechet_distance(mu1, s1, mu2, s2)
  ours = fid.fid_from_features(f1, f2)
  assert ours > 1.0
  assert ours == pytest.approx(ref, rel=1e-10)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-10)


def test_fid_singular_covariances_equal_clean_fid(cleanfid):
  """Fewer samples than dimensions: singular covariances (scipy warns; sqrtm stays finite, so
  the eps retry is not taken here, in either implementation)."""
  f1, f2 = _features(2, n=10, d=32), _features(3, n=12, d=32, shift=0.1)
  ref = cleanfid.frechet_distance(*fid.feature_statistics(f1), *fid.feature_statistics(f2))
  assert fid.fid_from_features(f1, f2) == pytest.approx(ref, rel=1e-6)


def test_fid_closed_form():
  """N(mu1, diag(a)) vs N(mu2, diag(b)): |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
  expected = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
  assert fid.fid_from_features(_features(4), _features(4)) == pytest.approx(0.0, abs=1e-6)


def test_kid_equals_clean_fid(cleanfid):
  f1, f2 = _features(5, n=70), _features(6, n=50, shift=0.2)
  np.random.seed(7)
  ref = cleanfid.kernel_distance(f1, f2, num_subsets=20, max_subset_size=40)
  assert fid.kernel_distance(f1, f2, num_subsets=20, max_subset_size=40, seed=7) == ref
  np.random.seed(3)  # clean-fid's defaults: 100 subsets of min(n1, n2, 1000)
  ref = cleanfid.kernel_distance(f1, f2)
  assert fid.kernel_distance(f1, f2, seed=3) == ref
  ours = inspect.signature(fid.kernel_distance).parameters
  theirs = inspect.signature(cleanfid.kernel_distance).parameters
  for name in ("num_subsets", "max_subset_size"):
    assert ours[name].default == theirs[name].default


def test_distances_refuse_bad_features():
  with pytest.raises(InputError, match="N >= 2"):
    fid.kernel_distance(np.zeros((1, 4)), np.zeros((5, 4)))
  with pytest.raises(InputError, match="feature sizes differ"):
    fid.kernel_distance(np.zeros((3, 4)), np.zeros((5, 5)))
  with pytest.raises(ValueError, match="differ in dimension"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _pixel_features(x):
  """A cheap stand-in for the Inception: per-channel means and two pixels, [B, 9]."""
  return jnp.concatenate([x.mean(axis=(1, 2)), x[:, 0, 0], x[:, 150, 150]], axis=-1)


@pytest.mark.parametrize("convention", ["clean", "pytorch_fid"])
def test_extract_features_batches_do_not_matter(convention):
  images = np.random.default_rng(8).integers(0, 256, (7, 40, 30, 3), dtype=np.uint8)
  calls = []

  def features_fn(x):
    calls.append(x.shape)
    return _pixel_features(jnp.asarray(x))

  batched = fid.extract_features(images, features_fn, batch_size=3, convention=convention)
  assert calls == [(3, 299, 299, 3)] * 3  # the last batch of 1 is padded to 3
  single = fid.extract_features(images, _pixel_features, batch_size=7, convention=convention)
  assert batched.shape == (7, 9)
  np.testing.assert_allclose(batched, single, rtol=1e-6, atol=1e-6)
  one = fid.extract_features(images[5:6], _pixel_features, batch_size=1, convention=convention)
  np.testing.assert_allclose(batched[5:6], one, rtol=1e-6, atol=1e-6)


def test_extract_features_refuses_bad_inputs():
  with pytest.raises(InputError, match="no images"):
    fid.extract_features(np.zeros((0, 8, 8, 3), np.uint8), _pixel_features)
  with pytest.raises(InputError, match=r"images 0\.\.1: .*uint8"):
    fid.extract_features(np.zeros((2, 80, 80, 3), np.float32), _pixel_features)
  with pytest.raises(InputError, match="unknown FID preprocessing convention"):
    fid.extract_features(np.zeros((2, 80, 80, 3), np.uint8), _pixel_features, convention="tf")


def test_person_masked_zeroes_the_background():
  images = np.full((2, 6, 8, 3), 200, np.uint8)
  masks = np.zeros((2, 6, 8), bool)
  masks[0, 1:3, 2:5] = True
  masked, kept = fid.person_masked(images, masks)
  assert masked.shape == images.shape and masked.dtype == np.uint8
  np.testing.assert_array_equal(masked[..., 0], np.where(masks, 200, 0))
  np.testing.assert_array_equal(kept, [0, 1])  # an empty mask keeps a black frame


def test_person_masked_square_crop():
  """Box x 2..6 (exclusive 7), y 1..2 (exclusive 3): centre (4, 2), side max(5, 2) = 5 -> 4
  (upstream halves the side with //), crop x 2..5, y 0..3."""
  image = np.arange(6 * 8 * 3, dtype=np.int64).reshape(1, 6, 8, 3)
  masks = np.zeros((2, 6, 8), bool)
  masks[0, 1:3, 2:7] = True
  crops, kept = fid.person_masked(np.repeat(image, 2, axis=0), masks, crop_square=True)
  np.testing.assert_array_equal(kept, [0])  # the person-less image is left out
  (crop,) = crops
  assert crop.shape == (4, 4, 3)
  np.testing.assert_array_equal(crop, image[0, 0:4, 2:6] * masks[0, 0:4, 2:6, None])
  # a box at the border: the square reaches outside the frame, which is zero-filled
  edge = np.zeros((1, 6, 8), bool)
  edge[0, 0:6, 7] = True  # x 7..8, y 0..6: centre (7, 3), side 6 -> x 4..10, y 0..6
  (crop,), _ = fid.person_masked(image, edge, crop_square=True)
  assert crop.shape == (6, 6, 3)
  np.testing.assert_array_equal(crop[:, 3], image[0, :, 7])
  assert not crop[:, 4:].any() and not crop[:, :3].any()


def test_person_masked_refuses_bad_masks():
  images = np.zeros((2, 6, 8, 3), np.uint8)
  with pytest.raises(InputError, match=r"shape \(2, 8, 6\); expected"):
    fid.person_masked(images, np.zeros((2, 8, 6), bool))
  with pytest.raises(InputError, match="must be bool"):
    fid.person_masked(images, np.zeros((2, 6, 8), np.uint8))


def test_fid_kid_on_images_and_masks():
  rng = np.random.default_rng(9)
  images1 = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  images2 = rng.integers(0, 128, (5, 32, 32, 3), dtype=np.uint8)
  result = fid.fid_kid(images1, images2, _pixel_features, batch_size=4, kid_subsets=5)
  f1 = fid.extract_features(images1, _pixel_features)
  f2 = fid.extract_features(images2, _pixel_features)
  assert result.fid == pytest.approx(fid.fid_from_features(f1, f2), rel=1e-6)
  assert result.kid == pytest.approx(fid.kernel_distance(f1, f2, 5), rel=1e-6)
  assert (result.count1, result.count2) == (6, 5)
  masks1, masks2 = np.ones((6, 32, 32), bool), np.ones((5, 32, 32), bool)
  masks1[0], masks2[:, :16] = False, False
  masked = fid.fid_kid(images1, images2, _pixel_features, masks1=masks1, masks2=masks2)
  h1 = fid.extract_features(fid.person_masked(images1, masks1)[0], _pixel_features)
  h2 = fid.extract_features(fid.person_masked(images2, masks2)[0], _pixel_features)
  assert masked.fid == pytest.approx(fid.fid_from_features(h1, h2), rel=1e-6)
  assert masked.fid != pytest.approx(result.fid, rel=1e-3)
  cropped = fid.fid_kid(
    images1, images2, _pixel_features, masks1=masks1, masks2=masks2, crop_square=True
  )
  assert (cropped.count1, cropped.count2) == (5, 5)
  with pytest.raises(InputError, match="both image sets"):
    fid.fid_kid(images1, images2, _pixel_features, masks1=masks1)
