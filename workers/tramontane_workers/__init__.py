"""Tramontane workers: the code that runs inside Ray (engines, Serve app, trainer, datasets)."""
