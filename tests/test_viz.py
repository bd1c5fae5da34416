"""Match plots (PNG) and 3D views (self-contained HTML)."""

from __future__ import annotations

import h5py
import numpy as np
import pycolmap
import pytest

from xfeat_hloc.evaluation.strecha import GTCamera
from xfeat_hloc.utils.io import read_image
from xfeat_hloc.utils.parsers import names_to_pair
from xfeat_hloc.viz import GREEN, RED, plot_matches, plot_pair, write_3d_html


def _image(height: int, width: int, value: int) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def test_plot_matches_layout_and_colours(tmp_path):
    img0, img1 = _image(100, 120, 0), _image(100, 80, 0)
    kpts0 = np.array([[10.0, 50.0], [60.0, 80.0]])
    kpts1 = np.array([[70.0, 50.0], [40.0, 80.0]])
    path = plot_matches(
        img0, img1, kpts0, kpts1, tmp_path / "m.png", inliers=[True, False], text="x"
    )
    canvas = read_image(path)
    assert canvas.shape == (100, 120 + 10 + 80, 3)
    # The gap between the images is white; the endpoints carry the colours at
    # the keypoints' pixels (image 1 shifted by width0 + gap).
    assert np.all(canvas[30, 121:129] == 255)
    np.testing.assert_allclose(canvas[50, 10], GREEN, atol=30)
    np.testing.assert_allclose(canvas[50, 130 + 70], GREEN, atol=30)
    np.testing.assert_allclose(canvas[80, 60], RED, atol=30)
    np.testing.assert_allclose(canvas[80, 130 + 40], RED, atol=30)
    # A line is drawn between matched points (blended over the black image).
    mid = canvas[50, 100]
    assert mid[1] > 60 and mid[1] > mid[0] and mid[1] > mid[2]


def test_plot_matches_resizes_and_accepts_paths(tmp_path):
    import cv2

    big = np.random.default_rng(0).integers(0, 255, (400, 300), np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    small = np.random.default_rng(1).integers(0, 255, (200, 100, 3), np.uint8)
    kpts = np.array([[299.0, 399.0], [0.0, 0.0]])
    path = plot_matches(
        tmp_path / "big.png",
        small,
        kpts,
        np.array([[99.0, 199.0], [0.0, 0.0]]),
        tmp_path / "out" / "p.png",
        scores=np.array([1.0, 0.0]),
        max_height=200,
    )
    canvas = read_image(path)
    # Both images scaled to height 200: 150 + 10 + 100 wide.
    assert canvas.shape == (200, 260, 3)
    # Pixel centre (299, 399) of the big image maps to (149.25, 199.25) at half
    # size: the bottom-right pixel of the first panel is green (score 1).
    np.testing.assert_allclose(canvas[199, 149], GREEN, atol=40)
    # No matches is fine, and the random subset caps what is drawn.
    plot_matches(small, small, np.zeros((0, 2)), np.zeros((0, 2)), tmp_path / "e.png")
    many = np.random.default_rng(2).uniform(0, 99, (5000, 2))
    plot_matches(small, small, many, many, tmp_path / "n.png", max_matches=50)
    assert read_image(tmp_path / "n.png").shape == (200, 210, 3)
    with pytest.raises(ValueError):
        plot_matches(small, small, many, many[:3], tmp_path / "bad.png")


def _two_view_model() -> pycolmap.Reconstruction:
    """Two cameras looking at 50 points; keypoints in the order of points2D."""
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(
        camera_id=1, model="PINHOLE", width=200, height=100, params=[150, 150, 100, 50]
    )
    rec.add_camera_with_trivial_rig(camera)
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-1, -0.5, 4], [1, 0.5, 6], (50, 3))
    poses = [
        pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.zeros(3)),
        pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([-0.5, 0, 0])),
    ]
    for image_id, (name, pose) in enumerate(
        zip(("a.png", "b.png"), poses, strict=True), 1
    ):
        cam_points = xyz @ np.asarray(pose.matrix())[:, :3].T + pose.translation
        uv = np.asarray(camera.img_from_cam(cam_points))
        image = pycolmap.Image(
            name=name,
            camera_id=1,
            image_id=image_id,
            points2D=pycolmap.Point2DList([pycolmap.Point2D(p) for p in uv]),
        )
        rec.add_image_with_trivial_frame(image, pose)
    for i, p in enumerate(xyz[:30]):  # 30 points in tracks, 20 not
        track = pycolmap.Track()
        track.add_element(1, i)
        track.add_element(2, i)
        rec.add_point3D(p, track, np.array([200, 50, 50], np.uint8))
    return rec


def test_plot_pair_marks_track_inliers(tmp_path):
    rec = _two_view_model()
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        import cv2

        cv2.imwrite(str(images / name), np.full((100, 200, 3), 90, np.uint8))
    features = tmp_path / "features.h5"
    matches = tmp_path / "matches.h5"
    with h5py.File(features, "w") as fd:
        for image in rec.images.values():
            kp = np.array([p.xy for p in image.points2D]) - 0.5
            grp = fd.create_group(image.name)
            grp.create_dataset("keypoints", data=kp.astype(np.float32))
    with h5py.File(matches, "w") as fd:
        grp = fd.create_group(names_to_pair("a.png", "b.png"))
        m = np.arange(50)
        m[45:] = -1
        grp.create_dataset("matches0", data=m)
        grp.create_dataset("matching_scores0", data=np.ones(50, np.float32))
    from xfeat_hloc.viz import _track_inliers

    inliers = _track_inliers(rec, "a.png", "b.png", np.stack([m[:45], m[:45]], 1))
    assert inliers.sum() == 30 and inliers[:30].all()
    # Reversed order works through the h5 readers as well.
    for order in (("a.png", "b.png"), ("b.png", "a.png")):
        path = plot_pair(
            images, features, matches, *order, tmp_path / f"{order[0]}.png", rec
        )
        canvas = read_image(path)
        assert canvas.shape == (100, 410, 3)
        colours = canvas.reshape(-1, 3).astype(int)
        green = np.sum(np.all(np.abs(colours - GREEN) < 30, axis=1))
        red = np.sum(np.all(np.abs(colours - RED) < 30, axis=1))
        assert green > red > 0


def test_write_3d_html_is_self_contained(tmp_path):
    rec = _two_view_model()
    K = np.array([[150.0, 0, 99.5], [0, 150, 49.5], [0, 0, 1]])
    gt = {
        "a.png": GTCamera(K, np.eye(3), np.zeros(3), 200, 100),
        "b.png": (np.eye(3), np.array([-0.5, 0.0, 0.0])),
    }
    path = write_3d_html(rec, tmp_path / "view.html", other_cameras=gt, title="<t>")
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size > 1_000_000  # plotly.js is embedded
    assert "<script src=" not in text
    assert "3D points (30)" in text
    assert "cameras (2)" in text and "ground truth (2)" in text
    assert "a.png" in text and "&lt;t&gt;" in text
    # Frustum apexes are at the camera centres: (0, 0, 0) and (0.5, 0, 0).
    from xfeat_hloc.viz import _frustum_lines

    lines = _frustum_lines(np.eye(3), np.array([-0.5, 0, 0]), K, 200, 100, 1.0)
    np.testing.assert_allclose(lines[0], [0.5, 0, 0])
    np.testing.assert_allclose(lines[1], [0.5 - 100 / 150, -50 / 150, 1.0])
    with pytest.raises(Exception, match="html"):
        write_3d_html(rec, tmp_path / "view.png")
    # An empty model still gives a page.
    write_3d_html(pycolmap.Reconstruction(), tmp_path / "empty.html")
