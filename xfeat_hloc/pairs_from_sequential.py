"""Pairs for image sequences (video frames): each frame with its next
neighbours, plus optional loop-closure pairs.

Frames are ordered by a natural sort of their names (``frame2`` before
``frame10``). Loop closures come from any of:

- ``quadratic_overlap``: also pair frame i with i + 2^k, k < ``window_size``
  (COLMAP's sequential matcher does the same);
- ``loop_stride`` k: every k-th frame is a keyframe, and all keyframes are
  paired with each other;
- ``global_features``: an h5 file of global descriptors (hloc's retrieval
  format, dataset ``global_descriptor`` per image, e.g. from hloc's NetVLAD):
  each frame is paired with its ``num_loop`` most similar frames more than
  ``min_loop_gap`` frames away.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from . import logger
from .errors import EmptyResultError, UserError
from .pairs_from_exhaustive import Names, read_names
from .utils.parsers import write_pairs


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders the numbers inside names by value."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_global_descriptors(path: Path, names: Sequence[str]) -> np.ndarray:
    """``(len(names), D)`` float32 L2-normalised global descriptors."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Global features file not found: {path}.")
    with h5py.File(str(path), "r", libver="latest") as fd:
        missing = [n for n in names if n not in fd or "global_descriptor" not in fd[n]]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise UserError(
                f"{len(missing)} image(s) have no global_descriptor in {path}: "
                f"{shown}. Extract global features for all the frames."
            )
        desc = np.stack([fd[n]["global_descriptor"][()].reshape(-1) for n in names])
    desc = desc.astype(np.float32)
    norms = np.linalg.norm(desc, axis=1, keepdims=True)
    return desc / np.maximum(norms, 1e-12)


def sequential_pairs(
    num_frames: int,
    window_size: int = 10,
    quadratic_overlap: bool = False,
    loop_stride: int | None = None,
    similarity: np.ndarray | None = None,
    num_loop: int = 5,
    min_loop_gap: int | None = None,
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, i < j, sorted, each once (see the module doc).

    ``similarity``: ``(num_frames, num_frames)`` global descriptor similarity,
    for the retrieval loop closures.
    """
    if window_size < 1:
        raise UserError(f"window_size must be at least 1, got {window_size}.")
    offsets = set(range(1, window_size + 1))
    if quadratic_overlap:
        offsets |= {2**k for k in range(window_size)}
    pairs = {
        (i, i + d) for i in range(num_frames) for d in offsets if i + d < num_frames
    }
    if loop_stride is not None:
        if loop_stride < 1:
            raise UserError(f"loop_stride must be at least 1, got {loop_stride}.")
        keys = range(0, num_frames, loop_stride)
        pairs |= {(i, j) for i in keys for j in keys if i < j}
    if similarity is not None:
        gap = window_size if min_loop_gap is None else min_loop_gap
        index = np.arange(num_frames)
        for i in range(num_frames):
            far = np.abs(index - i) > gap
            candidates = index[far]
            if len(candidates) == 0:
                continue
            best = candidates[np.argsort(-similarity[i, far], kind="stable")]
            pairs |= {(min(i, j), max(i, j)) for j in best[:num_loop].tolist()}
    return sorted(pairs)


def main(
    output: Path,
    image_list: Names | None = None,
    features: Path | None = None,
    window_size: int = 10,
    quadratic_overlap: bool = False,
    loop_stride: int | None = None,
    global_features: Path | None = None,
    num_loop: int = 5,
    min_loop_gap: int | None = None,
) -> Path:
    """Write sequential pairs of the frames of ``image_list`` (or of the
    groups of ``features``), ``name0 name1`` per line, name0 the earlier frame.

    Args:
        window_size: pair each frame with the next ``window_size`` frames.
        quadratic_overlap: also pair frames 2^k apart (k < window_size).
        loop_stride: pair every ``loop_stride``-th frame with all the others.
        global_features: h5 of global descriptors, for retrieval loop closures.
        num_loop: loop-closure pairs per frame from the global descriptors.
        min_loop_gap: minimum distance in frames of such pairs (default:
            ``window_size``).
    """
    names = read_names(image_list, features)
    if names is None:
        raise UserError("Provide either a list of images or a features file.")
    names = sorted(names, key=natural_key)
    similarity = None
    if global_features is not None:
        desc = read_global_descriptors(Path(global_features), names)
        similarity = desc @ desc.T
    index_pairs = sequential_pairs(
        len(names),
        window_size,
        quadratic_overlap,
        loop_stride,
        similarity,
        num_loop,
        min_loop_gap,
    )
    if not index_pairs:
        raise EmptyResultError(
            f"No pair: {len(names)} frame(s). Sequential pairs need two frames."
        )
    logger.info("Found %d pairs among %d frames.", len(index_pairs), len(names))
    return write_pairs(Path(output), [(names[i], names[j]) for i, j in index_pairs])
