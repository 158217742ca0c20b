"""FID Inception preprocessing: pytorch-fid's bilinear resize and clean-fid's PIL bicubic resize.

The network itself is proven against pytorch-fid in `tests/convert/inception_test.py`. Here the
two input conventions are checked against their references: torch `F.interpolate(bilinear,
align_corners=False)` (pytorch-fid's resize) and clean-fid 0.1.35's own "clean" resizer
(`cleanfid.resize.build_resizer("clean")`, which needs only torch and PIL).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.models import inception
from tests.torch_reference import nchw, nhwc

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape", [(2, 40, 57, 3), (1, 331, 300, 3), (1, 299, 299, 3)])
def test_resize_bilinear_matches_torch(shape):
  x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
  ref = torch.nn.functional.interpolate(nchw(x), size=(299, 299), mode="bilinear")
  ours = np.asarray(inception.resize_bilinear(x))
  np.testing.assert_allclose(
    ours, nhwc(ref), rtol=0, atol=1e-5
  )  # float32 rounding of source coordinates


def test_clean_resize_matches_clean_fid():
  resize = pytest.importorskip("cleanfid.resize")
  image = np.random.default_rng(1).integers(0, 256, (64, 90, 3), dtype=np.uint8)
  image[:10] = 255  # saturated areas: bicubic overshoots, then is clipped to [0, 255]
  image[10:20] = 0
  ref = resize.build_resizer("clean")(image)
  ours = inception.clean_resize(image)
  assert ours.dtype == ref.dtype == np.float32 and ours.shape == (299, 299, 3)
  np.testing.assert_array_equal(ours, ref)
  assert ours.max() == 255.0 and ours.min() == 0.0


def test_preprocess_conventions():
  images = np.random.default_rng(2).integers(0, 256, (2, 80, 96, 3), dtype=np.uint8)
  clean = np.asarray(inception.preprocess(images, "clean"))
  expected = (np.stack([inception.clean_resize(im) for im in images]) - 128.0) / 128.0
  np.testing.assert_allclose(clean, expected, rtol=0, atol=1e-7)
  torch_fid = np.asarray(inception.preprocess(images, "pytorch_fid"))
  from_float = np.asarray(inception.preprocess(images.astype(np.float32) / 255.0, "pytorch_fid"))
  np.testing.assert_array_equal(torch_fid, from_float)
  ref = torch.nn.functional.interpolate(
    nchw(images / np.float32(255)), size=(299, 299), mode="bilinear"
  )
  np.testing.assert_allclose(torch_fid, 2 * nhwc(ref) - 1, rtol=0, atol=2e-5)
  # a list of images of different sizes (person crops) gives one batch
  crops = [images[0, :50, :40], images[1]]
  assert inception.preprocess(crops, "clean").shape == (2, 299, 299, 3)


def test_preprocess_refuses_bad_inputs():
  with pytest.raises(ValueError, match="uint8"):
    inception.preprocess(np.zeros((1, 80, 80, 3), np.float32), "clean")
  with pytest.raises(ValueError, match="unknown FID preprocessing convention"):
    inception.preprocess(np.zeros((1, 80, 80, 3), np.uint8), "tensorflow")
  with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
    inception.preprocess(np.zeros((1, 80, 80, 4), np.uint8), "pytorch_fid")


def test_model_refuses_small_inputs():
  with pytest.raises(ValueError, match="H, W >= 75"):
    inception.InceptionV3().apply({}, jnp.zeros((1, 74, 90, 3)))
