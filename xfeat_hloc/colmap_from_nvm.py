"""Convert an NVM model (VisualSfM's format, Aachen v1.0's reference model) to a
COLMAP model, and write NVM files.

Inputs, as published with Aachen day-night v1.0:

- ``aachen_cvpr2018_db.nvm``: ``NVM_V3``, the number of cameras, one line per
  camera ``name focal qw qx qy qz cx cy cz radial 0`` (the quaternion is the
  world-to-camera rotation, ``c`` the camera centre in world coordinates), the
  number of points, one line per point ``x y z r g b n`` followed by ``n``
  measurements ``image_index feature_index mx my``. Measurements are in pixels
  relative to the principal point (x right, y down).
- ``database_intrinsics.txt``: one line per image, ``name MODEL W H params...``
  in COLMAP's conventions (the NVM focal and radial values are ignored).
- ``aachen.db``: the COLMAP database of the SIFT model; only its image and camera
  ids are used, so that the COLMAP model keeps the database's ids.

The COLMAP model keeps the poses and the tracks. NVM files store only the
measured 2D points, so each image's ``points2D`` holds just its measurements
(``mx + cx``, ``my + cy`` in COLMAP pixels), in the order they appear in the file.
Memory grows linearly with the number of observations.
"""

from __future__ import annotations

import argparse
import sqlite3
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .errors import DatasetLayoutError, UserError
from .utils.parsers import parse_image_list


def read_database_ids(database: Path) -> tuple[dict[str, int], dict[str, int]]:
    """``{name: image_id}`` and ``{name: camera_id}`` from a COLMAP database."""
    database = Path(database)
    if not database.is_file():
        raise DatasetLayoutError(f"COLMAP database not found: {database}.")
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT name, image_id, camera_id FROM images"
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise DatasetLayoutError(
            f"{database} is not a readable COLMAP database ({error}). Download it "
            "again (see datasets/README.md)."
        ) from None
    image_ids = {name: int(image_id) for name, image_id, _ in rows}
    camera_ids = {name: int(camera_id) for name, _, camera_id in rows}
    logger.info("Found %d images in the database %s.", len(image_ids), database)
    return image_ids, camera_ids


def _tokens(f: TextIO) -> Iterator[tuple[int, list[str]]]:
    """Non-empty lines of an NVM file, split, with their line numbers."""
    for lineno, line in enumerate(f, 1):
        parts = line.split()
        if parts:
            yield lineno, parts


def _nvm_error(path: Path, lineno: int, what: str) -> UserError:
    return DatasetLayoutError(
        f"{path}:{lineno}: {what}. Is it a complete NVM_V3 file? Download it again "
        "(see datasets/README.md)."
    )


def read_nvm(
    path: Path, skip_points: bool = False
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """Parse the first model of an NVM file.

    Returns:
        ``cameras``: ``[(name, qvec wxyz world-to-camera, centre (3,))]`` in file
        order; ``points``: arrays ``xyz`` (P, 3), ``rgb`` (P, 3) uint8,
        ``track_offsets`` (P + 1,) into the observation arrays ``obs_image``
        (image index into ``cameras``), ``obs_xy`` (O, 2) measurements relative to
        the principal point.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"NVM file not found: {path}.")
    with open(path, encoding="utf-8") as f:
        lines = _tokens(f)
        lineno, parts = next(lines, (0, []))
        if not parts or not parts[0].startswith("NVM_V3"):
            raise _nvm_error(path, lineno, "the file does not start with NVM_V3")
        # (a "FixedK fx cx fy cy" calibration may follow NVM_V3: unused, the
        # intrinsics come from their own file)
        lineno, parts = next(lines, (lineno, []))
        try:
            num_cameras = int(parts[0])
        except (IndexError, ValueError):
            raise _nvm_error(path, lineno, "expected the number of cameras") from None
        cameras = []
        for _ in tqdm(range(num_cameras), desc="NVM cameras", unit="im"):
            lineno, parts = next(lines, (lineno, []))
            if len(parts) < 9:
                raise _nvm_error(path, lineno, "expected 'name f qw qx qy qz cx cy cz'")
            name = parts[0].strip('"')
            values = np.array(parts[2:9], float)
            cameras.append((name, values[:4], values[4:7]))
        lineno, parts = next(lines, (lineno, ["0"]))
        num_points = 0 if skip_points else int(parts[0])
        xyz = np.zeros((num_points, 3))
        rgb = np.zeros((num_points, 3), np.uint8)
        offsets = array("q", [0])
        obs_image = array("i")
        obs_xy = array("d")
        for i in tqdm(range(num_points), desc="NVM points", unit="pts"):
            lineno, parts = next(lines, (lineno, []))
            if len(parts) < 7:
                raise _nvm_error(path, lineno, "expected 'x y z r g b n ...'")
            n = int(parts[6])
            if len(parts) < 7 + 4 * n:
                raise _nvm_error(path, lineno, f"expected {n} measurements")
            xyz[i] = [float(v) for v in parts[:3]]
            rgb[i] = [int(float(v)) for v in parts[3:6]]
            measurements = parts[7 : 7 + 4 * n]
            obs_image.extend(int(v) for v in measurements[0::4])
            for x, y in zip(measurements[2::4], measurements[3::4], strict=True):
                obs_xy.append(float(x))
                obs_xy.append(float(y))
            offsets.append(offsets[-1] + n)
    if skip_points:
        logger.info("Skipped the points of %s.", path)
    points = {
        "xyz": xyz,
        "rgb": rgb,
        "track_offsets": np.frombuffer(offsets, np.int64),
        "obs_image": np.frombuffer(obs_image, np.int32),
        "obs_xy": np.frombuffer(obs_xy, np.float64).reshape(-1, 2),
    }
    return cameras, points


def nvm_to_reconstruction(
    nvm: Path,
    intrinsics: Path,
    database: Path,
    skip_points: bool = False,
) -> pycolmap.Reconstruction:
    """Build a COLMAP reconstruction from the NVM model (see the module doc)."""
    image_ids, camera_ids = read_database_ids(database)
    intrinsics_list = parse_image_list(intrinsics, with_intrinsics=True)
    cams, points = read_nvm(nvm, skip_points=skip_points)

    names = [name for name, _, _ in cams]
    known = dict(intrinsics_list)
    missing_db = [n for n in names if n not in image_ids]
    missing_k = [n for n in names if n not in known]
    for missing, where in ((missing_db, database), (missing_k, intrinsics)):
        if missing:
            raise DatasetLayoutError(
                f"{len(missing)} images of {nvm} are not in {where} (e.g. "
                f"{', '.join(missing[:3])}). The NVM, intrinsics and database files "
                "must come from the same dataset release."
            )

    rec = pycolmap.Reconstruction()
    # Observations of each image, in file order -> their point2D indices.
    obs_image = points["obs_image"]
    if len(obs_image) and (obs_image.min() < 0 or obs_image.max() >= len(cams)):
        raise DatasetLayoutError(f"{nvm}: a measurement names an unknown image index.")
    order = np.argsort(obs_image, kind="stable")
    counts = np.bincount(obs_image, minlength=len(cams))
    starts = np.concatenate([[0], np.cumsum(counts)])
    point2D_idx = np.empty(len(obs_image), np.int64)
    for index, (name, qvec, center) in enumerate(
        tqdm(cams, desc="COLMAP images", unit="im")
    ):
        cam = known[name]
        camera = pycolmap.Camera(
            camera_id=camera_ids[name],
            model=cam["model"],
            width=cam["width"],
            height=cam["height"],
            params=cam["params"],
        )
        if not rec.exists_camera(camera.camera_id):
            rec.add_camera_with_trivial_rig(camera)
        obs = order[starts[index] : starts[index + 1]]
        point2D_idx[obs] = np.arange(len(obs))
        keypoints = points["obs_xy"][obs] + _principal_point(camera)[None]
        image = pycolmap.Image(
            name=name,
            keypoints=keypoints.reshape(-1, 2),
            camera_id=camera.camera_id,
            image_id=image_ids[name],
        )
        quat_xyzw = np.roll(qvec / np.linalg.norm(qvec), -1)
        rotation = pycolmap.Rotation3d(quat_xyzw)
        translation = -(rotation.matrix() @ center)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(rotation, translation))

    offsets = points["track_offsets"]
    db_ids = np.array([image_ids[n] for n in names])
    for i in tqdm(range(len(points["xyz"])), desc="COLMAP points", unit="pts"):
        sl = slice(offsets[i], offsets[i + 1])
        track = pycolmap.Track(
            [
                pycolmap.TrackElement(int(image_id), int(idx))
                for image_id, idx in zip(
                    db_ids[obs_image[sl]], point2D_idx[sl], strict=True
                )
            ]
        )
        rec.add_point3D(points["xyz"][i], track, points["rgb"][i])
    rec.update_point_3d_errors()
    return rec


def main(
    nvm: Path,
    intrinsics: Path,
    database: Path,
    output: Path,
    skip_points: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the COLMAP model (binary) of an NVM model into ``output``.

    Skips the work when ``output`` already holds a model, unless ``overwrite``.
    """
    output = Path(output)
    if not overwrite and _is_model(output):
        logger.info("COLMAP model %s exists, skipping the NVM conversion.", output)
        return output
    rec = nvm_to_reconstruction(nvm, intrinsics, database, skip_points=skip_points)
    # Write into a temporary folder, then rename: a killed run leaves no half model.
    tmp = output.with_name(output.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(tmp))
    if output.exists():
        for child in output.iterdir():
            child.unlink()
        output.rmdir()
    tmp.rename(output)
    logger.info(
        "Wrote the COLMAP model %s: %d images, %d points.",
        output,
        rec.num_images(),
        rec.num_points3D(),
    )
    return output


def _principal_point(camera: pycolmap.Camera) -> np.ndarray:
    return np.array([camera.principal_point_x, camera.principal_point_y])


def _is_model(path: Path) -> bool:
    return all((path / f"{n}.bin").is_file() for n in ("cameras", "images"))


def write_nvm(rec: pycolmap.Reconstruction, path: Path) -> Path:
    """Write the registered images and points of ``rec`` as an NVM_V3 file.

    Camera lines carry the focal length (the mean of fx and fy) and no
    distortion; measurements are relative to each camera's principal point.
    Images are written in the order of their ids.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_ids = sorted(rec.reg_image_ids())
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"NVM_V3\n\n{len(image_ids)}\n")
        for image_id in image_ids:
            image = rec.images[image_id]
            pose = image.cam_from_world()
            qw_xyz = np.roll(pose.rotation.quat, 1)
            center = image.projection_center()
            camera = image.camera
            focal = 0.5 * (camera.focal_length_x + camera.focal_length_y)
            values = " ".join(f"{v:.17g}" for v in (*qw_xyz, *center))
            f.write(f"{image.name} {focal:.17g} {values} 0 0\n")
        f.write(f"\n{rec.num_points3D()}\n")
        for _, point in sorted(rec.points3D.items()):
            elements = [el for el in point.track.elements if el.image_id in index]
            parts = [
                *(f"{v:.17g}" for v in point.xyz),
                *(str(int(c)) for c in point.color),
                str(len(elements)),
            ]
            for el in elements:
                image = rec.images[el.image_id]
                xy = image.points2D[el.point2D_idx].xy - _principal_point(image.camera)
                parts += [
                    str(index[el.image_id]),
                    str(el.point2D_idx),
                    f"{xy[0]:.17g}",
                    f"{xy[1]:.17g}",
                ]
            f.write(" ".join(parts) + "\n")
        f.write("\n0\n")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nvm", required=True, type=Path)
    parser.add_argument("--intrinsics", required=True, type=Path)
    parser.add_argument("--database", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--skip-points", action="store_true")
    parser.add_argument("--overwrite", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    main(
        args.nvm,
        args.intrinsics,
        args.database,
        args.output,
        skip_points=args.skip_points,
        overwrite=args.overwrite,
    )
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(_parser)
    raise SystemExit(run_cli(_parser.parse_args()))
