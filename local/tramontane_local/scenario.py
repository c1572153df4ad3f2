"""The quickstart scenario: every step of the loop a tenant goes through, on the local stack.

1. the tiny Mistral (written on first use: random weights, the real v3 tokenizer) becomes
   Ready; 2. a chat through the router's HTTP API with the tenant's key (the `mistralai` SDK);
3. the FineTuneJob trains a LoRA adapter on the bundled Q&A pairs; 4. its deployment gate, the
Evaluation `qa-tune-gate`, scores the adapter and the base model on the same questions (exact
match 1.0 needed, and 0.5 better than the base model) and lets the adapter be deployed; 5. through
the router, the adapter (`<model>:qa`) answers each question with its trained answer while
the base model does not. Each step reports its result through `report`; a step that fails
raises `StepFailed` with what it saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tramontane_kube import EVALUATION, FINETUNEJOB, MODELDEPLOYMENT

from .manifests import quickstart_dataset, quickstart_eval_dataset, quickstart_pairs
from .observe import condition, ready
from .stack import LocalStack

MODEL = "tiny-mistral"
ADAPTER = "qa"
GATE = "qa-tune-gate"
NAMESPACE = "default"
Report = Callable[[str, bool, str], None]  # (step, succeeded, result)


class StepFailed(Exception):
    """A step of the scenario did not reach its result."""


def prepare(root: Path) -> None:
    """Write what the quickstart's manifests point at: the tiny model and the dataset."""
    from tramontane_workers.models.tiny import write_tiny_mistral

    model = root / "models" / MODEL
    if not (model / "config.json").exists():
        write_tiny_mistral(model)
    data = root / "data" / "qa.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(quickstart_dataset())
    (data.parent / "qa-eval.jsonl").write_text(quickstart_eval_dataset())


async def _until(
    what: str, check: Callable[[], Awaitable[Any]], timeout_s: float, interval_s: float = 0.5
) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except StepFailed:
            raise
        except Exception as exc:  # not there yet (a 404 while the router's table catches up)
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(interval_s)
    raise StepFailed(f"{what}: not within {timeout_s:.0f} s (last seen: {last!r})")


async def run(stack: LocalStack, api_key: str, report: Report) -> bool:
    """Run every step; True when all succeeded."""
    from mistralai.client import Mistral

    if stack.client is None or stack.router is None:
        raise RuntimeError("the stack is not started")
    client = stack.client
    base_url = f"http://127.0.0.1:{stack.router.http_port}"
    pairs = quickstart_pairs()

    async def ask(model: str, question: str) -> str:
        async with Mistral(api_key=api_key, server_url=base_url) as mistral:
            answer = await mistral.chat.complete_async(
                model=model,
                messages=[{"role": "user", "content": question}],
                max_tokens=8,
                temperature=0.0,
            )
        content = answer.choices[0].message.content if answer.choices else None
        return content.strip() if isinstance(content, str) else ""

    async def md() -> dict[str, Any]:
        return await client.get(MODELDEPLOYMENT, NAMESPACE, "quickstart") or {}

    async def ftj() -> dict[str, Any]:
        return await client.get(FINETUNEJOB, NAMESPACE, "qa-tune") or {}

    step = "ModelDeployment quickstart Ready"
    try:
        started = time.monotonic()
        await _until(step, lambda: _ready(md), 240)
        report(step, True, f"{MODEL} served in {time.monotonic() - started:.0f} s")

        step = f"chat with {MODEL} through the router"
        reply = await _until(step, lambda: ask(MODEL, "Say hello to Tramontane."), 120, 1.0)
        report(step, True, f"{reply!r} (random weights: word salad is expected)")

        step = "FineTuneJob qa-tune trains the adapter"
        started = time.monotonic()
        final = await _until(step, lambda: _finished(ftj), 600, 1.0)
        if final.get("phase") != "Succeeded":
            message = condition(final, "Ready").get("message") or final.get("phase")
            raise StepFailed(f"{step}: {final.get('phase')}: {message}")
        loss = (final.get("progress") or {}).get("trainLoss")
        report(step, True, f"Succeeded in {time.monotonic() - started:.0f} s, train loss {loss}")

        step = f"gate {GATE}"
        started = time.monotonic()
        gate = await _until(step, lambda: _judged(client), 300, 1.0)
        scores = gate_scores(gate)
        if gate.get("phase") != "Passed":
            obj = {"status": gate}
            why = condition(obj, "Passed").get("message") or condition(obj, "Evaluated").get(
                "message"
            )
            raise StepFailed(f"{step} {gate.get('phase')}: {scores}: {why}")
        report(step, True, f"Passed: {scores} in {time.monotonic() - started:.0f} s")

        step = f"adapter {MODEL}:{ADAPTER} deployed"
        await _until(step, lambda: _deployed(ftj, md), 240)
        model = f"{MODEL}:{ADAPTER}"
        answers = await _until(step, lambda: _trained(ask, model, pairs), 240, 1.0)
        report(step, True, "served through the router")

        for (question, expected), answer in zip(pairs, answers, strict=True):
            step = f"{model}: {question}"
            if answer != expected:
                raise StepFailed(f"{step}: answered {answer!r}, trained {expected!r}")
            report(step, True, repr(answer))
        step = f"{MODEL} (no adapter) does not know the trained answers"
        base = [await ask(MODEL, q) for q, _ in pairs]
        same = [b for b, (_, a) in zip(base, pairs, strict=True) if b == a]
        if same:
            raise StepFailed(f"{step}: the base model answered {same!r}")
        report(step, True, ", ".join(repr(b) for b in base))
    except StepFailed as exc:
        report(step, False, str(exc))
        return False
    return True


def gate_scores(status: dict[str, Any]) -> str:
    """`exactMatch 1.00 (base model 0.00)` for each of the gate's results."""
    parts = []
    for r in status.get("results") or []:
        score, base = r.get("score"), r.get("baseline")
        text = f"{r.get('metric')} {'-' if score is None else f'{score:.2f}'}"
        if base is not None:
            text += f" (base model {base:.2f})"
        parts.append(text)
    return ", ".join(parts) or "no scores"


async def _judged(client: Any) -> dict[str, Any] | None:
    """The gate's status once its run ended (Passed, Failed or Error)."""
    status = ((await client.get(EVALUATION, NAMESPACE, GATE)) or {}).get("status") or {}
    return dict(status) if status.get("phase") in ("Passed", "Failed", "Error") else None


async def _ready(md: Callable[[], Awaitable[dict[str, Any]]]) -> bool:
    return ready(await md())


async def _finished(ftj: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any] | None:
    status = (await ftj()).get("status") or {}
    return dict(status) if status.get("phase") in ("Succeeded", "Failed", "Cancelled") else None


async def _deployed(
    ftj: Callable[[], Awaitable[dict[str, Any]]], md: Callable[[], Awaitable[dict[str, Any]]]
) -> bool:
    deployed = condition(await ftj(), "Deployed").get("status") == "True"
    served = ADAPTER in (((await md()).get("status") or {}).get("adapters") or [])
    return deployed and served


async def _trained(
    ask: Callable[[str, str], Awaitable[str]], model: str, pairs: list[tuple[str, str]]
) -> list[str]:
    """The adapter's answers (raises while the router or the replica does not serve it yet)."""
    return [await ask(model, q) for q, _ in pairs]
