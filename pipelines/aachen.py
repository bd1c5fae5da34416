r"""Aachen day-night v1.0 localization with XFeat (like hloc's Aachen pipeline).

    python pipelines/aachen.py --dataset datasets/aachen --outputs outputs/aachen

is the same as ``xfeat-hloc aachen --version 1.0 ...`` (see ``--help``; hloc's
option names such as ``--num_covis`` and ``--num_loc`` work too). Dataset
layout and download: datasets/README.md. The steps live in
xfeat_hloc/pipelines/aachen.py. The results file for visuallocalization.net is
written into --outputs.
"""

import sys

from xfeat_hloc.pipelines.aachen import script_main

if __name__ == "__main__":
    sys.exit(script_main("1.0"))
