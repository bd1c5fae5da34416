r"""Build the miniature Aachen day-night dataset (v1.1 and v1.0 layouts, with
query ground truth) from the Strecha fountain-P11 scene.

    python datasets/make_mini_aachen.py --scene ../shared/data/strecha/fountain-P11 \
        --output outputs/mini_aachen
    xfeat-hloc aachen --version 1.1 --dataset outputs/mini_aachen/aachen_v1.1 \
        --outputs outputs/mini_aachen/run --num-loc 5

It writes ``aachen_v1.1/`` and ``aachen_v1.0/`` (and ``*_ground_truth_queries.txt``
beside them) into --output; with --no-points, the reference models have no 3D
points. See xfeat_hloc/evaluation/mini_aachen.py for what is inside. With
--evaluate RESULTS, it prints the errors of a results file against the ground
truth instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xfeat_hloc.errors import UserError
from xfeat_hloc.evaluation import mini_aachen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", type=Path, help="Strecha scene folder")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--long-side", type=int, default=1024)
    parser.add_argument("--no-points", action="store_true")
    parser.add_argument("--evaluate", type=Path, help="a results file to evaluate")
    parser.add_argument("--version", choices=("1.0", "1.1"), default="1.1")
    args = parser.parse_args()
    try:
        if args.evaluate is not None:
            return _evaluate(args)
        if args.scene is None:
            parser.error("--scene is required to build the dataset")
        v11 = mini_aachen.build_mini_aachen(
            args.scene,
            args.output / "aachen_v1.1",
            long_side=args.long_side,
            with_points=not args.no_points,
        )
        v10 = mini_aachen.mini_aachen_v1_0(v11, args.output / "aachen_v1.0")
    except UserError as error:
        sys.exit(f"error: {error}")
    for mini in (v11, v10):
        print(
            f"Aachen v{mini.version}: {mini.root} ({len(mini.db_names)} database "
            f"images, {len(mini.queries)} queries; ground truth: "
            f"{mini_aachen.ground_truth_path(mini.root)})"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from xfeat_hloc.evaluation.poses import evaluate_localization

    root = args.output / ("aachen_v1.1" if args.version == "1.1" else "aachen_v1.0")
    gt = mini_aachen.read_ground_truth(mini_aachen.ground_truth_path(root))
    errors = evaluate_localization(args.evaluate, gt)
    for name, (dt, dr) in sorted(errors.items()):
        print(f"{name}: {dt:.3f} m, {dr:.2f} deg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
