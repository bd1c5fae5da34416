"""XFeat + LighterGlue, with hloc's sparse matcher contract, on kornia's LightGlue."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..utils.base_model import BaseModel

#: LighterGlue's architecture (the official xfeat-lighterglue.pt), passed to
#: kornia's ``LightGlue(None, **conf)``: kornia's class-level defaults are read,
#: never modified.
LIGHTERGLUE_ARCH: dict[str, Any] = {
    "input_dim": 64,
    "descriptor_dim": 96,
    "add_scale_ori": False,
    "add_laf": False,
    "n_layers": 6,
    "num_heads": 1,
    "flash": True,
    "mp": False,
    "depth_confidence": -1,
    "weights": None,  # no kornia download: we load the state dict ourselves
}


def _lightglue_state_dict(raw: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """The matcher's entries of xfeat-lighterglue.pt, renamed to kornia's layout."""
    prefix = "matcher."
    state_dict = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    for i in range(n_layers):
        for old, new in (
            (f"self_attn.{i}.", f"transformers.{i}.self_attn."),
            (f"cross_attn.{i}.", f"transformers.{i}.cross_attn."),
        ):
            state_dict = {
                (new + k[len(old) :] if k.startswith(old) else k): v
                for k, v in state_dict.items()
            }
    return state_dict


def _width_confidence(value: float | None, device_type: str) -> float:
    """The conf's point pruning threshold; None: 0.95 on CPU, off elsewhere."""
    if value is not None:
        return value
    return 0.95 if device_type == "cpu" else -1


class LighterGlue(BaseModel):
    """XFeat + LighterGlue (a 6-layer, 96-d LightGlue) matching XFeat features.

    Input (hloc's sparse matcher data, batch 1): ``keypoints0`` 1 x N0 x 2
    (x, y) pixels, ``descriptors0`` 1 x 64 x N0, ``image_size0`` 1 x 2
    ``[W, H]`` of the image the keypoints are in (or ``image0``, whose shape
    gives it), and the same for image 1.

    Output: ``matches0`` 1 x N0 int64 (-1 = unmatched), ``matching_scores0``
    1 x N0 (LightGlue's match probability, 0 if unmatched), ``matches1``,
    ``matching_scores1``.

    Conf: ``filter_threshold`` (minimum match probability), ``width_confidence``
    (point pruning, -1 = off; None: 0.95 on the CPU, where pruning saves time,
    off on accelerators, where kornia's pruning costs ~1 s per pair with an
    unseen number of keypoints on CUDA against ~30 ms without),
    ``weights_path`` (an explicit ``xfeat-lighterglue.pt``; None: the usual
    search, see
    :mod:`xfeat_hloc.weights`; never a kornia download).
    """

    default_conf: dict[str, Any] = {
        "filter_threshold": 0.1,
        "width_confidence": None,
        "weights_path": None,
    }
    required_inputs = ["keypoints0", "keypoints1", "descriptors0", "descriptors1"]

    def _init(self, conf: dict[str, Any]) -> None:
        from kornia.feature.lightglue import LightGlue

        from ..weights import resolve_weights

        path = resolve_weights("xfeat-lighterglue", conf["weights_path"])
        arch = {
            **LIGHTERGLUE_ARCH,
            "filter_threshold": conf["filter_threshold"],
            "width_confidence": _width_confidence(conf["width_confidence"], "cpu"),
        }
        self.net = LightGlue(None, **arch)
        raw = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = _lightglue_state_dict(raw, arch["n_layers"])
        missing, unexpected = self.net.load_state_dict(state_dict, strict=False)
        buffers = {name for name, _ in self.net.named_buffers()}
        missing = [k for k in missing if k not in buffers]
        if missing or unexpected:
            raise RuntimeError(
                f"{path} does not fit LighterGlue: missing {missing}, "
                f"unexpected {unexpected}."
            )
        self.net.eval().requires_grad_(False)

    @staticmethod
    def _image_size(data: dict[str, Any], i: int) -> Tensor:
        keypoints = data[f"keypoints{i}"]
        size = data.get(f"image_size{i}")
        if size is None:
            if f"image{i}" not in data:
                raise KeyError(f"LighterGlue needs image_size{i} or image{i}.")
            height, width = data[f"image{i}"].shape[-2:]
            size = torch.tensor([[width, height]])
        size = torch.as_tensor(size).to(keypoints.device, torch.float32)
        return size.reshape(1, 2)

    @torch.inference_mode()
    def _forward(self, data: dict[str, Any]) -> dict[str, Tensor]:
        images = {}
        for i in (0, 1):
            keypoints = data[f"keypoints{i}"]
            descriptors = data[f"descriptors{i}"]
            if keypoints.dim() != 3 or keypoints.shape[0] != 1:
                raise ValueError(
                    f"keypoints{i} must be 1 x N x 2, got {tuple(keypoints.shape)}."
                )
            if descriptors.shape[-1] != keypoints.shape[1]:
                raise ValueError(
                    f"descriptors{i} must be 1 x 64 x N with N = {keypoints.shape[1]}"
                    f", got {tuple(descriptors.shape)}."
                )
            images[f"image{i}"] = {
                "keypoints": keypoints.float(),
                "descriptors": descriptors.float().transpose(1, 2),
                "image_size": self._image_size(data, i),
            }
        device = data["keypoints0"].device
        # kornia reads it at each call: per-instance, set for this device
        self.net.conf.width_confidence = _width_confidence(
            self.conf["width_confidence"], device.type
        )
        out = self.net(images)
        result = {}
        for i in (0, 1):
            matches = out[f"matches{i}"]
            # kornia keeps the probability of mutual matches below the threshold
            scores = torch.where(matches > -1, out[f"matching_scores{i}"].float(), 0)
            result[f"matches{i}"] = matches
            result[f"matching_scores{i}"] = scores
        return result
