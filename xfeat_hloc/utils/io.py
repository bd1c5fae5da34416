"""Reading images and hloc's h5 files (features.h5, matches.h5).

Conventions: keypoints are ``(N, 2)`` ``(x, y)`` in pixels of the original image,
with pixel centres at integer coordinates (add 0.5 for COLMAP). ``matches0`` is
``(N0,)`` with -1 for unmatched keypoints of image 0.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np

from ..errors import ImageReadError, UserError
from .parsers import names_to_pair, names_to_pair_old


def _looks_truncated(data: np.ndarray, suffix: str) -> bool:
    """True for a JPEG without its end-of-image marker near the end of the file."""
    head = data[:3].tobytes()
    if head[:2] != b"\xff\xd8" and suffix not in (".jpg", ".jpeg"):
        return False
    tail = data[-1024:].tobytes()
    return b"\xff\xd9" not in tail


def read_image(path: Path, grayscale: bool = False) -> np.ndarray:
    """Read an image as uint8, ``(H, W)`` if grayscale else ``(H, W, 3)`` RGB.

    EXIF orientation is ignored (as in hloc and COLMAP). 16-bit images are
    scaled to 8 bits, an alpha channel is dropped, a grayscale file read in
    colour is replicated to 3 channels. Non-ASCII paths are supported.

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"Image not found: {path}. Check the image folder.")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(f"Cannot read image {path}: {error}.") from None
    if data.size == 0:
        raise ImageReadError(f"Image {path} is an empty file. Remove or replace it.")
    if _looks_truncated(data, path.suffix.lower()):
        raise ImageReadError(
            f"Image {path} is truncated (the JPEG has no end marker). "
            "Re-copy or remove it."
        )
    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageReadError(
            f"Cannot decode image {path}: not an image format OpenCV reads, or the "
            "file is corrupt. Convert it to JPEG/PNG or remove it."
        )
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
        image = image.astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if grayscale:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    else:
        image = np.ascontiguousarray(image[:, :, ::-1])  # BGR to RGB
    return image


def _open(path: Path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise UserError(f"h5 file not found: {path}.")
    try:
        return h5py.File(str(path), "r", libver="latest")
    except OSError as error:
        raise UserError(
            f"Cannot open {path} as an h5 file ({error}). It may be corrupt: "
            "delete it and rerun the step."
        ) from None


def list_h5_names(path: Path) -> list[str]:
    """Names of the groups that hold datasets (image names or pair names)."""
    names: set[str] = set()

    def visit(_: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            names.add(obj.parent.name.strip("/"))

    with _open(path) as fd:
        fd.visititems(visit)
    return sorted(names)


def get_keypoints(
    path: Path, name: str, return_uncertainty: bool = False
) -> np.ndarray | tuple[np.ndarray, float | None]:
    """Keypoints ``(N, 2)`` float32 of image ``name`` (and their uncertainty)."""
    with _open(path) as fd:
        if name not in fd:
            raise UserError(f"Image {name!r} has no features in {path}.")
        dset = fd[name]["keypoints"]
        keypoints = dset[()].astype(np.float32)
        uncertainty = dset.attrs.get("uncertainty")
    if return_uncertainty:
        return keypoints, None if uncertainty is None else float(uncertainty)
    return keypoints


def find_pair(fd: h5py.File, name0: str, name1: str) -> tuple[str, bool]:
    """Group name of a pair in a matches file and whether it is stored reversed.

    Tries ``(name0, name1)``, ``(name1, name0)``, then hloc's old ``_`` format.
    """
    for pair, reverse in (
        (names_to_pair(name0, name1), False),
        (names_to_pair(name1, name0), True),
        (names_to_pair_old(name0, name1), False),
        (names_to_pair_old(name1, name0), True),
    ):
        if pair in fd:
            return pair, reverse
    raise UserError(
        f"Pair ({name0}, {name1}) is not in the matches file {fd.filename}. "
        "Was it matched with a different pairs file?"
    )


def get_matches(path: Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches ``(M, 2)`` int (indices into name0, name1) and their scores ``(M,)``."""
    with _open(path) as fd:
        pair, reverse = find_pair(fd, name0, name1)
        matches0 = fd[pair]["matches0"][()].astype(np.int64)
        grp = fd[pair]
        if "matching_scores0" in grp:
            scores = grp["matching_scores0"][()].astype(np.float32)
        else:
            scores = np.ones(len(matches0), np.float32)
    idx = np.where(matches0 != -1)[0]
    matches = np.stack([idx, matches0[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    return np.ascontiguousarray(matches), scores[idx]
