"""Aachen day-night pipelines on the miniature Aachen built from fountain-P11:
layout errors, results validation, full runs (v1.1 and v1.0, sparse and dense),
a reference model without 3D points, resume after a kill, LoFTR plumbing."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from xfeat_hloc.cli import main as cli_main
from xfeat_hloc.errors import DatasetLayoutError
from xfeat_hloc.evaluation import mini_aachen as mini
from xfeat_hloc.pipelines import aachen
from xfeat_hloc.results_file import validate_results, write_results

MAX_POSITION_ERROR = 0.25  # metres
MAX_ROTATION_ERROR = 2.0  # degrees


# ----------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def mini_v10(mini_aachen, tmp_path_factory: pytest.TempPathFactory):
    """The v1.0 layout (NVM + intrinsics + aachen.db) of the miniature."""
    root = tmp_path_factory.mktemp("mini_v10") / "aachen"
    return mini.mini_aachen_v1_0(mini_aachen, root)


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, copy_function=os.link)
    return target


@pytest.fixture()
def log_lines() -> Iterator[list[str]]:
    """Messages of the package logger during a test."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    logger = logging.getLogger("xfeat_hloc")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _errors(results: Path, gt: dict[str, pycolmap.Rigid3d]) -> dict[str, tuple]:
    from xfeat_hloc.evaluation.poses import evaluate_localization

    errors = evaluate_localization(results, gt)
    assert len(errors) == len(gt), (errors, list(gt))
    return errors


def _assert_accurate(result: aachen.AachenResult, dataset) -> None:
    assert result.num_localized == result.num_queries == len(dataset.queries)
    assert result.failed == []
    report = validate_results(result.results, list(dataset.queries))
    assert report.ok, report.summary()
    for name, (dt, dr) in _errors(result.results, dataset.queries).items():
        print(f"{result.results.name} {name}: {dt * 1000:.1f} mm, {dr:.3f} deg")
        assert dt < MAX_POSITION_ERROR and dr < MAX_ROTATION_ERROR, (name, dt, dr)


# ------------------------------------------------------------------ layout
def test_missing_3d_models_is_one_clear_message(mini_aachen, tmp_path, capsys) -> None:
    root = _copy(mini_aachen.root, tmp_path / "aachen_v1.1")
    shutil.rmtree(root / "3D-models")
    outputs = tmp_path / "outputs"
    code = cli_main(["aachen", "--dataset", str(root), "--outputs", str(outputs)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert err.startswith("xfeat-hloc aachen: error: ")
    assert "3D-models/aachen_v_1_1" in err and "aachen_v1_1.zip" in err
    assert "Expected layout" in err and aachen.DATA_URL in err
    assert "datasets/README.md" in err
    assert not outputs.exists()  # no work started


def test_netvlad_without_weights_fails_before_any_work(
    mini_aachen, tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("XFEAT_HLOC_WEIGHTS_DIR", raising=False)
    outputs = tmp_path / "outputs"
    argv = ["aachen", "--dataset", str(mini_aachen.root), "--outputs", str(outputs)]
    assert cli_main([*argv, "--retrieval", "netvlad"]) == 1
    err = capsys.readouterr().err
    assert "VGG16-NetVLAD-Pitts30K.mat" in err and "hub/netvlad" in err
    assert "Traceback" not in err
    assert not outputs.exists()


def test_missing_query_lists_and_model_listed_together(mini_aachen, tmp_path) -> None:
    root = _copy(mini_aachen.root, tmp_path / "aachen_v1.1")
    shutil.rmtree(root / "queries")
    shutil.rmtree(root / "3D-models")
    with pytest.raises(DatasetLayoutError) as error:
        aachen.check_layout(root, "1.1")
    message = str(error.value)
    assert "queries/*_time_queries_with_intrinsics.txt" in message
    assert "3D-models/aachen_v_1_1" in message
    assert message.count("\n  - ") == 2


def test_images_missing_from_the_image_folder(mini_aachen, tmp_path) -> None:
    root = _copy(mini_aachen.root, tmp_path / "aachen_v1.1")
    (root / "images_upright" / "db" / "0003.jpg").unlink()
    (root / "images_upright" / "query" / "night" / "nexus5x" / "0005.jpg").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        aachen.check_layout(root, "1.1")
    message = str(error.value)
    assert "1 of the 8 images of the reference model are missing" in message
    assert "db/0003.jpg" in message
    assert "1 query images of the query lists are missing" in message
    assert "query/night/nexus5x/0005.jpg" in message


def test_v1_0_layout(mini_v10, tmp_path) -> None:
    layout = aachen.check_layout(mini_v10.root, "1.0")
    assert layout.nvm.name == "aachen_cvpr2018_db.nvm"
    assert sorted(layout.queries) == sorted(mini_v10.queries)
    root = _copy(mini_v10.root, tmp_path / "aachen")
    (root / "aachen.db").unlink()
    (root / "3D-models" / "database_intrinsics.txt").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        aachen.check_layout(root, "1.0")
    message = str(error.value)
    assert "missing aachen.db" in message
    assert "missing 3D-models/database_intrinsics.txt" in message
    assert "aachen_cvpr2018_db.nvm" in message  # in the expected layout
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        aachen.check_layout(tmp_path / "nowhere", "1.0")


def test_model_image_names_reads_binary_and_text(mini_aachen, tmp_path) -> None:
    model = mini_aachen.root / "3D-models" / "aachen_v_1_1"
    names = aachen.model_image_names(model)
    assert sorted(names) == mini_aachen.db_names
    rec = pycolmap.Reconstruction(model)
    (tmp_path / "txt").mkdir()
    rec.write_text(str(tmp_path / "txt"))
    assert sorted(aachen.model_image_names(tmp_path / "txt")) == mini_aachen.db_names


# ----------------------------------------------------------------- results
def _poses(n: int) -> dict[str, pycolmap.Rigid3d]:
    rng = np.random.default_rng(0)
    poses = {}
    for i in range(n):
        q = rng.normal(size=4)
        rotation = pycolmap.Rotation3d(q / np.linalg.norm(q))
        poses[f"query/day/cam/{i}.jpg"] = pycolmap.Rigid3d(rotation, rng.normal(size=3))
    return poses


def test_results_file_format_and_validator(tmp_path) -> None:
    poses = _poses(4)
    queries = list(poses)
    path = write_results(poses, tmp_path / "r.txt")
    lines = path.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert all(len(line.split()) == 8 for line in lines)
    assert validate_results(path, queries).ok
    # world-to-camera, scalar first
    qw, qx, qy, qz, *t = (float(v) for v in lines[0].split()[1:])
    rigid = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([qx, qy, qz, qw])), t)
    np.testing.assert_allclose(rigid.matrix(), poses[queries[0]].matrix(), atol=1e-12)

    bad = tmp_path / "bad.txt"
    bad.write_text(
        lines[0]
        + "\n"
        + lines[0]
        + "\n"  # duplicate
        + "9.jpg 1 0 0 0 0 0 0\n"  # unknown
        + "2.jpg 0.5 0 0 0 0 0 0\n"  # not a unit quaternion
        + "3.jpg 1 0 0 0 nan 0 0\n"  # not finite
        + "1.jpg 1 0 0 0 0 0\n"  # 7 fields
    )
    report = validate_results(bad, queries)
    assert not report.ok
    assert report.duplicates == ["0.jpg"]
    assert report.unknown == ["9.jpg"]
    assert report.missing == ["1.jpg"]
    assert len(report.malformed) == 3
    summary = report.summary()
    assert "INVALID" in summary and "quaternion norm 0.5" in summary
    assert "not finite" in summary and "7 fields" in summary


def test_validate_results_cli(mini_aachen, tmp_path, capsys) -> None:
    queries = list(mini_aachen.queries)
    good = write_results(mini_aachen.queries, tmp_path / "good.txt")
    code = cli_main(["validate-results", str(good), "--dataset", str(mini_aachen.root)])
    assert code == 0
    assert "valid." in capsys.readouterr().out
    partial = write_results(
        {queries[0]: mini_aachen.queries[queries[0]]}, tmp_path / "p.txt"
    )
    code = cli_main(
        ["validate-results", str(partial), "--dataset", str(mini_aachen.root)]
    )
    out = capsys.readouterr().out
    assert code == 1 and "2 missing queries" in out


def test_results_names() -> None:
    tag = aachen.retrieval_tag("netvlad", 50)
    assert aachen.results_filename("1.1", "xfeat+mnn", tag) == (
        "Aachen-v1.1_hloc_xfeat+mnn_netvlad50.txt"
    )
    tag = aachen.retrieval_tag("netvlad", 50, Path("pairs-query-netvlad30.txt"))
    assert aachen.results_filename("1.0", "xfeat_star", tag) == (
        "Aachen_hloc_xfeat_star_netvlad30.txt"
    )


# --------------------------------------------------------------- pipelines
@pytest.mark.slow
@pytest.mark.parametrize("method", ["xfeat+mnn", "xfeat_star"])
def test_v1_1_pipeline_localizes_every_query(mini_aachen, tmp_path, method) -> None:
    result = aachen.run(
        mini_aachen.root,
        tmp_path / "outputs",
        version="1.1",
        method=method,
        num_covis=3 if method == "xfeat_star" else 20,
        num_loc=3,
        retrieval="xfeat-global",
        device="cpu",
    )
    assert result.results.name == f"Aachen-v1.1_hloc_{method}_xfeat-global3.txt"
    _assert_accurate(result, mini_aachen)


@pytest.mark.slow
def test_v1_0_pipeline_dense(mini_v10, tmp_path) -> None:
    result = aachen.run(
        mini_v10.root,
        tmp_path / "outputs",
        version="1.0",
        method="xfeat_star",
        num_covis=3,
        num_loc=2,
        resize_max=768,  # XFeat* is the slow one on CPU
        device="cpu",
    )
    assert result.results.name == "Aachen_hloc_xfeat_star-r768_xfeat-global2.txt"
    _assert_accurate(result, mini_v10)


@pytest.mark.slow
def test_v1_0_pipeline_resumes_after_kill(
    mini_v10, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kill the CLI once the features are written; a rerun finishes the job
    without extracting again, and localizes every query. Retrieval: NetVLAD with
    weights (synthetic, same structure as hloc's) where hloc keeps them; all 8
    database images are retrieved, so the untrained network does not matter."""
    from test_retrieval import write_synthetic_netvlad_mat

    torch_home = tmp_path / "torch"
    (torch_home / "hub" / "netvlad").mkdir(parents=True)
    write_synthetic_netvlad_mat(
        torch_home / "hub" / "netvlad" / "VGG16-NetVLAD-Pitts30K.mat"
    )
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    outputs = tmp_path / "outputs"
    argv = [
        "aachen", "--version", "1.0", "--dataset", str(mini_v10.root),
        "--outputs", str(outputs), "--method", "xfeat+mnn", "--num-loc", "8",
        "--retrieval", "netvlad", "--device", "cpu",
    ]  # fmt: skip
    features = outputs / "feats-xfeat-n4096-r1600.h5"
    process = subprocess.Popen(
        [sys.executable, "-m", "xfeat_hloc", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not features.exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no features after 300 s"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert features.exists()
    stamp = features.stat().st_mtime_ns
    assert cli_main(argv) == 0
    assert features.stat().st_mtime_ns == stamp  # nothing extracted again
    results = outputs / "Aachen_hloc_xfeat+mnn_netvlad8.txt"
    assert validate_results(results, list(mini_v10.queries)).ok
    assert (outputs / "global-feats-netvlad.h5").is_file()
    for name, (dt, dr) in _errors(results, mini_v10.queries).items():
        print(f"{results.name} {name}: {dt * 1000:.1f} mm, {dr:.3f} deg")
        assert dt < MAX_POSITION_ERROR and dr < MAX_ROTATION_ERROR, (name, dt, dr)
    # a third run does no work at all
    assert cli_main(argv) == 0
    assert features.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_reference_model_without_points(mini_aachen, tmp_path, log_lines) -> None:
    """Database pairs come from the poses; the query pairs from a given file
    (with lines for other images, which are dropped)."""
    dataset = mini.without_points(mini_aachen, tmp_path / "no_points")
    model = pycolmap.Reconstruction(dataset.root / "3D-models" / "aachen_v_1_1")
    assert model.num_points3D() == 0 and model.num_reg_images() == 8
    given = tmp_path / "pairs-query-given2.txt"
    near = {
        "0002": ("0001", "0003"),
        "0005": ("0004", "0006"),
        "0008": ("0007", "0009"),
    }
    lines = [f"{q} db/{n}.jpg" for q in dataset.queries for n in near[Path(q).stem]]
    lines += ["query/day/other/x.jpg db/0001.jpg", f"{lines[0].split()[0]} db/9.jpg"]
    given.write_text("\n".join(lines) + "\n")
    result = aachen.run(
        dataset.root, tmp_path / "outputs", version="1.1", method="xfeat+mnn",
        num_covis=4, retrieval_pairs=given, device="cpu",
    )  # fmt: skip
    assert any(
        "has no 3D points" in line and "camera poses" in line for line in log_lines
    )
    assert any("1 queries that are not in the query lists" in ln for ln in log_lines)
    assert any("1 images that are not in the reference model" in ln for ln in log_lines)
    assert result.results.name == "Aachen-v1.1_hloc_xfeat+mnn_given2.txt"
    pairs = [
        line.split()
        for line in (tmp_path / "outputs" / "pairs-db-covis4.txt")
        .read_text()
        .splitlines()
    ]
    assert {a for a, _ in pairs} == set(dataset.db_names)  # every image paired
    assert 8 * 3 <= len(pairs) <= 8 * 4
    _assert_accurate(result, dataset)


def test_given_pairs_for_another_dataset(mini_aachen, tmp_path) -> None:
    (tmp_path / "p.txt").write_text("query/night/a.jpg db/1.jpg\n")
    with pytest.raises(DatasetLayoutError, match="has no pair of a query"):
        aachen.filter_pairs_file(
            tmp_path / "p.txt",
            tmp_path / "out.txt",
            list(mini_aachen.queries),
            set(mini_aachen.db_names),
        )


@pytest.mark.slow
def test_loftr_random_weights_runs_the_whole_pipeline(mini_aachen, tmp_path) -> None:
    """Plumbing only: random LoFTR weights give a complete, valid results file."""
    outputs = tmp_path / "outputs"
    result = aachen.run(
        mini_aachen.root,
        outputs,
        version="1.1",
        method="loftr_outdoor",
        num_covis=1,
        num_loc=1,
        resize_max=160,  # LoFTR is slow on CPU; plumbing needs no detail
        model_options={"weights": "random", "match_threshold": 0.0},
        allow_empty=True,  # random weights: nothing triangulates or localizes
        device="cpu",
    )
    variant = aachen.method_variant(
        "loftr_outdoor", 160, None, {"weights": "random", "match_threshold": 0.0}
    )
    assert variant.startswith("loftr_outdoor-r160-m")  # settings in the names
    assert result.results.name == f"Aachen-v1.1_hloc_{variant}_xfeat-global1.txt"
    assert result.num_queries == 3
    # every step ran and left its artefact
    conf_output = "matches-" + variant
    for name in (
        "pairs-db-covis1.txt",
        f"feats_{conf_output}.h5",
        f"{conf_output}_pairs-db-covis1.h5",
        "pairs-query-xfeat-global1.txt",
        f"feats-query_{conf_output}.h5",
        f"{conf_output}_pairs-query-xfeat-global1.h5",
    ):
        assert (outputs / name).is_file(), name
    assert (result.reference_sfm / "TRIANGULATED").is_file()
    report = validate_results(result.results, list(mini_aachen.queries))
    assert report.ok, report.summary()  # complete: failed queries get a pose
    assert len(result.failed) == result.num_queries - result.num_localized


@pytest.mark.parametrize("script", ["aachen.py", "aachen_v1_1.py"])
def test_pipeline_scripts_default_to_hlocs_folders(script, tmp_path) -> None:
    """The scripts in pipelines/ run 'xfeat-hloc aachen' with their version's
    default dataset folder: in an empty folder, the layout error names it."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(repo / "pipelines" / script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    folder = "aachen" if script == "aachen.py" else "aachen_v1.1"
    assert result.returncode != 0
    assert f"datasets/{folder}" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not any(
        (tmp_path / "outputs").rglob("*.h5")
    )
