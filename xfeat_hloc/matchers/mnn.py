"""Exact mutual nearest neighbours on descriptors (XFeat's matcher).

The similarity matrix is computed once, in chunks of rows that bound memory;
each chunk updates the best match of its rows and a running best of every
column. Ties go to the lowest index on both sides, like ``torch.max``, so the
matches are those of the official ``XFeat.match(..., min_cossim=-1)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..utils.base_model import BaseModel

#: Elements of one chunk of the similarity matrix (float32: 128 MiB).
CHUNK_ELEMENTS = 1 << 25


def mutual_nearest_neighbours(
    descriptors0: Tensor,
    descriptors1: Tensor,
    min_similarity: float | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Mutual nearest neighbours by dot product.

    Args:
        descriptors0: N0 x D (L2-normalised for cosine similarities).
        descriptors1: N1 x D.
        min_similarity: if not None, a match also needs a similarity above it.
        chunk_elements: at most this many similarities are held at once.

    Returns:
        ``matches0`` N0 int64 (index into descriptors1, -1 if unmatched) and
        ``similarity0`` N0 (the match's similarity, 0 if unmatched).
    """
    n0, n1 = descriptors0.shape[0], descriptors1.shape[0]
    device = descriptors0.device
    if n0 == 0 or n1 == 0:
        return (
            torch.full((n0,), -1, dtype=torch.long, device=device),
            torch.zeros(n0, device=device),
        )
    if descriptors0.dtype in (torch.float16, torch.bfloat16) and device.type == "cpu":
        descriptors0, descriptors1 = descriptors0.float(), descriptors1.float()
    descriptors1_t = descriptors1.t()
    best1 = torch.empty(n0, dtype=torch.long, device=device)
    best_sim0 = torch.empty(n0, dtype=descriptors0.dtype, device=device)
    col_max = torch.full((n1,), -torch.inf, dtype=descriptors0.dtype, device=device)
    col_arg = torch.zeros(n1, dtype=torch.long, device=device)
    rows = max(1, chunk_elements // n1)
    for start in range(0, n0, rows):
        stop = min(start + rows, n0)
        sim = descriptors0[start:stop] @ descriptors1_t
        torch.max(sim, dim=1, out=(best_sim0[start:stop], best1[start:stop]))
        chunk_max, chunk_arg = sim.max(dim=0)
        better = chunk_max > col_max  # strict: earlier rows win ties
        col_max = torch.where(better, chunk_max, col_max)
        col_arg = torch.where(better, chunk_arg + start, col_arg)
    index0 = torch.arange(n0, device=device)
    mutual = col_arg[best1] == index0
    if min_similarity is not None:
        mutual &= best_sim0 > min_similarity
    matches0 = torch.where(mutual, best1, -1)
    similarity0 = torch.where(mutual, best_sim0, 0).float()
    return matches0, similarity0


def invert_matches(matches0: Tensor, scores0: Tensor, n1: int) -> tuple[Tensor, Tensor]:
    """``matches1`` N1 and ``scores1`` N1 from one-to-one ``matches0``."""
    matches1 = torch.full((n1,), -1, dtype=torch.long, device=matches0.device)
    scores1 = torch.zeros(n1, dtype=scores0.dtype, device=scores0.device)
    valid = matches0 > -1
    index0 = torch.nonzero(valid)[:, 0]
    matches1[matches0[valid]] = index0
    scores1[matches0[valid]] = scores0[valid]
    return matches1, scores1


class MNN(BaseModel):
    """Mutual nearest neighbour matcher with hloc's sparse matcher contract.

    Input: ``descriptors0`` 1 x D x N0 and ``descriptors1`` 1 x D x N1
    (L2-normalised; hloc also passes keypoints, scores, sizes, which are
    ignored). Output: ``matches0`` 1 x N0 int64 (-1 = unmatched),
    ``matching_scores0`` 1 x N0 (cosine similarity, 0 if unmatched), and
    ``matches1``, ``matching_scores1`` the other way round.

    Conf: ``min_cossim`` (None = off): a match also needs a cosine similarity
    strictly above it.
    """

    default_conf: dict[str, Any] = {
        "min_cossim": None,
        "chunk_elements": CHUNK_ELEMENTS,
    }
    required_inputs = ["descriptors0", "descriptors1"]

    def _init(self, conf: dict[str, Any]) -> None:
        pass

    def _forward(self, data: dict[str, Any]) -> dict[str, Tensor]:
        descriptors0, descriptors1 = data["descriptors0"], data["descriptors1"]
        for name, d in (("descriptors0", descriptors0), ("descriptors1", descriptors1)):
            if d.dim() != 3 or d.shape[0] != 1:
                raise ValueError(f"{name} must be 1 x D x N, got {tuple(d.shape)}.")
        if descriptors0.shape[1] != descriptors1.shape[1]:
            raise ValueError(
                "descriptors0 and descriptors1 have different dimensions: "
                f"{descriptors0.shape[1]} and {descriptors1.shape[1]}."
            )
        matches0, scores0 = mutual_nearest_neighbours(
            descriptors0[0].t(),
            descriptors1[0].t(),
            self.conf["min_cossim"],
            self.conf["chunk_elements"],
        )
        matches1, scores1 = invert_matches(matches0, scores0, descriptors1.shape[-1])
        return {
            "matches0": matches0[None],
            "matching_scores0": scores0[None],
            "matches1": matches1[None],
            "matching_scores1": scores1[None],
        }
