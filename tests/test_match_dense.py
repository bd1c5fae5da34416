"""match_dense with XFeat* on real images: hloc's files, a reconstruction that
registers every image, resume, localization mode, and clear outcomes on bad input."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from xfeat_hloc import match_dense
from xfeat_hloc.cli import main as cli_main
from xfeat_hloc.confs import get_conf
from xfeat_hloc.errors import EmptyResultError, UserError
from xfeat_hloc.matchers.xfeat_star import XFeatStar
from xfeat_hloc.utils.h5_writer import H5Writer
from xfeat_hloc.utils.io import read_image
from xfeat_hloc.utils.parsers import names_to_pair, write_pairs


def exhaustive(names: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


@pytest.fixture(scope="module")
def sacre_mapping(sacre_coeur_dir, tmp_path_factory):
    """xfeat_star on all pairs of the 10 Sacre Coeur photos (computed once)."""
    out = tmp_path_factory.mktemp("dense_sacre")
    names = sorted(p.name for p in sacre_coeur_dir.iterdir())
    pairs = write_pairs(out / "pairs.txt", exhaustive(names))
    conf = get_conf("xfeat_star", "dense matcher")
    features, matches = match_dense.main(conf, pairs, sacre_coeur_dir, out)
    return {
        "out": out,
        "names": names,
        "pairs": pairs,
        "features": features,
        "matches": matches,
        "conf": conf,
    }


@pytest.mark.slow
def test_xfeat_star_reconstruction_registers_all_images(sacre_mapping, sacre_coeur_dir):
    from xfeat_hloc import reconstruction

    m = sacre_mapping
    rec = reconstruction.main(
        m["out"] / "sfm",
        sacre_coeur_dir,
        m["pairs"],
        m["features"],
        m["matches"],
    )
    assert rec.num_reg_images() == len(m["names"]) == 10
    assert rec.num_points3D() > 1000
    errors = [p.error for p in rec.points3D.values()]
    assert np.median(errors) < 1.5  # px: sub-pixel keypoints, consistent tracks


def test_files_are_in_hlocs_formats(sacre_mapping):
    m = sacre_mapping
    with h5py.File(m["features"]) as ff, h5py.File(m["matches"]) as fm:
        assert sorted(ff) == m["names"]
        for name in m["names"]:
            grp = ff[name]
            assert grp["keypoints"].dtype == np.float32
            assert grp["keypoints"].shape[1] == 2
            assert 1000 < len(grp["keypoints"]) <= 8192
            assert grp["scores"].shape == (len(grp["keypoints"]),)
            w, h = grp["image_size"][()]
            kps = grp["keypoints"][()]
            assert kps.min() >= -0.5 and (kps[:, 0] <= w - 0.5).all()
            assert (kps[:, 1] <= h - 0.5).all()
        for a, b in exhaustive(m["names"]):
            grp = fm[names_to_pair(a, b)]
            m0 = grp["matches0"][()]
            assert m0.dtype == np.int32 and len(m0) == len(ff[a]["keypoints"])
            assert m0.max() < len(ff[b]["keypoints"])
            valid = m0[m0 >= 0]
            assert len(np.unique(valid)) == len(valid)  # one-to-one
            assert grp["matching_scores0"].shape == m0.shape
            n = len(grp["scores"])
            assert grp["keypoints0"].shape == grp["keypoints1"].shape == (n, 2)


def test_rerun_is_idempotent(sacre_mapping, sacre_coeur_dir, caplog):
    m = sacre_mapping
    stamps = [os.stat(p).st_mtime_ns for p in (m["features"], m["matches"])]
    with caplog.at_level(logging.INFO, logger="xfeat_hloc"):
        match_dense.main(m["conf"], m["pairs"], sacre_coeur_dir, m["out"])
    assert "already matched" in caplog.text
    assert stamps == [os.stat(p).st_mtime_ns for p in (m["features"], m["matches"])]


@pytest.fixture(scope="module")
def query_dir(sacre_coeur_dir, sacre_mapping, tmp_path_factory):
    """The mapping images (links) plus two queries: rotated, rescaled crops."""
    root = tmp_path_factory.mktemp("with_queries")
    for name in sacre_mapping["names"]:
        (root / name).symlink_to(sacre_coeur_dir / name)
    (root / "query").mkdir()
    for k, name in enumerate(sacre_mapping["names"][:2]):
        image = read_image(sacre_coeur_dir / name)
        h, w = image.shape[:2]
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), 8 + 5 * k, 0.8)
        warped = cv2.warpAffine(image, rot, (w, h))[20:-20, 30:-30]
        cv2.imwrite(str(root / "query" / f"q{k}.jpg"), warped[:, :, ::-1])
    return root


@pytest.mark.slow
def test_localization_queries_exact_references_snap(sacre_mapping, query_dir):
    m = sacre_mapping
    refs = m["names"][2:]
    queries = ["query/q0.jpg", "query/q1.jpg"]
    # q0 as image 0 (hloc's localization pairs); q1 once on the other side
    loc_pairs = [("query/q0.jpg", r) for r in refs[:4]]
    loc_pairs += [("query/q1.jpg", r) for r in refs[:3]] + [(refs[3], "query/q1.jpg")]
    out = m["out"] / "loc"
    pairs = write_pairs(out / "pairs-loc.txt", loc_pairs)
    features, matches = match_dense.main(
        m["conf"], pairs, query_dir, out, features_ref=m["features"]
    )
    with (
        h5py.File(features) as fq,
        h5py.File(matches) as fm,
        h5py.File(m["features"]) as fr,
    ):
        assert sorted(fq) == ["query"] and sorted(fq["query"]) == ["q0.jpg", "q1.jpg"]
        total = 0
        for a, b in loc_pairs:
            grp = fm[names_to_pair(a, b)]
            q_side, r_side = (0, 1) if a in queries else (1, 0)
            query, ref = (a, b) if q_side == 0 else (b, a)
            raw_q = grp[f"keypoints{q_side}"][()]
            raw_r = grp[f"keypoints{r_side}"][()]
            qkps = fq[query]["keypoints"][()]
            rkps = fr[ref]["keypoints"][()]
            # queries keep every refined point exactly
            assert {tuple(p) for p in raw_q} <= {tuple(p) for p in qkps}
            m0 = grp["matches0"][()]
            idx = np.flatnonzero(m0 >= 0)
            kp0 = (qkps if q_side == 0 else rkps)[idx]
            kp1 = (rkps if q_side == 0 else qkps)[m0[idx]]
            qk, rk = (kp0, kp1) if q_side == 0 else (kp1, kp0)
            # reference keypoints are the mapping's, within max_error of raw points
            assert set(map(tuple, rk)) <= set(map(tuple, rkps))
            d = np.linalg.norm(raw_r[:, None] - rk[None], axis=-1).min(0)
            assert d.max() <= m["conf"]["max_error"] + 1e-4
            assert set(map(tuple, qk)) <= {tuple(p) for p in raw_q}
            total += len(idx)
        assert total > 500
        # the pair listed as (ref, query) was run with the query refined: the
        # reference's raw points are its unrefined XFeat* cell positions (moved
        # by the conf's shift1)
        grp = fm[names_to_pair(refs[3], "query/q1.jpg")]
        raw_ref = grp["keypoints0"][()]
    model = XFeatStar(m["conf"]["model"]).eval()
    image = read_image(query_dir / refs[3], grayscale=False)
    array, scale = match_dense.preprocess(image, m["conf"]["preprocessing"])
    dense = model.extract_dense(torch.from_numpy(array)[None])
    shift = torch.tensor(m["conf"]["model"].get("shift1", (0.0, 0.0)))
    cells = (dense["keypoints"] + dense["scales"] * shift).numpy()
    cells = match_dense.to_original(cells, scale)
    dist = np.linalg.norm(raw_ref[:, None] - cells[None], axis=-1).min(1)
    assert dist.max() < 1e-3


# ------------------------------------------------------------ bad inputs
@pytest.fixture(scope="module")
def small_dir(sacre_coeur_dir, tmp_path_factory):
    """Three real photos at 320 px, a 40x30 thumbnail and a blank image."""
    root = tmp_path_factory.mktemp("small")
    names = sorted(p.name for p in sacre_coeur_dir.iterdir())[:3]
    for name in names:
        image = read_image(sacre_coeur_dir / name)
        h, w = image.shape[:2]
        s = 320 / max(h, w)
        small = cv2.resize(image, (round(w * s), round(h * s)), cv2.INTER_AREA)
        cv2.imwrite(str(root / name), small[:, :, ::-1])
    cv2.imwrite(str(root / "tiny.jpg"), small[:30, :40, ::-1])
    return root, names


def test_missing_image_is_one_clear_error(small_dir, tmp_path):
    root, names = small_dir
    pairs = write_pairs(tmp_path / "p.txt", [(names[0], "nope/missing.jpg")])
    conf = get_conf("xfeat_star", "dense matcher")
    with pytest.raises(UserError, match="nope/missing.jpg") as info:
        match_dense.main(conf, pairs, root, tmp_path)
    assert str(root) in str(info.value)
    assert not list(tmp_path.glob("*.h5"))  # fails before any work


def test_too_small_image_is_skipped_with_a_warning(small_dir, tmp_path, caplog):
    root, names = small_dir
    pairs = write_pairs(
        tmp_path / "p.txt", [(names[0], names[1]), (names[0], "tiny.jpg")]
    )
    conf = get_conf("xfeat_star", "dense matcher")
    with caplog.at_level(logging.WARNING, logger="xfeat_hloc"):
        features, matches = match_dense.main(conf, pairs, root, tmp_path)
    assert "tiny.jpg" in caplog.text and "too small" in caplog.text
    assert "1 of 2 pairs have no matches" in caplog.text
    with h5py.File(features) as ff, h5py.File(matches) as fm:
        assert ff["tiny.jpg"]["keypoints"].shape == (0, 2)
        assert list(ff["tiny.jpg"]["image_size"][()]) == [40, 30]
        assert (fm[names_to_pair(names[0], "tiny.jpg")]["matches0"][()] == -1).all()
        assert (fm[names_to_pair(names[0], names[1])]["matches0"][()] >= 0).sum() > 50


def test_no_match_at_all_is_an_error(small_dir, tmp_path):
    root, names = small_dir
    pairs = write_pairs(tmp_path / "p.txt", [(names[0], names[1])])
    conf = get_conf("xfeat_star", "dense matcher")
    conf["model"]["fine_conf"] = 1.0  # the refinement keeps nothing
    with pytest.raises(EmptyResultError, match="No pair of 1 got any match"):
        match_dense.main(conf, pairs, root, tmp_path)


def test_features_ref_from_another_extractor_is_reported(small_dir, tmp_path, caplog):
    """References whose keypoints are unrelated to the dense points."""
    root, names = small_dir
    rng = np.random.default_rng(0)
    ref = tmp_path / "foreign.h5"
    with H5Writer(ref) as writer:
        for name in names[1:]:
            w, h = cv2.imread(str(root / name)).shape[1::-1]
            writer.write(
                name,
                {
                    # a sparse extractor's file: few keypoints, 128-d descriptors
                    "keypoints": (rng.random((30, 2)) * [w, h]).astype(np.float32),
                    "descriptors": rng.random((128, 30)).astype(np.float32),
                    "image_size": np.array([w, h]),
                },
            )
    pairs = write_pairs(tmp_path / "p.txt", [(names[0], n) for n in names[1:]])
    conf = get_conf("xfeat_star", "dense matcher")
    # a few keypoints may fall near dense points by chance: a warning then,
    # else no match at all: an error; either way it says what happened
    try:
        with caplog.at_level(logging.WARNING, logger="xfeat_hloc"):
            match_dense.main(conf, pairs, root, tmp_path, features_ref=ref)
        message = caplog.text
    except EmptyResultError as error:
        message = str(error)
    assert "another extractor" in message and "dimension 128" in message
    assert str(ref) in message


def test_features_ref_of_other_images_is_an_error(small_dir, sacre_coeur_dir, tmp_path):
    root, names = small_dir
    ref = tmp_path / "big.h5"
    image = read_image(sacre_coeur_dir / names[1])
    with H5Writer(ref) as writer:
        writer.write(
            names[1],
            {
                "keypoints": np.zeros((5, 2), np.float32),
                "image_size": np.array(image.shape[1::-1]),
            },
        )
    pairs = write_pairs(tmp_path / "p.txt", [(names[0], names[1])])
    conf = get_conf("xfeat_star", "dense matcher")
    with pytest.raises(UserError, match="made from other images"):
        match_dense.main(conf, pairs, root, tmp_path, features_ref=ref)


def test_not_a_features_file_is_an_error(small_dir, tmp_path):
    root, names = small_dir
    bogus = tmp_path / "bogus.h5"
    with h5py.File(bogus, "w") as fd:
        fd.create_dataset("x/matches0", data=np.zeros(3, np.int32))
    pairs = write_pairs(tmp_path / "p.txt", [(names[0], names[1])])
    conf = get_conf("xfeat_star", "dense matcher")
    with pytest.raises(UserError, match="not an hloc features file"):
        match_dense.main(conf, pairs, root, tmp_path, features_ref=bogus)


def test_cli_runs_and_reports_errors_in_one_line(small_dir, tmp_path, capsys):
    root, names = small_dir
    pairs = write_pairs(tmp_path / "p.txt", [(names[0], names[1])])

    def run(pairs_file: Path) -> int:
        return cli_main(
            ["match-dense", "--conf", "xfeat_star", "--pairs", str(pairs_file)]
            + ["--image-dir", str(root), "--export-dir", str(tmp_path)]
            + ["--resize-max", "256"]
        )

    assert run(pairs) == 0
    out = capsys.readouterr().out
    assert "features:" in out and "matches:" in out
    assert run(write_pairs(tmp_path / "bad.txt", [(names[0], "missing.jpg")])) == 1
    err = capsys.readouterr().err
    assert "missing.jpg" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
