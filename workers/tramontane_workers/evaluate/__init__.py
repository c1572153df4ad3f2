"""The evaluator: scores a model (and a baseline) on a Mistral chat JSONL dataset (issue 16)."""
