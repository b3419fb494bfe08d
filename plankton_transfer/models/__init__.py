"""Models: the backbone registry, weight files, feature extraction, heads and inference."""
