"""XFeat* (semi-dense matching with refinement), with hloc's dense matcher contract."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.xfeat_net import (
    DENSE_SCALES,
    dense_features,
    load_xfeat_net,
    prepare_image,
    refine_matches,
)
from ..utils.base_model import BaseModel
from .mnn import CHUNK_ELEMENTS, Workspace, mutual_nearest_neighbours


def _shifted(features: dict[str, Tensor], shift: tuple[float, float]) -> dict:
    """``features`` with its keypoints moved by ``shift`` pixels of the network
    input at each keypoint's scale."""
    if not (shift[0] or shift[1]):
        return features
    offset = features["scales"] * features["scales"].new_tensor(shift)
    return {**features, "keypoints": features["keypoints"] + offset}


class XFeatStar(BaseModel):
    """XFeat* for one image pair: the official ``match_xfeat_star``.

    Each image gives its ``top_k`` most reliable cells at two scales (0.6 and
    1.3 of the image, 20 % and 80 % of ``top_k``) with raw 64-d descriptors;
    mutual nearest neighbours on those descriptors pair them, and the
    refinement MLP moves each point of image 0 (the FIRST image) by its
    predicted offset. Matches whose refinement confidence is <= ``fine_conf``
    are dropped.

    Input: ``image0``, ``image1``, each 1 x C x H x W (C = 1 or 3, float in
    [0, 1]; uint8 is divided by 255, [0, 255] floats give practically the
    same features), at least 54 px per side (32 px at scale 0.6).

    Output (unbatched, float32), in the given images' pixels with pixel centres
    at integer coordinates:

    - ``keypoints0`` N x 2 (refined), ``keypoints1`` N x 2 (cell corners of
      image 1's network input: whole pixels at 1.3x, ~1.7 px steps at 0.6x);
    - ``scores`` N: the refinement confidence, the largest probability of the
      8 x 8 offset classifier (softmax at temperature 3), in (fine_conf, 1];
      higher is better.

    For many pairs, compute each image's features once with
    :meth:`extract_dense` and match them with :meth:`match_dense_features`;
    ``_forward`` is exactly those two steps.

    Conf: ``top_k`` (cells per image, both scales together), ``fine_conf``,
    ``weights_path`` (explicit ``xfeat.pt``), ``inference_form``, ``shift0``,
    ``shift1`` ((dx, dy) in pixels of the network input, added to image 0's and
    image 1's points at their scale; (0, 0), the default, is the official
    output). The official points are not where they belong for SfM: image 1's
    are the top-left corners of 8 x 8 cells whose descriptors describe the whole
    cell (centre +3.5 px), image 0's are refined around such corners, and image
    1's sit about (+1.5, +0.8) px off the image-0 points they are matched to
    (measured against a ground-truth homography). Two-view geometry does not
    mind; SfM, where an image plays both roles and the principal point ties
    pixels to rays, does: the ``xfeat_star`` conf of ``match_dense`` uses
    ``shift0 = (3.5, 3.5)``, ``shift1 = (2.0, 2.7)`` (see
    ``benchmarks/RESULTS.md``).
    """

    default_conf: dict[str, Any] = {
        "top_k": 10000,
        "fine_conf": 0.25,
        "weights_path": None,
        "inference_form": True,
        "chunk_elements": CHUNK_ELEMENTS,
        "shift0": (0.0, 0.0),
        "shift1": (0.0, 0.0),
    }
    required_inputs = ["image0", "image1"]

    def _init(self, conf: dict[str, Any]) -> None:
        self.net = load_xfeat_net(
            conf["weights_path"], inference_form=conf["inference_form"]
        )
        self.workspace = Workspace()

    @torch.inference_mode()
    def extract_dense(self, image: Tensor) -> dict[str, Tensor]:
        """Coarse multi-scale features of one image, on the image's device.

        Args:
            image: 1 x C x H x W, as ``image0`` of :meth:`forward`.

        Returns:
            ``keypoints`` K x 2 float32 (x, y) in the image's pixels (pixel
            centres at integer coordinates), ``descriptors`` K x 64 float32 (raw,
            not normalised), ``scales`` K x 2 float32 (image pixels per pixel of
            the network input at the keypoint's scale, x and y), ``image_size``
            (2,) int64 ``[W, H]``. K <= ``top_k``; the 0.6x cells come first.
        """
        image = prepare_image(image)
        return dense_features(self.net, image, self.conf["top_k"], DENSE_SCALES)

    @torch.inference_mode()
    def match_dense_features(
        self, features0: dict[str, Tensor], features1: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Match two outputs of :meth:`extract_dense` and refine image 0's points.

        Returns the same dict as :meth:`forward`: ``keypoints0``,
        ``keypoints1`` (N x 2) and ``scores`` (N).
        """
        matches0, _ = mutual_nearest_neighbours(
            features0["descriptors"],
            features1["descriptors"],
            chunk_elements=self.conf["chunk_elements"],
            workspace=self.workspace,
        )
        index0 = torch.nonzero(matches0 > -1)[:, 0]
        index1 = matches0[index0]
        features0 = _shifted(features0, self.conf["shift0"])
        features1 = _shifted(features1, self.conf["shift1"])
        return refine_matches(
            self.net, features0, features1, index0, index1, self.conf["fine_conf"]
        )

    def _forward(self, data: dict[str, Any]) -> dict[str, Tensor]:
        features0 = self.extract_dense(data["image0"])
        features1 = self.extract_dense(data["image1"])
        return self.match_dense_features(features0, features1)
