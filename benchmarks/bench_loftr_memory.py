"""Peak memory of our LoFTR (chunked coarse matching) vs kornia's stock LoFTR.

Each measurement runs in a fresh subprocess (peak RSS from ``getrusage``, so
peaks never mix), with the same random weights (seeded) and the same input pair:
two fountain-P11 images resized to W x H (random images without the shared
data). The outputs of both must be identical (same matches; confidences equal to
float rounding). Acceptance: peak RSS ratio ours / stock <= 0.5 at 1600x1200.

    python benchmarks/bench_loftr_memory.py [--sizes 640x480 1600x1200] [--threads 2]

``match_threshold`` is 0 here and the random model's BatchNorm statistics are
set from the pair (at 320x240, the same in both processes), so that the
comparison covers hundreds of matches: with kornia's random init and 0.2, there
are none.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "strecha" / "fountain-P11" / "images"


def _images(width: int, height: int):
    import cv2
    import numpy as np
    import torch

    from xfeat_hloc.utils.io import read_image

    images = []
    for k, name in enumerate(("0004.jpg", "0005.jpg")):
        path = DATA / name
        if path.exists():
            gray = read_image(path, grayscale=True)
            gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
            array = gray.astype(np.float32) / 255.0
        else:
            array = np.random.default_rng(k).random((height, width), np.float32)
        images.append(torch.from_numpy(array)[None, None])
    return images


def child(kind: str, width: int, height: int, threads: int, out: Path) -> None:
    """Run one model once and print its peak RSS (MiB) as JSON."""
    import torch

    torch.set_num_threads(threads)
    from kornia.feature import LoFTR

    from xfeat_hloc.matchers.kornia_loftr import (
        KorniaLoFTR,
        calibrate_batchnorm,
        loftr_config,
    )

    image0, image1 = _images(width, height)
    ours = KorniaLoFTR({"weights": None, "match_threshold": 0.0, "seed": 0}).eval()
    # informative random features: BatchNorm statistics from the pair at 320x240
    calibrate_batchnorm(ours.net, torch.cat(_images(320, 240)))
    if kind == "stock":
        model = LoFTR(pretrained=None, config=loftr_config(None, 0.0))
        model.load_state_dict(ours.net.state_dict())
        model = model.eval()
        del ours
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.inference_mode():
        if kind == "stock":
            # kornia refines its image1: the swap our wrapper does
            pred = model({"image0": image1, "image1": image0})
            result = {
                "keypoints0": pred["keypoints1"] - 0.5,
                "keypoints1": pred["keypoints0"] - 0.5,
                "scores": pred["confidence"],
            }
        else:
            result = ours({"image0": image0, "image1": image1})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save({k: v.clone() for k, v in result.items()}, out)
    print(json.dumps({"peak_mib": peak, "base_mib": base, "seconds": seconds}))


def measure(kind: str, width: int, height: int, threads: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        f"{width}x{height}",
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {width}x{height} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(path_a: Path, path_b: Path) -> str:
    import torch

    a, b = torch.load(path_a), torch.load(path_b)
    same = all(torch.equal(a[k], b[k]) for k in ("keypoints0", "keypoints1"))
    diff = (a["scores"] - b["scores"]).abs().max().item() if len(a["scores"]) else 0
    rel = diff / max(a["scores"].abs().max().item(), 1e-30) if len(a["scores"]) else 0
    status = "identical" if same and rel < 1e-5 else "DIFFERENT"
    return f"{status} ({len(a['scores'])} matches, max score diff {rel:.1e} rel.)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["640x480", "1024x768", "1600x1200"]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        width, height = (int(v) for v in rest[0].split("x"))
        child(args.child, width, height, args.threads, args.out)
        return
    print(
        f"{'size':>10} {'stock MiB':>10} {'ours MiB':>10} {'ratio':>6} "
        f"{'base MiB':>9}  outputs; times"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.split("x"))
            runs = {}
            for kind in ("stock", "ours"):
                runs[kind] = measure(
                    kind, width, height, args.threads, Path(tmp) / f"{kind}.pt"
                )
            ratio = runs["ours"]["peak_mib"] / runs["stock"]["peak_mib"]
            verdict = compare(Path(tmp) / "stock.pt", Path(tmp) / "ours.pt")
            print(
                f"{size:>10} {runs['stock']['peak_mib']:>10.0f} "
                f"{runs['ours']['peak_mib']:>10.0f} {ratio:>6.2f} "
                f"{runs['ours']['base_mib']:>9.0f}  {verdict}; "
                f"stock {runs['stock']['seconds']:.1f} s, "
                f"ours {runs['ours']['seconds']:.1f} s",
                flush=True,
            )
    print(
        "base: RSS of our process before the forward pass (torch, kornia, the "
        "model); MiB = 2**20 bytes; peaks from getrusage in fresh processes."
    )


if __name__ == "__main__":
    main()
