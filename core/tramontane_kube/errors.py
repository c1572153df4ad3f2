"""The error of a kubeconfig that cannot be used (shared by `config` and `execauth`)."""

from __future__ import annotations


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be used; the message names the offending field."""
