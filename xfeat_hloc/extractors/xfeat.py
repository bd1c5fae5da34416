"""XFeat sparse keypoints and descriptors, with hloc's extractor contract."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.xfeat_net import (
    check_min_size,
    detect_and_describe,
    load_xfeat_net,
    prepare_image,
)
from ..utils.base_model import BaseModel


class XFeat(BaseModel):
    """XFeat (sparse): the official ``detectAndCompute``, in hloc's layout.

    Input: ``image`` 1 x C x H x W, C = 1 or 3, float in [0, 1] (uint8 is
    divided by 255; floats in [0, 255] give practically the same features, the
    network instance-normalises its input), H and W >= 32 px. The network runs
    on the image bilinearly resized to multiples of 32.

    Output (batched, float32):

    - ``keypoints`` 1 x N x 2: (x, y) in the INPUT image's pixels, pixel
      centres at integer coordinates: a pixel ``p`` of the resized image is
      reported at ``(p + 0.5) * (W / W32, H / H32) - 0.5``;
    - ``descriptors`` 1 x 64 x N, L2-normalised;
    - ``scores`` 1 x N: keypoint heatmap x reliability, in decreasing order.

    Conf: ``max_keypoints`` (top-k by score), ``detection_threshold`` (on the
    keypoint heatmap), ``weights_path`` (an explicit ``xfeat.pt``; None: the
    usual search, see :mod:`xfeat_hloc.weights`), ``inference_form`` (fold
    BatchNorm, channels-last; False runs the network as trained).
    """

    default_conf: dict[str, Any] = {
        "max_keypoints": 4096,
        "detection_threshold": 0.05,
        "weights_path": None,
        "inference_form": True,
    }
    required_inputs = ["image"]
    # keypoints lie on whole pixels of the network input
    detection_noise = 1.0

    def _init(self, conf: dict[str, Any]) -> None:
        self.net = load_xfeat_net(
            conf["weights_path"], inference_form=conf["inference_form"]
        )

    @torch.inference_mode()
    def _forward(self, data: dict[str, Any]) -> dict[str, Tensor]:
        image = prepare_image(data["image"])
        check_min_size(*image.shape[-2:], 32, "The image")
        features = detect_and_describe(
            self.net,
            image,
            top_k=self.conf["max_keypoints"],
            threshold=self.conf["detection_threshold"],
        )
        return {
            "keypoints": features["keypoints"][None],
            "descriptors": features["descriptors"][None],
            "scores": features["scores"][None],
        }
