"""Exact mutual nearest neighbours on descriptors (XFeat's matcher).

Three passes over the similarity matrix, each in chunks of rows that bound
memory (and stay below the C allocator's recycling size):

1. ``descriptors0 @ descriptors1.T``: the best value of every row and column
   (``amax``, which is much cheaper than ``max`` with indices). A row can only
   be mutual if its best value is also some column's best value.
2. those rows again, with ``torch.max``: their best column (first on ties).
3. ``descriptors1 @ descriptors0.T`` for those columns (as the official code
   computes it): the best row of each (first on ties).

A row is matched when its best column's best row is itself: the matches of the
official ``XFeat.match(..., min_cossim=-1)``, ties included, for about 1.3
matrix products instead of its two plus two indexed maxima.
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


def _row_steps(n_rows: int, n_columns: int, chunk_elements: int) -> range:
    step = max(1, min(n_rows, chunk_elements // max(n_columns, 1)))
    return range(0, n_rows, step)


def _row_and_column_max(
    rows: Tensor, columns_t: Tensor, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """Best value of each row and of each column of ``rows @ columns_t``."""
    n0, n1 = rows.shape[0], columns_t.shape[1]
    steps = _row_steps(n0, n1, chunk_elements)
    buffer = rows.new_empty(min(steps.step, n0), n1)
    row_max = rows.new_empty(n0)
    column_max = rows.new_full((n1,), -torch.inf)
    for start in steps:
        stop = min(start + steps.step, n0)
        sim = torch.mm(rows[start:stop], columns_t, out=buffer[: stop - start])
        torch.amax(sim, dim=1, out=row_max[start:stop])
        torch.maximum(column_max, sim.amax(dim=0), out=column_max)
    return row_max, column_max


def _row_argmax(
    rows: Tensor, columns_t: Tensor, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """Best value and first best column of each row of ``rows @ columns_t``."""
    n0, n1 = rows.shape[0], columns_t.shape[1]
    best = rows.new_empty(n0)
    best_index = torch.empty(n0, dtype=torch.long, device=rows.device)
    if n0 == 0:
        return best, best_index
    steps = _row_steps(n0, n1, chunk_elements)
    buffer = rows.new_empty(min(steps.step, n0), n1)
    for start in steps:
        stop = min(start + steps.step, n0)
        sim = torch.mm(rows[start:stop], columns_t, out=buffer[: stop - start])
        torch.max(sim, dim=1, out=(best[start:stop], best_index[start:stop]))
    return best, best_index


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
    descriptors0_t = descriptors0.t().contiguous()
    descriptors1_t = descriptors1.t().contiguous()
    row_max, column_max = _row_and_column_max(
        descriptors0, descriptors1_t, chunk_elements
    )
    rows = torch.nonzero(torch.isin(row_max, column_max))[:, 0]
    best, best_index = _row_argmax(descriptors0[rows], descriptors1_t, chunk_elements)
    columns, inverse = torch.unique(best_index, return_inverse=True)
    _, winner = _row_argmax(descriptors1[columns], descriptors0_t, chunk_elements)
    mutual = winner[inverse] == rows
    if min_similarity is not None:
        mutual &= best > min_similarity
    matches0[rows[mutual]] = best_index[mutual]
    similarity0[rows[mutual]] = best[mutual].float()
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
