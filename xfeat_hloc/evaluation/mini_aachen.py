"""A miniature Aachen day-night dataset with ground truth, built from a Strecha scene.

The real Aachen queries have no public ground truth, so tests run the Aachen
pipelines on this miniature instead. From a Strecha scene (e.g. fountain-P11:
11 images with exact cameras) it writes:

- v1.1 layout (:func:`build_mini_aachen`): ``images_upright/db/*.jpg`` (database
  images), ``images_upright/query/{day,night}/<camera>/*.jpg`` (the held-out
  images; the night one darkened, tinted and noised), ``queries/
  {day,night}_time_queries_with_intrinsics.txt`` (``name PINHOLE W H fx fy cx cy``)
  and the reference model ``3D-models/aachen_v_1_1``: a COLMAP model of the
  database images with their ground-truth poses and 3D points triangulated from
  SIFT features (pycolmap's SIFT extraction, exhaustive matching and
  ``triangulate_points``), like the real Aachen SIFT models.
- v1.0 layout (:func:`mini_aachen_v1_0`): the same images and queries with the
  model as ``3D-models/aachen_cvpr2018_db.nvm`` + ``3D-models/
  database_intrinsics.txt`` + ``aachen.db`` (the SIFT database).
- ``ground_truth_queries.txt`` beside them: ``name qw qx qy qz tx ty tz`` per
  query (full name, world-to-camera, metres), read by :func:`read_ground_truth`.

Images are downscaled (long side ``long_side`` pixels); intrinsics are scaled
exactly per axis with pixel centres kept (``x' = (x + 0.5) * s - 0.5``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pycolmap

from .. import logger
from ..colmap_from_nvm import write_nvm
from ..errors import DatasetLayoutError
from ..results_file import pose_to_line, read_results
from .strecha import GTCamera, load_strecha_scene

# Strecha image -> (day|night, camera folder) for the held-out queries.
DEFAULT_QUERIES: dict[str, tuple[str, str]] = {
    "0002.jpg": ("day", "milestone"),
    "0005.jpg": ("night", "nexus5x"),
    "0008.jpg": ("day", "nexus4"),
}
GT_FILE = "ground_truth_queries.txt"
MODEL_V1_1 = "3D-models/aachen_v_1_1"


@dataclass(frozen=True)
class MiniAachen:
    """A built miniature dataset.

    Attributes:
        root: the dataset folder (pass it as ``--dataset``).
        version: "1.0" or "1.1".
        db_names: database image names, relative to ``root/images_upright``.
        queries: ``{query name: ground-truth cam_from_world}``.
    """

    root: Path
    version: str
    db_names: list[str] = field(default_factory=list)
    queries: dict[str, pycolmap.Rigid3d] = field(default_factory=dict)


def _scaled_pinhole(cam: GTCamera, width: int, height: int) -> list[float]:
    """COLMAP PINHOLE params (fx, fy, cx, cy; pixel centres at +0.5) of ``cam``
    resized to ``width`` x ``height``."""
    sx, sy = width / cam.width, height / cam.height
    K = cam.K
    # COLMAP's principal point is the zero-centred one plus 0.5, and a resize maps
    # x + 0.5 to (x + 0.5) * s: so the COLMAP value just scales.
    return [K[0, 0] * sx, K[1, 1] * sy, (K[0, 2] + 0.5) * sx, (K[1, 2] + 0.5) * sy]


def make_night(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """A "night" version of a BGR uint8 image: darker (gamma 1.6, 40 % gain),
    sodium-lamp tint, Gaussian sensor noise (sigma 3 grey levels)."""
    rng = np.random.default_rng(seed)
    x = image.astype(np.float32) / 255.0
    x = 0.4 * np.power(x, 1.6)
    x *= np.array([0.55, 0.8, 1.0], np.float32)  # B, G, R: orange light
    x = x * 255.0 + rng.normal(0.0, 3.0, x.shape).astype(np.float32)
    return np.clip(x, 0, 255).round().astype(np.uint8)


def _write_image(src: Path, dst: Path, size: tuple[int, int], night: bool) -> None:
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetLayoutError(f"Cannot read the Strecha image {src}.")
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if night:
        image = make_night(image)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), image, [cv2.IMWRITE_JPEG_QUALITY, 95])


def read_ground_truth(path: Path) -> dict[str, pycolmap.Rigid3d]:
    """``{name: cam_from_world}`` from a ``name qw qx qy qz tx ty tz`` file (the
    results file format, with full query names)."""
    return read_results(path)


def _sift_model(
    root: Path,
    db_names: list[str],
    cameras: dict[str, list[float]],
    gt: dict[str, GTCamera],
    database: Path,
    with_points: bool,
) -> pycolmap.Reconstruction:
    """SIFT database + reference model of the database images with GT poses."""
    image_dir = root / "images_upright"
    if database.exists():
        database.unlink()
    reader = pycolmap.ImageReaderOptions(camera_model="PINHOLE")
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = min(4, os.cpu_count() or 1)
    # One camera per image, like the real Aachen models; all share the GT K.
    reader.camera_params = ",".join(f"{v:.17g}" for v in cameras[db_names[0]])
    pycolmap.extract_features(
        database,
        image_dir,
        image_names=db_names,
        camera_mode=pycolmap.CameraMode.PER_IMAGE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)

    rec = pycolmap.Reconstruction()
    db = pycolmap.Database.open(database)
    try:
        for camera in db.read_all_cameras():
            rec.add_camera_with_trivial_rig(camera)
        for db_image in db.read_all_images():
            keypoints = db.read_keypoints(db_image.image_id)[:, :2]
            if not with_points:
                keypoints = np.zeros((0, 2))
            image = pycolmap.Image(
                name=db_image.name,
                keypoints=keypoints.astype(np.float64),
                camera_id=db_image.camera_id,
                image_id=db_image.image_id,
            )
            pose = gt[Path(db_image.name).name].cam_from_world()
            rec.add_image_with_trivial_frame(image, pose)
    finally:
        db.close()
    if not with_points:
        return rec
    tmp = root / "3D-models" / "_triangulation"
    tmp.mkdir(parents=True, exist_ok=True)
    rec = pycolmap.triangulate_points(rec, database, image_dir, tmp)
    shutil.rmtree(tmp)
    logger.info(
        "Mini Aachen SIFT model: %d images, %d points, track length %.2f, "
        "reprojection error %.2f px.",
        rec.num_reg_images(),
        rec.num_points3D(),
        rec.compute_mean_track_length(),
        rec.compute_mean_reprojection_error(),
    )
    return rec


def build_mini_aachen(
    scene_dir: Path,
    output: Path,
    long_side: int = 1024,
    queries: dict[str, tuple[str, str]] | None = None,
    with_points: bool = True,
) -> MiniAachen:
    """Write the Aachen v1.1 layout of a Strecha scene into ``output`` (see the
    module doc). An existing ``output`` is replaced."""
    output = Path(output)
    image_dir, gt = load_strecha_scene(Path(scene_dir))
    queries = DEFAULT_QUERIES if queries is None else queries
    unknown = sorted(set(queries) - set(gt))
    if unknown:
        raise DatasetLayoutError(f"Query images {unknown} are not in {scene_dir}.")
    if output.exists():
        shutil.rmtree(output)
    (output / "queries").mkdir(parents=True)

    names: dict[str, str] = {}  # strecha name -> name in images_upright
    cameras: dict[str, list[float]] = {}
    size: tuple[int, int] = (0, 0)
    for strecha_name, cam in gt.items():
        scale = long_side / max(cam.width, cam.height)
        size = (round(cam.width * scale), round(cam.height * scale))
        if strecha_name in queries:
            time, folder = queries[strecha_name]
            name = f"query/{time}/{folder}/{strecha_name}"
        else:
            name = f"db/{strecha_name}"
        night = strecha_name in queries and queries[strecha_name][0] == "night"
        _write_image(
            image_dir / strecha_name, output / "images_upright" / name, size, night
        )
        names[strecha_name] = name
        cameras[name] = _scaled_pinhole(cam, *size)

    query_poses = {}
    lists: dict[str, list[str]] = {"day": [], "night": []}
    for strecha_name, (time, _) in sorted(queries.items()):
        name = names[strecha_name]
        params = " ".join(f"{v:.17g}" for v in cameras[name])
        lists[time].append(f"{name} PINHOLE {size[0]} {size[1]} {params}\n")
        query_poses[name] = gt[strecha_name].cam_from_world()
    for time, lines in lists.items():
        if lines:
            path = output / "queries" / f"{time}_time_queries_with_intrinsics.txt"
            path.write_text("".join(lines))
    ground_truth_path(output).write_text(
        "".join(pose_to_line(n, p) for n, p in query_poses.items())
    )

    db_names = sorted(names[n] for n in gt if n not in queries)
    database = output / "3D-models" / "sift.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    rec = _sift_model(output, db_names, cameras, gt, database, with_points)
    model = output / MODEL_V1_1
    model.mkdir(parents=True)
    rec.write_binary(str(model))
    database.unlink()
    return MiniAachen(output, "1.1", db_names, query_poses)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files where the file system allows it."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def _copy_images_and_queries(source: MiniAachen, output: Path) -> None:
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    for folder in ("images_upright", "queries"):
        _link_tree(source.root / folder, output / folder)
    gt = ground_truth_path(source.root)
    if gt.exists():
        shutil.copy2(gt, ground_truth_path(output))


def ground_truth_path(root: Path) -> Path:
    """Where the builder writes the query ground truth of dataset ``root``
    (beside it, not inside it: the real datasets have no such file)."""
    root = Path(root)
    return root.parent / f"{root.name}_{GT_FILE}"


def mini_aachen_v1_0(source: MiniAachen, output: Path) -> MiniAachen:
    """The Aachen v1.0 layout of a v1.1 miniature: the same images and query lists,
    the reference model as ``3D-models/aachen_cvpr2018_db.nvm`` +
    ``3D-models/database_intrinsics.txt`` + ``aachen.db`` (a COLMAP database with
    the cameras, images and keypoints, with the model's ids)."""
    output = Path(output)
    _copy_images_and_queries(source, output)
    _write_v1_0_model(pycolmap.Reconstruction(source.root / MODEL_V1_1), output)
    return MiniAachen(output, "1.0", source.db_names, source.queries)


def _write_v1_0_model(rec: pycolmap.Reconstruction, output: Path) -> None:
    models_dir = output / "3D-models"
    models_dir.mkdir(parents=True, exist_ok=True)
    write_nvm(rec, models_dir / "aachen_cvpr2018_db.nvm")
    with open(models_dir / "database_intrinsics.txt", "w", encoding="utf-8") as f:
        for image in sorted(rec.images.values(), key=lambda im: im.name):
            cam = image.camera
            params = " ".join(f"{v:.17g}" for v in cam.params)
            f.write(
                f"{image.name} {cam.model.name} {cam.width} {cam.height} {params}\n"
            )
    _database_from_model(rec, output / "aachen.db")


def without_points(
    source: MiniAachen, output: Path, version: str = "1.1"
) -> MiniAachen:
    """A copy of a v1.1 miniature whose reference model has no 3D points (poses
    only), in the layout of ``version``."""
    output = Path(output)
    if source.version != "1.1":
        raise ValueError("without_points needs a v1.1 miniature as its source.")
    _copy_images_and_queries(source, output)
    rec = pycolmap.Reconstruction(source.root / MODEL_V1_1)
    empty = pycolmap.Reconstruction()
    for camera in rec.cameras.values():
        empty.add_camera_with_trivial_rig(camera)
    for image in rec.images.values():
        bare = pycolmap.Image(
            name=image.name, camera_id=image.camera_id, image_id=image.image_id
        )
        empty.add_image_with_trivial_frame(bare, image.cam_from_world())
    if version == "1.0":
        _write_v1_0_model(empty, output)
    else:
        model = output / MODEL_V1_1
        model.mkdir(parents=True)
        empty.write_binary(str(model))
    return MiniAachen(output, version, source.db_names, source.queries)


def _database_from_model(rec: pycolmap.Reconstruction, path: Path) -> None:
    """A COLMAP database holding the cameras and images (with keypoints) of ``rec``,
    with the same ids."""
    if path.exists():
        path.unlink()
    db = pycolmap.Database.open(path)
    try:
        for camera in rec.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for image in rec.images.values():
            written = pycolmap.Image(
                name=image.name, camera_id=image.camera_id, image_id=image.image_id
            )
            db.write_image(written, use_image_id=True)
            keypoints = np.array([p.xy for p in image.points2D], np.float32)
            db.write_keypoints(image.image_id, keypoints.reshape(-1, 2))
    finally:
        db.close()
