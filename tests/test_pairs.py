"""Pairs files: exhaustive, sequential (window, loop closures), covisibility."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from xfeat_hloc import (
    pairs_from_covisibility,
    pairs_from_exhaustive,
    pairs_from_sequential,
)
from xfeat_hloc.cli import main as cli_main
from xfeat_hloc.errors import UserError
from xfeat_hloc.utils.parsers import parse_pairs

NAMES = [f"seq/frame{i}.jpg" for i in range(12)]


def test_exhaustive(tmp_path: Path) -> None:
    names = ["a.jpg", "sub/b.jpg", "c.png", "d.jpg"]
    path = pairs_from_exhaustive.main(tmp_path / "p.txt", image_list=names)
    pairs = parse_pairs(path)
    assert len(pairs) == 6 and len({frozenset(p) for p in pairs}) == 6
    assert all(names.index(a) < names.index(b) for a, b in pairs)

    list_file = tmp_path / "queries.txt"
    list_file.write_text("q1.jpg\n# a comment\nq2.jpg\n")
    path = pairs_from_exhaustive.main(
        tmp_path / "qr.txt", image_list=list_file, ref_list=names
    )
    assert parse_pairs(path) == [(q, r) for q in ("q1.jpg", "q2.jpg") for r in names]

    features = tmp_path / "f.h5"
    with h5py.File(features, "w") as fd:
        for name in names[:3]:
            fd.create_dataset(f"{name}/keypoints", data=np.zeros((1, 2), np.float32))
    path = pairs_from_exhaustive.main(tmp_path / "f.txt", features=features)
    assert len(parse_pairs(path)) == 3
    with pytest.raises(UserError, match="list of images or a features file"):
        pairs_from_exhaustive.main(tmp_path / "x.txt")


def test_sequential_window_and_order(tmp_path: Path) -> None:
    shuffled = list(np.random.default_rng(0).permutation(NAMES))
    path = pairs_from_sequential.main(tmp_path / "s.txt", shuffled, window_size=2)
    pairs = parse_pairs(path)
    index = {n: i for i, n in enumerate(NAMES)}  # natural order: frame2 < frame10
    offsets = Counter(index[b] - index[a] for a, b in pairs)
    assert offsets == {1: 11, 2: 10}


def test_sequential_loop_closures(tmp_path: Path) -> None:
    path = pairs_from_sequential.main(
        tmp_path / "q.txt", NAMES, window_size=1, quadratic_overlap=True
    )
    assert len(parse_pairs(path)) == 11  # 2^0 = 1: nothing more
    path = pairs_from_sequential.main(
        tmp_path / "q.txt", NAMES, window_size=4, quadratic_overlap=True
    )
    index = {n: i for i, n in enumerate(NAMES)}
    offsets = {index[b] - index[a] for a, b in parse_pairs(path)}
    assert offsets == {1, 2, 3, 4, 8}

    path = pairs_from_sequential.main(
        tmp_path / "k.txt", NAMES, window_size=1, loop_stride=4
    )
    pairs = {(index[a], index[b]) for a, b in parse_pairs(path)}
    assert {(0, 8), (4, 8), (0, 4)} <= pairs and len(pairs) == 11 + 3


def test_sequential_retrieval(tmp_path: Path) -> None:
    """Global descriptors: the last frame revisits the first place."""
    rng = np.random.default_rng(1)
    desc = rng.normal(size=(len(NAMES), 32)).astype(np.float32)
    desc[-1] = desc[0] + 0.01 * rng.normal(size=32)
    path = tmp_path / "global.h5"
    with h5py.File(path, "w") as fd:
        for name, d in zip(NAMES, desc, strict=True):
            fd.create_dataset(f"{name}/global_descriptor", data=d)
    out = pairs_from_sequential.main(
        tmp_path / "r.txt", NAMES, window_size=2, global_features=path, num_loop=1
    )
    pairs = parse_pairs(out)
    assert (NAMES[0], NAMES[-1]) in pairs
    index = {n: i for i, n in enumerate(NAMES)}
    assert all(index[a] < index[b] for a, b in pairs)
    with pytest.raises(UserError, match="have no global_descriptor"):
        pairs_from_sequential.main(
            tmp_path / "r.txt", [*NAMES, "other.jpg"], global_features=path
        )


def build_model(num_images: int = 6, seed: int = 0) -> pycolmap.Reconstruction:
    """A small COLMAP model with random tracks (real pycolmap objects)."""
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(
        model="SIMPLE_PINHOLE", width=640, height=480, params=[500, 320, 240]
    )
    camera.camera_id = 1
    rec.add_camera_with_trivial_rig(camera)
    num_kp = 80
    for i in range(1, num_images + 1):
        image = pycolmap.Image(
            name=f"dir/im{i}.jpg",
            keypoints=rng.uniform(0, 400, (num_kp, 2)),
            camera_id=1,
            image_id=i,
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    free = {i: list(range(num_kp)) for i in range(1, num_images + 1)}
    for _ in range(60):
        ids = rng.choice(np.arange(1, num_images + 1), rng.integers(2, 5), False)
        track = [pycolmap.TrackElement(int(i), free[int(i)].pop()) for i in ids]
        rec.add_point3D(rng.normal(size=3), pycolmap.Track(track))
    return rec


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_covisibility(tmp_path: Path, fmt: str) -> None:
    rec = build_model()
    model = tmp_path / "model"
    model.mkdir()
    getattr(rec, f"write_{fmt}")(str(model))
    out = pairs_from_covisibility.main(model, tmp_path / "covis.txt", num_matched=3)
    pairs = parse_pairs(out)

    # count shared points the other way: over the tracks of the 3D points
    shared: Counter[tuple[str, str]] = Counter()
    for point in rec.points3D.values():
        ids = {e.image_id for e in point.track.elements}
        for i in ids:
            for j in ids - {i}:
                shared[rec.images[i].name, rec.images[j].name] += 1
    names = sorted(im.name for im in rec.images.values())
    assert len(pairs) == 3 * len(names)
    for name in names:
        got = [b for a, b in pairs if a == name]
        counts = sorted((c for (a, _), c in shared.items() if a == name), reverse=True)
        assert [shared[name, b] for b in got] == counts[:3]


def test_covisibility_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="No COLMAP model in"):
        pairs_from_covisibility.main(tmp_path, tmp_path / "p.txt", 5)
    with pytest.raises(UserError, match="num_matched"):
        pairs_from_covisibility.main(tmp_path, tmp_path / "p.txt", 0)


def test_cli_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image_dir = tmp_path / "images"
    (image_dir / "nested").mkdir(parents=True)
    for name in ("b.jpg", "nested/a.png", "ignored.txt"):
        (image_dir / name).write_bytes(b"")
    out = tmp_path / "pairs.txt"
    args = ["pairs", "--image_dir", str(image_dir), "--output", str(out)]
    assert cli_main(args) == 0
    assert capsys.readouterr().out.startswith("wrote 1 exhaustive pairs -> ")
    assert parse_pairs(out) == [("b.jpg", "nested/a.png")]

    rec = build_model()
    model = tmp_path / "model"
    model.mkdir()
    rec.write_binary(str(model))
    args = ["pairs", "--method", "covisibility", "--model", str(model)]
    assert cli_main([*args, "--num_matched", "2", "--output", str(out)]) == 0
    assert "wrote 12 covisibility pairs" in capsys.readouterr().out

    assert cli_main(["pairs", "--method", "sequential", "--output", str(out)]) == 1
    assert "needs --image_dir, --image_list or --features" in capsys.readouterr().err
