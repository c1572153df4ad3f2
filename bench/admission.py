"""Admission: how fast quota admission decides, as a pure function and through the operator.

Pure part: each round admits a tenant's pending FineTuneJobs and ModelDeployments against its
quotas (`tramontane_operator.quotas.admit`). The baseline, measured in the same run, is the
floor any admission has to pay: ordering the same workloads (`sorted` by priority and age).
Figures: `admissions_per_s` (workloads decided per second), `admit_p95_s` (one round, 95th
percentile), and `overhead_ratio` (round time / baseline sort time).

End-to-end part (`e2e_*`): the operator as its own process (`tramontane operator run`, as
`operator_reconcile.py` runs it) against three KMock emulators served from this process (hub
+ two members, schema validation off; the hub has a ComputeCluster with `inCluster` so it is
a third member), a fake KubeRay for RayServices and `FakeRayJobs` for RayJobs. 10 Tenants
each own a namespace and a quota of 6 H100s; N workloads (3 FineTuneJobs to 1
ModelDeployment, each taking one H100: a FineTuneJob 1 worker x 1 GPU with a valid file://
dataset, a ModelDeployment maxReplicas 1 x 1 GPU) are created at once: 60 are admitted, the
rest queue. Then the bench deletes admitted workloads at a steady rate (tenants in turn) until
every workload was admitted. Each release frees one GPU of its tenant's quota and each
admission takes one, so the k-th admission of a tenant after the releases began is the one
its k-th release let in: `e2e_admit_p95_s` is the 95th percentile of (admission - that
release), admission being when a watch of the hub first shows it (FineTuneJob: condition
Admitted=True; ModelDeployment: phase no longer Queued); `e2e_admissions_per_s` is the
admissions after the first release over the time to the last one (at most the release rate,
`--release-rate`, default 100/s). `e2e_admit_p95_latest_release_s` measures from the most
recent release of the tenant before the admission instead (the same when the operator keeps
up; smaller when it lags). The CPU of the operator and of this process (emulators, fakes,
watches, the releasing client) is reported over the release phase (one core = 100 %).

    python bench/admission.py --quick      # 30 pure rounds; 100 workloads end to end (< 1 min)
    python bench/admission.py              # 200 pure rounds; 1,000 workloads end to end
    python bench/admission.py --pure-only  # the pure figures alone
    TRAMONTANE_BENCH_PROFILE=/tmp/op.prof python bench/admission.py   # operator under cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tramontane_api.v1alpha1.tenant import Quotas
from tramontane_operator.quotas import Workload, admit

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "operator"), str(REPO / "bench")]

import aiohttp  # noqa: E402
from operator_reconcile import (  # noqa: E402
    _cpu_seconds,
    _free_port,
    _metric,
    operator_argv,
    operator_env,
    wait_operator_ready,
)

from fake_rayjob import FakeRayJobs  # noqa: E402
from manifests import AKS, HUB, ONPREM, SYSTEM_NS, compute_cluster  # noqa: E402
from operator_harness import Clusters, FakeKubeRay  # noqa: E402
from tramontane_kube import (  # noqa: E402
    COMPUTECLUSTER,
    FINETUNEJOB,
    MODELDEPLOYMENT,
    SECRET,
    TENANT,
    ClusterConfig,
    KubeClient,
    NotFound,
    ResourceRef,
)

T0 = datetime(2026, 11, 26, tzinfo=UTC)
GPU_TYPES = ("H100", "A100-80GB", "L40S")


def workloads(n: int, seed: int) -> list[Workload]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = "FineTuneJob" if rng.random() < 0.8 else "ModelDeployment"
        out.append(
            Workload(
                kind=kind,  # type: ignore[arg-type]
                namespace=f"team-{i % 7}",
                name=f"w{i}",
                created=T0 + timedelta(seconds=rng.randint(0, 86_400)),
                gpus={rng.choice(GPU_TYPES): rng.choice((1, 2, 4, 8))},
                priority=rng.choice((0, 0, 0, 10, 100)),
                admitted=rng.random() < 0.2,
            )
        )
    return out


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


TENANTS = 10
GPUS_PER_TENANT = 6  # H100 quota: each workload takes one, so each release admits one
CLUSTER_GPUS = 10_000  # the members never bind: the tenants' quotas do
CONCURRENCY = 16
GOOD = {"messages": [{"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris"}]}  # fmt: skip


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ns(t: int) -> str:
    return f"team-{t}"


def tenant(t: int) -> dict[str, Any]:
    quotas = {"gpus": {"H100": GPUS_PER_TENANT}, "maxConcurrentFineTuneJobs": GPUS_PER_TENANT,
              "maxModelDeployments": GPUS_PER_TENANT}  # fmt: skip
    return {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": f"tenant-{t}"},
            "spec": {"namespaces": [_ns(t)], "quotas": quotas}}  # fmt: skip


def fine_tune_job(name: str, namespace: str, data: str, out: Path) -> dict[str, Any]:
    spec = {
        "baseModel": {"uri": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "trainingFiles": [{"uri": data}],
        "hyperparameters": {"trainingSteps": 100, "batchSize": 2},
        "resources": {"workers": 1, "gpusPerWorker": 1, "gpuType": "H100"},
        "placement": {"clusterSelector": {"matchLabels": {"tier": "gpu"}}},
        "output": {"uri": (out / name).as_uri()},
    }
    return {"apiVersion": "tramontane.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip


def model_deployment(name: str, namespace: str) -> dict[str, Any]:
    spec = {
        "model": {"name": "mistral-7b", "source": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "resources": {"gpu": {"type": "H100", "count": 1}},
        "scaling": {"replicas": 1, "minReplicas": 1, "maxReplicas": 1},
        "placement": {"clusterSelector": {"matchLabels": {"tier": "gpu"}}, "strategy": "Spread"},
    }
    return {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip


@dataclass
class Seen:
    kind: str  # "FineTuneJob" / "ModelDeployment"
    namespace: str
    name: str
    admitted_at: float | None = None  # first seen admitted (monotonic)
    queued: bool = False  # seen Queued (or validated and waiting) at least once
    released_at: float | None = None
    gone_at: float | None = None  # its DELETED event (the operator removed its finalizer)


@dataclass
class Tracker:
    """What the bench sees of every workload, from watches of the hub (a client's view)."""

    workloads: dict[tuple[str, str, str], Seen]
    releases: dict[str, list[float]] = field(default_factory=dict)  # namespace -> times

    def admitted(self) -> list[Seen]:
        return [w for w in self.workloads.values() if w.admitted_at is not None]

    def settled(self) -> int:
        return sum(1 for w in self.workloads.values() if w.admitted_at is not None or w.queued)

    def gone(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        w = self.workloads.get((kind, meta.get("namespace") or "", meta.get("name") or ""))
        if w is not None and w.gone_at is None:
            w.gone_at = time.monotonic()

    def see(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        w = self.workloads.get((kind, meta.get("namespace") or "", meta.get("name") or ""))
        if w is None or w.admitted_at is not None:
            return
        status = obj.get("status") or {}
        if kind == "ModelDeployment":
            phase = status.get("phase")
            if phase == "Queued":
                w.queued = True
            elif phase:
                w.admitted_at = time.monotonic()
            return
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Admitted":
                if cond.get("status") == "True":
                    w.admitted_at = time.monotonic()
                else:
                    w.queued = True


async def _watch(client: KubeClient, ref: ResourceRef, kind: str, tracker: Tracker) -> None:
    while True:
        with contextlib.suppress(Exception):
            async for event in client.watch(ref, None):
                if event.get("type") in ("ADDED", "MODIFIED"):
                    tracker.see(kind, event.get("object") or {})
                elif event.get("type") == "DELETED":
                    tracker.gone(kind, event.get("object") or {})
        await asyncio.sleep(0.1)


async def _bounded(items: list[Any], fn: Any) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


async def _platform(api: KubeClient, clusters: Clusters) -> None:
    """Three clusters with GPUs: the hub (inCluster: it is a member too) and two members."""
    gpus = {"H100": CLUSTER_GPUS}
    hub = compute_cluster(
        HUB, cloud="azure", region="westeurope", gpus=gpus, connection={"inCluster": True}
    )
    await api.create(COMPUTECLUSTER, hub)
    for name in (AKS, ONPREM):
        data = base64.b64encode(clusters[name].kubeconfig().encode()).decode()
        secret = f"{name}-kubeconfig"
        await api.create(SECRET, {"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": secret, "namespace": SYSTEM_NS},
                                  "data": {"kubeconfig": data}})  # fmt: skip
        ref = {"namespace": SYSTEM_NS, "name": secret}
        await api.create(COMPUTECLUSTER, compute_cluster(
            name, cloud="onprem", region=name, gpus=gpus,
            connection={"kubeconfigSecretRef": ref}))  # fmt: skip


async def _passes(session: aiohttp.ClientSession, port: int) -> dict[str, tuple[float, float]]:
    """Kind -> (seconds, count) of the operator's reconciles so far (its own histogram)."""
    out = {}
    for kind in ("FineTuneJob", "ModelDeployment"):
        label = f'{{kind="{kind}"}}'
        total = await _metric(session, port, f"tramontane_reconcile_duration_seconds_sum{label}")
        count = await _metric(session, port, f"tramontane_reconcile_duration_seconds_count{label}")
        out[kind] = (sum(total), sum(count))
    return out


def _pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def run_e2e(
    n: int, release_rate: float, timeout_s: float, log_path: str | None
) -> dict[str, Any]:
    clusters = await Clusters.start(HUB, [AKS, ONPREM], validate=False)
    kuberay = FakeKubeRay(clusters.all, interval_s=0.5)
    rayjobs = FakeRayJobs(clusters.all, interval_s=0.5)
    api = KubeClient("bench", ClusterConfig(server=clusters.hub.url))
    watcher = KubeClient("watch", ClusterConfig(server=clusters.hub.url))
    tmp = tempfile.TemporaryDirectory(prefix="admission-")
    data_path = Path(tmp.name) / "train.jsonl"
    data_path.write_text((json.dumps(GOOD) + "\n") * 4)
    metrics = _free_port()
    proc = None
    log_file: Any = open(log_path, "w") if log_path else asyncio.subprocess.DEVNULL  # noqa: SIM115
    tasks: list[asyncio.Task[None]] = []
    session = aiohttp.ClientSession()
    try:
        await _platform(api, clusters)
        for t in range(TENANTS):
            await api.create(TENANT, tenant(t))
        kubeconfig = Path(tmp.name) / "kubeconfig.yaml"
        kubeconfig.write_text(clusters[HUB].kubeconfig())
        # local mode: file:// datasets are read by the operator (a setting being added)
        env = operator_env(str(kubeconfig), TRAMONTANE_LOCAL_MODE="true")
        proc = await asyncio.create_subprocess_exec(
            *operator_argv(metrics), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log_file
        )
        waited = await wait_operator_ready(proc, clusters, session, metrics)
        _log(f"operator elected and connected after {waited:.1f}s")
        await kuberay.start()
        await rayjobs.start()

        manifests: list[tuple[str, dict[str, Any]]] = []
        workloads: dict[tuple[str, str, str], Seen] = {}
        for i in range(n):
            ns = _ns(i % TENANTS)
            ftj = (i // TENANTS) % 4 != 3  # three FineTuneJobs to one ModelDeployment
            name = f"w-{i:04d}"
            kind = "FineTuneJob" if ftj else "ModelDeployment"
            body = fine_tune_job(name, ns, data_path.as_uri(), Path(tmp.name)) if ftj \
                else model_deployment(name, ns)  # fmt: skip
            manifests.append((kind, body))
            workloads[(kind, ns, name)] = Seen(kind, ns, name)
        tracker = Tracker(workloads)
        for ref, kind in ((FINETUNEJOB, "FineTuneJob"), (MODELDEPLOYMENT, "ModelDeployment")):
            tasks.append(asyncio.create_task(_watch(watcher, ref, kind, tracker)))
        start = time.monotonic()
        await _bounded(manifests, lambda m: api.create(
            FINETUNEJOB if m[0] == "FineTuneJob" else MODELDEPLOYMENT, m[1]))  # fmt: skip
        _log(f"created {n} workloads ({sum(k == 'FineTuneJob' for k, _ in manifests)} "
             f"FineTuneJobs) in {time.monotonic() - start:.1f}s")  # fmt: skip
        while tracker.settled() < n and time.monotonic() - start < timeout_s:
            if proc.returncode is not None:
                raise RuntimeError(f"the operator exited ({proc.returncode}) mid-run")
            await asyncio.sleep(0.2)
        initial = len(tracker.admitted())
        _log(f"settled {tracker.settled()}/{n} ({initial} admitted) after "
             f"{time.monotonic() - start:.1f}s")  # fmt: skip
        await asyncio.sleep(1.0)

        # Release admitted workloads at a steady rate, tenants in turn, until every workload
        # was admitted (or the time is up).
        cpu0, own0 = _cpu_seconds(proc.pid), _cpu_seconds(os.getpid())
        passes0 = await _passes(session, metrics)
        release_start = time.monotonic()

        async def release(w: Seen) -> None:
            ref = FINETUNEJOB if w.kind == "FineTuneJob" else MODELDEPLOYMENT
            with contextlib.suppress(NotFound):
                await api.delete(ref, w.namespace, w.name)

        async def releaser() -> None:
            turn, idle, pending = 0, 0, set()
            tick = release_start
            while time.monotonic() - release_start < timeout_s:
                if all(w.admitted_at is not None for w in workloads.values()):
                    break
                if proc.returncode is not None:  # e.g. it lost its Lease: see its log
                    raise RuntimeError(f"the operator exited ({proc.returncode}) mid-run")
                ns = _ns(turn % TENANTS)
                turn += 1
                candidates = [w for w in workloads.values() if w.namespace == ns
                              and w.admitted_at is not None and w.released_at is None]  # fmt: skip
                if not candidates:
                    idle += 1
                    if idle >= TENANTS:  # nothing admitted to release: wait for the operator
                        idle = 0
                        await asyncio.sleep(0.01)
                    continue
                idle = 0
                w = min(candidates, key=lambda c: c.admitted_at or 0.0)
                tick += 1 / release_rate
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                w.released_at = time.monotonic()
                tracker.releases.setdefault(ns, []).append(w.released_at)
                task = asyncio.create_task(release(w))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending, return_exceptions=True)

        await releaser()
        end = time.monotonic()
        operator_cpu_s = _cpu_seconds(proc.pid) - cpu0
        operator_cpu = operator_cpu_s / (end - release_start) * 100
        passes = await _passes(session, metrics)
        own_cpu = (_cpu_seconds(os.getpid()) - own0) / (end - release_start) * 100
        measured = [w for w in workloads.values()
                    if w.admitted_at is not None and w.admitted_at > release_start]  # fmt: skip
        # Each release frees one GPU of its tenant's quota (every workload takes one), and
        # each admission takes one: the k-th admission of a tenant after the releases began
        # is let in by its k-th release (FIFO per tenant).
        latencies, latest = [], []
        for t in range(TENANTS):
            ns = _ns(t)
            rel = sorted(tracker.releases.get(ns, []))
            adm = sorted(w.admitted_at or 0.0 for w in measured if w.namespace == ns)
            latencies += [a - r for a, r in zip(adm, rel, strict=False)]
            latest += [a - max((r for r in rel if r <= a), default=a) for a in adm]
        last = max((w.admitted_at or 0.0 for w in measured), default=release_start)
        # How much of it is the deletion itself (cleanup in every cluster, the finalizer).
        to_gone = sorted(
            w.gone_at - w.released_at
            for w in workloads.values()
            if w.gone_at is not None and w.released_at is not None
        )
        span = last - release_start
        return {
            "e2e_workloads": n,
            "e2e_fine_tune_jobs": sum(k == "FineTuneJob" for k, _ in manifests),
            "e2e_initially_admitted": initial,
            "e2e_admitted": len(measured),
            "e2e_unadmitted": n - len(tracker.admitted()),
            "e2e_releases": sum(len(v) for v in tracker.releases.values()),
            "e2e_release_rate_per_s": release_rate,
            "e2e_admissions_per_s": round(len(measured) / span, 1) if span > 0 else 0.0,
            "e2e_admit_p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "e2e_admit_p95_s": round(_pctl(latencies, 0.95), 3) if latencies else None,
            "e2e_admit_max_s": round(max(latencies), 3) if latencies else None,
            "e2e_release_to_gone_p50_s": round(statistics.median(to_gone), 3) if to_gone else None,
            "e2e_release_to_gone_p95_s": round(_pctl(to_gone, 0.95), 3) if to_gone else None,
            "e2e_admit_p95_latest_release_s": round(_pctl(latest, 0.95), 3) if latest else None,
            "e2e_operator_cpu_pct": round(operator_cpu, 1),
            "e2e_operator_cpu_ms_per_admission": round(
                operator_cpu_s / max(1, len(measured)) * 1e3, 1
            ),
            **{
                f"e2e_{kind}_passes": int(passes[kind][1] - passes0[kind][1])
                for kind in ("FineTuneJob", "ModelDeployment")
            },
            **{
                f"e2e_{kind}_pass_mean_ms": round(
                    (passes[kind][0] - passes0[kind][0])
                    / max(1.0, passes[kind][1] - passes0[kind][1])
                    * 1000,
                    1,
                )
                for kind in ("FineTuneJob", "ModelDeployment")
            },
            "e2e_emulators_cpu_pct": round(own_cpu, 1),
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await kuberay.stop()
        await rayjobs.stop()
        await api.close()
        await watcher.close()
        await clusters.close()
        tmp.cleanup()


def pure(rounds: int, pending: int) -> dict[str, Any]:
    """The pure figures: `admit()` over `rounds` batches of `pending` workloads."""
    quotas = Quotas(
        gpus={"H100": 64, "A100-80GB": 128, "L40S": 32},
        max_concurrent_fine_tune_jobs=50,
        max_model_deployments=40,
    )
    batches = [workloads(pending, seed) for seed in range(rounds)]

    admit_times, sort_times = [], []
    decided = 0
    for batch in batches:
        start = time.perf_counter()
        result = admit(quotas, batch)
        admit_times.append(time.perf_counter() - start)
        decided += len(result.admitted) + len(result.queued)

        start = time.perf_counter()
        sorted(batch, key=lambda w: (-w.priority, w.created, w.key))
        sort_times.append(time.perf_counter() - start)

    total = sum(admit_times)
    figures = {
        "pending_per_round": pending,
        "rounds": rounds,
        "admissions_per_s": round(decided / total, 1),
        "admit_p50_s": round(statistics.median(admit_times), 6),
        "admit_p95_s": round(p95(admit_times), 6),
        "baseline_sort_p50_s": round(statistics.median(sort_times), 6),
        "overhead_ratio": round(statistics.median(admit_times) / statistics.median(sort_times), 2),
    }
    _log(
        f"admit {pending} pending: p50 {figures['admit_p50_s'] * 1e3:.2f} ms, "
        f"p95 {figures['admit_p95_s'] * 1e3:.2f} ms; sort baseline "
        f"{figures['baseline_sort_p50_s'] * 1e3:.2f} ms"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run well under a minute")
    parser.add_argument("--pending", type=int, default=2000, help="workloads per pure round")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workloads", type=int, default=None, help="end to end (default 1000)")
    parser.add_argument("--release-rate", type=float, default=100.0, help="releases per second")
    parser.add_argument("--pure-only", action="store_true", help="skip the end-to-end part")
    parser.add_argument("--operator-log", help="write the operator's log to this file")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    figures: dict[str, Any] = {"bench": "admission"}
    figures |= pure(30 if args.quick else args.rounds, args.pending)
    if not args.pure_only:
        n = args.workloads or (100 if args.quick else 1000)
        timeout_s = 45.0 if args.quick else 300.0
        e2e = asyncio.run(run_e2e(n, args.release_rate, timeout_s, args.operator_log))
        _log(
            f"end to end: {e2e['e2e_admitted']} admissions, {e2e['e2e_admissions_per_s']}/s, "
            f"p50 {e2e['e2e_admit_p50_s']} s, p95 {e2e['e2e_admit_p95_s']} s"
        )
        figures |= e2e
    figures["load_avg_1m_before"] = round(load_before, 2)
    figures["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    figures["cpus"] = os.cpu_count()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
