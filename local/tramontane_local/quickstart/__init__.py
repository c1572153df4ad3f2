"""The quickstart of local mode: its manifests and Q&A dataset (package data)."""
