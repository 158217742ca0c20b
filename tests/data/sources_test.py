"""Benchmark rows -> PersonExample converters and the lazy MappedSource."""

import functools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.body import load_body_model
from jhmr.data import builders, crops, sources
from jhmr.data import example as example_lib
from jhmr.data.emdb import dummy_data_generator as emdb_dummy
from jhmr.data.h36m import dummy_data_generator as h36m_dummy
from jhmr.data.threedpw import dummy_data_generator as threedpw_dummy

SIZE = 32


@pytest.fixture(scope="module")
def body_model():
  return load_body_model("anny-tiny")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """{builder name: builder} of the committed dummy data."""
  import tensorflow_datasets as tfds

  data_dir = tmp_path_factory.mktemp("tfds")
  out = {}
  for name, dummy in (
    ("threedpw/frames", threedpw_dummy),
    ("emdb/all", emdb_dummy),
    ("h36m/frames", h36m_dummy),
  ):
    builder = builders.make_builder(name, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(dummy.DUMMY_DIR))
    )
    out[name] = builder
  return out


# -- MappedSource --------------------------------------------------------------------------------


class _Rows:
  """A data source that records which rows were read."""

  def __init__(self, n):
    self.n, self.read = n, []

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.read.append(i)
    return {"i": i}


def _fake_example(row, size=4):
  i = row["i"]
  return example_lib.PersonExample(
    image=np.full((size, size, 3), i, np.uint8), crop_from_image=np.eye(2, 3, dtype=np.float32),
    intrinsics=np.eye(3, dtype=np.float32), image_size=np.ones(2, np.float32),
    keypoints_2d={"openpose25": np.zeros((25, 3), np.float32)},
    global_orient=np.zeros(3, np.float32), body_pose=np.zeros((23, 3), np.float32),
    betas=np.zeros(10, np.float32), cam_t=np.zeros(3, np.float32),
    joints_3d=np.zeros((24, 3), np.float32), joint_visibility=np.zeros(24, np.float32),
    occlusion=np.zeros((size, size), bool), has_smpl=np.float32(1), has_3d=np.float32(1),
    group=np.int32(100 + i), frame=np.int32(i),
  )  # fmt: skip


def test_mapped_source_converts_rows_on_access_only():
  rows = _Rows(10)
  source = sources.MappedSource(rows, _fake_example, [7, 3, 5])
  assert len(source) == 3 and rows.read == []  # nothing read up front
  assert int(source[1].image[0, 0, 0]) == 3 and rows.read == [3]
  assert int(source[-1].group) == 105 and rows.read == [3, 5]
  with pytest.raises(IndexError):
    source[3]
  whole = sources.MappedSource(rows, _fake_example)
  assert len(whole) == 10 and int(whole[9].frame) == 9
  assert whole.group_ids() is None


def test_mapped_source_regroups():
  source = sources.MappedSource(
    _Rows(10), _fake_example, [4, 5, 6, 1], group=[0, 0, 0, 1], frame=[0, 1, 2, 0]
  )
  got = [
    (int(source[i].group), int(source[i].frame), int(source[i].image[0, 0, 0])) for i in range(4)
  ]
  assert got == [(0, 0, 4), (0, 1, 5), (0, 2, 6), (1, 0, 1)]
  np.testing.assert_array_equal(source.group_ids(), [0, 0, 0, 1])
  with pytest.raises(ValueError, match="group"):
    sources.MappedSource(_Rows(10), _fake_example, [1, 2], group=[0])


def test_video_windows_are_all_consecutive_runs_in_frame_order():
  seq = ["a", "a", "a", "a", "b", "b", "b", "a", "b", "b", "b"]
  frame = [0, 1, 2, 4, 5, 6, 7, 3, 8, 9, 10]
  windows = sources.video_windows(seq, frame, 3)
  got = [[(seq[i], frame[i]) for i in w] for w in windows]
  assert got == [
    [("a", 0), ("a", 1), ("a", 2)],
    [("b", 5), ("b", 6), ("b", 7)],
    [("b", 8), ("b", 9), ("b", 10)],
  ]  # a's frames 3, 4 are a remainder of two only
  assert len(sources.video_windows(seq, frame, 2)) == 5
  assert sources.video_windows(["a", "a"], [0, 2], 2) == []  # not consecutive


def test_view_groups_keep_persons_seen_by_every_view():
  person = [("S9", 1), ("S9", 1), ("S9", 2), ("S9", 1), ("S9", 2)]
  view = ["c", "a", "a", "b", "b"]
  groups = sources.view_groups(person, view, 3)
  assert [g.tolist() for g in groups] == [[1, 3, 0]]  # ("S9", 2) has 2 views only


def test_fit_crop_camera_recovers_a_weak_perspective_camera():
  rng = np.random.default_rng(0)
  points = rng.normal(size=(3, 25, 3))
  cam = np.array([[0.9, 0.1, -0.05], [1.2, 0.0, 0.02], [0.7, -0.1, 0.1]])
  target = 16 * cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:]) + 16
  conf = np.ones((3, 25))
  conf[0, :20] = 0  # a few confident points are enough
  np.testing.assert_allclose(
    sources.fit_crop_camera(points, target, conf, 32), cam, rtol=1e-5, atol=1e-6
  )
  box = sources.fit_crop_camera(points, target, np.zeros((3, 25)), 32)  # no 2D: the box
  extent = (points[..., :2].max(1) - points[..., :2].min(1)).max(-1)
  np.testing.assert_allclose(box[:, 0], 2 / (1.2 * extent), rtol=1e-5)


# -- consistent rows: the converters put the body where the dataset's 2D keypoints are -----------


def _scene(body_model, seed=0):
  """A body in the world, a camera looking at it, and its projections (image px)."""
  rng = np.random.default_rng(seed)
  betas = rng.normal(0, 0.5, 10).astype(np.float32)
  body_pose = rng.normal(0, 0.2, (23, 3)).astype(np.float32)
  orient_world = rng.normal(0, 0.5, 3).astype(np.float32)
  transl = rng.normal(0, 1.0, 3).astype(np.float32)
  out = body_model.joints_only(betas, body_pose, orient_world, transl, joint_set="openpose25")
  joints_world, kp_world = np.asarray(out.joints, np.float64), np.asarray(out.keypoints, np.float64)
  rotation = Rotation.from_rotvec(rng.normal(0, 0.3, 3))
  ext = np.eye(4)
  ext[:3, :3] = rotation.as_matrix()
  ext[:3, 3] = -rotation.as_matrix() @ joints_world[0] + [0.1, -0.2, 4.0]  # 4 m ahead
  intrinsics = np.array([[1000.0, 0, 540], [0, 1000.0, 960], [0, 0, 1]])

  def project(points):
    cam = points @ ext[:3, :3].T + ext[:3, 3]
    p = cam @ intrinsics.T
    return p[:, :2] / p[:, 2:], cam

  orient_cam = (rotation * Rotation.from_rotvec(orient_world)).as_rotvec()
  return dict(
    betas=betas, body_pose=body_pose, orient_world=orient_world, transl=transl,
    orient_cam=orient_cam.astype(np.float32), ext=ext.astype(np.float32),
    intrinsics=intrinsics.astype(np.float32), project=project, joints_world=joints_world,
    kp_world=kp_world,
  )  # fmt: skip


def _box(points):
  center, scale = crops.bbox_from_keypoints(points, expand=1.2)
  return center.astype(np.float32), np.float32(scale)


def test_threedpw_row_projects_onto_its_keypoints(body_model):
  s = _scene(body_model)
  kp_image, _ = s["project"](s["kp_world"])
  coco = np.concatenate([kp_image[list(sources.COCO18_TO_BODY25)], np.ones((18, 1))], 1)
  coco[3, 2] = 0.0  # an undetected joint
  center, scale = _box(coco[:, :2])
  row = {
    "image": np.zeros((256, 256, 3), np.uint8), "sequence": b"walk", "actor": 1,
    "frame_index": 7, "betas": s["betas"], "body_pose": s["body_pose"],
    "global_orient_cam": s["orient_cam"], "transl": s["transl"], "cam_extrinsics": s["ext"],
    "cam_intrinsics": s["intrinsics"], "keypoints2d": coco.astype(np.float32),
    "center": center, "scale": scale, "image_size": np.array([1920, 1080], np.float32),
  }  # fmt: skip
  ex = example_lib.check_example(sources.threedpw_example(row, body_model, SIZE))
  np.testing.assert_array_equal(ex.intrinsics, s["intrinsics"])  # the dataset's camera
  np.testing.assert_array_equal(ex.image_size, [1080, 1920])  # (W, H)
  _, joints_cam = s["project"](s["joints_world"])
  np.testing.assert_allclose(ex.joints_3d, joints_cam, atol=2e-5)  # where the dataset puts it
  kp = ex.keypoints_2d["openpose25"]
  mapped = np.array(sources.COCO18_TO_BODY25)
  assert kp[mapped[3], 2] == 0 and np.all(kp[[8, *range(19, 25)], 2] == 0)  # unmapped slots
  body = body_model.joints_only(
    ex.betas, ex.body_pose, ex.global_orient, ex.cam_t, joint_set="openpose25"
  )
  projected = example_lib.project_to_crop(ex, np.asarray(body.keypoints))
  confident = kp[:, 2] > 0
  assert confident.sum() == 17
  np.testing.assert_allclose(projected[confident], kp[confident, :2], atol=1e-2)  # crop px
  smpl = example_lib.project_to_crop(ex, ex.joints_3d)
  np.testing.assert_array_equal(ex.joint_visibility, np.all((smpl >= 0) & (smpl < SIZE), -1))
  assert int(ex.group) == int(sources.name_id("walk", 1)) and int(ex.frame) == 7
  assert ex.has_smpl == 1 and ex.has_3d == 1


def test_emdb_row_keeps_its_projected_smpl_joints(body_model):
  s = _scene(body_model, seed=1)
  kp_image, _ = s["project"](s["joints_world"])
  center, scale = _box(kp_image)
  row = {
    "image": np.zeros((224, 224, 3), np.uint8), "sequence": b"09_outdoor_walk",
    "frame_index": 3, "betas": s["betas"], "body_pose": s["body_pose"],
    "global_orient_cam": s["orient_cam"], "transl": s["transl"], "cam_extrinsics": s["ext"],
    "cam_intrinsics": s["intrinsics"], "keypoints2d": kp_image.astype(np.float32),
    "center": center, "scale": scale, "image_size": np.array([1920, 1080], np.float32),
  }  # fmt: skip
  ex = example_lib.check_example(sources.emdb_example(row, body_model, SIZE))
  smpl24 = ex.keypoints_2d["smpl24"]
  np.testing.assert_allclose(
    example_lib.project_to_crop(ex, ex.joints_3d), smpl24[:, :2], atol=1e-2
  )
  assert np.all(smpl24[:, 2] == 1)
  op = ex.keypoints_2d["openpose25"]
  for joint, slot in sources.SMPL24_TO_BODY25.items():
    np.testing.assert_array_equal(op[slot], smpl24[joint])
  assert op[:, 2].sum() == len(sources.SMPL24_TO_BODY25)


def test_h36m_row_without_camera_is_placed_on_its_keypoints(body_model):
  s = _scene(body_model, seed=2)
  focal = 5000.0
  kp_cam = s["kp_world"] @ s["ext"][:3, :3].T.astype(np.float64)  # camera-frame orientation
  kp_cam += [0.05, -0.1, 0.0] - kp_cam.mean(0) + [0, 0, 150.0]  # far away: weak perspective
  center = np.array([500.0, 480.0])
  box = 300.0
  intrinsics = sources.h36m_intrinsics(center, box, SIZE, focal)
  p = kp_cam @ intrinsics.T
  openpose = np.concatenate([p[:, :2] / p[:, 2:], np.ones((25, 1))], 1)
  openpose[19:, 2] = 0  # no feet
  row = {
    "image": np.zeros((224, 224, 3), np.uint8), "subject": b"S9", "action": b"Walking_1",
    "camera": b"58860488", "frame": 12, "center": center.astype(np.float32),
    "scale": np.float32(box / 200), "global_orient": s["orient_cam"],
    "body_pose": s["body_pose"], "betas": s["betas"], "has_smpl": np.float32(1),
    "keypoints2d": np.zeros((24, 3), np.float32), "openpose": openpose.astype(np.float32),
  }  # fmt: skip
  ex = example_lib.check_example(sources.h36m_example(row, body_model, SIZE, focal_length=focal))
  np.testing.assert_allclose(ex.crop_projection[:2, :2], [[focal, 0], [0, focal]], rtol=1e-5)
  np.testing.assert_allclose(ex.crop_projection[:2, 2], [SIZE / 2, SIZE / 2], atol=1e-3)
  body = body_model.joints_only(
    ex.betas, ex.body_pose, ex.global_orient, ex.cam_t, joint_set="openpose25"
  )
  projected = example_lib.project_to_crop(ex, np.asarray(body.keypoints))
  kp = ex.keypoints_2d["openpose25"]
  np.testing.assert_allclose(projected[:19], kp[:19, :2], atol=0.05)  # the fit, in crop px
  np.testing.assert_allclose(ex.image_size, sources.H36M_IMAGE_SIZE["58860488"])
  assert int(ex.frame) == 2 and int(ex.group) == int(sources.name_id("S9", "Walking_1", 12))
  # Without OpenPose detections: SPIN's 24 keypoints in their BODY_25 slots.
  spin = np.concatenate([np.arange(48).reshape(24, 2), np.ones((24, 1))], 1).astype(np.float32)
  bare = dict(row, openpose=np.zeros((25, 3), np.float32), keypoints2d=spin)
  kp = sources.h36m_keypoints(bare)
  for src, dst in sources.SPIN24_TO_BODY25.items():
    np.testing.assert_array_equal(kp[dst], spin[src])
  assert kp[:, 2].sum() == len(sources.SPIN24_TO_BODY25)
  # Without SMPL fits every SMPL label is zero with its mask.
  ex = example_lib.check_example(
    sources.h36m_example(dict(row, has_smpl=np.float32(0)), body_model, SIZE)
  )
  assert ex.has_smpl == 0 and ex.has_3d == 0 and not ex.joints_3d.any() and not ex.cam_t.any()
  assert not ex.body_pose.any() and not ex.joint_visibility.any()


# -- the builders' dummy rows ---------------------------------------------------------------------


def _all(builder, split):
  return builder.as_data_source(split)


def test_threedpw_dummy_rows(prepared, body_model):
  builder = prepared["threedpw/frames"]
  for split in ("train", "validation", "test"):
    rows = _all(builder, split)
    for i in range(len(rows)):
      row = rows[i]
      ex = example_lib.check_example(sources.threedpw_example(row, body_model, SIZE))
      assert ex.image.shape == (SIZE, SIZE, 3)
      np.testing.assert_array_equal(ex.intrinsics, row["cam_intrinsics"])
      # The builder's own crop keypoints, at crop size SIZE instead of 256.
      builder_kp = row["keypoints2d_crop"]
      kp = ex.keypoints_2d["openpose25"][list(sources.COCO18_TO_BODY25)]
      np.testing.assert_array_equal(kp[:, 2], builder_kp[:, 2])
      np.testing.assert_allclose(kp[:, :2], builder_kp[:, :2] * SIZE / 256, atol=1e-3)
      # Root: the body model's root joint moved by the world translation into the camera.
      joints, _ = sources.body_points(body_model, ex.betas, ex.body_pose, ex.global_orient)
      ext = row["cam_extrinsics"]
      want = ext[:3, :3] @ (joints[0] + row["transl"]) + ext[:3, 3]
      np.testing.assert_allclose(ex.joints_3d[0], want, atol=1e-5)
      np.testing.assert_allclose(ex.betas, row["betas"])  # anny-tiny: 10 betas
      assert int(ex.frame) == int(row["frame_index"])


def test_emdb_and_h36m_dummy_rows(prepared, body_model):
  rows = _all(prepared["emdb/all"], "test")
  for i in range(len(rows)):
    row = rows[i]
    ex = example_lib.check_example(sources.emdb_example(row, body_model, SIZE))
    m = crops.crop_transform(row["center"], float(row["scale"]), SIZE)
    np.testing.assert_allclose(ex.crop_from_image, m, rtol=1e-6)
    want = row["keypoints2d"] @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(ex.keypoints_2d["smpl24"][:, :2], want, atol=1e-3)
  builder = prepared["h36m/frames"]
  for split in ("train", "test_p1", "test_p2"):
    rows = _all(builder, split)
    for i in range(len(rows)):
      row = rows[i]
      ex = example_lib.check_example(
        sources.h36m_example(row, body_model, SIZE, focal_length=5000.0)
      )
      assert ex.has_smpl == (row["has_smpl"] > 0) and ex.has_3d == ex.has_smpl
      if ex.has_smpl:
        np.testing.assert_allclose(ex.body_pose, row["body_pose"])
        assert ex.cam_t[2] > 0
      kp = ex.keypoints_2d["openpose25"]  # the dummy npz have no OpenPose: SPIN's keypoints
      m = crops.crop_transform(row["center"], 200 * float(row["scale"]), SIZE)
      for src, dst in sources.SPIN24_TO_BODY25.items():
        if row["keypoints2d"][src, 2] > 0:
          want = row["keypoints2d"][src, :2] @ m[:, :2].T + m[:, 2]
          np.testing.assert_allclose(kp[dst, :2], want, atol=1e-3)


def test_mapped_source_over_a_tfds_split(prepared, body_model):
  rows = _all(prepared["h36m/frames"], "test_p1")
  fn = functools.partial(sources.h36m_example, body_model=body_model, size=SIZE)
  source = sources.MappedSource(rows, fn, [3, 0])
  assert len(source) == 2
  want = sources.resize_crop(rows[3]["image"], SIZE)
  np.testing.assert_array_equal(source[0].image, want)
  np.testing.assert_array_equal(
    np.asarray(example_lib.stack([source[0], source[1]]).image[1]),
    sources.resize_crop(rows[0]["image"], SIZE),
  )


def test_smart_rows_are_2d_only_examples(tmp_path):
  """SMART (diving dummy data): every row converts; keypoints land where the builder's own crop
  keypoints are, rescaled to the example's crop size; no 3D labels claimed."""
  import tensorflow_datasets as tfds

  from jhmr.data.smart import dummy_data_generator as smart_dummy

  builder = builders.make_builder(
    "smart/diving", data_dir=str(tmp_path), file_format="array_record"
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(smart_dummy.DUMMY_DIR))
  )
  source = builder.as_data_source()["train"]
  assert len(source) > 0
  for i in range(len(source)):
    row = source[i]
    ex = example_lib.check_example(sources.smart_example(row, SIZE))
    kp, ref = ex.keypoints_2d["openpose25"], np.asarray(row["keypoints2d_crop"], np.float32)
    visible = ref[:, 2] > 0
    np.testing.assert_array_equal(kp[:, 2] > 0, visible)
    crop = row["image"].shape[0]
    np.testing.assert_allclose(kp[visible, :2], ref[visible, :2] * SIZE / crop, atol=0.05)
    assert ex.has_smpl == 0 and ex.has_3d == 0 and not ex.joint_visibility.any()
    assert int(ex.frame) == int(row["frame_index"])
