"""Benchmark: LoRA training tokens/s through Ray Train vs a plain peft loop, same model, same run.

Both train the same seeded Mistral-shaped model (written by `write_tiny_mistral`, bigger than
the test one) with the same LoRA, optimizer, batches and thread count on a generated chat
dataset. Throughput is steady state: the clock starts after the first step, so model loading,
`ray.init` and worker-group start-up are excluded (they are reported separately). The plain
loop runs before and after the Ray run and its mean is the baseline, to even out drift on a
shared machine. Target (issue 5): tokens_per_s_ratio >= 0.85 on CPU.

    .venv/bin/python bench/finetune_throughput.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workers")]

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tramontane_workers.contract.train_config import TrainConfig  # noqa: E402
from tramontane_workers.models.tiny import write_tiny_mistral  # noqa: E402
from tramontane_workers.train.data import MixtureSampler, collate, load_conversations  # noqa: E402
from tramontane_workers.train.synthetic import write_synthetic_dataset  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def plain_peft_loop(
    model_dir: Path, data: Path, steps: int, batch_size: int, threads: int
) -> float:
    """The baseline: a minimal peft training loop; returns steady-state tokens/s."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model: Any = get_peft_model(
        base,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
        ),
    )
    conversations = load_conversations(str(data), 4096)
    sampler = MixtureSampler([len(conversations)], [1.0], seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    tokens, began = 0, 0.0
    for step in range(steps):
        batch = collate([conversations[i] for _, i in sampler.next_indices(batch_size)], 0)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            began = time.perf_counter()
        else:
            tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - began)


def ray_train_run(
    model_dir: Path, data: Path, out: Path, steps: int, batch_size: int, threads: int
) -> dict[str, Any]:
    import ray

    from tramontane_workers.train.runner import run

    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init(
            num_cpus=threads + 1,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    ray_init_s = time.perf_counter() - started
    config = TrainConfig(
        job_name="bench-throughput",
        base_model_uri=f"file://{model_dir}",
        training_files=[{"uri": str(data)}],
        output_uri=out.as_uri(),
        lora={"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS},
        training_steps=steps,
        learning_rate=1e-4,
        warmup_fraction=0.0,
        weight_decay=0.0,
        batch_size=batch_size,
        checkpoint_every_steps=steps,  # one checkpoint, at the end, like the adapter save
        cpus_per_worker=threads,
        max_failures=0,
    )
    fit_started = time.perf_counter()
    progress = run(config)
    wall = time.perf_counter() - fit_started
    if progress.tokens_per_second is None:
        raise SystemExit("the Ray run reported no throughput")
    return {"tokens_per_s": progress.tokens_per_second, "wall_s": wall, "ray_init_s": ray_init_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    args = parser.parse_args()
    layers, hidden, steps, batch_size = (2, 64, 12, 4) if args.quick else (4, 256, 120, 8)
    steps, batch_size = args.steps or steps, args.batch_size or batch_size
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        root = Path(tmp)
        model_dir = write_tiny_mistral(root / "model", num_layers=layers, hidden_size=hidden)
        data = root / "train.jsonl"
        write_synthetic_dataset(data, 300_000)
        before = plain_peft_loop(model_dir, data, steps, batch_size, args.threads)
        ray_side = ray_train_run(model_dir, data, root / "out", steps, batch_size, args.threads)
        after = plain_peft_loop(model_dir, data, steps, batch_size, args.threads)
    baseline = (before + after) / 2
    figures = {
        "bench": "finetune_throughput",
        "model": f"mistral {layers} layers, hidden {hidden}, vocab 32768",
        "steps": steps,
        "batch_size": batch_size,
        "threads": args.threads,
        "ray_train_tokens_per_s": round(ray_side["tokens_per_s"], 1),
        "plain_peft_tokens_per_s": round(baseline, 1),
        "plain_peft_tokens_per_s_before": round(before, 1),
        "plain_peft_tokens_per_s_after": round(after, 1),
        "tokens_per_s_ratio": round(ray_side["tokens_per_s"] / baseline, 3),
        "ray_fit_wall_s": round(ray_side["wall_s"], 1),
        "ray_init_s": round(ray_side["ray_init_s"], 1),
    }
    print(
        f"Ray Train {figures['ray_train_tokens_per_s']} tokens/s vs plain peft "
        f"{figures['plain_peft_tokens_per_s']} tokens/s: ratio {figures['tokens_per_s_ratio']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
