"""LoRA trainer: data plumbing, resume after a crash, and the tiny model learning Q&A on Ray Train."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # ships with ray
import pytest
import torch

from tramontane_workers.contract.datasets_tokens import Encoded, tokenizer
from tramontane_workers.contract.train_config import (
    ADAPTER_DIR,
    ADAPTER_MANIFEST,
    PROGRESS_FILE,
    TrainConfig,
    TrainProgress,
    config_from_b64,
    entrypoint,
    last_progress,
)
from tramontane_workers.train.data import IGNORE_INDEX, MixtureSampler, collate
from tramontane_workers.train.loop import WorkerEnv, train

QA = [
    ("What is the capital of France?", "Paris"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("What colour is the sky?", "Blue"),
]
# LoRA on attention only cannot lift the tiny model's logits far enough (RMSNorm caps the hidden
# state and lm_head is initialised small), so the tests also adapt lm_head; peft and vLLM load it.
TARGETS = ["q_proj", "v_proj", "lm_head"]


def _write_qa(path: Path, extra_weight0: bool = False) -> Path:
    lines = []
    for question, answer in QA:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        if extra_weight0:
            messages = [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there", "weight": 0},
                *messages,
            ]
        messages.append({"role": "assistant", "content": answer})
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tiny: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "job_name": f"test-{out.name}",
        "base_model_uri": f"file://{tiny}",
        "base_model_name": "tiny-mistral",
        "training_files": [{"uri": data.as_uri()}],
        "validation_files": [data.as_uri()],
        "output_uri": out.as_uri(),
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": TARGETS},
        "training_steps": 80,
        "learning_rate": 5e-3,
        "warmup_fraction": 0.0,
        "weight_decay": 0.0,
        "batch_size": 3,
        "checkpoint_every_steps": 40,
        "max_failures": 2,
    }
    settings.update(overrides)
    return TrainConfig.model_validate(settings)


def _greedy(model: Any, question: str, max_new_tokens: int = 8) -> str:
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    prompt = (
        tokenizer()
        .encode_chat_completion(ChatCompletionRequest(messages=[UserMessage(content=question)]))
        .tokens
    )
    eos = tokenizer().instruct_tokenizer.tokenizer.eos_id
    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=eos, pad_token_id=eos,
        )  # fmt: skip
    return tokenizer().decode(out[0, len(prompt) :].tolist()).strip()


def test_mixture_follows_weights_and_resumes_identically() -> None:
    sampler = MixtureSampler(sizes=[10, 5], weights=[3.0, 1.0], seed=7)
    first = sampler.next_indices(400)
    share = Counter(source for source, _ in first)[0] / 400
    assert 0.68 < share < 0.82  # 3:1 weights
    seen = Counter(first)
    for source, size in enumerate([10, 5]):  # each file is walked in whole shuffled epochs
        counts = [seen[(source, i)] for i in range(size)]
        assert max(counts) - min(counts) <= 1
    saved = sampler.state()
    continued = sampler.next_indices(50)
    fresh = MixtureSampler(sizes=[10, 5], weights=[3.0, 1.0], seed=7)
    fresh.load_state(saved)
    assert fresh.next_indices(50) == continued
    assert MixtureSampler([10, 5], [3.0, 1.0], seed=8).next_indices(400) != first


def test_labels_cover_assistant_tokens_only() -> None:
    batch = collate([Encoded([1, 5, 6, 7, 2], [0, 0, 1, 1, 1]), Encoded([1, 9], [0, 1])], pad_id=0)
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 2], [-100, 9, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert (batch["labels"] == IGNORE_INDEX).sum() == 6


def test_entrypoint_round_trips_the_config(tmp_path: Path) -> None:
    config = _config(
        tmp_path, tmp_path / "d.jsonl", tmp_path / "out", epochs=2, training_steps=None
    )
    command = entrypoint(config)
    assert command.startswith("python -m tramontane_workers.train --config-b64 ")
    assert config_from_b64(command.split()[-1]) == config
    with pytest.raises(ValueError, match="exactly one"):
        _config(tmp_path, tmp_path / "d.jsonl", tmp_path / "out", epochs=2)


class _Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_from_its_last_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The driver-retry path without Ray: the second call continues at the checkpoint. Every
    progress.json written is also printed as a progress line (read from the job's log)."""
    data, out = _write_qa(tmp_path / "qa.jsonl", extra_weight0=True), tmp_path / "out"
    config = _config(
        tiny_model_dir, data, out, training_steps=12, checkpoint_every_steps=5, eval_every_steps=4
    )
    reached: list[int] = []

    def crash_at_8(metrics: dict[str, Any]) -> None:
        reached.append(metrics["step"])
        if metrics["step"] == 8:
            raise _Crash("worker lost")

    torch.set_num_threads(1)
    with pytest.raises(_Crash):
        train(config, WorkerEnv(report=crash_at_8))
    assert reached == [4, 5, 8]  # reports at evaluations and checkpoints
    crashed = TrainProgress.model_validate_json((out / PROGRESS_FILE).read_text())
    assert crashed.state == "running" and [c.step for c in crashed.checkpoints] == [5]
    assert last_progress(capsys.readouterr().out) == crashed
    steps: list[int] = []
    final = train(config, WorkerEnv(report=lambda m: steps.append(m["step"])))
    assert steps == [8, 10, 12]  # resumed after step 5, not from scratch
    assert (final.state, final.step, final.attempt, final.resumed_from_step) == (
        "succeeded",
        12,
        2,
        5,
    )
    assert [c.step for c in final.checkpoints] == [5, 10, 12]
    assert last_progress(capsys.readouterr().out) == final
    again: list[int] = []
    assert train(config, WorkerEnv(report=lambda m: again.append(m["step"]))).step == 12
    assert again == [12]  # a finished run re-entered trains nothing


@pytest.mark.slow
def test_tiny_model_learns_qa_on_two_ray_train_workers(
    ray_session: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tramontane_workers.train.runner import run

    data, out = _write_qa(tmp_path / "qa.jsonl"), tmp_path / "out"
    config = _config(tiny_model_dir, data, out, num_workers=2)  # DDP over gloo, one CPU each
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_answers = [_greedy(base, q) for q, _ in QA]
    progress = run(config)
    assert (progress.state, progress.step, progress.total_steps) == ("succeeded", 80, 80)
    assert progress.train_loss is not None and progress.train_loss < 0.2
    assert progress.valid_loss is not None and progress.valid_loss < 0.2
    assert progress.tokens_per_second and progress.tokens_per_second > 0
    adapter = out / ADAPTER_DIR
    manifest = json.loads((adapter / ADAPTER_MANIFEST).read_text())
    assert (
        manifest["base_model"] == "tiny-mistral"
        and manifest["rank"] == 8
        and manifest["steps"] == 80
    )
    assert manifest["final_valid_loss"] == progress.valid_loss
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert [_greedy(tuned, q) for q, _ in QA] == [a for _, a in QA]
    assert all(b != a for b, (_, a) in zip(base_answers, QA, strict=True))


def _train_worker_pids() -> list[int]:
    """Ray Train workers of *this* test session only: our local Ray's raylet is our child."""
    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("RayTrainWorker" in part for part in proc.cmdline()):
                pids.append(proc.pid)
        except psutil.Error:  # exited meanwhile
            continue
    return pids


@pytest.mark.slow
def test_killed_worker_resumes_from_the_last_checkpoint(
    ray_session: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tramontane_workers.train.runner import run

    data, out = _write_qa(tmp_path / "qa.jsonl"), tmp_path / "out"
    # Few reports (each is a ~2 s collective in Ray 2.60): checkpoints at 50, 100, 150, 200.
    config = _config(tiny_model_dir, data, out, training_steps=200, checkpoint_every_steps=50)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(progress=run(config)), daemon=True)
    thread.start()
    deadline, killed = time.monotonic() + 240, 0
    while time.monotonic() < deadline and not killed:
        progress_file = out / PROGRESS_FILE
        if progress_file.exists():
            progress = TrainProgress.model_validate_json(progress_file.read_text())
            if progress.checkpoints and progress.state == "running":
                for pid in _train_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        time.sleep(0.2)
    assert killed, "never saw a checkpoint to kill the worker after"
    thread.join(timeout=300)
    final: TrainProgress = result["progress"]
    assert (final.state, final.step, final.attempt) == ("succeeded", 200, 2)
    assert final.resumed_from_step in (50, 100, 150)  # from a checkpoint, not from scratch
