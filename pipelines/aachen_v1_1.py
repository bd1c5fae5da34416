r"""Aachen day-night v1.1 localization with XFeat (like hloc's Aachen_v1_1 pipeline).

    python pipelines/aachen_v1_1.py --dataset datasets/aachen_v1.1 \
        --outputs outputs/aachen_v1.1

is the same as ``xfeat-hloc aachen --version 1.1 ...`` (see ``--help``; hloc's
option names such as ``--num_covis`` and ``--num_loc`` work too). Dataset
layout and download: datasets/README.md. The steps live in
xfeat_hloc/pipelines/aachen.py. The results file for visuallocalization.net is
written into --outputs.
"""

from __future__ import annotations

import sys

from xfeat_hloc.cli import main

if __name__ == "__main__":
    # the defaults come first: options given on the command line come later and win
    defaults = [
        "--version",
        "1.1",
        "--dataset",
        "datasets/aachen_v1.1",
        "--outputs",
        "outputs/aachen_v1.1",
    ]
    sys.exit(main(["aachen", *defaults, *sys.argv[1:]]))
