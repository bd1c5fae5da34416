"""Triangulation from known poses (fountain-P11 GT), COLMAP 4 two-view geometries."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from xfeat_hloc import triangulation
from xfeat_hloc.errors import EmptyResultError, UserError
from xfeat_hloc.evaluation.strecha import load_strecha_scene
from xfeat_hloc.utils.parsers import write_pairs

QUERIES = ("0001.jpg", "0005.jpg", "0009.jpg")


def gt_reference(fountain_dir, names):
    _, gt = load_strecha_scene(fountain_dir)
    return triangulation.model_from_poses(
        {n: (gt[n].pycolmap_camera(), gt[n].cam_from_world()) for n in names}
    )


@pytest.fixture(scope="module")
def reference(fountain_dir, fountain_xfeat, tmp_path_factory):
    """A GT model of 8 images (no 2D or 3D points), written to disk, and its pairs."""
    names = [n for n in fountain_xfeat["names"] if n not in QUERIES]
    root = tmp_path_factory.mktemp("tri_reference")
    model_dir = root / "model"
    model_dir.mkdir()
    gt_reference(fountain_dir, names).write(str(model_dir))
    pairs = write_pairs(
        root / "pairs.txt",
        [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]],
    )
    return model_dir, pairs


def _triangulate(out, reference, fountain_xfeat, **kwargs):
    model_dir, pairs = reference
    return triangulation.main(
        out,
        model_dir,
        fountain_xfeat["images"],
        pairs,
        fountain_xfeat["features"],
        fountain_xfeat["matches"],
        **kwargs,
    )


def test_triangulation_with_gt_poses(reference, fountain_xfeat, fountain_dir, tmp_path):
    rec = _triangulate(tmp_path, reference, fountain_xfeat)
    assert rec.num_points3D() > 2000
    assert rec.compute_mean_reprojection_error() < 1.5
    assert rec.compute_mean_track_length() > 2.5
    # poses are those of the reference, untouched
    _, gt = load_strecha_scene(fountain_dir)
    for image in rec.images.values():
        np.testing.assert_allclose(
            image.cam_from_world().matrix(),
            gt[image.name].cam_from_world().matrix(),
            atol=1e-6,
        )
    # the model on disk (COLMAP 4 files) has the points
    again = pycolmap.Reconstruction(str(tmp_path))
    assert again.num_points3D() == rec.num_points3D()
    assert (tmp_path / "frames.bin").exists() and (tmp_path / "rigs.bin").exists()
    # the points are metric: the fountain is ~10 m from the cameras
    depths = [
        (rec.images[1].cam_from_world() * p.xyz)[2] for p in rec.points3D.values()
    ]
    assert 3 < np.median(depths) < 20


@pytest.mark.parametrize(
    "options",
    [
        {"skip_geometric_verification": True, "min_match_score": 0.9},
        {"estimate_two_view_geometries": True},
    ],
    ids=["skip-verification", "estimate-two-view"],
)
def test_other_verifications_give_points(reference, fountain_xfeat, tmp_path, options):
    """hloc's skip / estimate paths give 0 points on COLMAP 4 (no config)."""
    rec = _triangulate(tmp_path, reference, fountain_xfeat, **options)
    assert rec.num_points3D() > 1000


def test_no_point_is_a_clear_error(fountain_dir, fountain_xfeat, tmp_path):
    """Poses without baseline (all at one place): no 3D point can be made, which is
    an EmptyResultError, not a silent success."""
    names = ["0000.jpg", "0002.jpg", "0004.jpg"]
    _, gt = load_strecha_scene(fountain_dir)
    same_place = triangulation.model_from_poses(
        {n: (gt[n].pycolmap_camera(), gt["0002.jpg"].cam_from_world()) for n in names}
    )
    pairs = write_pairs(
        tmp_path / "pairs.txt",
        [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]],
    )
    with pytest.raises(EmptyResultError, match="no 3D point"):
        triangulation.main(
            tmp_path / "sfm",
            same_place,
            fountain_xfeat["images"],
            pairs,
            fountain_xfeat["features"],
            fountain_xfeat["matches"],
        )


def test_missing_reference_model(fountain_xfeat, tmp_path):
    with pytest.raises(UserError, match="Reference model .* does not exist"):
        triangulation.main(
            tmp_path / "sfm",
            tmp_path / "no_model",
            fountain_xfeat["images"],
            fountain_xfeat["pairs"],
            fountain_xfeat["features"],
            fountain_xfeat["matches"],
        )


def test_epipolar_errors_are_distances_to_epipolar_lines():
    rng = np.random.default_rng(0)
    R = pycolmap.Rotation3d(np.array([0.05, -0.1, 0.02]))
    pose = pycolmap.Rigid3d(R, np.array([1.0, 0.1, 0.05]))
    points = rng.uniform(-1, 1, (50, 3)) + [0, 0, 6]
    p0 = points[:, :2] / points[:, 2:]
    cam1 = np.array([pose * p for p in points])
    p1 = cam1[:, :2] / cam1[:, 2:]
    e0, e1 = triangulation.epipolar_errors(pose, p0, p1)
    assert e0.max() < 1e-12 and e1.max() < 1e-12
    shifted = p1 + [0.0, 0.01]  # moving along y changes the distance by <= 0.01
    _, e1 = triangulation.epipolar_errors(pose, p0, shifted)
    assert 0 < e1.max() <= 0.01 + 1e-12
