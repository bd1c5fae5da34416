"""reconstruction.main on real XFeat features: registration, accuracy vs GT,
COLMAP 4 model files, known intrinsics, skipped verification, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pycolmap
import pytest

from xfeat_hloc import reconstruction
from xfeat_hloc.errors import EmptyResultError, UserError
from xfeat_hloc.evaluation.poses import evaluate_reconstruction
from xfeat_hloc.evaluation.strecha import load_strecha_scene
from xfeat_hloc.utils.database import verified_pair_counts
from xfeat_hloc.utils.parsers import write_pairs

SUBSET = ["0003.jpg", "0004.jpg", "0005.jpg", "0006.jpg", "0007.jpg"]


@pytest.fixture(scope="module")
def fountain_model(fountain_xfeat, tmp_path_factory):
    """The default reconstruction of all 11 fountain images (run once)."""
    sfm_dir = tmp_path_factory.mktemp("fountain_sfm")
    data = fountain_xfeat
    rec = reconstruction.main(
        sfm_dir, data["images"], data["pairs"], data["features"], data["matches"]
    )
    return sfm_dir, rec


@pytest.fixture(scope="module")
def subset_pairs(fountain_xfeat, tmp_path_factory):
    """Pairs of 5 neighbouring fountain images (cheap mapping runs)."""
    path = tmp_path_factory.mktemp("subset") / "pairs.txt"
    return write_pairs(
        path, [(a, b) for i, a in enumerate(SUBSET) for b in SUBSET[i + 1 :]]
    )


@pytest.mark.slow
def test_fountain_all_registered_and_accurate(fountain_model, fountain_dir):
    sfm_dir, rec = fountain_model
    assert rec.num_reg_images() == 11
    # the COLMAP 4 model files, readable back
    for name in ("cameras", "images", "points3D", "frames", "rigs"):
        assert (sfm_dir / f"{name}.bin").exists(), name
    again = pycolmap.Reconstruction(str(sfm_dir))
    assert again.num_reg_images() == 11
    assert again.num_points3D() == rec.num_points3D() > 3000
    # the image names are those of the h5 files; keypoints were imported + 0.5
    assert {img.name for img in again.images.values()} == {
        f"{i:04d}.jpg" for i in range(11)
    }
    _, gt = load_strecha_scene(fountain_dir)
    summary = evaluate_reconstruction(rec, gt).summary()
    # measured: 2-5 mm median, < 0.2 deg; COLMAP SIFT: 3.4-6.4 mm
    assert summary["median_position"] < 0.01
    assert summary["median_rotation_no_offset_deg"] < 0.2
    assert rec.compute_mean_reprojection_error() < 1.5


@pytest.mark.slow
def test_rerun_rebuilds_the_database(fountain_model, fountain_xfeat):
    """A second run in the same folder starts from a fresh database (idempotent)."""
    sfm_dir, _ = fountain_model
    data = fountain_xfeat
    pairs = sfm_dir / "pairs-subset.txt"
    write_pairs(pairs, [(a, b) for i, a in enumerate(SUBSET) for b in SUBSET[i + 1 :]])
    copy = sfm_dir.parent / "rerun"
    shutil.copytree(sfm_dir, copy)
    rec = reconstruction.main(
        copy,
        data["images"],
        pairs,
        data["features"],
        data["matches"],
        image_list=SUBSET,
        camera_mode="SINGLE",
    )
    assert rec.num_reg_images() == 5
    with pycolmap.Database.open(str(copy / "database.db")) as db:
        assert db.num_images() == 5


def test_known_intrinsics_stay_fixed(
    fountain_xfeat, fountain_dir, subset_pairs, tmp_path
):
    data = fountain_xfeat
    _, gt = load_strecha_scene(fountain_dir)
    K = gt["0000.jpg"].K  # all images share it; pixel centres at integers
    timings: dict[str, float] = {}
    rec = reconstruction.main(
        tmp_path,
        data["images"],
        subset_pairs,
        data["features"],
        data["matches"],
        image_list=SUBSET,
        intrinsics=K,
        timings=timings,
    )
    assert rec.num_reg_images() == 5
    assert set(timings) == {"database", "verification", "mapping"}
    assert len(rec.cameras) == 1
    camera = next(iter(rec.cameras.values()))
    assert camera.model.name == "PINHOLE"
    np.testing.assert_allclose(
        camera.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]
    )
    summary = evaluate_reconstruction(rec, gt).summary()
    assert summary["median_rotation_deg"] < 0.2  # no principal point offset


def test_skip_geometric_verification_still_registers(
    fountain_xfeat, subset_pairs, tmp_path
):
    """hloc writes unverified pairs without a config, which COLMAP 4 ignores
    (the mapper then returns nothing); ours carry one."""
    data = fountain_xfeat
    rec = reconstruction.main(
        tmp_path,
        data["images"],
        subset_pairs,
        data["features"],
        data["matches"],
        image_list=SUBSET,
        camera_mode="SINGLE",
        skip_geometric_verification=True,
        min_match_score=0.9,
    )
    assert rec is not None and rec.num_reg_images() == 5
    counts = verified_pair_counts(tmp_path / "database.db")
    assert len(counts) == 10 and min(counts.values()) > 15


def test_grouped_camera_mode(fountain_dir, sacre_coeur_dir):
    options = pycolmap.ImageReaderOptions()
    names = sorted(p.name for p in (fountain_dir / "images").glob("*.jpg"))
    groups = reconstruction.group_by_camera(fountain_dir / "images", names, options)
    assert groups == [names]  # one size, no EXIF: one camera
    names = sorted(p.name for p in sacre_coeur_dir.glob("*.jpg"))
    groups = reconstruction.group_by_camera(sacre_coeur_dir, names, options)
    assert sorted(sum(groups, [])) == names
    assert 1 < len(groups) <= len(names)


def test_images_without_overlap_are_a_clear_error(
    fountain_xfeat, sacre_coeur_dir, tmp_path
):
    """Two unrelated photos: no verified pair, an EmptyResultError (not None)."""
    from xfeat_hloc import extract_features, match_features
    from xfeat_hloc.confs import get_conf

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(fountain_xfeat["images"] / "0000.jpg", images / "a.jpg")
    first = sorted(sacre_coeur_dir.glob("*.jpg"))[0]
    shutil.copy(first, images / "b.jpg")
    conf = get_conf("xfeat", "extractor")
    conf["preprocessing"]["resize_max"] = 640
    features = extract_features.main(conf, images, feature_path=tmp_path / "f.h5")
    pairs = write_pairs(tmp_path / "pairs.txt", [("a.jpg", "b.jpg")])
    matches = match_features.main(
        get_conf("xfeat+mnn", "matcher"), pairs, features, matches=tmp_path / "m.h5"
    )
    with pytest.raises(EmptyResultError, match="do not overlap"):
        reconstruction.main(tmp_path / "sfm", images, pairs, features, matches)


def test_missing_inputs_and_bad_options(fountain_xfeat, tmp_path):
    data = fountain_xfeat
    with pytest.raises(UserError, match="features file .* does not exist"):
        reconstruction.main(
            tmp_path, data["images"], data["pairs"], tmp_path / "no.h5", data["matches"]
        )
    with pytest.raises(UserError, match="Unknown camera mode"):
        reconstruction.main(
            tmp_path,
            data["images"],
            data["pairs"],
            data["features"],
            data["matches"],
            camera_mode="SOMETIMES",
        )
    empty = tmp_path / "empty_pairs.txt"
    empty.write_text("")
    with pytest.raises(EmptyResultError, match="no pair"):
        reconstruction.main(
            tmp_path, data["images"], empty, data["features"], data["matches"]
        )
    with pytest.raises(UserError, match="Invalid mapper options"):
        reconstruction.make_options(
            pycolmap.IncrementalPipelineOptions, {"no_such_option": 1}, "mapper options"
        )
