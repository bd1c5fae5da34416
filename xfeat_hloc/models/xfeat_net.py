"""The XFeat network and the numerics shared by XFeat, XFeat* and their matchers.

Our own implementation of the network of "XFeat: Accelerated Features for
Lightweight Image Matching" (Potje et al., CVPR 2024). Its parameter names are
those of the official ``xfeat.pt``, which loads into :class:`XFeatNet` as is;
:func:`load_xfeat_net` then turns it into an inference form
(:func:`to_inference_form`: BatchNorms folded into the preceding layers,
convolutions fused with their ReLU or addition, channels-last layout).

Conventions (every function of this module):

- Images are ``1 x C x H x W`` float tensors, C = 1 or 3 (the network averages
  the channels and instance-normalises the result, so the intensity scale only
  matters through the norm's epsilon).
- Keypoints are ``(x, y)`` pixels with pixel centres at integer coordinates.
  The network runs on the image resized (bilinearly) to multiples of 32; a
  position ``p`` found there is reported in the input image at
  ``(p + 0.5) * s - 0.5`` with ``s = (W / W32, H / H32)``.
- The network's maps have 1/8 of the resolution of its input.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ImageReadError

#: XFeat*'s two extraction scales and the share of ``top_k`` taken at each.
DENSE_SCALES: tuple[float, float] = (0.6, 1.3)
DENSE_SHARES: tuple[float, float] = (0.2, 0.8)
#: Softmax temperature of the refinement classifier (8 x 8 offsets).
REFINE_TEMPERATURE = 3.0


class BasicLayer(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d (no affine) -> ReLU, named as in xfeat.pt."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, affine=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class FusedConv(nn.Module):
    """``conv(x)`` (+ ``other``), then ReLU if ``relu``: one oneDNN call for
    float32 on CPU (the kernel ``nn.Conv2d`` uses there), the plain ops elsewhere.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        self.conv = conv
        self.relu = relu
        self.mkldnn = torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_convolution_pointwise"
        )

    def forward(self, x: Tensor, other: Tensor | None = None) -> Tensor:
        conv = self.conv
        if self.mkldnn and x.device.type == "cpu" and x.dtype == torch.float32:
            geometry = (conv.padding, conv.stride, conv.dilation, conv.groups)
            unary = "relu" if self.relu else "none"
            if other is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, conv.weight, conv.bias, *geometry, unary, [], ""
                )
            if not self.relu:
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x,
                    other,
                    conv.weight,
                    conv.bias,
                    *geometry,
                    "add",
                    None,
                    None,
                    [],
                    None,
                )
        x = conv(x)
        if other is not None:
            x = x + other
        return F.relu(x, inplace=True) if self.relu else x


def _instance_norm(x: Tensor, eps: float) -> Tensor:
    """``F.instance_norm(x, eps=eps)`` of a ``B x 1 x H x W`` map (biased
    variance). For one image: mean, centre, a dot product, one scaling, 2x
    faster on CPU than the batch-norm kernel, same values up to rounding."""
    if x.shape[0] != 1 or x.shape[1] != 1 or x.device.type != "cpu":
        return F.instance_norm(x, eps=eps)
    centred = x - x.mean()
    flat = centred.view(-1)
    variance = torch.dot(flat, flat) / flat.numel()
    return centred.mul_(torch.rsqrt(variance + eps))


def _mlp_block(in_features: int, out_features: int) -> list[nn.Module]:
    return [
        nn.Linear(in_features, out_features),
        nn.BatchNorm1d(out_features, affine=False),
        nn.ReLU(inplace=True),
    ]


class XFeatNet(nn.Module):
    """The XFeat backbone, its two heads and the refinement MLP.

    ``forward(image, keypoints=True)`` takes a ``B x C x H x W`` image with H, W
    multiples of 32 and returns, at 1/8 resolution:

    - ``descriptors`` ``B x 64 x H/8 x W/8``, dense, not normalised;
    - ``keypoint_logits`` ``B x 65 x H/8 x W/8``: channel ``8 * dy + dx`` of
      cell ``(i, j)`` is pixel ``(8 j + dx, 8 i + dy)``, channel 64 the dustbin
      (None with ``keypoints=False``);
    - ``reliability`` ``B x 1 x H/8 x W/8`` in (0, 1).

    ``fine_matcher`` maps a concatenated pair of 64-d dense descriptors to 64
    logits over an 8 x 8 grid of offsets (row-major, ``(dx, dy) - 4``).
    """

    def __init__(self) -> None:
        super().__init__()
        #: set by :func:`to_inference_form`
        self.inference_form = False
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        self.block1 = nn.Sequential(
            BasicLayer(1, 4, stride=1),
            BasicLayer(4, 8, stride=2),
            BasicLayer(8, 8, stride=1),
            BasicLayer(8, 24, stride=2),
        )
        self.block2 = nn.Sequential(BasicLayer(24, 24), BasicLayer(24, 24))
        self.block3 = nn.Sequential(
            BasicLayer(24, 64, stride=2),
            BasicLayer(64, 64),
            BasicLayer(64, 64, 1, padding=0),
        )
        self.block4 = nn.Sequential(
            BasicLayer(64, 64, stride=2), BasicLayer(64, 64), BasicLayer(64, 64)
        )
        self.block5 = nn.Sequential(
            BasicLayer(64, 128, stride=2),
            BasicLayer(128, 128),
            BasicLayer(128, 128),
            BasicLayer(128, 64, 1, padding=0),
        )
        self.block_fusion = nn.Sequential(
            BasicLayer(64, 64), BasicLayer(64, 64), nn.Conv2d(64, 64, 1)
        )
        self.heatmap_head = nn.Sequential(
            BasicLayer(64, 64, 1, padding=0),
            BasicLayer(64, 64, 1, padding=0),
            nn.Conv2d(64, 1, 1),
            nn.Sigmoid(),
        )
        self.keypoint_head = nn.Sequential(
            BasicLayer(64, 64, 1, padding=0),
            BasicLayer(64, 64, 1, padding=0),
            BasicLayer(64, 64, 1, padding=0),
            nn.Conv2d(64, 65, 1),
        )
        self.fine_matcher = nn.Sequential(
            *_mlp_block(128, 512),
            *_mlp_block(512, 512),
            *_mlp_block(512, 512),
            *_mlp_block(512, 512),
            nn.Linear(512, 64),
        )

    def forward(
        self, image: Tensor, keypoints: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        if self.inference_form:
            # instance_norm(sum / C, eps) == instance_norm(sum, eps * C^2): one
            # division less over the image
            channels = image.shape[1]
            x = image.sum(dim=1, keepdim=True) if channels > 1 else image
            x = _instance_norm(x, eps=1e-5 * channels**2)
            x1 = self.block1(x)
            x2 = self.block2(self.skip1(x, x1))  # fused conv(x) + x1
        else:
            x = image.mean(dim=1, keepdim=True)
            x = F.instance_norm(x, eps=1e-5)
            x1 = self.block1(x)
            x2 = self.block2(x1 + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = x3.shape[-2:]
        x4 = F.interpolate(x4, size, mode="bilinear", align_corners=False)
        x5 = F.interpolate(x5, size, mode="bilinear", align_corners=False)
        descriptors = self.block_fusion(x3 + x4 + x5)
        reliability = self.heatmap_head(descriptors)
        if not keypoints:  # XFeat* needs no keypoint head
            return descriptors, None, reliability
        if not self.inference_form:
            # 8 x 8 pixel blocks -> 64 channels, channel 8 * dy + dx
            x = F.pixel_unshuffle(x, 8)
        keypoint_logits = self.keypoint_head(x)
        return descriptors, keypoint_logits, reliability


def _fold_batchnorm(layers: nn.Sequential) -> None:
    """Fold each eval-mode BatchNorm into the Conv2d/Linear before it, in place.

    ``bn(w x + b) = (w x + b - mean) / sqrt(var + eps)``: the BatchNorm becomes
    ``nn.Identity`` and the layer gets scaled weights and a bias.
    """
    for index in range(1, len(layers)):
        bn = layers[index]
        layer = layers[index - 1]
        if not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
            continue
        if not isinstance(layer, nn.Conv2d | nn.Linear) or bn.affine:
            raise RuntimeError(f"cannot fold {bn} into {layer}")
        inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
        weight = layer.weight.double()
        weight = weight * inv_std.view(-1, *([1] * (weight.dim() - 1)))
        bias = layer.bias.double() if layer.bias is not None else 0.0
        bias = (bias - bn.running_mean.double()) * inv_std
        dtype = layer.weight.dtype
        layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
        layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
        layers[index] = nn.Identity()


def fold_batchnorms(net: nn.Module) -> nn.Module:
    """Fold every BatchNorm of ``net`` (in eval mode) into its preceding layer."""
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            _fold_batchnorm(module)
    return net


def to_inference_form(net: XFeatNet) -> XFeatNet:
    """Rewrite an eval-mode :class:`XFeatNet` for fast inference, in place.

    Same function up to float rounding: BatchNorms folded into the layers
    before them, each convolution + ReLU fused (oneDNN on CPU), the keypoint
    head's 1 x 1 convolution on unshuffled 8 x 8 blocks turned into an 8 x 8
    convolution of stride 8 on the image, the skip branch's 4 x 4 average pool
    + 1 x 1 convolution turned into one 4 x 4 convolution of stride 4 fused
    with the addition, channels-last weights.
    """
    fold_batchnorms(net)
    pool, conv = net.skip1
    size = pool.kernel_size
    skip = nn.Conv2d(conv.in_channels, conv.out_channels, size, stride=pool.stride)
    skip.weight = nn.Parameter(
        (conv.weight.detach() / size**2).expand(-1, -1, size, size).clone(),
        requires_grad=False,
    )
    skip.bias = conv.bias
    net.skip1 = FusedConv(skip, relu=False)
    first = net.keypoint_head[0].layer[0]
    on_pixels = nn.Conv2d(1, first.out_channels, 8, stride=8)
    on_pixels.weight = nn.Parameter(
        first.weight.detach().reshape(first.out_channels, 1, 8, 8).clone(),
        requires_grad=False,
    )
    on_pixels.bias = first.bias
    net.keypoint_head[0].layer[0] = on_pixels
    net.inference_form = True
    for module in list(net.modules()):
        if isinstance(module, BasicLayer):
            module.layer = FusedConv(module.layer[0], relu=True)
    for block in (net.block_fusion, net.heatmap_head, net.keypoint_head):
        for index, layer in enumerate(block):
            if type(layer) is nn.Conv2d:
                block[index] = FusedConv(layer, relu=False)
    return net.to(memory_format=torch.channels_last)


def load_xfeat_net(
    weights_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    inference_form: bool = True,
) -> XFeatNet:
    """Build :class:`XFeatNet` with the official weights, in eval mode.

    Args:
        weights_path: an explicit ``xfeat.pt``; None resolves it with
            :func:`xfeat_hloc.weights.resolve_weights`.
        device: where the network lives.
        inference_form: apply :func:`to_inference_form` (same outputs up to
            float rounding, faster). False keeps the state-dict layout.
    """
    from ..weights import resolve_weights

    path = resolve_weights("xfeat", weights_path)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    net = XFeatNet()
    net.load_state_dict(state_dict)
    net.eval().requires_grad_(False)
    if inference_form:
        net = to_inference_form(net)
    return net.to(device)


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def prepare_image(image: Tensor, what: str = "image") -> Tensor:
    """Check a ``1 x C x H x W`` image (C = 1 or 3) and return it as float32.

    uint8 (or other integer) images are divided by 255. Float images are taken
    as they are: the network instance-normalises its input, so [0, 255] floats
    give the same features as [0, 1] ones (up to the norm's epsilon).

    Raises:
        ValueError: wrong number of dimensions, batch size or channels.
    """
    if not isinstance(image, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(image).__name__}.")
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
        raise ValueError(
            f"{what} must be a 1xCxHxW tensor with C = 1 or 3, got shape "
            f"{tuple(image.shape)}."
        )
    if not image.is_floating_point():
        return image.float() / 255.0
    return image.float()


def check_min_size(height: int, width: int, min_side: float, what: str) -> None:
    """Raise :class:`ImageReadError` if the smaller side is below ``min_side``."""
    if min(height, width) < min_side:
        raise ImageReadError(
            f"{what} of {width}x{height} px is too small: XFeat needs at least "
            f"{math.ceil(min_side)} px per side. Use a larger image or a larger "
            "preprocessing resize_max."
        )


def resize_to_multiple_of_32(image: Tensor) -> tuple[Tensor, tuple[float, float]]:
    """Resize bilinearly to the largest multiples of 32 (the official recipe).

    Returns:
        The resized image and ``(sx, sy) = (W / W32, H / H32)``: a pixel ``p``
        of the resized image is at ``(p + 0.5) * (sx, sy) - 0.5`` in the input.
    """
    height, width = image.shape[-2:]
    h32, w32 = (height // 32) * 32, (width // 32) * 32
    if h32 == 0 or w32 == 0:
        check_min_size(height, width, 32, "An image")
    if (h32, w32) == (height, width):  # bilinear to the same size is the identity
        return image, (1.0, 1.0)
    resized = F.interpolate(image, (h32, w32), mode="bilinear", align_corners=False)
    return resized, (width / w32, height / h32)


# --------------------------------------------------------------------------
# Sparse detection (XFeat)
# --------------------------------------------------------------------------


def keypoint_heatmap(logits: Tensor) -> Tensor:
    """``1 x 65 x h x w`` logits -> the ``8h x 8w`` keypoint heatmap.

    Softmax over the 65 channels, dustbin dropped, the other 64 pixel-shuffled:
    pixel ``(8 j + dx, 8 i + dy)`` is channel ``8 dy + dx`` of cell ``(i, j)``.
    """
    _, _, h, w = logits.shape
    probabilities = torch.softmax(logits[0].permute(1, 2, 0), dim=-1)[..., :64]
    return probabilities.reshape(h, w, 8, 8).permute(0, 2, 1, 3).reshape(8 * h, 8 * w)


def window_max(heatmap: Tensor, kernel_size: int = 5) -> Tensor:
    """Maximum of each pixel's ``k x k`` window, clipped at the border.

    A 1-D max pool along the rows, then a maximum over ``k`` consecutive rows
    (clipped near the top and bottom): bit-exact against the official
    ``MaxPool2d(k, stride=1, padding=k // 2)``, since max is exact.
    """
    r = kernel_size // 2
    if heatmap.device.type != "cpu":  # one kernel on accelerators
        return F.max_pool2d(heatmap[None, None], kernel_size, 1, r)[0, 0]
    rows = F.max_pool1d(heatmap, kernel_size, stride=1, padding=r)
    height = rows.shape[0]
    out = torch.empty_like(rows)
    if height > 2 * r:
        torch.amax(rows.unfold(0, kernel_size, 1), dim=-1, out=out[r : height - r])
    for y in [*range(min(r, height)), *range(max(height - r, r), height)]:
        out[y] = rows[max(0, y - r) : y + r + 1].amax(dim=0)
    return out


def detect_keypoints(
    logits: Tensor, threshold: float = 0.05, kernel_size: int = 5
) -> tuple[Tensor, Tensor]:
    """The official XFeat detections from ``1 x 65 x h x w`` keypoint logits.

    Pixels of :func:`keypoint_heatmap` above ``threshold`` that equal the
    maximum of their window (the official 5 x 5 NMS), in row-major order.

    Returns:
        ``positions`` N x 2 int64 ``(x, y)`` in the 8h x 8w image, and ``heat``
        N, the heatmap value there as the official code reads it (nearest
        sampling with its grid, which reads 0 on the last row and column).
    """
    heatmap = keypoint_heatmap(logits)
    height, width = heatmap.shape
    flat = heatmap.view(-1)
    index = torch.nonzero(flat > threshold)[:, 0]
    peaks = window_max(heatmap, kernel_size).view(-1)
    index = index[peaks[index] == flat[index]]  # row-major, as before
    xs, ys, heat = index % width, index // width, flat[index]
    heat = torch.where((xs == width - 1) | (ys == height - 1), 0.0, heat)
    return torch.stack([xs, ys], dim=-1), heat


def sample_map(
    feature_map: Tensor, positions: Tensor, height: int, width: int, mode: str
) -> Tensor:
    """Sample a ``1 x C x h x w`` map at ``N x 2`` pixel positions of an image.

    Uses the official XFeat sampling (grid ``2 p / (W - 1) - 1`` read with
    ``align_corners=False``), which the trained weights expect. Returns C x N.
    """
    scale = positions.new_tensor([width - 1, height - 1], dtype=torch.float32)
    grid = 2.0 * (positions.float() / scale) - 1.0
    grid = grid.to(feature_map.dtype)[None, :, None, :]
    sampled = F.grid_sample(feature_map, grid, mode=mode, align_corners=False)
    return sampled[0, :, :, 0]


def top_scores(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of N ``scores`` in decreasing order, ties in index
    order: the first ``k`` of ``torch.sort(scores, descending=True,
    stable=True)``, by a ``topk`` (exact ties at the cut resolved by index)
    and a stable sort of the ``k`` kept only. Returns (values, indices)."""
    if k >= scores.numel() or scores.device.type != "cpu":
        values, order = torch.sort(scores, descending=True, stable=True)
        return values[:k], order[:k]
    cut = torch.topk(scores, k, sorted=False).values.min()
    above = torch.nonzero(scores > cut)[:, 0]
    ties = torch.nonzero(scores == cut)[:, 0][: k - above.numel()]
    kept = torch.sort(torch.cat([above, ties])).values  # index order
    values, order = torch.sort(scores[kept], descending=True, stable=True)
    return values, kept[order]


def _cubic_weights(t: Tensor) -> Tensor:
    """N -> N x 4 weights of the taps at -1, 0, 1, 2 for fractional offsets
    ``t`` in [0, 1): the cubic convolution kernel with a = -0.75, as
    ``grid_sample``'s bicubic mode uses."""
    a = -0.75

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def sample_bicubic(
    feature_map: Tensor, positions: Tensor, height: int, width: int
) -> Tensor:
    """:func:`sample_map` in bicubic mode, as a weighted gather of 4 x 4 taps.

    Same sampling as ``grid_sample(..., mode="bicubic", align_corners=False)``
    with zero padding (up to float rounding), 2-3x faster on CPU: one
    ``embedding_bag`` over the map's ``h w x C`` table of cells, with taps
    outside the map weighted 0. Returns C x N.
    """
    if feature_map.device.type != "cpu":  # grid_sample is fast there
        return sample_map(feature_map, positions, height, width, "bicubic")
    _, channels, h, w = feature_map.shape
    table = feature_map[0].permute(1, 2, 0).reshape(h * w, channels)
    scale = positions.new_tensor([width - 1, height - 1], dtype=torch.float32)
    grid = 2.0 * (positions.float() / scale) - 1.0
    size = grid.new_tensor([w, h])
    source = ((grid + 1) * size - 1) / 2  # grid_sample's unnormalisation
    corner = torch.floor(source)
    frac = source - corner
    taps = corner.long()[:, :, None] + torch.arange(-1, 3, device=grid.device)
    xs, ys = taps[:, 0], taps[:, 1]  # N x 4 each
    wx = _cubic_weights(frac[:, 0]) * ((xs >= 0) & (xs < w))
    wy = _cubic_weights(frac[:, 1]) * ((ys >= 0) & (ys < h))
    index = ys.clamp(0, h - 1)[:, :, None] * w + xs.clamp(0, w - 1)[:, None, :]
    weights = (wy[:, :, None] * wx[:, None, :]).to(table.dtype)
    sampled = F.embedding_bag(
        index.reshape(-1, 16),
        table,
        per_sample_weights=weights.reshape(-1, 16),
        mode="sum",
    )
    return sampled.T


def detect_and_describe(
    net: XFeatNet, image: Tensor, top_k: int = 4096, threshold: float = 0.05
) -> dict[str, Tensor]:
    """XFeat sparse features of one image (the official ``detectAndCompute``).

    Args:
        net: the network (see :func:`load_xfeat_net`).
        image: ``1 x C x H x W`` float image, H and W >= 32.
        top_k: keep at most this many keypoints, the best by score.
        threshold: the keypoint heatmap must exceed it.

    Returns:
        ``keypoints`` N x 2 (x, y) in the input image's pixels (pixel centres at
        integer coordinates), ``descriptors`` 64 x N (hloc's layout),
        L2-normalised, ``scores`` N (heatmap value x reliability, in (0, 1],
        in decreasing order).
    """
    resized, (sx, sy) = resize_to_multiple_of_32(image)
    height, width = resized.shape[-2:]
    descriptors, logits, reliability = net(resized)
    positions, heat = detect_keypoints(logits, threshold)
    reliability = sample_map(reliability, positions, height, width, "bilinear")[0]
    scores, order = top_scores(heat * reliability, top_k)
    keep = order[scores > 0]
    scores, positions = scores[: len(keep)], positions[keep]
    descriptors = F.normalize(descriptors, dim=1)
    descriptors = sample_bicubic(descriptors, positions, height, width)
    descriptors = F.normalize(descriptors, dim=0)
    scale = positions.new_tensor([sx, sy], dtype=torch.float32)
    keypoints = (positions.float() + 0.5) * scale - 0.5
    return {"keypoints": keypoints, "descriptors": descriptors, "scores": scores}


# --------------------------------------------------------------------------
# Dense extraction and refinement (XFeat*)
# --------------------------------------------------------------------------


def dense_features_at_scale(
    net: XFeatNet, image: Tensor, scale: float, top_k: int
) -> dict[str, Tensor]:
    """Top-``top_k`` cells by reliability of the image rescaled by ``scale``.

    The image is resized by ``scale`` (bilinear, as ``F.interpolate`` with
    ``scale_factor``), then to multiples of 32. Each selected cell is reported
    at its top-left pixel ``8 (j, i)`` of the network input, mapped to the input
    image's pixels. ``top_k < 1`` keeps every cell.

    Returns:
        ``keypoints`` K x 2, ``descriptors`` K x 64 (raw, not normalised),
        ``scales`` K x 2 (input pixels per network-input pixel, x and y).
    """
    scaled = F.interpolate(
        image, scale_factor=scale, mode="bilinear", align_corners=False
    )
    resized, (rx, ry) = resize_to_multiple_of_32(scaled)
    descriptors, _, reliability = net(resized, keypoints=False)
    _, channels, h, w = descriptors.shape
    reliability = reliability.reshape(-1)
    k = h * w if top_k < 1 else min(top_k, h * w)
    _, cells = torch.topk(reliability, k)
    # (h * w) x C: a free view of the channels-last map
    descriptors = descriptors[0].permute(1, 2, 0).reshape(h * w, channels)[cells]
    corners = torch.stack([cells % w, cells // w], dim=-1).float() * 8
    factor = corners.new_tensor([rx / scale, ry / scale])
    keypoints = (corners + 0.5) * factor - 0.5
    return {
        "keypoints": keypoints,
        "descriptors": descriptors.float().contiguous(),
        "scales": factor.expand(k, 2).contiguous(),
    }


def dense_features(
    net: XFeatNet,
    image: Tensor,
    top_k: int = 10000,
    scales: tuple[float, ...] = DENSE_SCALES,
    shares: tuple[float, ...] = DENSE_SHARES,
) -> dict[str, Tensor]:
    """XFeat*'s multi-scale coarse features of one image.

    ``int(share * top_k)`` cells at each scale (a share of 0 cells is skipped),
    concatenated in the order of ``scales``. Keys as
    :func:`dense_features_at_scale`, plus ``image_size`` = ``[W, H]``.
    """
    height, width = image.shape[-2:]
    check_min_size(height, width, 32 / min(scales), "An image")
    parts = []
    for scale, share in zip(scales, shares, strict=True):
        k = int(top_k * share) if top_k >= 1 else 0
        if top_k >= 1 and k == 0:
            continue
        parts.append(dense_features_at_scale(net, image, scale, k))
    out = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    out["image_size"] = torch.tensor([width, height], device=image.device)
    return out


def _offset_grid(device: torch.device) -> Tensor:
    """The 64 offsets ``(dx - 4, dy - 4)`` of the 8 x 8 refinement grid."""
    index = torch.arange(64, device=device)
    return torch.stack([index % 8, index // 8], dim=-1).float() - 4.0


def refine_matches(
    net: XFeatNet,
    features0: dict[str, Tensor],
    features1: dict[str, Tensor],
    index0: Tensor,
    index1: Tensor,
    fine_conf: float = 0.25,
) -> dict[str, Tensor]:
    """Refine coarse matches with the fine-matcher MLP, moving image-0 points.

    The MLP classifies an 8 x 8 offset from the pair of raw descriptors; with
    ``p = softmax(3 * logits)``, the offset is the expectation of the grid under
    ``p`` (network-input pixels of image 0's scale, times its ``scales``) and
    the confidence ``max(p)``. Matches with confidence <= ``fine_conf`` are
    dropped.

    Returns:
        ``keypoints0`` M x 2 (refined), ``keypoints1`` M x 2, ``scores`` M (the
        confidence, in (fine_conf, 1]).
    """
    pair = torch.cat(
        [features0["descriptors"][index0], features1["descriptors"][index1]], dim=-1
    )
    logits = net.fine_matcher(pair)
    probabilities = torch.softmax(logits * REFINE_TEMPERATURE, dim=-1)
    confidence = probabilities.max(dim=-1).values
    offsets = probabilities @ _offset_grid(logits.device)
    keypoints0 = features0["keypoints"][index0]
    keypoints0 = keypoints0 + offsets * features0["scales"][index0]
    keep = confidence > fine_conf
    return {
        "keypoints0": keypoints0[keep],
        "keypoints1": features1["keypoints"][index1][keep],
        "scores": confidence[keep],
    }
