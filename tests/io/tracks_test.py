"""Tests of jhmr.io.tracks: PHALP pickles (joblib layout, written here), track handling."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zlib

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jhmr.io import joblib_pickle, track_handling
from jhmr.io import tracks as tracks_lib

# These fixtures are written in joblib 1.6's layout by hand, from the documented format (the reader
# must not rely on joblib; tests/io/writers_test.py also reads a real `joblib.dump` file):
# the array is replaced by a pickled `joblib.numpy_pickle.NumpyArrayWrapper` (state: subclass,
# shape, order, dtype, allow_mmap, numpy_array_alignment_bytes), the frame is committed, then one
# padding-length byte, the padding and the raw C-order bytes follow; compress=3 -> zlib stream.


class _JoblibLikePickler(pickle._Pickler):
  def save(self, obj, save_persistent_id=True):
    if type(obj) is np.ndarray and not obj.dtype.hasobject:
      self.write(pickle.GLOBAL + b"joblib.numpy_pickle\nNumpyArrayWrapper\n")
      self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
      state = {
        "subclass": np.ndarray,
        "shape": obj.shape,
        "order": "C",
        "dtype": obj.dtype,
        "allow_mmap": False,
        "numpy_array_alignment_bytes": 16,
      }
      super().save(state)
      self.write(pickle.BUILD)
      self.framer.commit_frame(force=True)
      pos = self._stream.tell()
      padding = 16 - ((pos + 1) % 16)
      self._stream.write(bytes([padding]) + b"\xff" * padding)
      self._stream.write(np.ascontiguousarray(obj).tobytes("C"))
      return
    super().save(obj, save_persistent_id)


def joblib_bytes(obj, compress=True) -> bytes:
  stream = io.BytesIO()
  pickler = _JoblibLikePickler(stream, protocol=4)
  pickler._stream = stream
  pickler.dump(obj)
  raw = stream.getvalue()
  return zlib.compress(raw, 3) if compress else raw


def random_rotmats(rng, n):
  return Rotation.random(n, random_state=rng).as_matrix().astype(np.float32)


def make_phalp(rng, n_frames=60, gap=(20, 25), short_len=10, size=(480, 640)):
  """Two tracks: tid 1 over all frames except `gap`, tid 2 over the first `short_len` frames;
  tid 3 is present but stale (not in tracked_ids). A cut at frame 50."""
  data, truth = {}, {1: [], 2: []}
  h, w = size
  for t in range(n_frames):
    entries = []
    tracked = []
    if not gap[0] <= t < gap[1]:
      entries.append(1)
      tracked.append(1)
    if t < short_len:
      entries.append(2)
      tracked.append(2)
    entries.append(3)  # stale entry
    frame = {
      "time": t,
      "shot": 1 if t == 50 else 0,
      "frame_path": f"frames/{t:06d}.jpg",
      "tid": entries,
      "tracked_ids": tracked,
      "tracked_bbox": [np.zeros(4, np.float32) for _ in tracked],
      "bbox": [],
      "smpl": [],
      "camera": [],
      "camera_bbox": [],
      "size": [],
      "2d_joints": [],
      "extra_data": [],
      "conf": [],
      "mask": [],
      "annotations": [],
    }
    for tid in entries:
      go, bp = random_rotmats(rng, 1), random_rotmats(rng, 23)
      betas = rng.normal(size=10).astype(np.float32)
      bbox = np.asarray([10 * t, 20, 100, 200], np.float32)
      cam = np.asarray([0.1 * t, 0.2, 10.0 + t], np.float32)
      kp = np.concatenate(
        [rng.uniform(0, 400, (25, 2)), rng.uniform(0, 1, (25, 1))], axis=1
      ).astype(np.float32)
      frame["bbox"].append(bbox)
      frame["smpl"].append({"global_orient": go, "body_pose": bp, "betas": betas})
      frame["camera"].append(cam)
      frame["camera_bbox"].append(np.asarray([1.0, 0.0, 0.0], np.float32))
      frame["size"].append([h, w])
      frame["2d_joints"].append(rng.uniform(0, 1, 90).astype(np.float32))
      frame["extra_data"].append(kp if tid != 2 else 0)  # tid 2: plain PHALP (int)
      frame["conf"].append(np.float32(0.9))
      frame["mask"].append([{"size": [h, w], "counts": "abc"}])
      if tid in truth:
        truth[tid].append(
          dict(
            t=t, go=go, bp=bp, betas=betas, bbox=bbox, cam=cam, kp=kp, j2d=frame["2d_joints"][-1]
          )
        )
    data[f"frames/{t:06d}.jpg"] = frame
  return data, truth


@pytest.fixture(scope="module")
def phalp(tmp_path_factory):
  rng = np.random.default_rng(0)
  data, truth = make_phalp(rng)
  path = tmp_path_factory.mktemp("phalp") / "demo_video.pkl"
  path.write_bytes(joblib_bytes(data))
  return path, truth


def test_read_phalp_types_and_shapes(phalp):
  path, truth = phalp
  tr = tracks_lib.read_phalp(path)
  assert isinstance(tr, tracks_lib.Tracks)
  assert tr.ids == (1, 2)  # stale tid 3 never matched
  assert tr.joint_set == "openpose25" and tr.source == "phalp"
  assert tr.image_size == (480, 640)
  assert tr.focal_length == pytest.approx(5000 * 640 / 256)
  assert len(tr.frame_names) == 60
  t1 = tr[1]
  assert len(t1) == 55
  assert t1.frames.dtype == np.int64
  np.testing.assert_array_equal(t1.frames, [r["t"] for r in truth[1]])
  assert t1.boxes.shape == (55, 4) and t1.keypoints.shape == (55, 25, 3)
  assert t1.global_orient.shape == (55, 3) and t1.body_pose.shape == (55, 23, 3)
  assert t1.betas.shape == (55, 10) and t1.translation.shape == (55, 3)
  assert t1.observed.all()
  r0 = truth[1][0]
  np.testing.assert_allclose(t1.boxes[0], [0, 20, 100, 220])
  np.testing.assert_allclose(t1.translation[3], truth[1][3]["cam"])
  np.testing.assert_allclose(t1.betas[0], r0["betas"])
  np.testing.assert_allclose(t1.keypoints[0], r0["kp"])  # extra_data (ViTPose BODY_25 px)
  np.testing.assert_array_equal(t1.shots, [0] * 45 + [1] * 10)  # cut at frame 50
  # tid 2 has no extra_data array: keypoints from 2d_joints in the centred padded square.
  j = truth[2][0]["j2d"].reshape(45, 2)[:25]
  np.testing.assert_allclose(tr[2].keypoints[0, :, 0], j[:, 0] * 640, rtol=1e-6)
  np.testing.assert_allclose(tr[2].keypoints[0, :, 1], j[:, 1] * 640 - 80, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(tr[2].keypoints[0, :, 2], 1.0)


def test_axis_angle_round_trip(phalp):
  path, truth = phalp
  t1 = tracks_lib.read_phalp(path)[1]
  go = np.stack([r["go"][0] for r in truth[1]])
  bp = np.stack([r["bp"] for r in truth[1]])
  np.testing.assert_allclose(Rotation.from_rotvec(t1.global_orient).as_matrix(), go, atol=2e-5)
  np.testing.assert_allclose(
    Rotation.from_rotvec(t1.body_pose.reshape(-1, 3)).as_matrix(), bp.reshape(-1, 3, 3), atol=2e-5
  )


def test_uncompressed_and_converted_joint_set(tmp_path, phalp):
  rng = np.random.default_rng(1)
  data, _ = make_phalp(rng, n_frames=3, short_len=0)
  path = tmp_path / "plain.pkl"
  path.write_bytes(joblib_bytes(data, compress=False))
  tr = tracks_lib.read_phalp(path, joint_set="coco17")
  assert tr.joint_set == "coco17"
  assert tr[1].keypoints.shape == (3, 17, 3)
  ref = tracks_lib.read_phalp(path)[1].keypoints
  np.testing.assert_allclose(tr[1].keypoints[:, 0], ref[:, 0])  # nose stays nose


def test_filter_tracks(phalp):
  tr = tracks_lib.read_phalp(phalp[0])
  kept = track_handling.filter_tracks(tr, min_length=40, max_tracks=5, min_confidence=0.4)
  assert kept.ids == (1,)  # tid 2 (10 frames) is dropped
  kp_in, kp_out = tr[1].keypoints, kept[1].keypoints
  low = kp_in[..., 2] < 0.4
  assert low.any() and (~low).any()
  np.testing.assert_array_equal(kp_out[low], 0.0)
  np.testing.assert_array_equal(kp_out[~low], kp_in[~low])
  assert track_handling.filter_tracks(tr, min_length=5, max_tracks=1).ids == (1,)  # the longest
  assert track_handling.filter_tracks(tr, min_length=55).ids == ()  # strictly longer


def test_split_shots_and_fill_gaps(phalp):
  path, truth = phalp
  t1 = tracks_lib.read_phalp(path)[1]
  with pytest.raises(ValueError, match="split_shots"):
    track_handling.fill_gaps(t1)
  pieces = track_handling.split_shots(t1, min_shot_length=20)
  assert [(p.shots[0], len(p)) for p in pieces] == [(0, 45)]  # the 10-frame shot is dropped
  assert len(track_handling.split_shots(t1, min_shot_length=9)) == 2
  filled = track_handling.fill_gaps(pieces[0])
  np.testing.assert_array_equal(filled.frames, np.arange(50))
  np.testing.assert_array_equal(filled.observed, ~((filled.frames >= 20) & (filled.frames < 25)))
  gap = ~filled.observed
  np.testing.assert_array_equal(filled.keypoints[gap], 0.0)  # missing keypoints stay missing
  # Linear: betas / translation / boxes at frame 22 = 3/6 of the way from frame 19 to frame 25.
  by_t = {r["t"]: r for r in truth[1]}
  a, b = by_t[19], by_t[25]
  np.testing.assert_allclose(filled.betas[22], 0.5 * (a["betas"] + b["betas"]), atol=1e-6)
  np.testing.assert_allclose(filled.translation[22], 0.5 * (a["cam"] + b["cam"]), rtol=1e-6)
  np.testing.assert_allclose(filled.boxes[21], [210, 20, 310, 220], rtol=1e-6)
  # SLERP midpoint = geodesic midpoint R_a exp(0.5 log(R_a^T R_b)).
  for got, ra, rb in (
    (filled.global_orient[22], a["go"][0], b["go"][0]),
    (filled.body_pose[22, 7], a["bp"][7], b["bp"][7]),
  ):
    rel = Rotation.from_matrix(ra.T @ rb).as_rotvec()
    mid = ra @ Rotation.from_rotvec(0.5 * rel).as_matrix()
    np.testing.assert_allclose(Rotation.from_rotvec(got).as_matrix(), mid, atol=3e-5)
  np.testing.assert_allclose(filled.body_pose[19], t1.body_pose[19])  # observed frames kept
  prepared = track_handling.prepare_tracks(tracks_lib.read_phalp(path))
  assert [(p.track_id, len(p)) for p in prepared] == [(1, 50)]


def test_slerp_known_rotations():
  q0 = np.asarray([1.0, 0, 0, 0])
  q1 = np.asarray([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])  # 90 deg about z
  mid = track_handling.slerp(q0, q1, 0.5)
  np.testing.assert_allclose(mid, [np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)], atol=1e-12)
  np.testing.assert_allclose(track_handling.slerp(q0, -q1, 0.5), mid, atol=1e-12)  # shorter arc


MALICIOUS_COMMAND = "touch {}"


@pytest.mark.parametrize("compress", [False, True])
def test_malicious_pickle_refused(tmp_path, compress):
  marker = tmp_path / "pwned"
  payload = b"cos\nsystem\n(V" + MALICIOUS_COMMAND.format(marker).encode() + b"\ntR."
  # Sanity: the payload is a real exploit (the stock unpickler, in a child process, runs it).
  probe = tmp_path / "probe"
  code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
  probe_payload = payload.replace(str(marker).encode(), str(probe).encode())
  subprocess.run([sys.executable, "-c", code], input=probe_payload, check=True)
  assert probe.exists()
  path = tmp_path / "evil.pkl"
  path.write_bytes(zlib.compress(payload) if compress else payload)
  with pytest.raises(tracks_lib.UnsafePickleError, match=r"os\.system") as err:
    tracks_lib.read_phalp(path)
  assert str(path) in str(err.value)
  assert not marker.exists()


def test_malicious_global_inside_joblib_file(tmp_path):
  marker = tmp_path / "pwned2"
  good = joblib_bytes({"a": np.zeros(3, np.float32)}, compress=False)
  # Replace the final STOP with a dict entry whose value calls posix.system.
  evil = (
    good[:-1]
    + b"0"  # POP the dict, then push an exploit instead
    + b"cposix\nsystem\n(V"
    + f"touch {marker}".encode()
    + b"\ntR."
  )
  path = tmp_path / "evil.pkl"
  path.write_bytes(evil)
  with pytest.raises(tracks_lib.UnsafePickleError, match=r"posix\.system"):
    joblib_pickle.load_joblib(path)
  assert not marker.exists()


def test_truncated_and_corrupt_files(tmp_path, phalp):
  blob = phalp[0].read_bytes()
  trunc = tmp_path / "trunc.pkl"
  trunc.write_bytes(blob[: len(blob) // 2])
  with pytest.raises(tracks_lib.TrackFileError, match="trunc.pkl"):
    tracks_lib.read_phalp(trunc)
  raw = zlib.decompress(blob)
  trunc_raw = tmp_path / "trunc_raw.pkl"
  trunc_raw.write_bytes(raw[: len(raw) - 5000])  # ends inside array bytes
  with pytest.raises(tracks_lib.TrackFileError, match="trunc_raw.pkl"):
    tracks_lib.read_phalp(trunc_raw)
  junk = tmp_path / "junk.pkl"
  junk.write_bytes(b"\x78this is not zlib at all")
  with pytest.raises(tracks_lib.TrackFileError, match="junk.pkl"):
    tracks_lib.read_phalp(junk)


def test_no_frames(tmp_path):
  empty = tmp_path / "empty.pkl"
  empty.write_bytes(joblib_bytes({}))
  with pytest.raises(tracks_lib.TrackFileError, match="empty.pkl"):
    tracks_lib.read_phalp(empty)
  untracked = tmp_path / "untracked.pkl"
  frame = {"time": 0, "shot": 0, "tid": [], "tracked_ids": []}
  untracked.write_bytes(joblib_bytes({"f0": frame}))
  with pytest.raises(tracks_lib.TrackFileError, match="no tracked person"):
    tracks_lib.read_phalp(untracked)
  empty_dir = tmp_path / "track_preds" / "seq"
  empty_dir.mkdir(parents=True)
  with pytest.raises(tracks_lib.TrackFileError, match="no tracked frames"):
    tracks_lib.read_scorehmr_tracks(empty_dir)
  with pytest.raises(ValueError, match="no frames"):
    track_handling.fill_gaps(tracks_lib.read_phalp(_one_frame(tmp_path))[1].take(np.zeros(0, int)))


def _one_frame(tmp_path):
  rng = np.random.default_rng(3)
  data, _ = make_phalp(rng, n_frames=1, short_len=0)
  path = tmp_path / "one.pkl"
  path.write_bytes(joblib_bytes(data))
  return path


def test_read_scorehmr_tracks(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "track_preds" / "seq"
  shots = {f"{i:06d}": (0 if i < 3 else 1) for i in range(6)}
  (tmp_path / "shot_idcs").mkdir()
  (tmp_path / "shot_idcs" / "seq.json").write_text(json.dumps(shots))
  truth = {}
  for tid, frames in ((0, [0, 1, 2, 4, 5]), (7, [1, 2])):
    folder = root / f"{tid:03d}"
    folder.mkdir(parents=True)
    for i in frames:
      stem = f"{i:06d}"
      smpl = {
        "betas": rng.normal(size=10).tolist(),
        "body_pose": rng.normal(scale=0.3, size=(23, 3)).tolist(),
        "global_orient": rng.normal(size=3).tolist(),
        "cam_trans": [0.0, 0.1, 12.0 + i],
        "box_center": [100.0, 200.0],
        "box_scale": 50.0,
        "cam_bbox": [1.0, 0.0, 0.0],
      }
      kp = rng.uniform(0, 1, (25, 3)).tolist()
      (folder / f"{stem}_smpl.json").write_text(json.dumps(smpl))
      (folder / f"{stem}_keypoints.json").write_text(
        json.dumps({"people": [{"pose_keypoints_2d": kp}]})
      )
      truth[(tid, i)] = (smpl, kp)
  tr = tracks_lib.read_scorehmr_tracks(root)
  assert tr.ids == (0, 7) and tr.source == "scorehmr" and tr.focal_length == 5000.0
  t0 = tr[0]
  np.testing.assert_array_equal(t0.frames, [0, 1, 2, 4, 5])
  np.testing.assert_array_equal(t0.shots, [0, 0, 0, 1, 1])
  smpl, kp = truth[(0, 4)]
  np.testing.assert_allclose(t0.body_pose[3], smpl["body_pose"], rtol=1e-6)
  np.testing.assert_allclose(t0.keypoints[3], kp, rtol=1e-6)
  np.testing.assert_allclose(t0.boxes[3], [75, 175, 125, 225])
  np.testing.assert_allclose(t0.translation[3], [0, 0.1, 16])
