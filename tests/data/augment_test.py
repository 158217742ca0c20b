"""Tests for jhmr.data.augment on `PersonExample`s built from the real (tiny) body model.

An example is a posed anny-tiny body in front of a full-image camera (principal point off the
image centre, so the flip's mirror about cx matters), cropped around its keypoints; the crop
image is the rendered silhouette (grey on black) with a green marker dot on the right wrist.
Geometric checks re-run the body model on the transformed example's parameters, add `cam_t` and
project with `project_to_crop`, and compare with the transformed keypoints.
"""

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import jhmr
from jhmr import render
from jhmr.data import augment, crops, posefix
from jhmr.data.example import PersonExample, check_example, project_to_crop

SIZE = 128
SETS = ("openpose25", "coco17", "smpl24")
WRIST = 4  # openpose25 RWrist
GREEN = np.array([0, 255, 0], np.uint8)


@pytest.fixture(scope="module")
def body():
  return jhmr.load_body_model("anny-tiny")


def _keypoints(body, ex, joint_set):
  """Camera-frame keypoints of the example's SMPL parameters (+ cam_t)."""
  out = body(ex.betas, ex.body_pose, ex.global_orient, joint_set=joint_set)
  points = out.joints if joint_set == "smpl24" else out.keypoints
  return np.asarray(points, np.float64) + ex.cam_t


def _reprojected(body, ex, joint_set):
  return project_to_crop(ex, _keypoints(body, ex, joint_set))


def _silhouette(body, ex) -> np.ndarray:
  """`[S, S]` bool render of the example's body through its crop camera: the similarity part of
  `crop_from_image` is a rotation (or reflection) about the optical axis plus a focal scale."""
  verts = np.asarray(body(ex.betas, ex.body_pose, ex.global_orient).vertices) + ex.cam_t
  affine = np.asarray(ex.crop_from_image, np.float64)
  k = np.sqrt(abs(np.linalg.det(affine[:, :2])))
  turn = np.eye(3)
  turn[:2, :2] = affine[:, :2] / k
  centre = affine @ np.array([*ex.intrinsics[:2, 2], 1.0])
  frags = render.rasterize(
    (verts @ turn.T)[None], body.faces, k * float(ex.intrinsics[0, 0]), centre, (SIZE, SIZE)
  )
  return np.asarray(frags.mask[0])


def make_example(body, seed: int = 0) -> PersonExample:
  rng = np.random.default_rng(seed)
  betas = (0.5 * rng.normal(size=body.num_betas)).astype(np.float32)
  body_pose = (0.25 * rng.normal(size=(23, 3))).astype(np.float32)
  # Upright (the model's +Y up is the camera's -Y), facing the camera, slightly turned.
  orient = Rotation.from_rotvec(0.2 * rng.normal(size=3)) * Rotation.from_rotvec([np.pi, 0, 0])
  orient = orient.as_rotvec().astype(np.float32)
  root = np.asarray(body(betas, body_pose, orient).joints)[0]
  cam_t = (np.array([0.4, 0.2, 5.0]) + 0.2 * rng.normal(size=3) - root).astype(np.float32)
  intrinsics = np.array([[1100.0, 0, 530.0], [0, 1100.0, 380.0], [0, 0, 1]], np.float32)
  full = {}
  for s in SETS:
    out = body(betas, body_pose, orient, joint_set=s)
    pts = np.asarray(out.joints if s == "smpl24" else out.keypoints, np.float64) + cam_t
    full[s] = pts @ intrinsics.T.astype(np.float64)
    full[s] = full[s][:, :2] / full[s][:, 2:]
  center, scale = crops.bbox_from_keypoints(full["openpose25"], expand=1.2)
  affine = crops.crop_transform(center, scale, SIZE).astype(np.float32)
  joints = (np.asarray(body(betas, body_pose, orient).joints) + cam_t).astype(np.float32)
  ex = PersonExample(
    image=np.zeros((SIZE, SIZE, 3), np.uint8),
    crop_from_image=affine,
    intrinsics=intrinsics,
    image_size=np.array([1000.0, 800.0], np.float32),
    keypoints_2d={},
    global_orient=orient,
    body_pose=body_pose,
    betas=betas,
    cam_t=cam_t,
    joints_3d=joints,
    joint_visibility=np.ones(24, np.float32),
    occlusion=np.zeros((SIZE, SIZE), bool),
    has_smpl=np.float32(1),
    has_3d=np.float32(1),
    group=np.int32(seed),
    frame=np.int32(0),
  )
  keypoints = {}
  for s in SETS:
    xy = project_to_crop(ex, _keypoints(body, ex, s))
    keypoints[s] = np.concatenate([xy, np.ones((len(xy), 1), np.float32)], 1)
  image = np.where(
    _silhouette(body, ex)[..., None], np.uint8(150), np.zeros((SIZE, SIZE, 3), np.uint8)
  )
  x, y = np.floor(keypoints["openpose25"][WRIST, :2]).astype(int)
  image[y - 1 : y + 2, x - 1 : x + 2] = GREEN  # a 3x3 marker centred on the wrist's pixel
  return check_example(ex.replace(image=image, keypoints_2d=keypoints))


@pytest.fixture(scope="module")
def example(body):
  return make_example(body, 0)


@pytest.fixture(scope="module")
def permutations(body):
  return augment.flip_permutations(body, SETS)


def _marker(image) -> np.ndarray:
  """Weighted centroid (x, y) of the green marker (pixel centres at +0.5)."""
  weight = np.clip(image[..., 1].astype(np.float32) - image[..., 0], 0, None)
  ys, xs = np.mgrid[: image.shape[0], : image.shape[1]] + 0.5
  return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


def _iou(a, b) -> float:
  return (a & b).sum() / (a | b).sum()


def _assert_same(a: PersonExample, b: PersonExample, atol=0.0):
  for (path, x), y in zip(
    jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True
  ):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path
    if atol and x.dtype.kind == "f":
      np.testing.assert_allclose(x, y, atol=atol, err_msg=str(path))
    else:
      np.testing.assert_array_equal(x, y, err_msg=str(path))


def test_example_is_self_consistent(body, example):
  for s in SETS:
    np.testing.assert_allclose(example.keypoints_2d[s][:, :2], _reprojected(body, example, s))
  np.testing.assert_allclose(_marker(example.image), example.keypoints_2d["openpose25"][WRIST, :2],
                             atol=0.5)  # fmt: skip
  assert 0.08 < _silhouette(body, example).mean() < 0.6


def test_crop_jitter_keypoints_follow_the_body(body, example):
  jitter = augment.crop_jitter(rotation_prob=1.0, translation=0.1)
  rotations = []
  for seed in range(6):
    out = jitter(example, np.random.default_rng(seed))
    check_example(out)
    for s in SETS:
      # Float32 keypoints of a ~100 px crop: agreement to 1e-2 px is float rounding.
      np.testing.assert_allclose(out.keypoints_2d[s][:, :2], _reprojected(body, out, s), atol=1e-2)
      np.testing.assert_array_equal(out.keypoints_2d[s][:, 2], example.keypoints_2d[s][:, 2])
    for name in ("global_orient", "body_pose", "betas", "cam_t", "joints_3d"):
      np.testing.assert_array_equal(getattr(out, name), getattr(example, name))
    xy = project_to_crop(out, out.joints_3d)
    inside = np.all((xy >= 0) & (xy < SIZE), 1)
    np.testing.assert_array_equal(out.joint_visibility, inside.astype(np.float32))
    rot = out.crop_rotation
    rotations.append(np.degrees(np.arctan2(rot[1, 0], rot[0, 0])))
  assert np.ptp(rotations) > 10  # the draws do rotate
  identity = augment.crop_jitter(0.0, rotation_prob=0.0)(example, np.random.default_rng(0))
  _assert_same(identity, example.replace(image=identity.image), atol=1e-4)


def test_crop_jitter_image_follows_the_keypoints(body, example):
  jitter = augment.crop_jitter(rotation_prob=1.0, translation=0.1)
  for seed in range(4):
    out = jitter(example, np.random.default_rng(seed))
    np.testing.assert_allclose(
      _marker(out.image), out.keypoints_2d["openpose25"][WRIST, :2], atol=0.75
    )
    warped = (out.image[..., 0] >= 75) & (out.image[..., 1] < 200)  # grey body, not the marker
    assert _iou(warped, _silhouette(body, out)) > 0.9


def test_flip_keypoints_follow_the_mirrored_body(body, example, permutations):
  jittered = augment.crop_jitter(rotation_prob=1.0)(example, np.random.default_rng(3))
  for ex in (example, jittered):
    out = augment.flip_example(ex, permutations)
    check_example(out)
    # The anny-tiny body is mirror symmetric to ~0.1 mm (the left and right halves of its rest
    # joints agree to 4e-5 m, posed joints and keypoints to 1e-4 m), i.e. < 0.01 px in this
    # crop (~64 px per metre at 5 m): the mirrored pose through the model lands on the flipped
    # keypoints to 0.05 px; 1e-3 m on the joints.
    for s in SETS:
      np.testing.assert_allclose(out.keypoints_2d[s][:, :2], _reprojected(body, out, s), atol=0.05)
    np.testing.assert_allclose(_keypoints(body, out, "smpl24"), out.joints_3d, atol=1e-3)
    # Same rest pelvis, mirrored posed pelvis.
    np.testing.assert_allclose(out.joints_3d[0] - out.cam_t, ex.joints_3d[0] - ex.cam_t, atol=1e-6)
    np.testing.assert_allclose(out.joints_3d[0], ex.joints_3d[0] * [-1, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(out.image, ex.image[:, ::-1])
    # The marker sat on the right wrist; after the flip that keypoint is the left wrist.
    left_wrist = permutations["openpose25"][WRIST]
    np.testing.assert_allclose(
      _marker(out.image), out.keypoints_2d["openpose25"][left_wrist, :2], atol=0.75
    )
    # The mirrored body, rendered through the new crop camera, is the mirrored image.
    assert _iou(out.image[..., 0] >= 75, _silhouette(body, out)) > 0.9


def test_flip_is_an_involution(body, example, permutations):
  ex = augment.noise_occluder(prob=1.0)(example, np.random.default_rng(1))
  ex = augment.crop_jitter(rotation_prob=1.0, translation=0.1)(ex, np.random.default_rng(2))
  ex = ex.replace(joint_visibility=ex.joint_visibility * (np.arange(24) % 3 > 0))
  assert ex.occlusion.any() and (ex.joint_visibility == 0).any()
  once = augment.flip_example(ex, permutations)
  assert not np.allclose(once.crop_from_image, ex.crop_from_image)
  _assert_same(augment.flip_example(once, permutations), ex, atol=1e-4)
  flipper = augment.flip(permutations, prob=0.5)
  flipped = [not np.array_equal(flipper(ex, np.random.default_rng(i)).image, ex.image)
             for i in range(40)]  # fmt: skip
  assert 10 < sum(flipped) < 30
  with pytest.raises(ValueError, match="coco17"):
    augment.flip_example(ex, {k: v for k, v in permutations.items() if k != "coco17"})


def test_flip_permutations_swap_left_and_right(body):
  perms = augment.flip_permutations(body)
  np.testing.assert_array_equal(perms["smpl24"], augment.SMPL_FLIP_PERMUTATION)
  names = body.joint_names("openpose25")
  assert names[perms["openpose25"][names.index("LWrist")]] == "RWrist"
  assert names[perms["openpose25"][names.index("Nose")]] == "Nose"


def _check_occlusion(before, after):
  """Visibility = before and projected inside the crop and not on an occluded pixel."""
  xy = project_to_crop(after, after.joints_3d)
  ix, iy = np.floor(xy).astype(int).T
  inside = (ix >= 0) & (iy >= 0) & (ix < SIZE) & (iy < SIZE)
  covered = np.zeros(24, bool)
  covered[inside] = after.occlusion[iy[inside], ix[inside]]
  expected = before.joint_visibility * (inside & ~covered)
  np.testing.assert_array_equal(after.joint_visibility, expected)
  return covered.sum()


def test_noise_occluder_sets_occlusion_and_visibility(example):
  occluder = augment.noise_occluder(prob=1.0)
  hidden = 0
  box = augment.person_box(example)
  for seed in range(30):
    out = occluder(example, np.random.default_rng(seed))
    if not out.occlusion.any():
      continue
    changed = np.any(out.image != example.image, -1)
    assert not (changed & ~out.occlusion).any()  # only covered pixels change
    rows, cols = np.nonzero(out.occlusion)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert out.occlusion.sum() == h * w  # one rectangle
    assert h * w <= 0.3 * (box[2] - box[0]) * (box[3] - box[1]) + 1
    assert box[0] - 1 <= cols.min() and box[1] - 1 <= rows.min()  # starts inside the person box
    hidden += _check_occlusion(example, out)
  assert hidden > 0
  assert augment.noise_occluder(prob=0.0)(example, np.random.default_rng(0)) is example


@pytest.mark.parametrize("blend", ["alpha", "hard"])
def test_patch_occluders_set_occlusion_and_visibility(example, blend):
  bank = [np.random.default_rng(i).integers(0, 256, (40 + 20 * i, 60, 3), np.uint8)
          for i in range(3)]  # fmt: skip
  occluder = augment.patch_occluders(bank, prob=1.0, blend=blend)
  hidden = 0
  for seed in range(10):
    out = occluder(example, np.random.default_rng(seed))
    assert out.occlusion.any()
    changed = np.any(out.image != example.image, -1)
    assert changed[out.occlusion].mean() > 0.9
    if blend == "hard":
      assert not (changed & ~out.occlusion).any()
    hidden += _check_occlusion(example, out)
  assert hidden > 0


def test_occlusion_follows_crop_jitter_and_flip(example, permutations):
  ex = augment.noise_occluder(prob=1.0)(example, np.random.default_rng(1))
  flipped = augment.flip_example(ex, permutations)
  np.testing.assert_array_equal(flipped.occlusion, ex.occlusion[:, ::-1])
  out = augment.warp_crop(ex, (70.0, 60.0), 100.0, 20.0)
  t = np.concatenate([crops.crop_transform((70.0, 60.0), 100.0, SIZE, 20.0), [[0, 0, 1]]])
  rows, cols = np.nonzero(ex.occlusion)
  centre = np.array([cols.mean() + 0.5, rows.mean() + 0.5, 1.0])
  rows, cols = np.nonzero(out.occlusion)
  np.testing.assert_allclose([cols.mean() + 0.5, rows.mean() + 0.5], (t @ centre)[:2], atol=1.0)
  np.testing.assert_allclose(out.occlusion.sum(), ex.occlusion.sum() * (SIZE / 100) ** 2, rtol=0.1)


def test_color_jitter_scales_channels(example):
  out = augment.color_jitter()(example, np.random.default_rng(4))
  body = example.image[..., 0] == 150
  gains = out.image[body].astype(np.float32).mean(0) / 150
  assert np.all((gains >= 0.79) & (gains <= 1.21)) and np.ptp(gains) > 0.01
  _assert_same(out.replace(image=example.image), example)


def test_color_jitter_is_the_rounded_product_per_channel(example):
  """The uint8 lookup table gives clip(round(pixel * gain_c)) with the gains of the same draw."""
  image = np.random.default_rng(5).integers(0, 256, example.image.shape, dtype=np.uint8)
  out = augment.color_jitter(0.5, 1.5)(example.replace(image=image), np.random.default_rng(6))
  gains = np.random.default_rng(6).uniform(0.5, 1.5, 3)
  want = np.clip(np.round(image.astype(np.float64) * gains), 0, 255)
  assert out.image.dtype == np.uint8 and np.array_equal(out.image, want)


def test_posefix_probability_table():
  parts = posefix.keypoint_parts(("nose", "left_wrist", "RHip", "LAnkle", "Neck", "LBigToe"))
  assert parts == (("nose", True), ("wrist", True), ("hip", True), ("ankle", True),
                   ("shoulder", False), ("ankle", False))  # fmt: skip
  p = posefix.posefix_probabilities(parts, num_valid=17, num_overlap=0)
  # PoseFix's numbers with > 15 valid joints and no crowd: (jitter, miss, inversion, swap).
  np.testing.assert_allclose(p[0, :4], [0.10, 0.02, 0.01, 0.01])
  np.testing.assert_allclose(p[1, :4], [0.15, 0.10, 0.03, 0.06])
  np.testing.assert_allclose(p[2, :4], [0.20, 0.10, 0.06, 0.03])
  np.testing.assert_allclose(p[3, :4], [0.10, 0.05, 0.06, 0.03])
  np.testing.assert_allclose(p.sum(1), 1.0)
  crowd = posefix.posefix_probabilities(parts, num_valid=8, num_overlap=1)
  np.testing.assert_allclose(crowd[1, :4], [0.20, 0.15, 0.03, 0.15])
  sigmas = posefix.keypoint_sigmas(("nose", "left_hip", "Neck"))
  np.testing.assert_allclose(sigmas, [0.026, 0.107, posefix.DEFAULT_SIGMA])


def test_posefix_corrupt_draws_the_requested_fractions(body, example):
  names = body.joint_names("coco17")
  kp = example.keypoints_2d["coco17"]
  parts, sigmas = posefix.keypoint_parts(names), posefix.keypoint_sigmas(names)
  partner = np.full(17, -1)
  for a, b in augment.observations.left_right_pairs(names):
    partner[a], partner[b] = b, a
  area = 80.0 * 100.0
  d85, d50, _ = (posefix.oks_distance(ks, area, sigmas) for ks in (0.85, 0.5, 0.1))
  neighbour = kp + np.array([60.0, 0.0, 0.0], np.float32)
  rng = np.random.default_rng(0)
  draws = 600
  kinds = np.zeros((draws, 17), int)
  for i in range(draws):
    out, kinds[i] = posefix.posefix_corrupt(kp, rng, parts, sigmas, partner, area, neighbour)
    err = np.linalg.norm(out[:, :2] - kp[:, :2], axis=1)
    good, jitter = kinds[i] == posefix.GOOD, kinds[i] == posefix.JITTER
    assert np.all(err[good] <= d85[good] + 1e-3)
    assert np.all((err[jitter] >= d85[jitter] - 1e-3) & (err[jitter] <= d50[jitter] + 1e-3))
    miss = kinds[i] == posefix.MISS
    assert np.all(err[miss] >= d50[miss] - 1e-3)
    inv = np.flatnonzero(kinds[i] == posefix.INVERSION)
    to_partner = np.linalg.norm(out[inv, :2] - kp[partner[inv], :2], axis=1)
    assert np.all(to_partner <= d50[inv] + 1e-3)
    np.testing.assert_array_equal(out[:, 2], kp[:, 2])
  # Limb joints (shoulders to ankles) are far from their partner and the neighbour here, so every
  # option can be drawn and the fractions are PoseFix's priors (17 valid joints, 1 overlap).
  limbs = np.arange(5, 17)
  expected = posefix.posefix_probabilities(parts, 17, 1)[limbs]
  for kind in range(5):
    observed = (kinds[:, limbs] == kind).mean(0)
    std = np.sqrt(expected[:, kind] * (1 - expected[:, kind]) / draws)
    assert np.all(np.abs(observed - expected[:, kind]) < 4 * std + 1e-9), posefix.POSEFIX_KINDS[
      kind
    ]
  # Pooled over the limbs (7200 draws), e.g. the wrists: 0.15 jitter, 0.10 miss, 0.03 inversion.
  pooled = np.array([(kinds[:, limbs] == k).mean() for k in range(5)])
  np.testing.assert_allclose(pooled, expected.mean(0), atol=0.015)


def test_posefix_keypoints_touch_only_their_set(body, example):
  corrupt = posefix.posefix_keypoints("openpose25", body.joint_names("openpose25"))
  moved = []
  for seed in range(50):
    out = corrupt(example, np.random.default_rng(seed))
    _assert_same(
      out.replace(
        keypoints_2d={**out.keypoints_2d, "openpose25": example.keypoints_2d["openpose25"]}
      ),
      example,
    )
    moved.append(
      np.linalg.norm(out.keypoints_2d["openpose25"] - example.keypoints_2d["openpose25"], axis=1)
    )
  moved = np.array(moved)
  # Every labelled joint gets an error (even "good" ones move, within OKS 0.85); some are gross.
  assert (moved > 0).mean() > 0.95 and 0.02 < (moved > 10).mean() < 0.5 and moved.max() < SIZE
  missing = example.replace(
    keypoints_2d={
      **example.keypoints_2d,
      "openpose25": example.keypoints_2d["openpose25"] * (np.arange(25) % 2 == 0)[:, None],
    }
  )
  out = corrupt(missing, np.random.default_rng(0)).keypoints_2d["openpose25"]
  assert np.all(out[1::2] == 0) and np.all(out[0::2, 2] == 1)  # unlabelled joints stay missing
  assert np.any(out[0::2, :2] != missing.keypoints_2d["openpose25"][0::2, :2])
  with pytest.raises(ValueError, match="h36m17"):
    posefix.posefix_keypoints("h36m17", body.joint_names("h36m17"))(
      example, np.random.default_rng(0)
    )


def test_default_chain_is_deterministic_and_consistent(body, example):
  bank = [np.random.default_rng(9).integers(0, 256, (64, 64, 3), np.uint8)]
  chain = augment.default_train_transforms(body, keypoint_set="coco17", occluder_bank=bank)
  outs = [chain(example, np.random.default_rng(seed)) for seed in range(6)]
  _assert_same(chain(example, np.random.default_rng(3)), outs[3])
  assert len({o.image.tobytes() for o in outs}) == 6
  for out in outs:
    check_example(out)
    for s in ("openpose25", "smpl24"):  # not corrupted: exact geometry (flips within 0.05 px)
      np.testing.assert_allclose(out.keypoints_2d[s][:, :2], _reprojected(body, out, s), atol=0.05)
    _check_occlusion(example.replace(joint_visibility=out.joint_visibility), out)


def test_examples_without_3d_labels(body, example, permutations):
  # No 3D: visibility cannot be recomputed and stays; the flip takes the rest pelvis at x = 0.
  ex = example.replace(
    joints_3d=np.zeros((24, 3), np.float32),
    has_3d=np.float32(0),
    joint_visibility=(np.arange(24) % 2).astype(np.float32),
  )
  bank = [np.full((16, 16, 3), 200, np.uint8)]
  chain = augment.default_train_transforms(
    body, occluder_bank=bank, noise_occluder_prob=1.0, patch_occluder_prob=1.0
  )
  for seed in range(4):
    out = chain(ex, np.random.default_rng(seed))
    check_example(out)
    assert out.occlusion.any()
    assert out.joint_visibility.sum() == 12  # only permuted by flips
  flipped = augment.flip_example(ex, permutations)
  np.testing.assert_allclose(flipped.cam_t, ex.cam_t * [-1, 1, 1])
  _assert_same(augment.flip_example(flipped, permutations), ex, atol=1e-4)


def test_joint_heatmaps_peak_at_the_keypoints():
  kp = np.array([[100.0, 60.0, 1.0], [30.0, 200.0, 1.0], [5.0, 5.0, 0.0]])
  maps = augment.joint_heatmaps(kp, size=64, sigma=1.5, image_size=256)
  assert maps.shape == (64, 64, 3) and maps.dtype == np.float32
  for k in range(2):
    y, x = np.unravel_index(np.argmax(maps[..., k]), (64, 64))
    np.testing.assert_allclose([x + 0.5, y + 0.5], kp[k, :2] / 4, atol=0.5)
    assert maps[..., k].max() > 0.8  # a keypoint on a pixel corner: exp(-2 * 0.5**2 / (2 * 1.5**2))
  assert maps[..., 2].max() == 0
