"""Subcommands of the `tramontane` CLI, one module each."""
