"""ScoreHMR's video-demo handling of tracks (`jhmr.io.tracks.Tracks`): confidence filtering, at
most N long tracks, shot splitting and gap filling.

Track handling (scorehmr.md §6; thresholds are parameters): keypoints with confidence < 0.4 are
dropped; at most 5 tracks each longer than 40 frames; shots of <= 20 frames are skipped; gaps are
filled by SLERP (rotations) / linear interpolation. Assumed: the 5 kept tracks are the longest
(ties: lower id); a track's length is its number of frames; a dropped keypoint is (0, 0, 0)
(OpenPose's missing point).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jhmr.geometry import rotations
from jhmr.io.tracks import Track, Tracks


def drop_low_confidence(keypoints: np.ndarray, min_confidence: float = 0.4) -> np.ndarray:
  """Keypoints [..., K, 3] with confidence < `min_confidence` set to (0, 0, 0)."""
  keypoints = np.asarray(keypoints)
  keep = keypoints[..., 2:3] >= min_confidence
  return np.where(keep, keypoints, 0).astype(keypoints.dtype)


def filter_tracks(
  tracks: Tracks, min_length: int = 40, max_tracks: int = 5, min_confidence: float = 0.4
) -> Tracks:
  """ScoreHMR's demo filter: keeps tracks of strictly more than `min_length` frames, at most
  `max_tracks` of them (the longest; ties: lower id), with keypoints of confidence below
  `min_confidence` zeroed. Returns the kept tracks in id order."""
  long = [t for t in tracks if len(t) > min_length]
  long = sorted(long, key=lambda t: (-len(t), t.track_id))[:max_tracks]
  kept = sorted(long, key=lambda t: t.track_id)
  kept = [
    dataclasses.replace(t, keypoints=drop_low_confidence(t.keypoints, min_confidence)) for t in kept
  ]
  return dataclasses.replace(tracks, tracks=tuple(kept))


def split_shots(track: Track, min_shot_length: int = 20) -> list[Track]:
  """Splits a track at shot changes; pieces of <= `min_shot_length` frames are dropped."""
  pieces = []
  for shot in np.unique(track.shots):
    piece = track.take(track.shots == shot)
    if len(piece) > min_shot_length:
      pieces.append(piece)
  return pieces


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical linear interpolation of unit quaternions [..., 4] (w, x, y, z) along the shorter
  arc; `t` broadcasts against the leading shape."""
  q0 = np.asarray(q0, np.float64)
  q1 = np.asarray(q1, np.float64)
  t = np.asarray(t, np.float64)[..., None]
  dot = np.sum(q0 * q1, axis=-1, keepdims=True)
  q1 = np.where(dot < 0, -q1, q1)
  dot = np.clip(np.abs(dot), -1.0, 1.0)
  theta = np.arccos(dot)
  sin = np.sin(theta)
  small = sin < 1e-6
  safe = np.where(small, 1.0, sin)
  w0 = np.where(small, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
  w1 = np.where(small, t, np.sin(t * theta) / safe)
  q = w0 * q0 + w1 * q1
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def fill_gaps(track: Track) -> Track:
  """Fills the frames missing between a track's first and last frame.

  Rotations (global_orient, body_pose) are SLERPed between the nearest observed frames (via
  quaternions from `jhmr.geometry.rotations`); betas, translation, crop camera and boxes are
  interpolated linearly; keypoints of filled frames stay missing (0, 0, 0); filled frames have
  `observed` False. The track must lie in one shot (use `split_shots` first).
  """
  if len(track) == 0:
    raise ValueError(f"track {track.track_id} has no frames")
  if np.unique(track.shots).size > 1:
    raise ValueError(
      f"track {track.track_id} spans shots {np.unique(track.shots).tolist()}; call split_shots "
      "first (gaps are not interpolated across a cut)"
    )
  frames = track.frames
  full = np.arange(frames[0], frames[-1] + 1, dtype=np.int64)
  if full.size == frames.size:
    return track
  right = np.clip(np.searchsorted(frames, full, side="left"), 0, len(frames) - 1)
  left = np.where(frames[right] == full, right, right - 1)
  span = np.maximum(frames[right] - frames[left], 1)
  t = ((full - frames[left]) / span).astype(np.float64)

  observed_at = np.searchsorted(frames, full)
  is_obs = np.isin(full, frames)

  def lerp(x):
    x = np.asarray(x, np.float64)
    tt = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return ((1 - tt) * x[left] + tt * x[right]).astype(np.float32)

  def rot(aa):
    q = np.asarray(rotations.axis_angle_to_quaternion(jnp.asarray(aa, jnp.float32)), np.float64)
    tt = t.reshape((-1,) + (1,) * (aa.ndim - 2))
    qi = slerp(q[left], q[right], tt)
    out = np.array(rotations.quaternion_to_axis_angle(jnp.asarray(qi, jnp.float32)), np.float32)
    out[is_obs] = aa[observed_at[is_obs]]  # observed frames stay exactly as read
    return out

  keypoints = np.zeros((full.size,) + track.keypoints.shape[1:], np.float32)
  keypoints[is_obs] = track.keypoints[observed_at[is_obs]]
  observed = np.zeros(full.size, bool)
  observed[is_obs] = track.observed[observed_at[is_obs]]
  return Track(
    track_id=track.track_id,
    frames=full,
    boxes=lerp(track.boxes),
    keypoints=keypoints,
    global_orient=rot(track.global_orient),
    body_pose=rot(track.body_pose),
    betas=lerp(track.betas),
    translation=lerp(track.translation),
    crop_camera=lerp(track.crop_camera),
    shots=np.full(full.size, track.shots[0], np.int64),
    observed=observed,
  )


def prepare_tracks(
  tracks: Tracks,
  min_length: int = 40,
  max_tracks: int = 5,
  min_confidence: float = 0.4,
  min_shot_length: int = 20,
) -> list[Track]:
  """ScoreHMR's video-demo track handling: `filter_tracks`, then per track `split_shots` and
  `fill_gaps`. Returns the tracklets (one per track and shot), by track id then shot."""
  out: list[Track] = []
  for track in filter_tracks(tracks, min_length, max_tracks, min_confidence):
    out.extend(fill_gaps(piece) for piece in split_shots(track, min_shot_length))
  return out
