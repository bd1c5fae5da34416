"""``xfeat-hloc pairs``: write a pairs file (exhaustive, sequential or
covisibility), the input of ``xfeat-hloc match``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .errors import UserError

METHODS = ("exhaustive", "sequential", "covisibility")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``xfeat-hloc pairs``."""
    parser.add_argument("--method", choices=METHODS, default="exhaustive")
    parser.add_argument("--output", type=Path, required=True, help="pairs .txt")
    images = parser.add_argument_group("images (exhaustive, sequential)")
    images.add_argument(
        "--image_dir", type=Path, help="every image of this folder (and sub-folders)"
    )
    images.add_argument("--image_list", type=Path, help="text file of image names")
    images.add_argument("--features", type=Path, help="the images of a features h5")
    exhaustive = parser.add_argument_group("exhaustive")
    exhaustive.add_argument("--ref_list", type=Path, help="reference image names")
    exhaustive.add_argument("--ref_features", type=Path, help="reference features h5")
    sequential = parser.add_argument_group("sequential")
    sequential.add_argument("--window_size", type=int, default=10)
    sequential.add_argument("--quadratic_overlap", action="store_true")
    sequential.add_argument("--loop_stride", type=int)
    sequential.add_argument(
        "--global_features", type=Path, help="h5 of global descriptors (retrieval)"
    )
    sequential.add_argument("--num_loop", type=int, default=5)
    sequential.add_argument("--min_loop_gap", type=int)
    covisibility = parser.add_argument_group("covisibility")
    covisibility.add_argument("--model", type=Path, help="COLMAP model folder")
    covisibility.add_argument("--num_matched", type=int, default=20)


def _image_names(args: argparse.Namespace) -> list[str] | Path | None:
    given = [x for x in (args.image_dir, args.image_list, args.features) if x]
    if len(given) > 1:
        raise UserError("Give only one of --image_dir, --image_list, --features.")
    if args.image_dir is not None:
        from .extract_features import DEFAULT_PREPROCESSING, list_images

        return list_images(args.image_dir, DEFAULT_PREPROCESSING["globs"])
    return args.image_list


def run_cli(args: argparse.Namespace) -> int:
    """Run ``xfeat-hloc pairs`` and print a one-line summary."""
    start = time.perf_counter()
    if args.method == "covisibility":
        from . import pairs_from_covisibility

        if args.model is None:
            raise UserError("--method covisibility needs --model (a COLMAP model).")
        path = pairs_from_covisibility.main(args.model, args.output, args.num_matched)
    else:
        images = _image_names(args)
        if images is None and args.features is None:
            raise UserError(
                f"--method {args.method} needs --image_dir, --image_list or --features."
            )
        if args.method == "exhaustive":
            from . import pairs_from_exhaustive

            path = pairs_from_exhaustive.main(
                args.output, images, args.features, args.ref_list, args.ref_features
            )
        else:
            from . import pairs_from_sequential

            path = pairs_from_sequential.main(
                args.output,
                images,
                args.features,
                window_size=args.window_size,
                quadratic_overlap=args.quadratic_overlap,
                loop_stride=args.loop_stride,
                global_features=args.global_features,
                num_loop=args.num_loop,
                min_loop_gap=args.min_loop_gap,
            )
    with open(path, encoding="utf-8") as f:
        count = sum(1 for line in f if line.strip())
    seconds = time.perf_counter() - start
    print(f"wrote {count} {args.method} pairs -> {path}, {seconds:.1f} s")
    return 0
