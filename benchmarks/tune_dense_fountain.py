"""Choose XFeat*'s dense conf by measuring on fountain-P11 (ground-truth cameras).

For every variant: ``match_dense`` (exhaustive pairs) -> our reconstruction ->
camera centres aligned to the ground truth by a similarity transform -> position
errors. The per-pair matching (the costly part) only depends on ``resize_max``
and the model conf, so it is computed once per such setting and the aggregation
variants reuse it (a fresh features file re-aggregates and reassigns all pairs).
A sparse XFeat (4096, mutual NN) run is the reference.

    python benchmarks/tune_dense_fountain.py --out /tmp/tune [--variants ...]

Prints one line per variant: registered images, median / max position error
(mm), keypoints per image, mean track length, seconds of matching (once per
setting), aggregation and reconstruction.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from xfeat_hloc import match_dense, reconstruction
from xfeat_hloc.confs import get_conf
from xfeat_hloc.errors import UserError
from xfeat_hloc.evaluation.poses import evaluate_reconstruction
from xfeat_hloc.evaluation.strecha import load_strecha_scene
from xfeat_hloc.matchers.xfeat_star import XFeatStar, _shifted
from xfeat_hloc.utils.aggregation import VoteAccumulator
from xfeat_hloc.utils.parsers import write_pairs

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT.parent / "shared" / "data" / "strecha" / "fountain-P11"

# name: (resize_max, refine, cell_size, max_error, max_kps, min_score[, shifts])
# (shifts: the model's (shift0, shift1), each (dx, dy) in network pixels; without
# them the conf's); cell 0:
# no cells, every distinct point is a keypoint (points that coincide across
# pairs merge); min_score drops per-pair matches of lower refinement confidence
# (as the model's fine_conf would).
VARIANTS: dict[str, tuple] = {
    "hloc-like c8 e2": (1600, True, 8, 2, 8192, 0),
    "hloc bin-centres c8 e2": (1600, True, 8, 2, 8192, 0),
    "hloc bin-centres c1 e1": (1600, True, 1, 1, 8192, 0),
    "c1 e1": (1600, True, 1, 1, 8192, 0),
    "c4 e1": (1600, True, 4, 1, 8192, 0),
    "c2 e1": (1600, True, 2, 1, 8192, 0),
    "c1 e0.5": (1600, True, 1, 0.5, 8192, 0),
    "c1 e0.5 all": (1600, True, 1, 0.5, None, 0),
    "c2 e1 16k": (1600, True, 2, 1, 16384, 0),
    "exact e0.5 all": (1600, True, 0, 0.5, None, 0),
    "exact e0.5 16k": (1600, True, 0, 0.5, 16384, 0),
    "c8 e3": (1600, True, 8, 3, 8192, 0),
    "c8 e4": (1600, True, 8, 4, 8192, 0),
    "c16 e4": (1600, True, 16, 4, 8192, 0),
    "c8 e2 4k": (1600, True, 8, 2, 4096, 0),
    "c8 e2 16k": (1600, True, 8, 2, 16384, 0),
    "c8 e2 2k": (1600, True, 8, 2, 2048, 0),
    "c8 e2 3k": (1600, True, 8, 2, 3072, 0),
    "c8 e2 6k": (1600, True, 8, 2, 6144, 0),
    "c16 e4 4k": (1600, True, 16, 4, 4096, 0),
    "c4 e2 4k": (1600, True, 4, 2, 4096, 0),
    "exact e0.5 4k": (1600, True, 0, 0.5, 4096, 0),
    "c8 e2 4k r1024": (1024, True, 8, 2, 4096, 0),
    "c8 e2 4k no-refine": (1600, False, 8, 2, 4096, 0),
    "c8 e2 s0.5": (1600, True, 8, 2, 8192, 0.5),
    "c8 e2 s0.7": (1600, True, 8, 2, 8192, 0.7),
    "c8 e2 no-refine": (1600, False, 8, 2, 8192, 0),
    "c2 e1 no-refine": (1600, False, 2, 1, 8192, 0),
    "c8 e2 official": (1600, True, 8, 2, 8192, 0, ((0, 0), (0, 0))),
    "c8 e2 a1.5": (1600, True, 8, 2, 8192, 0, ((1.5, 1.5), (0, 0))),
    "c8 e2 b-1.5": (1600, True, 8, 2, 8192, 0, ((0, 0), (-1.5, -1.5))),
    "c8 e2 a4.5 b3": (1600, True, 8, 2, 8192, 0, ((4.5, 4.5), (3, 3))),
    "c8 e2 r1024": (1024, True, 8, 2, 8192, 0),
    "c8 e2 r2048": (2048, True, 8, 2, 8192, 0),
    "c2 e1 r1024": (1024, True, 2, 1, 8192, 0),
    "c4 e1 r1024": (1024, True, 4, 1, 8192, 0),
}


class BinCentreAccumulator(VoteAccumulator):
    """hloc's placement (measurement only): a keypoint at the centre of its
    cell's best bin, and no merging of keypoints split by a cell edge."""

    def finalize(self, max_kps=None):
        self._compact()
        if self.exact or len(self._keys) == 0:
            return super().finalize(max_kps)
        nb = self.bins_per_cell
        cell_id = self._keys // (nb * nb)
        order = np.lexsort((self._keys, -self._w, cell_id))
        first = np.ones(len(order), bool)
        first[1:] = cell_id[order[1:]] != cell_id[order[:-1]]
        best = order[first]
        cell = np.stack([cell_id[best] % self.cells_x, cell_id[best] // self.cells_x])
        within = np.stack([self._keys[best] % nb, (self._keys[best] // nb) % nb])
        xy = cell.T * self.cell_size + (within.T + 0.5) * self.bin_size - 0.5
        votes = self._w[best]
        order = np.argsort(-votes, kind="stable")[:max_kps]
        return xy[order].astype(np.float32), votes[order].astype(np.float32)


class UnrefinedXFeatStar(XFeatStar):
    """XFeat* keeping image 0's coarse cell positions (measurement only)."""

    def match_dense_features(self, features0, features1):
        # refine_matches moves image 0's points by offset * scale: zero scale,
        # after applying the conf's shift0 (which is also scaled)
        features0 = _shifted(features0, self.conf["shift0"])
        return super().match_dense_features(
            {**features0, "scales": torch.zeros_like(features0["scales"])}, features1
        )


def run_sparse(out: Path, image_dir: Path, names: list[str], pairs: Path) -> dict:
    from xfeat_hloc import extract_features, match_features

    tic = time.perf_counter()
    features = extract_features.main(
        get_conf("xfeat", "extractor"),
        image_dir,
        feature_path=out / "sparse-features.h5",
        image_list=names,
    )
    matches = match_features.main(
        get_conf("xfeat+mnn", "matcher"),
        pairs,
        features,
        matches=out / "sparse-matches.h5",
    )
    return {
        "features": features,
        "matches": matches,
        "match_s": time.perf_counter() - tic,
    }


def evaluate(
    out: Path, tag: str, image_dir, pairs, features, matches, gt, names
) -> dict:
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    # one shared camera (all Strecha images have the same K), principal point
    # refined: the setting of the sparse measurements in DESIGN.md
    rec = reconstruction.main(
        out / f"sfm-{tag}",
        image_dir,
        pairs,
        features,
        matches,
        camera_mode="SINGLE",
        image_list=names,
        timings=timings,
    )
    seconds = time.perf_counter() - tic
    ev = evaluate_reconstruction(rec, gt)
    pos = np.array([e.position for e in ev.errors.values()]) * 1000
    tracks = [p.track.length() for p in rec.points3D.values()]
    return {
        "registered": ev.num_registered,
        "median_mm": float(np.median(pos)),
        "max_mm": float(pos.max()),
        "points": len(tracks),
        "track": float(np.mean(tracks)),
        "reproj": float(np.mean([p.error for p in rec.points3D.values()])),
        "sfm_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--sparse", action="store_true", help="also sparse XFeat")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--loo", action="store_true", help="leave-one-image-out subsets (11 runs)"
    )
    args = parser.parse_args()
    image_dir, cameras = load_strecha_scene(SCENE)
    names = sorted(cameras)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = write_pairs(args.out / "pairs.txt", exhaustive(names))
    if args.loo:  # leave one image out: 11 reconstructions of 10 images
        subsets = [[n for n in names if n != skip] for skip in names]
    else:
        subsets = [names] * args.repeat
    header = (
        f"{'variant':<22} {'runs':>4} {'reg':>4} {'med mm':>7} {'max mm':>8} "
        f"{'kps':>6} {'pts':>6} {'track':>5} {'reproj':>6} {'match s':>7} "
        f"{'agg s':>6} {'sfm s':>6}"
    )
    print(header, flush=True)

    def report(name: str, results: list[dict], kps: float, match_s: float) -> None:
        if not results:
            print(f"{name:<22} all runs failed", flush=True)
            return
        mean = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        print(
            f"{name:<22} {len(results):>4} "
            f"{min(r['registered'] for r in results):>4} {mean['median_mm']:>7.1f} "
            f"{max(r['max_mm'] for r in results):>8.1f} {kps:>6.0f} "
            f"{mean['points']:>6.0f} {mean['track']:>5.2f} {mean['reproj']:>6.2f} "
            f"{match_s:>7.0f} {mean.get('agg_s', 0):>6.1f} {mean['sfm_s']:>6.0f}",
            flush=True,
        )

    if args.sparse:
        sparse = run_sparse(args.out, image_dir, names, pairs)
        results = []
        for k, subset in enumerate(subsets):
            sub_pairs = write_pairs(args.out / f"pairs-{k}.txt", exhaustive(subset))
            results.append(
                evaluate(
                    args.out,
                    f"sparse-{k}",
                    image_dir,
                    sub_pairs,
                    sparse["features"],
                    sparse["matches"],
                    cameras,
                    subset,
                )
            )
        report("sparse xfeat 4096 mnn", results, 4096, sparse["match_s"])

    match_seconds: dict[tuple, float] = {}
    for name in args.variants:
        resize_max, refine, cell, max_error, max_kps, min_score, *extra = VARIANTS[name]
        conf = copy.deepcopy(get_conf("xfeat_star", "dense matcher"))
        if extra:
            conf["model"]["shift0"], conf["model"]["shift1"] = extra[0]
        shifts = (conf["model"]["shift0"], conf["model"]["shift1"])
        conf["preprocessing"]["resize_max"] = resize_max
        conf.update(cell_size=cell, max_error=max_error)
        conf.pop("max_kps", None)
        key = (resize_max, refine, shifts)
        suffix = "-".join(f"{v:g}" for shift in shifts for v in shift)
        matches = args.out / (
            f"raw-r{resize_max}-{'ref' if refine else 'coarse'}-s{suffix}.h5"
        )
        if key not in match_seconds:
            tic = time.perf_counter()
            _match_only(conf, refine, pairs, image_dir, matches)
            match_seconds[key] = time.perf_counter() - tic
        if min_score:
            matches = _filtered(matches, min_score)
        results, kps = [], []
        for k, subset in enumerate(subsets):
            sub_pairs = write_pairs(args.out / f"pairs-{k}.txt", exhaustive(subset))
            tag = f"{name.replace(' ', '_')}-{k}"
            features = args.out / f"features-{tag}.h5"
            features.unlink(missing_ok=True)
            tic = time.perf_counter()
            if name.startswith("hloc bin-centres"):
                match_dense.VoteAccumulator = BinCentreAccumulator
            else:
                match_dense.VoteAccumulator = VoteAccumulator
            match_dense.main(
                conf,
                sub_pairs,
                image_dir,
                matches=matches,
                features=features,
                max_kps=max_kps,
            )
            agg = time.perf_counter() - tic
            with h5py.File(features) as fd:
                kps.append(np.mean([fd[n]["keypoints"].shape[0] for n in fd]))
            try:
                res = evaluate(
                    args.out,
                    tag,
                    image_dir,
                    sub_pairs,
                    features,
                    matches,
                    cameras,
                    subset,
                )
            except UserError as error:  # e.g. too few images registered
                print(f"{name:<22} run {k} failed: {error}", flush=True)
                continue
            results.append({**res, "agg_s": agg})
        report(name, results, float(np.mean(kps)), match_seconds[key])


def exhaustive(names: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def _filtered(raw: Path, min_score: float) -> Path:
    """A copy of raw per-pair matches keeping those with score > min_score."""
    out = raw.with_name(f"{raw.stem}-s{min_score}.h5")
    if out.exists():
        return out
    with h5py.File(raw) as src, h5py.File(out, "w") as dst:

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "scores" in obj:
                keep = obj["scores"][()] > min_score
                grp = dst.create_group(name)
                for key in ("keypoints0", "keypoints1", "scores"):
                    grp.create_dataset(key, data=obj[key][()][keep])
                    for attr, value in obj[key].attrs.items():
                        grp[key].attrs[attr] = value

        src.visititems(visit)
    return out


def _match_only(conf, refine: bool, pairs: Path, image_dir: Path, matches: Path):
    """Pass 1 of match_dense with the (possibly unrefined) model."""
    from xfeat_hloc.utils.parsers import parse_pairs

    if matches.exists():
        return
    conf = match_dense.resolve_conf(conf)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    original = match_dense.dynamic_load
    model = XFeatStar if refine else UnrefinedXFeatStar
    match_dense.dynamic_load = lambda root, name: model
    try:
        match_dense.match_pairs(
            conf, parse_pairs(pairs), image_dir, matches, set(), device
        )
    finally:
        match_dense.dynamic_load = original


if __name__ == "__main__":
    main()
