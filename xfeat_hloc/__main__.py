"""``python -m xfeat_hloc`` runs the ``xfeat-hloc`` command line."""

import sys

from .cli import main

sys.exit(main())
