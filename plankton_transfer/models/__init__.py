"""Models: the backbone registry, weight files, feature extraction, heads, thresholds, inference and export."""
