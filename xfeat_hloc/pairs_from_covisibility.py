"""Pairs of images that see the same 3D points in a COLMAP model: hloc's
``pairs_from_covisibility``, with the same ``main`` signature.

Covisibility is the number of 3D points two images share. (hloc counts pairs
of observations instead, so a track holding two keypoints of one image counts
twice there; rankings rarely differ.) The counts come from one sparse matrix
product, fast on models with millions of points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import scipy.sparse
from tqdm import tqdm

from . import logger
from .errors import EmptyResultError, UserError
from .utils.parsers import write_pairs


def read_model(model: Path) -> pycolmap.Reconstruction:
    """A COLMAP model folder (``.bin`` or ``.txt`` files) read with pycolmap."""
    model = Path(model)
    if not any((model / f).is_file() for f in ("images.bin", "images.txt")):
        raise UserError(
            f"No COLMAP model in {model}: expected cameras, images and points3D "
            "files (.bin or .txt)."
        )
    try:
        return pycolmap.Reconstruction(model)
    except Exception as error:  # pycolmap raises plain RuntimeError/ValueError
        raise UserError(f"Cannot read the COLMAP model in {model}: {error}") from None


def covisibility_counts(
    reconstruction: pycolmap.Reconstruction,
) -> tuple[list[int], scipy.sparse.csr_array]:
    """Image ids (sorted) and the matrix of the number of 3D points that each
    two of them share (zero diagonal)."""
    image_ids = sorted(reconstruction.images)
    rows, cols = [], []
    for row, image_id in enumerate(tqdm(image_ids, desc="read model", unit="img")):
        observations = reconstruction.images[image_id].get_observation_points2D()
        point_ids = np.unique([p.point3D_id for p in observations])
        rows.append(np.full(len(point_ids), row))
        cols.append(point_ids)
    rows_a = np.concatenate(rows) if rows else np.zeros(0, int)
    cols_a = np.concatenate(cols) if cols else np.zeros(0, int)
    _, cols_a = np.unique(cols_a, return_inverse=True)  # compact point index
    incidence = scipy.sparse.csr_array(
        (np.ones(len(rows_a), np.int32), (rows_a, cols_a)),
        shape=(len(image_ids), int(cols_a.max(initial=-1)) + 1),
    )
    counts = (incidence @ incidence.T).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return image_ids, counts


def covisible_pairs(
    reconstruction: pycolmap.Reconstruction, num_matched: int
) -> list[tuple[str, str]]:
    """For each image, the ``num_matched`` images that share the most 3D points
    with it, most shared first (ties: lower image id first)."""
    image_ids, counts = covisibility_counts(reconstruction)
    names = [reconstruction.images[i].name for i in image_ids]
    pairs: list[tuple[str, str]] = []
    for row, name in enumerate(names):
        start, stop = counts.indptr[row], counts.indptr[row + 1]
        others, shared = counts.indices[start:stop], counts.data[start:stop]
        if len(others) == 0:
            logger.info("Image %s does not have any covisibility.", name)
            continue
        order = np.lexsort((others, -shared))[:num_matched]
        pairs += [(name, names[j]) for j in others[order]]
    return pairs


def main(model: Path, output: Path, num_matched: int) -> Path:
    """Write, for each image of the COLMAP ``model`` (a folder of ``.bin`` or
    ``.txt`` files), its ``num_matched`` most covisible images as
    ``name0 name1`` lines."""
    if num_matched < 1:
        raise UserError(f"num_matched must be at least 1, got {num_matched}.")
    logger.info("Reading the COLMAP model %s...", model)
    reconstruction = read_model(Path(model))
    pairs = covisible_pairs(reconstruction, num_matched)
    if not pairs:
        raise EmptyResultError(
            f"The COLMAP model {model} has no covisible images (no 3D point seen "
            "by two images): no pairs."
        )
    logger.info("Found %d pairs.", len(pairs))
    return write_pairs(Path(output), pairs)
