"""PoseFix's "realistic" 2D keypoint errors (Moon et al. 2019, `synthesize_pose`), as DPMesh and
JOTR apply them to the input keypoints of every training set (research/dpmesh.md section 14).

Per joint one of jitter (inside the OKS 0.85-0.5 ring), miss (OKS 0.5-0.1), inversion (the
left/right partner's position), swap (the joint of a neighbouring person) or good (within OKS
0.85), with PoseFix's probabilities by joint group, valid-joint count and overlap count
(`posefix_probabilities`). `posefix_keypoints` is the transform on one named keypoint set of a
`jhmr.data.example.PersonExample` (`jhmr.data.augment` puts it in the training chain).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from jhmr.data import observations
from jhmr.data.example import PersonExample

Transform = Callable[[PersonExample, np.random.Generator], PersonExample]

POSEFIX_KINDS = ("jitter", "miss", "inversion", "swap", "good")
JITTER, MISS, INVERSION, SWAP, GOOD = range(5)
UNTOUCHED = -1

# COCO keypoint OKS sigmas per body part (pycocotools / PoseFix `kps_sigmas`).
COCO_SIGMAS = {
  "nose": 0.026,
  "eye": 0.025,
  "ear": 0.035,
  "shoulder": 0.079,
  "elbow": 0.072,
  "wrist": 0.062,
  "hip": 0.107,
  "knee": 0.087,
  "ankle": 0.089,
}
# OKS sigma of joints that are not COCO keypoints (neck, pelvis, spine, toes, heels, ...): 0.08,
# about the mean of COCO's 12 body-joint sigmas (0.083).
DEFAULT_SIGMA = 0.08
# Non-COCO joints are put in the PoseFix probability group of the nearest COCO part.
_SYNONYMS = (
  ("head", "nose"),
  ("neck", "shoulder"),
  ("thorax", "shoulder"),
  ("collar", "shoulder"),
  ("hand", "wrist"),
  ("pelvis", "hip"),
  ("spine", "hip"),
  ("toe", "ankle"),
  ("heel", "ankle"),
  ("foot", "ankle"),
)


def _strip_side(name: str) -> str:
  for prefix in ("left_", "right_", "Left", "Right"):
    if name.startswith(prefix):
      return name[len(prefix) :].lower()
  if len(name) > 1 and name[0] in "LR" and name[1].isupper():
    return name[1:].lower()
  for suffix in ("_l", "_r", "_L", "_R"):
    if name.endswith(suffix):
      return name[: -len(suffix)].lower()
  return name.lower()


def keypoint_parts(names: Sequence[str]) -> tuple[tuple[str, bool], ...]:
  """Per joint name `(COCO part or 'other', is_coco)`: the part decides PoseFix's probability
  group, `is_coco` (the name is that COCO keypoint, any side spelling) its OKS sigma."""
  out = []
  for name in names:
    base = _strip_side(name)
    part = next((p for p in COCO_SIGMAS if p in base), None)
    if part is None:
      part = next((p for word, p in _SYNONYMS if word in base), "other")
    out.append((part, base == part))
  return tuple(out)


def keypoint_sigmas(names: Sequence[str]) -> np.ndarray:
  """`[K]` OKS sigmas: COCO's for COCO keypoints, `DEFAULT_SIGMA` for any other joint."""
  return np.array(
    [COCO_SIGMAS[p] if coco else DEFAULT_SIGMA for p, coco in keypoint_parts(names)], np.float64
  )


def posefix_probabilities(parts, num_valid: float, num_overlap: int = 0) -> np.ndarray:
  """`[K, 5]` PoseFix's prior probabilities of (jitter, miss, inversion, swap, good) per joint
  (`synthesize_pose`, DPMesh `common/utils/posefix.py`), before options that cannot be drawn
  are dropped and the rest renormalised. `parts` from `keypoint_parts`; `num_valid` is the
  number of labelled joints counted on COCO's 17 (a set of K joints scales it by 17 / K).

  jitter: nose, knees, ankles 0.15 (0.10 with more than 10 valid joints); eyes, ears, shoulders,
    elbows, wrists 0.20 (0.15); hips and others 0.25 (0.20).
  miss: face 0.15 / 0.10 / 0.02 for <= 5 / <= 10 / more valid joints; shoulders, ankles
    0.20 / 0.13 / 0.05; others 0.25 / 0.15 / 0.10.
  inversion: face 0.01, upper body (shoulders, elbows, wrists) 0.03, others 0.06.
  swap: face 0.02, upper body 0.15, others 0.10 in a crowd (<= 10 valid joints and an overlapping
    person, or <= 15 and at least 3); else 0.01 / 0.06 / 0.03.
  good: the rest.
  """
  out = []
  for part, _ in parts:
    face = part in ("nose", "eye", "ear")
    upper = part in ("shoulder", "elbow", "wrist")
    if part in ("nose", "knee", "ankle"):
      jitter = 0.15 if num_valid <= 10 else 0.10
    elif part in ("eye", "ear", "shoulder", "elbow", "wrist"):
      jitter = 0.20 if num_valid <= 10 else 0.15
    else:
      jitter = 0.25 if num_valid <= 10 else 0.20
    column = 0 if num_valid <= 5 else 1 if num_valid <= 10 else 2
    if face:
      miss = (0.15, 0.10, 0.02)[column]
    elif part in ("shoulder", "ankle"):
      miss = (0.20, 0.13, 0.05)[column]
    else:
      miss = (0.25, 0.15, 0.10)[column]
    inversion = 0.01 if face else 0.03 if upper else 0.06
    crowd = (num_valid <= 10 and num_overlap > 0) or (num_valid <= 15 and num_overlap >= 3)
    if crowd:
      swap = 0.02 if face else 0.15 if upper else 0.10
    else:
      swap = 0.01 if face else 0.06 if upper else 0.03
    out.append([jitter, miss, inversion, swap, 1.0 - jitter - miss - inversion - swap])
  return np.array(out, np.float64)


def oks_distance(ks: float, area: float, sigmas: np.ndarray) -> np.ndarray:
  """`[K]` pixel distance at which a keypoint has similarity `ks` (COCO OKS, PoseFix's
  `get_dist_wrt_ks`): sqrt(-2 area (2 sigma)^2 ln ks)."""
  return np.sqrt(-2.0 * area * (2.0 * np.asarray(sigmas)) ** 2 * np.log(ks))


def _ring(rng, centres: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int):
  """`[K, n, 2]` points at uniform angle and radius U(lo, hi) around `centres [K, (n,) 2]`."""
  k = len(lo)
  angle = rng.uniform(0.0, 2 * np.pi, (k, n))
  r = rng.uniform(0.0, 1.0, (k, n)) * (hi - lo)[:, None] + lo[:, None]
  centres = centres[:, None] if centres.ndim == 2 else centres
  return centres + r[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1), r


def _pick(rng, points: np.ndarray, ok: np.ndarray):
  """One uniformly chosen point `[K, 2]` among `points [K, n, 2]` where `ok`, and `[K]` found."""
  score = np.where(ok, rng.random(ok.shape), -1.0)
  idx = np.argmax(score, axis=1)
  return points[np.arange(len(points)), idx], ok.any(1)


def posefix_corrupt(
  keypoints: np.ndarray,
  rng: np.random.Generator,
  parts,
  sigmas: np.ndarray,
  partner: np.ndarray,
  area: float,
  neighbour: np.ndarray | None = None,
  samples: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
  """PoseFix's `synthesize_pose` on one person's keypoints `[K, 3]` (x, y, conf).

  For each labelled joint (conf > 0) one error is drawn with `posefix_probabilities` among those
  whose candidate set is not empty (the others' probabilities are dropped and the rest
  renormalised); candidates are `samples` random points (radius uniform, angle uniform; PoseFix
  draws 500, but one passing candidate is all that is used, and 64 rarely all fail) per option:
  * jitter: ring OKS 0.85-0.5 around the joint, farther from the other reference points
    (partner, neighbour's joints) than from the joint;
  * miss: ring OKS 0.5-0.1 around the joint (4x the samples) or around a reference point,
    farther than the OKS-0.5 distance from every other reference point;
  * inversion: within OKS 0.5 of the left/right partner (`partner[j]`, -1 for none), farther
    from the joint than from the partner;
  * swap: within OKS 0.5 of the same joint or its partner on the `neighbour` person
    (`[K, 3]` or None: no swap), farther from the joint and partner than from it;
  * good: within OKS 0.85 of the joint (samples / 4 candidates).
  Distances use `oks_distance(ks, area, sigmas)`. Confidences are kept; unlabelled joints are not
  touched.

  Returns:
    the corrupted keypoints `[K, 3]` float32 and `[K]` int8 kinds (`JITTER`, `MISS`,
    `INVERSION`, `SWAP`, `GOOD`, or `UNTOUCHED` for unlabelled joints).
  """
  kp = np.asarray(keypoints, np.float32)
  k = len(kp)
  valid = kp[:, 2] > 0
  xy = kp[:, :2].astype(np.float64)
  partner = np.asarray(partner, np.int64)
  has_partner = (partner >= 0) & valid[np.maximum(partner, 0)]
  d85, d50, d10 = (oks_distance(ks, area, sigmas) for ks in (0.85, 0.5, 0.1))
  # Reference points per joint: 0 the joint, 1 its partner, 2 / 3 the neighbour's same joint /
  # partner.
  refs = np.zeros((k, 4, 2))
  ref_ok = np.zeros((k, 4), bool)
  refs[:, 0], ref_ok[:, 0] = xy, valid
  refs[:, 1], ref_ok[:, 1] = xy[np.maximum(partner, 0)], has_partner
  if neighbour is not None:
    nb = np.asarray(neighbour, np.float64)
    nb_valid = nb[:, 2] > 0
    refs[:, 2], ref_ok[:, 2] = nb[:, :2], nb_valid
    refs[:, 3] = nb[np.maximum(partner, 0), :2]
    ref_ok[:, 3] = (partner >= 0) & nb_valid[np.maximum(partner, 0)]

  def sq_distances(points):  # [K, n, 4] squared
    diff = points[:, :, None] - refs[:, None]
    return diff[..., 0] ** 2 + diff[..., 1] ** 2

  def clear_of(points, radius, skip):  # farther than radius from every reference but `skip`
    d = sq_distances(points)
    others = ref_ok.copy()
    others[:, skip] = False
    return np.all((d > radius[..., None] ** 2) | ~others[:, None], axis=-1)

  choices = np.zeros((k, 5, 2))
  found = np.zeros((k, 5), bool)
  # jitter
  pts, r = _ring(rng, xy, d85, d50, samples)
  choices[:, JITTER], found[:, JITTER] = _pick(rng, pts, clear_of(pts, r, 0))
  # miss: 4 samples around the joint for every one around each other reference point.
  weights = np.where(ref_ok, [4.0, 1.0, 1.0, 1.0], 0.0) + 1e-12
  cum = np.cumsum(weights / weights.sum(1, keepdims=True), 1)
  centre = np.minimum((rng.random((k, 4 * samples, 1)) > cum[:, None]).sum(-1), 3)
  pts, _ = _ring(rng, np.take_along_axis(refs, centre[..., None], 1), d50, d10, 4 * samples)
  d = sq_distances(pts)
  others = ref_ok[:, None, :] & (np.arange(4)[None, None] != centre[..., None])
  ok = np.all((d > d50[:, None, None] ** 2) | ~others, -1) & np.take_along_axis(ref_ok, centre, 1)
  choices[:, MISS], found[:, MISS] = _pick(rng, pts, ok)
  # inversion
  pts, r = _ring(rng, refs[:, 1], np.zeros(k), d50, samples)
  ok = clear_of(pts, r, 1) & has_partner[:, None]
  choices[:, INVERSION], found[:, INVERSION] = _pick(rng, pts, ok)
  # swap
  if neighbour is not None:
    pts2, r2 = _ring(rng, refs[:, 2], np.zeros(k), d50, samples)
    pts3, r3 = _ring(rng, refs[:, 3], np.zeros(k), d50, samples)
    pts, r = np.concatenate([pts2, pts3], 1), np.concatenate([r2, r3], 1)
    d = sq_distances(pts)
    near_own = (d[..., :2] <= r[..., None] ** 2) & ref_ok[:, None, :2]
    centre_ok = np.concatenate(
      [np.repeat(ref_ok[:, 2:3], samples, 1), np.repeat(ref_ok[:, 3:4], samples, 1)], 1
    )
    choices[:, SWAP], found[:, SWAP] = _pick(rng, pts, centre_ok & ~near_own.any(-1))
  # good
  pts, r = _ring(rng, xy, np.zeros(k), d85, max(samples // 4, 1))
  choices[:, GOOD], found[:, GOOD] = _pick(rng, pts, clear_of(pts, r, 0))

  num_valid = valid.sum() * 17.0 / max(k, 1)
  num_overlap = 0 if neighbour is None else 1
  prob = posefix_probabilities(parts, num_valid, num_overlap) * found
  total = prob.sum(1)
  draw = rng.random(k)
  kind = np.minimum(
    (draw[:, None] > np.cumsum(prob, 1) / np.maximum(total, 1e-12)[:, None]).sum(1), 4
  )
  apply = valid & (total > 0)
  out = kp.copy()
  out[apply, :2] = choices[np.flatnonzero(apply), kind[apply]]
  kinds = np.where(apply, kind, UNTOUCHED).astype(np.int8)
  return out, kinds


def _keypoint_area(kp: np.ndarray) -> float:
  """Area of the tight box of the labelled keypoints (PoseFix uses the person box w x h); each
  side at least 10% of the longer one."""
  pts = kp[kp[:, 2] > 0, :2]
  w, h = pts.max(0) - pts.min(0)
  longest = max(w, h, 1.0)
  return float(max(w, 0.1 * longest) * max(h, 0.1 * longest))


def _virtual_neighbour(kp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """The person's keypoints shifted sideways by U(0.3, 0.6) x the box's longer side (random
  side) and vertically by U(-0.1, 0.1) x its height: a stand-in for a nearby person."""
  pts = kp[kp[:, 2] > 0, :2]
  w, h = pts.max(0) - pts.min(0)
  shift = np.array(
    [rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6) * max(w, h), rng.uniform(-0.1, 0.1) * h]
  )
  out = np.array(kp, np.float32)
  out[:, :2] += shift.astype(np.float32)
  return out


def posefix_keypoints(
  joint_set: str, names: Sequence[str], neighbour: bool = True, samples: int = 64
) -> Transform:
  """PoseFix "realistic" errors (`posefix_corrupt`) on the keypoint set `joint_set` (whose
  joint `names` give left/right partners, COCO parts and OKS sigmas, `keypoint_parts`); other
  sets, the image and the 3D labels are untouched. As DPMesh / JOTR do for their input joints.

  The OKS radii use the area of the tight box of the labelled keypoints. PoseFix's swap error
  needs other people near the person; a `PersonExample` holds one person, so with `neighbour`
  a virtual one (`_virtual_neighbour`: the same keypoints shifted sideways by 0.3-0.6 x the
  longer side of their box) stands in, counted as one overlapping person; `neighbour=False`
  gives no swaps.
  Examples with fewer than 2 labelled keypoints in the set are returned unchanged.
  """
  names = tuple(names)
  parts = keypoint_parts(names)
  sigmas = keypoint_sigmas(names)
  partner = np.full(len(names), -1, np.int64)
  for a, b in observations.left_right_pairs(names):
    partner[a], partner[b] = b, a

  def transform(example: PersonExample, rng: np.random.Generator) -> PersonExample:
    if joint_set not in example.keypoints_2d:
      raise ValueError(
        f"posefix_keypoints: the example has no keypoint set {joint_set!r} (has "
        f"{sorted(example.keypoints_2d)})"
      )
    kp = np.asarray(example.keypoints_2d[joint_set], np.float32)
    if len(kp) != len(names):
      raise ValueError(f"keypoint set {joint_set!r} has {len(kp)} joints, names {len(names)}")
    if (kp[:, 2] > 0).sum() < 2:
      return example
    nb = _virtual_neighbour(kp, rng) if neighbour else None
    out, _ = posefix_corrupt(kp, rng, parts, sigmas, partner, _keypoint_area(kp), nb, samples)
    return example.replace(keypoints_2d={**example.keypoints_2d, joint_set: out})

  return transform
