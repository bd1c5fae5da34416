"""Photo collection -> COLMAP model: extract, pair, match, map.

``run(images, outputs, method=...)`` is the Python entry point (the demo and the
top-level script ``pipelines/reconstruction.py`` call it); ``xfeat-hloc
reconstruct`` is its command line. Everything lands in ``outputs``::

    outputs/
      feats-xfeat-n4096-r1600.h5          features (sparse methods)
      pairs-exhaustive.txt                 image pairs
      <features>_<matcher>_<pairs>.h5      matches
      sfm/                                 database.db, models/, the COLMAP model
      plots/*.png, reconstruction.html     optional pictures

Every step is idempotent: rerunning the same command after an interruption
reuses the features and matches already written and rebuilds the model.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from .. import logger
from ..cli import add_device_and_weights
from ..confs import get_conf
from ..errors import EmptyResultError, UserError

#: method -> extractor + matcher confs (sparse) or a dense matcher conf.
#: ``min_match_score`` is the cosine threshold applied when the matches are
#: imported into COLMAP (None: all mutual nearest neighbours).
METHODS: dict[str, dict[str, Any]] = {
    "xfeat": {"extractor": "xfeat", "matcher": "xfeat+mnn", "min_match_score": None},
    "xfeat+lighterglue": {
        "extractor": "xfeat",
        "matcher": "xfeat+lighterglue",
        "min_match_score": None,
    },
    "xfeat_star": {"dense": "xfeat_star", "min_match_score": None},
    "loftr_outdoor": {"dense": "loftr_outdoor", "min_match_score": None},
}
PAIRINGS = ("exhaustive", "sequential")


@dataclass
class ReconstructionResult:
    """What :func:`run` produced.

    Attributes:
        reconstruction: the largest model (also written to ``sfm_dir``).
        sfm_dir: the COLMAP model folder (``OUTPUTS/sfm``).
        features, matches, pairs: the h5 and text files of the steps.
        image_names: all input images.
        timings: wall seconds per step (``pairs``, ``extract``, ``match``,
            ``database``, ``verification``, ``mapping``, ``principal_point``,
            ``total``).
        evaluation: errors against ground truth when ``gt`` was given.
        files: extra outputs (match plots, the 3D view).
    """

    reconstruction: pycolmap.Reconstruction
    sfm_dir: Path
    features: Path
    matches: Path
    pairs: Path
    image_names: list[str]
    timings: dict[str, float]
    evaluation: Any = None
    files: list[Path] = field(default_factory=list)

    @property
    def num_registered(self) -> int:
        return self.reconstruction.num_reg_images()

    def summary(self) -> str:
        """Registered images, points, track length, reprojection error, times."""
        rec = self.reconstruction
        lines = [
            f"images registered: {self.num_registered} / {len(self.image_names)}",
            f"3D points: {rec.num_points3D()}",
            f"mean track length: {rec.compute_mean_track_length():.2f}",
            f"mean reprojection error: {rec.compute_mean_reprojection_error():.3f} px",
            "time per step: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()),
            f"model: {self.sfm_dir}",
        ]
        if self.evaluation is not None:
            lines.append("vs ground truth: " + self.evaluation.format())
        lines += [f"wrote {p}" for p in self.files]
        return "\n".join(lines)


def _with_resize(conf: dict[str, Any], resize_max: int | None) -> dict[str, Any]:
    """A copy of ``conf`` with another ``resize_max`` (and output name)."""
    conf = copy.deepcopy(conf)
    old = conf["preprocessing"].get("resize_max")
    if resize_max is None or resize_max == old:
        return conf
    conf["preprocessing"]["resize_max"] = int(resize_max)
    tag = f"-r{old}" if old else ""
    if tag and tag in conf["output"]:
        conf["output"] = conf["output"].replace(tag, f"-r{resize_max}")
    else:
        conf["output"] = f"{conf['output']}-r{resize_max}"
    return conf


def _with_max_keypoints(conf: dict[str, Any], num: int | None) -> dict[str, Any]:
    """A copy of an extractor conf keeping ``num`` keypoints (and output name)."""
    conf = copy.deepcopy(conf)
    old = conf["model"].get("max_keypoints")
    if num is None or num == old:
        return conf
    conf["model"]["max_keypoints"] = int(num)
    tag = f"-n{old}"
    if old and tag in conf["output"]:
        conf["output"] = conf["output"].replace(tag, f"-n{num}")
    else:
        conf["output"] = f"{conf['output']}-n{num}"
    return conf


def read_intrinsics(path: Path) -> Any:
    """Intrinsics from a text file, for :func:`xfeat_hloc.reconstruction.main`.

    Accepted layouts:

    - three rows of three numbers: a 3x3 K shared by all images (pixel centres
      at integer coordinates, like Strecha's ``K.txt``);
    - one line ``MODEL WIDTH HEIGHT params...``: one COLMAP camera for all;
    - lines ``name MODEL WIDTH HEIGHT params...``: one camera per image (hloc's
      query list format).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Intrinsics file not found: {path}.")
    rows = [
        line.split()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def number(value: str) -> float:
        try:
            return float(value)
        except ValueError:
            raise UserError(f"{path}: {value!r} is not a number.") from None

    if len(rows) == 3 and all(len(r) == 3 for r in rows):
        return np.array([[number(v) for v in r] for r in rows])
    models = set(pycolmap.CameraModelId.__members__)
    if len(rows) == 1 and rows[0][0] in models:
        model, width, height, *params = rows[0]
        return {
            "model": model,
            "width": int(number(width)),
            "height": int(number(height)),
            "params": [number(v) for v in params],
        }
    cameras = {}
    for row in rows:
        if len(row) < 5 or row[1] not in models:
            raise UserError(
                f"{path}: cannot read {' '.join(row)!r}: expected a 3x3 K, one "
                "line 'MODEL W H params...', or lines 'name MODEL W H params...'."
            )
        name, model, width, height, *params = row
        cameras[name] = {
            "model": model,
            "width": int(number(width)),
            "height": int(number(height)),
            "params": [number(v) for v in params],
        }
    return cameras


def run(
    images: Path,
    outputs: Path,
    method: str = "xfeat",
    pairs: str = "exhaustive",
    resize_max: int | None = 1600,
    max_keypoints: int | None = None,
    weights: Path | None = None,
    device: str | None = None,
    camera_mode: str = "GROUPED",
    intrinsics: Any = None,
    refine_intrinsics: bool = False,
    refine_principal_point: bool = True,
    min_match_score: float | None = None,
    window_size: int = 10,
    mapper: str = "incremental",
    mapper_options: dict[str, Any] | None = None,
    verification_options: dict[str, Any] | None = None,
    image_list: list[str] | None = None,
    plot_matches: int = 0,
    view_3d: bool = False,
    gt: Any = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> ReconstructionResult:
    """Reconstruct a folder of images.

    Args:
        images: the image folder (sub-folders included).
        outputs: where every file goes (see the module docstring).
        method: ``xfeat`` (XFeat + mutual NN), ``xfeat+lighterglue``,
            ``xfeat_star`` (semi-dense XFeat*), ``loftr_outdoor``.
        pairs: ``exhaustive`` (all pairs) or ``sequential`` (video frames:
            each with the next ``window_size``).
        resize_max: long side of the images the networks see (None: the conf's).
        weights: an explicit weights file for the network (XFeat's, or the
            LoFTR checkpoint for ``loftr_outdoor``).
        max_keypoints: keypoints per image of sparse methods (None: the conf's,
            4096). 8192 gives more observations, hence better-determined
            intrinsics, for about 4x the matching time.
        device: torch device (None: CUDA if available, else CPU).
        camera_mode: ``GROUPED`` (one camera per image size and EXIF camera),
            or COLMAP's ``AUTO``, ``SINGLE``, ``PER_FOLDER``, ``PER_IMAGE``.
        intrinsics: known cameras, a file (see :func:`read_intrinsics`) or what
            :func:`xfeat_hloc.reconstruction.main` accepts.
        refine_principal_point: refine the principal points in a final bundle
            adjustment (cameras shared by 3+ images; not with known intrinsics).
        min_match_score: import only matches scoring above it (default: the
            method's).
        plot_matches: write PNG plots of this many pairs (most matches first).
        view_3d: write ``reconstruction.html`` (plotly, opens offline).
        gt: ground truth (a Strecha scene or COLMAP model folder, or cameras)
            to evaluate against.
        overwrite: recompute features and matches.

    Raises:
        EmptyResultError: nothing could be reconstructed (non-overlapping images).
        UserError: bad arguments or inputs.
    """
    from .. import extract_features, match_dense, match_features
    from .. import reconstruction as sfm
    from ..extract_features import list_images
    from ..pairs_from_exhaustive import main as pairs_exhaustive
    from ..pairs_from_sequential import main as pairs_sequential

    images, outputs = Path(images), Path(outputs)
    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
    if pairs not in PAIRINGS:
        raise UserError(f"Unknown pairs {pairs!r}: use one of {', '.join(PAIRINGS)}.")
    if not images.is_dir():
        raise UserError(f"Image folder not found: {images}.")
    spec = METHODS[method]
    if isinstance(intrinsics, (str, Path)):
        intrinsics = read_intrinsics(Path(intrinsics))
    if min_match_score is None:
        min_match_score = spec["min_match_score"]
    outputs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    if image_list is None:
        globs = extract_features.DEFAULT_PREPROCESSING["globs"]
        image_list = list_images(images, globs)
    names = list(image_list)
    if len(names) < 2:
        raise EmptyResultError(
            f"{images} has {len(names)} image(s): a reconstruction needs at least 2 "
            "overlapping images (better 3 or more)."
        )
    logger.info("Reconstructing %d images of %s with %s.", len(names), images, method)

    pairs_path = outputs / f"pairs-{pairs}.txt"
    tic = time.perf_counter()
    if pairs == "exhaustive":
        pairs_exhaustive(pairs_path, image_list=names)
    else:
        pairs_sequential(pairs_path, image_list=names, window_size=window_size)
    timings["pairs"] = time.perf_counter() - tic

    if "dense" in spec:
        conf = _with_resize(
            get_conf(spec["dense"], "dense matcher", weights), resize_max
        )
        tic = time.perf_counter()
        features, matches = match_dense.main(
            conf,
            pairs_path,
            images,
            export_dir=outputs,
            overwrite=overwrite,
            device=device,
        )
        timings["match"] = time.perf_counter() - tic
    else:
        feature_conf = _with_max_keypoints(
            _with_resize(get_conf(spec["extractor"], "extractor", weights), resize_max),
            max_keypoints,
        )
        matcher_conf = get_conf(spec["matcher"], "matcher")
        tic = time.perf_counter()
        features = extract_features.main(
            feature_conf,
            images,
            export_dir=outputs,
            image_list=names,
            overwrite=overwrite,
            device=device,
        )
        timings["extract"] = time.perf_counter() - tic
        matches = outputs / (
            f"{feature_conf['output']}_{matcher_conf['output']}_{pairs_path.stem}.h5"
        )
        tic = time.perf_counter()
        match_features.main(
            matcher_conf,
            pairs_path,
            features,
            matches=matches,
            overwrite=overwrite,
            device=device,
        )
        timings["match"] = time.perf_counter() - tic

    sfm_dir = outputs / "sfm"
    sfm_timings: dict[str, float] = {}
    reconstruction = sfm.main(
        sfm_dir,
        images,
        pairs_path,
        features,
        matches,
        camera_mode=camera_mode,
        min_match_score=min_match_score,
        image_list=names,
        mapper_options=mapper_options,
        intrinsics=intrinsics,
        refine_intrinsics=refine_intrinsics,
        refine_principal_point=refine_principal_point,
        verification_options=verification_options,
        mapper=mapper,
        verbose=verbose,
        timings=sfm_timings,
    )
    timings.update(sfm_timings)
    timings["total"] = time.perf_counter() - start

    result = ReconstructionResult(
        reconstruction=reconstruction,
        sfm_dir=sfm_dir,
        features=Path(features),
        matches=Path(matches),
        pairs=pairs_path,
        image_names=names,
        timings=timings,
    )
    if gt is not None:
        from ..evaluation.poses import evaluate_reconstruction

        result.evaluation = evaluate_reconstruction(reconstruction, gt)
    if plot_matches > 0:
        result.files += _plot_pairs(result, images, outputs / "plots", plot_matches)
    if view_3d:
        from ..viz import write_3d_html

        result.files.append(
            write_3d_html(
                reconstruction,
                outputs / "reconstruction.html",
                title=f"{images.name}: {method}",
            )
        )
    return result


def _plot_pairs(
    result: ReconstructionResult, images: Path, folder: Path, count: int
) -> list[Path]:
    """Plot the ``count`` pairs with the most matches (green: in a 3D track)."""
    from ..utils.io import get_matches
    from ..utils.parsers import parse_pairs
    from ..viz import plot_pair

    ranked = []
    for name0, name1 in parse_pairs(result.pairs):
        try:
            num = len(get_matches(result.matches, name0, name1)[0])
        except UserError:
            continue
        ranked.append((num, name0, name1))
    ranked.sort(key=lambda item: -item[0])
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for _, name0, name1 in ranked[:count]:
        stem = f"{name0}__{name1}".replace("/", "-")
        files.append(
            plot_pair(
                images,
                result.features,
                result.matches,
                name0,
                name1,
                folder / f"{stem}.png",
                reconstruction=result.reconstruction,
            )
        )
    return files


# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``xfeat-hloc reconstruct``."""
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--outputs", type=Path, required=True, help="output folder")
    parser.add_argument("--method", choices=list(METHODS), default="xfeat")
    parser.add_argument("--pairs", choices=PAIRINGS, default="exhaustive")
    parser.add_argument(
        "--window-size", type=int, default=10, help="sequential pairs: frames ahead"
    )
    parser.add_argument(
        "--resize-max", type=int, default=1600, help="long side seen by the network"
    )
    parser.add_argument(
        "--max-keypoints", type=int, help="keypoints per image (sparse methods)"
    )
    add_device_and_weights(parser, "explicit weights file (XFeat or LoFTR)")
    parser.add_argument(
        "--camera-mode",
        default="GROUPED",
        type=str.upper,
        choices=["GROUPED", *pycolmap.CameraMode.__members__],
        help="GROUPED: one camera per image size and EXIF camera (default)",
    )
    parser.add_argument(
        "--intrinsics",
        type=Path,
        help="known intrinsics: a 3x3 K file, 'MODEL W H params', or per-image "
        "lines 'name MODEL W H params' (kept fixed unless --refine-intrinsics)",
    )
    parser.add_argument("--refine-intrinsics", action="store_true")
    parser.add_argument(
        "--fixed-principal-point",
        action="store_true",
        help="keep the principal point at the image centre (COLMAP's default)",
    )
    parser.add_argument(
        "--min-match-score", type=float, help="drop matches scoring below it"
    )
    parser.add_argument(
        "--mapper", choices=("incremental", "global"), default="incremental"
    )
    parser.add_argument(
        "--plot-matches", type=int, default=0, metavar="N", help="PNGs of N pairs"
    )
    parser.add_argument(
        "--view-3d", action="store_true", help="write reconstruction.html"
    )
    parser.add_argument(
        "--gt", type=Path, help="ground truth (Strecha scene or COLMAP model)"
    )
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="COLMAP's logs")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``xfeat-hloc reconstruct`` and print the summary."""
    result = run(
        args.images,
        args.outputs,
        method=args.method,
        pairs=args.pairs,
        resize_max=args.resize_max,
        max_keypoints=args.max_keypoints,
        weights=args.weights,
        device=args.device,
        camera_mode=args.camera_mode,
        intrinsics=args.intrinsics,
        refine_intrinsics=args.refine_intrinsics,
        refine_principal_point=not args.fixed_principal_point,
        min_match_score=args.min_match_score,
        window_size=args.window_size,
        mapper=args.mapper,
        plot_matches=args.plot_matches,
        view_3d=args.view_3d,
        gt=args.gt,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    print(result.summary())
    return 0
