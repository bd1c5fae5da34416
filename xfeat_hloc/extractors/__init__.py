"""Local and global feature extractors, one module per conf ``model.name``."""

MODELS = ("xfeat", "netvlad")
