"""All conf dicts, in hloc's shape, in one place.

- ``extractors``: for ``extract_features.main`` (``output``, ``model``,
  ``preprocessing``).
- ``matchers``: for ``match_features.main`` (``output``, ``model``).
- ``dense_matchers``: for ``match_dense.main`` (``output``, ``model``,
  ``preprocessing`` with ``dfactor``, and the aggregation's ``max_error`` and
  ``cell_size`` in pixels of the original images).

The step modules expose them as ``confs`` like hloc does, and
``xfeat_hloc.register()`` adds them to hloc's. Model names are module names in
``xfeat_hloc.extractors`` / ``xfeat_hloc.matchers`` and never collide with hloc's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .errors import UnknownConfError

Conf = dict[str, Any]

extractors: dict[str, Conf] = {
    "xfeat": {
        "output": "feats-xfeat-n4096-r1600",
        "model": {"name": "xfeat", "max_keypoints": 4096},
        "preprocessing": {"grayscale": False, "resize_max": 1600},
    },
    "xfeat_n8192": {
        "output": "feats-xfeat-n8192-r1600",
        "model": {"name": "xfeat", "max_keypoints": 8192},
        "preprocessing": {"grayscale": False, "resize_max": 1600},
    },
    "xfeat_r1024": {
        "output": "feats-xfeat-n4096-r1024",
        "model": {"name": "xfeat", "max_keypoints": 4096},
        "preprocessing": {"grayscale": False, "resize_max": 1024},
    },
    # Global descriptor for retrieval (weights file needed, see extractors/netvlad.py)
    "netvlad": {
        "output": "global-feats-netvlad",
        "model": {"name": "netvlad"},
        "preprocessing": {"resize_max": 1024},
    },
}

matchers: dict[str, Conf] = {
    "xfeat+mnn": {
        "output": "matches-xfeat-mnn",
        "model": {"name": "mnn", "min_cossim": None},
    },
    "xfeat+mnn-0.82": {
        "output": "matches-xfeat-mnn-cos0.82",
        "model": {"name": "mnn", "min_cossim": 0.82},
    },
    "xfeat+lighterglue": {
        "output": "matches-xfeat-lighterglue",
        "model": {"name": "lighterglue", "filter_threshold": 0.1},
    },
}

dense_matchers: dict[str, Conf] = {
    "xfeat_star": {
        "output": "matches-xfeat_star",
        # points at cell centres, image 1's offset corrected (see XFeatStar)
        "model": {
            "name": "xfeat_star",
            "top_k": 10000,
            "shift0": (3.5, 3.5),
            "shift1": (2.0, 2.7),
        },
        "preprocessing": {"grayscale": False, "resize_max": 1600, "dfactor": 32},
        "max_error": 2,
        "cell_size": 8,
    },
    "loftr_outdoor": {
        "output": "matches-loftr_outdoor",
        "model": {"name": "kornia_loftr", "weights": "outdoor"},
        "preprocessing": {"grayscale": True, "resize_max": 1024, "dfactor": 8},
        "max_error": 2,
        "cell_size": 8,
    },
    "loftr_indoor": {
        "output": "matches-loftr_indoor",
        "model": {"name": "kornia_loftr", "weights": "indoor"},
        "preprocessing": {"grayscale": True, "resize_max": 1024, "dfactor": 8},
        "max_error": 2,
        "cell_size": 8,
    },
}

_KINDS = {
    "extractor": extractors,
    "matcher": matchers,
    "dense matcher": dense_matchers,
}


def get_conf(name: str, kind: str, weights_path: str | Path | None = None) -> Conf:
    """A deep copy of conf ``name`` of ``kind`` ('extractor', 'matcher',
    'dense matcher'), or :class:`UnknownConfError` listing the known names.

    ``weights_path``, when given, becomes the model's explicit weights file."""
    table = _KINDS[kind]
    if name not in table:
        raise UnknownConfError(
            f"Unknown {kind} conf {name!r}. Known: {', '.join(sorted(table))}."
        )
    conf = copy.deepcopy(table[name])
    if weights_path is not None:
        conf["model"]["weights_path"] = str(weights_path)
    return conf
