"""Exact mutual nearest neighbours on descriptors (XFeat's matcher).

Two passes over the similarity matrix, in chunks of rows that bound memory:

1. ``descriptors0 @ descriptors1.T``: the best column of every row (first on
   ties, ``torch.max``) and the best value of every column. Only a row whose
   best value is also its best column's best value can be mutual.
2. ``descriptors1 @ descriptors0.T`` for those rows' best columns (as the
   official code computes it): the best row of each (first on ties).

A row is matched when its best column's best row is itself: the matches of the
official ``XFeat.match(..., min_cossim=-1)``, ties included, for about 1.3
matrix products instead of its two.

A :class:`Workspace` keeps the chunk buffer between calls: freshly allocated
large buffers cost page faults on every call, as much as the product itself.
On an accelerator (up to ``4 * chunk_elements`` similarities), the official
two full products run instead: no host synchronisation, same matches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..utils.base_model import BaseModel

#: Elements of one chunk of the similarity matrix (float32: 64 MiB).
CHUNK_ELEMENTS = 1 << 24


class Workspace:
    """A buffer for chunks of similarity matrices, reused between calls.

    Not thread-safe: one call at a time per workspace (each model instance has
    its own). Holds at most ``chunk_elements`` elements.
    """

    def __init__(self) -> None:
        self._buffer: Tensor | None = None

    def matrix(self, rows: int, columns: int, like: Tensor) -> Tensor:
        """A ``rows x columns`` tensor with the dtype and device of ``like``."""
        size = rows * columns
        buffer = self._buffer
        if (
            buffer is None
            or buffer.numel() < size
            or buffer.device != like.device
            or buffer.dtype != like.dtype
        ):
            buffer = self._buffer = like.new_empty(size)
        return buffer[:size].view(rows, columns)


def _chunks(n_rows: int, n_columns: int, chunk_elements: int) -> range:
    step = max(1, min(n_rows, chunk_elements // max(n_columns, 1)))
    return range(0, n_rows, step)


def _best_columns(
    rows: Tensor,
    columns_t: Tensor,
    chunk_elements: int,
    workspace: Workspace,
    column_max: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """For ``rows @ columns_t``: each row's best value and first best column,
    and (if ``column_max``) each column's best value."""
    n0, n1 = rows.shape[0], columns_t.shape[1]
    best = rows.new_empty(n0)
    best_index = torch.empty(n0, dtype=torch.long, device=rows.device)
    best_of_column = rows.new_full((n1,), -torch.inf) if column_max else None
    if n0 == 0:
        return best, best_index, best_of_column
    chunks = _chunks(n0, n1, chunk_elements)
    buffer = workspace.matrix(min(chunks.step, n0), n1, rows)
    for start in chunks:
        stop = min(start + chunks.step, n0)
        sim = torch.mm(rows[start:stop], columns_t, out=buffer[: stop - start])
        torch.max(sim, dim=1, out=(best[start:stop], best_index[start:stop]))
        if best_of_column is not None:
            torch.maximum(best_of_column, sim.amax(dim=0), out=best_of_column)
    return best, best_index, best_of_column


def mutual_nearest_neighbours(
    descriptors0: Tensor,
    descriptors1: Tensor,
    min_similarity: float | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    workspace: Workspace | None = None,
) -> tuple[Tensor, Tensor]:
    """Mutual nearest neighbours by dot product.

    Args:
        descriptors0: N0 x D (L2-normalised for cosine similarities).
        descriptors1: N1 x D.
        min_similarity: if not None, a match also needs a similarity above it.
        chunk_elements: at most this many similarities are held at once.
        workspace: where to keep the chunk buffer between calls (a new one if
            None).

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
    if device.type != "cpu" and n0 * n1 <= 4 * chunk_elements:
        # accelerators: the official two products, no host synchronisation
        best, best_index = torch.max(descriptors0 @ descriptors1.t(), dim=1)
        winner = torch.max(descriptors1 @ descriptors0.t(), dim=1).indices
        mutual = winner[best_index] == torch.arange(n0, device=device)
        if min_similarity is not None:
            mutual &= best > min_similarity
        matches0 = torch.where(mutual, best_index, matches0)
        similarity0 = torch.where(mutual, best.float(), similarity0)
        return matches0, similarity0
    workspace = workspace if workspace is not None else Workspace()
    # transposed views: BLAS reads them as they are
    best, best_index, best_of_column = _best_columns(
        descriptors0, descriptors1.t(), chunk_elements, workspace, True
    )
    rows = torch.nonzero(best == best_of_column[best_index])[:, 0]
    columns, inverse = torch.unique(best_index[rows], return_inverse=True)
    _, winner, _ = _best_columns(
        descriptors1[columns], descriptors0.t(), chunk_elements, workspace, False
    )
    rows = rows[winner[inverse] == rows]
    if min_similarity is not None:
        rows = rows[best[rows] > min_similarity]
    matches0[rows] = best_index[rows]
    similarity0[rows] = best[rows].float()
    return matches0, similarity0


def invert_matches(matches0: Tensor, scores0: Tensor, n1: int) -> tuple[Tensor, Tensor]:
    """``matches1`` N1 and ``scores1`` N1 from one-to-one ``matches0``."""
    device = matches0.device
    # unmatched rows write to a spare slot n1 (no boolean indexing: no host sync)
    target = torch.where(matches0 > -1, matches0, n1)
    matches1 = torch.full((n1 + 1,), -1, dtype=torch.long, device=device)
    matches1.scatter_(0, target, torch.arange(len(matches0), device=device))
    scores1 = torch.zeros(n1 + 1, dtype=scores0.dtype, device=device)
    scores1.scatter_(0, target, scores0)
    return matches1[:n1], scores1[:n1]


class MNN(BaseModel):
    """Mutual nearest neighbour matcher with hloc's sparse matcher contract.

    Input: ``descriptors0`` 1 x D x N0 and ``descriptors1`` 1 x D x N1
    (L2-normalised; hloc also passes keypoints, scores, sizes, which are
    ignored). Output: ``matches0`` 1 x N0 int64 (-1 = unmatched),
    ``matching_scores0`` 1 x N0 (cosine similarity, 0 if unmatched), and
    ``matches1``, ``matching_scores1`` the other way round.

    Conf: ``min_cossim`` (None = off): a match also needs a cosine similarity
    strictly above it; ``chunk_elements``: the size of the similarity chunks
    (float32: 4 bytes each), kept between calls (not thread-safe).
    """

    default_conf: dict[str, Any] = {
        "min_cossim": None,
        "chunk_elements": CHUNK_ELEMENTS,
    }
    required_inputs = ["descriptors0", "descriptors1"]

    def _init(self, conf: dict[str, Any]) -> None:
        self.workspace = Workspace()

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
            self.workspace,
        )
        matches1, scores1 = invert_matches(matches0, scores0, descriptors1.shape[-1])
        return {
            "matches0": matches0[None],
            "matching_scores0": scores0[None],
            "matches1": matches1[None],
            "matching_scores1": scores1[None],
        }
