"""LoFTR's coarse matching (dual-softmax + mutual nearest neighbour) in chunks.

kornia's ``CoarseMatching`` materialises the ``L x S`` confidence matrix over all
coarse cells of both images (``L = S = 30,000`` cells at 1600x1200: two 3.6 GB
float32 matrices alive at once). The matches only need, per row, the maximum of
the confidence and its column, and per column, the maximum over all rows. The
dual-softmax

    conf[i, j] = softmax_j(sim[i, :])[j] * softmax_i(sim[:, j])[i]

is computed exactly from the full row (a chunk of rows holds whole rows) and the
column statistics (column max and sum of exponentials), accumulated over row
chunks with a log-sum-exp rescaling. Two passes over the similarity, each of one
chunk of rows at a time: peak memory is a few chunks, independent of the image
size. The matches are the same as kornia's; confidences agree to float rounding.

Only the inference path of the dual-softmax is chunked; training (autograd),
masks and the Sinkhorn variant fall back to kornia's implementation.
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature.loftr.utils.coarse_matching import CoarseMatching


def _border_mask(h: int, w: int, border: int, device: torch.device) -> torch.Tensor:
    """``(h * w,)`` bool: cells at least ``border`` cells away from every edge."""
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    if border <= 0:
        return torch.ones(h * w, dtype=torch.bool, device=device)
    keep = (rows >= border) & (rows < h - border) & (cols >= border)
    keep = keep & (cols < w - border)
    return keep.reshape(-1)


def chunk_rows(num_cols: int, budget_mb: float, bytes_per_value: int = 4) -> int:
    """Rows per chunk so that about three ``rows x num_cols`` buffers fit the budget."""
    rows = int(budget_mb * 2**20 / (3 * bytes_per_value * max(num_cols, 1)))
    return max(rows, 1)


@torch.no_grad()
def dual_softmax_mnn(
    feat0: torch.Tensor,
    feat1: torch.Tensor,
    temperature: float,
    chunk_mb: float = 128.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row maxima of the dual-softmax confidence, their columns, and column maxima.

    Args:
        feat0: ``(N, L, C)`` coarse features of image 0, already scaled by
            ``1 / sqrt(C)``.
        feat1: ``(N, S, C)`` coarse features of image 1, scaled likewise.
        temperature: the dual-softmax temperature (similarities are divided by it).
        chunk_mb: memory budget of the per-chunk buffers, in MiB.

    Returns:
        ``row_max`` ``(N, L)``, ``row_arg`` ``(N, L)`` (column of the row maximum,
        the first on exact ties) and ``col_max`` ``(N, S)``: what kornia computes
        with ``conf.max(dim=2)`` and ``conf.amax(dim=1)`` on the full matrix.
    """
    n, num_rows, _ = feat0.shape
    num_cols = feat1.shape[1]
    step = chunk_rows(num_cols, chunk_mb, feat0.element_size())
    chunks = [(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]
    feat1_t = feat1.transpose(1, 2)

    def similarity(start: int, stop: int) -> torch.Tensor:
        return torch.matmul(feat0[:, start:stop], feat1_t).div_(temperature)

    # Pass 1: per-column max and sum of exp(sim - max) over all rows, rescaled
    # whenever a chunk raises the running max (log-sum-exp accumulation).
    col_peak = feat0.new_full((n, 1, num_cols), float("-inf"))
    col_sum = feat0.new_zeros((n, 1, num_cols))
    for start, stop in chunks:
        sim = similarity(start, stop)
        peak = torch.maximum(col_peak, sim.amax(dim=1, keepdim=True))
        col_sum.mul_(torch.exp(col_peak - peak))
        col_sum.add_(sim.sub_(peak).exp_().sum(dim=1, keepdim=True))
        col_peak = peak
        del sim

    # Pass 2: confidences chunk by chunk, reduced to row and column maxima.
    row_max = feat0.new_empty((n, num_rows))
    row_arg = torch.empty((n, num_rows), dtype=torch.long, device=feat0.device)
    col_max = feat0.new_full((n, num_cols), float("-inf"))
    for start, stop in chunks:
        sim = similarity(start, stop)
        conf = torch.softmax(sim, dim=2)
        conf.mul_(sim.sub_(col_peak).exp_().div_(col_sum))
        del sim
        values, args = conf.max(dim=2)
        row_max[:, start:stop] = values
        row_arg[:, start:stop] = args
        torch.maximum(col_max, conf.amax(dim=1), out=col_max)
        del conf
    return row_max, row_arg, col_max


class ChunkedCoarseMatching(CoarseMatching):
    """Drop-in replacement of kornia's ``CoarseMatching`` with bounded memory.

    Same config dict, same outputs in ``data`` (``b_ids``, ``i_ids``, ``j_ids``,
    ``gt_mask``, ``m_bids``, ``mkpts0_c``, ``mkpts1_c``, ``mconf``), except that the
    full ``conf_matrix`` is never stored. Coarse keypoints are in kornia's LoFTR
    frame: cell ``(x, y)`` at pixel ``stride * (x, y)``.

    Args:
        config: kornia's ``match_coarse`` config (``thr``, ``border_rm``,
            ``match_type``, ``dsmax_temperature``...).
        chunk_mb: memory budget of the similarity chunks, in MiB.
    """

    def __init__(self, config: dict[str, Any], chunk_mb: float = 128.0) -> None:
        super().__init__(config)
        self.chunk_mb = chunk_mb

    def forward(
        self,
        feat_c0: torch.Tensor,
        feat_c1: torch.Tensor,
        data: dict[str, Any],
        mask_c0: torch.Tensor | None = None,
        mask_c1: torch.Tensor | None = None,
    ) -> None:
        exact_fallback = (
            self.training
            or self.match_type != "dual_softmax"
            or mask_c0 is not None
            or mask_c1 is not None
            or "mask0" in data
            or "scale0" in data
            or (torch.is_grad_enabled() and feat_c0.requires_grad)
            or feat_c0.dtype in (torch.float16, torch.bfloat16)
        )
        if exact_fallback:
            super().forward(feat_c0, feat_c1, data, mask_c0=mask_c0, mask_c1=mask_c1)
            return

        scale = feat_c0.shape[-1] ** 0.5
        row_max, row_arg, col_max = dual_softmax_mnn(
            feat_c0 / scale, feat_c1 / scale, self.temperature, self.chunk_mb
        )
        h0, w0 = (int(v) for v in data["hw0_c"])
        h1, w1 = (int(v) for v in data["hw1_c"])
        device = feat_c0.device
        off_border0 = _border_mask(h0, w0, self.border_rm, device)[None]
        off_border1 = _border_mask(h1, w1, self.border_rm, device)
        valid = (
            (row_max > max(self.thr, 0.0))
            & (torch.gather(col_max, 1, row_arg) == row_max)
            & off_border0
            & off_border1[row_arg]
        )
        b_ids, i_ids = torch.where(valid)
        j_ids = row_arg[b_ids, i_ids]
        mconf = row_max[b_ids, i_ids]

        dtype = torch.promote_types(feat_c0.dtype, torch.float32)
        stride = data["stride_c"]
        mkpts0_c = torch.stack([i_ids % w0, i_ids // w0], dim=1).to(dtype) * stride
        mkpts1_c = torch.stack([j_ids % w1, j_ids // w1], dim=1).to(dtype) * stride
        data.update(
            {
                "b_ids": b_ids,
                "i_ids": i_ids,
                "j_ids": j_ids,
                "gt_mask": mconf == 0,
                "m_bids": b_ids,
                "mkpts0_c": mkpts0_c,
                "mkpts1_c": mkpts1_c,
                "mconf": mconf,
            }
        )
