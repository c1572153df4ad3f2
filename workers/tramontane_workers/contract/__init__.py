"""What the operator and the router import from the workers: proto, serve/train configs, datasets.

Importable without torch or ray."""
