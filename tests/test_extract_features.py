"""extract_features: hloc's features.h5 format, rescaling, idempotence, options."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from xfeat_hloc import extract_features
from xfeat_hloc.cli import main as cli_main
from xfeat_hloc.errors import UserError
from xfeat_hloc.extractors.xfeat import XFeat

NUM_IMAGES = 3


def small_conf(resize_max: int = 512, max_keypoints: int = 1024) -> dict:
    """The real ``xfeat`` conf, on smaller images to keep the tests fast."""
    conf = copy.deepcopy(extract_features.confs["xfeat"])
    conf["preprocessing"]["resize_max"] = resize_max
    conf["model"]["max_keypoints"] = max_keypoints
    return conf


@pytest.fixture(scope="module")
def names(sacre_coeur_dir: Path) -> list[str]:
    return sorted(p.name for p in sacre_coeur_dir.glob("*.jpg"))[:NUM_IMAGES]


@pytest.fixture(scope="module")
def model() -> XFeat:
    return XFeat(small_conf()["model"]).eval()


@pytest.fixture(scope="module")
def features(
    sacre_coeur_dir: Path, names: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, extract_features.ExtractionSummary]:
    export_dir = tmp_path_factory.mktemp("extract")
    summary = extract_features.extract(
        small_conf(), sacre_coeur_dir, export_dir, image_list=names
    )
    return summary.path, summary


def test_format(
    features: tuple[Path, extract_features.ExtractionSummary],
    sacre_coeur_dir: Path,
    names: list[str],
) -> None:
    path, summary = features
    assert path.name == "feats-xfeat-n4096-r1600.h5"  # the conf's output name
    assert summary.extracted == NUM_IMAGES and summary.already_done == 0
    assert not path.with_name(path.name + ".parts").exists()
    with h5py.File(path, "r") as fd:
        assert sorted(fd) == names
        for name in names:
            grp = fd[name]
            height, width = cv2.imread(str(sacre_coeur_dir / name)).shape[:2]
            assert grp["image_size"][()].tolist() == [width, height]
            kp = grp["keypoints"]
            assert kp.dtype == np.float32 and kp.shape[1] == 2
            num = kp.shape[0]
            assert 100 < num <= 1024
            assert grp["descriptors"].dtype == np.float16
            assert grp["descriptors"].shape == (64, num)
            assert grp["scores"].dtype == np.float16 and grp["scores"].shape == (num,)
            xy = kp[()]
            assert (xy >= -0.5).all()
            assert (xy[:, 0] <= width - 0.5).all() and (xy[:, 1] <= height - 0.5).all()
            # uncertainty = detection noise (1 px) x mean scale to the original
            scale = max(width, height) / 512
            assert kp.attrs["uncertainty"] == pytest.approx(scale, rel=2e-3)
            norms = np.linalg.norm(grp["descriptors"][()].astype(np.float32), axis=0)
            np.testing.assert_allclose(norms, 1, atol=2e-3)


def test_keypoints_rescaled_to_original(
    features: tuple[Path, extract_features.ExtractionSummary],
    sacre_coeur_dir: Path,
    names: list[str],
    model: XFeat,
) -> None:
    """Stored keypoints = (kp + 0.5) * scale - 0.5 of the model's keypoints on
    the resized image, and they land near full-resolution detections."""
    path, _ = features
    dataset = extract_features.ImageDataset(
        sacre_coeur_dir, small_conf()["preprocessing"], names[:1]
    )
    item = dataset[0]
    with torch.inference_mode():
        kp_small = model({"image": item["image"][None]})["keypoints"][0].numpy()
    resized = np.array(item["image"].shape[-2:][::-1], np.float32)
    scale = item["original_size"] / resized
    with h5py.File(path, "r") as fd:
        stored = fd[names[0]]["keypoints"][()]
    np.testing.assert_allclose(stored, (kp_small + 0.5) * scale - 0.5, atol=1e-4)

    full = extract_features.ImageDataset(
        sacre_coeur_dir, {"resize_max": None}, names[:1]
    )[0]
    with torch.inference_mode():
        out = XFeat({"max_keypoints": 4096})({"image": full["image"][None]})
    kp_full = out["keypoints"][0].numpy()
    dist = np.linalg.norm(stored[:, None] - kp_full[None], axis=-1).min(1)
    assert np.median(dist) < scale.mean() * 1.5  # within about one resized pixel


def test_rerun_does_no_work(
    features: tuple[Path, extract_features.ExtractionSummary],
    sacre_coeur_dir: Path,
    names: list[str],
) -> None:
    path, _ = features
    mtime = path.stat().st_mtime_ns
    summary = extract_features.extract(
        small_conf(), sacre_coeur_dir, feature_path=path, image_list=names
    )
    assert summary.extracted == 0 and summary.already_done == NUM_IMAGES
    assert path.stat().st_mtime_ns == mtime


def test_new_images_only_and_overwrite(
    sacre_coeur_dir: Path, names: list[str], tmp_path: Path, model: XFeat
) -> None:
    path = tmp_path / "f.h5"
    conf = small_conf(256, 256)
    extract_features.extract(
        conf, sacre_coeur_dir, feature_path=path, image_list=names[:1], model=model
    )
    list_file = tmp_path / "list.txt"
    list_file.write_text("\n".join(names[:2]) + "\n")
    summary = extract_features.extract(
        conf, sacre_coeur_dir, feature_path=path, image_list=list_file, model=model
    )
    assert (summary.extracted, summary.already_done) == (1, 1)
    summary = extract_features.extract(
        conf,
        sacre_coeur_dir,
        feature_path=path,
        image_list=names[:2],
        overwrite=True,
        model=model,
    )
    assert (summary.extracted, summary.already_done) == (2, 0)
    with h5py.File(path, "r") as fd:
        assert sorted(fd) == names[:2]


def test_as_half_false_and_hloc_signature(
    sacre_coeur_dir: Path, names: list[str], tmp_path: Path
) -> None:
    conf = small_conf(256, 256)
    path = extract_features.main(
        conf, sacre_coeur_dir, tmp_path, False, names[:1], None, False, "cpu"
    )
    assert path == tmp_path / (conf["output"] + ".h5")
    with h5py.File(path, "r") as fd:
        grp = fd[names[0]]
        assert grp["descriptors"].dtype == np.float32
        assert grp["scores"].dtype == np.float32
        assert grp["keypoints"].dtype == np.float32


def test_prefetch_modes_agree(
    sacre_coeur_dir: Path, names: list[str], tmp_path: Path, model: XFeat
) -> None:
    conf = small_conf(256, 256)
    results = {}
    for mode in ("thread", "process", "none"):
        path = tmp_path / f"{mode}.h5"
        extract_features.extract(
            conf,
            sacre_coeur_dir,
            feature_path=path,
            image_list=names[:2],
            model=model,
            prefetch=mode,
        )
        with h5py.File(path, "r") as fd:
            results[mode] = [fd[n]["keypoints"][()] for n in names[:2]]
    for mode in ("process", "none"):
        for a, b in zip(results["thread"], results[mode], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("interpolation", ["cv2_linear", "pil_linear", "pil_bicubic"])
def test_interpolations(
    sacre_coeur_dir: Path, names: list[str], tmp_path: Path, interpolation: str
) -> None:
    conf = small_conf(256, 256)
    conf["preprocessing"]["interpolation"] = interpolation
    dataset = extract_features.ImageDataset(
        sacre_coeur_dir, conf["preprocessing"], names[:1]
    )
    image = dataset[0]["image"]
    assert max(image.shape[-2:]) == 256 and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1


def test_unknown_interpolation(sacre_coeur_dir: Path) -> None:
    with pytest.raises(UserError, match="Unknown interpolation 'cv2_magic'"):
        extract_features.ImageDataset(sacre_coeur_dir, {"interpolation": "cv2_magic"})


def test_resize_force_upsamples(sacre_coeur_dir: Path, names: list[str]) -> None:
    conf = {"resize_max": 1600, "resize_force": True, "grayscale": True}
    item = extract_features.ImageDataset(sacre_coeur_dir, conf, names[:1])[0]
    assert item["image"].shape[0] == 1 and max(item["image"].shape[-2:]) == 1600
    item = extract_features.ImageDataset(
        sacre_coeur_dir, {**conf, "resize_force": False}, names[:1]
    )[0]
    assert item["image"].shape[-2:][::-1] == tuple(item["original_size"])


def test_cli_extract(
    sacre_coeur_dir: Path,
    names: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    list_file = tmp_path / "list.txt"
    list_file.write_text(names[0] + "\n")
    out = tmp_path / "feats.h5"
    args = ["extract", "--image_dir", str(sacre_coeur_dir), "--conf", "xfeat_r1024"]
    args += ["--image_list", str(list_file), "--feature_path", str(out)]
    assert cli_main(args) == 0
    assert "extracted 1 images (0 already done) -> " in capsys.readouterr().out
    assert cli_main(args) == 0
    assert "extracted 0 images (1 already done)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse lists the known confs
        cli_main(["extract", "--image_dir", str(sacre_coeur_dir), "--conf", "sift"])
    assert "invalid choice: 'sift'" in capsys.readouterr().err
