"""Localize query images against an SfM model (hloc's ``localize_sfm``).

For each query, the matches to its retrieved reference images give 2D-3D
correspondences (query keypoint -> the 3D point of the matched reference
keypoint); ``pycolmap.estimate_and_refine_absolute_pose`` (LO-RANSAC + non-linear
refinement) gives the pose. Optionally the references are first split into
covisibility clusters and the cluster with the most inliers wins.

Outputs:

- ``results``: ``name qw qx qy qz tx ty tz`` per localized query, world-to-camera
  (the query's basename unless ``prepend_camera_name``);
- ``{results}_logs.pkl``: hloc's log layout (``logs["loc"][query]`` with
  ``PnP_ret``, ``keypoints_query``, ``points3D_ids``, ``db``...), plain numpy and
  Python values only;
- ``{results}_summary.json``: per query ``localized``, ``num_inliers``,
  ``num_matches``, ``num_points3D``.

A query whose pose cannot be estimated is reported as failed and left out of
the results, unless ``fallback_to_retrieved=True`` explicitly gives it the pose
of its first retrieved image (logged, and marked in the summary).
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .errors import EmptyResultError, UserError
from .results_file import write_results
from .triangulation import load_reference
from .utils.database import read_pair_matches
from .utils.parsers import parse_image_lists, parse_retrieval

QueryList = Path | str | Sequence[tuple[str, dict | pycolmap.Camera]]


def covisibility_clusters(
    image_ids: Sequence[int], reconstruction: pycolmap.Reconstruction
) -> list[list[int]]:
    """Split ``image_ids`` into groups connected by shared 3D points, largest first."""
    wanted = set(image_ids)
    clusters: list[list[int]] = []
    seen: set[int] = set()
    for start in image_ids:
        if start in seen:
            continue
        cluster: list[int] = []
        stack = [start]
        seen.add(start)
        while stack:
            image_id = stack.pop()
            cluster.append(image_id)
            image = reconstruction.images[image_id]
            neighbours: set[int] = set()
            for idx in image.get_observation_point2D_idxs():
                point_id = image.points2D[idx].point3D_id
                for element in reconstruction.points3D[point_id].track.elements:
                    neighbours.add(element.image_id)
            for other in (neighbours & wanted) - seen:
                seen.add(other)
                stack.append(other)
        clusters.append(cluster)
    return sorted(clusters, key=len, reverse=True)


def _camera(value: dict | pycolmap.Camera) -> pycolmap.Camera:
    if isinstance(value, pycolmap.Camera):
        return value
    return pycolmap.Camera(
        model=value["model"],
        width=int(value["width"]),
        height=int(value["height"]),
        params=np.asarray(value["params"], float),
    )


class QueryLocalizer:
    """2D-3D correspondences of a query and its absolute pose.

    Args:
        reconstruction: the reference model (3D points and their observations).
        features: features h5 holding the query and reference keypoints.
        matches: matches h5 of the query-reference pairs.
        config: ``{"estimation": AbsolutePoseEstimationOptions fields,
            "refinement": AbsolutePoseRefinementOptions fields}``.
    """

    def __init__(
        self,
        reconstruction: pycolmap.Reconstruction,
        features: Path,
        matches: Path,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.reconstruction = reconstruction
        self.config = config or {}
        self._features = h5py.File(str(features), "r", libver="latest")
        self._matches = h5py.File(str(matches), "r", libver="latest")
        self._point_ids: dict[int, np.ndarray] = {}

    def close(self) -> None:
        self._features.close()
        self._matches.close()

    def point_ids_of(self, image_id: int) -> np.ndarray:
        """3D point id of each keypoint of a reference image (-1: none)."""
        if image_id not in self._point_ids:
            image = self.reconstruction.images[image_id]
            ids = np.full(image.num_points2D(), -1, np.int64)
            for idx in image.get_observation_point2D_idxs():
                ids[idx] = image.points2D[idx].point3D_id
            if len(self._point_ids) > 256:
                self._point_ids.clear()
            self._point_ids[image_id] = ids
        return self._point_ids[image_id]

    def query_keypoints(self, name: str) -> np.ndarray:
        """Query keypoints ``(N, 2)`` in COLMAP pixels (+0.5)."""
        if name not in self._features:
            raise UserError(
                f"Query {name!r} has no features in {self._features.filename}: "
                "extract the query features into the same file first."
            )
        return self._features[name]["keypoints"][()].astype(np.float64) + 0.5

    def localize(
        self, qname: str, camera: pycolmap.Camera, db_ids: Sequence[int]
    ) -> tuple[dict | None, dict[str, Any]]:
        """Estimate the pose of ``qname`` from the references ``db_ids``.

        Returns:
            ``(ret, log)``: pycolmap's result (``cam_from_world``,
            ``num_inliers``, ``inlier_mask``) or None, and hloc's log entry.
        """
        keypoints = self.query_keypoints(qname)
        kp_to_points: dict[int, list[int]] = defaultdict(list)
        kp_to_point_to_db: dict[int, dict[int, list[int]]] = defaultdict(
            lambda: defaultdict(list)
        )
        num_matches = 0
        for i, db_id in enumerate(db_ids):
            image = self.reconstruction.images[db_id]
            if image.num_points3D == 0:
                continue
            point_ids = self.point_ids_of(db_id)
            pair = read_pair_matches(self._matches, qname, image.name, None)
            pair = pair.astype(np.int64)
            if len(pair) == 0:
                continue
            if pair[:, 1].max() >= len(point_ids):
                raise UserError(
                    f"Matches of ({qname}, {image.name}) index keypoints beyond the "
                    f"{len(point_ids)} of {image.name} in the model: the model was "
                    "not triangulated from these features."
                )
            pair = pair[point_ids[pair[:, 1]] != -1]
            num_matches += len(pair)
            for kp_idx, db_kp in pair:
                point_id = int(point_ids[db_kp])
                kp_to_point_to_db[kp_idx][point_id].append(i)
                if point_id not in kp_to_points[kp_idx]:
                    kp_to_points[kp_idx].append(point_id)

        kp_idxs = [k for k in kp_to_points for _ in kp_to_points[k]]
        point_ids = [p for k in kp_to_points for p in kp_to_points[k]]
        ret = None
        if len(kp_idxs) >= 4:
            points2D = keypoints[kp_idxs]
            points3D = np.array(
                [self.reconstruction.points3D[p].xyz for p in point_ids]
            )
            ret = pycolmap.estimate_and_refine_absolute_pose(
                points2D,
                points3D,
                camera,
                estimation_options=self.config.get("estimation", {}),
                refinement_options=self.config.get("refinement", {}),
            )
        log = {
            "db": list(db_ids),
            "PnP_ret": _plain_ret(ret),
            "keypoints_query": keypoints[kp_idxs] if kp_idxs else np.zeros((0, 2)),
            "points3D_ids": point_ids,
            "points3D_xyz": None,
            "num_matches": num_matches,
            "keypoint_index_to_db": (
                kp_idxs,
                [
                    (p, kp_to_point_to_db[k][p])
                    for k in kp_to_points
                    for p in kp_to_points[k]
                ],
            ),
        }
        return ret, log


def _plain_ret(ret: dict | None) -> dict | None:
    """pycolmap's result with plain values (the log must unpickle anywhere)."""
    if ret is None:
        return None
    pose = ret["cam_from_world"]
    qx, qy, qz, qw = pose.rotation.quat
    return {
        "cam_from_world": np.asarray(pose.matrix()),
        "qvec": np.array([qw, qx, qy, qz]),
        "tvec": np.asarray(pose.translation),
        "num_inliers": int(ret["num_inliers"]),
        "inlier_mask": np.asarray(ret["inlier_mask"], bool),
    }


def _read_queries(queries: QueryList) -> list[tuple[str, pycolmap.Camera]]:
    if isinstance(queries, (str, Path)):
        parsed = parse_image_lists(Path(queries), with_intrinsics=True)
    else:
        parsed = list(queries)
    return [(name, _camera(camera)) for name, camera in parsed]


def main(
    reference_sfm: Path | pycolmap.Reconstruction,
    queries: QueryList,
    retrieval: Path,
    features: Path,
    matches: Path,
    results: Path,
    ransac_thresh: float = 12.0,
    covisibility_clustering: bool = False,
    prepend_camera_name: bool = False,
    config: dict[str, Any] | None = None,
    fallback_to_retrieved: bool = False,
    allow_empty: bool = False,
) -> Path:
    """Localize queries and write hloc's results file.

    Args:
        reference_sfm: the triangulated model (folder or object).
        queries: an image list with intrinsics (``name MODEL W H params...``,
            glob allowed), or ``[(name, camera dict or pycolmap.Camera)]``.
        retrieval: pairs file ``query reference`` (references by priority).
        features: features h5 of the queries and the references.
        matches: matches h5 of the query-reference pairs.
        results: the results file to write.
        ransac_thresh: RANSAC inlier threshold in pixels.
        covisibility_clustering: localize against each covisibility cluster of
            the references and keep the pose with the most inliers.
        prepend_camera_name: names ``camera/basename`` instead of ``basename``.
        config: ``{"estimation": {...}, "refinement": {...}}`` pycolmap options.
        fallback_to_retrieved: give a failed query the pose of its first
            retrieved image (off by default; such queries are logged and marked
            ``"fallback": true`` in the summary).
        allow_empty: do not raise when no query is localized.

    Returns:
        The path of the results file.

    Raises:
        EmptyResultError: no query could be localized (unless ``allow_empty``).
    """
    retrieval, features, matches = Path(retrieval), Path(features), Path(matches)
    results = Path(results)
    for what, path in (
        ("retrieval pairs", retrieval),
        ("features", features),
        ("matches", matches),
    ):
        if not path.exists():
            raise UserError(f"The {what} file {path} does not exist.")
    query_list = _read_queries(queries)
    retrieval_dict = parse_retrieval(retrieval)
    logger.info("Reading the 3D model...")
    reference = load_reference(reference_sfm)
    if reference.num_points3D() == 0:
        raise UserError(
            "The reference model has no 3D point: triangulate it before localizing."
        )
    name_to_id = {image.name: i for i, image in reference.images.items()}

    estimation = {"ransac": {"max_error": ransac_thresh}}
    config = {"estimation": estimation, **(config or {})}
    localizer = QueryLocalizer(reference, features, matches, config)

    poses: dict[str, pycolmap.Rigid3d] = {}
    summary: dict[str, dict[str, Any]] = {}
    logs: dict[str, Any] = {
        "features": features,
        "matches": matches,
        "retrieval": retrieval,
        "loc": {},
    }
    failed: list[str] = []
    fallbacks: list[str] = []
    unknown_refs: set[str] = set()
    try:
        for qname, camera in tqdm(query_list, desc="localize", unit="query"):
            db_names = retrieval_dict.get(qname, [])
            db_ids = []
            for name in db_names:
                if name in name_to_id:
                    db_ids.append(name_to_id[name])
                else:
                    unknown_refs.add(name)
            ret = None
            if db_ids and covisibility_clustering:
                clusters = covisibility_clusters(db_ids, reference)
                best, cluster_logs = None, []
                for i, cluster in enumerate(clusters):
                    cluster_ret, cluster_log = localizer.localize(
                        qname, camera, cluster
                    )
                    cluster_logs.append(cluster_log)
                    if cluster_ret is not None and (
                        best is None
                        or cluster_ret["num_inliers"]
                        > cluster_logs[best]["PnP_ret"]["num_inliers"]
                    ):
                        best, ret = i, cluster_ret
                log = {
                    "db": db_ids,
                    "best_cluster": best,
                    "log_clusters": cluster_logs,
                    "num_matches": sum(c["num_matches"] for c in cluster_logs),
                }
            elif db_ids:
                ret, log = localizer.localize(qname, camera, db_ids)
            else:
                log = {"db": [], "PnP_ret": None, "num_matches": 0}
            log["covisibility_clustering"] = covisibility_clustering
            logs["loc"][qname] = log

            entry: dict[str, Any] = {
                "localized": ret is not None,
                "num_inliers": int(ret["num_inliers"]) if ret is not None else 0,
                "num_matches": int(log["num_matches"]),
                "num_retrieved": len(db_ids),
            }
            if ret is not None:
                poses[qname] = ret["cam_from_world"]
            else:
                failed.append(qname)
                if fallback_to_retrieved and db_ids:
                    poses[qname] = reference.images[db_ids[0]].cam_from_world()
                    fallbacks.append(qname)
                    entry["fallback"] = True
            summary[qname] = entry
    finally:
        localizer.close()

    if unknown_refs:
        logger.warning(
            "%d retrieved images are not in the model (e.g. %s).",
            len(unknown_refs),
            sorted(unknown_refs)[0],
        )
    num_ok = len(query_list) - len(failed)
    logger.info(
        "Localized %d / %d queries; %d failed%s.",
        num_ok,
        len(query_list),
        len(failed),
        (
            f" ({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''})"
            if failed
            else ""
        ),
    )
    if fallbacks:
        logger.warning(
            "%d failed queries were given the pose of their first retrieved image "
            "(fallback_to_retrieved=True): their poses are guesses.",
            len(fallbacks),
        )
    if num_ok == 0 and not allow_empty:
        raise EmptyResultError(
            f"None of the {len(query_list)} queries could be localized: check that "
            f"{retrieval} pairs the queries with images of the model and that "
            f"{matches} holds their matches."
        )

    write_results(poses, results, prepend_camera_name=prepend_camera_name)
    logger.info("Wrote %d poses to %s.", len(poses), results)
    with open(f"{results}_logs.pkl", "wb") as f:
        pickle.dump(logs, f)
    with open(f"{results}_summary.json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "num_queries": len(query_list),
                "num_localized": num_ok,
                "num_failed": len(failed),
                "num_fallback": len(fallbacks),
                "queries": summary,
            },
            f,
            indent=1,
        )
    return results


# --------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference_sfm", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--matches", type=Path, required=True)
    parser.add_argument("--retrieval", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--ransac_thresh", type=float, default=12.0)
    parser.add_argument("--covisibility_clustering", action="store_true")
    parser.add_argument("--prepend_camera_name", action="store_true")
    parser.add_argument("--fallback_to_retrieved", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    main(
        args.reference_sfm,
        args.queries,
        args.retrieval,
        args.features,
        args.matches,
        args.results,
        ransac_thresh=args.ransac_thresh,
        covisibility_clustering=args.covisibility_clustering,
        prepend_camera_name=args.prepend_camera_name,
        fallback_to_retrieved=args.fallback_to_retrieved,
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run_cli(parser.parse_args()))
