"""Image pairs from global descriptors (image retrieval), hloc's signature.

Every query gets its ``num_matched`` most similar database images (cosine
similarity of the ``global_descriptor`` datasets, scores below ``min_score``
dropped, no self pairs). The similarity is computed for chunks of queries, so
memory grows linearly with the number of images (``chunk_size`` x database size
similarities at a time, plus the database descriptors).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import logger
from .errors import EmptyResultError, UserError
from .utils.io import list_h5_names
from .utils.parsers import parse_image_lists, write_pairs


def parse_names(
    prefix: str | Sequence[str] | None,
    names: Path | str | Iterable[str] | None,
    names_all: Sequence[str],
) -> list[str]:
    """Select names by prefix(es), by a list (or list file), or take all."""
    if prefix is not None:
        prefix = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        selected = [n for n in names_all if n.startswith(prefix)]
        if not selected:
            raise UserError(f"No image name starts with {prefix}.")
        return selected
    if names is not None:
        if isinstance(names, str | Path):
            return list(parse_image_lists(Path(names)))
        return list(names)
    return list(names_all)


def _read_global(
    names: Sequence[str], name2file: dict[str, Path], key: str
) -> np.ndarray:
    by_file: dict[Path, list[int]] = {}
    for i, name in enumerate(names):
        by_file.setdefault(name2file[name], []).append(i)
    out: np.ndarray | None = None
    for path, indices in by_file.items():
        with h5py.File(str(path), "r", libver="latest") as fd:
            for i in indices:
                desc = fd[names[i]][key][()].astype(np.float32).reshape(-1)
                if out is None:
                    out = np.empty((len(names), desc.size), np.float32)
                out[i] = desc
    assert out is not None
    return out


def retrieve(
    query_desc: np.ndarray,
    db_desc: np.ndarray,
    query_names: Sequence[str],
    db_names: Sequence[str],
    num_matched: int,
    min_score: float | None = 0.0,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> list[tuple[str, str]]:
    """Top ``num_matched`` database images per query, best first."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    db = torch.from_numpy(db_desc).to(device)
    db_index = {n: j for j, n in enumerate(db_names)}
    k = min(num_matched, len(db_names))
    pairs = []
    for start in tqdm(
        range(0, len(query_names), chunk_size), desc="retrieval", unit="chunk"
    ):
        q = torch.from_numpy(query_desc[start : start + chunk_size]).to(device)
        sim = q @ db.T
        for row, name in enumerate(query_names[start : start + chunk_size]):
            if name in db_index:  # no self pairs
                sim[row, db_index[name]] = float("-inf")
        if min_score is not None:
            sim[sim < min_score] = float("-inf")
        top = torch.topk(sim, k, dim=1)
        valid = top.values.isfinite().cpu().numpy()
        indices = top.indices.cpu().numpy()
        for row in range(len(q)):
            qname = query_names[start + row]
            pairs += [(qname, db_names[j]) for j in indices[row][valid[row]]]
    return pairs


def main(
    descriptors: Path,
    output: Path,
    num_matched: int,
    query_prefix: str | Sequence[str] | None = None,
    query_list: Path | Iterable[str] | None = None,
    db_prefix: str | Sequence[str] | None = None,
    db_list: Path | Iterable[str] | None = None,
    db_model: Path | None = None,
    db_descriptors: Path | Sequence[Path] | None = None,
    min_score: float | None = 0.0,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> Path:
    """Write retrieval pairs ``query db`` (hloc's signature and semantics).

    Args:
        descriptors: global features h5 of the queries (and of the database
            unless ``db_descriptors``).
        output: the pairs file to write.
        num_matched: database images per query.
        query_prefix, query_list: which images are queries (default all).
        db_prefix, db_list, db_model: which images form the database; a COLMAP
            model (``db_model``) means its images.
        db_descriptors: other h5 file(s) holding the database descriptors.
        min_score: drop pairs with a lower cosine similarity (None: keep all).
        chunk_size: queries per similarity block.
        device: torch device for the similarities.
    """
    descriptors = Path(descriptors)
    if db_descriptors is None:
        db_descriptors = [descriptors]
    elif isinstance(db_descriptors, str | Path):
        db_descriptors = [Path(db_descriptors)]
    name2db = {n: Path(p) for p in db_descriptors for n in list_h5_names(p)}
    query_names_h5 = list_h5_names(descriptors)

    if db_model is not None:
        import pycolmap

        model = pycolmap.Reconstruction(str(db_model))
        db_names = [model.images[i].name for i in sorted(model.reg_image_ids())]
    else:
        db_names = parse_names(db_prefix, db_list, list(name2db))
    query_names = parse_names(query_prefix, query_list, query_names_h5)
    for label, names, have, path in (
        ("database", db_names, name2db, db_descriptors),
        ("query", query_names, set(query_names_h5), descriptors),
    ):
        missing = [n for n in names if n not in have]
        if missing:
            raise UserError(
                f"{len(missing)} {label} images have no global descriptor in {path} "
                f"(e.g. {', '.join(missing[:3])}): extract them first."
            )
    if not db_names or not query_names:
        raise EmptyResultError("No database or no query images to retrieve from.")

    db_desc = _read_global(db_names, name2db, "global_descriptor")
    query_desc = _read_global(
        query_names, dict.fromkeys(query_names, descriptors), "global_descriptor"
    )
    pairs = retrieve(
        query_desc,
        db_desc,
        query_names,
        db_names,
        num_matched,
        min_score=min_score,
        chunk_size=chunk_size,
        device=device,
    )
    logger.info(
        "Found %d retrieval pairs for %d queries.", len(pairs), len(query_names)
    )
    return write_pairs(Path(output), pairs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--descriptors", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--num_matched", type=int, required=True)
    parser.add_argument("--query_prefix", type=str, nargs="+")
    parser.add_argument("--query_list", type=Path)
    parser.add_argument("--db_prefix", type=str, nargs="+")
    parser.add_argument("--db_list", type=Path)
    parser.add_argument("--db_model", type=Path)
    parser.add_argument("--db_descriptors", type=Path)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(_parser)
    main(**vars(_parser.parse_args()))
