"""Per-image / per-pair / per-query costs of the Aachen pipeline steps, measured
here, and what they mean at the scale of Aachen v1.1 (6,697 database and 1,015
query images).

    python benchmarks/bench_aachen_scale.py [--device cpu] [--steps extract,mnn,...]

Each step runs in a fresh subprocess so that its peak memory (max RSS) is its
own. Images: fountain-P11 (../shared/data) resized to 1600 x 1067, the size of
the Aachen images. Steps whose memory grows with the dataset (retrieval, pairs
from poses, NVM conversion) are measured at (or near) full scale on synthetic
inputs. Prints a table; numbers are noisy when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOUNTAIN = ROOT.parent / "shared" / "data" / "strecha" / "fountain-P11" / "images"

# Aachen v1.1 sizes (hloc's published pairs give the pair counts: v1.0 has 56,717
# unique covis20 pairs for 4,328 images, i.e. ~13 per image).
NUM_DB, NUM_QUERIES = 6697, 1015
NUM_IMAGES = NUM_DB + NUM_QUERIES
NUM_DB_PAIRS = 13 * NUM_DB  # unique covisibility pairs (num_covis 20)
NUM_LOC_PAIRS = 50 * NUM_QUERIES  # num_loc 50
NVM_POINTS = 1_650_000  # Aachen v1.0 SIFT model, ~5 observations per point

STEPS = {
    # step: (unit, count at Aachen v1.1 scale)
    "extract": ("image", NUM_IMAGES),
    "mnn": ("pair", NUM_DB_PAIRS + NUM_LOC_PAIRS),
    "lighterglue": ("pair", NUM_DB_PAIRS + NUM_LOC_PAIRS),
    "xfeat_star": ("pair", NUM_DB_PAIRS + NUM_LOC_PAIRS),
    "loftr": ("pair", NUM_DB_PAIRS + NUM_LOC_PAIRS),
    "vlad": ("image", NUM_IMAGES),
    "retrieval": ("query", NUM_QUERIES),
    "pairs_from_poses": ("image", NUM_DB),
    "nvm": ("point", NVM_POINTS),
}


def _images(tmp: Path, n: int, long_side: int = 1600) -> list[str]:
    import cv2

    names = []
    for path in sorted(FOUNTAIN.glob("*.jpg"))[:n]:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        scale = long_side / max(h, w)
        image = cv2.resize(image, (round(w * scale), round(h * scale)), cv2.INTER_AREA)
        cv2.imwrite(str(tmp / path.name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        names.append(path.name)
    return names


def _pairs(tmp: Path, names: list[str], n: int) -> Path:
    """Up to ``n`` pairs of neighbouring images (i, i+1) and (i, i+2)."""
    from xfeat_hloc.utils.parsers import write_pairs

    pairs = []
    for i in range(len(names) - 1):
        for j in range(i + 1, min(i + 3, len(names))):
            pairs.append((names[i], names[j]))
    return write_pairs(tmp / "pairs.txt", pairs[:n])


def run_step(step: str, device: str) -> dict:
    """Run one measurement in this process; returns seconds and units done."""
    import torch

    torch.set_num_threads(2)
    # step modules imported where used: the model steps need no pycolmap
    from xfeat_hloc import extract_features, match_dense, match_features
    from xfeat_hloc.confs import get_conf

    tmp = Path(tempfile.mkdtemp(prefix=f"bench_{step}_"))
    if step in ("extract", "mnn", "lighterglue", "vlad"):
        names = _images(tmp, 9)
        conf = get_conf("xfeat", "extractor")
        # warm-up (model loading, first call) on one image, then timed
        extract_features.main(conf, tmp, tmp, image_list=names[:1], device=device)
        start = time.perf_counter()
        features = extract_features.main(
            conf, tmp, tmp, image_list=names, device=device
        )
        if step == "extract":
            return {"seconds": time.perf_counter() - start, "units": len(names) - 1}
        if step == "vlad":
            from xfeat_hloc import vlad_from_features

            start = time.perf_counter()
            vlad_from_features.main(features, tmp / "vlad.h5", device=device)
            train = time.perf_counter() - start
            (tmp / "vlad.h5").unlink()  # the descriptors again, codebook kept
            start = time.perf_counter()
            vlad_from_features.main(features, tmp / "vlad.h5", device=device)
            seconds = time.perf_counter() - start
            return {"seconds": seconds, "units": len(names), "codebook_s": train}
        pairs = _pairs(tmp, names, 13)
        matcher = get_conf(
            "xfeat+mnn" if step == "mnn" else "xfeat+lighterglue", "matcher"
        )
        (tmp / "warm.txt").write_text(pairs.read_text().splitlines()[0] + "\n")
        match_features.main(
            matcher, tmp / "warm.txt", features, matches=tmp / "w.h5", device=device
        )
        start = time.perf_counter()
        match_features.main(
            matcher, pairs, features, matches=tmp / "m.h5", device=device
        )
        return {"seconds": time.perf_counter() - start, "units": 13}
    if step in ("xfeat_star", "loftr"):
        names = _images(tmp, 5)
        pairs = _pairs(tmp, names, 7)
        conf = get_conf(
            "xfeat_star" if step == "xfeat_star" else "loftr_outdoor", "dense matcher"
        )
        if step == "loftr":
            # random weights cost the same as the real ones (threshold 0: matches)
            conf["model"].update(weights="random", match_threshold=0.0)
        (tmp / "warm.txt").write_text(pairs.read_text().splitlines()[0] + "\n")
        match_dense.main(conf, tmp / "warm.txt", tmp, tmp / "warm", device=device)
        start = time.perf_counter()
        match_dense.main(conf, pairs, tmp, tmp, device=device)
        return {"seconds": time.perf_counter() - start, "units": 7}
    if step == "retrieval":
        from xfeat_hloc import pairs_from_retrieval
        from xfeat_hloc.utils.h5_writer import H5Writer

        rng = np.random.default_rng(0)
        names = [f"db/{i}.jpg" for i in range(NUM_DB)] + [
            f"query/{i}.jpg" for i in range(NUM_QUERIES)
        ]
        with H5Writer(tmp / "global.h5", flush_every=4096) as writer:
            for name in names:
                d = rng.normal(size=4096).astype(np.float32)
                writer.write(
                    name,
                    {"global_descriptor": (d / np.linalg.norm(d)).astype(np.float16)},
                )
        start = time.perf_counter()
        pairs_from_retrieval.main(
            tmp / "global.h5", tmp / "pairs.txt", 50, query_prefix="query",
            db_prefix="db", device=device,
        )  # fmt: skip
        return {"seconds": time.perf_counter() - start, "units": NUM_QUERIES}
    if step == "pairs_from_poses":
        import pycolmap

        from xfeat_hloc import pairs_from_poses

        rec = pycolmap.Reconstruction()
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(camera_id=1, model="PINHOLE", width=1600, height=1067,
                            params=[1400, 1400, 800, 533])
        )  # fmt: skip
        rng = np.random.default_rng(0)
        for i in range(1, NUM_DB + 1):
            yaw = rng.uniform(0, 2 * np.pi)
            rotation = pycolmap.Rotation3d(
                np.array([0, np.sin(yaw / 2), 0, np.cos(yaw / 2)])
            )
            center = rng.uniform(-500, 500, 3) * [1, 0.01, 1]
            pose = pycolmap.Rigid3d(rotation, -(rotation.matrix() @ center))
            image = pycolmap.Image(name=f"db/{i}.jpg", camera_id=1, image_id=i)
            rec.add_image_with_trivial_frame(image, pose)
        start = time.perf_counter()
        pairs_from_poses.main(rec, tmp / "pairs.txt", 20)
        return {"seconds": time.perf_counter() - start, "units": NUM_DB}
    if step == "nvm":
        from xfeat_hloc import colmap_from_nvm

        num_images, track = 4328, 5
        num_points = int(os.environ.get("BENCH_NVM_POINTS", 200_000))
        rng = np.random.default_rng(0)
        names = [f"db/{i}.jpg" for i in range(num_images)]
        with open(tmp / "m.nvm", "w") as f:
            f.write(f"NVM_V3\n\n{num_images}\n")
            for name in names:
                f.write(f"{name} 1400 1 0 0 0 {rng.normal()} 0 {rng.normal()} 0 0\n")
            f.write(f"\n{num_points}\n")
            for _ in range(num_points):
                obs = rng.choice(num_images, track, replace=False)
                meas = " ".join(
                    f"{j} {k} {rng.normal() * 300:.3f} {rng.normal() * 300:.3f}"
                    for k, j in enumerate(obs)
                )
                f.write(
                    f"{rng.normal():.4f} {rng.normal():.4f} {5 + rng.random():.4f} "
                    f"1 2 3 {track} {meas}\n"
                )
            f.write("\n0\n")
        with open(tmp / "k.txt", "w") as f:
            f.writelines(f"{n} SIMPLE_RADIAL 1600 1067 1400 800 533 0\n" for n in names)
        import sqlite3

        db = sqlite3.connect(tmp / "aachen.db")
        db.execute(
            "CREATE TABLE images (image_id INTEGER, name TEXT, camera_id INTEGER)"
        )
        db.executemany(
            "INSERT INTO images VALUES (?, ?, ?)",
            [(i + 1, n, i + 1) for i, n in enumerate(names)],
        )
        db.commit()
        db.close()
        start = time.perf_counter()
        colmap_from_nvm.main(
            tmp / "m.nvm", tmp / "k.txt", tmp / "aachen.db", tmp / "sfm"
        )
        return {"seconds": time.perf_counter() - start, "units": num_points}
    raise ValueError(step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = run_step(args.child, args.device)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out))
        return 0
    if not FOUNTAIN.is_dir():
        print(f"skipped: {FOUNTAIN} is absent (needs ../shared/data)")
        return 0
    print(f"device {args.device}; Aachen v1.1: {NUM_DB} db + {NUM_QUERIES} queries, "
          f"~{NUM_DB_PAIRS} db pairs + {NUM_LOC_PAIRS} query pairs")  # fmt: skip
    print(
        f"{'step':18s} {'per unit':>12s} {'peak RSS':>10s} {'units':>9s} "
        f"{'Aachen v1.1':>12s}"
    )
    for step in args.steps.split(","):
        unit, count = STEPS[step]
        proc = subprocess.run(
            [sys.executable, __file__, "--child", step, "--device", args.device],
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{step:18s} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        out = json.loads(lines[-1][len("RESULT ") :])
        per_unit = out["seconds"] / out["units"]
        total_h = per_unit * count / 3600
        if "codebook_s" in out:
            print(f"{'vlad codebook':18s} {out['codebook_s']:9.1f} s once")
        print(
            f"{step:18s} {per_unit * 1000:9.3g} ms/{unit:<5s} "
            f"{out['peak_rss_mb']:7.0f} MB "
            f"{count:9d} {total_h:9.1f} h"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
