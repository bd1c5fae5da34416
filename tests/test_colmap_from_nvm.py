"""NVM -> COLMAP conversion (Aachen v1.0's reference model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest

from xfeat_hloc import colmap_from_nvm
from xfeat_hloc.errors import DatasetLayoutError


def _write_intrinsics(rec: pycolmap.Reconstruction, path: Path) -> Path:
    with open(path, "w") as f:
        for image in rec.images.values():
            cam = image.camera
            params = " ".join(f"{v:.17g}" for v in cam.params)
            f.write(
                f"{image.name} {cam.model.name} {cam.width} {cam.height} {params}\n"
            )
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A pycolmap synthetic model (6 images, own camera each) with its database,
    written as NVM + intrinsics."""
    root = tmp_path_factory.mktemp("nvm")
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs = 6
    options.num_frames_per_rig = 1
    options.num_points3D = 150
    options.camera_model_id = pycolmap.CameraModelId.SIMPLE_RADIAL
    database = root / "aachen.db"
    db = pycolmap.Database.open(database)
    pycolmap.set_random_seed(1)
    rec = pycolmap.synthesize_dataset(options, db)
    db.close()
    nvm = colmap_from_nvm.write_nvm(rec, root / "model.nvm")
    intrinsics = _write_intrinsics(rec, root / "database_intrinsics.txt")
    return {
        "rec": rec,
        "root": root,
        "nvm": nvm,
        "intrinsics": intrinsics,
        "database": database,
    }


def test_round_trip_keeps_poses_points_and_tracks(synthetic: dict) -> None:
    rec: pycolmap.Reconstruction = synthetic["rec"]
    out = colmap_from_nvm.main(
        synthetic["nvm"],
        synthetic["intrinsics"],
        synthetic["database"],
        synthetic["root"] / "sfm_sift",
    )
    conv = pycolmap.Reconstruction(out)
    assert conv.num_reg_images() == rec.num_reg_images() == 6
    assert conv.num_points3D() == rec.num_points3D() > 100
    for image_id, image in rec.images.items():
        other = conv.images[image_id]  # the database's ids are kept
        assert other.name == image.name
        assert other.camera.params == pytest.approx(image.camera.params)
        np.testing.assert_allclose(
            other.cam_from_world().matrix(), image.cam_from_world().matrix(), atol=1e-9
        )

    def observations(model: pycolmap.Reconstruction) -> list[set]:
        out = []
        for _, point in sorted(model.points3D.items()):
            obs = set()
            for el in point.track.elements:
                xy = model.images[el.image_id].points2D[el.point2D_idx].xy
                obs.add((el.image_id, round(xy[0], 6), round(xy[1], 6)))
            out.append((tuple(np.round(point.xyz, 9)), frozenset(obs)))
        return sorted(out)

    assert observations(conv) == observations(rec)
    # 2D points are where the 3D points project: same reprojection error.
    assert conv.compute_mean_reprojection_error() == pytest.approx(
        rec.compute_mean_reprojection_error(), abs=1e-6
    )


def test_conventions_of_a_hand_written_nvm(tmp_path: Path) -> None:
    """Quaternion = world-to-camera rotation (w first), then the camera CENTRE;
    measurements relative to the principal point."""
    R = pycolmap.Rotation3d(np.array([0.0, np.sin(0.2), 0.0, np.cos(0.2)]))
    center = np.array([1.0, -2.0, 0.5])
    point = np.array([0.3, -1.5, 6.0])
    f, cx, cy = 500.0, 320.0, 240.0
    x_cam = R.matrix() @ (point - center)
    uv = f * x_cam[:2] / x_cam[2]  # relative to the principal point
    qx, qy, qz, qw = R.quat
    (tmp_path / "m.nvm").write_text(
        "NVM_V3\n\n1\n"
        f"db/a.jpg {f} {qw} {qx} {qy} {qz} {center[0]} {center[1]} {center[2]} 0 0\n"
        f"\n1\n{point[0]} {point[1]} {point[2]} 10 20 30 1 0 17 {uv[0]} {uv[1]}\n\n0\n"
    )
    (tmp_path / "k.txt").write_text(f"db/a.jpg SIMPLE_PINHOLE 640 480 {f} {cx} {cy}\n")
    db = pycolmap.Database.open(tmp_path / "aachen.db")
    camera = pycolmap.Camera(
        model="SIMPLE_PINHOLE", width=640, height=480, params=[f, cx, cy]
    )
    camera_id = db.write_camera(camera)
    db.write_image(pycolmap.Image(name="db/a.jpg", camera_id=camera_id))
    db.close()
    rec = colmap_from_nvm.nvm_to_reconstruction(
        tmp_path / "m.nvm", tmp_path / "k.txt", tmp_path / "aachen.db"
    )
    image = next(iter(rec.images.values()))
    np.testing.assert_allclose(image.projection_center(), center, atol=1e-12)
    (p3d,) = rec.points3D.values()
    np.testing.assert_allclose(p3d.xyz, point)
    assert list(p3d.color) == [10, 20, 30]
    xy = image.points2D[p3d.track.elements[0].point2D_idx].xy
    np.testing.assert_allclose(xy, uv + [cx, cy], atol=1e-9)
    np.testing.assert_allclose(image.project_point(point), xy, atol=1e-9)


def test_images_missing_from_the_database(synthetic: dict, tmp_path: Path) -> None:
    db = pycolmap.Database.open(tmp_path / "empty.db")
    db.close()
    with pytest.raises(DatasetLayoutError, match=r"6 images of .*model.nvm are not in"):
        colmap_from_nvm.main(
            synthetic["nvm"],
            synthetic["intrinsics"],
            tmp_path / "empty.db",
            tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_truncated_nvm_names_the_line(synthetic: dict, tmp_path: Path) -> None:
    lines = Path(synthetic["nvm"]).read_text().splitlines()
    (tmp_path / "cut.nvm").write_text("\n".join(lines[:12]) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"cut\.nvm.*(NVM_V3|expected)"):
        colmap_from_nvm.read_nvm(tmp_path / "cut.nvm")
    (tmp_path / "bad.nvm").write_text("PLY\n")
    with pytest.raises(DatasetLayoutError, match="does not start with NVM_V3"):
        colmap_from_nvm.read_nvm(tmp_path / "bad.nvm")


def test_existing_model_is_kept(synthetic: dict, tmp_path: Path) -> None:
    args = (synthetic["nvm"], synthetic["intrinsics"], synthetic["database"])
    out = colmap_from_nvm.main(*args, tmp_path / "sfm")
    stamp = (out / "images.bin").stat().st_mtime_ns
    assert colmap_from_nvm.main(*args, tmp_path / "sfm") == out
    assert (out / "images.bin").stat().st_mtime_ns == stamp
    assert not (tmp_path / "sfm.tmp").exists()
