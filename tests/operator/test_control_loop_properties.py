"""The control loop's guarantees under random programs (hypothesis), against the real
operator and emulated clusters, black-box as in `test_control_loop.py`.

A program is a short random sequence of steps over 3 tenants (each a GPU quota and its own
namespace) and the 3 clusters (hub, aks-westeurope, onprem; 4 H100s each here): create a
ModelDeployment or a FineTuneJob (1-2 GPUs, a random tenant and priority, Spread/Pinned or a
named cluster), delete one, change a priority, take a member down or bring it back, kill and
restart the operator, finish a RayJob. Between steps and while settling, the emulators are
polled and every observed state is checked:

- per tenant, the GPUs of admitted workloads (ModelDeployments past Queued: maxReplicas x
  gpu.count; FineTuneJobs with Admitted=True that are not finished: a finished job keeps
  the condition but holds nothing) are within its quota;
- per cluster, the GPUs the children ask for (RayService worker replicas x nvidia.com/gpu;
  RayJobs neither suspended nor finished — KubeRay deletes their Ray cluster) are within the
  ComputeCluster's capacity;

and once settled (members up, operator running, statuses and children unchanged for 1 s):
nothing queued would fit its tenant's remaining quota and a cluster's free GPUs, no child
lacks a live owner in the hub, and every owner's children are where its status says (one
RayService per placed cluster, at most one RayJob).

Shape: hypothesis and pytest-asyncio's per-test event loop do not mix (a `@given` async test
would share one set of function-scoped fixtures between examples), so this is one sync test
under `@given` whose every example builds its own clusters, fakes and operator inside
`asyncio.run` and tears them down: examples share nothing. Few examples (each runs ~5-10 s
of real operator time); the whole module stays within ~2-3 minutes on 2 cores.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_rayjob import RAYJOBS, FakeRayJobs
from manifests import AKS, HUB, ONPREM, SYSTEM_NS, compute_cluster, model_deployment
from manifests import operator_settings as base_settings
from operator_harness import RAYSERVICES, Clusters, FakeKubeRay, OperatorRun
from test_control_loop import _gpus
from test_finetunejob import job
from tramontane_kube import (
    COMPUTECLUSTER,
    FINETUNEJOB,
    MODELDEPLOYMENT,
    SECRET,
    TENANT,
    ClusterConfig,
    KubeClient,
)
from tramontane_operator.builders.labels import (
    OWNER_KIND_LABEL,
    OWNER_NAME_LABEL,
    OWNER_NAMESPACE_LABEL,
    OWNER_UID_LABEL,
)
from tramontane_operator.handlers.finetunejob import POLL_ENV

MDS = "tramontane.dev/v1alpha1/modeldeployments"
FTJS = "tramontane.dev/v1alpha1/finetunejobs"
JOBS = "batch/v1/jobs"
CLUSTERS = (HUB, AKS, ONPREM)
MEMBERS = (AKS, ONPREM)
CAPACITY = 4  # H100s in each cluster
TENANTS = ("t0", "t1", "t2")
SETTLE_S = 1.0  # unchanged for this long: settled
SETTLE_TIMEOUT_S = 40.0


def ns(tenant: str) -> str:
    return f"team-{tenant}"


# Programs.
tenant_st = st.sampled_from(TENANTS)
create_md_st = st.tuples(
    st.just("md"),
    tenant_st,
    st.integers(0, 2),  # priority
    st.integers(1, 2),  # maxReplicas (x 1 H100)
    st.one_of(st.none(), st.sampled_from(CLUSTERS)),  # None: Spread; else Pinned there
)
create_ftj_st = st.tuples(
    st.just("ftj"),
    tenant_st,
    st.integers(0, 2),  # priority
    st.integers(1, 2),  # workers (x 1 H100)
    st.one_of(st.none(), st.sampled_from(CLUSTERS)),  # None: any cluster
)
# Creates are half the steps: the other steps need workloads to act on.
step_st = st.one_of(
    create_md_st,
    create_ftj_st,
    create_md_st,
    create_ftj_st,
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("priority"), st.integers(0, 20), st.integers(0, 3)),
    st.tuples(st.just("down"), st.sampled_from(MEMBERS)),
    st.tuples(st.just("up"), st.sampled_from(MEMBERS)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("finish"), st.integers(0, 20)),
)
program_st = st.tuples(
    st.lists(st.integers(1, 4), min_size=3, max_size=3),  # GPU quota per tenant
    st.lists(step_st, min_size=8, max_size=12),
)


class World:
    """The clusters, fakes and operator of one example, and what the test created."""

    def __init__(self, tmp: Path, quotas: list[int]) -> None:
        self.tmp = tmp
        self.quotas = dict(zip(TENANTS, quotas, strict=True))
        self.created: list[tuple[str, str, str]] = []  # (kind, namespace, name), live or not
        self.clusters: Clusters
        self.api: KubeClient
        self.kuberay: FakeKubeRay
        self.rayjobs: FakeRayJobs
        self.operator: OperatorRun
        self.observations = 0

    async def start(self) -> None:
        self.clusters = await Clusters.start(HUB, list(MEMBERS))
        self.api = KubeClient("test", ClusterConfig(server=self.clusters.hub.url), attempts=1)
        await platform(self.api, self.clusters)
        for t in TENANTS:
            spec = {"namespaces": [ns(t)], "quotas": {"gpus": {"H100": self.quotas[t]}}}
            tenant = {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant"}
            await self.api.create(TENANT, {**tenant, "metadata": {"name": t}, "spec": spec})
        self.kuberay = FakeKubeRay(self.clusters.all)
        self.rayjobs = FakeRayJobs(self.clusters.all)
        await self.kuberay.start()
        await self.rayjobs.start()
        settings = base_settings(self.clusters.hub.url, sweep_interval_s=0.5)
        self.operator = OperatorRun(settings)
        await self.operator.start()

    async def close(self) -> None:
        await self.operator.stop()
        await self.rayjobs.stop()
        await self.kuberay.stop()
        await self.api.close()
        violations = self.clusters.violations()
        await self.clusters.close()
        assert violations == [], "writes a real API server would reject"

    # Steps.
    async def step(self, index: int, step: tuple[Any, ...]) -> None:
        op, args = step[0], step[1:]
        live = self.live()
        pick = (
            live[args[0] % len(live)] if live and op in ("delete", "priority", "finish") else None
        )
        if op == "md":
            tenant, priority, max_replicas, pinned = args
            placement = (
                {"strategy": "Pinned", "clusters": [pinned]}
                if pinned
                else {"strategy": "Spread", "clusterSelector": {"matchLabels": {"tier": "gpu"}}}
            )
            scaling = {"replicas": max_replicas, "minReplicas": 1, "maxReplicas": max_replicas}
            body = model_deployment(
                f"md{index}", placement=placement, scaling=scaling, priority=priority
            )
            body["metadata"]["namespace"] = ns(tenant)
            await self.api.create(MODELDEPLOYMENT, body)
            self.created.append(("ModelDeployment", ns(tenant), f"md{index}"))
        elif op == "ftj":
            tenant, priority, workers, pinned = args
            resources = {"workers": workers, "gpusPerWorker": 1, "gpuType": "H100"}
            body = job(self.tmp, f"ftj{index}", resources=resources, priority=priority)
            body["metadata"]["namespace"] = ns(tenant)
            if pinned:
                body["spec"]["placement"] = {"clusters": [pinned]}
            else:
                del body["spec"]["placement"]
            await self.api.create(FINETUNEJOB, body)
            self.created.append(("FineTuneJob", ns(tenant), f"ftj{index}"))
        elif op == "down" and self.clusters[args[0]].up:
            await self.clusters[args[0]].stop()
        elif op == "up" and not self.clusters[args[0]].up:
            await self.clusters[args[0]].start()
        elif op == "restart":
            await self.operator.kill()
            await self.operator.start()
        elif pick is None:
            return
        elif op == "delete":
            await self.api.delete(ref(pick[0]), pick[1], pick[2])
        elif op == "priority":
            await self.api.patch(ref(pick[0]), pick[1], pick[2], {"spec": {"priority": args[1]}})
        elif op == "finish" and pick[0] == "FineTuneJob":
            self.rayjobs.finish(pick[2])

    def live(self) -> list[tuple[str, str, str]]:
        return [w for w in self.created if self.stored(*w) is not None]

    def stored(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        plural = MDS if kind == "ModelDeployment" else FTJS
        return self.clusters.hub.emulator.stored(plural, namespace, name)

    # Observations.
    def hub_objects(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for plural, kind in ((MDS, "ModelDeployment"), (FTJS, "FineTuneJob")):
            for obj in self.clusters.hub.emulator.stored_all(plural):
                yield kind, obj

    def admitted_gpus(self) -> Counter[str]:
        """Per tenant, the GPUs its admitted workloads count, as their statuses say."""
        out: Counter[str] = Counter()
        for kind, obj in self.hub_objects():
            tenant = obj["metadata"]["namespace"].removeprefix("team-")
            if admitted(kind, obj):
                out[tenant] += wanted(kind, obj)
        return out

    def child_gpus(self) -> Counter[str]:
        """Per cluster, the H100s its children ask for."""
        out: Counter[str] = Counter()
        for c in CLUSTERS:
            emulator = self.clusters[c].emulator
            for rs in emulator.stored_all(RAYSERVICES):
                for group in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs") or []:
                    out[c] += int(group.get("replicas") or 0) * _gpus(group)
            for rj in emulator.stored_all(RAYJOBS):
                state = (rj.get("status") or {}).get("jobDeploymentStatus")
                if rj["spec"].get("suspend") or state in ("Complete", "Failed"):
                    continue
                for group in rj["spec"]["rayClusterSpec"].get("workerGroupSpecs") or []:
                    out[c] += int(group.get("replicas") or 0) * _gpus(group)
        return out

    def check(self) -> None:
        """The guarantees that hold in every observed state."""
        self.observations += 1
        for tenant, gpus in self.admitted_gpus().items():
            assert gpus <= self.quotas[tenant], (
                f"tenant {tenant}: {gpus} H100s admitted, quota {self.quotas[tenant]}: "
                f"{self.summary()}"
            )
        for cluster, gpus in self.child_gpus().items():
            assert gpus <= CAPACITY, f"{cluster}: children ask {gpus} H100s: {self.summary()}"

    async def watch(self, seconds: float) -> None:
        """Poll the emulators for `seconds`, checking every state seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            self.check()
            await asyncio.sleep(0.05)

    def fingerprint(self) -> Any:
        statuses = sorted(
            (kind, o["metadata"]["namespace"], o["metadata"]["name"], repr(strip(o.get("status"))))
            for kind, o in self.hub_objects()
        )
        children = sorted(
            (c, plural, o["metadata"]["namespace"], o["metadata"]["name"], repr(o.get("spec")))
            for c in CLUSTERS
            for plural in (RAYSERVICES, RAYJOBS)
            for o in self.clusters[c].emulator.stored_all(plural)
        )
        return statuses, children

    async def settle(self) -> None:
        """Members up, operator running; until statuses and children stay unchanged 1 s."""
        for c in MEMBERS:
            if not self.clusters[c].up:
                await self.clusters[c].start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        last, since = self.fingerprint(), loop.time()
        while loop.time() - since < SETTLE_S:
            assert loop.time() < deadline, f"never settled: {self.summary()}"
            await self.watch(0.1)
            now = self.fingerprint()
            if now != last or self.orphans() or not self.clusters_caught_up():
                last, since = now, loop.time()

    def clusters_caught_up(self) -> bool:
        """Every ComputeCluster reports Ready. The members are all up by now, but a member that
        was down is probed again only after its failure backoff: until its status says Ready,
        the operator has not seen the capacity it brings back, and a job waiting for it is
        rightly still Queued (that is not a settled state)."""
        ccs = self.clusters.hub.emulator.stored_all("tramontane.dev/v1alpha1/computeclusters")
        return all(condition(cc, "Ready").get("status") == "True" for cc in ccs)

    # Once settled.
    def check_settled(self) -> None:
        free = {
            c: CAPACITY - n for c, n in {**dict.fromkeys(CLUSTERS, 0), **self.child_gpus()}.items()
        }
        used = self.admitted_gpus()
        for kind, obj in self.hub_objects():
            status = obj.get("status") or {}
            namespace = obj["metadata"]["namespace"]
            if status.get("phase") != "Queued":
                continue
            tenant = namespace.removeprefix("team-")
            need = wanted(kind, obj)
            fits_quota = used[tenant] + need <= self.quotas[tenant]
            if kind == "ModelDeployment":  # admitted without a cluster (then Pending)
                assert not fits_quota, f"{obj['metadata']['name']} queued: {self.summary()}"
                continue
            named = (obj["spec"].get("placement") or {}).get("clusters") or CLUSTERS
            fits_cluster = any(free[c] >= need for c in named)
            assert not (fits_quota and fits_cluster), (
                f"{obj['metadata']['name']} queued but fits: {self.summary()}"
            )
        assert self.orphans() == [], self.summary()
        for kind, obj in self.hub_objects():
            name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
            if obj["metadata"].get("deletionTimestamp"):
                continue  # its children go first; its status is no longer kept
            status = obj.get("status") or {}
            where = self.children_of(kind, namespace, name)
            if kind == "ModelDeployment":
                placed = sorted(p["name"] for p in status.get("clusters") or [])
                assert sorted(where) == placed, (name, where, placed)
            else:
                assert len(where) <= 1, (name, where)
                assert set(where) <= {status.get("cluster")}, (name, where, status.get("cluster"))

    def children_of(self, kind: str, namespace: str, name: str) -> list[str]:
        plural = RAYSERVICES if kind == "ModelDeployment" else RAYJOBS
        return [
            c
            for c in CLUSTERS
            for o in self.clusters[c].emulator.stored_all(plural)
            if owner(o) == (kind, namespace, name)
        ]

    def orphans(self) -> list[str]:
        """Children whose owner (by kind, name and uid) is not in the hub."""
        out = []
        for c in CLUSTERS:
            for plural in (RAYSERVICES, RAYJOBS, JOBS):
                for o in self.clusters[c].emulator.stored_all(plural):
                    labels = o["metadata"].get("labels") or {}
                    found = owner(o)
                    if found is None:
                        continue
                    live = self.stored(*found)
                    uid = labels.get(OWNER_UID_LABEL)
                    if live is None or (uid and live["metadata"].get("uid") != uid):
                        out.append(f"{c}/{plural}/{o['metadata']['name']}")
        return out

    def summary(self) -> str:
        hub = [
            f"{o['metadata']['namespace']}/{o['metadata']['name']}:"
            f"{(o.get('status') or {}).get('phase')}"
            for _, o in self.hub_objects()
        ]
        children = {c: self.children_in(c) for c in CLUSTERS}
        return f"quotas {self.quotas}; hub {hub}; children {children}"

    def children_in(self, cluster: str) -> list[str]:
        emulator = self.clusters[cluster].emulator
        return [
            o["metadata"]["name"] for p in (RAYSERVICES, RAYJOBS) for o in emulator.stored_all(p)
        ]


def ref(kind: str) -> Any:
    return MODELDEPLOYMENT if kind == "ModelDeployment" else FINETUNEJOB


def owner(obj: dict[str, Any]) -> tuple[str, str, str] | None:
    labels = obj["metadata"].get("labels") or {}
    kind, namespace = labels.get(OWNER_KIND_LABEL), labels.get(OWNER_NAMESPACE_LABEL)
    name = labels.get(OWNER_NAME_LABEL)
    if kind not in ("ModelDeployment", "FineTuneJob") or not (namespace and name):
        return None
    return kind, namespace, name


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def admitted(kind: str, obj: dict[str, Any]) -> bool:
    """Whether the status says the workload holds its tenant's quota. A FineTuneJob: Admitted
    and neither finished nor suspended (a finished job keeps Admitted=True in its status, but
    holds nothing: `reconcile.finetunejob.holds_quota`)."""
    phase = (obj.get("status") or {}).get("phase")
    if kind == "ModelDeployment":
        return phase not in (None, "Queued")
    return condition(obj, "Admitted").get("status") == "True" and phase not in RELEASED


RELEASED = frozenset({"Succeeded", "Failed", "FailedValidation", "Cancelled", "Suspended"})


def wanted(kind: str, obj: dict[str, Any]) -> int:
    spec = obj["spec"]
    if kind == "ModelDeployment":
        return int(spec["scaling"]["maxReplicas"]) * int(spec["resources"]["gpu"]["count"])
    return int(spec["resources"]["workers"]) * int(spec["resources"]["gpusPerWorker"])


def strip(status: Any) -> Any:
    """A status without its times (they do not make it a different state)."""
    if isinstance(status, dict):
        return {k: strip(v) for k, v in status.items() if not k.endswith("Time")}
    if isinstance(status, list):
        return [strip(v) for v in status]
    return status


async def platform(api: KubeClient, clusters: Clusters) -> None:
    """The ComputeClusters (4 H100s each, the hub too) and the members' kubeconfig Secrets."""
    await api.create(
        COMPUTECLUSTER,
        compute_cluster(
            HUB,
            cloud="azure",
            region="westeurope",
            gpus={"H100": CAPACITY},
            connection={"inCluster": True},
        ),
    )
    for name, cloud, region in ((AKS, "azure", "westeurope"), (ONPREM, "onprem", "lyon")):
        kubeconfig = base64.b64encode(clusters[name].kubeconfig().encode()).decode()
        secret = {"name": f"{name}-kubeconfig", "namespace": SYSTEM_NS}
        await api.create(
            SECRET,
            {"apiVersion": "v1", "kind": "Secret", "metadata": secret,
             "data": {"kubeconfig": kubeconfig}},
        )  # fmt: skip
        await api.create(
            COMPUTECLUSTER,
            compute_cluster(
                name,
                cloud=cloud,
                region=region,
                gpus={"H100": CAPACITY},
                connection={"kubeconfigSecretRef": secret},
            ),
        )


async def run_program(tmp: Path, quotas: list[int], steps: list[tuple[Any, ...]]) -> int:
    world = World(tmp, quotas)
    await world.start()
    try:
        for index, step in enumerate(steps):
            await world.step(index, step)
            await world.watch(0.4)
        await world.settle()
        world.check_settled()
    finally:
        await world.close()
    return world.observations


@pytest.mark.slow
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=program_st)
def test_random_programs_keep_quotas_capacity_and_no_orphans(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    program: tuple[list[int], list[tuple[Any, ...]]],
) -> None:
    quotas, steps = program
    monkeypatch.setenv(POLL_ENV, "0.2")  # jobs followed every 0.2 s (the same for every example)
    limit = sys.getrecursionlimit()  # something in the operator's stack raises it: not ours
    try:
        observations = asyncio.run(run_program(tmp_path_factory.mktemp("program"), quotas, steps))
    finally:
        sys.setrecursionlimit(limit)
    assert observations > len(steps)  # states were really looked at between the steps
