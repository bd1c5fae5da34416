"""Dense matching (XFeat*, LoFTR) into hloc's features.h5 and matches.h5.

A dense matcher gives points per PAIR (XFeat* and LoFTR move the points of the
pair's first image to sub-pixel positions that depend on the second image).
COLMAP needs one keypoint set per IMAGE, so this step runs in three passes, each
streaming over the h5 files (memory does not grow with the number of pairs):

1. **match**: every pair is matched on its preprocessed images (``grayscale``,
   ``resize_max``, sides made multiples of ``dfactor``); the points, mapped back
   to original pixels (matches with a point off the image dropped), are stored
   as the raw per-pair ``keypoints0``, ``keypoints1``, ``scores`` of the pair's
   group in the matches file, like hloc does. Per-image features are computed
   once per image where the model allows it (``extract_dense`` /
   ``match_dense_features``) and kept in an LRU cache bounded in memory (conf
   ``cache_mb``).
2. **aggregate**, image by image: the image's points from all its pairs vote
   into cells (see :mod:`xfeat_hloc.utils.aggregation`), giving its keypoints
   (features file: ``keypoints`` (N, 2) float32, ``scores``, ``image_size``
   [W, H]).
3. **assign**, pair by pair: each raw point is mapped to its image's nearest
   keypoint within ``max_error`` px, many-to-one matches are dropped, and
   ``matches0`` (int32, -1 = unmatched) and ``matching_scores0`` are written.

Images of ``features_ref`` files keep their keypoints: points snap to them
within ``max_error``. When ``features_ref`` is given (localization), the new
images (queries) are not quantized: they keep every refined point exactly. In
such pairs the query is matched as the model's image 0 (the refined side),
whichever side of the pairs file it is on. Images already in the output features
file count as references too (like hloc), unless ``overwrite``.

Every pass writes through :class:`~xfeat_hloc.utils.h5_writer.H5Writer`: an
interrupted run resumes where it stopped, h5 files are never left corrupt.
"""

from __future__ import annotations

import argparse
import copy
import pprint
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import logger, matchers
from .cli import add_device_and_weights
from .confs import dense_matchers as confs
from .errors import EmptyResultError, ImageReadError, UserError
from .utils.aggregation import (
    VoteAccumulator,
    assign_to_keypoints,
    build_tree,
    to_matches0,
    unique_matches,
)
from .utils.base_model import BaseModel, dynamic_load
from .utils.h5_writer import H5Writer
from .utils.io import read_image
from .utils.parsers import names_to_pair, parse_pairs

DEFAULT_PREPROCESSING: dict[str, Any] = {
    "grayscale": False,
    "resize_max": None,
    "dfactor": 8,
}
DEFAULT_CACHE_MB = 1024.0
# below this fraction of snapped points, a features_ref file is probably foreign
MIN_SNAP_RATE = 0.05


# ---------------------------------------------------------------- helpers
def preprocess(
    image: np.ndarray, conf: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image for a dense matcher.

    The long side is brought down to ``resize_max`` (never up), then both sides
    down to multiples of ``dfactor``, in a single resize (area interpolation when
    shrinking).

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` uint8.
        conf: preprocessing conf (``resize_max``, ``dfactor``).

    Returns:
        The resized float32 image in [0, 1], ``(C, h, w)``, and the scale
        ``(sx, sy)`` = original / resized size: a point ``p`` of the resized
        image is ``(p + 0.5) * scale - 0.5`` in the original.
    """
    height, width = image.shape[:2]
    scale = 1.0
    if conf.get("resize_max") and max(width, height) > conf["resize_max"]:
        scale = conf["resize_max"] / max(width, height)
    dfactor = int(conf.get("dfactor") or 1)
    new_w = int(round(width * scale)) // dfactor * dfactor
    new_h = int(round(height * scale)) // dfactor * dfactor
    if new_w <= 0 or new_h <= 0:
        resized = np.zeros((max(new_h, 0), max(new_w, 0), *image.shape[2:]), np.uint8)
    elif (new_w, new_h) != (width, height):
        shrink = new_w <= width and new_h <= height
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    else:
        resized = image
    array = resized.astype(np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    scale_xy = np.array(
        [width / max(new_w, 1), height / max(new_h, 1)], dtype=np.float64
    )
    return np.ascontiguousarray(array), scale_xy


def to_original(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Resized-image pixels to original pixels (pixel centres at integers)."""
    return ((points.astype(np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Which ``(N, 2)`` points lie on a ``(W, H)`` image (pixel edges included)."""
    upper = np.array(size, np.float32) - 0.5
    return np.all((points >= -0.5) & (points <= upper), axis=1)


class _LRU:
    """A least-recently-used cache bounded by the bytes of its values."""

    def __init__(self, budget_bytes: float) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any], size: Callable[[Any], int]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key][0]
        value = make()
        nbytes = int(size(value))
        self.items[key] = (value, nbytes)
        self.used += nbytes
        while self.used > self.budget and len(self.items) > 1:
            _, (_, freed) = self.items.popitem(last=False)
            self.used -= freed
        return value


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 64


def _dedupe_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeated pairs and reversed repeats (keeping the first), self-pairs."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for a, b in pairs:
        if a == b or (a, b) in seen or (b, a) in seen:
            continue
        seen.add((a, b))
        unique.append((a, b))
    return unique


def _group_datasets(path: Path) -> dict[str, set[str]]:
    """``{group name: dataset names}`` of the groups of an h5 file."""
    found: dict[str, set[str]] = defaultdict(set)
    if not Path(path).exists():
        return found

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            parent, _, key = name.rpartition("/")
            found[parent].add(key)

    try:
        with h5py.File(str(path), "r") as fd:
            fd.visititems(visit)
    except OSError as error:
        raise UserError(
            f"Cannot open {path} as an h5 file ({error}). It may be corrupt: "
            "delete it and rerun the step."
        ) from None
    return found


def _reference_index(paths: list[Path]) -> dict[str, Path]:
    """``{image name: features file}`` of reference features files, checked."""
    index: dict[str, Path] = {}
    for path in paths:
        if not path.exists():
            raise UserError(
                f"Reference features file {path} (features_ref) does not exist."
            )
        groups = _group_datasets(path)
        names = [g for g, keys in groups.items() if "keypoints" in keys]
        if not names:
            raise UserError(
                f"{path} holds no image with 'keypoints': it is not an hloc "
                "features file. Pass the features file of the reference images."
            )
        with h5py.File(str(path), "r") as fd:
            shape = fd[names[0]]["keypoints"].shape
        if len(shape) != 2 or shape[1] != 2:
            raise UserError(
                f"{path}: keypoints of {names[0]!r} have shape {shape}, expected "
                "(N, 2). Is it an hloc features file?"
            )
        for name in names:
            index.setdefault(name, path)
    return index


def _features_hint(path: Path, name: str) -> str:
    """What a reference features file looks like, for error messages."""
    try:
        with h5py.File(str(path), "r") as fd:
            grp = fd[name]
            num = grp["keypoints"].shape[0]
            desc = grp["descriptors"].shape if "descriptors" in grp else None
    except (OSError, KeyError):
        return ""
    if desc is not None:
        return f" ({num} keypoints, descriptors of dimension {desc[0]})"
    return f" ({num} keypoints, no descriptors)"


def _resolve_paths(
    conf: dict[str, Any],
    pairs: Path,
    export_dir: Path | None,
    matches: Path | str | None,
    features: Path | str | None,
) -> tuple[Path, Path]:
    """hloc's naming: ``{features}{output}.h5`` and ``{output}_{pairs.stem}.h5``."""
    if isinstance(features, Path):
        features_path = features
        if matches is None:
            raise UserError(
                f"Pass `matches` as a path too when `features` is a path ({features})."
            )
    else:
        if export_dir is None:
            raise UserError(
                "Pass export_dir, or both `features` and `matches` as paths."
            )
        prefix = "feats_" if features is None else features
        features_path = Path(export_dir, f"{prefix}{conf['output']}.h5")
    if matches is None:
        assert export_dir is not None
        matches_path = Path(export_dir, f"{conf['output']}_{Path(pairs).stem}.h5")
    else:
        matches_path = Path(matches)
    return features_path, matches_path


def resolve_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """A copy of a dense conf with the defaults filled in."""
    conf = copy.deepcopy(conf)
    conf["preprocessing"] = {**DEFAULT_PREPROCESSING, **conf.get("preprocessing", {})}
    conf.setdefault("max_error", 2)
    conf.setdefault("cell_size", 8)
    conf.setdefault("cache_mb", DEFAULT_CACHE_MB)
    if conf["cell_size"] and conf["cell_size"] < conf["max_error"]:
        conf["cell_size"] = conf["max_error"]
    return conf


# ------------------------------------------------------------ pass 1: match
class _PairMatcher:
    """Runs a dense model on pairs, reusing per-image work through an LRU."""

    def __init__(
        self,
        model: BaseModel,
        conf: dict[str, Any],
        image_dir: Path,
        device: torch.device,
    ) -> None:
        self.model = model
        self.conf = conf
        self.image_dir = image_dir
        self.device = device
        self.min_size = max(
            int(getattr(model, "min_size", 0) or 0),
            int(conf["preprocessing"]["dfactor"] or 1),
        )
        self.per_image = hasattr(model, "extract_dense") and hasattr(
            model, "match_dense_features"
        )
        self.cache = _LRU(float(conf["cache_mb"]) * 2**20)
        self.sizes: dict[str, tuple[int, int]] = {}  # original (W, H)
        self.scales: dict[str, np.ndarray] = {}  # original / preprocessed
        self.too_small: dict[str, str] = {}  # name -> why
        # (W, H) and source file of images whose keypoints are given
        self.expected_sizes: dict[str, tuple[tuple[int, int], Path]] = {}
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[str, Future] = {}

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        image = read_image(
            self.image_dir / name, self.conf["preprocessing"]["grayscale"]
        )
        size = (image.shape[1], image.shape[0])
        array, scale = preprocess(image, self.conf["preprocessing"])
        return array, scale, size

    def prefetch(self, names: Iterable[str]) -> None:
        """Start reading images that the next pair needs and no cache holds."""
        for name in names:
            key = ("feat" if self.per_image else "img", name)
            if (
                key not in self.cache.items
                and name not in self.pending
                and name not in self.too_small
            ):
                self.pending[name] = self.pool.submit(self._load, name)

    def _array(self, name: str) -> np.ndarray:
        """The preprocessed ``(C, h, w)`` image; records its size and scale."""
        future = self.pending.pop(name, None)
        array, scale, size = future.result() if future else self._load(name)
        expected = self.expected_sizes.get(name)
        if expected is not None and tuple(expected[0]) != tuple(size):
            raise UserError(
                f"{expected[1]} says image {name!r} is {tuple(expected[0])} "
                f"(W, H) but the image is {size}: those features were made "
                "from other images. Use the features of these images."
            )
        self.sizes[name] = size
        self.scales[name] = scale
        return array

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array)[None].to(self.device)

    def _image(self, name: str) -> torch.Tensor:
        """The image tensor (cached: for models that take whole pairs)."""
        return self.cache.get(
            ("img", name), lambda: self._tensor(self._array(name)), _nbytes
        )

    def _features(self, name: str) -> dict[str, torch.Tensor]:
        """Per-image features (cached); the image itself is not kept."""
        return self.cache.get(
            ("feat", name),
            lambda: self.model.extract_dense(self._tensor(self._array(name))),
            _nbytes,
        )

    def usable(self, name: str) -> bool:
        """False (and remembered) for an image too small for the model."""
        if name in self.too_small:
            return False
        if name not in self.sizes:
            array = self._array(name)
            h, w = array.shape[1:]
            size = "{}x{} px, {}x{} after preprocessing".format(*self.sizes[name], w, h)
            if min(h, w) < self.min_size:
                self.too_small[name] = f"{size}; the minimum is {self.min_size} px"
                return False
            key = ("feat" if self.per_image else "img", name)
            try:  # a model may know its own minimum better (it raises then)
                if self.per_image:
                    value = self.model.extract_dense(self._tensor(array))
                else:
                    value = self._tensor(array)
            except ImageReadError as error:
                self.too_small[name] = f"{size}; {error}"
                return False
            self.cache.get(key, lambda: value, _nbytes)
        return True

    def match(self, name0: str, name1: str) -> tuple[np.ndarray, ...]:
        """Points ``(N, 2)`` in original pixels of both images, and scores."""
        if self.per_image:
            feats0, feats1 = self._features(name0), self._features(name1)
            pred = self.model.match_dense_features(feats0, feats1)
        else:
            pred = self.model(
                {"image0": self._image(name0), "image1": self._image(name1)}
            )
        kp0 = pred["keypoints0"].detach().float().cpu().numpy().reshape(-1, 2)
        kp1 = pred["keypoints1"].detach().float().cpu().numpy().reshape(-1, 2)
        scores = pred["scores"].detach().float().cpu().numpy().reshape(-1)
        kp0 = to_original(kp0, self.scales[name0])
        kp1 = to_original(kp1, self.scales[name1])
        return kp0, kp1, scores.astype(np.float32)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@torch.inference_mode()
def match_pairs(
    conf: dict[str, Any],
    pairs: list[tuple[str, str]],
    image_dir: Path,
    matches_path: Path,
    fixed: set[str],
    device: torch.device,
    overwrite: bool = False,
    keypoint_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Pass 1: raw per-pair points into the matches file (resumable).

    In a pair whose image 0 is fixed (a reference) and image 1 is new, the model
    sees the pair swapped so that the new image gets the refined points.

    Returns:
        ``{"too_small": {name: reason}, "matched": int}``.
    """
    with H5Writer(matches_path, overwrite=overwrite) as writer:
        todo = [p for p in pairs if names_to_pair(*p) not in writer.done]
        if not todo:
            return {"too_small": {}, "matched": 0}
        Model = dynamic_load(matchers, conf["model"]["name"])
        model = Model(conf["model"]).eval().to(device)
        runner = _PairMatcher(model, conf, image_dir, device)
        runner.expected_sizes = _stored_sizes(fixed, keypoint_files or {})
        try:
            for k, (name0, name1) in enumerate(tqdm(todo, desc="dense matching")):
                if k + 1 < len(todo):
                    runner.prefetch(todo[k + 1])
                flip = name0 in fixed and name1 not in fixed
                a, b = (name1, name0) if flip else (name0, name1)
                if runner.usable(a) & runner.usable(b):
                    kp_a, kp_b, scores = runner.match(a, b)
                else:
                    kp_a = kp_b = np.zeros((0, 2), np.float32)
                    scores = np.zeros(0, np.float32)
                kp0, kp1 = (kp_b, kp_a) if flip else (kp_a, kp_b)
                size0, size1 = runner.sizes[name0], runner.sizes[name1]
                # a refinement may push a point off the image: drop such matches
                keep = inside(kp0, size0) & inside(kp1, size1)
                kp0, kp1, scores = kp0[keep], kp1[keep], scores[keep]
                writer.write(
                    names_to_pair(name0, name1),
                    {"keypoints0": kp0, "keypoints1": kp1, "scores": scores},
                    {
                        "keypoints0": {"image_size": np.array(size0, np.int64)},
                        "keypoints1": {"image_size": np.array(size1, np.int64)},
                    },
                )
        finally:
            runner.close()
        too_small = dict(runner.too_small)
        if too_small:
            listing = "; ".join(f"{n} ({why})" for n, why in too_small.items())
            logger.warning(
                "%d images are too small for %s; their pairs get no matches: %s.",
                len(too_small),
                conf["model"]["name"],
                listing,
            )
        del model, runner
    return {"too_small": too_small, "matched": len(todo)}


# -------------------------------------------------------- pass 2: aggregate
def aggregate_keypoints(
    conf: dict[str, Any],
    pairs: list[tuple[str, str]],
    matches_path: Path,
    features_path: Path,
    image_dir: Path,
    images: set[str],
    exact: bool,
    max_kps: int | None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Pass 2: keypoints of ``images`` from their per-pair points (resumable).

    Each image is done in turn from its own pairs, so memory holds one image's
    votes. ``exact`` keeps every distinct point (queries in localization).

    Returns:
        ``{image name: number of keypoints}`` of the images written now.
    """
    sides: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name0, name1 in pairs:
        pair = names_to_pair(name0, name1)
        if name0 in images:
            sides[name0].append((pair, 0))
        if name1 in images:
            sides[name1].append((pair, 1))
    counts: dict[str, int] = {}
    cell_size = 0 if exact else conf["cell_size"]
    image_dir = Path(image_dir)

    def image_size(dset: h5py.Dataset, name: str) -> tuple[int, int]:
        if "image_size" in dset.attrs:  # written by pass 1
            return tuple(int(v) for v in dset.attrs["image_size"])
        image = read_image(image_dir / name)  # raw points written by hloc
        return image.shape[1], image.shape[0]

    with (
        H5Writer(features_path, overwrite=overwrite) as writer,
        h5py.File(str(matches_path), "r") as fd,
    ):
        todo = sorted(n for n in images if n not in writer.done)
        for name in tqdm(todo, desc="aggregating keypoints"):
            accumulator = None
            size = None
            for pair, side in sides[name]:
                grp = fd[pair]
                dset = grp[f"keypoints{side}"]
                if accumulator is None:
                    size = image_size(dset, name)
                    accumulator = VoteAccumulator(size, cell_size, conf["max_error"])
                accumulator.add(dset[()], grp["scores"][()])
            assert accumulator is not None and size is not None
            keypoints, votes = accumulator.finalize(None if exact else max_kps)
            writer.write(
                name,
                {
                    "keypoints": keypoints,
                    "scores": votes,
                    "image_size": np.array(size, np.int64),
                },
            )
            counts[name] = len(keypoints)
    return counts


# ----------------------------------------------------------- pass 3: assign
class _KeypointSource:
    """Final keypoints (and KD-trees) of images, from h5 files, LRU-cached."""

    def __init__(self, files: dict[str, Path], budget_mb: float = 256.0) -> None:
        self.files = files
        self.cache = _LRU(budget_mb * 2**20)

    def get(self, name: str) -> tuple[np.ndarray, Any]:
        def make() -> tuple[np.ndarray, Any]:
            with h5py.File(str(self.files[name]), "r") as fd:
                keypoints = fd[name]["keypoints"][()].astype(np.float32)
            return keypoints, build_tree(keypoints)

        # a KD-tree takes about as much memory again as its points
        return self.cache.get(name, make, lambda v: 3 * v[0].nbytes + 64)


def assign_matches(
    conf: dict[str, Any],
    pairs: list[tuple[str, str]],
    matches_path: Path,
    keypoint_files: dict[str, Path],
    fixed: set[str],
) -> dict[str, Any]:
    """Pass 3: ``matches0`` / ``matching_scores0`` of ``pairs`` (resumable).

    Returns:
        Statistics: ``num_matches`` per pair, and per fixed image the number of
        its points that snapped to one of its keypoints (``snapped``) out of
        ``points``.
    """
    max_error = conf["max_error"]
    source = _KeypointSource(keypoint_files)
    stats: dict[str, Any] = {
        "num_matches": {},
        "snapped": defaultdict(int),
        "points": defaultdict(int),
    }
    with H5Writer(matches_path) as writer, h5py.File(str(matches_path), "r") as fd:
        for name0, name1 in tqdm(pairs, desc="assigning matches"):
            pair = names_to_pair(name0, name1)
            grp = fd[pair]
            data = {k: grp[k][()] for k in ("keypoints0", "keypoints1", "scores")}
            attrs = {
                k: {"image_size": grp[k].attrs["image_size"]}
                for k in ("keypoints0", "keypoints1")
                if "image_size" in grp[k].attrs
            }
            kps0, tree0 = source.get(name0)
            kps1, tree1 = source.get(name1)
            ids0 = assign_to_keypoints(data["keypoints0"], None, max_error, tree0)
            ids1 = assign_to_keypoints(data["keypoints1"], None, max_error, tree1)
            for name, ids in ((name0, ids0), (name1, ids1)):
                if name in fixed:
                    stats["snapped"][name] += int((ids >= 0).sum())
                    stats["points"][name] += len(ids)
            i0, i1, scores = unique_matches(ids0, ids1, data["scores"])
            matches0, scores0 = to_matches0(i0, i1, scores, len(kps0))
            stats["num_matches"][pair] = len(i0)
            writer.write(
                pair,
                {**data, "matches0": matches0, "matching_scores0": scores0},
                attrs,
            )
    return stats


# -------------------------------------------------------------------- main
def main(
    conf: dict[str, Any],
    pairs: Path,
    image_dir: Path,
    export_dir: Path | None = None,
    matches: Path | str | None = None,
    features: Path | str | None = None,
    features_ref: Path | list[Path] | None = None,
    max_kps: int | None = 8192,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Path, Path]:
    """Dense matching of the pairs, aggregated into per-image keypoints.

    Args:
        conf: a dense matcher conf (``confs[name]``): ``output``, ``model``,
            ``preprocessing``, ``max_error`` and ``cell_size`` (original pixels).
        pairs: pairs file (``name0 name1`` per line).
        image_dir: folder of the images; names are relative to it.
        export_dir: output folder when ``features``/``matches`` are not paths.
        matches: output matches file (default
            ``{export_dir}/{output}_{pairs.stem}.h5``).
        features: output features file as a Path, or a name prefix (default
            ``feats_`` giving ``{export_dir}/feats_{output}.h5``).
        features_ref: features file(s) of reference images, whose keypoints are
            kept (localization: the mapping's features). New images then keep
            their exact points.
        max_kps: at most this many keypoints per aggregated image (None: all);
            the conf's ``max_kps``, when present, is used instead.
        overwrite: recompute everything instead of resuming.
        device: torch device (default: CUDA if available, else CPU).

    Returns:
        ``(features_path, matches_path)``.
    """
    conf = resolve_conf(conf)
    logger.info("Dense matching with configuration:\n%s", pprint.pformat(conf))
    if "max_kps" in conf:
        max_kps = conf["max_kps"]
    pairs = Path(pairs)
    image_dir = Path(image_dir)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    features_path, matches_path = _resolve_paths(
        conf, pairs, export_dir, matches, features
    )
    if not image_dir.is_dir():
        raise UserError(f"Image folder {image_dir} does not exist.")

    pair_list = _dedupe_pairs(parse_pairs(pairs))
    if not pair_list:
        raise EmptyResultError(f"The pairs file {pairs} lists no pairs.")
    names = sorted({n for p in pair_list for n in p})
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(
            f"{len(missing)} images named in {pairs} are not in {image_dir}: "
            f"{shown}. Fix the image folder or the pairs file."
        )

    if features_ref is None:
        ref_paths: list[Path] = []
    elif isinstance(features_ref, (list, tuple)):
        ref_paths = [Path(p) for p in features_ref]
    else:
        ref_paths = [Path(features_ref)]
    localization = bool(ref_paths)
    keypoint_files = _reference_index(ref_paths)
    if not overwrite and features_path.exists():
        for name in _group_datasets(features_path):
            keypoint_files.setdefault(name, features_path)
    fixed = {n for n in names if n in keypoint_files}
    new = set(names) - fixed

    # pass 1
    match_pairs(
        conf,
        pair_list,
        image_dir,
        matches_path,
        fixed,
        device,
        overwrite,
        keypoint_files,
    )
    groups = _group_datasets(matches_path)

    # pass 2
    _check_reference_sizes(pair_list, matches_path, fixed, keypoint_files)
    counts = aggregate_keypoints(
        conf,
        pair_list,
        matches_path,
        features_path,
        image_dir,
        new,
        exact=localization,
        max_kps=max_kps,
        overwrite=overwrite,
    )
    for name in new:
        keypoint_files[name] = features_path

    # pass 3
    todo = [
        (a, b)
        for a, b in pair_list
        if overwrite
        or "matches0" not in groups.get(names_to_pair(a, b), ())
        or a in counts
        or b in counts
    ]
    stats = assign_matches(conf, todo, matches_path, keypoint_files, fixed)
    _report(conf, pair_list, todo, stats, counts, fixed, keypoint_files)
    return features_path, matches_path


def _stored_sizes(
    names: set[str], files: dict[str, Path]
) -> dict[str, tuple[tuple[int, int], Path]]:
    """``image_size`` (W, H) stored for ``names`` in their features files."""
    sizes = {}
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name in names:
        if name in files:
            by_file[files[name]].append(name)
    for path, group in by_file.items():
        with h5py.File(str(path), "r") as fd:
            for name in group:
                if "image_size" in fd[name]:
                    size = tuple(int(v) for v in fd[name]["image_size"][()])
                    sizes[name] = (size, path)
    return sizes


def _check_reference_sizes(
    pairs: list[tuple[str, str]],
    matches_path: Path,
    fixed: set[str],
    keypoint_files: dict[str, Path],
) -> None:
    """Fail clearly when a reference's stored image size is not the image's."""
    if not fixed:
        return
    seen: set[str] = set()
    with h5py.File(str(matches_path), "r") as fd:
        for name0, name1 in pairs:
            for side, name in enumerate((name0, name1)):
                if name not in fixed or name in seen:
                    continue
                seen.add(name)
                size = fd[names_to_pair(name0, name1)][f"keypoints{side}"].attrs.get(
                    "image_size"
                )
                path = keypoint_files[name]
                with h5py.File(str(path), "r") as ref:
                    grp = ref[name]
                    ref_size = grp["image_size"][()] if "image_size" in grp else None
                if size is None or ref_size is None:
                    continue
                if tuple(int(v) for v in ref_size) != tuple(int(v) for v in size):
                    raise UserError(
                        f"{path} says image {name!r} is {tuple(ref_size)} (W, H) "
                        f"but the image is {tuple(size)}: those features were made "
                        "from other images. Use the features of these images."
                    )


def _report(
    conf: dict[str, Any],
    pairs: list[tuple[str, str]],
    assigned: list[tuple[str, str]],
    stats: dict[str, Any],
    counts: dict[str, int],
    fixed: set[str],
    keypoint_files: dict[str, Path],
) -> None:
    """Log the outcome; raise when nothing usable came out."""
    num_matches = stats["num_matches"]
    if counts:
        logger.info(
            "Aggregated %d images: %.0f keypoints per image on average.",
            len(counts),
            np.mean(list(counts.values())),
        )
    if not assigned:
        logger.info("All %d pairs were already matched.", len(pairs))
        return
    empty = [p for p, n in num_matches.items() if n == 0]
    total = sum(num_matches.values())
    logger.info(
        "Matched %d pairs: %.0f matches per pair on average.",
        len(assigned),
        total / max(len(assigned), 1),
    )
    snapped = sum(stats["snapped"].values())
    points = sum(stats["points"].values())
    foreign = ""
    if points:
        logger.info(
            "Reference images: %.1f%% of their dense points lie within "
            "max_error=%s px of their keypoints.",
            100 * snapped / points,
            conf["max_error"],
        )
    if points and snapped < MIN_SNAP_RATE * points:
        worst = min(
            stats["points"],
            key=lambda n: stats["snapped"][n] / max(1, stats["points"][n]),
        )
        path = keypoint_files[worst]
        foreign = (
            f"Only {snapped} of {points} dense points ({100 * snapped / points:.1f}%) "
            f"of the reference images lie within max_error={conf['max_error']} px "
            f"of their keypoints in the reference features (e.g. {path}"
            f"{_features_hint(path, worst)}): they were probably made by another "
            f"extractor or conf. Use the features file that match_dense wrote "
            f"with the same conf ({conf['output']}) for the references."
        )
    if total == 0:
        raise EmptyResultError(
            f"No pair of {len(assigned)} got any match. "
            + (
                foreign
                or "Check that the images overlap and that the model's "
                "weights are the right ones."
            )
        )
    if foreign:
        logger.warning(foreign)
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        logger.warning(
            "%d of %d pairs have no matches: %s.", len(empty), len(assigned), shown
        )


# --------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--conf", default="xfeat_star", choices=sorted(confs), help="dense conf"
    )
    parser.add_argument("--pairs", type=Path, required=True, help="pairs file")
    parser.add_argument(
        "--image-dir", "--image_dir", dest="image_dir", type=Path, required=True
    )
    parser.add_argument(
        "--export-dir", "--export_dir", dest="export_dir", type=Path, required=True
    )
    parser.add_argument("--features", type=Path, help="output features file")
    parser.add_argument("--matches", type=Path, help="output matches file")
    parser.add_argument(
        "--features-ref",
        "--features_ref",
        dest="features_ref",
        type=Path,
        nargs="+",
        help="features of reference images (localization)",
    )
    parser.add_argument(
        "--max-kps", "--max_kps", dest="max_kps", type=int, help="keypoints per image"
    )
    parser.add_argument("--resize-max", dest="resize_max", type=int)
    add_device_and_weights(parser)
    parser.add_argument("--overwrite", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    from .confs import get_conf

    conf = get_conf(args.conf, "dense matcher", args.weights)
    if args.resize_max is not None:
        conf["preprocessing"]["resize_max"] = args.resize_max
    if args.max_kps is not None:
        conf["max_kps"] = args.max_kps
    features = args.features
    matches = args.matches
    if features is not None and matches is None:
        raise UserError("Pass --matches too when --features is given.")
    features_path, matches_path = main(
        conf,
        args.pairs,
        args.image_dir,
        export_dir=args.export_dir,
        matches=matches,
        features=features,
        features_ref=args.features_ref,
        overwrite=args.overwrite,
        device=args.device,
    )
    print(f"features: {features_path}\nmatches: {matches_path}")
    return 0
