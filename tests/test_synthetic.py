"""The synthetic room: determinism, GT consistency, cameras that see the scene."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from xfeat_hloc.evaluation.strecha import GTCamera
from xfeat_hloc.synthetic import (
    ROOM_MAX,
    ROOM_MIN,
    SyntheticRoom,
    make_cameras,
    make_texture,
    ray_cast_rectangles,
    render_scene,
)

WIDTH, HEIGHT = 320, 240  # small renders keep the tests fast


@pytest.fixture(scope="module")
def room() -> SyntheticRoom:
    return SyntheticRoom(seed=0)


@pytest.fixture(scope="module")
def cameras() -> dict[str, GTCamera]:
    return make_cameras(12, seed=0, width=WIDTH, height=HEIGHT)


def _pixel_rays(camera: GTCamera, step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(
        np.arange(0, camera.width, step), np.arange(0, camera.height, step)
    )
    pixels = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], 1)
    return pixels, pixels @ (np.linalg.inv(camera.K).T @ camera.R_w2c)


def _project(camera: GTCamera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = points @ camera.R_w2c.T + camera.t_w2c
    uv = cam @ camera.K.T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def _bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    x, y = uv[:, 0], uv[:, 1]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float64)
    return (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x0 + 1] * fx * (1 - fy)
        + img[y0 + 1, x0] * (1 - fx) * fy
        + img[y0 + 1, x0 + 1] * fx * fy
    )


def test_texture_is_deterministic_and_rich():
    a = make_texture(np.random.default_rng(7), 200, 300)
    b = make_texture(np.random.default_rng(7), 200, 300)
    c = make_texture(np.random.default_rng(8), 200, 300)
    assert a.shape == (200, 300, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 20
    # No flat area: every block of 8x8 texels (4 cm) varies.
    gray = a.mean(2)
    blocks = gray[:200, :296].reshape(25, 8, 37, 8).std(axis=(1, 3))
    assert blocks.min() > 1.0
    assert np.median(blocks) > 3.0


def test_fast_ray_cast_equals_brute_force(room, cameras):
    for name in ("image_00.jpg", "image_07.jpg"):
        camera = cameras[name]
        _, directions = _pixel_rays(camera, step=3)
        fast = room.ray_cast(camera.center, directions)
        slow = ray_cast_rectangles(room.rectangles, camera.center, directions)
        np.testing.assert_array_equal(fast.index, slow.index)
        np.testing.assert_allclose(fast.t, slow.t, atol=1e-9)
        np.testing.assert_allclose(fast.a, slow.a, atol=1e-9)
        np.testing.assert_allclose(fast.b, slow.b, atol=1e-9)


def test_cameras_see_the_scene(room, cameras):
    assert len(cameras) == 12
    for camera in cameras.values():
        center = camera.center
        assert np.all(center > ROOM_MIN + 0.3) and np.all(center < ROOM_MAX - 0.3)
        # Every ray hits a surface, and the boxes fill a good part of the view.
        _, directions = _pixel_rays(camera)
        hits = room.ray_cast(center, directions)
        assert np.all(hits.index >= 0)
        assert np.mean(hits.index >= 6) > 0.08
        # The target point is in front of the camera, inside the image.
        uv, depth = _project(camera, SyntheticRoom.target[None])
        assert depth[0] > 1.5
        assert 0 < uv[0, 0] < camera.width - 1 and 0 < uv[0, 1] < camera.height - 1
    # Neighbours overlap strongly: most surface points seen by one camera project
    # into the next one, unoccluded.
    names = sorted(cameras)
    for n0, n1 in zip(names[:-1], names[1:], strict=True):
        c0, c1 = cameras[n0], cameras[n1]
        _, directions = _pixel_rays(c0, step=8)
        hits = room.ray_cast(c0.center, directions)
        points = c0.center + hits.t[:, None] * directions
        uv, depth = _project(c1, points)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= c1.width - 1)
        inside &= (uv[:, 1] >= 0) & (uv[:, 1] <= c1.height - 1) & (depth > 0)
        back = room.ray_cast(c1.center, points - c1.center)
        visible = inside & (np.abs(back.t - 1) < 1e-6)
        assert visible.mean() > 0.5, (n0, n1, visible.mean())


def test_gt_projection_matches_the_rendered_texture(room, cameras, tmp_path):
    """Points on the far wall, projected with the GT camera (as written in the
    COLMAP model, pixel centres at +0.5 there), land where the renderer drew
    their texture."""
    camera = cameras["image_05.jpg"]
    image = room.render(camera, supersample=1, noise_sigma=0)
    rng = np.random.default_rng(0)
    y = rng.uniform(ROOM_MIN[1], ROOM_MAX[1], 4000)
    z = rng.uniform(ROOM_MIN[2], ROOM_MAX[2], 4000)
    points = np.stack([np.full_like(y, ROOM_MAX[0]), y, z], 1)  # wall x = 4
    index, a, b = room.locate(points)
    assert np.all(index == 4)
    expected = room.surface_color(index, a, b)

    # Project with pycolmap and the written GT model.
    from xfeat_hloc.synthetic import write_gt_model

    model = write_gt_model({"view.jpg": camera}, tmp_path / "gt")
    model = pycolmap.Reconstruction(tmp_path / "gt")
    image_gt = model.find_image_with_name("view.jpg")
    cam = model.cameras[image_gt.camera_id]
    assert cam.model == pycolmap.CameraModelId.PINHOLE
    np.testing.assert_allclose(
        cam.params, [camera.K[0, 0], camera.K[1, 1], WIDTH / 2, HEIGHT / 2]
    )
    cam_points = points @ camera.R_w2c.T + camera.t_w2c
    uv_colmap = np.asarray(cam.img_from_cam(cam_points))
    uv = uv_colmap - 0.5  # back to pixel centres at integers
    uv_ours, depth = _project(camera, points)
    np.testing.assert_allclose(uv, uv_ours, atol=1e-6)

    inside = (uv[:, 0] >= 1) & (uv[:, 0] <= WIDTH - 2) & (depth > 0)
    inside &= (uv[:, 1] >= 1) & (uv[:, 1] <= HEIGHT - 2)
    hits = room.ray_cast(camera.center, points - camera.center)
    visible = inside & (hits.index == 4) & (np.abs(hits.t - 1) < 1e-6)
    assert visible.sum() > 300

    def error(shift: float) -> float:
        sampled = _bilinear(image, uv[visible] + shift)
        return float(np.median(np.abs(sampled - expected[visible])))

    correct = error(0.0)
    assert correct < 6.0, correct
    # Half a pixel off is clearly worse: the check is sensitive to the convention.
    assert error(0.5) > 1.5 * correct
    assert error(1.5) > 3 * correct


def test_render_scene_writes_gt_and_is_deterministic(tmp_path):
    kwargs = {"num_images": 3, "seed": 3, "width": 160, "height": 120, "supersample": 1}
    s1 = render_scene(tmp_path / "a", **kwargs)
    s2 = render_scene(tmp_path / "b", **kwargs)
    names = sorted(s1.cameras)
    assert names == ["image_00.jpg", "image_01.jpg", "image_02.jpg"]
    for name in names:
        assert (s1.image_dir / name).read_bytes() == (s2.image_dir / name).read_bytes()
    other = render_scene(tmp_path / "c", **{**kwargs, "seed": 4})
    assert (other.image_dir / names[0]).read_bytes() != (
        s1.image_dir / names[0]
    ).read_bytes()

    model = pycolmap.Reconstruction(s1.gt_model_dir)
    assert model.num_images() == 3 and model.num_points3D() == 0
    for image in model.images.values():
        gt = s1.cameras[image.name]
        m = np.asarray(image.cam_from_world().matrix())
        np.testing.assert_allclose(m[:, :3], gt.R_w2c, atol=1e-9)
        np.testing.assert_allclose(m[:, 3], gt.t_w2c, atol=1e-9)
    assert 2.0 < s1.extent < 6.0

    # A second call with the same parameters renders nothing.
    stamp = (s1.image_dir / names[0]).stat().st_mtime_ns
    again = render_scene(tmp_path / "a", **kwargs)
    assert (again.image_dir / names[0]).stat().st_mtime_ns == stamp
    for name in names:
        np.testing.assert_allclose(again.cameras[name].K, s1.cameras[name].K)
