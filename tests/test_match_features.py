"""match_features: hloc's matches.h5 format, unique pairs, idempotence, paths."""

from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from xfeat_hloc import extract_features, match_features
from xfeat_hloc.cli import main as cli_main
from xfeat_hloc.errors import UserError
from xfeat_hloc.matchers.mnn import MNN
from xfeat_hloc.utils.io import get_matches, list_h5_names
from xfeat_hloc.utils.parsers import names_to_pair, write_pairs

CONF = match_features.confs["xfeat+mnn"]


@pytest.fixture(scope="module")
def export_dir(sacre_coeur_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real XFeat features of 4 sacre_coeur images (512 px, 1024 keypoints)."""
    conf = copy.deepcopy(extract_features.confs["xfeat"])
    conf["preprocessing"]["resize_max"] = 512
    conf["model"]["max_keypoints"] = 1024
    conf["output"] = "feats"
    export_dir = tmp_path_factory.mktemp("match")
    names = sorted(p.name for p in sacre_coeur_dir.glob("*.jpg"))[:4]
    extract_features.main(conf, sacre_coeur_dir, export_dir, image_list=names)
    return export_dir


@pytest.fixture(scope="module")
def names(export_dir: Path) -> list[str]:
    return list_h5_names(export_dir / "feats.h5")


def _read(path: Path, pair: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as fd:
        return fd[pair]["matches0"][()], fd[pair]["matching_scores0"][()]


def test_format_and_same_as_matcher(export_dir: Path, names: list[str]) -> None:
    pairs = write_pairs(export_dir / "pairs-ab.txt", [(names[0], names[1])])
    path = match_features.main(CONF, pairs, "feats", export_dir)
    assert path == export_dir / "feats_matches-xfeat-mnn_pairs-ab.h5"
    matches0, scores0 = _read(path, names_to_pair(names[0], names[1]))
    assert matches0.dtype == np.int32 and scores0.dtype == np.float16
    with h5py.File(export_dir / "feats.h5", "r") as fd:
        d0 = fd[names[0]]["descriptors"][()].astype(np.float32)
        d1 = fd[names[1]]["descriptors"][()].astype(np.float32)
    assert matches0.shape == (d0.shape[1],)
    valid = matches0 > -1
    assert valid.sum() > 50 and matches0.max() < d1.shape[1]
    assert len(np.unique(matches0[valid])) == valid.sum()  # one-to-one
    with torch.inference_mode():
        ref = MNN(CONF["model"])(
            {
                "descriptors0": torch.from_numpy(d0)[None],
                "descriptors1": torch.from_numpy(d1)[None],
            }
        )
    np.testing.assert_array_equal(matches0, ref["matches0"][0].numpy())
    np.testing.assert_allclose(scores0, ref["matching_scores0"][0].numpy(), atol=1e-3)


def test_unique_pairs_rerun_and_new_pairs(export_dir: Path, names: list[str]) -> None:
    a, b, c = names[:3]
    pairs = write_pairs(
        export_dir / "pairs-dup.txt", [(a, b), (b, a), (a, b), (a, a), (c, a)]
    )
    matches = export_dir / "dup.h5"
    summary = match_features.match(CONF, pairs, matches, export_dir / "feats.h5")
    assert (summary.matched, summary.already_done) == (2, 0)
    assert sorted(list_h5_names(matches)) == sorted(
        [names_to_pair(a, b), names_to_pair(c, a)]
    )
    # either order reads the same matches, flipped
    ab, _ = get_matches(matches, a, b)
    ba, _ = get_matches(matches, b, a)
    np.testing.assert_array_equal(ab, ba[:, ::-1])

    mtime = matches.stat().st_mtime_ns
    summary = match_features.match(CONF, pairs, matches, export_dir / "feats.h5")
    assert (summary.matched, summary.already_done) == (0, 2)
    assert matches.stat().st_mtime_ns == mtime

    write_pairs(pairs, [(b, a), (b, c)])  # (b, a) is done as (a, b)
    summary = match_features.match(CONF, pairs, matches, export_dir / "feats.h5")
    assert (summary.matched, summary.already_done) == (1, 1)
    assert len(list_h5_names(matches)) == 3

    summary = match_features.match(
        CONF, pairs, matches, export_dir / "feats.h5", overwrite=True
    )
    assert (summary.matched, summary.already_done) == (2, 0)


def test_paths_rules(export_dir: Path, names: list[str]) -> None:
    pairs = write_pairs(export_dir / "pairs-paths.txt", [(names[0], names[2])])
    with pytest.raises(UserError, match="both features and matches as paths"):
        match_features.main(CONF, pairs, export_dir / "feats.h5")
    with pytest.raises(UserError, match="Provide an export_dir"):
        match_features.main(CONF, pairs, "feats")
    out = export_dir / "explicit.h5"
    path = match_features.main(CONF, pairs, export_dir / "feats.h5", matches=out)
    assert path == out and list_h5_names(out) == [names_to_pair(names[0], names[2])]
    out2 = export_dir / "from_paths.h5"
    feats = export_dir / "feats.h5"
    match_features.match_from_paths(CONF, pairs, out2, feats, feats)
    np.testing.assert_array_equal(
        get_matches(out, names[0], names[2])[0],
        get_matches(out2, names[0], names[2])[0],
    )


def test_features_ref(export_dir: Path, names: list[str]) -> None:
    """Queries in one file, references in another."""
    feats = export_dir / "feats.h5"
    query, ref = export_dir / "q.h5", export_dir / "r.h5"
    with h5py.File(feats, "r") as src:
        for path, subset in ((query, names[:1]), (ref, names[1:])):
            with h5py.File(path, "w") as dst:
                for name in subset:
                    src.copy(src[name], dst, name=name)
    pairs = write_pairs(export_dir / "pairs-qr.txt", [(names[0], names[1])])
    out = match_features.main(
        CONF, pairs, query, matches=export_dir / "qr.h5", features_ref=ref
    )
    expected = export_dir / "single.h5"
    match_features.match(CONF, pairs, expected, feats)
    np.testing.assert_array_equal(
        get_matches(out, names[0], names[1])[0],
        get_matches(expected, names[0], names[1])[0],
    )
    # a reference named as a query is not in the query file: a clear error
    bad = write_pairs(export_dir / "pairs-bad.txt", [(names[1], names[0])])
    with pytest.raises(UserError, match="named first in a pair have no features"):
        match_features.main(
            CONF, bad, query, matches=export_dir / "bad.h5", features_ref=ref
        )
    assert not (export_dir / "bad.h5").exists()


def test_cli_match(
    export_dir: Path, names: list[str], capsys: pytest.CaptureFixture
) -> None:
    pairs = write_pairs(export_dir / "pairs-cli.txt", [(names[1], names[2])])
    args = ["match", "--pairs", str(pairs), "--features", "feats"]
    args += ["--export_dir", str(export_dir), "--conf", "xfeat+mnn-0.82"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "matched 1 pairs (0 already done," in out
    path = export_dir / "feats_matches-xfeat-mnn-cos0.82_pairs-cli.h5"
    assert path.exists()
    _, scores = get_matches(path, names[1], names[2])
    assert (scores > 0.82 - 1e-3).all()
    assert cli_main(args) == 0
    assert "matched 0 pairs (1 already done" in capsys.readouterr().out
    # a features file without --matches: hloc's name, beside the features
    feats = str(export_dir / "feats.h5")
    assert cli_main(["match", "--pairs", str(pairs), "--features", feats]) == 0
    assert (export_dir / "feats_matches-xfeat-mnn_pairs-cli.h5").exists()


def test_old_pair_names_are_read_and_skipped(
    export_dir: Path, names: list[str]
) -> None:
    """hloc's old files name pairs ``a_b``: read in both orders, not rematched."""
    a, b = names[0], names[3]
    pairs = write_pairs(export_dir / "pairs-old.txt", [(a, b)])
    new = export_dir / "new-format.h5"
    match_features.match(CONF, pairs, new, export_dir / "feats.h5")
    old = export_dir / "old-format.h5"
    with h5py.File(new, "r") as src, h5py.File(old, "w") as dst:
        src.copy(src[names_to_pair(a, b)], dst, name=f"{a}_{b}")
    np.testing.assert_array_equal(get_matches(old, b, a)[0], get_matches(new, b, a)[0])
    write_pairs(pairs, [(b, a)])
    summary = match_features.match(CONF, pairs, old, export_dir / "feats.h5")
    assert (summary.matched, summary.already_done) == (0, 1)
