"""Model checkpoints: loading from URIs, format detection, and the tiny test model."""
