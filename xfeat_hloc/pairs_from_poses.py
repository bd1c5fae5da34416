"""Image pairs from camera poses, for reference models without 3D points.

For each image, the ``num_matched`` images with the nearest camera centres among
those whose viewing directions differ by at most ``max_angle`` degrees (images
that look at the same place from nearby). Memory is linear in the number of
images (one row of distances at a time); time is quadratic but cheap (a few
seconds for 10,000 images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .errors import EmptyResultError
from .utils.parsers import write_pairs


def pairs_from_poses(
    reconstruction: pycolmap.Reconstruction,
    num_matched: int,
    max_angle: float = 60.0,
) -> list[tuple[str, str]]:
    """``(name, neighbour name)`` pairs, ``num_matched`` per image at most."""
    images = [reconstruction.images[i] for i in sorted(reconstruction.reg_image_ids())]
    if len(images) < 2:
        return []
    names = [image.name for image in images]
    centers = np.stack([image.projection_center() for image in images])
    directions = np.stack([image.viewing_direction() for image in images])
    min_cos = np.cos(np.deg2rad(max_angle))
    pairs = []
    for i in tqdm(range(len(images)), desc="pairs from poses", unit="im"):
        dist = np.linalg.norm(centers - centers[i], axis=1)
        valid = directions @ directions[i] >= min_cos
        valid[i] = False
        candidates = np.flatnonzero(valid)
        if len(candidates) > num_matched:
            top = np.argpartition(dist[candidates], num_matched)[:num_matched]
            candidates = candidates[top]
        candidates = candidates[np.argsort(dist[candidates], kind="stable")]
        pairs += [(names[i], names[j]) for j in candidates]
    return pairs


def main(
    model: Path | pycolmap.Reconstruction,
    output: Path,
    num_matched: int,
    max_angle: float = 60.0,
) -> Path:
    """Write the pairs of :func:`pairs_from_poses` for a COLMAP model."""
    if not isinstance(model, pycolmap.Reconstruction):
        model = pycolmap.Reconstruction(str(model))
    pairs = pairs_from_poses(model, num_matched, max_angle)
    if not pairs:
        raise EmptyResultError(
            f"No pairs from the camera poses of {model.num_reg_images()} images "
            f"(viewing directions within {max_angle} deg): raise max_angle or use "
            "exhaustive pairs."
        )
    logger.info("Found %d pairs from camera poses.", len(pairs))
    return write_pairs(Path(output), pairs)
