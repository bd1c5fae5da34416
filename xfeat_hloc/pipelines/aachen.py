"""Aachen day-night v1.0 and v1.1 localization, end to end, and the results
validator (``xfeat-hloc aachen``, ``xfeat-hloc validate-results``).

Steps (each one skips what a previous run finished, so a rerun after a kill
completes the job):

1. check the dataset layout (every problem listed at once, nothing starts on a
   broken layout);
2. the reference SIFT model: v1.1 reads ``3D-models/aachen_v_1_1``; v1.0
   converts the NVM model (``colmap_from_nvm``) into ``OUTPUTS/sfm_sift``;
3. database pairs: the ``num_covis`` most covisible images of each database
   image in the reference model (a model without 3D points: nearest camera
   poses, said in the log);
4. local features and matching of those pairs (sparse: ``extract_features`` +
   ``match_features``; dense: ``match_dense``);
5. triangulation of a new model with the reference poses
   (``OUTPUTS/sfm_<method>``);
6. retrieval pairs for the queries (``xfeat-global``: VLAD of XFeat
   descriptors, no download; ``netvlad``: needs its weights file; or a given
   pairs file);
7. matching of the query pairs, localization (``localize_sfm``);
8. the results file ``Aachen[-v1.1]_hloc_<method>_<retrieval><num_loc>.txt``
   (``name qw qx qy qz tx ty tz``, world-to-camera, image base names), checked
   by :func:`~xfeat_hloc.results_file.validate_results`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycolmap

from .. import logger
from ..cli import add_device_and_weights
from ..confs import get_conf
from ..errors import DatasetLayoutError, EmptyResultError, UserError
from ..results_file import InvalidResultsError, validate_results, write_results
from ..utils.parsers import parse_image_list, parse_retrieval, write_pairs

VERSIONS = ("1.0", "1.1")
METHODS: dict[str, dict[str, str]] = {
    "xfeat+mnn": {"features": "xfeat", "matcher": "xfeat+mnn"},
    "xfeat+lighterglue": {"features": "xfeat", "matcher": "xfeat+lighterglue"},
    "xfeat_star": {"dense": "xfeat_star"},
    "loftr_outdoor": {"dense": "loftr_outdoor"},
}
RETRIEVALS = ("xfeat-global", "netvlad")
# Local features for the xfeat-global retrieval when the method has none.
RETRIEVAL_LOCAL_FEATURES = "xfeat_r1024"
QUERY_LISTS = "queries/*_time_queries_with_intrinsics.txt"
DOWNLOAD_PAGE = "https://www.visuallocalization.net/datasets/"
DATA_URL = (
    "https://data.ciirc.cvut.cz/public/projects/2020VisualLocalization/"
    "Aachen-Day-Night/"
)


# ------------------------------------------------------------------ layout
@dataclass(frozen=True)
class AachenLayout:
    """Paths of a checked Aachen dataset folder.

    Attributes:
        root: the dataset folder.
        version: "1.0" or "1.1".
        images: the image folder (``images_upright``); image names are relative
            to it (``db/1000.jpg``, ``query/night/nexus5x/IMG_x.jpg``).
        query_lists: the ``*_time_queries_with_intrinsics.txt`` files.
        model: v1.1: the reference COLMAP model folder.
        nvm, intrinsics, database: v1.0: the NVM model, the intrinsics list and
            the COLMAP database ``aachen.db``.
        queries: query names from the lists, in order.
    """

    root: Path
    version: str
    images: Path
    query_lists: list[Path]
    model: Path | None = None
    nvm: Path | None = None
    intrinsics: Path | None = None
    database: Path | None = None
    queries: list[str] = field(default_factory=list)

    @property
    def queries_glob(self) -> Path:
        return self.root / QUERY_LISTS


def expected_layout(version: str) -> str:
    """The folder tree an Aachen dataset must have, as text."""
    if version == "1.1":
        model = (
            "  3D-models/aachen_v_1_1/{cameras,images,points3D}.bin"
            "   (from aachen_v1_1.zip)\n"
        )
    else:
        model = (
            "  3D-models/aachen_cvpr2018_db.nvm          (from 3D-models/)\n"
            "  3D-models/database_intrinsics.txt         (from 3D-models/)\n"
            "  aachen.db                                 (the SIFT database)\n"
        )
    return (
        "Expected layout:\n"
        "  images_upright/db/*.jpg, images_upright/query/{day,night}/...  "
        "(from images/database_and_query_images.zip"
        + (" + aachen_v1_1.zip" if version == "1.1" else "")
        + ")\n"
        + model
        + "  queries/{day,night}_time_queries_with_intrinsics.txt  (from queries/)\n"
        f"Download: {DATA_URL} (registration: {DOWNLOAD_PAGE}); see "
        "datasets/README.md or run datasets/download_aachen.sh."
    )


def _model_files(path: Path) -> bool:
    return any(
        all((path / f"{n}{ext}").is_file() for n in ("cameras", "images"))
        for ext in (".bin", ".txt")
    )


def model_image_names(model: Path) -> list[str]:
    """Image names of a COLMAP model, read from ``images.bin``/``images.txt``
    alone (fast: the 2D points are skipped, ``points3D`` is not read)."""
    binary = model / "images.bin"
    if binary.is_file():
        names = []
        with open(binary, "rb") as f:
            (num_images,) = struct.unpack("<Q", f.read(8))
            for _ in range(num_images):
                f.seek(4 + 7 * 8 + 4, 1)  # image_id, qvec, tvec, camera_id
                name = bytearray()
                while (char := f.read(1)) not in (b"\x00", b""):
                    name += char
                names.append(name.decode("utf-8"))
                (num_points,) = struct.unpack("<Q", f.read(8))
                f.seek(num_points * 24, 1)  # x, y (double), point3D_id (int64)
        return names
    names = []
    lines = (model / "images.txt").read_text(encoding="utf-8").splitlines()
    data = [line for line in lines if line.strip() and not line.startswith("#")]
    for line in data[0::2]:  # pose line, then the points2D line
        names.append(line.split()[-1])
    return names


def nvm_image_names(nvm: Path) -> list[str]:
    """Image names of an NVM model (only its camera section is read)."""
    with open(nvm, encoding="utf-8") as f:
        lines = (parts for parts in (line.split() for line in f) if parts)
        header = next(lines)
        if not header[0].startswith("NVM_V3"):
            raise ValueError("the file does not start with NVM_V3")
        count = int(next(lines)[0])
        return [next(lines)[0].strip('"') for _ in range(count)]


def _find_images(root: Path) -> Path | None:
    for candidate in (root / "images_upright", root / "images" / "images_upright"):
        if candidate.is_dir():
            return candidate
    return None


def _examples(names: list[str], n: int = 3) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_layout(dataset: Path, version: str = "1.1") -> AachenLayout:
    """Check an Aachen dataset folder and return its paths.

    Everything that is missing is collected first and reported in ONE
    :class:`DatasetLayoutError` (with the expected tree and where each part comes
    from): folders and files, query lists, query images named by the lists,
    reference model images missing from the image folder.
    """
    if version not in VERSIONS:
        raise UserError(f"Unknown Aachen version {version!r}; use 1.0 or 1.1.")
    root = Path(dataset)
    problems: list[str] = []
    if not root.is_dir():
        raise DatasetLayoutError(
            f"Aachen v{version} dataset folder {root} does not exist.\n"
            + expected_layout(version)
        )
    images = _find_images(root)
    if images is None:
        problems.append(
            "missing images_upright/ (unzip images/database_and_query_images.zip "
            "into the dataset folder)"
        )
    else:
        for sub in ("db", "query"):
            if not (images / sub).is_dir():
                problems.append(f"missing {images.relative_to(root)}/{sub}/")
    model = nvm = intrinsics = database = None
    if version == "1.1":
        model = root / "3D-models" / "aachen_v_1_1"
        if not _model_files(model):
            problems.append(
                "missing the COLMAP model 3D-models/aachen_v_1_1/ with cameras and "
                "images (.bin or .txt) (unzip aachen_v1_1.zip into the dataset "
                "folder)"
            )
    else:
        nvm = root / "3D-models" / "aachen_cvpr2018_db.nvm"
        intrinsics = root / "3D-models" / "database_intrinsics.txt"
        candidates = [root / "aachen.db", root / "3D-models" / "aachen.db"]
        database = next((p for p in candidates if p.is_file()), candidates[0])
        for path in (nvm, intrinsics, database):
            if not path.is_file():
                problems.append(f"missing {path.relative_to(root)}")
    query_lists = sorted((root / "queries").glob(Path(QUERY_LISTS).name))
    if not query_lists:
        problems.append(
            "missing the query lists queries/*_time_queries_with_intrinsics.txt "
            "(from queries/ on the download page)"
        )

    # The contents, wherever the structure allows checking them.
    queries: list[str] = []
    if images is not None:
        for path in query_lists:
            try:
                entries = parse_image_list(path, with_intrinsics=True)
            except UserError as error:
                problems.append(f"unreadable query list: {error}")
                continue
            queries += [name for name, _ in entries]
        missing_q = [q for q in queries if not (images / q).is_file()]
        if missing_q:
            problems.append(
                f"{len(missing_q)} query images of the query lists are missing "
                f"from {images}: {_examples(missing_q)}"
            )
        source = model if version == "1.1" else nvm
        readable = _model_files(model) if version == "1.1" else nvm.is_file()
        if readable:
            try:
                if version == "1.1":
                    names = model_image_names(model)
                else:
                    names = nvm_image_names(nvm)
            except (OSError, ValueError, StopIteration, struct.error) as error:
                problems.append(f"unreadable reference model {source} ({error})")
                names = None
            if names == []:
                problems.append(f"the reference model {source} has no images")
            missing_db = [n for n in names or [] if not (images / n).is_file()]
            if missing_db:
                problems.append(
                    f"{len(missing_db)} of the {len(names)} images of the reference "
                    f"model are missing from {images}: {_examples(missing_db)}"
                    + (
                        " (the v1.1 database images come from aachen_v1_1.zip)"
                        if version == "1.1"
                        else ""
                    )
                )
    if problems:
        raise DatasetLayoutError(
            f"{root} is not a complete Aachen v{version} dataset:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\n"
            + expected_layout(version)
        )
    assert images is not None
    return AachenLayout(
        root, version, images, query_lists, model, nvm, intrinsics, database, queries
    )


# ----------------------------------------------------------------- naming
def results_filename(version: str, method: str, retrieval_tag: str) -> str:
    """hloc-style results name, e.g. ``Aachen-v1.1_hloc_xfeat+mnn_netvlad50.txt``."""
    dataset = "Aachen-v1.1" if version == "1.1" else "Aachen"
    return f"{dataset}_hloc_{method}_{retrieval_tag}.txt"


def method_variant(
    method: str,
    resize_max: int | None = None,
    max_keypoints: int | None = None,
    model_options: dict[str, Any] | None = None,
) -> str:
    """The method's name with its overrides (``xfeat+mnn-r1024-n2048``, a short
    hash for model options), used in the names of everything that depends on
    them, so that runs with other settings never reuse each other's files."""
    tag = method
    if resize_max is not None:
        tag += f"-r{resize_max}"
    if max_keypoints is not None:
        tag += f"-n{max_keypoints}"
    if model_options:
        blob = json.dumps(model_options, sort_keys=True, default=str).encode()
        tag += "-m" + hashlib.sha1(blob).hexdigest()[:8]
    return tag


def retrieval_tag(
    retrieval: str, num_loc: int, retrieval_pairs: Path | None = None
) -> str:
    """``netvlad50``, ``xfeat-global50``, or from a pairs file's name
    (``pairs-query-netvlad50.txt`` -> ``netvlad50``)."""
    if retrieval_pairs is not None:
        return Path(retrieval_pairs).stem.removeprefix("pairs-query-")
    return f"{retrieval}{num_loc}"


# ------------------------------------------------------------------- steps
@dataclass
class AachenResult:
    """What a pipeline run produced.

    Attributes:
        results: the results file (validated).
        num_queries: queries in the query lists.
        num_localized: queries with a pose from PnP.
        failed: queries without one (in the file with the pose of their top
            retrieved image, unless ``on_failure="skip"``).
        reference_sfm: the triangulated model.
        seconds: wall time per step.
    """

    results: Path
    num_queries: int
    num_localized: int
    failed: list[str]
    reference_sfm: Path
    seconds: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, step: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        logger.info("Aachen step: %s", step)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start
        return out


def _atomic_pairs(
    path: Path, write: Callable[[Path], Any], overwrite: bool = False
) -> Path:
    """Run ``write(tmp)`` and move the file into place (skip if it exists)."""
    if path.is_file() and not overwrite:
        logger.info("Pairs file %s exists, skipping.", path)
        return path
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
    return path


def database_pairs(
    reference: pycolmap.Reconstruction,
    model_path: Path,
    output: Path,
    num: int,
    overwrite: bool = False,
) -> Path:
    """Covisibility pairs of the reference model; from camera poses when the
    model has no 3D points (the log says so)."""
    from .. import pairs_from_covisibility, pairs_from_poses

    def write(tmp: Path) -> None:
        if reference.num_points3D() > 0:
            with contextlib.suppress(EmptyResultError):  # no covisible images
                pairs_from_covisibility.main(model_path, tmp, num_matched=num)
            if tmp.is_file() and tmp.read_text().strip():
                return
            logger.warning(
                "The covisibility of the reference model gave no pairs: using "
                "pairs from the camera poses instead."
            )
        else:
            logger.warning(
                "The reference model %s has no 3D points: database pairs come from "
                "the camera poses (%d nearest centres with similar viewing "
                "directions per image) instead of covisibility.",
                model_path,
                num,
            )
        try:
            pairs_from_poses.main(reference, tmp, num_matched=num)
        except EmptyResultError:
            names = sorted(im.name for im in reference.images.values())
            logger.warning(
                "No pairs from the camera poses either: using exhaustive pairs "
                "of the %d database images.",
                len(names),
            )
            write_pairs(
                tmp,
                [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]],
            )

    return _atomic_pairs(output, write, overwrite)


def filter_pairs_file(
    path: Path, output: Path, queries: list[str], db_names: set[str]
) -> Path:
    """Copy the pairs of a given retrieval file that join a query of the lists to
    an image of the reference model into ``output``; what is dropped is logged.

    Raises:
        DatasetLayoutError: no pair is left (the file is for another dataset).
    """
    retrieval = parse_retrieval(path)
    known_q = set(queries)
    kept = [
        (q, r)
        for q, rs in retrieval.items()
        if q in known_q
        for r in rs
        if r in db_names
    ]
    unknown_q = sorted(set(retrieval) - known_q)
    unknown_db = sorted({r for rs in retrieval.values() for r in rs} - db_names)
    if not kept:
        raise DatasetLayoutError(
            f"The retrieval pairs file {path} has no pair of a query of the query "
            "lists and an image of the reference model: lines must be "
            "'query_name db_name' with names relative to images_upright, from the "
            "same dataset version."
        )
    for count, what, names in (
        (len(unknown_q), "queries that are not in the query lists", unknown_q),
        (len(unknown_db), "images that are not in the reference model", unknown_db),
    ):
        if count:
            logger.warning(
                "%s names %d %s; their pairs are ignored: %s",
                path,
                count,
                what,
                _examples(names),
            )
    without = [q for q in queries if q not in retrieval]
    if without:
        logger.warning(
            "%d queries have no pairs in %s (they cannot be localized): %s",
            len(without),
            path,
            _examples(without),
        )
    return write_pairs(output, kept)


def run(
    dataset: Path,
    outputs: Path,
    version: str = "1.1",
    method: str = "xfeat+mnn",
    num_covis: int = 20,
    num_loc: int = 50,
    retrieval: str = "xfeat-global",
    retrieval_pairs: Path | None = None,
    device: str | None = None,
    resize_max: int | None = None,
    max_keypoints: int | None = None,
    model_options: dict[str, Any] | None = None,
    on_failure: str = "retrieval-pose",
    allow_empty: bool = False,
    overwrite: bool = False,
) -> AachenResult:
    """Run the Aachen v1.0/v1.1 localization pipeline (see the module doc).

    Args:
        dataset: the dataset folder (see :func:`expected_layout`).
        outputs: where every artefact goes.
        version: "1.0" or "1.1".
        method: a key of :data:`METHODS`.
        num_covis: database pairs per image for the triangulation.
        num_loc: retrieved database images per query.
        retrieval: "xfeat-global" (offline) or "netvlad" (weights file needed).
        retrieval_pairs: a pairs file ``query db`` to use instead of retrieval.
        device: torch device (default: cuda if available, else cpu).
        resize_max: override the method conf's ``preprocessing.resize_max``.
        max_keypoints: override the sparse extractor's ``max_keypoints`` (dense:
            the aggregated keypoints per database image).
        model_options: entries merged into the method's (matcher's) ``model``
            conf, e.g. ``{"weights": "random"}`` or ``{"weights_path": ...}``.
        on_failure: "retrieval-pose" gives a query that PnP could not localize the
            pose of its top retrieved database image (logged, so that the file
            is complete); "skip" leaves it out of the results file.
        allow_empty: write the results even when no query is localized
            (plumbing checks); otherwise that is an ``EmptyResultError``.
        overwrite: redo every step.

    Returns:
        An :class:`AachenResult`.
    """
    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")
    if retrieval_pairs is None and retrieval not in RETRIEVALS:
        raise UserError(
            f"Unknown retrieval {retrieval!r}; choose from {', '.join(RETRIEVALS)}."
        )
    if on_failure not in ("retrieval-pose", "skip"):
        raise UserError("on_failure must be 'retrieval-pose' or 'skip'.")
    layout = check_layout(dataset, version)  # before any work
    if retrieval_pairs is not None and not Path(retrieval_pairs).is_file():
        raise UserError(f"Retrieval pairs file not found: {retrieval_pairs}.")
    if retrieval_pairs is None and retrieval == "netvlad":
        from ..extractors.netvlad import netvlad_weights_path

        model = get_conf("netvlad", "extractor")["model"]
        netvlad_weights_path(model.get("model_name", "VGG16-NetVLAD-Pitts30K"))
    outputs = Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    spec = METHODS[method]
    images = layout.images
    variant = method_variant(method, resize_max, max_keypoints, model_options)
    feature_suffix = method_variant("", resize_max, max_keypoints)
    model_suffix = variant.removeprefix(method + feature_suffix)

    # Reference SIFT model.
    if version == "1.0":
        from .. import colmap_from_nvm

        sift_sfm = timer.run(
            "NVM to COLMAP",
            colmap_from_nvm.main,
            layout.nvm,
            layout.intrinsics,
            layout.database,
            outputs / "sfm_sift",
            overwrite=overwrite,
        )
    else:
        sift_sfm = layout.model
    reference = pycolmap.Reconstruction(str(sift_sfm))
    db_names = sorted(reference.images[i].name for i in reference.reg_image_ids())
    logger.info(
        "Reference model: %d database images, %d 3D points; %d queries.",
        len(db_names),
        reference.num_points3D(),
        len(layout.queries),
    )
    sfm_pairs = timer.run(
        "database pairs",
        database_pairs,
        reference,
        sift_sfm,
        outputs / f"pairs-db-covis{num_covis}.txt",
        num_covis,
        overwrite,
    )
    del reference

    # Local features and database matches.
    needed = db_names + layout.queries
    features_conf = matcher_conf = dense_conf = None
    if "dense" in spec:
        from .. import match_dense

        dense_conf = get_conf(spec["dense"], "dense matcher")
        if resize_max is not None:
            dense_conf["preprocessing"]["resize_max"] = resize_max
        dense_conf["model"].update(model_options or {})
        dense_conf["output"] += feature_suffix + model_suffix
        features, sfm_matches = timer.run(
            "dense matching (database)",
            match_dense.main,
            dense_conf,
            sfm_pairs,
            images,
            outputs,
            max_kps=max_keypoints or 8192,
            overwrite=overwrite,
            device=device,
        )
    else:
        from .. import extract_features, match_features

        features_conf = get_conf(spec["features"], "extractor")
        if resize_max is not None:
            features_conf["preprocessing"]["resize_max"] = resize_max
        if max_keypoints is not None:
            features_conf["model"]["max_keypoints"] = max_keypoints
        features_conf["output"] += feature_suffix
        matcher_conf = get_conf(spec["matcher"], "matcher")
        matcher_conf["model"].update(model_options or {})
        matcher_conf["output"] += model_suffix
        features = timer.run(
            "local features",
            extract_features.main,
            features_conf,
            images,
            outputs,
            image_list=needed,
            overwrite=overwrite,
            device=device,
        )
        sfm_matches = timer.run(
            "matching (database)",
            match_features.main,
            matcher_conf,
            sfm_pairs,
            features_conf["output"],
            outputs,
            overwrite=overwrite,
            device=device,
        )

    # Triangulation with the reference poses.
    reference_sfm = outputs / f"sfm_{variant}"
    done_marker = reference_sfm / "TRIANGULATED"
    if overwrite or not done_marker.is_file():
        from .. import triangulation

        if reference_sfm.exists():
            shutil.rmtree(reference_sfm)
        try:
            rec = timer.run(
                "triangulation",
                triangulation.main,
                reference_sfm,
                sift_sfm,
                images,
                sfm_pairs,
                features,
                sfm_matches,
            )
            num_points = rec.num_points3D()
        except EmptyResultError as error:
            if not allow_empty:
                raise
            logger.warning("%s Going on with an empty model (allow_empty).", error)
            num_points = 0
        done_marker.write_text(f"{num_points} points\n")
    else:
        logger.info("Triangulated model %s exists, skipping.", reference_sfm)

    # Retrieval pairs for the queries.
    tag = retrieval_tag(retrieval, num_loc, retrieval_pairs)
    if retrieval_pairs is not None:
        loc_pairs = filter_pairs_file(
            Path(retrieval_pairs),
            outputs / f"pairs-query-{tag}.txt",
            layout.queries,
            set(db_names),
        )
    else:
        loc_pairs = outputs / f"pairs-query-{tag}.txt"
        timer.run(
            f"retrieval ({retrieval})",
            _atomic_pairs,
            loc_pairs,
            lambda tmp: _retrieve(
                retrieval,
                tmp,
                num_loc,
                layout,
                outputs,
                db_names,
                features if features_conf is not None else None,
                overwrite,
                device,
            ),
            overwrite,
        )

    # Query matches and localization.
    if dense_conf is not None:
        from .. import match_dense

        # References keep their keypoints (those of the triangulated model);
        # the queries get their exact matched points, in their own file.
        query_features, loc_matches = timer.run(
            "dense matching (queries)",
            match_dense.main,
            dense_conf,
            loc_pairs,
            images,
            outputs,
            matches=outputs / f"{dense_conf['output']}_{loc_pairs.stem}.h5",
            features=outputs / f"feats-query_{dense_conf['output']}.h5",
            features_ref=features,
            max_kps=None,
            overwrite=overwrite,
            device=device,
        )
    else:
        from .. import match_features

        assert features_conf is not None and matcher_conf is not None
        query_features = features
        loc_matches = timer.run(
            "matching (queries)",
            match_features.main,
            matcher_conf,
            loc_pairs,
            features_conf["output"],
            outputs,
            overwrite=overwrite,
            device=device,
        )

    results = outputs / results_filename(version, variant, tag)
    failed, num_localized = timer.run(
        "localization",
        _localize,
        layout,
        reference_sfm,
        loc_pairs,
        query_features,
        loc_matches,
        results,
        on_failure,
        allow_empty,
        overwrite,
    )
    report = validate_results(results, layout.queries)
    if on_failure == "skip":
        report.missing = [m for m in report.missing if m not in failed]
    if not report.ok:
        raise InvalidResultsError(report.summary())
    logger.info(report.summary())
    logger.info(
        "Aachen v%s, %s: %d / %d queries localized by PnP%s. Results: %s",
        version,
        method,
        num_localized,
        len(layout.queries),
        f" ({len(failed)} failed: {_examples(failed)})" if failed else "",
        results,
    )
    logger.info(
        "Time per step: %s",
        ", ".join(f"{k} {v:.1f} s" for k, v in timer.seconds.items()),
    )
    return AachenResult(
        results,
        len(layout.queries),
        num_localized,
        failed,
        reference_sfm,
        timer.seconds,
    )


def _retrieve(
    retrieval: str,
    output: Path,
    num_loc: int,
    layout: AachenLayout,
    outputs: Path,
    db_names: list[str],
    local_features: Path | None,
    overwrite: bool,
    device: str | None,
) -> None:
    from .. import extract_features, pairs_from_retrieval, vlad_from_features

    needed = db_names + layout.queries

    def extract(conf_name: str) -> Path:
        return extract_features.main(
            get_conf(conf_name, "extractor"),
            layout.images,
            outputs,
            image_list=needed,
            overwrite=overwrite,
            device=device,
        )

    if retrieval == "netvlad":
        global_features = extract("netvlad")
    else:
        if local_features is None:
            local_features = extract(RETRIEVAL_LOCAL_FEATURES)
        global_features = vlad_from_features.main(
            local_features,
            outputs / f"global-feats-vlad-{Path(local_features).stem}.h5",
            codebook_names=db_names,
            image_names=needed,
            overwrite=overwrite,
            device=device,
        )
    pairs_from_retrieval.main(
        global_features,
        output,
        num_loc,
        query_list=layout.queries,
        db_list=db_names,
        device=device,
    )


def _localize(
    layout: AachenLayout,
    reference_sfm: Path,
    loc_pairs: Path,
    features: Path,
    loc_matches: Path,
    results: Path,
    on_failure: str,
    allow_empty: bool,
    overwrite: bool,
) -> tuple[list[str], int]:
    """Localize the queries into ``results`` (``localize_sfm``); returns the
    queries PnP could not localize and the number it did. Skipped when the
    results file and its summary exist and the file is complete."""
    from .. import localize_sfm

    summary_path = Path(f"{results}_summary.json")
    if not overwrite and results.is_file() and summary_path.is_file():
        failed, num_localized = _read_summary(summary_path)
        report = validate_results(results, layout.queries)
        if on_failure == "skip":
            report.missing = [m for m in report.missing if m not in failed]
        if report.ok:
            logger.info("Results %s exist and are complete, skipping.", results)
            return failed, num_localized
    summary_path.unlink(missing_ok=True)
    if allow_empty and _is_empty_model(reference_sfm):
        return _fallback_results(layout, reference_sfm, loc_pairs, results, on_failure)
    localize_sfm.main(
        reference_sfm,
        layout.queries_glob,
        loc_pairs,
        features,
        loc_matches,
        results,
        covisibility_clustering=False,
        fallback_to_retrieved=on_failure == "retrieval-pose",
        allow_empty=allow_empty,
    )
    return _read_summary(summary_path)


def _is_empty_model(model: Path) -> bool:
    rec = pycolmap.Reconstruction(str(model))
    return rec.num_points3D() == 0


def _fallback_results(
    layout: AachenLayout,
    reference_sfm: Path,
    loc_pairs: Path,
    results: Path,
    on_failure: str,
) -> tuple[list[str], int]:
    """Results when the triangulated model has no 3D point (``allow_empty``):
    no query can be localized; each gets the pose of its top retrieved image
    (unless ``on_failure="skip"``). Writes the summary like ``localize_sfm``."""
    logger.warning(
        "The triangulated model %s has no 3D point: no query can be localized.",
        reference_sfm,
    )
    rec = pycolmap.Reconstruction(str(reference_sfm))
    by_name = {image.name: image for image in rec.images.values()}
    retrieved = parse_retrieval(loc_pairs)
    poses = {}
    if on_failure == "retrieval-pose":
        for query in layout.queries:
            top = next((n for n in retrieved.get(query, []) if n in by_name), None)
            if top is not None:
                poses[query] = by_name[top].cam_from_world()
    write_results(poses, results)
    summary = {
        "num_queries": len(layout.queries),
        "num_localized": 0,
        "num_failed": len(layout.queries),
        "num_fallback": len(poses),
        "queries": {
            q: {"localized": False, "fallback": q in poses} for q in layout.queries
        },
    }
    Path(f"{results}_summary.json").write_text(json.dumps(summary, indent=1))
    return list(layout.queries), 0


def _read_summary(path: Path) -> tuple[list[str], int]:
    summary = json.loads(path.read_text(encoding="utf-8"))
    failed = [q for q, entry in summary["queries"].items() if not entry["localized"]]
    return failed, int(summary["num_localized"])


# --------------------------------------------------------------------- CLI
def add_arguments_aachen(parser: argparse.ArgumentParser) -> None:
    """Options of ``xfeat-hloc aachen``."""
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder")
    parser.add_argument("--outputs", type=Path, required=True, help="output folder")
    parser.add_argument("--version", choices=VERSIONS, default="1.1")
    parser.add_argument("--method", choices=list(METHODS), default="xfeat+mnn")
    parser.add_argument("--num-covis", "--num_covis", type=int, default=20)
    parser.add_argument("--num-loc", "--num_loc", type=int, default=50)
    parser.add_argument(
        "--retrieval",
        choices=RETRIEVALS,
        default="xfeat-global",
        help="xfeat-global: VLAD of XFeat features (offline); netvlad: needs "
        "$TORCH_HOME/hub/netvlad/VGG16-NetVLAD-Pitts30K.mat",
    )
    parser.add_argument(
        "--retrieval-pairs",
        "--retrieval_pairs",
        type=Path,
        help="use this 'query db' pairs file (e.g. hloc's pairs-query-netvlad50.txt)",
    )
    add_device_and_weights(parser, "explicit weights file of the matcher model")
    parser.add_argument("--resize-max", type=int, help="override the conf's resize_max")
    parser.add_argument(
        "--max-keypoints", type=int, help="keypoints per image (sparse) / kept (dense)"
    )
    parser.add_argument(
        "--on-failure",
        choices=("retrieval-pose", "skip"),
        default="retrieval-pose",
        help="pose given to queries PnP cannot localize (default: the pose of the "
        "top retrieved image, logged, so the file is complete)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="go on when triangulation or localization gives nothing (plumbing "
        "checks with untrained weights); the results file is still complete",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo every step")


def run_cli_aachen(args: argparse.Namespace) -> int:
    """Run ``xfeat-hloc aachen``."""
    options = {"weights_path": str(args.weights)} if args.weights else None
    result = run(
        args.dataset,
        args.outputs,
        version=args.version,
        method=args.method,
        num_covis=args.num_covis,
        num_loc=args.num_loc,
        retrieval=args.retrieval,
        retrieval_pairs=args.retrieval_pairs,
        device=args.device,
        resize_max=args.resize_max,
        max_keypoints=args.max_keypoints,
        model_options=options,
        on_failure=args.on_failure,
        allow_empty=args.allow_empty,
        overwrite=args.overwrite,
    )
    print(
        f"{result.num_localized} / {result.num_queries} queries localized; "
        f"results: {result.results}"
    )
    return 0


def add_arguments_validate_results(parser: argparse.ArgumentParser) -> None:
    """Options of ``xfeat-hloc validate-results``."""
    parser.add_argument("results", type=Path, help="the results file")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--dataset", type=Path, help="Aachen folder: queries from its query lists"
    )
    group.add_argument(
        "--queries",
        type=Path,
        help="query list(s) with intrinsics (a glob is allowed)",
    )
    parser.add_argument(
        "--prepend-camera-name",
        action="store_true",
        help="names are camera/basename instead of basename",
    )


def run_cli_validate_results(args: argparse.Namespace) -> int:
    """Run ``xfeat-hloc validate-results``: prints the report, exit 1 if invalid."""
    from ..utils.parsers import parse_image_lists

    pattern = args.queries if args.dataset is None else args.dataset / QUERY_LISTS
    entries = parse_image_lists(pattern, with_intrinsics=True)
    queries = [name for name, _ in entries]
    report = validate_results(args.results, queries, args.prepend_camera_name)
    print(report.summary(max_items=10))
    return 0 if report.ok else 1


def script_main(version: str, argv: list[str] | None = None) -> int:
    """``pipelines/aachen.py`` and ``pipelines/aachen_v1_1.py``: ``xfeat-hloc
    aachen --version VERSION`` with hloc's default folders for that version
    (``datasets/aachen[_v1.1]``, ``outputs/aachen[_v1.1]``); options in ``argv``
    (default: ``sys.argv[1:]``) win."""
    import sys

    from ..cli import main

    suffix = "" if version == "1.0" else f"_v{version}"
    defaults = ["--version", version, "--dataset", f"datasets/aachen{suffix}"]
    defaults += ["--outputs", f"outputs/aachen{suffix}"]
    return main(["aachen", *defaults, *(sys.argv[1:] if argv is None else argv)])
