"""Turning per-pair dense matches into one keypoint set per image (numpy only).

A dense matcher (XFeat*, LoFTR) returns points per PAIR; COLMAP needs one set of
keypoints per IMAGE and matches as indices into them. For one image:

1. :class:`VoteAccumulator` collects its points from every pair it is in. Each
   point votes, with its matching score as weight, for a sub-cell bin of side
   ``max_error`` inside a cell of side ``cell_size`` (pixels of the original
   image; cell/bin edges at ``-0.5 + k * size``, pixel centres at integers).
2. :meth:`VoteAccumulator.finalize` keeps, per cell, the bin with the largest
   total score and places the keypoint at the score-weighted mean of the points
   in that bin (hloc places it at the bin centre: we keep sub-bin accuracy, and
   points that coincide across pairs, like a matcher's coarse grid points, stay
   exact). Keypoints closer than ``max_error`` (one point split by a cell edge)
   are merged. The ``max_kps`` keypoints with the largest votes are kept.
3. :func:`assign_to_keypoints` maps every per-pair point to its nearest final
   keypoint within ``max_error`` (else -1), :func:`unique_matches` drops
   many-to-one matches (keeping the best score for each keypoint on both sides),
   and :func:`to_matches0` writes hloc's ``matches0`` / ``matching_scores0``.

With ``cell_size == 0`` an image keeps every distinct point exactly (hloc's
localization mode for queries).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

EXACT_TOLERANCE = 1e-3  # px: matching distance for points kept exactly


class VoteAccumulator:
    """Score-weighted votes of one image's per-pair points.

    Args:
        image_size: ``(W, H)`` of the original image, pixels.
        cell_size: side of a cell (at most one keypoint per cell), pixels;
            0 keeps every distinct point (no quantization).
        max_error: side of the voting bins inside a cell, pixels (clipped to
            ``cell_size``).
        compact_every: number of pending votes that triggers a reduction.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        cell_size: float,
        max_error: float,
        compact_every: int = 1_000_000,
    ) -> None:
        self.width, self.height = (int(v) for v in image_size)
        self.exact = not cell_size or cell_size <= 0
        self.cell_size = float(cell_size or 0.0)
        self.bin_size = min(float(max_error), self.cell_size) if not self.exact else 0
        if not self.exact and self.bin_size <= 0:
            raise ValueError("max_error must be > 0 when cell_size > 0.")
        if not self.exact:
            self.bins_per_cell = max(1, math.ceil(self.cell_size / self.bin_size))
            self.cells_x = math.ceil((self.width + 1) / self.cell_size) + 1
        self.compact_every = compact_every
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._num_pending = 0
        # reduced state: key -> total score, sum of score * x, sum of score * y
        self._keys = np.zeros(0, np.int64)
        self._w = np.zeros(0, np.float64)
        self._wx = np.zeros(0, np.float64)
        self._wy = np.zeros(0, np.float64)
        self._exact_xy = np.zeros((0, 2), np.float32)

    def _keys_of(self, points: np.ndarray) -> np.ndarray:
        """Pack (cell x, cell y, bin x, bin y) into one int64 per point."""
        edge = points.astype(np.float64) + 0.5  # pixel edges at 0
        edge[:, 0] = np.clip(edge[:, 0], 0.0, self.width + 0.5)
        edge[:, 1] = np.clip(edge[:, 1], 0.0, self.height + 0.5)
        cell = np.floor(edge / self.cell_size)
        within = np.floor((edge - cell * self.cell_size) / self.bin_size)
        within = np.clip(within, 0, self.bins_per_cell - 1).astype(np.int64)
        cell = cell.astype(np.int64)
        cell_id = cell[:, 1] * self.cells_x + cell[:, 0]
        nb = self.bins_per_cell
        return (cell_id * nb + within[:, 1]) * nb + within[:, 0]

    def add(self, points: np.ndarray, scores: np.ndarray) -> None:
        """Add the ``(N, 2)`` points of one pair with their ``(N,)`` scores."""
        points = np.asarray(points, np.float32).reshape(-1, 2)
        # a zero score still places its point (and counts a little)
        scores = np.maximum(np.asarray(scores, np.float64).reshape(-1), 1e-6)
        if len(points) == 0:
            return
        if self.exact:
            self._pending.append((points, scores))
        else:
            keys = self._keys_of(points)
            xy = points.astype(np.float64)
            self._pending.append((keys, scores, scores * xy[:, 0], scores * xy[:, 1]))
        self._num_pending += len(points)
        if self._num_pending >= self.compact_every:
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        if self.exact:
            xy = np.concatenate([self._exact_xy, *(p[0] for p in self._pending)])
            w = np.concatenate([self._w, *(p[1] for p in self._pending)])
            unique, inverse = np.unique(xy, axis=0, return_inverse=True)
            self._exact_xy = unique.astype(np.float32)
            self._w = np.bincount(inverse.reshape(-1), w, len(unique))
        else:
            keys = np.concatenate([self._keys, *(p[0] for p in self._pending)])
            parts = [
                np.concatenate([old, *(p[i] for p in self._pending)])
                for i, old in ((1, self._w), (2, self._wx), (3, self._wy))
            ]
            self._keys, inverse = np.unique(keys, return_inverse=True)
            n = len(self._keys)
            self._w, self._wx, self._wy = (np.bincount(inverse, v, n) for v in parts)
        self._pending = []
        self._num_pending = 0

    def finalize(self, max_kps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints ``(K, 2)`` float32 and their votes ``(K,)`` float32.

        Sorted by decreasing vote; at most ``max_kps`` (None: all cells).
        """
        self._compact()
        if self.exact:
            xy, votes = self._exact_xy, self._w
        else:
            if len(self._keys) == 0:
                return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
            cell_id = self._keys // (self.bins_per_cell**2)
            # per cell, the bin with the largest total score (smallest key on ties)
            order = np.lexsort((self._keys, -self._w, cell_id))
            first = np.ones(len(order), bool)
            first[1:] = cell_id[order[1:]] != cell_id[order[:-1]]
            best = order[first]
            votes = self._w[best]
            xy = np.stack([self._wx[best] / votes, self._wy[best] / votes], -1)
            xy, votes = merge_close(xy, votes, self.bin_size)
        order = np.argsort(-votes, kind="stable")
        if max_kps is not None:
            order = order[:max_kps]
        return xy[order].astype(np.float32), votes[order].astype(np.float32)


def merge_close(
    xy: np.ndarray, votes: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fold keypoints closer than ``radius`` into their most voted neighbour.

    Cells split observations of one point that straddle a cell edge into two
    keypoints a fraction of a pixel apart. Greedily, by decreasing vote, a
    keypoint absorbs the less voted keypoints within ``radius``: its position
    becomes the vote-weighted mean, its vote the sum.
    """
    if len(xy) < 2 or radius <= 0:
        return xy, votes
    close = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    if len(close) == 0:
        return xy, votes
    rank = np.empty(len(votes), np.int64)
    rank[np.lexsort((np.arange(len(votes)), -votes))] = np.arange(len(votes))
    neighbours: dict[int, list[int]] = {}
    for i, j in close:
        neighbours.setdefault(int(i), []).append(int(j))
        neighbours.setdefault(int(j), []).append(int(i))
    xy, votes = xy.copy(), votes.copy()
    absorbed = np.zeros(len(votes), bool)
    for i in sorted(neighbours, key=lambda k: rank[k]):
        if absorbed[i]:
            continue
        group = [j for j in neighbours[i] if not absorbed[j] and rank[j] > rank[i]]
        if not group:
            continue
        members = np.array([i, *group])
        weights = votes[members]
        xy[i] = (xy[members] * weights[:, None]).sum(0) / weights.sum()
        votes[i] = weights.sum()
        absorbed[group] = True
    return xy[~absorbed], votes[~absorbed]


def build_tree(keypoints: np.ndarray) -> cKDTree | None:
    """A KD-tree over ``(K, 2)`` keypoints (None when there are none)."""
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    return cKDTree(keypoints) if len(keypoints) else None


def assign_to_keypoints(
    points: np.ndarray,
    keypoints: np.ndarray | None,
    max_error: float,
    tree: cKDTree | None = None,
) -> np.ndarray:
    """Index of the nearest keypoint within ``max_error`` px of each point, else -1.

    Args:
        points: ``(N, 2)`` per-pair points.
        keypoints: ``(K, 2)`` final keypoints of the image (or pass ``tree``).
        max_error: maximum distance in pixels (inclusive); 0 means exact.
        tree: a prebuilt :func:`build_tree` of the keypoints.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if tree is None and keypoints is not None:
        tree = build_tree(keypoints)
    ids = np.full(len(points), -1, np.int64)
    if tree is None or len(points) == 0:
        return ids
    radius = max(float(max_error), EXACT_TOLERANCE) * (1 + 1e-9)
    dist, idx = tree.query(points, k=1, distance_upper_bound=radius)
    found = np.isfinite(dist)
    ids[found] = idx[found]
    return ids


def unique_matches(
    ids0: np.ndarray, ids1: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches from per-point assignments.

    Drops points assigned to no keypoint (-1). Where several matches share a
    keypoint (of image 0 or of image 1), only the one with the best score
    survives; a match survives only if it is the best for both its keypoints
    (ties: the earlier match).

    Returns:
        ``(i0, i1, scores)`` of the kept matches, in their input order.
    """
    ids0 = np.asarray(ids0, np.int64)
    ids1 = np.asarray(ids1, np.int64)
    scores = np.asarray(scores, np.float32)
    valid = np.flatnonzero((ids0 >= 0) & (ids1 >= 0))
    if len(valid) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    by_score = valid[np.argsort(-scores[valid], kind="stable")]
    _, first0 = np.unique(ids0[by_score], return_index=True)
    _, first1 = np.unique(ids1[by_score], return_index=True)
    keep = np.intersect1d(by_score[first0], by_score[first1])  # sorted = input order
    return ids0[keep], ids1[keep], scores[keep]


def to_matches0(
    i0: np.ndarray, i1: np.ndarray, scores: np.ndarray, num_keypoints0: int
) -> tuple[np.ndarray, np.ndarray]:
    """hloc's ``matches0`` ``(N0,)`` int32 (-1: unmatched) and ``matching_scores0``."""
    matches0 = np.full(num_keypoints0, -1, np.int32)
    scores0 = np.zeros(num_keypoints0, np.float32)
    matches0[i0] = i1
    scores0[i0] = scores
    return matches0, scores0
