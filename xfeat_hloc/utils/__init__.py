"""Shared utilities: the model contract, h5 and text file formats, images."""
