"""Camera pose errors of a reconstruction or a localization against ground truth.

Poses are world-to-camera: ``x_cam = R x_world + t``; the camera centre is
``c = -R.T @ t``. A reconstruction lives in its own frame (arbitrary scale), so it
is first aligned to the ground truth with a similarity transform of the camera
centres (Umeyama, optionally inside RANSAC); errors are then:

- position error: distance between the aligned and the true camera centres, in
  the ground truth's unit (metres for Strecha scenes);
- rotation error: angle of ``R_est_aligned @ R_gt.T`` in degrees;
- rotation error with the common offset removed: the same angle after removing
  the mean of ``R_est_aligned @ R_gt.T`` over all images. A principal point
  fixed ~20 px from the true one tilts every camera by the same small rotation
  in its own frame (about 0.5 degrees on the Strecha scenes); this error shows
  what remains.

Localized queries are compared in the ground truth's frame, without alignment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..errors import UserError
from .strecha import GTCamera, load_strecha_scene

# image name -> (R_w2c 3x3, t_w2c 3)
Poses = dict[str, tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------- conversions
def _rigid_to_rt(rigid: pycolmap.Rigid3d) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.asarray(rigid.matrix(), dtype=np.float64)
    return matrix[:, :3].copy(), matrix[:, 3].copy()


def reconstruction_poses(reconstruction: pycolmap.Reconstruction) -> Poses:
    """World-to-camera poses of the registered images, by image name."""
    poses: Poses = {}
    for image in reconstruction.images.values():
        if image.has_pose:
            poses[image.name] = _rigid_to_rt(image.cam_from_world())
    return poses


def as_poses(
    source: Mapping[str, GTCamera]
    | Mapping[str, pycolmap.Rigid3d]
    | pycolmap.Reconstruction
    | Poses,
) -> Poses:
    """Poses from GT cameras, a model, ``{name: Rigid3d}`` or ``{name: (R, t)}``."""
    if isinstance(source, pycolmap.Reconstruction):
        return reconstruction_poses(source)
    poses: Poses = {}
    for name, value in source.items():
        if isinstance(value, GTCamera):
            poses[name] = (
                np.asarray(value.R_w2c, float),
                np.asarray(value.t_w2c, float),
            )
        elif isinstance(value, pycolmap.Rigid3d):
            poses[name] = _rigid_to_rt(value)
        else:
            R, t = value
            poses[name] = (np.asarray(R, float), np.asarray(t, float).reshape(3))
    return poses


def load_ground_truth(path: Path) -> Poses:
    """Ground-truth poses from a Strecha scene folder or a COLMAP model folder.

    Raises:
        UserError: the path does not exist or holds neither layout.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"Ground truth {path} does not exist: give a Strecha scene folder "
            "(images/, gt_dense_cameras/) or a COLMAP model folder."
        )
    if (path / "gt_dense_cameras").is_dir():
        return as_poses(load_strecha_scene(path)[1])
    if any((path / f"images.{ext}").exists() for ext in ("bin", "txt")):
        return reconstruction_poses(pycolmap.Reconstruction(path))
    raise UserError(
        f"{path} is neither a Strecha scene (gt_dense_cameras/) nor a COLMAP model "
        "(cameras, images, points3D .bin/.txt)."
    )


def centers(poses: Poses, names: list[str]) -> np.ndarray:
    """Camera centres ``(N, 3)`` of ``names``."""
    return np.stack([-poses[n][0].T @ poses[n][1] for n in names])


# --------------------------------------------------------------- similarity
@dataclass(frozen=True)
class Sim3:
    """``x_tgt = scale * R @ x_src + t``."""

    scale: float
    R: np.ndarray
    t: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * points @ self.R.T + self.t

    def apply_pose(self, R_w2c: np.ndarray, t_w2c: np.ndarray):
        """A world-to-camera pose of the source frame expressed in the target frame."""
        R_new = R_w2c @ self.R.T
        center = self.apply(-R_w2c.T @ t_w2c)
        return R_new, -R_new @ center


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity with ``dst ~ s R src + t`` (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if len(src) < 3 or src.shape != dst.shape:
        raise ValueError(f"umeyama needs >= 3 matched points, got {src.shape}.")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    var_src = (src_c**2).sum() / len(src)
    scale = float(np.trace(np.diag(D) @ S) / var_src) if with_scale else 1.0
    t = mu_dst - scale * R @ mu_src
    return Sim3(scale, R, t)


def align_sim3(
    src: np.ndarray,
    dst: np.ndarray,
    robust: bool = False,
    inlier_threshold: float | None = None,
    num_trials: int = 500,
    seed: int = 0,
) -> tuple[Sim3, np.ndarray]:
    """Similarity ``dst ~ s R src + t`` and the inlier mask.

    Args:
        robust: RANSAC over 3-point samples, then a least-squares refit on the
            inliers; else a least-squares fit on all points (all are inliers).
        inlier_threshold: in ``dst`` units; default 5% of the median distance of
            ``dst`` to its centroid.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    if not robust or n <= 3:
        return umeyama(src, dst), np.ones(n, bool)
    if inlier_threshold is None:
        spread = np.median(np.linalg.norm(dst - dst.mean(0), axis=1))
        inlier_threshold = 0.05 * max(spread, 1e-12)
    rng = np.random.default_rng(seed)
    best = np.zeros(n, bool)
    best_cost = np.inf
    for _ in range(num_trials):
        sample = rng.choice(n, 3, replace=False)
        try:
            sim = umeyama(src[sample], dst[sample])
        except np.linalg.LinAlgError:
            continue
        errors = np.linalg.norm(sim.apply(src) - dst, axis=1)
        inliers = errors < inlier_threshold
        cost = np.minimum(errors, inlier_threshold).sum()  # MSAC
        if inliers.sum() >= 3 and cost < best_cost:
            best, best_cost = inliers, cost
    if best.sum() < 3:
        return umeyama(src, dst), np.ones(n, bool)
    sim = umeyama(src[best], dst[best])
    errors = np.linalg.norm(sim.apply(src) - dst, axis=1)
    return sim, errors < inlier_threshold


# ------------------------------------------------------------------ rotations
def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees (accurate for small angles too)."""
    cos = (np.trace(R) - 1.0) / 2.0
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    sin = np.linalg.norm(axis) / 2.0
    return math.degrees(math.atan2(sin, cos))


def mean_rotation(rotations: list[np.ndarray]) -> np.ndarray:
    """Chordal L2 mean of rotation matrices (projection of their sum onto SO(3))."""
    U, _, Vt = np.linalg.svd(np.sum(rotations, axis=0))
    S = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ S @ Vt


def pose_error(
    R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray
) -> tuple[float, float]:
    """Position error (distance of camera centres) and rotation error (degrees)."""
    c_est = -R_est.T @ t_est
    c_gt = -R_gt.T @ t_gt
    return float(np.linalg.norm(c_est - c_gt)), rotation_angle_deg(R_est @ R_gt.T)


# ------------------------------------------------------------------ results
@dataclass
class ImageError:
    position: float  # in GT units (metres)
    rotation_deg: float
    rotation_no_offset_deg: float


@dataclass
class ReconstructionEvaluation:
    """Per-image errors of a reconstruction aligned to ground truth.

    Attributes:
        errors: ``{name: ImageError}`` for registered images that have GT.
        missing: GT images that are not registered.
        num_gt: number of GT images.
        sim3: the alignment (reconstruction -> GT frame).
        rotation_offset_deg: angle of the common rotation offset that was removed.
        outliers: registered images rejected by the robust alignment.
    """

    errors: dict[str, ImageError]
    missing: list[str]
    num_gt: int
    sim3: Sim3
    rotation_offset_deg: float
    outliers: list[str] = field(default_factory=list)

    @property
    def num_registered(self) -> int:
        return len(self.errors)

    def _values(self, key: str) -> np.ndarray:
        return np.array([getattr(e, key) for e in self.errors.values()])

    def summary(self) -> dict[str, float]:
        """Median and max of each error, and the registered count."""
        out: dict[str, float] = {
            "registered": self.num_registered,
            "total": self.num_gt,
        }
        for key in ("position", "rotation_deg", "rotation_no_offset_deg"):
            values = self._values(key)
            out[f"median_{key}"] = float(np.median(values))
            out[f"max_{key}"] = float(np.max(values))
        out["rotation_offset_deg"] = self.rotation_offset_deg
        return out

    def format(self, unit: str = "m") -> str:
        """A short human-readable summary."""
        s = self.summary()
        return (
            f"registered {s['registered']}/{s['total']}; position error median "
            f"{s['median_position']:.4f} {unit}, max {s['max_position']:.4f} {unit}; "
            f"rotation error median {s['median_rotation_deg']:.3f} deg, max "
            f"{s['max_rotation_deg']:.3f} deg; with the common offset "
            f"({s['rotation_offset_deg']:.3f} deg) removed: median "
            f"{s['median_rotation_no_offset_deg']:.3f} deg, max "
            f"{s['max_rotation_no_offset_deg']:.3f} deg"
        )


def evaluate_reconstruction(
    reconstruction: pycolmap.Reconstruction | Poses,
    ground_truth: Mapping[str, GTCamera] | pycolmap.Reconstruction | Poses | Path,
    robust: bool = False,
    inlier_threshold: float | None = None,
) -> ReconstructionEvaluation:
    """Align a reconstruction to ground truth by its camera centres and measure errors.

    Args:
        reconstruction: the estimate (a model, or poses by image name).
        ground_truth: GT cameras (Strecha), a GT COLMAP model, poses, or a path
            that :func:`load_ground_truth` reads.
        robust: RANSAC alignment (a badly misplaced camera does not bend the fit;
            it is still counted with its error).

    Raises:
        UserError: fewer than 3 registered images have ground truth.
    """
    est = as_poses(reconstruction)
    if isinstance(ground_truth, (str, Path)):
        gt = load_ground_truth(Path(ground_truth))
    else:
        gt = as_poses(ground_truth)
    common = sorted(set(est) & set(gt))
    if len(common) < 3:
        raise UserError(
            f"Only {len(common)} registered images have ground truth (need 3 to "
            f"align): estimate has {sorted(est)[:5]}..., GT has {sorted(gt)[:5]}... "
            "Image names must match."
        )
    sim3, inliers = align_sim3(
        centers(est, common),
        centers(gt, common),
        robust=robust,
        inlier_threshold=inlier_threshold,
    )
    deltas: dict[str, np.ndarray] = {}
    positions: dict[str, float] = {}
    for name in common:
        R_al, t_al = sim3.apply_pose(*est[name])
        positions[name], _ = pose_error(R_al, t_al, *gt[name])
        deltas[name] = R_al @ gt[name][0].T
    inlier_names = [n for n, ok in zip(common, inliers, strict=True) if ok]
    offset = mean_rotation([deltas[n] for n in inlier_names])
    errors = {
        n: ImageError(
            position=positions[n],
            rotation_deg=rotation_angle_deg(deltas[n]),
            rotation_no_offset_deg=rotation_angle_deg(offset.T @ deltas[n]),
        )
        for n in common
    }
    return ReconstructionEvaluation(
        errors=errors,
        missing=sorted(set(gt) - set(est)),
        num_gt=len(gt),
        sim3=sim3,
        rotation_offset_deg=rotation_angle_deg(offset),
        outliers=[n for n, ok in zip(common, inliers, strict=True) if not ok],
    )


def evaluate_localization(
    estimates: Mapping[str, pycolmap.Rigid3d] | Poses | Path,
    ground_truth: Mapping[str, GTCamera] | pycolmap.Reconstruction | Poses,
) -> dict[str, tuple[float, float]]:
    """``{query: (position error, rotation error in degrees)}`` in the GT frame.

    ``estimates`` may be a results file (``name qw qx qy qz tx ty tz``); its
    names are matched to GT names, or to their basenames when the results hold
    basenames only (hloc's default).
    """
    if isinstance(estimates, (str, Path)):
        est = read_poses(Path(estimates))
    else:
        est = as_poses(estimates)
    gt = as_poses(ground_truth)
    by_basename = {Path(n).name: n for n in gt}
    out: dict[str, tuple[float, float]] = {}
    for name, (R, t) in est.items():
        gt_name = name if name in gt else by_basename.get(Path(name).name)
        if gt_name is None:
            continue
        out[name] = pose_error(R, t, *gt[gt_name])
    return out


def read_poses(path: Path) -> Poses:
    """Read a results file ``name qw qx qy qz tx ty tz`` (world-to-camera)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Results file not found: {path}.")
    poses: Poses = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 8:
            raise UserError(
                f"{path}:{lineno}: expected 'name qw qx qy qz tx ty tz', got {line!r}."
            )
        qw, qx, qy, qz, tx, ty, tz = (float(v) for v in parts[1:])
        rotation = pycolmap.Rotation3d(np.array([qx, qy, qz, qw]))  # xyzw
        poses[parts[0]] = (np.asarray(rotation.matrix()), np.array([tx, ty, tz]))
    return poses
