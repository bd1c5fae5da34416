"""LoFTR's ResNet-FPN (1/8 and 1/2 outputs) with a lower memory peak.

Same modules and parameters as kornia's ``ResNetFPN_8_2`` (its state dict loads
unchanged) and the same operations in the same order, so the outputs are
bitwise identical. Only the bookkeeping differs: each intermediate map is
released as soon as it is no longer needed, skip connections are added in
place, and the FPN heads run without holding their input. At 1600x1200 the
half-resolution maps are 245-376 MB each per image; kornia's forward keeps up
to six of them alive at once, this one about three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.feature.loftr.backbone.resnet_fpn import ResNetFPN_8_2
from torch import nn


def _run_head(head: nn.Sequential, holder: list[torch.Tensor]) -> torch.Tensor:
    """Apply a conv/BN/LeakyReLU head to the only reference to its input."""
    x = holder.pop()
    for module in head:
        if isinstance(module, nn.LeakyReLU):
            x = F.leaky_relu_(x, module.negative_slope)  # same values, in place
        else:
            x = module(x)
    return x


def _upsample_onto(coarse: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``skip += upsample2x(coarse)`` cropped to the skip's size (kornia's FPN)."""
    up = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=True)
    return skip.add_(up[..., : skip.shape[2], : skip.shape[3]])


class LeanResNetFPN_8_2(ResNetFPN_8_2):  # noqa: N801 (kornia's name)
    """kornia's ResNet-FPN 8/2 with early release of intermediate maps."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Coarse ``(B, 256, H/8, W/8)`` and fine ``(B, 128, H/2, W/2)`` maps."""
        x = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(x)  # 1/2
        del x
        x2 = self.layer2(x1)  # 1/4
        x3 = self.layer3(x2)  # 1/8
        x3_out = self.layer3_outconv(x3)
        del x3
        # a one-element list holds the only reference to a map a head consumes
        holder = [self.layer2_outconv(x2)]
        del x2
        holder.append(_upsample_onto(x3_out, holder.pop()))
        x2_out = _run_head(self.layer2_outconv2, holder)
        holder.append(self.layer1_outconv(x1))
        del x1
        holder.append(_upsample_onto(x2_out, holder.pop()))
        del x2_out
        x1_out = _run_head(self.layer1_outconv2, holder)
        return [x3_out, x1_out]


def lean_backbone(backbone: nn.Module) -> nn.Module:
    """A :class:`LeanResNetFPN_8_2` with the weights of ``backbone``.

    Returns ``backbone`` itself when it is not a ResNet-FPN 8/2.
    """
    if type(backbone) is not ResNetFPN_8_2:
        return backbone
    config = {
        "initial_dim": backbone.conv1.out_channels,
        "block_dims": [
            backbone.layer1[0].conv1.out_channels,
            backbone.layer2[0].conv1.out_channels,
            backbone.layer3[0].conv1.out_channels,
        ],
    }
    lean = LeanResNetFPN_8_2(config)
    lean.load_state_dict(backbone.state_dict())
    return lean.train(backbone.training)
