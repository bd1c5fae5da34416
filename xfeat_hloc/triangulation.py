"""Triangulate 3D points from known camera poses (hloc's ``triangulation``).

``main`` copies the cameras, rigs, frames and images of a reference model into
a fresh COLMAP database, imports keypoints (+0.5, COLMAP's origin) and matches,
keeps the matches consistent with the known poses (epipolar distance within
``max_error`` times the keypoints' uncertainty), and triangulates with pycolmap.
Every two-view geometry carries a config (CALIBRATED) because COLMAP 4 skips
UNDEFINED ones; a result with no 3D point is an
:class:`~xfeat_hloc.errors.EmptyResultError`, never a silent success.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .errors import EmptyResultError, UserError
from .reconstruction import _parse_key_values, geometric_verification, make_options
from .utils import database as dbutil


def load_reference(reference_model: Path | pycolmap.Reconstruction):
    """The reference model, or a :class:`UserError` naming the missing path."""
    if isinstance(reference_model, pycolmap.Reconstruction):
        return reference_model
    path = Path(reference_model)
    if not path.is_dir():
        raise UserError(
            f"Reference model {path} does not exist: give a folder with a COLMAP "
            "model (cameras, images, points3D as .bin or .txt)."
        )
    try:
        return pycolmap.Reconstruction(str(path))
    except Exception as error:  # noqa: BLE001 - pycolmap raises plain errors
        raise UserError(f"Cannot read the COLMAP model in {path}: {error}") from None


def model_from_poses(
    cameras: dict[str, tuple[pycolmap.Camera, pycolmap.Rigid3d]],
) -> pycolmap.Reconstruction:
    """A COLMAP model with known cameras and poses, and no points.

    Args:
        cameras: ``{image name: (camera, cam_from_world)}``; each image gets its
            own camera (and trivial rig and frame). For Strecha ground truth:
            ``{n: (c.pycolmap_camera(), c.cam_from_world()) for n, c in gt.items()}``.
    """
    reconstruction = pycolmap.Reconstruction()
    for image_id, (name, (camera, cam_from_world)) in enumerate(
        sorted(cameras.items()), start=1
    ):
        camera = pycolmap.Camera(camera.todict())
        camera.camera_id = image_id
        reconstruction.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=name, camera_id=image_id, image_id=image_id)
        reconstruction.add_image_with_trivial_frame(image, cam_from_world)
    return reconstruction


def create_db_from_model(
    reference: pycolmap.Reconstruction, database: Path
) -> dict[str, int]:
    """A fresh database with the reference's cameras, rigs, frames and images
    (same ids); returns ``{image name: image_id}``."""
    dbutil.create_empty_database(database)
    with dbutil.open_database(database) as db:
        for camera in reference.cameras.values():
            db.write_camera(camera, use_camera_id=True)
        for rig in reference.rigs.values():
            db.write_rig(rig, use_rig_id=True)
        for frame in reference.frames.values():
            db.write_frame(frame, use_frame_id=True)
        for image in reference.images.values():
            db.write_image(image, use_image_id=True)
    return {image.name: image_id for image_id, image in reference.images.items()}


def epipolar_errors(
    cam1_from_cam0: pycolmap.Rigid3d, points0: np.ndarray, points1: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distances of normalized image points to their epipolar lines.

    Args:
        cam1_from_cam0: relative pose.
        points0, points1: ``(N, 2)`` matched points in normalized camera
            coordinates (``camera.cam_from_img``) of cameras 0 and 1.

    Returns:
        ``(errors0, errors1)``: the distance of each point in image 0 (1) to the
        epipolar line of its match, in normalized units.
    """
    E = np.asarray(pycolmap.essential_matrix_from_pose(cam1_from_cam0))
    h0 = np.concatenate([points0, np.ones((len(points0), 1))], 1)
    h1 = np.concatenate([points1, np.ones((len(points1), 1))], 1)
    lines1 = h0 @ E.T  # epipolar lines in image 1
    lines0 = h1 @ E  # epipolar lines in image 0
    algebraic = np.abs(np.sum(h1 * lines1, axis=1))
    errors0 = algebraic / np.maximum(np.linalg.norm(lines0[:, :2], axis=1), 1e-12)
    errors1 = algebraic / np.maximum(np.linalg.norm(lines1[:, :2], axis=1), 1e-12)
    return errors0, errors1


class _Keypoints:
    """Keypoints of images in normalized camera coordinates, with a small cache."""

    def __init__(self, fd: h5py.File, reference: pycolmap.Reconstruction) -> None:
        self.fd = fd
        self.reference = reference
        self.cache: OrderedDict[int, tuple[np.ndarray, float]] = OrderedDict()

    def get(self, image_id: int) -> tuple[np.ndarray, float]:
        """``(points (N, 2) normalized, threshold scale in normalized units)``."""
        if image_id in self.cache:
            self.cache.move_to_end(image_id)
            return self.cache[image_id]
        image = self.reference.images[image_id]
        camera = self.reference.cameras[image.camera_id]
        dset = self.fd[image.name]["keypoints"]
        pixels = dset[()].astype(np.float64) + 0.5  # COLMAP's origin
        noise = float(dset.attrs.get("uncertainty", 1.0))
        points = (
            np.asarray(camera.cam_from_img(pixels)) if len(pixels) else np.zeros((0, 2))
        )
        value = (points, camera.cam_from_img_threshold(noise))
        self.cache[image_id] = value
        if len(self.cache) > 64:
            self.cache.popitem(last=False)
        return value


def verify_with_poses(
    ids: dict[str, int],
    reference: pycolmap.Reconstruction,
    db: pycolmap.Database,
    features: Path,
    pairs: list[tuple[str, str]],
    matches: Path,
    min_match_score: float | None = None,
    max_error: float = 4.0,
) -> list[float]:
    """Keep the matches whose epipolar error under the known poses is within
    ``max_error`` times each keypoint's uncertainty (``keypoints`` attribute
    ``uncertainty``, 1 px if absent); returns the inlier ratio of each pair."""
    ratios: list[float] = []
    with (
        h5py.File(str(features), "r", libver="latest") as ffd,
        h5py.File(str(matches), "r", libver="latest") as mfd,
    ):
        keypoints = _Keypoints(ffd, reference)
        for name0, name1 in tqdm(pairs, desc="verify with poses", unit="pair"):
            id0, id1 = ids[name0], ids[name1]
            pair_matches = dbutil.read_pair_matches(mfd, name0, name1, min_match_score)
            if len(pair_matches) == 0:
                dbutil.write_verified_pair(db, id0, id1, pair_matches)
                ratios.append(0.0)
                continue
            points0, scale0 = keypoints.get(id0)
            points1, scale1 = keypoints.get(id1)
            image0, image1 = reference.images[id0], reference.images[id1]
            cam1_from_cam0 = image1.cam_from_world() * image0.cam_from_world().inverse()
            errors0, errors1 = epipolar_errors(
                cam1_from_cam0,
                points0[pair_matches[:, 0]],
                points1[pair_matches[:, 1]],
            )
            valid = (errors0 <= scale0 * max_error) & (errors1 <= scale1 * max_error)
            dbutil.write_verified_pair(db, id0, id1, pair_matches[valid])
            ratios.append(float(valid.mean()))
    return ratios


def run_triangulation(
    sfm_dir: Path,
    database: Path,
    image_dir: Path,
    reference: pycolmap.Reconstruction,
    verbose: bool = False,
    options: dict[str, Any] | None = None,
) -> pycolmap.Reconstruction:
    """Triangulate with pycolmap; the model is written to ``sfm_dir``."""
    sfm_dir.mkdir(parents=True, exist_ok=True)
    options = make_options(
        pycolmap.IncrementalPipelineOptions, options, "mapper options"
    )
    with dbutil.colmap_output(verbose):
        return pycolmap.triangulate_points(
            reference, str(database), str(image_dir), str(sfm_dir), options=options
        )


def main(
    sfm_dir: Path,
    reference_model: Path | pycolmap.Reconstruction,
    image_dir: Path,
    pairs: Path,
    features: Path,
    matches: Path,
    skip_geometric_verification: bool = False,
    estimate_two_view_geometries: bool = False,
    min_match_score: float | None = None,
    verbose: bool = False,
    mapper_options: dict[str, Any] | None = None,
    max_error: float = 4.0,
) -> pycolmap.Reconstruction:
    """Triangulate the matches of ``pairs`` with the poses of a reference model.

    Args:
        sfm_dir: output folder (``database.db`` and the model's ``*.bin``).
        reference_model: a COLMAP model (folder or object) with the poses and
            cameras; its images need not have 2D or 3D points. Its image names
            must be the names used in ``features`` and ``matches``.
        image_dir: the images (COLMAP reads them to colour the points).
        skip_geometric_verification: keep every match.
        estimate_two_view_geometries: verify with RANSAC (E/F/H) instead of the
            known poses.
        min_match_score: keep matches whose score is above it.
        mapper_options: ``pycolmap.IncrementalPipelineOptions`` fields.
        max_error: epipolar threshold in multiples of the keypoint uncertainty.

    Returns:
        The triangulated model (also written to ``sfm_dir``).

    Raises:
        UserError: a missing input, or images of the model without features.
        EmptyResultError: no 3D point could be triangulated.
    """
    sfm_dir, image_dir = Path(sfm_dir), Path(image_dir)
    pairs, features, matches = Path(pairs), Path(features), Path(matches)
    reference = load_reference(reference_model)
    for what, path in (("features", features), ("pairs", pairs), ("matches", matches)):
        if not path.exists():
            raise UserError(f"The {what} file {path} does not exist.")
    if reference.num_reg_images() == 0:
        raise UserError("The reference model has no registered image (no pose).")

    sfm_dir.mkdir(parents=True, exist_ok=True)
    database = sfm_dir / "database.db"
    ids = create_db_from_model(reference, database)
    pair_list = dbutil.unique_pairs(pairs, ids)
    if not pair_list:
        raise EmptyResultError(f"The pairs file {pairs} has no usable pair.")
    with dbutil.open_database(database) as db:
        dbutil.import_keypoints(ids, db, features)
        counts = dbutil.import_matches(
            ids, db, pair_list, matches, min_match_score, skip_geometric_verification
        )
    logger.info(
        "Imported %d images, %d pairs, %d matches.",
        len(ids),
        len(pair_list),
        sum(counts.values()),
    )
    if not skip_geometric_verification:
        if estimate_two_view_geometries:
            geometric_verification(
                database, [(ids[a], ids[b]) for a, b in pair_list], None, verbose
            )
        else:
            with dbutil.open_database(database) as db:
                ratios = verify_with_poses(
                    ids,
                    reference,
                    db,
                    features,
                    pair_list,
                    matches,
                    min_match_score,
                    max_error,
                )
            logger.info(
                "Matches consistent with the poses: mean %.1f%%, median %.1f%%, "
                "min %.1f%%, max %.1f%% per pair.",
                *(100 * f(ratios) for f in (np.mean, np.median, np.min, np.max)),
            )

    reconstruction = run_triangulation(
        sfm_dir, database, image_dir, reference, verbose, mapper_options
    )
    num_points = reconstruction.num_points3D()
    if num_points == 0:
        raise EmptyResultError(
            f"Triangulation produced no 3D point from {len(pair_list)} pairs: the "
            "matches do not agree with the reference poses (wrong model for these "
            "images, or image names that do not match), or the images do not "
            "overlap."
        )
    logger.info(
        "Triangulated %d 3D points, mean track length %.2f, mean reprojection "
        "error %.2f px.",
        num_points,
        reconstruction.compute_mean_track_length(),
        reconstruction.compute_mean_reprojection_error(),
    )
    return reconstruction


# --------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sfm_dir", type=Path, required=True)
    parser.add_argument("--reference_sfm_model", type=Path, required=True)
    parser.add_argument("--image_dir", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--matches", type=Path, required=True)
    parser.add_argument("--skip_geometric_verification", action="store_true")
    parser.add_argument("--estimate_two_view_geometries", action="store_true")
    parser.add_argument("--min_match_score", type=float)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--mapper_options", nargs="+", default=[], metavar="K=V")


def run_cli(args: argparse.Namespace) -> int:
    main(
        args.sfm_dir,
        args.reference_sfm_model,
        args.image_dir,
        args.pairs,
        args.features,
        args.matches,
        skip_geometric_verification=args.skip_geometric_verification,
        estimate_two_view_geometries=args.estimate_two_view_geometries,
        min_match_score=args.min_match_score,
        verbose=args.verbose,
        mapper_options=_parse_key_values(args.mapper_options),
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run_cli(parser.parse_args()))
