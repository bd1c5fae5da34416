"""Filling a COLMAP database from hloc's files (features.h5, matches.h5, pairs.txt).

Shared by :mod:`xfeat_hloc.reconstruction` and :mod:`xfeat_hloc.triangulation`.
Keypoints in our h5 files have pixel centres at integer coordinates; COLMAP puts
them at +0.5, so 0.5 is added on import. COLMAP 4 ignores two-view geometries
whose ``config`` is UNDEFINED, so every geometry written here carries one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from ..errors import UserError
from .io import find_pair, get_keypoints, list_h5_names
from .parsers import parse_pairs

try:  # pycolmap >= 3.13 (4.x)
    _UNCALIBRATED = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
    _CALIBRATED = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
except AttributeError:  # pragma: no cover - very old pycolmap
    _UNCALIBRATED = _CALIBRATED = None


@contextlib.contextmanager
def colmap_output(verbose: bool) -> Iterator[None]:
    """Silence COLMAP's glog output to stderr unless ``verbose``."""
    logging = pycolmap.logging
    previous = (logging.alsologtostderr, logging.minloglevel)
    if not verbose:
        logging.alsologtostderr = False
        logging.minloglevel = max(previous[1], 1)  # warnings and errors only
    try:
        yield
    finally:
        logging.alsologtostderr, logging.minloglevel = previous


def open_database(path: Path) -> pycolmap.Database:
    """Open (create) a COLMAP database; usable as a context manager."""
    return pycolmap.Database.open(str(path))


def create_empty_database(path: Path) -> Path:
    """A fresh, empty database at ``path`` (an existing one is replaced).

    The database is cheap to rebuild from the h5 files, so rebuilding it makes a
    rerun after an interruption start from a consistent state.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            extra.unlink()
    with open_database(path):
        pass
    return path


def image_ids(database: Path) -> dict[str, int]:
    """``{image name: image_id}`` of the images in a database."""
    with open_database(database) as db:
        return {image.name: image.image_id for image in db.read_all_images()}


def import_keypoints(
    ids: dict[str, int], db: pycolmap.Database, features: Path
) -> dict[str, int]:
    """Write every image's keypoints (+0.5, COLMAP's origin); return their counts."""
    available = set(list_h5_names(features))
    missing = [name for name in ids if name not in available]
    if missing:
        raise UserError(
            f"{len(missing)} images have no features in {features} (e.g. "
            f"{missing[0]!r}). Run the extraction on the same images first."
        )
    counts: dict[str, int] = {}
    for name, image_id in tqdm(ids.items(), desc="import keypoints", unit="image"):
        keypoints = get_keypoints(features, name).astype(np.float32) + 0.5
        db.write_keypoints(image_id, keypoints)
        counts[name] = len(keypoints)
    return counts


def unique_pairs(pairs: Path, ids: dict[str, int]) -> list[tuple[str, str]]:
    """Pairs of a pairs file without self-pairs and duplicates (in either order).

    Raises:
        UserError: a pair names an image that is not in the database.
    """
    seen: set[tuple[int, int]] = set()
    out: list[tuple[str, str]] = []
    for name0, name1 in parse_pairs(pairs):
        for name in (name0, name1):
            if name not in ids:
                raise UserError(
                    f"Pairs file {pairs} names image {name!r}, which is not among "
                    "the images being reconstructed (check the image list and the "
                    "image folder)."
                )
        id0, id1 = ids[name0], ids[name1]
        key = (min(id0, id1), max(id0, id1))
        if id0 == id1 or key in seen:
            continue
        seen.add(key)
        out.append((name0, name1))
    return out


def read_pair_matches(
    fd, name0: str, name1: str, min_match_score: float | None
) -> np.ndarray:
    """Matches ``(M, 2)`` uint32 of a pair from an open matches.h5 file."""
    pair, reverse = find_pair(fd, name0, name1)
    group = fd[pair]
    matches0 = group["matches0"][()].astype(np.int64)
    valid = matches0 > -1
    if min_match_score is not None and "matching_scores0" in group:
        scores = group["matching_scores0"][()].astype(np.float32)
        valid &= scores > min_match_score
    idx = np.flatnonzero(valid)
    matches = np.stack([idx, matches0[idx]], -1)
    if reverse:
        matches = matches[:, ::-1]
    return np.ascontiguousarray(matches, dtype=np.uint32)


def import_matches(
    ids: dict[str, int],
    db: pycolmap.Database,
    pairs: list[tuple[str, str]],
    matches_path: Path,
    min_match_score: float | None = None,
    skip_geometric_verification: bool = False,
) -> dict[tuple[str, str], int]:
    """Write the raw matches of each pair (and, when verification is skipped, the
    same matches as verified inliers with an UNCALIBRATED config).

    Returns:
        ``{(name0, name1): number of matches}``.
    """
    import h5py

    counts: dict[tuple[str, str], int] = {}
    with h5py.File(str(matches_path), "r", libver="latest") as fd:
        for name0, name1 in tqdm(pairs, desc="import matches", unit="pair"):
            matches = read_pair_matches(fd, name0, name1, min_match_score)
            id0, id1 = ids[name0], ids[name1]
            db.write_matches(id0, id1, matches)
            counts[(name0, name1)] = len(matches)
            if skip_geometric_verification:
                geometry = pycolmap.TwoViewGeometry()
                geometry.inlier_matches = matches
                if len(matches) > 0 and _UNCALIBRATED is not None:
                    geometry.config = _UNCALIBRATED
                db.write_two_view_geometry(id0, id1, geometry)
    return counts


def write_verified_pair(
    db: pycolmap.Database,
    id0: int,
    id1: int,
    inliers: np.ndarray,
    calibrated: bool = True,
) -> None:
    """Write verified inlier matches of a pair with a config COLMAP 4 accepts."""
    geometry = pycolmap.TwoViewGeometry()
    geometry.inlier_matches = np.ascontiguousarray(inliers, dtype=np.uint32)
    if len(inliers) > 0 and _CALIBRATED is not None:
        geometry.config = _CALIBRATED if calibrated else _UNCALIBRATED
    db.write_two_view_geometry(id0, id1, geometry)


def verified_pair_counts(database: Path) -> dict[tuple[int, int], int]:
    """``{(image_id1, image_id2): number of inlier matches}`` of verified pairs."""
    with open_database(database) as db:
        pair_ids, geometries = db.read_two_view_geometries()
        out = {}
        for pair_id, geometry in zip(pair_ids, geometries, strict=True):
            id0, id1 = pycolmap.pair_id_to_image_pair(pair_id)
            out[(id0, id1)] = len(geometry.inlier_matches)
    return out
