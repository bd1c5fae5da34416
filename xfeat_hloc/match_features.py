"""Match local features of image pairs into hloc's matches.h5.

Drop-in for ``hloc.match_features``: same ``main`` and ``match_from_paths``
signatures (plus ``device``) and the same file format. Each pair is the group
``names_to_pair(name0, name1)`` holding:

- ``matches0`` (N0,) int32: index of the match in image 1, -1 if unmatched
  (hloc writes int16, which overflows above 32767 keypoints);
- ``matching_scores0`` (N0,) float16.

The matcher gets hloc's inputs: every dataset of each image's features group
suffixed ``0``/``1`` and batched, as float32, plus ``image0``/``image1`` whose
shape only is real (1 x 1 x H x W, no memory behind it). A background thread
reads the features ahead (with a small cache: consecutive pairs share images)
while the matcher runs, and :class:`~xfeat_hloc.utils.h5_writer.H5Writer`
writes the results, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import pprint
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from . import logger, matchers
from .cli import add_device_and_weights
from .confs import matchers as confs
from .errors import UserError
from .utils.base_model import BaseModel, dynamic_load
from .utils.h5_writer import H5Writer
from .utils.io import list_h5_names
from .utils.parsers import names_to_pair, names_to_pair_old, parse_pairs

Pair = tuple[str, str]


def _pair_names(name0: str, name1: str) -> tuple[str, ...]:
    """Every group name under which hloc may have stored the pair."""
    return (
        names_to_pair(name0, name1),
        names_to_pair(name1, name0),
        names_to_pair_old(name0, name1),
        names_to_pair_old(name1, name0),
    )


def find_unique_new_pairs(
    pairs_all: Sequence[Pair], done: set[str] | Path | None = None
) -> list[Pair]:
    """Pairs to match, in file order: each unordered pair once, no self-pair,
    none already in ``done`` (group names, or a matches file to read them from)."""
    if isinstance(done, (str, Path)):
        done = set(list_h5_names(Path(done))) if Path(done).exists() else set()
    done = done or set()
    seen: set[Pair] = set()
    pairs: list[Pair] = []
    num_self = 0
    for name0, name1 in pairs_all:
        if name0 == name1:
            num_self += 1
            continue
        if (name0, name1) in seen or (name1, name0) in seen:
            continue
        seen.add((name0, name1))
        if any(p in done for p in _pair_names(name0, name1)):
            continue
        pairs.append((name0, name1))
    if num_self:
        logger.warning("Ignoring %d pair(s) of an image with itself.", num_self)
    return pairs


def check_pairs_in_features(
    pairs: Sequence[Pair], feature_path_q: Path, feature_path_ref: Path
) -> None:
    """Raise :class:`UserError` listing images of ``pairs`` without features."""
    names_q = set(list_h5_names(feature_path_q))
    if Path(feature_path_ref) == Path(feature_path_q):
        names_ref = names_q
    else:
        names_ref = set(list_h5_names(feature_path_ref))
    missing_q = sorted({a for a, _ in pairs} - names_q)
    missing_ref = sorted({b for _, b in pairs} - names_ref)
    messages = []
    for missing, path, side in (
        (missing_q, feature_path_q, "first"),
        (missing_ref, feature_path_ref, "second"),
    ):
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            messages.append(
                f"{len(missing)} image(s) named {side} in a pair have no features "
                f"in {path}: {shown}"
            )
    if messages:
        raise UserError(
            "; ".join(messages) + ". Extract features for these images, or use the "
            "pairs file made from the same images."
        )


class FeatureReader:
    """Reads features groups as hloc's matcher inputs, with a small LRU cache
    (each pair gets its own tensors: a matcher may change its inputs).

    Not thread-safe: one reader per thread.
    """

    def __init__(self, path_q: Path, path_ref: Path, cache_size: int = 32) -> None:
        self.file_q = h5py.File(str(path_q), "r", libver="latest")
        same = Path(path_ref).resolve() == Path(path_q).resolve()
        self.file_ref = self.file_q if same else h5py.File(str(path_ref), "r")
        self.cache: OrderedDict[tuple[int, str], dict[str, np.ndarray]] = OrderedDict()
        self.cache_size = cache_size

    def _read(self, fd: h5py.File, name: str) -> dict[str, np.ndarray]:
        key = (id(fd), name)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        grp = fd[name]
        data = {
            k: np.asarray(v[()], dtype=np.float32)
            for k, v in grp.items()
            if isinstance(v, h5py.Dataset)
        }
        self.cache[key] = data
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return data

    def pair(self, name0: str, name1: str) -> dict[str, torch.Tensor]:
        """hloc's matcher input for a pair, batched (batch size 1)."""
        data: dict[str, torch.Tensor] = {}
        for suffix, fd, name in (
            ("0", self.file_q, name0),
            ("1", self.file_ref, name1),
        ):
            features = self._read(fd, name)
            for key, value in features.items():
                data[key + suffix] = torch.tensor(value)[None]  # a copy
            width, height = (int(x) for x in features["image_size"])
            # only the shape is real: hloc's matchers may read the image size
            data["image" + suffix] = torch.empty(1, 1, 1, 1).expand(1, 1, height, width)
        return data

    def close(self) -> None:
        if self.file_ref is not self.file_q:
            self.file_ref.close()
        self.file_q.close()


def _prefetch_pairs(
    pairs: Sequence[Pair], path_q: Path, path_ref: Path, depth: int = 4
) -> Iterator[dict[str, torch.Tensor]]:
    """Matcher inputs of ``pairs`` in order, read ahead in a background thread."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="xfeat_hloc-read")
    reader = pool.submit(FeatureReader, path_q, path_ref).result()
    try:
        futures: deque = deque()
        for name0, name1 in pairs:
            futures.append(pool.submit(reader.pair, name0, name1))
            if len(futures) > depth:
                yield futures.popleft().result()
        while futures:
            yield futures.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        reader.close()


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class MatchingSummary:
    """What one matching run did (the CLI prints it)."""

    path: Path
    matched: int = 0
    already_done: int = 0
    num_matches: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        mean = self.num_matches / self.matched if self.matched else 0
        return (
            f"matched {self.matched} pairs ({self.already_done} already done, "
            f"{mean:.0f} matches per pair) -> {self.path}, {self.seconds:.1f} s"
        )


def match(
    conf: dict[str, Any],
    pairs_path: Path,
    match_path: Path,
    feature_path_q: Path,
    feature_path_ref: Path | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    model: BaseModel | None = None,
) -> MatchingSummary:
    """:func:`match_from_paths`, returning a :class:`MatchingSummary`.

    ``model``: an already built matcher to use instead of loading the conf's.
    """
    start = time.perf_counter()
    logger.info("Matching local features with configuration:\n%s", pprint.pformat(conf))
    feature_path_q = Path(feature_path_q)
    feature_path_ref = Path(feature_path_ref or feature_path_q)
    match_path, pairs_path = Path(match_path), Path(pairs_path)
    for path, what in ((feature_path_q, "Query"), (feature_path_ref, "Reference")):
        if not path.exists():
            raise UserError(
                f"{what} features file not found: {path}. Run the extraction first."
            )
    pairs_all = parse_pairs(pairs_path)
    summary = MatchingSummary(path=match_path)
    unique = find_unique_new_pairs(pairs_all)
    if not unique:
        logger.warning("The pairs file %s has no pair to match.", pairs_path)
        return summary
    check_pairs_in_features(unique, feature_path_q, feature_path_ref)

    with H5Writer(match_path, overwrite, flush_every=512, flush_seconds=10) as writer:
        pairs = find_unique_new_pairs(unique, writer.done)
        summary.already_done = len(unique) - len(pairs)
        if not pairs:
            logger.info("Skipping the matching: all pairs are in %s.", match_path)
            summary.seconds = time.perf_counter() - start
            return summary

        device = _pick_device(device)
        if model is None:
            Model = dynamic_load(matchers, conf["model"]["name"])
            model = Model(conf["model"])
        model = model.eval().to(device)

        inputs = _prefetch_pairs(pairs, feature_path_q, feature_path_ref)
        with torch.inference_mode():
            progress = tqdm(inputs, total=len(pairs), desc="match", unit="pair")
            for (name0, name1), data in zip(pairs, progress, strict=True):
                data = {
                    k: v if k.startswith("image") else v.to(device, non_blocking=True)
                    for k, v in data.items()
                }
                pred = model(data)
                matches0 = pred["matches0"][0].cpu().numpy().astype(np.int32)
                datasets = {"matches0": matches0}
                if "matching_scores0" in pred:
                    scores = pred["matching_scores0"][0].float().cpu().numpy()
                    datasets["matching_scores0"] = scores.astype(np.float16)
                writer.write(names_to_pair(name0, name1), datasets)
                summary.matched += 1
                summary.num_matches += int((matches0 > -1).sum())

    summary.seconds = time.perf_counter() - start
    logger.info("Finished exporting matches: %s", summary.line())
    return summary


def match_from_paths(
    conf: dict[str, Any],
    pairs_path: Path,
    match_path: Path,
    feature_path_q: Path,
    feature_path_ref: Path,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> Path:
    """Match the pairs of ``pairs_path`` with explicit feature and match files.

    Pairs are matched once in either order; pairs already in ``match_path`` are
    skipped unless ``overwrite``. Images of a pair missing from the features
    files raise one :class:`UserError` listing them, before any work.
    """
    return match(
        conf,
        pairs_path,
        match_path,
        feature_path_q,
        feature_path_ref,
        overwrite,
        device,
    ).path


def _resolve_paths(
    conf: dict[str, Any],
    pairs: Path,
    features: Path | str,
    export_dir: Path | None,
    matches: Path | None,
) -> tuple[Path, Path]:
    """hloc's rule: features as a path needs matches as a path; features as a
    name lives in ``export_dir`` and names the matches file by default."""
    if isinstance(features, Path) or Path(features).exists():
        if matches is None:
            raise UserError(
                "Either provide both features and matches as paths, or both as "
                f"names within export_dir (features: {features})."
            )
        return Path(features), Path(matches)
    if export_dir is None:
        raise UserError(
            f"Provide an export_dir when features is a name, not a file: {features}."
        )
    feature_path = Path(export_dir, str(features) + ".h5")
    if matches is None:
        matches = Path(export_dir, f"{features}_{conf['output']}_{Path(pairs).stem}.h5")
    return feature_path, Path(matches)


def main(
    conf: dict[str, Any],
    pairs: Path,
    features: Path | str,
    export_dir: Path | None = None,
    matches: Path | None = None,
    features_ref: Path | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> Path:
    """Match the image pairs of a pairs file, like ``hloc.match_features.main``.

    Args:
        conf: a matcher conf (``output``, ``model``), e.g. ``confs["xfeat+mnn"]``.
        pairs: text file of ``name0 name1`` lines.
        features: a features file (Path, or a str that exists) or the name of
            one in ``export_dir`` (without ``.h5``).
        export_dir: folder of named features and of the default matches file
            ``{features}_{conf["output"]}_{pairs.stem}.h5``.
        matches: explicit matches file (required when features is a path).
        features_ref: features of the second image of each pair, if different.
        overwrite: recompute pairs already in the matches file.
        device: torch device; None: CUDA if available, else CPU.

    Returns:
        The path of the matches file.
    """
    feature_path, match_path = _resolve_paths(
        conf, Path(pairs), features, export_dir, matches
    )
    match(
        conf,
        pairs,
        match_path,
        feature_path,
        features_ref or feature_path,
        overwrite,
        device,
    )
    return match_path


# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``xfeat-hloc match``."""
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument(
        "--features",
        required=True,
        help="features h5 file, or its name (without .h5) within --export_dir",
    )
    parser.add_argument("--export_dir", type=Path)
    parser.add_argument(
        "--matches",
        type=Path,
        help="output h5 (default: <features>_<conf output>_<pairs stem>.h5 in "
        "--export_dir, or beside a features file)",
    )
    parser.add_argument(
        "--features_ref", type=Path, help="features of the second image of each pair"
    )
    parser.add_argument("--conf", default="xfeat+mnn", choices=list(confs))
    parser.add_argument("--overwrite", action="store_true")
    add_device_and_weights(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``xfeat-hloc match`` and print a one-line summary."""
    from .confs import get_conf

    conf = get_conf(args.conf, "matcher", args.weights)
    features: Path | str = args.features
    matches = args.matches
    if Path(features).suffix == ".h5" or Path(features).exists():
        features = Path(features)
        if matches is None:  # hloc's default name, beside the features file
            name = f"{features.stem}_{conf['output']}_{args.pairs.stem}.h5"
            matches = (args.export_dir or features.parent) / name
    feature_path, match_path = _resolve_paths(
        conf, args.pairs, features, args.export_dir, matches
    )
    summary = match(
        conf,
        args.pairs,
        match_path,
        feature_path,
        args.features_ref,
        args.overwrite,
        args.device,
    )
    print(summary.line())
    return 0
