"""Global descriptors from local features (VLAD), for retrieval with no
downloaded weights: the ``xfeat-global`` retrieval of the Aachen pipelines.

A codebook of ``num_clusters`` centres is learned by spherical k-means on local
descriptors sampled from the database images. Each image's descriptor is the
VLAD of its local descriptors (Jegou et al. 2010; Arandjelovic and Zisserman
2013): residuals to the nearest centre summed per centre, each centre's block
L2-normalised (intra-normalisation), signed square root, L2 normalisation. The
residuals of the unit descriptors are taken in the tangent plane of their
centre (``x - (x.c) c``): their radial part is common to all images. With
XFeat's 64-d descriptors and 64 centres it has 4,096 dimensions.

Output: an h5 file in hloc's global-features format (one group per image with a
``global_descriptor`` dataset), readable by :mod:`xfeat_hloc.pairs_from_retrieval`
and by hloc's ``pairs_from_retrieval``; the codebook is kept beside it
(``<output>.codebook.npy``) so that a rerun or an update uses the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import logger
from .errors import EmptyResultError, UserError
from .utils.h5_writer import H5Writer
from .utils.io import list_h5_names


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def read_descriptors(path: Path, name: str) -> np.ndarray:
    """Local descriptors ``(N, D)`` float32 of image ``name`` in a features file."""
    with h5py.File(str(path), "r", libver="latest") as fd:
        if name not in fd or "descriptors" not in fd[name]:
            raise UserError(
                f"Image {name!r} has no local descriptors in {path}: extract local "
                "features (descriptors included) first."
            )
        return np.ascontiguousarray(fd[name]["descriptors"][()].T, np.float32)


def train_codebook(
    features: Path,
    names: Sequence[str],
    num_clusters: int = 64,
    max_descriptors: int = 200_000,
    iterations: int = 20,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Spherical k-means centres ``(num_clusters, D)`` (unit rows) on descriptors
    sampled evenly from the images ``names``."""
    device = _device(device)
    rng = np.random.default_rng(seed)
    per_image = max(1, max_descriptors // max(1, len(names)))
    samples = []
    for name in tqdm(names, desc="codebook samples", unit="im"):
        desc = read_descriptors(features, name)
        if len(desc) > per_image:
            desc = desc[rng.choice(len(desc), per_image, replace=False)]
        samples.append(desc)
    data = torch.from_numpy(np.concatenate(samples)).to(device)
    data = torch.nn.functional.normalize(data, dim=1)
    if len(data) < num_clusters:
        raise EmptyResultError(
            f"Only {len(data)} local descriptors to learn {num_clusters} VLAD centres "
            f"from {len(names)} images in {features}."
        )
    generator = torch.Generator().manual_seed(seed)
    init = torch.randperm(len(data), generator=generator)[:num_clusters]
    centers = data[init.to(device)].clone()
    for _ in range(iterations):
        assign = _nearest(data, centers)
        sums = torch.zeros_like(centers).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=num_clusters)
        empty = counts == 0
        if empty.any():  # restart empty clusters on random descriptors
            pick = torch.randint(len(data), (int(empty.sum()),), generator=generator)
            sums[empty] = data[pick.to(device)]
        centers = torch.nn.functional.normalize(sums, dim=1)
    return centers.cpu().numpy()


def _nearest(
    data: torch.Tensor, centers: torch.Tensor, chunk: int = 65536
) -> torch.Tensor:
    """Index of the most similar centre for each row, in chunks (bounded memory)."""
    return torch.cat(
        [
            (data[i : i + chunk] @ centers.T).argmax(1)
            for i in range(0, len(data), chunk)
        ]
    )


def vlad(descriptors: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """VLAD ``(K * D,)`` of local descriptors ``(N, D)`` with centres ``(K, D)``."""
    descriptors = torch.nn.functional.normalize(descriptors, dim=1)
    assign = _nearest(descriptors, centers)
    nearest = centers[assign]
    # Residuals in the tangent plane of each centre: the radial part, 1 - x.c,
    # is the same in expectation for every image and would dominate similarities.
    residuals = descriptors - (descriptors * nearest).sum(1, keepdim=True) * nearest
    out = torch.zeros_like(centers).index_add_(0, assign, residuals)
    out = torch.nn.functional.normalize(out, dim=1)  # intra-normalisation
    out = out.flatten()
    out = out.sign() * out.abs().sqrt()
    return torch.nn.functional.normalize(out, dim=0)


def codebook_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".codebook.npy")


def main(
    features: Path,
    output: Path,
    codebook_names: Sequence[str] | None = None,
    image_names: Sequence[str] | None = None,
    num_clusters: int = 64,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> Path:
    """Write VLAD global descriptors of the images of a local features file.

    Args:
        features: local features h5 (hloc format, with ``descriptors``).
        output: the global features h5 to write.
        codebook_names: images whose descriptors train the codebook (the
            database); default all images of ``features``.
        image_names: images to describe; default all images of ``features``.
        num_clusters: VLAD centres.
        overwrite: recompute the codebook and every descriptor.
        device: torch device; default cuda if available, else cpu.
    """
    features, output = Path(features), Path(output)
    device = _device(device)
    all_names = list_h5_names(features)
    image_names = list(all_names if image_names is None else image_names)
    codebook_names = list(all_names if codebook_names is None else codebook_names)
    missing = sorted(set(image_names + codebook_names) - set(all_names))
    if missing:
        raise UserError(
            f"{len(missing)} images have no local features in {features} (e.g. "
            f"{', '.join(missing[:3])}): extract them first."
        )
    cb_path = codebook_path(output)
    if overwrite or not cb_path.exists():
        logger.info(
            "Learning a VLAD codebook (%d centres) on %d images.",
            num_clusters,
            len(codebook_names),
        )
        centers_np = train_codebook(
            features, codebook_names, num_clusters, device=device
        )
        tmp = cb_path.with_name(cb_path.name + ".tmp.npy")
        np.save(tmp, centers_np)
        tmp.replace(cb_path)
        if output.exists():  # descriptors of another codebook
            output.unlink()
    centers = torch.from_numpy(np.load(cb_path)).to(device)

    with H5Writer(output, overwrite=overwrite) as writer:
        todo = [n for n in image_names if n not in writer.done]
        if not todo:
            logger.info("VLAD descriptors: all %d images done.", len(image_names))
        for name in tqdm(todo, desc="VLAD descriptors", unit="im"):
            desc = torch.from_numpy(read_descriptors(features, name)).to(device)
            if len(desc) == 0:
                global_desc = torch.zeros(centers.numel())
            else:
                global_desc = vlad(desc, centers)
            writer.write(
                name,
                {"global_descriptor": global_desc.cpu().numpy().astype(np.float16)},
            )
    return output
