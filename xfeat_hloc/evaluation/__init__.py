"""Comparing reconstructions and localizations with ground-truth cameras."""
