"""Body-depth conditioning: diffusers' `prepare_depth_map` as the oracle of the SD 2 depth
preprocessing, hand-built maps for the inversion and Eq. 3 masking, and renders of the tiny body
in both camera conventions (SPIN 224² f = 5000; full image FoV 60°)."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jhmr.body import load_body_model
from jhmr.geometry import cameras
from jhmr.render import body_depth as BD


def _diffusers_prepare_depth(depth: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
  """diffusers' `StableDiffusionDepth2ImgPipeline.prepare_depth_map` on a given depth map
  (called unbound: it reads only `self.vae_scale_factor` when `depth_map` is passed)."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  pipe = types.SimpleNamespace(vae_scale_factor=8)
  image = torch.zeros((depth.shape[0], 3, *image_hw))
  out = diffusers.StableDiffusionDepth2ImgPipeline.prepare_depth_map(
    pipe,
    image,
    torch.from_numpy(np.array(depth)),
    depth.shape[0],
    False,
    torch.float32,
    torch.device("cpu"),
  )
  return out.numpy()  # [B, 1, h, w]


@pytest.mark.parametrize("hw", [(224, 224), (96, 80)])
def test_prepare_depth_for_sd_equals_diffusers(hw):
  rng = np.random.default_rng(0)
  depth = rng.uniform(0, 255, (2, *hw)).astype(np.float32)
  depth[:, : hw[0] // 3] = 0.0  # a background band, as in a body render
  want = _diffusers_prepare_depth(depth, hw)
  got = np.asarray(BD.prepare_depth_for_sd(jnp.asarray(depth), (hw[0] // 8, hw[1] // 8)))
  assert got.shape == (2, hw[0] // 8, hw[1] // 8, 1)
  np.testing.assert_allclose(np.moveaxis(got, -1, 1), want, atol=1e-5)
  jitted = jax.jit(BD.prepare_depth_for_sd, static_argnames="latent_size")
  np.testing.assert_allclose(jitted(depth, (hw[0] // 8, hw[1] // 8)), got, atol=1e-6)


def test_prepare_depth_for_sd_default_is_64_and_constant_map_is_minus_one():
  got = BD.prepare_depth_for_sd(jnp.zeros((1, 512, 512)))
  assert got.shape == (1, 64, 64, 1)
  np.testing.assert_array_equal(np.asarray(got), -1.0)  # diffusers: NaN (0 / 0)


def test_invert_depth_hand_built():
  depth = np.array([[[0.0, 2.0, 4.0], [0.0, 1.0, 0.0]]], np.float32)  # metres, 0 = background
  # full image: d * 255 / 4 = [0, 127.5, 255; 0, 63.75, 0]; then 255 + 50 - d on the foreground.
  full = np.asarray(BD.invert_depth(depth, "full_image"))
  np.testing.assert_allclose(full, [[[0, 177.5, 50], [0, 241.25, 0]]], rtol=1e-6)
  # SPIN: foreground linearly to [150, 210] (1 m -> 150, 4 m -> 210, 2 m -> 170); 210 + 50 - d.
  spin = np.asarray(BD.invert_depth(depth, "spin"))
  np.testing.assert_allclose(spin, [[[0, 90, 50], [0, 110, 0]]], rtol=1e-6)
  # Already on the 0-255 scale: the inversion alone, the max taken per image.
  scaled = np.array([[[0, 100, 200]], [[10, 0, 30]]], np.float32)
  got = np.asarray(BD.invert_depth(scaled, scaling=None))
  np.testing.assert_allclose(got, [[[0, 150, 50]], [[70, 0, 50]]])
  jitted = jax.jit(BD.invert_depth, static_argnames="scaling")
  np.testing.assert_allclose(jitted(depth, "spin"), spin, rtol=1e-6)
  # Scaling before inverting matters (pitfall 1): on metres the +50 swamps the body's range.
  assert np.ptp(full[full > 0]) > 100 and np.ptp(np.asarray(BD.invert_depth(depth, None))) < 55
  np.testing.assert_array_equal(BD.invert_depth(np.zeros((1, 2, 2)), "spin"), 0.0)
  with pytest.raises(ValueError, match="scaling"):
    BD.invert_depth(depth, "metric")
  with pytest.raises(ValueError, match=r"\[B, H, W\]"):
    BD.invert_depth(depth[0])


def test_mask_occlusions_eq3():
  depth = np.array([[[0.0, 5.0, 7.0], [-1.0, 9.0, 3.0]]], np.float32)
  occ = np.array([[[True, True, False], [False, False, True]]])
  got = np.asarray(BD.mask_occlusions(depth, occ))
  np.testing.assert_array_equal(got, [[[0, 0, 7], [0, 9, 0]]])  # occluded or d <= 0 -> 0
  assert got.dtype == np.float32
  np.testing.assert_array_equal(jax.jit(BD.mask_occlusions)(depth, occ), got)


@pytest.mark.parametrize(
  "mask, match",
  [
    (np.zeros((2, 3), bool), "shape"),  # [H, W]: the batch axis is missing
    (np.zeros((1, 3, 2), bool), "shape"),  # transposed
    (np.zeros((1, 4, 6), bool), "shape"),  # another resolution (e.g. 512 vs 224)
    (np.zeros((1, 2, 3), np.uint8), "bool"),  # a 0/255 Mask R-CNN image
    (np.zeros((1, 2, 3), np.float32), "bool"),
  ],
)
def test_mask_occlusions_rejects_bad_masks(mask, match):
  with pytest.raises(ValueError, match=match):
    BD.mask_occlusions(np.ones((1, 2, 3), np.float32), mask)


def test_cameras():
  spin = BD.spin_camera()
  assert float(spin.focal_length) == 5000.0
  np.testing.assert_array_equal(spin.camera_center, [112.0, 112.0])
  full = BD.fov_camera(512)
  assert float(full.focal_length) == pytest.approx(443.405, abs=1e-3)  # 256 / tan(30°)
  wide = BD.fov_camera((96, 128), fov_deg=90.0)  # FoV across the larger side, centre (W/2, H/2)
  assert float(wide.focal_length) == pytest.approx(64.0)
  np.testing.assert_array_equal(wide.camera_center, [64.0, 48.0])
  with pytest.raises(ValueError, match="fov_deg"):
    BD.fov_camera(64, fov_deg=180.0)


@pytest.fixture(scope="module")
def tiny_body():
  return load_body_model("anny-tiny")


def _params(body_model, cam_t):
  """Two people: upright rest pose (rotated 180° about x: Y up -> camera y down) and a bent one."""
  b = cam_t.shape[0]
  pose = np.zeros((b, 23, 3), np.float32)
  pose[1, 0] = (-1.2, 0.0, 0.0)  # left hip flexed
  pose[1, 15] = (0.0, 0.0, -1.0)  # left shoulder
  orient = np.tile(np.array([[math.pi, 0.0, 0.0]], np.float32), (b, 1))
  orient[1] = (math.pi, 0.6, 0.0)  # turned about the vertical axis
  betas = np.zeros((b, body_model.num_betas), np.float32)
  return BD.BodyParams(
    global_orient=jnp.asarray(orient),
    body_pose=jnp.asarray(pose),
    betas=jnp.asarray(betas),
    cam_t=jnp.asarray(cam_t, jnp.float32),
  )


def _check_render(body_model, params, camera, size, scaling):
  depth, mask = BD.render_body_depth(body_model, params, camera, size)
  depth, mask = np.asarray(depth), np.asarray(mask)
  assert depth.shape == mask.shape == (params.cam_t.shape[0], size, size)
  np.testing.assert_array_equal(mask, depth > 0)
  out = jax.jit(type(body_model).__call__)(
    body_model, params.betas, params.body_pose, params.global_orient, params.cam_t
  )
  zero_t = jnp.zeros(3)
  uv_v = np.asarray(cameras.perspective_projection(out.vertices, zero_t, camera.focal_length,
                                                   camera.camera_center))  # fmt: skip
  uv_j = np.asarray(cameras.perspective_projection(out.joints, zero_t, camera.focal_length,
                                                   camera.camera_center))  # fmt: skip
  verts = np.asarray(out.vertices)
  inverted = np.asarray(BD.invert_depth(depth, scaling))
  for b in range(depth.shape[0]):
    rows, cols = np.nonzero(mask[b])
    # The silhouette's pixel extent is the projected mesh's: every covered pixel centre lies in
    # the vertices' box, and the box is covered up to 2 px (thin parts such as fingertips can
    # fall between pixel centres).
    lo, hi = uv_v[b].min(0), uv_v[b].max(0)
    first, last = np.array([cols.min(), rows.min()]) + 0.5, np.array([cols.max(), rows.max()]) + 0.5
    assert np.all(first >= lo - 1e-3) and np.all(last <= hi + 1e-3)
    assert np.all(first - lo < 2.0) and np.all(hi - last < 2.0)
    # Joints lie inside the body: their pixels are on the silhouette.
    ji = np.floor(uv_j[b]).astype(int)
    assert np.all((ji >= 0) & (ji < size))
    assert mask[b, ji[:, 1], ji[:, 0]].mean() >= 0.9
    assert cols.max() - cols.min() > size / 8 and rows.max() - rows.min() > size / 3
    # Metric depth of the visible surface lies within the mesh's z range.
    z = depth[b][mask[b]]
    assert z.min() >= verts[b, :, 2].min() - 1e-3 and z.max() <= verts[b, :, 2].max() + 1e-3
    # After the inversion nearer = brighter, the farthest body pixel is 50, background 0.
    inv = inverted[b][mask[b]]
    order = np.argsort(z)
    assert np.all(np.diff(inv[order]) <= 1e-3)
    assert inv.min() == pytest.approx(50.0, abs=1e-3)
    assert np.all(inverted[b][~mask[b]] == 0.0)
    near_px, far_px = np.argmin(np.where(mask[b], depth[b], np.inf)), np.argmax(depth[b])
    assert inverted[b].flat[near_px] > inverted[b].flat[far_px]
  return depth, inverted


def test_render_spin_convention(tiny_body):
  size = BD.SPIN_IMAGE_SIZE
  cam = np.array([[0.9, 0.05, -0.05], [0.8, -0.1, 0.0]], np.float32)  # SPIN (s, tx, ty)
  cam_t = cameras.weak_perspective_to_translation(cam, BD.SPIN_FOCAL_LENGTH, size)
  params = _params(tiny_body, np.asarray(cam_t))
  depth, inverted = _check_render(tiny_body, params, BD.spin_camera(), size, "spin")
  assert np.all(depth[depth > 0] > 40.0)  # tz = 2 f / (224 s): ~50 m away
  fg = inverted[inverted > 0]
  assert fg.max() == pytest.approx(110.0, abs=1e-2)  # near: 210 + 50 - 150


def test_render_full_image_fov_convention(tiny_body):
  size = BD.SPIN_IMAGE_SIZE  # the SPIN test's compiled render serves (the camera is traced)
  params = _params(tiny_body, np.array([[0.0, 0.2, 2.5], [0.3, 0.1, 3.0]], np.float32))
  camera = BD.fov_camera(size)
  depth, inverted = _check_render(tiny_body, params, camera, size, "full_image")
  for b in range(2):  # near = 305 - 255 z_min / z_max
    z = depth[b][depth[b] > 0]
    assert inverted[b].max() == pytest.approx(305.0 - 255.0 * z.min() / z.max(), abs=1e-2)
  # The whole chain: occlusion of the upper half, then SD's 64² [-1, 1] conditioning.
  occ = np.zeros(depth.shape, bool)
  occ[:, : size // 2] = True
  masked = BD.mask_occlusions(inverted, occ)
  assert np.all(np.asarray(masked)[:, : size // 2] == 0)
  cond = np.asarray(BD.prepare_depth_for_sd(masked, 28))
  assert cond.shape == (2, 28, 28, 1) and cond.min() == -1.0 and cond.max() == 1.0
  want = _diffusers_prepare_depth(np.asarray(masked), (size, size))  # on a real body map
  np.testing.assert_allclose(np.moveaxis(cond, -1, 1), want, atol=1e-5)
  # Background and occluded pixels share one low value (bicubic ringing at the silhouette can
  # dip below it, so it is not always exactly -1); the body is brighter.
  band = cond[:, :10, :, 0]
  assert np.all(np.ptp(band, axis=(1, 2)) < 1e-6) and np.all(band[:, 0, 0] < -0.5)
