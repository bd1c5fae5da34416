"""Text formats shared with hloc: pair names, pairs/retrieval files, image lists."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import UserError


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's h5 group name of a pair: ``a.replace('/', '-') + '/' + b...``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0: str, name1: str) -> str:
    """The old hloc pair name, with ``_`` as separator."""
    return names_to_pair(name0, name1, separator="_")


def parse_retrieval(path: Path) -> dict[str, list[str]]:
    """Read a pairs file (``name0 name1`` per line) as ``{name0: [name1, ...]}``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Pairs file not found: {path}.")
    retrieval: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise UserError(
                    f"{path}:{lineno}: expected 'name0 name1', got {line!r}. "
                    "Image names with spaces are not supported in pairs files."
                )
            retrieval[parts[0]].append(parts[1])
    return dict(retrieval)


def parse_pairs(path: Path) -> list[tuple[str, str]]:
    """Read a pairs file as a list of ``(name0, name1)`` in file order."""
    return [(q, r) for q, rs in parse_retrieval(path).items() for r in rs]


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """Write ``name0 name1`` lines (hloc's pairs format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{a} {b}\n" for a, b in pairs))
    return path


def parse_image_list(
    path: Path, with_intrinsics: bool = False
) -> list[str] | list[tuple[str, dict]]:
    """Read an image list; with intrinsics, lines are ``name MODEL W H params...``.

    With intrinsics, each entry is ``(name, {"model", "width", "height",
    "params"})``, a plain dict that converts to ``pycolmap.Camera(**d)``.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"Image list not found: {path}.")
    images: list = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip("\n").strip()
            if not line or line.startswith("#"):
                continue
            name, *data = line.split()
            if not with_intrinsics:
                images.append(name)
                continue
            if len(data) < 4:
                raise UserError(
                    f"{path}:{lineno}: expected 'name MODEL WIDTH HEIGHT params...', "
                    f"got {line!r}."
                )
            model, width, height, *params = data
            camera = {
                "model": model,
                "width": int(width),
                "height": int(height),
                "params": np.array(params, float),
            }
            images.append((name, camera))
    if not images:
        raise UserError(f"Image list {path} is empty.")
    return images


def parse_image_lists(
    paths: Path, with_intrinsics: bool = False
) -> list[str] | list[tuple[str, dict]]:
    """Read every image list matching a glob (e.g. ``queries/*_queries.txt``)."""
    paths = Path(paths)
    files = sorted(Path(paths.parent).glob(paths.name))
    if not files:
        raise UserError(f"No image list matches {paths}.")
    images: list = []
    for lfile in files:
        images += parse_image_list(lfile, with_intrinsics=with_intrinsics)
    return images
