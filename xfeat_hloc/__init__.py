"""XFeat, XFeat*, XFeat+LighterGlue and LoFTR for hloc-style SfM and localization.

Importing the package is cheap and has no side effects beyond configuring the
package's own logger (like hloc does for ``hloc``): no torch import, no device
selection, no download.
"""

from __future__ import annotations

import logging
from typing import Any

__version__ = "0.1.0"

logger = logging.getLogger("xfeat_hloc")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(
        logging.Formatter(
            fmt="[%(asctime)s %(name)s %(levelname)s] %(message)s",
            datefmt="%Y/%m/%d %H:%M:%S",
        )
    )
    _handler.setLevel(logging.INFO)
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def register(overwrite: bool = False) -> dict[str, Any]:
    """Make our models and confs available to an installed hloc.

    See :func:`xfeat_hloc.hloc_plugin.register`.
    """
    from .hloc_plugin import register as _register

    return _register(overwrite=overwrite)


__all__ = ["__version__", "logger", "register"]
