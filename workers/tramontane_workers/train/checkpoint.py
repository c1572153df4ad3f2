"""Checkpoints of a LoRA run: the adapter in PEFT format plus everything needed to resume.

A checkpoint directory holds `adapter_config.json` + `adapter_model.safetensors` (what
`save_pretrained` writes, so any checkpoint is itself a usable adapter) and `trainer_state.pt`
(step, optimizer, LR schedule, sampler position, RNG state, and the model shape it belongs to).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from tramontane_workers.train.data import MixtureSampler
from tramontane_workers.train.storage import OutputStore

STATE_FILE = "trainer_state.pt"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class CheckpointMismatch(ValueError):
    """The output URI holds checkpoints of a different base model or LoRA shape."""


@dataclass
class Resumed:
    step: int
    counters: dict[str, Any]  # train_loss, train_tokens... as saved


def save_checkpoint(
    store: OutputStore,
    model: PeftModel,
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: MixtureSampler,
    shape: dict[str, object],
    counters: dict[str, Any],
) -> str:
    """Write the checkpoint for `step` under the output URI; return its URI."""
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state(),
        "torch_rng": torch.get_rng_state(),
        "model_shape": shape,
        "counters": counters,
    }
    with tempfile.TemporaryDirectory(prefix="tramontane-ckpt-") as tmp:
        local = Path(tmp)
        model.save_pretrained(str(local))
        torch.save(state, local / STATE_FILE)
        return store.upload_dir(local, store.checkpoint_dir(step))


def load_latest(
    store: OutputStore,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: MixtureSampler,
    shape: dict[str, object],
) -> Resumed | None:
    """Restore the newest complete checkpoint into the given objects; None if there is none."""
    steps = store.complete_checkpoints()
    if not steps:
        return None
    with tempfile.TemporaryDirectory(prefix="tramontane-resume-") as tmp:
        local = store.download_dir(store.checkpoint_dir(steps[-1]), Path(tmp))
        state: dict[str, Any] = torch.load(local / STATE_FILE, weights_only=False)
        if state["model_shape"] != shape:
            raise CheckpointMismatch(
                f"{store.uri} holds checkpoints for {state['model_shape']}, not {shape}; "
                "use a new output URI"
            )
        set_peft_model_state_dict(model, load_file(str(local / ADAPTER_WEIGHTS)))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    return Resumed(step=int(state["step"]), counters=dict(state["counters"]))
