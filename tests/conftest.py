"""Shared fixtures. Data tests read ``../shared/data`` and skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("XFEAT_HLOC_TEST_DATA", ROOT.parent / "shared" / "data")
).resolve()


def _data_dir(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"test data {path} is absent: these tests need the shared data folder "
            "../shared/data beside the repository (or $XFEAT_HLOC_TEST_DATA)."
        )
    return path


@pytest.fixture(scope="session")
def sacre_coeur_dir() -> Path:
    """10 photos of the Sacre Coeur (hloc's demo set), no ground truth."""
    return _data_dir("sacre_coeur", "mapping")


@pytest.fixture(scope="session")
def fountain_dir() -> Path:
    """Strecha fountain-P11: ``images/`` (3072x2048) and ``gt_dense_cameras/``."""
    return _data_dir("strecha", "fountain-P11")


@pytest.fixture(scope="session")
def kornia_data_dir() -> Path:
    """kornia's test pairs (LoFTR reference matches, knchurch)."""
    return _data_dir("kornia")


@pytest.fixture(scope="session")
def mini_aachen(fountain_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A miniature Aachen v1.1 built from fountain-P11 once per session (8 database
    images with a SIFT reference model, 2 day + 1 night queries with ground truth;
    see ``xfeat_hloc/evaluation/mini_aachen.py``). Read-only for tests."""
    from xfeat_hloc.evaluation.mini_aachen import build_mini_aachen

    root = tmp_path_factory.mktemp("mini_aachen") / "aachen_v1.1"
    return build_mini_aachen(fountain_dir, root)


@pytest.fixture(scope="session")
def fountain_xfeat(fountain_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """XFeat features (long side 1600) and mutual-NN matches of every pair of
    fountain-P11, in hloc's files, computed once per session. Read-only for tests:
    ``{"images", "names", "features", "pairs", "matches"}``."""
    from xfeat_hloc import extract_features, match_features, pairs_from_exhaustive
    from xfeat_hloc.confs import get_conf

    out = tmp_path_factory.mktemp("fountain_xfeat")
    images = fountain_dir / "images"
    names = sorted(p.name for p in images.glob("*.jpg"))
    features = extract_features.main(
        get_conf("xfeat", "extractor"),
        images,
        feature_path=out / "features.h5",
        image_list=names,
    )
    pairs = pairs_from_exhaustive.main(out / "pairs.txt", image_list=names)
    matches = match_features.main(
        get_conf("xfeat+mnn", "matcher"), pairs, features, matches=out / "matches.h5"
    )
    return {
        "images": images,
        "names": names,
        "features": features,
        "pairs": pairs,
        "matches": matches,
    }
