"""The LoRA training loop each Ray Train worker runs (also runnable without Ray, for tests).

`train(config, env)` loads the base model (HF format) and the data, wraps the model with a
`peft` LoRA, resumes from the newest complete checkpoint under the output URI if there is one,
and trains to `total_steps`: loss on assistant tokens only, validation loss every
`eval_every` steps, a checkpoint every `checkpoint_every_steps`, metrics reported to Ray Train
and (rank 0) to `progress.json` and as a progress line on stdout (`publish_progress`), and
finally the adapter plus its manifest. A finished run
re-entered (a RayJob retried after success) does nothing.

Ray Train's `report` is collective and costs ~2 s on CPU (Ray 2.60), so workers report at
evaluation and checkpoint steps only; `progress.json` is refreshed every few seconds as well.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tramontane_workers.contract.estimate import TrainingShape, plan_steps
from tramontane_workers.contract.train_config import (
    ADAPTER_DIR,
    ADAPTER_MANIFEST,
    PROGRESS_FILE,
    AdapterManifest,
    CheckpointRecord,
    TrainConfig,
    TrainProgress,
    progress_line,
)
from tramontane_workers.models.loading import materialize
from tramontane_workers.train.checkpoint import load_latest, save_checkpoint
from tramontane_workers.train.data import (
    MixtureSampler,
    collate,
    load_conversations,
    worker_slice,
)
from tramontane_workers.train.storage import OutputStore

PROGRESS_EVERY_S = 5.0
MAX_GRAD_NORM = 1.0


@dataclass
class WorkerEnv:
    """What differs between running under Ray Train and running bare."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Callable[[dict[str, Any]], None] = lambda metrics: None
    prepare: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor


def publish_progress(store: OutputStore, progress: TrainProgress) -> None:
    """Write progress.json under the output URI and print the same progress as one stdout line
    (it reaches the RayJob's log through Ray's log forwarding, where the operator reads it
    when the output URI is a claim it cannot read)."""
    store.write_json(PROGRESS_FILE, progress)
    print_progress(progress)


def print_progress(progress: TrainProgress) -> None:
    print(progress_line(progress), file=sys.stdout, flush=True)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def total_steps(config: TrainConfig, conversations: int, tokens: int) -> int:
    shape = TrainingShape(
        config.batch_size, config.sequence_length, config.training_steps, config.epochs
    )
    return plan_steps(conversations, tokens, shape)[0]


def _now() -> datetime:
    return datetime.now(UTC)


def _load_base(config: TrainConfig, env: WorkerEnv) -> tuple[PeftModel, int]:
    base_dir = materialize(config.base_model_uri)
    dtype = torch.bfloat16 if env.device.type == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    pad_id = base.config.pad_token_id
    pad_id = base.config.eos_token_id if pad_id is None else pad_id
    torch.manual_seed(config.seed)  # identical LoRA init on every worker
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=round(config.lora.alpha),
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lora), int(pad_id or 0)


class _Run:
    """State of one attempt; methods are the loop's steps."""

    def __init__(self, config: TrainConfig, env: WorkerEnv) -> None:
        self.config, self.env = config, env
        self.store = OutputStore(config.output_uri)
        self.train_sets = [
            load_conversations(f.uri, config.sequence_length) for f in config.training_files
        ]
        self.valid = [
            c
            for uri in config.validation_files
            for c in load_conversations(uri, config.sequence_length)
        ]
        conversations = sum(len(s) for s in self.train_sets)
        tokens = sum(len(c.tokens) for s in self.train_sets for c in s)
        self.total = total_steps(config, conversations, tokens)
        previous = self.store.read_json(PROGRESS_FILE)
        self.previous = TrainProgress.model_validate(previous) if previous else None
        self.train_tokens = 0

    def finished(self) -> bool:
        p = self.previous
        return p is not None and p.state == "succeeded" and p.step >= self.total

    def evaluate(self, model: PeftModel, pad_id: int) -> float | None:
        if not self.valid:
            return None
        mine = worker_slice(self.valid, self.env.rank, self.env.world)
        sums = torch.zeros(2, dtype=torch.float64, device=self.env.device)
        model.eval()
        with torch.no_grad():
            for start in range(0, len(mine), max(1, self.config.batch_size)):
                batch = collate(mine[start : start + self.config.batch_size], pad_id)
                batch = {k: v.to(self.env.device) for k, v in batch.items()}
                counted = int((batch["labels"][:, 1:] != -100).sum())
                if counted:
                    loss = model(**batch).loss
                    sums += torch.tensor([float(loss) * counted, counted], device=sums.device)
        model.train()
        sums = self.env.all_reduce(sums)
        return float(sums[0] / sums[1]) if sums[1] > 0 else None

    def progress(self, **fields: Any) -> TrainProgress:
        base = self.previous.model_dump() if self.previous else {}
        base.update(fields, total_steps=self.total, updated=_now())
        self.previous = TrainProgress.model_validate(base)
        if self.env.rank == 0:
            publish_progress(self.store, self.previous)
        return self.previous

    def write_adapter(
        self, model: PeftModel, step: int, train_loss: float | None, valid: float | None
    ) -> str:
        manifest = AdapterManifest(
            base_model=self.config.base_model_name or self.config.base_model_uri,
            base_model_uri=self.config.base_model_uri,
            rank=self.config.lora.rank,
            alpha=self.config.lora.alpha,
            target_modules=list(self.config.lora.target_modules),
            steps=step,
            final_train_loss=train_loss,
            final_valid_loss=valid,
            train_tokens=self.train_tokens,
            created=_now(),
        )
        with tempfile.TemporaryDirectory(prefix="tramontane-adapter-") as tmp:
            model.save_pretrained(tmp)
            (Path(tmp) / ADAPTER_MANIFEST).write_text(manifest.model_dump_json(indent=1))
            return self.store.upload_dir(Path(tmp), ADAPTER_DIR)


def train(config: TrainConfig, env: WorkerEnv) -> TrainProgress:
    """Run (or resume, or skip if already done) one fine-tune; returns the final progress."""
    run = _Run(config, env)
    if run.finished() and run.previous is not None:
        env.report({"step": run.previous.step, "done": True})
        return run.previous
    peft_model, pad_id = _load_base(config, env)
    peft_model.to(env.device)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    warmup = round(config.warmup_fraction * run.total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, run.total, warmup)
    )
    sampler = MixtureSampler(
        [len(s) for s in run.train_sets], [f.weight for f in config.training_files], config.seed
    )
    resumed = load_latest(
        run.store, peft_model, optimizer, scheduler, sampler, config.model_shape()
    )
    start = resumed.step if resumed else 0
    counters: dict[str, Any] = resumed.counters if resumed else {"train_tokens": 0}
    train_loss, valid_loss = counters.get("train_loss"), counters.get("valid_loss")
    run.train_tokens = int(counters.get("train_tokens", 0))
    attempt = (run.previous.attempt + 1) if run.previous else 1
    run.progress(
        state="running", step=start, attempt=attempt, resumed_from_step=start or None,
        percent=round(100 * start / run.total, 2),
    )  # fmt: skip
    model = env.prepare(peft_model)
    model.train()
    # Throughput and ETA are steady-state: the clock starts after this attempt's first step.
    began, tokens_seen, last_write = 0.0, 0, 0.0
    tokens_per_s: float | None = None
    eta: datetime | None = None
    for step in range(start + 1, run.total + 1):
        picks = worker_slice(sampler.next_indices(config.batch_size), env.rank, env.world)
        batch = collate([run.train_sets[s][i] for s, i in picks], pad_id)
        batch = {k: v.to(env.device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = float(loss.detach())
        step_tokens = int(batch["attention_mask"].sum()) * env.world
        run.train_tokens += step_tokens
        if step == start + 1:
            began = time.perf_counter()
        else:
            tokens_seen += step_tokens
            elapsed = time.perf_counter() - began
            tokens_per_s = tokens_seen / elapsed
            eta = _now() + timedelta(seconds=elapsed / (step - start - 1) * (run.total - step))
        metrics: dict[str, Any] = {
            "step": step,
            "total_steps": run.total,
            "train_loss": train_loss,
            "tokens_per_s": tokens_per_s,
            "eta_s": None if eta is None else (eta - _now()).total_seconds(),
        }
        fields: dict[str, Any] = {}
        evaluate = step % config.eval_every == 0 or step == run.total
        if evaluate:
            valid_loss = run.evaluate(peft_model, pad_id)
            metrics["valid_loss"] = valid_loss
        if (step % config.checkpoint_every_steps == 0 or step == run.total) and env.rank == 0:
            counters = {
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "train_tokens": run.train_tokens,
            }
            uri = save_checkpoint(
                run.store,
                peft_model,
                step,
                optimizer,
                scheduler,
                sampler,
                config.model_shape(),
                counters,
            )
            previous = run.previous.checkpoints if run.previous else []
            fields["checkpoints"] = [*previous, CheckpointRecord(step=step, uri=uri, time=_now())]
        if fields or time.perf_counter() - last_write > PROGRESS_EVERY_S:
            run.progress(
                step=step, percent=round(100 * step / run.total, 2), train_loss=train_loss,
                valid_loss=valid_loss, tokens_per_second=tokens_per_s, eta=eta, **fields,
            )  # fmt: skip
            last_write = time.perf_counter()
        if evaluate or step % config.checkpoint_every_steps == 0:
            env.report(metrics)  # every worker, same steps: Ray Train's report is collective
    adapter_uri = (
        run.write_adapter(peft_model, run.total, train_loss, valid_loss) if env.rank == 0 else None
    )
    return run.progress(
        state="succeeded", step=run.total, percent=100.0, train_loss=train_loss,
        valid_loss=valid_loss, adapter_uri=adapter_uri, eta=None,
    )  # fmt: skip
