"""``xfeat-hloc reconstruct``: sacre_coeur end to end, resume after an
interruption, pictures, intrinsics files, and bad input with clear messages."""

from __future__ import annotations

import shutil

import numpy as np
import pycolmap
import pytest

from xfeat_hloc import cli
from xfeat_hloc.errors import UserError
from xfeat_hloc.pipelines import reconstruction as pipeline


@pytest.mark.slow
def test_sacre_coeur_interrupted_then_resumed(
    sacre_coeur_dir, tmp_path, capsys, caplog, monkeypatch
):
    """All 10 photos register; a run interrupted after matching resumes without
    recomputing features or matches; the summary, plots and 3D view are written."""
    out = tmp_path / "out"
    args = ["reconstruct", "--images", str(sacre_coeur_dir), "--outputs", str(out)]

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("xfeat_hloc.reconstruction.main", interrupt)
        assert cli.main(args) == 130
    assert "interrupted; rerun the same command" in capsys.readouterr().err
    features = out / "feats-xfeat-n4096-r1600.h5"
    assert features.exists()
    mtime = features.stat().st_mtime_ns

    caplog.clear()
    code = cli.main([*args, "--plot-matches", "2", "--view-3d"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Skipping the extraction" in caplog.text
    assert "Skipping the matching" in caplog.text
    assert features.stat().st_mtime_ns == mtime
    assert "images registered: 10 / 10" in printed
    for key in ("3D points:", "mean track length:", "mean reprojection error:"):
        assert key in printed
    assert "time per step:" in printed and "mapping" in printed
    model = pycolmap.Reconstruction(str(out / "sfm"))
    assert model.num_reg_images() == 10
    assert len(list((out / "plots").glob("*.png"))) == 2
    html = (out / "reconstruction.html").read_text()
    assert "plotly" in html.lower() and len(html) > 100_000


@pytest.mark.slow
def test_sequential_pairs_on_a_subset(fountain_dir, tmp_path):
    """Sequential pairing at a small size, through the Python entry point."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3, 8):
        shutil.copy(fountain_dir / "images" / f"{i:04d}.jpg", images)
    result = pipeline.run(
        images,
        tmp_path / "out",
        pairs="sequential",
        window_size=2,
        resize_max=640,
        gt=fountain_dir,
    )
    assert result.num_registered == 5
    assert len(result.pairs.read_text().splitlines()) == 4 + 3
    assert result.evaluation.summary()["median_position"] < 0.05
    assert "images registered: 5 / 5" in result.summary()


def test_bad_inputs_give_one_line_errors(
    sacre_coeur_dir, fountain_dir, tmp_path, capsys
):
    def run(images, *extra):
        code = cli.main(
            [
                "reconstruct",
                "--images",
                str(images),
                "--outputs",
                str(tmp_path / "o"),
                *extra,
            ]
        )
        return code, capsys.readouterr().err.strip()

    code, err = run(tmp_path / "missing")
    assert code == 1 and "Image folder not found" in err and "\n" not in err

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(fountain_dir / "images" / "0000.jpg", one)
    code, err = run(one)
    assert code == 1 and "at least 2" in err and "\n" not in err

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    shutil.copy(fountain_dir / "images" / "0000.jpg", unrelated / "a.jpg")
    shutil.copy(sorted(sacre_coeur_dir.glob("*.jpg"))[0], unrelated / "b.jpg")
    code, err = run(unrelated, "--resize-max", "640")
    assert code == 1 and "do not overlap" in err

    with pytest.raises(SystemExit):  # argparse: unknown method
        cli.main(["reconstruct", "--images", ".", "--outputs", ".", "--method", "sift"])


def test_read_intrinsics(fountain_dir, tmp_path):
    K = pipeline.read_intrinsics(fountain_dir / "images" / "K.txt")
    assert K.shape == (3, 3) and K[2, 2] == 1
    one = tmp_path / "camera.txt"
    one.write_text("PINHOLE 3072 2048 2759.5 2764.2 1521.2 1007.3\n")
    camera = pipeline.read_intrinsics(one)
    assert camera["model"] == "PINHOLE" and camera["width"] == 3072
    per_image = tmp_path / "cameras.txt"
    per_image.write_text(
        "a.jpg SIMPLE_RADIAL 640 480 500 320 240 0.01\n"
        "b.jpg PINHOLE 800 600 700 700 400 300\n"
    )
    cameras = pipeline.read_intrinsics(per_image)
    assert sorted(cameras) == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(cameras["b.jpg"]["params"], [700, 700, 400, 300])
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg FISHEYE_PLUS 1 2 3\n")
    with pytest.raises(UserError, match="cannot read"):
        pipeline.read_intrinsics(bad)
    with pytest.raises(UserError, match="not found"):
        pipeline.read_intrinsics(tmp_path / "nope.txt")
