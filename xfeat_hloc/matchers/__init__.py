"""Sparse and dense matchers, one module per conf ``model.name``.

Names never collide with hloc's own modules (hloc has ``loftr``,
``nearest_neighbor``, ``lightglue``...), so that ``register()`` can add them.
"""

MODELS = ("mnn", "lighterglue", "xfeat_star", "kornia_loftr")
