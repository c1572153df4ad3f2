"""Kopf handlers, one module per kind, and the runtime state they share."""
