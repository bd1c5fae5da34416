"""Against a real hloc: register(), same results as hloc's own steps, files
mixed freely between hloc and xfeat_hloc, hloc's reconstruction on our files.

hloc is not on PyPI: these tests skip without it. To run them, install hloc
from its repository (``pip install --no-deps`` of a checkout, plus its runtime
imports) beside xfeat_hloc.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import xfeat_hloc
from xfeat_hloc import (
    extract_features,
    hloc_plugin,
    match_features,
    pairs_from_covisibility,
    pairs_from_exhaustive,
)
from xfeat_hloc.utils.io import get_keypoints, get_matches
from xfeat_hloc.utils.parsers import parse_pairs

pytestmark = pytest.mark.hloc
NUM_IMAGES = 4


def test_register_without_hloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs with or without hloc: hloc is hidden from the import system."""
    monkeypatch.setitem(sys.modules, "hloc", None)
    with pytest.raises(ImportError, match="pip install git\\+https://github.com/cvg"):
        xfeat_hloc.register()


@pytest.fixture(scope="module")
def report() -> dict:
    """What register() did; skips every test that needs hloc when it is absent."""
    pytest.importorskip(
        "hloc",
        reason="hloc is not installed (pip install "
        "git+https://github.com/cvg/Hierarchical-Localization to run these tests)",
    )
    return xfeat_hloc.register()


@pytest.fixture(scope="module")
def names(sacre_coeur_dir: Path) -> list[str]:
    return sorted(p.name for p in sacre_coeur_dir.glob("*.jpg"))


def test_register(report: dict) -> None:
    from hloc import extract_features as h_extract
    from hloc import match_features as h_match
    from hloc import matchers

    for item in (
        "hloc.extractors.xfeat",
        "hloc.matchers.mnn",
        "hloc.matchers.lighterglue",
        "extract_features.confs['xfeat']",
        "match_features.confs['xfeat+mnn']",
        "match_features.confs['xfeat+lighterglue']",
    ):
        assert item in report["registered"], item
    assert h_extract.confs["xfeat"] == extract_features.confs["xfeat"]
    assert h_match.confs["xfeat+mnn"] == match_features.confs["xfeat+mnn"]
    assert h_extract.confs["xfeat"] is not extract_features.confs["xfeat"]
    assert matchers.mnn is sys.modules["hloc.matchers.mnn"]
    try:
        import hloc.match_dense as h_dense
    except ImportError:  # hloc's match_dense needs torchvision
        assert "torchvision" in report["skipped"]["match_dense.confs"]
    else:
        assert "match_dense.confs['xfeat_star']" in report["registered"]
        assert h_dense.confs["loftr"]["model"]["name"] == "loftr"  # hloc's own

    again = xfeat_hloc.register()
    assert again["registered"] == []
    assert set(again["already"]) == set(report["registered"])


def test_never_replaces_hloc_models_or_confs(report: dict) -> None:
    from hloc import extract_features as h_extract

    result: dict = {"registered": [], "already": [], "skipped": {}}
    usable = hloc_plugin._register_models(
        "matchers", ("loftr", "nearest_neighbor"), False, result
    )
    assert usable == set() and result["registered"] == []
    assert result["skipped"]["hloc.matchers.loftr"].startswith("hloc has its own")
    assert not hasattr(sys.modules.get("hloc.matchers.loftr"), hloc_plugin.MARKER)

    saved = h_extract.confs["xfeat_n8192"]
    theirs = {**copy.deepcopy(saved), "output": "someone-elses"}
    h_extract.confs["xfeat_n8192"] = theirs
    try:
        result = xfeat_hloc.register()
        key = "extract_features.confs['xfeat_n8192']"
        assert result["skipped"][key] == "hloc has its own conf of this name"
        assert h_extract.confs["xfeat_n8192"] is theirs
        result = xfeat_hloc.register(overwrite=True)
        assert key in result["registered"]
        assert h_extract.confs["xfeat_n8192"] == saved
    finally:
        h_extract.confs["xfeat_n8192"] = saved


def test_dynamic_load_gives_an_hloc_model(report: dict) -> None:
    import torch
    from hloc import extractors, matchers
    from hloc.utils.base_model import BaseModel, dynamic_load

    from xfeat_hloc.extractors.xfeat import XFeat
    from xfeat_hloc.matchers.mnn import MNN

    Extractor = dynamic_load(extractors, "xfeat")
    assert issubclass(Extractor, BaseModel) and issubclass(Extractor, XFeat)
    assert Extractor.__module__ == "hloc.extractors.xfeat"
    model = Extractor({"name": "xfeat", "max_keypoints": 256}).eval()
    assert model.conf["max_keypoints"] == 256
    pred = model({"image": torch.rand(1, 3, 96, 128)})
    assert pred["keypoints"].shape[-1] == 2 and pred["descriptors"].shape[1] == 64
    with pytest.raises((KeyError, AssertionError)):
        model({"images": torch.rand(1, 3, 96, 128)})
    Matcher = dynamic_load(matchers, "mnn")
    assert issubclass(Matcher, BaseModel) and issubclass(Matcher, MNN)


@pytest.fixture(scope="module")
def hloc_and_ours(
    report: dict,
    sacre_coeur_dir: Path,
    names: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """hloc's and our extraction and matching, same confs, same images."""
    from hloc import extract_features as h_extract
    from hloc import match_features as h_match
    from hloc import pairs_from_exhaustive as h_pairs

    out = tmp_path_factory.mktemp("same")
    subset = names[:NUM_IMAGES]
    paths = {}
    for who, module in (("hloc", h_extract), ("ours", extract_features)):
        paths[f"{who}_full"] = module.main(
            module.confs["xfeat"],
            sacre_coeur_dir,
            feature_path=out / f"{who}_full.h5",
            as_half=False,
            image_list=subset,
        )
        paths[f"{who}_half"] = module.main(
            module.confs["xfeat"],
            sacre_coeur_dir,
            feature_path=out / f"{who}_half.h5",
            as_half=True,
            image_list=subset,
        )
    paths["pairs"] = out / "pairs.txt"
    h_pairs.main(paths["pairs"], image_list=subset)
    for who, module in (("hloc", h_match), ("ours", match_features)):
        paths[f"{who}_matches"] = module.main(
            module.confs["xfeat+mnn"],
            paths["pairs"],
            paths[f"{who}_half"],
            matches=out / f"{who}_matches.h5",
        )
    return paths


def test_same_keypoints_as_hloc(hloc_and_ours: dict[str, Path]) -> None:
    paths = hloc_and_ours
    with h5py.File(paths["hloc_full"], "r") as h, h5py.File(paths["ours_full"]) as o:
        assert sorted(h) == sorted(o)
        for name in h:
            np.testing.assert_array_equal(h[name]["image_size"], o[name]["image_size"])
            np.testing.assert_allclose(
                h[name]["keypoints"], o[name]["keypoints"], atol=1e-4
            )
            np.testing.assert_allclose(
                h[name]["descriptors"], o[name]["descriptors"], atol=1e-5
            )
            assert h[name]["keypoints"].attrs["uncertainty"] == pytest.approx(
                o[name]["keypoints"].attrs["uncertainty"]
            )
    with h5py.File(paths["hloc_half"], "r") as h, h5py.File(paths["ours_half"]) as o:
        for name in h:
            theirs, ours = h[name]["keypoints"][()], o[name]["keypoints"][()]
            assert theirs.dtype == np.float16 and ours.dtype == np.float32
            # hloc's float16 keypoints are ours rounded to float16
            np.testing.assert_array_equal(theirs, ours.astype(np.float16))
            np.testing.assert_array_equal(
                h[name]["descriptors"], o[name]["descriptors"]
            )


def test_same_matches_as_hloc(hloc_and_ours: dict[str, Path]) -> None:
    paths = hloc_and_ours
    pairs = parse_pairs(paths["pairs"])
    assert len(pairs) == NUM_IMAGES * (NUM_IMAGES - 1) // 2
    for a, b in pairs:
        theirs, _ = get_matches(paths["hloc_matches"], a, b)
        ours, _ = get_matches(paths["ours_matches"], a, b)
        assert len(ours) > 100
        # hloc's matches come from float16 keypoints/descriptors, like ours
        np.testing.assert_array_equal(theirs, ours)
    with h5py.File(paths["hloc_matches"], "r") as h:
        group = h[next(iter(h))]
        assert group[next(iter(group))]["matches0"].dtype == np.int16  # hloc's


@pytest.fixture(scope="module")
def hloc_sift(
    report: dict,
    sacre_coeur_dir: Path,
    names: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """hloc's own files: SIFT (pycolmap) features, NN-ratio matches."""
    from hloc import extract_features as h_extract
    from hloc import match_features as h_match
    from hloc import pairs_from_exhaustive as h_pairs

    out = tmp_path_factory.mktemp("sift")
    subset = names[:NUM_IMAGES]
    conf = h_extract.confs["sift"]
    features = h_extract.main(conf, sacre_coeur_dir, out, image_list=subset)
    pairs = out / "pairs.txt"
    h_pairs.main(pairs, features=features)
    matches = h_match.main(h_match.confs["NN-ratio"], pairs, conf["output"], out)
    return {"features": features, "pairs": pairs, "matches": matches, "out": out}


def test_our_readers_and_matcher_on_hloc_files(hloc_sift: dict[str, Path]) -> None:
    from hloc.utils.io import get_keypoints as h_get_keypoints
    from hloc.utils.io import get_matches as h_get_matches

    features, matches = hloc_sift["features"], hloc_sift["matches"]
    pairs = parse_pairs(hloc_sift["pairs"])  # hloc's pairs file, no final newline
    assert len(pairs) == NUM_IMAGES * (NUM_IMAGES - 1) // 2
    for a, b in pairs:
        kp, unc = get_keypoints(features, a, return_uncertainty=True)
        h_kp, h_unc = h_get_keypoints(features, a, return_uncertainty=True)
        np.testing.assert_array_equal(kp, h_kp.astype(np.float32))
        assert unc == pytest.approx(h_unc)
        ours, scores = get_matches(matches, b, a)  # reversed order too
        theirs, h_scores = h_get_matches(matches, b, a)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(scores, h_scores)

    # our match step on hloc's SIFT features (128-d, float16 keypoints)
    ours_path = match_features.main(
        match_features.confs["xfeat+mnn"],
        hloc_sift["pairs"],
        features,
        matches=hloc_sift["out"] / "ours_on_sift.h5",
    )
    total = 0
    for a, b in pairs:
        ours, _ = get_matches(ours_path, a, b)
        theirs, _ = get_matches(matches, a, b)
        # every ratio-test match is also a mutual nearest neighbour
        assert {tuple(m) for m in theirs} <= {tuple(m) for m in ours}
        total += len(theirs)
    assert total > 100


@pytest.mark.slow
def test_hloc_reconstruction_on_our_files(
    report: dict, sacre_coeur_dir: Path, names: list[str], tmp_path: Path
) -> None:
    """Our features, pairs and matches -> hloc's reconstruction.main -> a model;
    then our covisibility pairs on it agree with hloc's."""
    from hloc import pairs_from_covisibility as h_covis
    from hloc import reconstruction

    conf = copy.deepcopy(extract_features.confs["xfeat"])
    conf["model"]["max_keypoints"] = 2048
    features = extract_features.main(conf, sacre_coeur_dir, tmp_path)
    pairs = pairs_from_exhaustive.main(tmp_path / "pairs.txt", features=features)
    matches = match_features.main(
        match_features.confs["xfeat+mnn"], pairs, conf["output"], tmp_path
    )
    model = reconstruction.main(
        tmp_path / "sfm", sacre_coeur_dir, pairs, features, matches
    )
    assert model is not None
    assert model.num_reg_images() >= len(names) - 1
    assert model.num_points3D() > 1000

    ours = parse_pairs(
        pairs_from_covisibility.main(tmp_path / "sfm", tmp_path / "c.txt", 3)
    )
    h_covis.main(tmp_path / "sfm", tmp_path / "h.txt", 3)
    theirs = parse_pairs(tmp_path / "h.txt")
    # hloc counts observation pairs (a track may hold two keypoints of one
    # image), we count shared 3D points: close rankings, rare swaps
    assert len(ours) == len(theirs) == 3 * model.num_reg_images()
    assert len(set(ours) & set(theirs)) >= 0.8 * len(ours)
