"""Exact mutual nearest neighbours on descriptors (XFeat's matcher).

The similarity matrix is computed once, in chunks of rows that stay in cache
and bound memory; each chunk gives the best match of its rows and updates the
best value of every column. A row is a mutual candidate when its best value is
also the best of its column. The column winners of the candidates' columns are
then recomputed the other way round (descriptors1 x descriptors0, as the
official code does), where ``torch.max`` gives the first index on ties. So the
matches are those of the official ``XFeat.match(..., min_cossim=-1)``, ties
included, at about a third of its cost.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..utils.base_model import BaseModel

#: Elements of one chunk of the similarity matrix (float32: 28 MiB). The C
#: allocator recycles blocks below 32 MiB; larger ones are mapped afresh on each
#: call, and their page faults then cost as much as the product itself.
CHUNK_ELEMENTS = 7 << 20


def _row_best(
    rows: Tensor, columns_t: Tensor, chunk_elements: int, with_columns: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Best value and first best index of each row of ``rows @ columns_t``, and
    (if ``with_columns``) the best value of each column, chunk by chunk."""
    n0, n1 = rows.shape[0], columns_t.shape[1]
    step = max(1, min(n0, chunk_elements // max(n1, 1)))
    buffer = rows.new_empty(step, n1)
    best = rows.new_empty(n0)
    best_index = torch.empty(n0, dtype=torch.long, device=rows.device)
    column_best = rows.new_full((n1,), -torch.inf) if with_columns else None
    for start in range(0, n0, step):
        stop = min(start + step, n0)
        sim = torch.mm(rows[start:stop], columns_t, out=buffer[: stop - start])
        torch.max(sim, dim=1, out=(best[start:stop], best_index[start:stop]))
        if column_best is not None:
            torch.maximum(column_best, sim.amax(dim=0), out=column_best)
    return best, best_index, column_best


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
        ``similarity0`` N0 float32 (the match's similarity, 0 if unmatched).
    """
    n0, n1 = descriptors0.shape[0], descriptors1.shape[0]
    device = descriptors0.device
    matches0 = torch.full((n0,), -1, dtype=torch.long, device=device)
    similarity0 = torch.zeros(n0, device=device)
    if n0 == 0 or n1 == 0:
        return matches0, similarity0
    if descriptors0.dtype in (torch.float16, torch.bfloat16) and device.type == "cpu":
        descriptors0, descriptors1 = descriptors0.float(), descriptors1.float()
    best, best_index, column_best = _row_best(
        descriptors0, descriptors1.t().contiguous(), chunk_elements
    )
    # rows whose best value is also their column's best: only they can be mutual
    candidates = torch.nonzero(best == column_best[best_index])[:, 0]
    columns, inverse = torch.unique(best_index[candidates], return_inverse=True)
    # first row reaching each of these columns' best, computed as descriptors1 x
    # descriptors0 (like the reference), which settles ties by the lowest index
    _, column_winner, _ = _row_best(
        descriptors1[columns], descriptors0.t().contiguous(), chunk_elements, False
    )
    mutual = candidates[column_winner[inverse] == candidates]
    if min_similarity is not None:
        mutual = mutual[best[mutual] > min_similarity]
    matches0[mutual] = best_index[mutual]
    similarity0[mutual] = best[mutual].float()
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
