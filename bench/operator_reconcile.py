"""Benchmark: the operator reconciling many ModelDeployments at once against emulated clusters.

The operator runs as `tramontane operator run` in its own process (so its RSS and CPU are its
own) against three KMock emulators served from this process (hub + two members, as in the
operator tests; schema validation off, a fake KubeRay on). N ModelDeployments (GPU, Spread over
the members by free GPUs) are created at once through the hub's API. Figures:

- `reconciles_per_s`: ModelDeployment reconciles (the operator's own counter) per second
  from the first create until every ModelDeployment has a status naming its cluster;
- `create_to_children_p50_s` / `_p99_s`: from a ModelDeployment's create to its RayService's;
  `create_to_status_p99_s`: to its status naming its cluster (polled every 0.1 s): under load
  a pass creates children first and the status follows at low priority;
- `converge_cpu_pct`: the operator's CPU while converging (one core = 100 %: near 100 means
  the operator's own work is the bottleneck, well below means it waits on the API);
  `emulators_cpu_pct`: the same for this process (the emulated API servers, the fake KubeRay
  and the client creating the ModelDeployments): near 100 means the emulators are;
  `operator_cpu_ms_per_md`: the operator's CPU while converging per ModelDeployment (the
  figure least moved by other load on the machine);
- `rss_mb`: operator RSS once everything is Ready; `idle_cpu_pct`: its CPU while nothing
  changes (one core = 100 %), once it has caught up (a 2 s window under 5 %);
- baseline, same run: the same RayServices created directly by a plain client at the same
  concurrency (`baseline_creates_per_s`), and `children_rate_ratio` = the operator's
  children-per-second over that baseline (the emulators' own cost cancels out).

    .venv/bin/python bench/operator_reconcile.py --quick     # 100 ModelDeployments
    .venv/bin/python bench/operator_reconcile.py             # 1,000
    TRAMONTANE_BENCH_PROFILE=/tmp/op.prof .venv/bin/python bench/operator_reconcile.py
                                                # the operator under cProfile (pstats file)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "operator")]

import aiohttp  # noqa: E402

from manifests import AKS, HUB, NS, ONPREM, SYSTEM_NS, compute_cluster, model_deployment  # noqa: E402
from operator_harness import RAYSERVICES, Clusters, FakeKubeRay  # noqa: E402
from tramontane_kube import (  # noqa: E402
    COMPUTECLUSTER,
    MODELDEPLOYMENT,
    RAYSERVICE,
    SECRET,
    ClusterConfig,
    Conflict,
    KubeClient,
)

MDS = "tramontane.dev/v1alpha1/modeldeployments"
LEASES = "coordination.k8s.io/v1/leases"
PROFILE_ENV = "TRAMONTANE_BENCH_PROFILE"
CONCURRENCY = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _metric(session: aiohttp.ClientSession, port: int, prefix: str) -> list[float]:
    """The values of every sample of the operator's metrics whose line starts with `prefix`."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return [float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)]


async def _reconciles(session: aiohttp.ClientSession, port: int) -> float:
    prefix = 'tramontane_reconcile_duration_seconds_count{kind="ModelDeployment"}'
    return sum(await _metric(session, port, prefix))


async def wait_operator_ready(
    proc: asyncio.subprocess.Process, clusters: Clusters, session: aiohttp.ClientSession, port: int
) -> float:
    """Wait until the operator holds its Lease and found every cluster reachable (its control
    loop runs); seconds waited. Raises if the operator exited."""
    start = time.perf_counter()
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"the operator exited ({proc.returncode}): see --operator-log")
        leases = clusters.hub.emulator.stored_all(LEASES)
        held = any((lease.get("spec") or {}).get("holderIdentity") for lease in leases)
        try:
            reachable = await _metric(session, port, "tramontane_cluster_reachable{")
        except aiohttp.ClientError:
            reachable = []
        if held and len(reachable) == len(clusters.all) and all(reachable):
            return time.perf_counter() - start
        await asyncio.sleep(0.2)


def operator_argv(metrics_port: int) -> list[str]:
    """The operator's command line; under cProfile when `TRAMONTANE_BENCH_PROFILE` names the
    file to write the profile to (at the operator's graceful stop)."""
    profile = os.environ.get(PROFILE_ENV)
    python = [sys.executable, "-m", "cProfile", "-o", profile] if profile else [sys.executable]
    return [*python, "-m", "tramontane_cli.main", "operator", "run", "-A",
            f"--metrics-port={metrics_port}", "--liveness-port=0"]  # fmt: skip


def operator_env(kubeconfig: str, **extra: str) -> dict[str, str]:
    """The operator's environment: the hub, its cluster name, and the Lease's namespace."""
    return {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "TRAMONTANE_CLUSTER_NAME": HUB,
        "POD_NAMESPACE": SYSTEM_NS,  # leader election: the Lease lives there
        **extra,
    }


async def _bounded(items: list[Any], fn: Any) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


async def _settled(
    pid: int, below: float = 0.05, window_s: float = 2.0, limit_s: float = 120
) -> None:
    """Wait until process `pid` used under `below` of a core over `window_s` (or `limit_s`)."""
    waited = 0.0
    while waited < limit_s:
        before = _cpu_seconds(pid)
        await asyncio.sleep(window_s)
        waited += window_s
        if (_cpu_seconds(pid) - before) / window_s < below:
            return


def _p99(sorted_values: list[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(0, round(0.99 * len(sorted_values)) - 1))]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _create(client: KubeClient, ref: Any, body: dict[str, Any]) -> None:
    with contextlib.suppress(Conflict):  # a retried create whose first attempt had landed
        await client.create(ref, body)


async def _platform(api: KubeClient, clusters: Clusters, gpus: int) -> None:
    await api.create(
        COMPUTECLUSTER,
        compute_cluster(HUB, cloud="azure", region="westeurope", connection={"inCluster": True}),
    )
    for name in (AKS, ONPREM):
        data = base64.b64encode(clusters[name].kubeconfig().encode()).decode()
        secret_name = f"{name}-kubeconfig"
        await api.create(
            SECRET,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret_name, "namespace": SYSTEM_NS},
                "data": {"kubeconfig": data},
            },
        )
        ref = {"namespace": SYSTEM_NS, "name": secret_name}
        await api.create(
            COMPUTECLUSTER,
            compute_cluster(
                name,
                cloud="onprem",
                region=name,
                gpus={"H100": gpus},
                connection={"kubeconfigSecretRef": ref},
            ),
        )


def _manifest(i: int) -> dict[str, Any]:
    return model_deployment(
        f"md-{i:04d}",
        scaling={"replicas": 1, "minReplicas": 1, "maxReplicas": 2},
        placement={"clusterSelector": {"matchLabels": {"tier": "gpu"}}, "strategy": "Spread"},
    )


async def _baseline(n: int) -> float:
    """Creates/s of the same RayServices by a plain client against a fresh emulator."""
    clusters = await Clusters.start(HUB, [AKS], validate=False, kuberay_on_hub=False)
    try:
        # A RayService exactly as the operator renders it, taken from a throwaway render.
        from tramontane_api.v1alpha1 import ModelDeployment
        from tramontane_operator.builders import BuildSettings, build_rayservice
        from tramontane_operator.placement import ClusterView, PoolSize

        client = KubeClient("baseline", ClusterConfig(server=clusters[AKS].url))
        bodies = []
        for i in range(n):
            md = ModelDeployment.model_validate(_manifest(i))
            bodies.append(
                build_rayservice(md, ClusterView(AKS), PoolSize(1, 1, 2), BuildSettings(), None)
            )
        start = time.perf_counter()
        await _bounded(bodies, lambda body: _create(client, RAYSERVICE, body))
        elapsed = time.perf_counter() - start
        await client.close()
        return n / elapsed
    finally:
        await clusters.close()


async def _run(n: int, idle_s: float, timeout_s: float, log_path: str | None) -> dict[str, Any]:
    baseline_rate = await _baseline(n)
    _log(f"baseline: {baseline_rate:.0f} RayService creates/s")
    clusters = await Clusters.start(HUB, [AKS, ONPREM], validate=False)
    kuberay = FakeKubeRay(clusters.all, interval_s=0.5)
    api = KubeClient("bench", ClusterConfig(server=clusters.hub.url))
    metrics = _free_port()
    proc = None
    log_file: Any = open(log_path, "w") if log_path else asyncio.subprocess.DEVNULL  # noqa: SIM115
    try:
        await _platform(api, clusters, gpus=10 * n)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            handle.write(clusters[HUB].kubeconfig())
        env = operator_env(handle.name)
        proc = await asyncio.create_subprocess_exec(
            *operator_argv(metrics), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log_file
        )
        session = aiohttp.ClientSession()
        waited = await wait_operator_ready(proc, clusters, session, metrics)
        _log(f"operator elected and connected after {waited:.1f}s")
        await asyncio.sleep(1.0)
        await kuberay.start()
        before = await _reconciles(session, metrics)
        cpu_start = _cpu_seconds(proc.pid)
        own_cpu_start = _cpu_seconds(os.getpid())
        start = time.perf_counter()
        await _bounded(list(range(n)), lambda i: _create(api, MODELDEPLOYMENT, _manifest(i)))
        _log(f"created {n} ModelDeployments in {time.perf_counter() - start:.1f}s")

        placed_at: dict[str, float] = {}

        def placed() -> int:
            for md in clusters.hub.emulator.stored_all(MDS):
                name = md["metadata"]["name"]
                if name not in placed_at and (md.get("status") or {}).get("clusterNames"):
                    placed_at[name] = time.monotonic()
            return len(placed_at)

        while placed() < n and time.perf_counter() - start < timeout_s:
            await asyncio.sleep(0.1)
        converged_s = time.perf_counter() - start
        operator_cpu_s = _cpu_seconds(proc.pid) - cpu_start
        busy_cpu = operator_cpu_s / converged_s * 100
        emulator_cpu = (_cpu_seconds(os.getpid()) - own_cpu_start) / converged_s * 100
        _log(f"placed {placed()}/{n} in {converged_s:.1f}s")
        reconciles = await _reconciles(session, metrics) - before
        latencies, to_status = [], []
        created = {**clusters[AKS].emulator.created_at, **clusters[ONPREM].emulator.created_at}
        md_created = clusters.hub.emulator.created_at
        for i in range(n):
            name = f"md-{i:04d}"
            child = created.get(("rayservices", NS, name))
            if child is not None:
                latencies.append(child - md_created[("modeldeployments", NS, name)])
            if name in placed_at:
                to_status.append(placed_at[name] - md_created[("modeldeployments", NS, name)])
        children = sum(len(c.emulator.stored_all(RAYSERVICES)) for c in clusters.all)

        def ready() -> int:
            return sum(
                1
                for md in clusters.hub.emulator.stored_all(MDS)
                if (md.get("status") or {}).get("phase") == "Ready"
            )

        while ready() < n and time.perf_counter() - start < 2 * timeout_s:
            await asyncio.sleep(0.5)
        _log(f"ready {ready()}/{n} after {time.perf_counter() - start:.1f}s")
        await kuberay.stop()
        # Let the operator catch up (Kopf posts queued Events one by one, and works through
        # the echoes of its own status writes): idle starts after a 2 s window under 5%.
        await _settled(proc.pid)
        cpu_before = _cpu_seconds(proc.pid)
        await asyncio.sleep(idle_s)
        idle_cpu = (_cpu_seconds(proc.pid) - cpu_before) / idle_s * 100
        rss = _rss_mb(proc.pid)
        await session.close()
        latencies.sort()
        to_status.sort()
        children_rate = len(latencies) / (max(latencies) if latencies else float("inf"))
        return {
            "bench": "operator_reconcile",
            "model_deployments": n,
            "children_created": children,
            "ready": ready(),
            "converged_s": round(converged_s, 2),
            "reconciles_per_s": round(reconciles / converged_s, 1),
            "create_to_children_p50_s": round(statistics.median(latencies), 3),
            "create_to_children_p99_s": round(_p99(latencies), 3),
            "create_to_status_p99_s": round(_p99(to_status), 2),
            "converge_cpu_pct": round(busy_cpu, 1),
            "operator_cpu_ms_per_md": round(operator_cpu_s / n * 1000, 2),
            "emulators_cpu_pct": round(emulator_cpu, 1),
            "rss_mb": round(rss, 1),
            "idle_cpu_pct": round(idle_cpu, 2),
            "baseline_creates_per_s": round(baseline_rate, 1),
            "children_rate_ratio": round(children_rate / baseline_rate, 3),
        }
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await api.close()
        await clusters.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 ModelDeployments, short idle")
    parser.add_argument("-n", type=int, default=None, help="ModelDeployments (default 1000)")
    parser.add_argument("--operator-log", help="write the operator's log to this file")
    args = parser.parse_args()
    n = args.n or (100 if args.quick else 1000)
    idle_s = 5.0 if args.quick else 20.0
    timeout_s = 60.0 if args.quick else 300.0
    figures = asyncio.run(_run(n, idle_s, timeout_s, args.operator_log))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
