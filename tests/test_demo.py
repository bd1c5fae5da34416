"""The embedded main job ``xfeat-hloc demo``, end to end on a smaller scene."""

from __future__ import annotations

import pycolmap
import pytest

from xfeat_hloc import cli
from xfeat_hloc.pipelines import demo

# 8 views of 640x480 instead of 12 of 800x600: ~30 s of CPU instead of ~60.
ARGS = ["--num-images", "8", "--width", "640", "--height", "480", "--plots", "1"]


@pytest.mark.slow
def test_demo_end_to_end_and_rerun(tmp_path, capsys):
    outputs = tmp_path / "demo"
    code = cli.main(["demo", "--outputs", str(outputs), *ARGS])
    report = capsys.readouterr().out
    assert code == 0, report
    assert "registered       8 / 8 cameras" in report
    assert "PASSED" in report and "position error" in report
    assert (outputs / "report.txt").read_text().strip() == report.strip()

    model = pycolmap.Reconstruction(outputs / "sfm")
    assert model.num_reg_images() == 8 and model.num_points3D() > 1000
    assert pycolmap.Reconstruction(outputs / "gt_model").num_images() == 8
    html = outputs / "reconstruction.html"
    assert html.stat().st_size > 1_000_000 and "ground truth (8)" in html.read_text()
    assert (outputs / "plots" / "image_00-image_01.png").stat().st_size > 10_000

    # A rerun reuses the images, features and matches; impossible thresholds make
    # it fail with a report that says why.
    stamps = {
        p: p.stat().st_mtime_ns
        for p in [*outputs.glob("*.h5"), *(outputs / "images").iterdir()]
    }
    assert len(stamps) == 8 + 2
    result = demo.main(
        outputs,
        num_images=8,
        width=640,
        height=480,
        plots=0,
        view_3d=False,
        thresholds={"median_position_pct": 1e-9},
    )
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert result.num_registered == 8
    assert not result.passed
    assert "median position error" in result.failures[0]
    assert result.report.splitlines()[-1].startswith("FAILED: median position error")
    # Position errors are small against the scene (a few mm over ~5 m).
    assert result.errors["median_position"] < 0.005 * result.extent
    assert result.errors["max_rotation_deg"] < 2.0


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    code = cli.main(["demo", "--outputs", str(tmp_path), "--num-images", "2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "--num-images must be 3 or more" in err and "Traceback" not in err
    assert not (tmp_path / "images").exists()
