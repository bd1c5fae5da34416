"""Aachen day-night v1.0 localization with XFeat (like hloc's Aachen pipeline).

    python pipelines/aachen.py --dataset datasets/aachen --outputs outputs/aachen

The same as ``xfeat-hloc aachen --version 1.0 ...``. Dataset layout and download:
datasets/README.md. The steps live in xfeat_hloc/pipelines/aachen.py. The results
file for visuallocalization.net is written into --outputs.
"""

import argparse
import sys
from pathlib import Path

from xfeat_hloc.errors import UserError
from xfeat_hloc.pipelines import aachen

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--dataset", type=Path, default=Path("datasets/aachen"))
parser.add_argument("--outputs", type=Path, default=Path("outputs/aachen"))
parser.add_argument("--method", choices=list(aachen.METHODS), default="xfeat+mnn")
parser.add_argument("--num_covis", type=int, default=20)
parser.add_argument("--num_loc", type=int, default=50)
parser.add_argument("--retrieval", choices=aachen.RETRIEVALS, default="xfeat-global")
parser.add_argument("--retrieval_pairs", type=Path, help="e.g. hloc's NetVLAD pairs")
parser.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
args = parser.parse_args()

try:
    result = aachen.run(
        args.dataset,
        args.outputs,
        version="1.0",
        method=args.method,
        num_covis=args.num_covis,
        num_loc=args.num_loc,
        retrieval=args.retrieval,
        retrieval_pairs=args.retrieval_pairs,
        device=args.device,
    )
except UserError as error:
    sys.exit(f"error: {error}")
print(f"{result.num_localized} / {result.num_queries} queries localized.")
print(f"Results for visuallocalization.net: {result.results}")
