"""Images/s of our ``extract_features`` vs hloc's, running the same XFeat model.

Both steps run the ``xfeat`` conf (hloc's after ``xfeat_hloc.register()``) on
the same images, interleaved in one process, each call a complete ``main``
(model loading, decoding, resizing, inference, writing a fresh h5). Our step
also runs with each way of preparing images ahead of the model (``prefetch``:
a background thread, a DataLoader worker process like hloc, or none) to pick
the default. Printed: median images/s of each and the ratio ours / hloc
(> 1: we are faster).

Sets: sacre_coeur (10 photos, 675-1083 px: no resizing) and, if present,
Strecha fountain-P11 (11 photos, 3072x2048, resized to 1600 px: decoding and
resizing weigh more).

Without hloc, only our prefetch modes are compared (hloc is not on PyPI:
``pip install git+https://github.com/cvg/Hierarchical-Localization``).

Usage: ``python benchmarks/bench_extract_features.py [--runs 3] [--threads 2]``
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = {
    "sacre_coeur": DATA / "sacre_coeur" / "mapping",
    "fountain-P11": DATA / "strecha" / "fountain-P11" / "images",
}


def quiet() -> None:
    """Silence per-call logs and progress bars' logs (tqdm still prints)."""
    logging.getLogger("xfeat_hloc").setLevel(logging.WARNING)
    logging.getLogger("hloc").setLevel(logging.WARNING)


def time_runs(
    candidates: dict[str, Callable[[Path], object]], runs: int
) -> dict[str, float]:
    """Median seconds of each candidate, interleaved, a fresh output each call."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs + 1):  # the first round warms up and is dropped
            for name, fn in candidates.items():
                out = Path(tmp) / f"{name}-{run}.h5"
                start = time.perf_counter()
                fn(feature_path=out)
                if run:
                    times[name].append(time.perf_counter() - start)
                shutil.rmtree(out, ignore_errors=True)
                out.unlink(missing_ok=True)
    return {name: statistics.median(t) for name, t in times.items()}


def run_ours(conf: dict, image_dir: Path, prefetch: str, feature_path: Path) -> None:
    from xfeat_hloc import extract_features

    extract_features.extract(
        conf, image_dir, feature_path=feature_path, prefetch=prefetch
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet()

    from xfeat_hloc import extract_features

    try:
        import xfeat_hloc

        xfeat_hloc.register()
        from hloc import extract_features as hloc_extract
    except ImportError as error:
        print(f"hloc comparison skipped: {error}")
        hloc_extract = None
    quiet()

    print(
        f"# extract_features, conf xfeat, {args.threads} torch threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    for set_name, image_dir in SETS.items():
        if not image_dir.exists():
            print(f"{set_name}: skipped, {image_dir} is absent")
            continue
        num = len(extract_features.list_images(image_dir, ["*.jpg", "*.png"]))
        conf = extract_features.confs["xfeat"]
        candidates: dict[str, Callable[[Path], object]] = {}
        if hloc_extract is not None:
            candidates["hloc"] = partial(
                hloc_extract.main, hloc_extract.confs["xfeat"], image_dir
            )
        for mode in ("thread", "process", "none"):
            candidates[f"ours[{mode}]"] = partial(run_ours, conf, image_dir, mode)
        medians = time_runs(candidates, args.runs)
        print(f"{set_name}: {num} images, median of {args.runs} runs")
        for name, seconds in medians.items():
            line = f"  {name:16s} {num / seconds:6.2f} images/s ({seconds:.2f} s)"
            if "hloc" in medians and name != "hloc":
                line += f"  ours/hloc = {medians['hloc'] / seconds:.2f}"
            print(line)


if __name__ == "__main__":
    main()
