"""LoRA fine-tuning on Ray Train: data loading, the training loop, checkpoints and progress.

Importing the package itself is cheap; torch, transformers, peft and ray are imported by the
modules that need them.
"""
