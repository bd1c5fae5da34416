"""NetVLAD (Arandjelovic et al., CVPR 2016) global descriptor, VGG16 backbone,
without torchvision: the MATLAB weights that hloc uses are read with scipy.

Weights: ``<model_name>.mat`` (hloc's export of the official MATLAB models,
e.g. ``VGG16-NetVLAD-Pitts30K.mat``, 529 MB), found in this order: the conf's
``weights_path``; ``$XFEAT_HLOC_WEIGHTS_DIR/<model_name>.mat``; where hloc keeps
it, ``$TORCH_HOME/hub/netvlad/<model_name>.mat``. Nothing is downloaded: when the
file is missing, the error says where to get it and where to put it.

File structure (MATLAB struct ``net``): ``net.layers`` is a cell array in which
entries 0-28 are VGG16's ``conv1_1`` ... ``conv5_3`` with their ReLUs and max
poolings (conv ``weights = {W (S x S x IN x OUT), b (OUT)}``), entry 30 the
NetVLAD layer (``weights = {assignment (D x K), -centres (D x K)}``) and entry 33
the whitening (``weights = {W (1 x 1 x D*K x OUT), b (OUT)}``);
``net.meta.normalization.averageImage`` holds the RGB mean (0-255). Layer widths
are read from the file.

Input ``image`` 1x3xHxW RGB in [0, 1]; output ``global_descriptor`` 1xOUT,
L2-normalised (4,096-d for the official models).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsNotFoundError
from ..utils.base_model import BaseModel
from ..weights import ENV_DIR, torch_hub_checkpoints

URLS = {
    "VGG16-NetVLAD-Pitts30K": "https://cvg-data.inf.ethz.ch/hloc/netvlad/Pitts30K_struct.mat",
    "VGG16-NetVLAD-TokyoTM": "https://cvg-data.inf.ethz.ch/hloc/netvlad/TokyoTM_struct.mat",
}

# VGG16's feature layers up to conv5_3 (its last ReLU and pooling removed).
VGG16_LAYERS = (
    ["conv", "relu"] * 2 + ["pool"]
    + ["conv", "relu"] * 2 + ["pool"]
    + ["conv", "relu"] * 3 + ["pool"]
    + ["conv", "relu"] * 3 + ["pool"]
    + ["conv", "relu"] * 2 + ["conv"]
)  # fmt: skip
NETVLAD_LAYER = 30
WHITEN_LAYER = 33


def netvlad_weights_path(
    model_name: str, path: str | os.PathLike | None = None
) -> Path:
    """The ``.mat`` weights of ``model_name`` (see the module doc for the order)."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"NetVLAD weights file {path} (given explicitly) does not exist."
            )
        return path
    file_name = f"{model_name}.mat"
    hloc_place = torch_hub_checkpoints().parent / "netvlad" / file_name
    candidates = []
    if os.environ.get(ENV_DIR):
        candidates.append(Path(os.environ[ENV_DIR]) / file_name)
    candidates.append(hloc_place)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    url = URLS.get(model_name, "(unknown model name)")
    raise WeightsNotFoundError(
        f"NetVLAD weights {file_name} not found in: "
        + ", ".join(str(c) for c in candidates)
        + f". Fix: on a machine with internet, `mkdir -p {hloc_place.parent} && "
        f"wget {url} -O {hloc_place}` (529 MB, where hloc keeps it), or pass "
        "weights_path; or use the offline retrieval (--retrieval xfeat-global) or "
        "a published pairs file (--retrieval-pairs)."
    )


def _weights(layer: Any) -> list[np.ndarray]:
    weights = getattr(layer, "weights", None)
    if weights is None:
        return []
    if isinstance(weights, np.ndarray) and weights.dtype == object:
        # a MATLAB cell {W, b}: iterate over its first axis
        return [np.asarray(w, np.float32) for w in weights]
    if isinstance(weights, list | tuple):
        return [np.asarray(w) for w in weights]
    return [np.asarray(weights)]


def load_netvlad_mat(path: Path, whiten: bool = True) -> dict[str, Any]:
    """Read the layers of a NetVLAD ``.mat`` as torch-shaped float32 arrays.

    Returns ``convs`` (list of ``(weight OUTxINxSxS, bias OUT)``), ``assignment``
    (K x D), ``centers`` (D x K), ``whiten`` (``(weight OUTxD*K, bias OUT)`` or
    None) and ``mean`` (3,) RGB in 0-255.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(str(path), struct_as_record=False, squeeze_me=True)
        net = mat["net"]
        layers = list(np.atleast_1d(net.layers))
    except (
        OSError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        MatReadError,
    ) as error:
        raise WeightsNotFoundError(
            f"{path} is not a NetVLAD MATLAB weights file ({error}). Download it "
            "again (see the message without weights_path)."
        ) from None

    def bad(what: str) -> WeightsNotFoundError:
        return WeightsNotFoundError(
            f"{path}: {what}; expected VGG16 conv layers in net.layers[0:29], "
            f"NetVLAD in [{NETVLAD_LAYER}], whitening in [{WHITEN_LAYER}]."
        )

    needed = WHITEN_LAYER + 1 if whiten else NETVLAD_LAYER + 1
    if len(layers) < needed:
        raise bad(f"only {len(layers)} layers")
    convs = []
    in_channels = 3
    for index, kind in enumerate(VGG16_LAYERS):
        if kind != "conv":
            continue
        weights = _weights(layers[index])
        if len(weights) != 2 or weights[0].ndim != 4:
            raise bad(f"layer {index} is not a convolution")
        w, b = weights
        if w.shape[2] != in_channels or w.shape[0] != w.shape[1]:
            raise bad(f"layer {index} has shape {w.shape}")
        convs.append(
            (
                np.ascontiguousarray(w.transpose(3, 2, 0, 1), np.float32),
                np.asarray(b, np.float32).reshape(-1),
            )
        )
        in_channels = w.shape[3]
    vlad = _weights(layers[NETVLAD_LAYER])
    if len(vlad) != 2 or vlad[0].ndim != 2 or vlad[0].shape[0] != in_channels:
        raise bad(f"layer {NETVLAD_LAYER} is not a NetVLAD layer")
    assignment = np.asarray(vlad[0], np.float32).T  # K x D
    centers = -np.asarray(vlad[1], np.float32)  # stored negated
    whitening = None
    if whiten:
        w_mat = _weights(layers[WHITEN_LAYER])
        if len(w_mat) != 2:
            raise bad(f"layer {WHITEN_LAYER} is not the whitening layer")
        w = np.asarray(w_mat[0], np.float32)
        w = w.reshape(-1, w.shape[-1]).T  # OUT x D*K
        if w.shape[1] != centers.size:
            raise bad(f"whitening input size {w.shape[1]} != {centers.size}")
        whitening = (np.ascontiguousarray(w), np.asarray(w_mat[1], np.float32).ravel())
    average = np.asarray(net.meta.normalization.averageImage, np.float32)
    mean = average.reshape(-1, 3)[0] if average.size >= 3 else np.zeros(3)
    return {
        "convs": convs,
        "assignment": assignment,
        "centers": centers,
        "whiten": whitening,
        "mean": mean.astype(np.float32),
    }


class NetVLADLayer(nn.Module):
    """Soft-assignment VLAD pooling of ``(B, D, N)`` unit descriptors.

    Computes ``sum_n a_kn (x_n - c_k)`` as ``x @ a^T - c * sum_n a_kn``, without
    the ``D x K x N`` tensor.
    """

    def __init__(self, dim: int, num_clusters: int, intranorm: bool = True) -> None:
        super().__init__()
        self.score_proj = nn.Conv1d(dim, num_clusters, kernel_size=1, bias=False)
        self.centers = nn.Parameter(torch.empty(dim, num_clusters))
        nn.init.xavier_uniform_(self.centers)
        self.intranorm = intranorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assign = F.softmax(self.score_proj(x), dim=1)  # B x K x N
        desc = torch.einsum("bdn,bkn->bdk", x, assign)
        desc = desc - self.centers[None] * assign.sum(-1)[:, None, :]
        if self.intranorm:
            desc = F.normalize(desc, dim=1)
        return F.normalize(desc.flatten(1), dim=1)  # D-major, like MATLAB's


class NetVLAD(BaseModel):
    """NetVLAD global descriptor (hloc's ``netvlad`` extractor)."""

    default_conf = {
        "model_name": "VGG16-NetVLAD-Pitts30K",
        "whiten": True,
        "weights_path": None,
    }
    required_inputs = ["image"]

    def _init(self, conf: dict[str, Any]) -> None:
        path = netvlad_weights_path(conf["model_name"], conf["weights_path"])
        params = load_netvlad_mat(path, whiten=conf["whiten"])
        layers: list[nn.Module] = []
        convs = iter(params["convs"])
        for kind in VGG16_LAYERS:
            if kind == "conv":
                w, b = next(convs)
                conv = nn.Conv2d(
                    w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2
                )
                conv.weight.data = torch.from_numpy(w)
                conv.bias.data = torch.from_numpy(b)
                layers.append(conv)
            elif kind == "relu":
                layers.append(nn.ReLU(inplace=True))
            else:
                layers.append(nn.MaxPool2d(2, 2))
        self.backbone = nn.Sequential(*layers)
        centers = params["centers"]
        self.netvlad = NetVLADLayer(centers.shape[0], centers.shape[1])
        self.netvlad.score_proj.weight.data = torch.from_numpy(
            params["assignment"]
        ).unsqueeze(-1)
        self.netvlad.centers.data = torch.from_numpy(centers)
        self.whiten = None
        if params["whiten"] is not None:
            w, b = params["whiten"]
            self.whiten = nn.Linear(w.shape[1], w.shape[0])
            self.whiten.weight.data = torch.from_numpy(w)
            self.whiten.bias.data = torch.from_numpy(b)
        self.register_buffer(
            "mean", torch.from_numpy(params["mean"]).view(1, 3, 1, 1), persistent=False
        )

    def _forward(self, data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        if image.shape[1] != 3:
            raise ValueError(
                "NetVLAD needs RGB images (preprocessing grayscale=False)."
            )
        x = image.clamp(0.0, 1.0) * 255.0 - self.mean
        x = self.backbone(x)
        x = F.normalize(x.flatten(2), dim=1)
        desc = self.netvlad(x)
        if self.whiten is not None:
            desc = F.normalize(self.whiten(desc), dim=1)
        return {"global_descriptor": desc}
