"""Pose evaluation against ground truth: alignment, errors, offsets, files."""

from __future__ import annotations

import math

import numpy as np
import pycolmap
import pytest

from xfeat_hloc.errors import UserError
from xfeat_hloc.evaluation.poses import (
    align_sim3,
    evaluate_localization,
    evaluate_reconstruction,
    load_ground_truth,
    read_poses,
    rotation_angle_deg,
    umeyama,
)
from xfeat_hloc.evaluation.strecha import load_strecha_scene
from xfeat_hloc.results_file import write_results


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis) * math.radians(degrees)
    return np.asarray(pycolmap.Rotation3d(axis).matrix())


def _random_poses(n: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    poses = {}
    for i in range(n):
        R = _rotation(rng.normal(size=3), rng.uniform(5, 60))
        center = rng.normal(size=3) * 5
        poses[f"img{i:02d}.jpg"] = (R, -R @ center)
    return poses


def _transform(poses, scale, R_sim, t_sim, offset=None):
    """Express GT poses in another frame (x_new = s R x + t), with a rotation
    offset applied in every camera's frame."""
    offset = np.eye(3) if offset is None else offset
    out = {}
    for name, (R, t) in poses.items():
        center = -R.T @ t
        new_center = scale * R_sim @ center + t_sim
        R_new = offset @ R @ R_sim.T
        out[name] = (R_new, -R_new @ new_center)
    return out


def test_rotation_angle_is_accurate_for_small_angles():
    for degrees in (1e-4, 0.01, 0.5, 90.0, 179.0):
        R = _rotation([0.3, -1.0, 0.2], degrees)
        assert rotation_angle_deg(R) == pytest.approx(degrees, rel=1e-6)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    R = _rotation([1, 2, 3], 40)
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 0.5])
    sim = umeyama(src, dst)
    assert sim.scale == pytest.approx(2.5)
    np.testing.assert_allclose(sim.R, R, atol=1e-10)
    np.testing.assert_allclose(sim.apply(src), dst, atol=1e-10)


def test_robust_alignment_ignores_an_outlier():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(12, 3))
    R = _rotation([0, 0, 1], 30)
    dst = 0.5 * src @ R.T + 3.0
    dst[4] += 10.0  # one camera far off
    plain, _ = align_sim3(src, dst)
    robust, inliers = align_sim3(src, dst, robust=True)
    assert not inliers[4] and inliers.sum() == 11
    assert robust.scale == pytest.approx(0.5)
    assert abs(plain.scale - 0.5) > 1e-3  # the least-squares fit is bent


def test_evaluation_of_a_transformed_copy_of_the_ground_truth():
    gt = _random_poses(8)
    offset = _rotation([1, 0, 0], 0.5)  # e.g. a wrong principal point
    est = _transform(gt, 0.2, _rotation([0, 1, 1], 70), np.array([4.0, 0, -1]), offset)
    del est["img03.jpg"]  # not registered
    result = evaluate_reconstruction(est, gt)
    summary = result.summary()
    assert summary["registered"] == 7 and summary["total"] == 8
    assert result.missing == ["img03.jpg"]
    assert summary["max_position"] < 1e-9
    assert summary["median_rotation_deg"] == pytest.approx(0.5, abs=1e-6)
    assert summary["max_rotation_no_offset_deg"] < 1e-6
    assert summary["rotation_offset_deg"] == pytest.approx(0.5, abs=1e-6)
    assert "registered 7/8" in result.format()


def test_position_error_is_in_ground_truth_units():
    gt = _random_poses(6, seed=3)
    est = _transform(gt, 3.0, np.eye(3), np.zeros(3))
    R, t = est["img00.jpg"]
    center = -R.T @ t + np.array([0.3, 0.0, 0.0])  # 0.1 GT units after scaling
    est["img00.jpg"] = (R, -R @ center)
    errors = evaluate_reconstruction(est, gt, robust=True, inlier_threshold=0.01).errors
    assert errors["img00.jpg"].position == pytest.approx(0.1, rel=1e-6)
    assert errors["img01.jpg"].position < 1e-9


def test_too_few_common_images_is_a_clear_error():
    gt = _random_poses(5)
    est = {"other.jpg": gt["img00.jpg"]}
    with pytest.raises(UserError, match="Image names must match"):
        evaluate_reconstruction(est, gt)


def test_missing_ground_truth_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_ground_truth(tmp_path / "nope")
    with pytest.raises(UserError, match="neither a Strecha scene"):
        load_ground_truth(tmp_path)


def test_strecha_ground_truth_against_itself_and_as_colmap_model(
    fountain_dir, tmp_path
):
    _, cameras = load_strecha_scene(fountain_dir)
    gt = load_ground_truth(fountain_dir)
    assert sorted(gt) == sorted(cameras)
    # the GT written as a COLMAP model reads back as the same ground truth
    from xfeat_hloc.triangulation import model_from_poses

    model = model_from_poses(
        {n: (c.pycolmap_camera(), c.cam_from_world()) for n, c in cameras.items()}
    )
    model.write(str(tmp_path))
    result = evaluate_reconstruction(load_ground_truth(tmp_path), cameras)
    assert result.summary()["registered"] == 11
    # (GT rotations are stored with few digits: quaternions re-orthonormalize them)
    assert result.summary()["max_position"] < 1e-4
    assert result.summary()["max_rotation_deg"] < 1e-3


def test_localization_errors_from_a_results_file(tmp_path):
    gt = _random_poses(3, seed=4)
    poses = {}
    for name, (R, t) in gt.items():
        R_est = _rotation([0, 1, 0], 1.0) @ R
        center = -R.T @ t + np.array([0.0, 0.0, 0.05])
        poses[f"query/{name}"] = pycolmap.Rigid3d(
            pycolmap.Rotation3d(R_est), -R_est @ center
        )
    path = write_results(poses, tmp_path / "results.txt")  # basenames
    errors = evaluate_localization(path, gt)
    assert sorted(errors) == sorted(gt)
    for position, rotation in errors.values():
        assert position == pytest.approx(0.05, rel=1e-6)
        assert rotation == pytest.approx(1.0, rel=1e-6)


def test_malformed_results_file(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("a.jpg 1 0 0 0 1 2\n")
    with pytest.raises(UserError, match="expected 'name qw qx qy qz tx ty tz'"):
        read_poses(path)
    with pytest.raises(UserError, match="not found"):
        read_poses(tmp_path / "missing.txt")
