r"""The embedded main job: reconstruct a synthetic room with known cameras.

    python pipelines/demo.py --outputs outputs/demo

The same as ``xfeat-hloc demo --outputs outputs/demo``. It renders a textured
room seen by 12 cameras (no download), reconstructs it with XFeat and pycolmap,
and prints the camera errors against the ground truth; the exit code is 1 when
a camera is missing or an error is too large. The logic lives in
xfeat_hloc/pipelines/demo.py, the scene in xfeat_hloc/synthetic.py.
"""

import argparse
import sys

from xfeat_hloc.errors import UserError
from xfeat_hloc.pipelines import demo

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
demo.add_arguments(parser)
args = parser.parse_args()

try:
    sys.exit(demo.run_cli(args))
except UserError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
