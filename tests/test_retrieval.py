"""Retrieval: NetVLAD (weights loader on a synthetic .mat of the real structure),
VLAD of XFeat features (``xfeat-global``), chunked retrieval pairs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.io import savemat

from xfeat_hloc import extract_features, pairs_from_retrieval, vlad_from_features
from xfeat_hloc.confs import get_conf
from xfeat_hloc.errors import UserError, WeightsNotFoundError
from xfeat_hloc.extractors.netvlad import (
    NETVLAD_LAYER,
    VGG16_LAYERS,
    WHITEN_LAYER,
    NetVLAD,
    load_netvlad_mat,
)
from xfeat_hloc.utils.h5_writer import H5Writer
from xfeat_hloc.utils.parsers import parse_retrieval


# ---------------------------------------------------------------- NetVLAD
def _cell(*items: object) -> np.ndarray:
    """A MATLAB cell array (object array) holding ``items`` as they are."""
    cell = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        cell[i] = item
    return cell


def write_synthetic_netvlad_mat(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A .mat with the structure of hloc's NetVLAD export (VGG16 layers 0-28,
    NetVLAD at 30, whitening at 33, averageImage HxWx3) but narrow layers."""
    rng = np.random.default_rng(seed)
    widths = iter([4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8])
    layers, raw = [], {"convs": []}
    cin = 3
    for kind in VGG16_LAYERS:
        if kind == "conv":
            cout = next(widths)
            w = rng.normal(0, 0.4, (3, 3, cin, cout))
            b = rng.normal(0, 0.1, cout)
            raw["convs"].append((w, b))
            layers.append({"type": "conv", "name": "conv", "weights": _cell(w, b)})
            cin = cout
        else:
            layers.append({"type": kind, "name": kind, "weights": np.zeros((0, 0))})
    while len(layers) < NETVLAD_LAYER:
        layers.append({"type": "relu", "name": "relu5_3", "weights": np.zeros((0, 0))})
    num_clusters, out_dim = 5, 16
    raw["assign"] = rng.normal(size=(cin, num_clusters))  # D x K
    raw["neg_centers"] = rng.normal(size=(cin, num_clusters))
    layers.append(
        {
            "type": "vlad",
            "name": "vlad",
            "weights": _cell(raw["assign"], raw["neg_centers"]),
        }
    )
    while len(layers) < WHITEN_LAYER:
        layers.append({"type": "norm", "name": "norm", "weights": np.zeros((0, 0))})
    raw["whiten_w"] = rng.normal(size=(1, 1, cin * num_clusters, out_dim))
    raw["whiten_b"] = rng.normal(size=out_dim)
    layers.append(
        {
            "type": "conv",
            "name": "WPCA",
            "weights": _cell(raw["whiten_w"], raw["whiten_b"]),
        }
    )
    raw["mean"] = np.array([123.7, 116.8, 103.9])
    average = np.ones((8, 8, 3)) * raw["mean"]
    savemat(
        str(path),
        {
            "net": {
                "layers": _cell(*layers),
                "meta": {"normalization": {"averageImage": average}},
            }
        },
    )
    return raw


@pytest.fixture(scope="module")
def netvlad_mat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("netvlad") / "VGG16-NetVLAD-Pitts30K.mat"
    return path, write_synthetic_netvlad_mat(path)


def _reference_netvlad(image: torch.Tensor, raw: dict) -> torch.Tensor:
    """NetVLAD written out from the raw MATLAB arrays, the long way round."""
    x = image.double() * 255.0 - torch.tensor(raw["mean"]).view(1, 3, 1, 1)
    convs = iter(raw["convs"])
    for kind in VGG16_LAYERS:
        if kind == "conv":
            w, b = next(convs)
            weight = torch.from_numpy(np.transpose(w, (3, 2, 0, 1)))  # OUT IN kh kw
            x = F.conv2d(x, weight, torch.from_numpy(b), padding=1)
        elif kind == "relu":
            x = x.clamp(min=0)
        else:
            x = F.max_pool2d(x, 2, 2)
    desc = F.normalize(x[0].flatten(1), dim=0).numpy()  # D x N
    centers = -raw["neg_centers"]  # D x K
    logits = raw["assign"].T @ desc  # K x N
    soft = np.exp(logits - logits.max(0))
    soft /= soft.sum(0)
    vlad = np.zeros_like(centers)
    for k in range(centers.shape[1]):
        for n in range(desc.shape[1]):
            vlad[:, k] += soft[k, n] * (desc[:, n] - centers[:, k])
    vlad /= np.linalg.norm(vlad, axis=0, keepdims=True)
    vlad = vlad.reshape(-1)  # D-major
    vlad /= np.linalg.norm(vlad)
    w = raw["whiten_w"].reshape(-1, raw["whiten_w"].shape[-1])
    out = vlad @ w + raw["whiten_b"]
    return torch.from_numpy(out / np.linalg.norm(out))


def test_netvlad_loads_the_mat_structure_and_matches_a_direct_computation(
    netvlad_mat: tuple[Path, dict],
) -> None:
    path, raw = netvlad_mat
    params = load_netvlad_mat(path)
    assert [w.shape[0] for w, _ in params["convs"]] == [4, 4, 6, 6, 8, 8] + [8] * 7
    assert params["assignment"].shape == (5, 8)
    assert params["whiten"][0].shape == (16, 40)
    np.testing.assert_allclose(params["mean"], raw["mean"], rtol=1e-6)

    model = NetVLAD({"name": "netvlad", "weights_path": str(path)}).eval()
    image = torch.rand(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        desc = model({"image": image})["global_descriptor"]
    assert desc.shape == (1, 16)
    assert float(desc.norm()) == pytest.approx(1.0, abs=1e-5)
    expected = _reference_netvlad(image, raw)
    np.testing.assert_allclose(desc[0].double().numpy(), expected.numpy(), atol=1e-4)


def test_netvlad_found_where_hloc_keeps_it(
    netvlad_mat: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = netvlad_mat
    monkeypatch.delenv("XFEAT_HLOC_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as error:
        NetVLAD({"name": "netvlad"})
    message = str(error.value)
    hloc_place = tmp_path / "hub" / "netvlad" / "VGG16-NetVLAD-Pitts30K.mat"
    assert str(hloc_place) in message
    assert "https://cvg-data.inf.ethz.ch/hloc/netvlad/Pitts30K_struct.mat" in message
    assert "xfeat-global" in message
    hloc_place.parent.mkdir(parents=True)
    hloc_place.symlink_to(path)
    model = NetVLAD({"name": "netvlad"})
    assert model.whiten is not None


def test_netvlad_rejects_another_mat(tmp_path: Path) -> None:
    savemat(str(tmp_path / "x.mat"), {"net": {"layers": _cell({"weights": 1.0})}})
    with pytest.raises(WeightsNotFoundError, match="layers"):
        load_netvlad_mat(tmp_path / "x.mat")
    (tmp_path / "y.mat").write_bytes(b"not a mat file")
    with pytest.raises(WeightsNotFoundError, match="not a NetVLAD MATLAB weights"):
        load_netvlad_mat(tmp_path / "y.mat")


def test_netvlad_through_extract_features(
    netvlad_mat: tuple[Path, dict], sacre_coeur_dir: Path, tmp_path: Path
) -> None:
    path, _ = netvlad_mat
    conf = get_conf("netvlad", "extractor")
    conf["model"]["weights_path"] = str(path)
    conf["preprocessing"]["resize_max"] = 96
    names = sorted(p.name for p in sacre_coeur_dir.glob("*.jpg"))[:3]
    out = extract_features.main(
        conf, sacre_coeur_dir, tmp_path, image_list=names, device="cpu"
    )
    with h5py.File(out, "r") as fd:
        for name in names:
            desc = fd[name]["global_descriptor"][()]
            assert desc.shape[-1] == 16
            assert np.linalg.norm(desc.astype(np.float32)) == pytest.approx(1, abs=1e-2)


# ------------------------------------------------------- retrieval pairs
def _write_global(path: Path, names: list[str], desc: np.ndarray) -> Path:
    with H5Writer(path) as writer:
        for name, d in zip(names, desc, strict=True):
            writer.write(name, {"global_descriptor": d.astype(np.float32)})
    return path


def test_retrieval_pairs_chunked_equal_full_and_skip_self(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    names = [f"db/{i:03d}.jpg" for i in range(40)] + [
        f"query/q{i}.jpg" for i in range(7)
    ]
    desc = rng.normal(size=(len(names), 32))
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    h5 = _write_global(tmp_path / "global.h5", names, desc)
    full = pairs_from_retrieval.main(
        h5,
        tmp_path / "full.txt",
        5,
        query_prefix="query",
        db_prefix="db",
        chunk_size=1000,
    )
    chunked = pairs_from_retrieval.main(
        h5,
        tmp_path / "chunk.txt",
        5,
        query_prefix="query",
        db_prefix="db",
        chunk_size=2,
    )
    assert full.read_text() == chunked.read_text()
    retrieved = parse_retrieval(full)
    queries = [n for n in names if n.startswith("query")]
    for i, query in enumerate(queries):
        scores = desc[:40] @ desc[40 + i]
        order = [names[j] for j in np.argsort(-scores) if scores[j] >= 0][:5]
        assert retrieved.get(query, []) == order  # best first, min_score 0
    # all against all: an image never retrieves itself
    pairs_from_retrieval.main(h5, tmp_path / "all.txt", 3, min_score=None)
    assert all(
        q != r for q, rs in parse_retrieval(tmp_path / "all.txt").items() for r in rs
    )


def test_retrieval_pairs_name_missing_descriptors(tmp_path: Path) -> None:
    h5 = _write_global(tmp_path / "g.h5", ["db/a.jpg", "query/b.jpg"], np.eye(2))
    with pytest.raises(UserError, match=r"1 database images have no global descriptor"):
        pairs_from_retrieval.main(
            h5,
            tmp_path / "p.txt",
            1,
            query_prefix="query",
            db_list=["db/a.jpg", "db/z.jpg"],
        )


# ---------------------------------------------------------- xfeat-global
def test_vlad_is_a_normalised_order_free_function_of_the_descriptors() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(8, 64, generator=gen), dim=1)
    desc = torch.randn(500, 64, generator=gen)
    v = vlad_from_features.vlad(desc, centers)
    assert v.shape == (8 * 64,)
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-5)
    perm = torch.randperm(500, generator=gen)
    torch.testing.assert_close(vlad_from_features.vlad(desc[perm], centers), v)
    other = vlad_from_features.vlad(torch.randn(500, 64, generator=gen), centers)
    assert float(v @ other) < float(v @ v) - 0.1


@pytest.mark.slow
def test_xfeat_global_retrieves_overlapping_images(mini_aachen, tmp_path: Path) -> None:
    """On the miniature Aachen, each query's top-1 database image is one of the 3
    database images whose ground-truth viewing directions are closest to the
    query's (random ranking passes this for all 3 queries with p = 5 %)."""
    images = mini_aachen.root / "images_upright"
    db, queries = mini_aachen.db_names, list(mini_aachen.queries)
    features = extract_features.main(
        get_conf("xfeat_r1024", "extractor"),
        images,
        tmp_path,
        image_list=db + queries,
        device="cpu",
    )
    global_h5 = vlad_from_features.main(
        features, tmp_path / "vlad.h5", codebook_names=db, image_names=db + queries
    )
    pairs = pairs_from_retrieval.main(
        global_h5, tmp_path / "pairs.txt", 3, query_list=queries, db_list=db
    )
    retrieved = parse_retrieval(pairs)

    import pycolmap

    model = pycolmap.Reconstruction(mini_aachen.root / "3D-models" / "aachen_v_1_1")
    db_dirs = {im.name: im.viewing_direction() for im in model.images.values()}
    for query, pose in mini_aachen.queries.items():
        q_dir = pose.rotation.inverse() * np.array([0.0, 0.0, 1.0])
        nearest = sorted(db_dirs, key=lambda n: -float(db_dirs[n] @ q_dir))[:3]
        assert len(retrieved[query]) == 3
        assert retrieved[query][0] in nearest, (query, retrieved[query], nearest)
    # a rerun reuses the codebook and the descriptors
    stamp = vlad_from_features.codebook_path(global_h5).stat().st_mtime_ns
    vlad_from_features.main(features, global_h5, codebook_names=db)
    assert vlad_from_features.codebook_path(global_h5).stat().st_mtime_ns == stamp
