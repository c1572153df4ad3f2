"""Inference engines behind one token-level interface (`engines.base.Engine`)."""
