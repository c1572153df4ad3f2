"""The tramontane.dev API: pydantic models are the single source of truth for the CRDs."""
