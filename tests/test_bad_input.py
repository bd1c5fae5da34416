"""Bad input to the extract / pairs / match steps, and resuming a killed run.

Odd images are made in a temporary folder from the real sacre_coeur photos.
Every case gives one clear error or a logged skip, never a corrupt file.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from xfeat_hloc import extract_features, logger, match_features
from xfeat_hloc.cli import main as cli_main
from xfeat_hloc.confs import get_conf
from xfeat_hloc.errors import EmptyResultError, UnknownConfError, UserError
from xfeat_hloc.extractors.xfeat import XFeat
from xfeat_hloc.utils.h5_writer import H5Writer
from xfeat_hloc.utils.io import get_keypoints, get_matches, list_h5_names
from xfeat_hloc.utils.parsers import write_pairs

GOOD = {
    "good.jpg": "colour JPEG",
    "eight.png": "8-bit PNG",
    "sixteen.png": "16-bit PNG of the same pixels",
    "rgba.png": "RGBA PNG of the same pixels",
    "gray.jpg": "grayscale JPEG",
    "nested/deeper/img.jpg": "nested folders",
    "café/été_名前.jpg": "non-ASCII folder and file names",
}
BAD = ("truncated.jpg", "garbage.png", "empty.jpg")


def small_conf() -> dict:
    conf = copy.deepcopy(extract_features.confs["xfeat"])
    conf["model"]["max_keypoints"] = 512
    return conf


def write(path: Path, image: np.ndarray, ext: str) -> None:
    """cv2.imwrite does not take non-ASCII paths everywhere: encode, then write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(ext, image)
    assert ok
    path.write_bytes(data.tobytes())


@pytest.fixture(scope="module")
def odd_dir(sacre_coeur_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    sources = sorted(sacre_coeur_dir.glob("*.jpg"))
    bgr = cv2.imread(str(sources[0]))
    bgr = cv2.resize(bgr, (bgr.shape[1] * 320 // bgr.shape[0], 320))
    write(root / "good.jpg", bgr, ".jpg")
    write(root / "eight.png", bgr, ".png")
    write(root / "sixteen.png", bgr.astype(np.uint16) * 257, ".png")
    alpha = np.full(bgr.shape[:2] + (1,), 128, np.uint8)
    write(root / "rgba.png", np.concatenate([bgr, alpha], -1), ".png")
    other = cv2.imread(str(sources[1]))
    other = cv2.resize(other, (other.shape[1] * 320 // other.shape[0], 320))
    write(root / "gray.jpg", cv2.cvtColor(other, cv2.COLOR_BGR2GRAY), ".jpg")
    write(root / "nested/deeper/img.jpg", other, ".jpg")
    write(root / "café/été_名前.jpg", other[:, ::-1], ".jpg")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "garbage.png").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def odd_features(
    odd_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, extract_features.ExtractionSummary, list[str]]:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore
    logger.addHandler(handler)
    try:
        summary = extract_features.extract(
            small_conf(), odd_dir, tmp_path_factory.mktemp("out")
        )
    finally:
        logger.removeHandler(handler)
    return summary.path, summary, records


def test_odd_images_extracted_or_skipped(
    odd_features: tuple[Path, extract_features.ExtractionSummary, list[str]],
) -> None:
    path, summary, records = odd_features
    assert sorted(summary.unreadable) == sorted(BAD)
    assert summary.extracted == len(GOOD)
    for name in BAD:  # each skip is logged with the path and the reason
        assert any(f"Skipping image {name}" in r for r in records), name
    assert any("truncated" in r for r in records)
    assert sorted(list_h5_names(path)) == sorted(GOOD)
    with h5py.File(path, "r") as fd:
        for name in GOOD:
            assert fd[name]["keypoints"].shape[0] > 50, name
            assert fd[name]["image_size"][1] == 320


def test_odd_formats_give_the_same_features(
    odd_features: tuple[Path, extract_features.ExtractionSummary, list[str]],
) -> None:
    path = odd_features[0]
    eight = get_keypoints(path, "eight.png")
    np.testing.assert_array_equal(get_keypoints(path, "sixteen.png"), eight)
    np.testing.assert_array_equal(get_keypoints(path, "rgba.png"), eight)


def test_nested_and_non_ascii_names_match(
    odd_features: tuple[Path, extract_features.ExtractionSummary, list[str]],
    tmp_path: Path,
) -> None:
    path = odd_features[0]
    a, b = "nested/deeper/img.jpg", "café/été_名前.jpg"
    pairs = write_pairs(tmp_path / "pairs.txt", [(a, b), (a, "gray.jpg")])
    matches = match_features.main(
        match_features.confs["xfeat+mnn"], pairs, path, matches=tmp_path / "m.h5"
    )
    assert sorted(list_h5_names(matches)) == sorted(
        ["nested-deeper-img.jpg/café-été_名前.jpg", "nested-deeper-img.jpg/gray.jpg"]
    )
    m, _ = get_matches(matches, b, a)
    assert len(m) > 20  # a horizontally flipped image still matches a bit
    m, _ = get_matches(matches, "gray.jpg", a)
    assert len(m) > 100  # gray.jpg and img.jpg are the same photo


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyResultError, match="No image found in .*empty"):
        extract_features.main(small_conf(), tmp_path / "empty", tmp_path / "out")
    with pytest.raises(UserError, match="Image folder not found: .*nowhere"):
        extract_features.main(small_conf(), tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_only_unreadable_images(odd_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EmptyResultError, match="None of the 3 images"):
        extract_features.main(small_conf(), odd_dir, tmp_path, image_list=list(BAD))
    assert list(tmp_path.iterdir()) == []  # no file, no parts


def test_image_list_naming_missing_images(odd_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"2 image\(s\) .* not in .*: a.jpg, b/c.jpg"):
        extract_features.main(
            small_conf(), odd_dir, tmp_path, image_list=["good.jpg", "a.jpg", "b/c.jpg"]
        )


def test_unknown_conf_names(
    odd_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(UnknownConfError, match=r"Known: .*\bxfeat, xfeat_n8192"):
        get_conf("superpoint_aachen", "extractor")
    conf = small_conf()
    conf["model"]["name"] = "superpoint"
    with pytest.raises(UnknownConfError, match="Unknown model name 'superpoint'"):
        extract_features.main(conf, odd_dir, tmp_path, image_list=["good.jpg"])
    assert list_h5_names_or_none(tmp_path / (conf["output"] + ".h5")) is None
    with pytest.raises(SystemExit):
        cli_main(["match", "--pairs", "p.txt", "--features", "f", "--conf", "NN"])
    assert "invalid choice: 'NN'" in capsys.readouterr().err


def list_h5_names_or_none(path: Path) -> list[str] | None:
    return list_h5_names(path) if path.exists() else None


def test_pairs_naming_missing_images(
    odd_features: tuple[Path, extract_features.ExtractionSummary, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    path = odd_features[0]
    pairs = write_pairs(
        tmp_path / "pairs.txt",
        [("good.jpg", "eight.png"), ("good.jpg", "missing1.jpg"), ("x.jpg", "y.jpg")],
    )
    out = tmp_path / "matches.h5"
    with pytest.raises(UserError, match="missing1.jpg") as info:
        match_features.main(match_features.confs["xfeat+mnn"], pairs, path, matches=out)
    message = str(info.value)
    assert "x.jpg" in message and "y.jpg" in message and str(path) in message
    assert not out.exists() and not out.with_name(out.name + ".parts").exists()
    # the CLI prints it as one line, without a traceback
    code = cli_main(
        ["match", "--pairs", str(pairs), "--features", str(path)]
        + ["--matches", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("xfeat-hloc match: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xfeat_hloc", "extract", "--image_dir"]
        + [str(tmp_path / "nowhere"), "--export_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"xfeat-hloc extract: error: Image folder not found: {tmp_path / 'nowhere'}"
        ". Check the path."
    )


@pytest.mark.slow
def test_resume_after_kill(sacre_coeur_dir: Path, tmp_path: Path) -> None:
    """SIGKILL an extraction mid-run: the file stays readable, finished parts
    are kept, and a rerun extracts only the rest."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    count = 0
    for source in sorted(sacre_coeur_dir.glob("*.jpg")):
        image = cv2.imread(str(source))
        image = cv2.resize(image, (image.shape[1] * 320 // image.shape[0], 320))
        for k in range(4):  # 40 images: shifted crops of the 10 photos
            write(image_dir / f"{source.stem}_{k}.jpg", image[:, 4 * k :], ".jpg")
            count += 1
    names = sorted(p.name for p in image_dir.glob("*.jpg"))
    path = tmp_path / "feats.h5"
    conf = get_conf("xfeat", "extractor")  # as the command below
    model = XFeat(conf["model"]).eval()
    extract_features.extract(
        conf, image_dir, feature_path=path, image_list=names[:3], model=model
    )
    before = sorted(list_h5_names(path))

    parts_dir = path.with_name(path.name + ".parts")
    command = [sys.executable, "-m", "xfeat_hloc", "extract", "--image_dir"]
    command += [str(image_dir), "--feature_path", str(path)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not list(parts_dir.glob("part-*.h5")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no part file was written"
            time.sleep(0.05)
        assert proc.poll() is None, "the extraction ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # the target is untouched and readable; the finished part is complete
    assert sorted(list_h5_names(path)) == before
    in_parts = H5Writer(path).done - set(before)
    assert 0 < len(in_parts) < count - 3

    summary = extract_features.extract(conf, image_dir, feature_path=path, model=model)
    assert summary.already_done == 3 + len(in_parts)
    assert summary.extracted == count - 3 - len(in_parts)
    assert sorted(list_h5_names(path)) == names
    assert not parts_dir.exists()
    # what the killed run wrote equals a fresh extraction
    name = sorted(in_parts)[0]
    fresh = tmp_path / "fresh.h5"
    extract_features.extract(
        conf, image_dir, feature_path=fresh, image_list=[name], model=model
    )
    np.testing.assert_allclose(
        get_keypoints(path, name), get_keypoints(fresh, name), atol=1e-3
    )
