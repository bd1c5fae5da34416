"""Small helpers shared by the model tests (imported as ``helpers``: pytest puts
this folder on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import torch

from xfeat_hloc.utils.io import read_image


def load_resized(path: Path, long_side: int) -> torch.Tensor:
    """1 x 3 x H x W float [0, 1] image, resized to the given long side (area
    interpolation when shrinking, bilinear when enlarging)."""
    image = read_image(path)
    h, w = image.shape[:2]
    s = long_side / max(h, w)
    interpolation = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=interpolation)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
