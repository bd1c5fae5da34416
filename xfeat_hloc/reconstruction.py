"""Structure-from-motion from hloc's files with pycolmap (>= 3.13, 4.x tested).

``main`` builds a COLMAP database (cameras and images, keypoints + 0.5,
matches), verifies the matches geometrically, runs the incremental (or global)
mapper and writes the largest model to ``sfm_dir`` (``cameras``, ``images``,
``points3D`` and, with COLMAP 4, ``frames`` and ``rigs`` ``.bin`` files).
Nothing registering is an :class:`~xfeat_hloc.errors.EmptyResultError`, never a
silent ``None``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .errors import EmptyResultError, UserError
from .utils import database as dbutil
from .utils.io import list_h5_names
from .utils.parsers import parse_pairs

Intrinsics = pycolmap.Camera | Mapping[str, Any] | np.ndarray

#: Camera mode of :func:`import_images`: one camera per image size and EXIF camera.
GROUPED = "GROUPED"

#: Geometric verification used unless ``verification_options`` says otherwise:
#: COLMAP's defaults (at most 10000 RANSAC trials, 4 px). hloc's 20000 trials
#: doubled the time with no accuracy gain on the Strecha scenes; 1000 trials
#: were 4x faster on fountain-P11 (inlier ratio ~50%) but are too few for pairs
#: with 30% inliers, so the default stays robust.
DEFAULT_VERIFICATION: dict[str, Any] = {}


def make_options(cls: type, options: Any, what: str) -> Any:
    """A pycolmap options object from ``None``, a dict (nested allowed) or itself.

    Raises:
        UserError: an unknown option name or a value of the wrong type.
    """
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    try:
        return cls(dict(options))
    except (AttributeError, TypeError, ValueError) as error:
        known = ", ".join(sorted(cls().todict()))
        raise UserError(
            f"Invalid {what} {dict(options)}: {error}. Known: {known}."
        ) from None


# ------------------------------------------------------------------ cameras
def _as_camera(value: Intrinsics, width: int, height: int) -> pycolmap.Camera:
    """A pycolmap camera of size ``width`` x ``height`` from a camera, a dict
    (``model``, ``params``, optional ``width``/``height``) or a 3x3 K whose
    principal point uses pixel centres at integer coordinates (0.5 is added)."""
    if isinstance(value, pycolmap.Camera):
        camera = pycolmap.Camera(value.todict())
    elif isinstance(value, Mapping):
        camera = pycolmap.Camera(
            model=value["model"],
            width=int(value.get("width", width)),
            height=int(value.get("height", height)),
            params=np.asarray(value["params"], float),
        )
    else:
        K = np.asarray(value, float)
        if K.shape != (3, 3):
            raise UserError(f"Intrinsics must be a 3x3 K, a dict or a camera: {K}.")
        camera = pycolmap.Camera(
            model="PINHOLE",
            width=width,
            height=height,
            params=[K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5],
        )
    if (camera.width, camera.height) != (width, height):
        if camera.width <= 0 or camera.height <= 0:
            camera.width, camera.height = width, height
        else:
            raise UserError(
                f"Intrinsics for a {camera.width}x{camera.height} image given for "
                f"an image of {width}x{height} pixels."
            )
    camera.has_prior_focal_length = True
    return camera


def group_by_camera(
    image_dir: Path, image_list: list[str], options: pycolmap.ImageReaderOptions
) -> list[list[str]]:
    """Images grouped by the camera COLMAP infers for them: same size, same
    camera model and same focal length guess (from EXIF when present)."""
    groups: dict[tuple, list[str]] = {}
    for name in image_list:
        try:
            camera = pycolmap.infer_camera_from_image(str(image_dir / name), options)
        except Exception as error:  # noqa: BLE001 - pycolmap raises plain errors
            raise UserError(f"Cannot read image {image_dir / name}: {error}") from None
        key = (
            camera.width,
            camera.height,
            camera.model.name,
            tuple(np.round(camera.params, 6)),
            camera.has_prior_focal_length,
        )
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def import_images(
    image_dir: Path,
    database: Path,
    camera_mode: pycolmap.CameraMode | str,
    image_list: list[str],
    options: dict[str, Any] | None = None,
    intrinsics: Intrinsics | Mapping[str, Intrinsics] | None = None,
) -> dict[str, int]:
    """Import ``image_list`` (names relative to ``image_dir``) into the database.

    ``camera_mode`` is a ``pycolmap.CameraMode`` or ``"GROUPED"``: one camera
    per group of :func:`group_by_camera` (e.g. one camera for a set of photos of
    one size without EXIF, where COLMAP's AUTO makes one camera per image).
    ``intrinsics`` is one camera for all images (a ``pycolmap.Camera``, a dict or
    a 3x3 K) or ``{name: camera}``; it replaces the guessed cameras.
    """
    missing = [n for n in image_list if not (image_dir / n).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} images are missing from {image_dir} (e.g. "
            f"{missing[0]!r}): the features were extracted from another folder?"
        )
    per_image = isinstance(intrinsics, Mapping) and not (
        {"model", "params"} <= set(intrinsics)
    )
    if intrinsics is not None:
        camera_mode = (
            pycolmap.CameraMode.PER_IMAGE if per_image else pycolmap.CameraMode.SINGLE
        )
    reader_options = make_options(pycolmap.ImageReaderOptions, options, "image options")
    if camera_mode == GROUPED:
        groups = group_by_camera(image_dir, image_list, reader_options)
        logger.info(
            "%d camera(s) for %d images (grouped by size and EXIF).",
            len(groups),
            len(image_list),
        )
        batches = [(pycolmap.CameraMode.SINGLE, group) for group in groups]
    else:
        batches = [(camera_mode, list(image_list))]
    with pycolmap.ostream():
        for mode, names in batches:
            pycolmap.import_images(
                str(database),
                str(image_dir),
                mode,
                image_names=names,
                options=reader_options,
            )
    ids = dbutil.image_ids(database)
    if intrinsics is not None:
        with dbutil.open_database(database) as db:
            done: set[int] = set()
            for image in db.read_all_images():
                if image.camera_id in done:
                    continue
                value = intrinsics[image.name] if per_image else intrinsics
                guess = db.read_camera(image.camera_id)
                camera = _as_camera(value, guess.width, guess.height)
                camera.camera_id = image.camera_id
                db.update_camera(camera)
                done.add(image.camera_id)
    return ids


# ----------------------------------------------------------------- verification
def _verify_chunk(
    cameras: dict[int, pycolmap.Camera],
    keypoints: dict[int, np.ndarray],
    pairs: list[tuple[int, int, np.ndarray]],
    options: dict[str, Any],
) -> list[tuple[int, int, pycolmap.TwoViewGeometry]]:
    """Two-view geometries of ``(image_id0, image_id1, matches)`` (a worker's job)."""
    opts = pycolmap.TwoViewGeometryOptions(options)
    out = []
    for id0, id1, matches in pairs:
        geometry = pycolmap.estimate_two_view_geometry(
            cameras[id0], keypoints[id0], cameras[id1], keypoints[id1], matches, opts
        )
        out.append((id0, id1, geometry))
    return out


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def geometric_verification(
    database: Path,
    pairs: list[tuple[int, int]],
    options: dict[str, Any] | None = None,
    verbose: bool = False,
    num_workers: int | None = None,
) -> None:
    """Estimate E/F/H per pair with COLMAP's RANSAC and store the inlier matches.

    ``pycolmap.verify_matches`` uses one CPU core, and pycolmap holds the GIL, so
    the pairs are spread over ``num_workers`` processes (default on Linux: the
    CPU count, at most 8; elsewhere 1, which runs in this process). Same
    estimator, same options. The workers are forked (a spawned worker would
    re-run a user's unguarded script) and only call pycolmap, never torch.

    Args:
        pairs: ``(image_id0, image_id1)`` with matches in the database.
        options: ``pycolmap.TwoViewGeometryOptions`` fields.
    """
    options = dict(options if options is not None else DEFAULT_VERIFICATION)
    make_options(pycolmap.TwoViewGeometryOptions, options, "verification options")
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8) if sys.platform == "linux" else 1
    with dbutil.open_database(database) as db:
        cameras = {}
        keypoints = {}
        for image in db.read_all_images():
            cameras[image.image_id] = db.read_camera(image.camera_id)
            keypoints[image.image_id] = np.asarray(
                db.read_keypoints(image.image_id)[:, :2], np.float64
            )
        jobs = [(id0, id1, db.read_matches(id0, id1)) for id0, id1 in pairs]
    num_workers = max(1, min(num_workers, len(jobs) // 4))
    chunks = _chunks(jobs, max(1, -(-len(jobs) // (4 * num_workers))))
    results: list[tuple[int, int, pycolmap.TwoViewGeometry]] = []
    progress = tqdm(total=len(jobs), desc="verify", unit="pair")
    with dbutil.colmap_output(verbose):
        if num_workers == 1:
            for chunk in chunks:
                results += _verify_chunk(cameras, keypoints, chunk, options)
                progress.update(len(chunk))
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(num_workers, mp_context=context) as pool:
                futures = []
                for chunk in chunks:
                    ids = {i for id0, id1, _ in chunk for i in (id0, id1)}
                    futures.append(
                        pool.submit(
                            _verify_chunk,
                            {i: cameras[i] for i in ids},
                            {i: keypoints[i] for i in ids},
                            chunk,
                            options,
                        )
                    )
                for future in as_completed(futures):
                    part = future.result()
                    results += part
                    progress.update(len(part))
    progress.close()
    with dbutil.open_database(database) as db:
        for id0, id1, geometry in results:
            db.write_two_view_geometry(id0, id1, geometry)


# ------------------------------------------------------------------ mapping
def _run_mapper(
    mapper: str,
    database: Path,
    image_dir: Path,
    models_path: Path,
    options: Any,
    num_images: int,
    verbose: bool,
) -> dict[int, pycolmap.Reconstruction]:
    models_path.mkdir(parents=True, exist_ok=True)
    with dbutil.colmap_output(verbose):
        if mapper == "global":
            options = make_options(
                pycolmap.GlobalPipelineOptions, options, "global mapper options"
            )
            return pycolmap.global_mapping(
                str(database), str(image_dir), str(models_path), options=options
            )
        options = make_options(
            pycolmap.IncrementalPipelineOptions, options, "mapper options"
        )
        bars: list[tqdm] = []

        def new_model() -> None:
            if bars:
                bars[-1].close()
            bars.append(tqdm(total=num_images, desc=f"model {len(bars)}", unit="image"))
            bars[-1].update(2)

        def next_image() -> None:
            if bars:
                bars[-1].update(1)

        try:
            return pycolmap.incremental_mapping(
                str(database),
                str(image_dir),
                str(models_path),
                options=options,
                initial_image_pair_callback=new_model,
                next_image_callback=next_image,
            )
        finally:
            for bar in bars:
                bar.close()


def mapper_defaults(
    intrinsics_given: bool,
    refine_intrinsics: bool = False,
    mapper: str = "incremental",
) -> dict[str, Any]:
    """Mapper options that our defaults change from COLMAP's: known intrinsics
    stay fixed unless ``refine_intrinsics``. (The principal point is refined
    after mapping, see :func:`refine_principal_points`.)"""
    if not intrinsics_given or refine_intrinsics:
        return {}
    if mapper == "global":
        ba = {
            "refine_focal_length": False,
            "refine_principal_point": False,
            "refine_extra_params": False,
        }
        return {"mapper": {"bundle_adjustment": ba}}
    return {
        "ba_refine_focal_length": False,
        "ba_refine_principal_point": False,
        "ba_refine_extra_params": False,
        "mapper": {
            "abs_pose_refine_focal_length": False,
            "abs_pose_refine_extra_params": False,
        },
    }


def refine_principal_points(
    reconstruction: pycolmap.Reconstruction,
    min_images: int = 3,
    max_iterations: int = 50,
    loss_scale: float = 0.5,
) -> list[int]:
    """One global bundle adjustment that also refines the principal point of
    every camera seen by at least ``min_images`` registered images.

    COLMAP keeps principal points at the image centre; on real cameras (e.g.
    Strecha's, ~20 px off) that tilts every camera by a common ~0.5 degrees.
    Refining them during incremental mapping slows every local bundle adjustment
    and is ill-posed while the model is small; one robust (Cauchy) adjustment at
    the end, of the cameras shared by several images, measured as accurate and
    cheaper. Cameras with fewer images keep all their intrinsics here.

    The adjustment uses a Cauchy loss of scale ``loss_scale`` pixels: measured
    on fountain-P11 (XFeat, 4096 keypoints), 0.5 px put the principal point
    within 1 px of the truth where 1 px left it 2-4 px off (and a plain
    least-squares loss 3-5 px).

    Returns:
        The ids of the cameras whose principal point was refined.
    """
    counts: dict[int, int] = {}
    for image in reconstruction.images.values():
        if image.has_pose:
            counts[image.camera_id] = counts.get(image.camera_id, 0) + 1
    refined = sorted(c for c, n in counts.items() if n >= min_images)
    if not refined or reconstruction.num_points3D() == 0:
        return []
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = True
    options.print_summary = False
    options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    options.ceres.loss_function_scale = loss_scale
    options.ceres.solver_options.max_num_iterations = max_iterations
    config = pycolmap.BundleAdjustmentConfig()
    for image_id, image in reconstruction.images.items():
        if image.has_pose:
            config.add_image(image_id)
    for camera_id in counts:
        if camera_id not in refined:
            config.set_constant_cam_intrinsics(camera_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    pycolmap.create_default_bundle_adjuster(options, config, reconstruction).solve()
    return refined


def _merge(base: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _image_list(
    features: Path, image_dir: Path, image_list: list[str] | None
) -> list[str]:
    names = list(image_list) if image_list is not None else list_h5_names(features)
    if not names:
        raise EmptyResultError(
            f"No images to reconstruct: {features} holds no features. Run the "
            f"extraction on {image_dir} first."
        )
    return names


def main(
    sfm_dir: Path,
    image_dir: Path,
    pairs: Path,
    features: Path,
    matches: Path,
    camera_mode: pycolmap.CameraMode | str = GROUPED,
    verbose: bool = False,
    skip_geometric_verification: bool = False,
    min_match_score: float | None = None,
    image_list: list[str] | None = None,
    image_options: dict[str, Any] | None = None,
    mapper_options: dict[str, Any] | None = None,
    intrinsics: Intrinsics | Mapping[str, Intrinsics] | None = None,
    refine_intrinsics: bool = False,
    refine_principal_point: bool = True,
    verification_options: dict[str, Any] | None = None,
    mapper: str = "incremental",
    min_registered: int = 2,
    timings: dict[str, float] | None = None,
    num_workers: int | None = None,
) -> pycolmap.Reconstruction:
    """Reconstruct a scene from features, matches and pairs (hloc's signature).

    Args:
        sfm_dir: output folder: ``database.db``, ``models/`` (all models) and the
            largest model's ``*.bin`` files.
        image_dir: the images; names in the h5 files are relative to it.
        camera_mode: ``"GROUPED"`` (default: one camera per image size and EXIF
            camera, see :func:`group_by_camera`), or a ``pycolmap.CameraMode``
            (or its name). hloc's default, ``AUTO``, gives every image without
            EXIF its own camera, whose intrinsics are then poorly determined.
        skip_geometric_verification: trust the matches; they are written as
            verified with an UNCALIBRATED config (which COLMAP 4 requires).
        min_match_score: keep matches whose ``matching_scores0`` is above it.
        image_list: images to use (default: every image in ``features``).
        image_options: ``pycolmap.ImageReaderOptions`` fields (e.g.
            ``camera_model``).
        mapper_options: ``pycolmap.IncrementalPipelineOptions`` (or
            ``GlobalPipelineOptions``) fields, nested dicts allowed; applied over
            our defaults (see :func:`mapper_defaults`).
        intrinsics: known cameras: one for all images or ``{name: camera}``;
            each a ``pycolmap.Camera``, a dict (``model``, ``params``, optional
            ``width``, ``height``) or a 3x3 K with pixel centres at integer
            coordinates. Kept fixed unless ``refine_intrinsics``.
        refine_principal_point: after mapping, refine the principal points of
            cameras shared by 3 or more registered images (see
            :func:`refine_principal_points`); not with fixed known intrinsics.
        verification_options: ``pycolmap.TwoViewGeometryOptions`` fields.
        num_workers: processes of the geometric verification (default: the CPU
            count, at most 8).
        mapper: ``"incremental"`` or ``"global"`` (GLOMAP, when the installed
            pycolmap offers ``global_mapping``).
        min_registered: fewer registered images is an error.
        timings: if given, filled with the seconds of each stage (``database``,
            ``verification``, ``mapping``, ``principal_point``).

    Returns:
        The largest reconstruction.

    Raises:
        EmptyResultError: no model could be built (e.g. images do not overlap).
        UserError: a missing input file or an invalid option.
    """
    sfm_dir, image_dir = Path(sfm_dir), Path(image_dir)
    pairs, features, matches = Path(pairs), Path(features), Path(matches)
    for what, path in (("features", features), ("pairs", pairs), ("matches", matches)):
        if not path.exists():
            raise UserError(f"The {what} file {path} does not exist.")
    if not image_dir.is_dir():
        raise UserError(f"The image folder {image_dir} does not exist.")
    if mapper not in ("incremental", "global"):
        raise UserError(f"Unknown mapper {mapper!r}: use 'incremental' or 'global'.")
    if mapper == "global" and not hasattr(pycolmap, "global_mapping"):
        raise UserError(
            f"pycolmap {pycolmap.__version__} has no global_mapping: upgrade "
            "pycolmap (>= 3.12) or use mapper='incremental'."
        )
    if isinstance(camera_mode, str) and camera_mode.upper() != GROUPED:
        try:
            camera_mode = pycolmap.CameraMode.__members__[camera_mode.upper()]
        except KeyError:
            known = ", ".join([GROUPED, *pycolmap.CameraMode.__members__])
            raise UserError(
                f"Unknown camera mode {camera_mode!r}: use {known}."
            ) from None
    elif isinstance(camera_mode, str):
        camera_mode = GROUPED

    sfm_dir.mkdir(parents=True, exist_ok=True)
    database = sfm_dir / "database.db"
    timings = {} if timings is None else timings

    tic = time.perf_counter()
    names = _image_list(features, image_dir, image_list)
    if not any(a != b for a, b in parse_pairs(pairs)):
        raise EmptyResultError(
            f"The pairs file {pairs} has no pair of distinct images: nothing to "
            "reconstruct (at least 2 overlapping images are needed)."
        )
    dbutil.create_empty_database(database)
    ids = import_images(
        image_dir, database, camera_mode, names, image_options, intrinsics
    )
    pair_list = dbutil.unique_pairs(pairs, ids)
    if not pair_list:
        raise EmptyResultError(
            f"The pairs file {pairs} has no pair of distinct images: nothing to "
            "reconstruct (at least 2 overlapping images are needed)."
        )
    with dbutil.open_database(database) as db:
        dbutil.import_keypoints(ids, db, features)
        match_counts = dbutil.import_matches(
            ids, db, pair_list, matches, min_match_score, skip_geometric_verification
        )
    timings["database"] = time.perf_counter() - tic
    logger.info(
        "Imported %d images, %d pairs, %d matches (median %d per pair).",
        len(ids),
        len(pair_list),
        sum(match_counts.values()),
        int(np.median(list(match_counts.values()))),
    )

    tic = time.perf_counter()
    if not skip_geometric_verification:
        geometric_verification(
            database,
            [(ids[a], ids[b]) for a, b in pair_list],
            verification_options,
            verbose,
            num_workers,
        )
    timings["verification"] = time.perf_counter() - tic
    verified = dbutil.verified_pair_counts(database)
    min_inliers = 15
    good_pairs = sum(n >= min_inliers for n in verified.values())
    logger.info(
        "Geometric verification: %d of %d pairs with >= %d inlier matches "
        "(%d inliers in total), %.1f s.",
        good_pairs,
        len(pair_list),
        min_inliers,
        sum(verified.values()),
        timings["verification"],
    )
    if good_pairs == 0:
        raise EmptyResultError(
            f"No image pair of {image_dir} has {min_inliers} or more geometrically "
            f"verified matches ({len(pair_list)} pairs tried): the images do not "
            "overlap, or the matches are wrong. Nothing can be reconstructed."
        )

    options = _merge(
        mapper_defaults(intrinsics is not None, refine_intrinsics, mapper),
        mapper_options,
    )
    models_dir = sfm_dir / "models"
    if models_dir.exists():  # models of an earlier run would confuse the reader
        shutil.rmtree(models_dir)
    tic = time.perf_counter()
    models = _run_mapper(
        mapper, database, image_dir, models_dir, options, len(ids), verbose
    )
    timings["mapping"] = time.perf_counter() - tic
    if not models:
        raise EmptyResultError(
            f"COLMAP could not reconstruct any model from the {len(ids)} images "
            f"of {image_dir} ({good_pairs} verified pairs): no image pair has enough "
            "inlier matches and viewpoint change to start from; the images do not "
            "overlap enough. Add overlapping images."
        )
    index, reconstruction = max(
        models.items(), key=lambda item: item[1].num_reg_images()
    )
    num_reg = reconstruction.num_reg_images()
    logger.info(
        "%d model(s); the largest (#%d) registers %d of %d images, %d 3D points "
        "(mapping %.1f s).",
        len(models),
        index,
        num_reg,
        len(ids),
        reconstruction.num_points3D(),
        timings["mapping"],
    )
    if num_reg < min_registered:
        raise EmptyResultError(
            f"Only {num_reg} of {len(ids)} images registered (need "
            f"{min_registered}): the images of {image_dir} overlap too little."
        )
    if refine_principal_point and (intrinsics is None or refine_intrinsics):
        tic = time.perf_counter()
        refined = refine_principal_points(reconstruction)
        timings["principal_point"] = time.perf_counter() - tic
        logger.info(
            "Refined the principal point of %d camera(s) (%.1f s).",
            len(refined),
            timings["principal_point"],
        )
    registered = {img.name for img in reconstruction.images.values() if img.has_pose}
    unregistered = sorted(set(ids) - registered)
    if unregistered:
        logger.warning(
            "%d images not registered: %s%s",
            len(unregistered),
            ", ".join(unregistered[:10]),
            " ..." if len(unregistered) > 10 else "",
        )
    reconstruction.write(str(sfm_dir))
    logger.info("Wrote the model to %s.", sfm_dir)
    return reconstruction


# --------------------------------------------------------------------- CLI
def _parse_key_values(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings (dots for nesting) into a nested dict of literals."""
    import ast

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"Options are key=value pairs, got {item!r}.")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sfm_dir", type=Path, required=True)
    parser.add_argument("--image_dir", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--matches", type=Path, required=True)
    parser.add_argument(
        "--camera_mode",
        default=GROUPED,
        choices=[GROUPED, *pycolmap.CameraMode.__members__],
    )
    parser.add_argument("--skip_geometric_verification", action="store_true")
    parser.add_argument("--min_match_score", type=float)
    parser.add_argument("--mapper", default="incremental")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--mapper_options", nargs="+", default=[], metavar="K=V")
    parser.add_argument("--image_options", nargs="+", default=[], metavar="K=V")


def run_cli(args: argparse.Namespace) -> int:
    main(
        args.sfm_dir,
        args.image_dir,
        args.pairs,
        args.features,
        args.matches,
        camera_mode=args.camera_mode,
        skip_geometric_verification=args.skip_geometric_verification,
        min_match_score=args.min_match_score,
        mapper=args.mapper,
        verbose=args.verbose,
        mapper_options=_parse_key_values(args.mapper_options),
        image_options=_parse_key_values(args.image_options),
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run_cli(parser.parse_args()))
