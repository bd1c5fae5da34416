"""Network definitions (no hloc contract): the XFeat network, LoFTR helpers."""
