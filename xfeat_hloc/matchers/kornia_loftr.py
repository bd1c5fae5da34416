"""LoFTR (kornia's implementation) as an hloc dense matcher, with bounded memory.

Contract (hloc's dense matchers): input ``image0``, ``image1`` grayscale
``1x1xHxW`` in [0, 1]; output, unbatched, ``keypoints0`` and ``keypoints1``
``(N, 2)`` ``(x, y)`` in pixels of the input images with pixel centres at integer
coordinates, and ``scores`` ``(N,)`` (the coarse dual-softmax confidence).

Which image is refined: LoFTR puts the points of its first image on the 1/8
coarse grid and refines those of its second image to sub-pixel positions. We
swap the pair inside the wrapper so that OUR ``image0`` gets the refined
positions and ``image1`` the grid: in hloc's localization pairs image 0 is the
query, whose keypoints are not quantized afterwards.

Memory: kornia's coarse matching materialises an ``L x S`` matrix over all coarse
cells (~7 GB at 1600x1200); we use :class:`ChunkedCoarseMatching`, which gives
the same matches with a fixed budget (``coarse_chunk_mb``). The backbone runs one
image at a time (kornia batches the pair) with early release of its maps
(:class:`LeanResNetFPN_8_2`), bitwise the same features. kornia's module-level
``default_cfg`` is never modified: the model works on a deep copy.

Weights: ``weights`` is ``"outdoor"`` or ``"indoor"`` (resolved with
:func:`xfeat_hloc.weights.resolve_weights`, an explicit file in ``weights_path``
wins), or ``None`` / ``"random"`` for random weights (seeded by ``seed``; for
plumbing tests only).
"""

from __future__ import annotations

import copy
import pickle
from typing import Any, ClassVar

import torch
from kornia.feature import LoFTR
from kornia.feature.loftr.loftr import default_cfg

from .. import logger
from ..errors import UserError
from ..models.loftr_backbone import lean_backbone
from ..models.loftr_coarse import ChunkedCoarseMatching
from ..utils.base_model import BaseModel
from ..weights import resolve_weights

_WEIGHTS = {"outdoor": "loftr_outdoor", "indoor": "loftr_indoor"}


def loftr_config(weights: str | None, match_threshold: float) -> dict[str, Any]:
    """A private copy of kornia's LoFTR config for these weights.

    The indoor checkpoint (``loftr_indoor_ds_new.ckpt``) was trained with the
    fixed positional encoding (``temp_bug_fix``), the outdoor one without.
    """
    config = copy.deepcopy(default_cfg)
    config["match_coarse"]["thr"] = float(match_threshold)
    config["coarse"]["temp_bug_fix"] = weights == "indoor"
    return config


def _load_state_dict(path: Any) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning checkpoints may pickle extra objects (hyper-parameters).
        logger.debug("Loading %s with weights_only=False.", path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as error:
        raise UserError(
            f"Cannot read the LoFTR weights file {path} ({error}). It is corrupt "
            "or not a LoFTR checkpoint: delete it and download it again."
        ) from None
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no LoFTR state dict.")
    return dict(state)


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, images: torch.Tensor) -> None:
    """Set the BatchNorm statistics of a randomly initialised LoFTR from images.

    With random weights and the default statistics (mean 0, variance 1), the
    features barely vary across the image and matching degenerates to a few
    matches. Plumbing tests and benchmarks that compare implementations call
    this first (then copy the state dict) to get hundreds of distinct matches.

    Args:
        net: a kornia ``LoFTR``.
        images: ``Bx1xHxW`` grayscale images in [0, 1].
    """
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over this batch
    was_training = net.training
    net.backbone.train()
    net.backbone(images)
    net.train(was_training)


class KorniaLoFTR(BaseModel):
    """kornia's LoFTR with hloc's dense-matcher contract and chunked coarse matching.

    Conf:
        weights: ``"outdoor"``, ``"indoor"``, or ``None``/``"random"``.
        weights_path: an explicit checkpoint file (``*.ckpt`` with ``state_dict``).
        match_threshold: minimum coarse confidence (kornia's ``thr``, 0.2).
        max_num_matches: keep at most this many matches, the best by score.
        coarse_chunk_mb: memory budget of the chunked coarse matching, MiB.
        seed: seed of the random weights.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "weights": "outdoor",
        "weights_path": None,
        "match_threshold": 0.2,
        "max_num_matches": None,
        "coarse_chunk_mb": 128.0,
        "seed": 0,
    }
    required_inputs: ClassVar[list[str]] = ["image0", "image1"]
    # image sides must give a coarse map wider than twice the border removed
    min_size: ClassVar[int] = 40

    def _init(self, conf: dict[str, Any]) -> None:
        weights = conf["weights"]
        if weights == "random":
            weights = None
        if weights is not None and weights not in _WEIGHTS:
            raise UserError(
                f"Unknown LoFTR weights {weights!r}: use 'outdoor', 'indoor', or "
                "None/'random' for random weights."
            )
        config = loftr_config(weights, conf["match_threshold"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf["seed"]))
            net = LoFTR(pretrained=None, config=config)
        if weights is not None:
            path = resolve_weights(_WEIGHTS[weights], conf["weights_path"])
            net.load_state_dict(_load_state_dict(path))
        # same parameters and results, bounded memory
        net.backbone = lean_backbone(net.backbone)
        net.coarse_matching = ChunkedCoarseMatching(
            config["match_coarse"], chunk_mb=float(conf["coarse_chunk_mb"])
        )
        self.net = net.eval()

    # -------------------------------------------------- per-image features
    def extract_dense(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features of one image ``1x1xHxW`` (pair-independent)."""
        return self.net.extract_features(image)

    def match_dense_features(
        self, feats0: dict[str, torch.Tensor], feats1: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Match two images from their :meth:`extract_dense` outputs."""
        return self._run({"features0": feats1, "features1": feats0})

    # ---------------------------------------------------------------- main
    def _forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        # one image at a time through the backbone: half the peak of kornia's
        # batched pass, bitwise the same features
        feats0 = self.extract_dense(data["image0"])
        feats1 = self.extract_dense(data["image1"])
        return self.match_dense_features(feats0, feats1)

    def _run(self, swapped: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Run kornia's LoFTR on the swapped pair and swap the result back."""
        pred = self.net(swapped)
        # kornia's frame puts pixel centres at +0.5; ours at integers
        keypoints0 = pred["keypoints1"] - 0.5  # refined side
        keypoints1 = pred["keypoints0"] - 0.5  # coarse grid side
        scores = pred["confidence"]
        top_k = self.conf["max_num_matches"]
        if top_k is not None and len(scores) > top_k:
            keep = torch.topk(scores, int(top_k)).indices
            keypoints0, keypoints1, scores = (
                keypoints0[keep],
                keypoints1[keep],
                scores[keep],
            )
        return {"keypoints0": keypoints0, "keypoints1": keypoints1, "scores": scores}
