"""Aggregation of per-pair dense matches into per-image keypoints: known answers.

Per-pair points are built from known homographies between three images and
jittered like a dense matcher's output; the tests check the keypoints, the
matches written in hloc's format, many-to-one handling and localization mode,
both on the numpy primitives and on the streaming passes over real h5 files.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from xfeat_hloc.match_dense import aggregate_keypoints, assign_matches
from xfeat_hloc.utils.aggregation import (
    VoteAccumulator,
    assign_to_keypoints,
    to_matches0,
    unique_matches,
)
from xfeat_hloc.utils.h5_writer import H5Writer
from xfeat_hloc.utils.parsers import names_to_pair

SIZE = (640, 480)  # W, H of every synthetic image
H_AB = np.array([[0.95, 0.05, 12.0], [-0.04, 1.02, -7.5], [1e-5, -2e-5, 1.0]])
H_AC = np.array([[1.05, -0.03, -20.3], [0.02, 0.97, 9.1], [-2e-5, 1e-5, 1.0]])


def warp(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    x = np.c_[points, np.ones(len(points))] @ H.T
    return x[:, :2] / x[:, 2:]


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    """True points: one per 16 px cell of image A (well inside every image)."""
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(64, 560, 16), np.arange(64, 400, 16))
    base = np.c_[gx.ravel(), gy.ravel()].astype(np.float64)
    a = base + rng.uniform(2, 10, base.shape)  # never near a cell edge
    return {"A": a, "B": warp(H_AB, a), "C": warp(H_AC, a)}


def jitter(points: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (points + rng.normal(0, sigma, points.shape)).astype(np.float32)


def raw_pairs(scene: dict[str, np.ndarray], sigma: float = 0.2) -> dict:
    """Per-pair points as a dense matcher gives them (jittered, per pair)."""
    out = {}
    for k, (a, b) in enumerate([("A", "B"), ("A", "C"), ("B", "C")]):
        n = len(scene[a])
        out[(a, b)] = (
            jitter(scene[a], sigma, 10 * k),
            jitter(scene[b], sigma, 10 * k + 1),
            np.random.default_rng(k).uniform(0.3, 1.0, n).astype(np.float32),
        )
    return out


def aggregate(raw: dict, cell: float, max_error: float, max_kps=None) -> dict:
    accumulators = {n: VoteAccumulator(SIZE, cell, max_error) for n in "ABC"}
    for (a, b), (kp0, kp1, scores) in raw.items():
        accumulators[a].add(kp0, scores)
        accumulators[b].add(kp1, scores)
    return {n: acc.finalize(max_kps) for n, acc in accumulators.items()}


def test_keypoints_and_matches_follow_the_homographies(scene):
    raw = raw_pairs(scene)
    keypoints = aggregate(raw, cell=8, max_error=2)
    n = len(scene["A"])
    for name in "ABC":
        kps, votes = keypoints[name]
        assert kps.dtype == np.float32 and kps.shape == (n, 2)
        assert np.all(np.diff(votes) <= 0)  # sorted by vote
        # each keypoint is the score-weighted mean of two jittered observations
        dist = np.linalg.norm(kps[:, None] - scene[name][None], axis=-1).min(1)
        assert np.median(dist) < 0.25 and dist.max() < 1.0
    H = {("A", "B"): H_AB, ("A", "C"): H_AC, ("B", "C"): H_AC @ np.linalg.inv(H_AB)}
    for (a, b), (kp0, kp1, scores) in raw.items():
        ids0 = assign_to_keypoints(kp0, keypoints[a][0], 2)
        ids1 = assign_to_keypoints(kp1, keypoints[b][0], 2)
        i0, i1, s = unique_matches(ids0, ids1, scores)
        assert len(i0) >= 0.98 * n
        err = np.linalg.norm(
            warp(H[(a, b)], keypoints[a][0][i0]) - keypoints[b][0][i1], axis=1
        )
        assert np.percentile(err, 95) < 1.0
        matches0, scores0 = to_matches0(i0, i1, s, len(keypoints[a][0]))
        assert matches0.dtype == np.int32 and matches0.shape == (n,)
        assert scores0.dtype == np.float32
        assert np.array_equal(np.flatnonzero(matches0 >= 0), np.sort(i0))


def test_coinciding_points_stay_exact():
    """Points identical in every pair (a grid side) are not moved to bin centres."""
    points = np.array([[100.37, 50.81], [23.02, 200.66]], np.float32)
    acc = VoteAccumulator(SIZE, 8, 2)
    for _ in range(3):
        acc.add(points, np.ones(2))
    kps, votes = acc.finalize()
    assert np.allclose(np.sort(kps, 0), np.sort(points, 0), atol=1e-4)
    assert np.allclose(votes, 3)


def test_one_keypoint_per_cell_from_the_heaviest_bin():
    # three points in one 8 px cell: two agree (bin of 2 px), one is off
    points = np.array([[3.1, 3.2], [3.3, 3.0], [6.2, 6.1]], np.float32)
    acc = VoteAccumulator(SIZE, 8, 2)
    acc.add(points, np.array([0.4, 0.4, 0.7]))
    kps, votes = acc.finalize()
    assert kps.shape == (1, 2)
    assert np.allclose(kps[0], [3.2, 3.1], atol=1e-5)  # weighted mean of the pair
    assert np.isclose(votes[0], 0.8)
    # the third point is farther than max_error from the keypoint: unassigned
    assert list(assign_to_keypoints(points, kps, 2)) == [0, 0, -1]


def test_max_kps_keeps_the_most_voted_cells():
    acc = VoteAccumulator(SIZE, 8, 2)
    points = np.array([[10, 10], [30, 10], [50, 10], [70, 10]], np.float32)
    acc.add(points, np.array([0.5, 0.9, 0.2, 0.7]))
    acc.add(points[:1], np.array([0.6]))  # cell 0 now has 1.1
    kps, votes = acc.finalize(max_kps=2)
    assert np.allclose(kps, [[10, 10], [30, 10]])
    assert np.allclose(votes, [1.1, 0.9])


def test_compaction_does_not_change_the_result(scene):
    raw = raw_pairs(scene)
    results = []
    for every in (50, 10**9):
        acc = VoteAccumulator(SIZE, 4, 1, compact_every=every)
        for (a, _), (kp0, _, scores) in raw.items():
            if a == "A":
                acc.add(kp0, scores)
        results.append(acc.finalize())
    assert np.allclose(results[0][0], results[1][0])
    assert np.allclose(results[0][1], results[1][1])


def test_points_outside_the_image_are_clipped_into_border_cells():
    acc = VoteAccumulator(SIZE, 8, 2)
    acc.add(np.array([[-3.0, 5.0], [700.0, 500.0]], np.float32), np.ones(2))
    kps, _ = acc.finalize()
    assert len(kps) == 2  # kept (at their own positions), no crash


def test_many_to_one_keeps_the_best_score_on_both_sides():
    # raw matches: (kp of image 0, kp of image 1, score)
    ids0 = np.array([0, 0, 1, 2, 3, -1, 4])
    ids1 = np.array([5, 6, 6, 7, 7, 8, -1])
    scores = np.array([0.9, 0.5, 0.8, 0.3, 0.6, 1.0, 1.0], np.float32)
    i0, i1, s = unique_matches(ids0, ids1, scores)
    # 0->5 (best for 0 and for 5); 1->6 (6 is shared with 0->6 of 0.5 < 0.8);
    # 3->7 beats 2->7; -1 entries are dropped
    assert list(zip(i0, i1, strict=True)) == [(0, 5), (1, 6), (3, 7)]
    assert np.allclose(s, [0.9, 0.8, 0.6])
    assert len(set(i0)) == len(i0) and len(set(i1)) == len(i1)


def test_many_to_one_from_jittered_duplicates(scene):
    """Two raw matches of one pair landing on the same keypoints: one survives."""
    a, b = scene["A"][:20].astype(np.float32), scene["B"][:20].astype(np.float32)
    kp0 = np.r_[a, a[:5] + 0.3]
    kp1 = np.r_[b, b[:5] - 0.3]
    scores = np.r_[np.full(20, 0.5), np.full(5, 0.9)].astype(np.float32)
    ids0 = assign_to_keypoints(kp0, a, 2)
    ids1 = assign_to_keypoints(kp1, b, 2)
    i0, i1, s = unique_matches(ids0, ids1, scores)
    assert len(i0) == 20 and np.array_equal(i0, i1)
    by_kp = s[np.argsort(i0)]  # the better duplicates won for keypoints 0-4
    assert np.allclose(by_kp[:5], 0.9) and np.allclose(by_kp[5:], 0.5)


def test_exact_mode_keeps_every_distinct_point():
    acc = VoteAccumulator(SIZE, 0, 0)
    pts = np.array([[10.123, 20.456], [10.124, 20.456], [300.5, 2.25]], np.float32)
    acc.add(pts, np.array([0.5, 0.6, 0.7]))
    acc.add(pts[:1], np.array([0.1]))
    kps, votes = acc.finalize()
    assert len(kps) == 3
    for p in pts:
        assert np.any(np.all(kps == p, axis=1))  # bit-exact positions
    assert np.allclose(sorted(votes), [0.6, 0.6, 0.7])
    ids = assign_to_keypoints(pts, kps, 0)
    assert np.array_equal(kps[ids], pts)


# --------------------------------------------- streaming passes on h5 files
def write_raw(path: Path, raw: dict) -> list[tuple[str, str]]:
    with H5Writer(path) as writer:
        for (a, b), (kp0, kp1, scores) in raw.items():
            writer.write(
                names_to_pair(f"{a}.jpg", f"{b}.jpg"),
                {"keypoints0": kp0, "keypoints1": kp1, "scores": scores},
                {
                    k: {"image_size": np.array(SIZE)}
                    for k in ("keypoints0", "keypoints1")
                },
            )
    return [(f"{a}.jpg", f"{b}.jpg") for a, b in raw]


CONF = {"max_error": 2, "cell_size": 8, "output": "test"}


def test_mapping_passes_write_hloc_files(tmp_path, scene):
    raw = raw_pairs(scene)
    matches = tmp_path / "matches.h5"
    features = tmp_path / "features.h5"
    pairs = write_raw(matches, raw)
    images = {"A.jpg", "B.jpg", "C.jpg"}
    counts = aggregate_keypoints(
        CONF, pairs, matches, features, tmp_path, images, exact=False, max_kps=8192
    )
    assert counts == {n: len(scene["A"]) for n in images}
    stats = assign_matches(CONF, pairs, matches, dict.fromkeys(images, features), set())
    n = len(scene["A"])
    with h5py.File(features) as ff, h5py.File(matches) as fm:
        for name in images:
            assert ff[name]["keypoints"].dtype == np.float32
            assert list(ff[name]["image_size"][()]) == list(SIZE)
        for a, b in pairs:
            grp = fm[names_to_pair(a, b)]
            assert set(grp) == {
                "keypoints0",
                "keypoints1",
                "scores",
                "matches0",
                "matching_scores0",
            }
            m0 = grp["matches0"][()]
            assert m0.dtype == np.int32 and len(m0) == n
            assert (m0 >= 0).sum() >= 0.98 * n
            k0 = ff[a]["keypoints"][()][m0 >= 0]
            k1 = ff[b]["keypoints"][()][m0[m0 >= 0]]
            H = {"A": np.eye(3), "B": H_AB, "C": H_AC}
            true0 = warp(np.linalg.inv(H[a[0]]), k0)  # back to image A
            true1 = warp(np.linalg.inv(H[b[0]]), k1)
            assert np.percentile(np.linalg.norm(true0 - true1, axis=1), 95) < 1.0
    assert min(stats["num_matches"].values()) >= 0.98 * n


def test_localization_refs_snap_queries_stay_exact(tmp_path, scene):
    """References keep their keypoints; the query keeps its refined points."""
    rng = np.random.default_rng(5)
    refs = tmp_path / "refs.h5"
    # plus keypoints that no dense point is near (in a strip left of the scene)
    extra = rng.uniform(0, 1, (50, 2)) * [30, 480]
    ref_kps = {
        "B.jpg": np.r_[scene["B"], extra].astype(np.float32),
        "C.jpg": np.r_[extra, scene["C"]].astype(np.float32),
    }
    with H5Writer(refs) as writer:
        for name, kps in ref_kps.items():
            writer.write(name, {"keypoints": kps, "image_size": np.array(SIZE)})
    # query A is image 0 of both pairs; its refined points differ per pair
    q = scene["A"]
    raw = {
        ("A", "B"): (
            jitter(q, 0.3, 1),
            jitter(scene["B"], 0.3, 2),
            np.ones(len(q), np.float32),
        ),
        ("A", "C"): (
            jitter(q, 0.3, 3),
            jitter(scene["C"], 0.3, 4),
            np.ones(len(q), np.float32),
        ),
    }
    matches = tmp_path / "matches.h5"
    features = tmp_path / "features.h5"
    pairs = write_raw(matches, raw)
    counts = aggregate_keypoints(
        CONF, pairs, matches, features, tmp_path, {"A.jpg"}, exact=True, max_kps=100
    )
    assert counts == {"A.jpg": 2 * len(q)}  # no cap, no quantization in exact mode
    files = {"A.jpg": features, "B.jpg": refs, "C.jpg": refs}
    stats = assign_matches(CONF, pairs, matches, files, {"B.jpg", "C.jpg"})
    assert stats["snapped"]["B.jpg"] == stats["points"]["B.jpg"] == len(q)
    with h5py.File(features) as ff, h5py.File(matches) as fm:
        query_kps = ff["A.jpg"]["keypoints"][()]
        for (a, b), (kp0, _, _) in raw.items():
            m0 = fm[names_to_pair(f"{a}.jpg", f"{b}.jpg")]["matches0"][()]
            assert len(m0) == len(query_kps)
            matched = query_kps[m0 >= 0]
            assert len(matched) == len(q)
            # the query's keypoints are exactly its refined per-pair points
            assert {tuple(p) for p in matched} == {tuple(p) for p in kp0}
            # the references' matched keypoints are their own, unmoved
            ref = ref_kps[f"{b}.jpg"][m0[m0 >= 0]]
            assert (
                np.linalg.norm(
                    ref - warp(H_AB if b == "B" else H_AC, matched), axis=1
                ).max()
                < 3
            )
