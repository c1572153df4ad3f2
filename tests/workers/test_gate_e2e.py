"""The deployment gate end to end, everything real (issue #16): "the gate blocks an adapter
trained on wrong answers and passes one trained on right answers".

`tramontane local up -f` runs the real operator, router, API server and local KubeRay (RayJobs
as processes on a local Ray) in a subprocess. Two FineTuneJobs train LoRA adapters of the tiny
Mistral (random weights, the real v3 tokenizer): one on the quickstart's right answers, one on
wrong answers. Both are gated on the same evaluation dataset (the right answers) with exactMatch
>= 1.0 against the base model. The real evaluator scores each adapter: the first's gate passes,
its adapter is deployed and answers the trained answers through the router; the second's fails,
the job says `Deployed=False EvaluationFailed` with the score, and the router does not serve it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_local_mode import _cli, _nothing_left, _output, _start, _wait_for_state

from tramontane_kube import EVALUATION, FINETUNEJOB, MODELDEPLOYMENT, ClusterConfig, KubeClient
from tramontane_local import manifests as mf

pytestmark = pytest.mark.slow
NS = "default"
KEY = "gate-e2e-key-0123456789abcdef"
WRONG = {"Paris": "Lyon", "William Shakespeare": "Victor Hugo", "Blue": "Green"}


def _chat_jsonl(pairs: list[tuple[str, str]]) -> str:
    lines = []
    for question, answer in pairs:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}) + "\n")
    return "".join(lines)


def _manifests(home: Path) -> Path:
    """The quickstart's tenant, key and tiny model, and two gated jobs: right and wrong."""
    local = home / "local"
    pairs = mf.quickstart_pairs()
    data = local / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "right.jsonl").write_text(_chat_jsonl(pairs))
    (data / "wrong.jsonl").write_text(_chat_jsonl([(q, WRONG[a]) for q, a in pairs]))
    (data / "qa-eval.jsonl").write_text(mf.quickstart_eval_dataset())
    from tramontane_workers.models.tiny import write_tiny_mistral

    write_tiny_mistral(local / "models" / "tiny-mistral")
    objects = [m.obj for m in mf.quickstart(local.as_uri(), KEY)]
    (template,) = [o for o in objects if o["kind"] == "FineTuneJob"]
    tenant = next(o for o in objects if o["kind"] == "Tenant")
    tenant["spec"]["quotas"]["maxConcurrentFineTuneJobs"] = 2
    docs = [o for o in objects if o["kind"] != "FineTuneJob"]
    for name in ("right", "wrong"):
        job = copy.deepcopy(template)
        job["metadata"]["name"] = f"qa-{name}"
        job["spec"]["trainingFiles"] = [{"uri": (data / f"{name}.jsonl").as_uri()}]
        job["spec"]["output"]["uri"] = (local / "finetune" / f"qa-{name}").as_uri()
        job["spec"]["autoDeploy"]["adapterName"] = f"qa-{name}"
        gate = job["spec"]["autoDeploy"]["evaluation"]
        assert gate["metrics"] == [{"name": "exactMatch", "min": 1.0, "minDelta": 0.5}]
        docs.append(job)
    path = home / "gate.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def _ask(http: str, model: str, question: str) -> tuple[int, str]:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": 8, "temperature": 0.0}  # fmt: skip
    request = urllib.request.Request(
        f"{http}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    return 200, str(answer["choices"][0]["message"]["content"]).strip()


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for found in ((obj or {}).get("status") or {}).get("conditions") or []:
        if found.get("type") == type_:
            return dict(found)
    return {}


async def _until(what: str, check: Any, timeout_s: float, home: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(1.0)
    raise AssertionError(f"{what}: not within {timeout_s} s\n{_output(home)[-3000:]}")


async def test_the_gate_deploys_the_right_adapter_and_blocks_the_wrong_one(tmp_path: Path) -> None:
    home = tmp_path
    started = time.monotonic()
    proc = _start(home, "-f", str(_manifests(home)))
    try:
        state = _wait_for_state(home, proc)
        api = KubeClient("local", ClusterConfig(server=str(state["apiServer"])), attempts=2)
        try:

            async def gated(name: str) -> dict[str, Any] | None:
                job = await api.get(FINETUNEJOB, NS, name)
                deployed = _condition(job, "Deployed")
                return job if deployed.get("status") in ("True", "False") else None

            right = await _until("qa-right judged", lambda: gated("qa-right"), 540, home)
            wrong = await _until("qa-wrong judged", lambda: gated("qa-wrong"), 300, home)
            right_gate = await api.get(EVALUATION, NS, "qa-right-gate")
            wrong_gate = await api.get(EVALUATION, NS, "qa-wrong-gate")
            md = await api.get(MODELDEPLOYMENT, NS, "quickstart")
        finally:
            await api.close()
        judged_s = time.monotonic() - started

        # The right adapter: its gate passed on real scores, and it is deployed.
        assert right["status"]["phase"] == "Succeeded"
        assert _condition(right, "Deployed")["reason"] == "AdapterDeployed", right["status"]
        assert (right_gate or {})["status"]["phase"] == "Passed", right_gate
        (scored,) = right_gate["status"]["results"]
        assert scored["metric"] == "exactMatch" and scored["score"] == 1.0
        assert scored["baseline"] == 0.0 and scored["passed"] is True

        # The wrong adapter: trained fine, gate failed with its score, not deployed.
        assert wrong["status"]["phase"] == "Succeeded"
        deployed = _condition(wrong, "Deployed")
        assert deployed["status"] == "False" and deployed["reason"] == "EvaluationFailed", deployed
        assert "Evaluation qa-wrong-gate Failed: exactMatch 0 misses >= 1" in deployed["message"]
        assert "not served" in deployed["message"]
        assert (wrong_gate or {})["status"]["phase"] == "Failed"
        (missed,) = wrong_gate["status"]["results"]
        assert missed["score"] == 0.0 and missed["passed"] is False
        adapters = (md or {}).get("status", {}).get("adapters") or []
        assert "qa-right" in adapters and "qa-wrong" not in adapters

        # Through the router: the right adapter answers, the wrong one is not a model.
        http = str(state["http"])
        for question, answer in mf.quickstart_pairs():
            deadline = time.monotonic() + 120
            code, got = _ask(http, "tiny-mistral:qa-right", question)
            while code != 200 and time.monotonic() < deadline:  # the replica loads it
                time.sleep(1.0)
                code, got = _ask(http, "tiny-mistral:qa-right", question)
            assert (code, got) == (200, answer)
            code, got = _ask(http, "tiny-mistral:qa-wrong", question)
            assert code == 404, (code, got)
        down = _cli(home, "down", timeout=180)
        assert down.returncode == 0, down.stderr
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    _nothing_left(state)
    print(f"gate end to end: both gates judged after {judged_s:.0f} s, "
          f"all done in {time.monotonic() - started:.0f} s")  # fmt: skip
