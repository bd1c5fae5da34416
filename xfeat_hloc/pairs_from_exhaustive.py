"""All pairs of a set of images (or all query x reference pairs): hloc's
``pairs_from_exhaustive``, with the same ``main`` signature."""

from __future__ import annotations

import collections.abc
from collections.abc import Sequence
from pathlib import Path

from . import logger
from .errors import EmptyResultError, UserError
from .utils.io import list_h5_names
from .utils.parsers import parse_image_lists, write_pairs

Names = Path | str | Sequence[str | Path]


def read_names(
    image_list: Names | None, features: Path | None, what: str = "image"
) -> list[str] | None:
    """Image names from a list (names, or a text file / glob of text files)
    or, failing that, from the groups of a features file; None if neither."""
    if image_list is not None:
        if isinstance(image_list, (str, Path)):
            names = parse_image_lists(Path(image_list))
        elif isinstance(image_list, collections.abc.Iterable):
            names = [
                p.as_posix() if isinstance(p, Path) else str(p) for p in image_list
            ]
        else:
            raise UserError(f"Unknown type for the {what} list: {type(image_list)}.")
        return list(dict.fromkeys(names))
    if features is not None:
        return list_h5_names(Path(features))
    return None


def main(
    output: Path,
    image_list: Names | None = None,
    features: Path | None = None,
    ref_list: Names | None = None,
    ref_features: Path | None = None,
) -> Path:
    """Write every pair of images, ``name0 name1`` per line.

    Without references, each unordered pair of the images once (i < j in the
    list's order); with references (``ref_list`` or ``ref_features``), every
    (image, reference) pair. Images come from ``image_list`` or, failing that,
    from the groups of ``features``.
    """
    names_q = read_names(image_list, features)
    if names_q is None:
        raise UserError("Provide either a list of images or a features file.")
    names_ref = read_names(ref_list, ref_features, "reference image")
    if names_ref is None:
        pairs = [(a, b) for i, a in enumerate(names_q) for b in names_q[i + 1 :]]
    else:
        pairs = [(a, b) for a in names_q for b in names_ref if a != b]
    if not pairs:
        raise EmptyResultError(
            f"No pair: {len(names_q)} image(s)"
            + ("" if names_ref is None else f" and {len(names_ref)} reference(s)")
            + ". Exhaustive pairs need at least two images."
        )
    logger.info("Found %d pairs.", len(pairs))
    return write_pairs(Path(output), pairs)
