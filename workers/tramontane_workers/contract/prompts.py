"""Fixed prompt text of Mistral's API that both the workers (to encode it) and the router (to
count it before a request is admitted) need."""

from __future__ import annotations

# Mistral's API prepends this system prompt when `safe_prompt` is set.
SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. "
    "Ensure replies promote fairness and positivity."
)
