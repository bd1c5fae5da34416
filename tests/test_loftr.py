"""Our LoFTR wrapper: same matches as kornia's stock LoFTR, bounded memory path,
refinement on image 0, weights handling, and plumbing through ``match_dense``."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.feature import LoFTR
from kornia.feature.loftr.loftr import default_cfg
from kornia.feature.loftr.utils.coarse_matching import CoarseMatching

from xfeat_hloc import match_dense
from xfeat_hloc.confs import get_conf
from xfeat_hloc.errors import WeightsNotFoundError
from xfeat_hloc.matchers.kornia_loftr import (
    KorniaLoFTR,
    calibrate_batchnorm,
    loftr_config,
)
from xfeat_hloc.models.loftr_coarse import ChunkedCoarseMatching, dual_softmax_mnn
from xfeat_hloc.utils.parsers import names_to_pair, write_pairs

COARSE_KEYS = ("b_ids", "i_ids", "j_ids", "mkpts0_c", "mkpts1_c")


def structured_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse features of two 'images' whose cells correspond by a permutation."""
    g = torch.Generator().manual_seed(seed)
    feat0 = torch.randn(1, 30 * 40, 256, generator=g)
    perm = torch.randperm(1200, generator=g)[:1100]
    feat1 = feat0[:, perm] * 1.5 + torch.randn(1, 1100, 256, generator=g) * 2.0
    return feat0, feat1


@pytest.mark.parametrize("chunk_mb", [0.5, 1000.0])
def test_chunked_coarse_matching_equals_kornia(chunk_mb):
    feat0, feat1 = structured_features()
    config = copy.deepcopy(default_cfg["match_coarse"])
    config["thr"] = 0.05
    results = []
    for module in (CoarseMatching(config), ChunkedCoarseMatching(config, chunk_mb)):
        data = {"hw0_c": (30, 40), "hw1_c": (25, 44), "stride_c": 8, "bs": 1}
        with torch.no_grad():
            module.eval()(feat0, feat1, data)
        results.append(data)
    stock, ours = results
    assert len(stock["i_ids"]) > 300  # a real test: many matches
    for key in COARSE_KEYS:
        assert torch.equal(stock[key], ours[key]), key
    torch.testing.assert_close(ours["mconf"], stock["mconf"], rtol=1e-5, atol=1e-7)


def test_dual_softmax_statistics_against_the_full_matrix():
    feat0, feat1 = structured_features(1)
    f0, f1 = feat0 / 16, feat1 / 16
    sim = (f0 @ f1.transpose(1, 2)) / 0.1
    conf = F.softmax(sim, 1) * F.softmax(sim, 2)
    row_max, row_arg, col_max = dual_softmax_mnn(f0, f1, 0.1, chunk_mb=0.01)
    torch.testing.assert_close(row_max, conf.max(2).values, rtol=1e-5, atol=1e-8)
    assert torch.equal(row_arg, conf.max(2).indices)
    torch.testing.assert_close(col_max, conf.amax(1), rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def pair(kornia_data_dir):
    """kornia's homography pair, downscaled to 192x256 for speed."""
    data = torch.load(
        kornia_data_dir / "loftr_outdoor_and_homography_data.pt", weights_only=False
    )
    return [
        F.interpolate(data[k], size=(192, 256), mode="area")
        for k in ("image0", "image1")
    ]


@pytest.fixture(scope="module")
def models(pair):
    """Our wrapper and kornia's stock LoFTR with the same random weights."""
    torch.manual_seed(123)  # the wrapper must not depend on the global RNG
    ours = KorniaLoFTR({"weights": "random", "match_threshold": 0.0, "seed": 7})
    calibrate_batchnorm(ours.net, torch.cat(pair))
    stock = LoFTR(pretrained=None, config=loftr_config(None, 0.0))
    stock.load_state_dict(ours.net.state_dict())
    return ours.eval(), stock.eval()


@pytest.fixture(scope="module")
def predictions(models, pair):
    """Ours on (image0, image1) and kornia's stock LoFTR on the swapped pair."""
    ours, stock = models
    with torch.inference_mode():
        pred = ours({"image0": pair[0], "image1": pair[1]})
        # kornia refines its image1: our image0 goes there
        ref = stock({"image0": pair[1], "image1": pair[0]})
    return pred, ref


def test_wrapper_matches_stock_kornia_exactly(predictions):
    """Chunked coarse matching, per-image lean backbone: the same matches."""
    pred, ref = predictions
    assert len(pred["scores"]) > 100
    assert torch.equal(pred["keypoints0"], ref["keypoints1"] - 0.5)
    assert torch.equal(pred["keypoints1"], ref["keypoints0"] - 0.5)
    torch.testing.assert_close(pred["scores"], ref["confidence"], rtol=1e-5, atol=0)


def test_lean_backbone_is_bitwise_kornias(models, pair):
    ours, stock = models
    with torch.inference_mode():
        for a, b in zip(
            ours.net.backbone(pair[0]), stock.backbone(pair[0]), strict=True
        ):
            assert torch.equal(a, b)


def test_image0_is_refined_image1_on_the_coarse_grid(predictions):
    pred, _ = predictions
    grid1 = (pred["keypoints1"] + 0.5) / 8
    assert torch.equal(grid1, grid1.round())  # coarse cells, pixel centres at ints
    grid0 = (pred["keypoints0"] + 0.5) / 8
    assert (grid0 != grid0.round()).any(dim=1).float().mean() > 0.5


def test_max_num_matches_keeps_the_best(models, pair, predictions):
    ours, _ = models
    full, _ = predictions
    ours.conf["max_num_matches"] = 50
    try:
        with torch.inference_mode():
            top = ours({"image0": pair[0], "image1": pair[1]})
    finally:
        ours.conf["max_num_matches"] = None
    assert len(top["scores"]) == 50
    assert torch.equal(top["scores"], full["scores"].sort(descending=True).values[:50])


def test_kornia_default_config_is_never_modified():
    before = copy.deepcopy(default_cfg)
    a = KorniaLoFTR({"weights": None, "match_threshold": 0.5, "seed": 1})
    b = KorniaLoFTR({"weights": None, "match_threshold": 0.1, "seed": 1})
    assert default_cfg == before
    assert a.net.coarse_matching.thr == 0.5 and b.net.coarse_matching.thr == 0.1
    for (name, p), q in zip(
        a.net.state_dict().items(), b.net.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name  # seeded random weights


def test_missing_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XFEAT_HLOC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XFEAT_HLOC_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="loftr_outdoor.ckpt"):
        KorniaLoFTR({"weights": "outdoor"})
    with pytest.raises(WeightsNotFoundError, match="loftr_indoor_ds_new.ckpt"):
        KorniaLoFTR({"weights": "indoor"})
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        KorniaLoFTR({"weights": "outdoor", "weights_path": tmp_path / "nope.ckpt"})


def test_weights_file_round_trip(tmp_path, models):
    """A checkpoint file (Lightning layout) named explicitly is loaded."""
    ours, _ = models
    path = tmp_path / "loftr_outdoor.ckpt"
    torch.save({"state_dict": ours.net.state_dict(), "epoch": 1}, path)
    loaded = KorniaLoFTR({"weights": "outdoor", "weights_path": path})
    for key, value in ours.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key


@pytest.mark.slow
def test_random_weights_end_to_end_through_match_dense(
    tmp_path, sacre_coeur_dir, monkeypatch
):
    names = sorted(p.name for p in sacre_coeur_dir.iterdir())[:3]
    pair_list = [(names[0], names[1]), (names[0], names[2])]
    pairs = write_pairs(tmp_path / "pairs.txt", pair_list)
    conf = get_conf("loftr_outdoor", "dense matcher")
    conf["model"].update(weights="random", match_threshold=0.0)
    conf["preprocessing"]["resize_max"] = 224
    features, matches = match_dense.main(conf, pairs, sacre_coeur_dir, tmp_path)
    assert features.exists() and matches.exists()
    with h5py.File(features) as ff, h5py.File(matches) as fm:
        assert set(ff) == set(names)
        total = 0
        for a, b in pair_list:
            grp = fm[names_to_pair(a, b)]
            m0 = grp["matches0"][()]
            assert m0.dtype == np.int32 and len(m0) == len(ff[a]["keypoints"])
            assert m0.max() < len(ff[b]["keypoints"])
            total += int((m0 >= 0).sum())
            raw = grp["keypoints0"][()]
            assert raw.dtype == np.float32 and raw.shape[1] == 2
        assert total > 0
        for name in names:
            w, h = ff[name]["image_size"][()]
            kps = ff[name]["keypoints"][()]
            assert max(w, h) > 224  # original pixels, not the network input's
            assert (kps[:, 0] < w).all() and (kps[:, 1] < h).all()
        raw = {p: fm[names_to_pair(*p)]["keypoints0"][()] for p in pair_list}
    # a model without per-image features is run on whole pairs: same points
    init = match_dense._PairMatcher.__init__

    def pairwise_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.per_image = False

    monkeypatch.setattr(match_dense._PairMatcher, "__init__", pairwise_init)
    _, matches2 = match_dense.main(conf, pairs, sacre_coeur_dir, tmp_path / "pairwise")
    with h5py.File(matches2) as fm:
        for p in pair_list:
            assert np.array_equal(fm[names_to_pair(*p)]["keypoints0"][()], raw[p])


# ------------------------------------------------- real weights (optional)
WEIGHTS_ENV = "XFEAT_HLOC_LOFTR_WEIGHTS"


def test_outdoor_weights_reproduce_kornia_reference_matches(kornia_data_dir):
    """Our matches vs kornia's 1719 reference matches (needs the weights file).

    The reference was made by an older kornia whose coarse grid spacing was
    ``H / H_coarse`` (450 / 57 px) instead of 8: we map our points to that frame
    (same coarse cells, same sub-pixel offsets) before comparing.
    """
    weights = os.environ.get(WEIGHTS_ENV)
    if not weights:
        pytest.skip(f"set ${WEIGHTS_ENV} to loftr_outdoor.ckpt to run this test")
    data = torch.load(
        kornia_data_dir / "loftr_outdoor_and_homography_data.pt", weights_only=False
    )
    model = KorniaLoFTR({"weights": "outdoor", "weights_path": Path(weights)})
    with torch.inference_mode():
        # our image0 is refined: kornia's reference refined its image1
        pred = model({"image0": data["image1"], "image1": data["image0"]})
    ref0 = data["loftr_outdoor_tentatives0"].double()  # grid side (data image0)
    ref1 = data["loftr_outdoor_tentatives1"].double()  # refined (data image1)
    assert len(ref0) == 1719
    old_stride = data["image0"].shape[2] / np.ceil(data["image0"].shape[2] / 8)
    grid0 = (pred["keypoints1"].double() + 0.5) / 8  # coarse cells of image0
    fine1 = pred["keypoints0"].double() + 0.5
    cell1 = torch.round(fine1 / 8)
    ours0 = grid0 * old_stride
    ours1 = fine1 - cell1 * 8 + cell1 * old_stride
    n = len(ours0)
    assert abs(n - 1719) <= 0.01 * 1719, n
    ours_by_cell = {
        tuple(p): q
        for p, q in zip(ours0.round(decimals=3).tolist(), ours1, strict=True)
    }
    found = close = 0
    for p, q in zip(ref0.round(decimals=3).tolist(), ref1, strict=True):
        if tuple(p) in ours_by_cell:
            found += 1
            close += bool((ours_by_cell[tuple(p)] - q).abs().max() < 0.05)
    assert found >= 0.97 * 1719 and close >= 0.95 * 1719, (found, close)
