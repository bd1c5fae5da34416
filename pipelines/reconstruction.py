"""Reconstruct a folder of photos with XFeat and COLMAP (pycolmap).

    python pipelines/reconstruction.py --images path/to/images --outputs outputs/scene

is the same as ``xfeat-hloc reconstruct`` (see ``--help`` for the options:
``--method xfeat|xfeat+lighterglue|xfeat_star|loftr_outdoor``, ``--pairs
exhaustive|sequential``, ``--resize-max``, ``--device``, ``--intrinsics``,
``--plot-matches N``, ``--view-3d``, ``--gt``). The steps live in
:mod:`xfeat_hloc.pipelines.reconstruction`; from Python::

    from xfeat_hloc.pipelines.reconstruction import run
    result = run("images/", "outputs/scene", method="xfeat")
    print(result.summary())
"""

from __future__ import annotations

import sys

from xfeat_hloc.cli import main

if __name__ == "__main__":
    sys.exit(main(["reconstruct", *sys.argv[1:]]))
