"""XFeat pipeline vs COLMAP SIFT on a Strecha scene: pose errors and wall times.

Both pipelines run in this process, interleaved (SIFT, XFeat, SIFT, XFeat...),
on the same images at the same long side, with the same camera treatment (one
shared camera, same principal point handling) and the same mapper:

- COLMAP SIFT: ``pycolmap.extract_features`` (``max_image_size``), then
  ``pycolmap.match_exhaustive`` (matching + geometric verification), then
  ``pycolmap.incremental_mapping``;
- XFeat: :func:`xfeat_hloc.pipelines.reconstruction.run` (extract, exhaustive
  pairs, mutual NN, database import, verification, mapping);
- XFeat* (``--methods xfeat_star``): the same with ``match_dense`` (semi-dense
  matches per pair aggregated into per-image keypoints).

Each reconstruction is aligned to the ground truth (Sim3 on camera centres) and
the script prints, side by side, the registered count, the median and max
position error (mm), the median and max rotation error (degrees) raw and with
the common rotation offset removed, and the wall time of each step (and the CPU
time of the process and its workers). Usage::

    python benchmarks/bench_reconstruction.py ../shared/data/strecha/fountain-P11 \\
        --resize 1600 --repeats 2 --principal-point refine
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pycolmap
import torch

from xfeat_hloc.evaluation.poses import evaluate_reconstruction
from xfeat_hloc.evaluation.strecha import load_strecha_scene
from xfeat_hloc.pipelines.reconstruction import run as run_xfeat
from xfeat_hloc.reconstruction import mapper_defaults, refine_principal_points
from xfeat_hloc.utils.database import colmap_output


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the
    verification workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU time of consecutive steps."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._last = (time.perf_counter(), cpu_seconds())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), cpu_seconds())
        self.wall[name] = now[0] - self._last[0]
        self.cpu[name] = now[1] - self._last[1]
        self._last = now


def mapper_options(principal_point: str) -> dict:
    """The mapper options both pipelines use (ours, see ``mapper_defaults``)."""
    return mapper_defaults(intrinsics_given=principal_point == "known")


def known_camera(gt: dict) -> pycolmap.Camera:
    """The shared ground-truth camera (all Strecha images have the same K)."""
    return next(iter(gt.values())).pycolmap_camera()


def run_sift(
    image_dir: Path, names: list[str], gt: dict, out: Path, resize: int, pp: str
) -> tuple[pycolmap.Reconstruction, Clock]:
    """COLMAP SIFT, exhaustive matching and incremental mapping."""
    database = out / "database.db"
    clock = Clock()
    reader = pycolmap.ImageReaderOptions()
    if pp == "known":
        camera = known_camera(gt)
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(str(v) for v in camera.params)
    with colmap_output(False):
        pycolmap.extract_features(
            str(database),
            str(image_dir),
            image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader,
            extraction_options={"max_image_size": resize},
            device=pycolmap.Device.cpu,
        )
        clock.lap("extract")
        pycolmap.match_exhaustive(str(database), device=pycolmap.Device.cpu)
        clock.lap("match+verify")
        models = pycolmap.incremental_mapping(
            str(database),
            str(image_dir),
            str(out / "models"),
            options=mapper_options(pp),
        )
        best = (
            max(models.values(), key=lambda r: r.num_reg_images()) if models else None
        )
        if best is not None and pp == "refine":  # the same final adjustment as ours
            refine_principal_points(best)
        clock.lap("mapping")
    clock.wall["total"] = sum(clock.wall.values())
    clock.cpu["total"] = sum(clock.cpu.values())
    return best, clock


def run_ours(
    image_dir: Path,
    names: list[str],
    gt: dict,
    out: Path,
    resize: int,
    pp: str,
    max_keypoints: int | None = None,
    method: str = "xfeat",
) -> tuple[pycolmap.Reconstruction, Clock]:
    """Our pipeline (``xfeat`` or ``xfeat_star``) with its defaults (one camera,
    like SIFT's)."""
    clock = Clock()
    result = run_xfeat(
        image_dir,
        out,
        method=method,
        resize_max=resize,
        max_keypoints=max_keypoints,
        image_list=names,
        camera_mode="SINGLE",
        intrinsics=known_camera(gt) if pp == "known" else None,
        refine_principal_point=pp == "refine",
    )
    clock.lap("all")
    cpu_total = clock.cpu["all"]
    clock.wall = {k: v for k, v in result.timings.items() if k != "total"}
    clock.wall["total"] = result.timings["total"]
    clock.cpu = {"total": cpu_total}
    return result.reconstruction, clock


def describe(rec: pycolmap.Reconstruction | None, gt: dict) -> dict:
    if rec is None:
        return {"registered": 0, "total": len(gt)}
    s = evaluate_reconstruction(rec, gt).summary()
    return {
        "registered": s["registered"],
        "total": s["total"],
        "points": rec.num_points3D(),
        "track": rec.compute_mean_track_length(),
        "reproj": rec.compute_mean_reprojection_error(),
        "pos_med_mm": 1000 * s["median_position"],
        "pos_max_mm": 1000 * s["max_position"],
        "rot_med": s["median_rotation_deg"],
        "rot_max": s["max_rotation_deg"],
        "rot_med_no_offset": s["median_rotation_no_offset_deg"],
        "rot_max_no_offset": s["max_rotation_no_offset_deg"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, help="a Strecha scene folder")
    parser.add_argument("--resize", type=int, default=1600)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--principal-point",
        choices=("refine", "fixed", "known"),
        default="refine",
        help="refine: refined by a final bundle adjustment; fixed: at the image "
        "centre (COLMAP's default); known: GT intrinsics given and kept fixed "
        "(the same for both pipelines)",
    )
    parser.add_argument(
        "--max-keypoints",
        type=int,
        action="append",
        help="XFeat keypoints per image; repeat to run several XFeat variants",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["xfeat"],
        choices=("xfeat", "xfeat_star"),
        help="our pipelines to compare with SIFT (xfeat_star: semi-dense)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    image_dir, gt = load_strecha_scene(args.scene)
    names = sorted(gt)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants: list[tuple[str, Callable]] = [("sift", run_sift)]
        if "xfeat" in args.methods:
            for num in args.max_keypoints or [None]:
                label = "xfeat" if num is None else f"xfeat-{num}"
                variants.append((label, partial(run_ours, max_keypoints=num)))
        if "xfeat_star" in args.methods:
            variants.append(("xfeat_star", partial(run_ours, method="xfeat_star")))
        labels = [label for label, _ in variants]
        for rep in range(args.repeats):
            order = variants if rep % 2 == 0 else variants[::-1]
            for label, fn in order:
                out = Path(tmp, f"{label}-{rep}")
                out.mkdir()
                rec, clock = fn(
                    image_dir, names, gt, out, args.resize, args.principal_point
                )
                row = {"pipeline": label, "rep": rep, **describe(rec, gt)}
                row["wall"] = clock.wall
                row["cpu_total"] = clock.cpu["total"]
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                shutil.rmtree(out)

    print(
        f"\n{args.scene.name}, long side {args.resize}, principal point "
        f"{args.principal_point}, {args.repeats} run(s) each, "
        f"pycolmap {pycolmap.__version__}, torch threads {torch.get_num_threads()}"
    )
    header = (
        f"{'pipeline':<10} {'reg':>5} {'points':>6} {'track':>5} {'reproj':>6} "
        f"{'pos med/max mm':>15} {'rot med/max deg':>16} {'no-offset med/max':>18} "
        f"{'wall s':>7} {'cpu s':>6}  steps (wall s)"
    )
    print(header)
    for row in rows:
        if row["registered"] == 0:
            print(f"{row['pipeline']:<10} nothing registered")
            continue
        steps = ", ".join(
            f"{k} {v:.1f}" for k, v in row["wall"].items() if k != "total"
        )
        print(
            f"{row['pipeline']:<10} {row['registered']:>2}/{row['total']:<2} "
            f"{row['points']:>6} {row['track']:>5.2f} {row['reproj']:>6.2f} "
            f"{row['pos_med_mm']:>7.2f}/{row['pos_max_mm']:<7.2f} "
            f"{row['rot_med']:>7.3f}/{row['rot_max']:<8.3f} "
            f"{row['rot_med_no_offset']:>8.3f}/{row['rot_max_no_offset']:<9.3f} "
            f"{row['wall']['total']:>7.1f} {row['cpu_total']:>6.1f}  {steps}"
        )
    for label in labels:
        sel = [r for r in rows if r["pipeline"] == label and r["registered"]]
        if sel:
            med = {
                key: np.median([r[key] for r in sel])
                for key in ("pos_med_mm", "rot_med", "rot_med_no_offset")
            }
            wall = np.median([r["wall"]["total"] for r in sel])
            print(
                f"median over runs, {label}: position {med['pos_med_mm']:.2f} mm, "
                f"rotation {med['rot_med']:.3f} deg (no offset "
                f"{med['rot_med_no_offset']:.3f}), wall {wall:.1f} s"
            )
    sift = [r["wall"]["total"] for r in rows if r["pipeline"] == "sift"]
    for label in labels[1:]:
        ours = [r["wall"]["total"] for r in rows if r["pipeline"] == label]
        ratio = np.median(ours) / np.median(sift)
        print(f"wall time ratio {label} / sift: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
