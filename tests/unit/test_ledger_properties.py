"""The decision layer under random interleavings (hypothesis): quotas, capacity, restarts.

A pure model of the control loop over 3 tenants x 3 clusters, ModelDeployments and
FineTuneJobs together. The model keeps what is durable (each workload's status, the children
in each member) and a GPU ledger; every decision is taken by the code the controllers run:

- a ModelDeployment pass calls the controller's own synchronous step
  (`ModelDeployments._decide`: admission, placement, the ledger entry) on a stand-in runtime
  that has only what that step reads (`ledger`, `indexes.jobs()/deployments()`), then writes
  the status with `reconcile.queued_status/compute_status`;
- a FineTuneJob pass runs the synchronous block of `handlers.finetunejob._step` with its own
  helpers (`_admission`, `place_job`, `_within`, the phase machine `decide`, `_account`); the
  dozen lines that glue them are the handler's, repeated here (see `_job_pass`): the one
  piece not called directly, because `_step` itself is async and does member I/O around it;
- an operator restart rebuilds the ledger with the manager's own `durable_state` (on stand-in
  members listing the children) and `quotas.ledger.rebuild`.

Properties at every step: a tenant's held GPUs never exceed its quota (unless the quota was
lowered below them since: then `over_quota` reports it, and nothing new is admitted until it
fits again); the ledger never holds more GPUs in a cluster than it has; a restart neither loses
nor double-counts (per cluster and per tenant totals unchanged); and once every workload has
been decided again until nothing changes, no queued workload would fit both its tenant's
remaining quota and some usable cluster's free GPUs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tramontane_api.v1alpha1 import FineTuneJob, ModelDeployment, Tenant
from tramontane_kube import RAYSERVICE
from tramontane_operator.builders.labels import (
    OWNER_KIND_LABEL,
    OWNER_NAME_LABEL,
    OWNER_NAMESPACE_LABEL,
)
from tramontane_operator.handlers.finetunejob import decide_step, held_cluster
from tramontane_operator.handlers.finetunejob_children import RAYJOB
from tramontane_operator.handlers.manager import durable_state
from tramontane_operator.handlers.modeldeployment import ModelDeployments, pass_status
from tramontane_operator.handlers.runtime import allowed_views, with_allocations
from tramontane_operator.placement import ClusterView, PlacementDecision
from tramontane_operator.quotas import over_quota, usage
from tramontane_operator.quotas.ledger import Ledger, rebuild
from tramontane_operator.reconcile import ObservedPool, queued_status
from tramontane_operator.reconcile.admission import job_workload, md_workload
from tramontane_operator.reconcile.finetunejob import finished
from tramontane_operator.reconcile.finetunejob_inputs import (
    AdmissionResult,
    ValidationResult,
)

TENANTS = ("t0", "t1", "t2")
CLUSTERS = ("hub", "aks", "onprem")
GPU = "H100"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
VALID = ValidationResult(ok=True, lines=4)


def ns(tenant: str) -> str:
    return f"ns-{tenant}"


def make_tenant(name: str, quota: int, allowed: list[str] | None) -> Tenant:
    spec: dict[str, Any] = {"namespaces": [ns(name)], "quotas": {"gpus": {GPU: quota}}}
    if allowed is not None:
        spec["allowedClusters"] = allowed
    return Tenant.model_validate({"metadata": {"name": name, "generation": 1}, "spec": spec})


def make_md(
    name: str,
    tenant: str,
    created: datetime,
    priority: int,
    count: int,
    max_replicas: int,
    pinned: str | None,
) -> ModelDeployment:
    placement: dict[str, Any] = (
        {"strategy": "Pinned", "clusters": [pinned]}
        if pinned
        else {"strategy": "Spread", "clusterSelector": {"matchLabels": {"tier": "gpu"}}}
    )
    return ModelDeployment.model_validate(
        {
            "apiVersion": "tramontane.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {
                "name": name,
                "namespace": ns(tenant),
                "uid": name,
                "generation": 1,
                "creationTimestamp": created.isoformat(),
            },
            "spec": {
                "model": {"name": "m", "source": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
                "resources": {"gpu": {"type": GPU, "count": count}},
                "scaling": {
                    "replicas": max_replicas,
                    "minReplicas": 1,
                    "maxReplicas": max_replicas,
                },
                "placement": placement,
                "priority": priority,
            },
        }
    )


def make_job(
    name: str, tenant: str, created: datetime, priority: int, workers: int, pinned: str | None
) -> FineTuneJob:
    spec: dict[str, Any] = {
        "baseModel": {"uri": "hf://mistralai/Mistral-7B-Instruct-v0.3"},
        "trainingFiles": [{"uri": "s3://data/train.jsonl"}],
        "hyperparameters": {"trainingSteps": 10, "batchSize": 8},
        "resources": {"workers": workers, "gpusPerWorker": 1, "gpuType": GPU},
        "output": {"uri": f"s3://out/{name}"},
        "priority": priority,
    }
    if pinned:
        spec["placement"] = {"clusters": [pinned]}
    return FineTuneJob.model_validate(
        {
            "apiVersion": "tramontane.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {
                "name": name,
                "namespace": ns(tenant),
                "uid": name,
                "generation": 1,
                "creationTimestamp": created.isoformat(),
            },
            "spec": spec,
        }
    )


def _labels(kind: str, namespace: str, name: str) -> dict[str, str]:
    return {OWNER_KIND_LABEL: kind, OWNER_NAMESPACE_LABEL: namespace, OWNER_NAME_LABEL: name}


def rayservice(md: ModelDeployment, replicas: int) -> dict[str, Any]:
    namespace = md.metadata.namespace or ""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": md.metadata.name,
            "namespace": namespace,
            "labels": _labels("ModelDeployment", namespace, md.metadata.name),
        },
        "spec": {"rayClusterConfig": {"workerGroupSpecs": [{"replicas": replicas}]}},
    }


def rayjob(job: FineTuneJob, state: str = "Running") -> dict[str, Any]:
    namespace = job.metadata.namespace or ""
    job_status = {"Running": "RUNNING", "Complete": "SUCCEEDED"}[state]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": job.metadata.name,
            "namespace": namespace,
            "labels": _labels("FineTuneJob", namespace, job.metadata.name),
        },
        "spec": {"suspend": False},
        "status": {"jobDeploymentStatus": state, "jobStatus": job_status},
    }


class World:
    """What is durable (statuses, children, tenants, capacities) plus the operator's ledger."""

    def __init__(self, quotas: list[int], capacity: list[int], allowed: list[Any]) -> None:
        self.tenants = {
            t: make_tenant(t, q, a) for t, q, a in zip(TENANTS, quotas, allowed, strict=True)
        }
        self.capacity = dict(zip(CLUSTERS, capacity, strict=True))
        self.up = dict.fromkeys(CLUSTERS, True)
        self.mds: dict[str, ModelDeployment] = {}
        self.jobs: dict[str, FineTuneJob] = {}
        self.children: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in CLUSTERS}
        self.clock = 0
        self.made = 0  # workloads created so far (their names)
        self.lowered: set[str] = set()  # tenants whose quota was lowered below what they hold

        def parsed_in(objects: dict[str, Any]) -> Any:
            return lambda namespaces: [
                o for o in objects.values() if (o.metadata.namespace or "") in set(namespaces)
            ]

        indexes = SimpleNamespace(
            jobs=lambda: list(self.jobs.values()),
            deployments=lambda: list(self.mds.values()),
            finetunejobs=SimpleNamespace(parsed_in=parsed_in(self.jobs)),
            modeldeployments=SimpleNamespace(parsed_in=parsed_in(self.mds)),
            # No Evaluations in this model (they hold GPUs as FineTuneJobs do).
            evaluations=SimpleNamespace(parsed=list, parsed_in=lambda _namespaces: []),
        )
        self.rt: Any = SimpleNamespace(ledger=Ledger(), indexes=indexes)
        self.md_controller: Any = SimpleNamespace(rt=self.rt)

    # Helpers.
    def now(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(seconds=self.clock)

    def tenant_of(self, namespace: str) -> Tenant:
        return self.tenants[namespace.removeprefix("ns-")]

    def views(self) -> dict[str, ClusterView]:
        return {
            c: ClusterView(
                c,
                labels={"tier": "gpu"},
                gpus_capacity={GPU: self.capacity[c]},
                reachable=self.up[c],
            )
            for c in CLUSTERS
        }

    def held(self, tenant: str) -> int:
        return sum(w.gpus.get(GPU, 0) for w in self.rt.ledger.held_in([ns(tenant)]))

    def quota(self, tenant: str) -> int:
        return (self.tenants[tenant].spec.quotas.gpus or {}).get(GPU, 0)

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        ledger: Ledger = self.rt.ledger
        per_cluster = {c: ledger.in_cluster(c).get(GPU, 0) for c in CLUSTERS}
        return per_cluster, {t: self.held(t) for t in TENANTS}

    def keys(self) -> list[str]:
        return sorted(self.mds) + sorted(self.jobs)

    def snapshot(self) -> Any:
        return (
            {k: m.status for k, m in self.mds.items()},
            {k: j.status for k, j in self.jobs.items()},
            {c: dict(ch) for c, ch in self.children.items()},
            sorted((w.key, repr(w.clusters), repr(w.gpus)) for w in self.rt.ledger.entries()),
        )

    # Passes.
    def reconcile(self, key: str) -> None:
        before = {w.key for w in self.rt.ledger.entries()}
        if key in self.mds:
            if self._md_pass(key):
                # Its children changed: their watch events wake it, and that pass holds what
                # now runs (the first held the pools as they were too, until they changed).
                self._md_pass(key)
        elif key in self.jobs:
            self._job_pass(key)
        tenant = self.tenant_of(key.split("/")[1]).metadata.name
        if key not in before and key in self.rt.ledger:
            # Newly admitted: never past the quota, lowered or not.
            assert self.held(tenant) <= self.quota(tenant), (key, self.held(tenant))

    def _md_pass(self, key: str) -> bool:
        """One ModelDeployment pass; whether it changed a child."""
        md = self.mds[key]
        children_before = {c: self.children[c].get(key) for c in CLUSTERS}
        namespace = md.metadata.namespace or ""
        observed = {
            c: ObservedPool(c, self.up[c], self.children[c].get(key) if self.up[c] else None)
            for c in CLUSTERS
        }
        tenant = self.tenant_of(namespace)
        outcome = ModelDeployments._decide(self.md_controller, md, tenant, self.views(), observed)
        now = self.now()
        if isinstance(outcome, AdmissionResult):
            status = queued_status(md, outcome.queue_position, outcome.reason, md.status, now)
        else:
            decision: PlacementDecision = outcome
            for c in CLUSTERS:  # what `_apply` does where it can reach
                if not self.up[c]:
                    continue
                if c in decision.replicas:
                    self.children[c][key] = rayservice(md, decision.replicas[c])
                    observed[c] = dataclasses.replace(observed[c], rayservice=self.children[c][key])
                else:
                    self.children[c].pop(key, None)
            status = pass_status(md, decision, observed, md.status, now, None, self.rt.ledger)
        self.mds[key] = md.model_copy(update={"status": status})
        return children_before != {c: self.children[c].get(key) for c in CLUSTERS}

    def _job_pass(self, key: str) -> None:
        """The synchronous block of `handlers.finetunejob._step` (see the module docstring)."""
        job = self.jobs[key]
        namespace = job.metadata.namespace or ""
        validation = VALID if job.status is None else None  # `_validate` ran before
        terminal = finished(job)
        tenant = self.tenant_of(namespace)
        current = held_cluster(self.rt, job)
        views = with_allocations(
            allowed_views(self.views(), tenant),
            self.rt.ledger.allocations(exclude=job_workload(job).key),
        )
        rayjob_now = None
        if current is not None and not terminal:
            if not self.up[current]:
                return  # `read_rayjob` raises Retry: nothing decided
            rayjob_now = self.children[current].get(key)
        observed, decision, _ = decide_step(
            self.rt, job, tenant, views, current, rayjob_now, None, validation, None, self.now()
        )
        placed = observed.placement.cluster if observed.placement else None
        cluster = current or placed
        if "create_rayjob" in decision.actions and cluster is not None:
            assert self.up[cluster], f"{key}: RayJob created in unreachable {cluster}"
            self.children[cluster][key] = rayjob(job)
        self.jobs[key] = job.model_copy(update={"status": decision.status})

    def settle(self, rounds: int = 12) -> None:
        """Decide every workload again until nothing changes (it must converge)."""
        for _ in range(rounds):
            before = self.snapshot()
            for key in self.keys():
                self.reconcile(key)
                self.check()
            if self.snapshot() == before:
                return
        raise AssertionError("the decisions never settle (they flap)")

    # Events.
    def delete(self, key: str) -> None:
        """The finalizer's cleanup where members answer, then the ledger entry is released."""
        self.mds.pop(key, None)
        self.jobs.pop(key, None)
        for c in CLUSTERS:
            if self.up[c]:
                self.children[c].pop(key, None)
        self.rt.ledger.release(key)

    def set_up(self, cluster: str, up: bool) -> None:
        self.up[cluster] = up
        if up:  # the sweep: children whose owner is gone
            for key in list(self.children[cluster]):
                if key not in self.mds and key not in self.jobs:
                    del self.children[cluster][key]

    def finish(self, key: str) -> None:
        job = self.jobs[key]
        cluster = job.status.cluster if job.status else None
        if cluster and self.up[cluster] and key in self.children[cluster]:
            self.children[cluster][key] = rayjob(job, "Complete")

    def restart(self) -> None:
        """A new operator: the ledger from statuses and the children of reachable members."""
        before = self.totals()
        members = {c: self._member(c) for c in CLUSTERS}
        rt = SimpleNamespace(indexes=self.rt.indexes, clusters=SimpleNamespace(members=members))
        workloads, found = asyncio.run(durable_state(rt))  # type: ignore[arg-type]
        self.rt.ledger = rebuild(workloads, found)
        after = self.totals()
        assert after[1] == before[1], "a restart lost or double-counted a tenant's GPUs"
        for c in CLUSTERS:
            assert after[0][c] == before[0][c], f"a restart lost or double-counted in {c}"

    def _member(self, cluster: str) -> Any:
        world = self

        class Client:
            async def list(self, ref: Any, namespace: Any, labels: Any) -> Any:
                kind = "RayService" if ref is RAYSERVICE else "RayJob" if ref is RAYJOB else ""
                items = [o for o in world.children[cluster].values() if o["kind"] == kind]
                return items, None

        synced = asyncio.Event.__new__(asyncio.Event)  # never set: lists through the client
        synced.is_set = lambda: False  # type: ignore[method-assign]
        informer = SimpleNamespace(synced=synced)
        return SimpleNamespace(
            name=cluster, usable=self.up[cluster], client=Client(), informer=informer
        )

    def set_quota(self, tenant: str, quota: int) -> None:
        spec = self.tenants[tenant].spec
        quotas = spec.quotas.model_copy(update={"gpus": {GPU: quota}})
        self.tenants[tenant] = self.tenants[tenant].model_copy(
            update={"spec": spec.model_copy(update={"quotas": quotas})}
        )
        if self.held(tenant) > quota:
            self.lowered.add(tenant)

    def change(self, key: str, **spec: Any) -> None:
        """A spec change (a new generation)."""
        if key in self.mds:
            obj: Any = self.mds[key]
        else:
            obj = self.jobs[key]
        meta = obj.metadata.model_copy(update={"generation": (obj.metadata.generation or 1) + 1})
        new = obj.model_copy(update={"metadata": meta, "spec": obj.spec.model_copy(update=spec)})
        (self.mds if key in self.mds else self.jobs)[key] = new

    # Properties.
    def check(self) -> None:
        for t in TENANTS:
            held, quota = self.held(t), self.quota(t)
            if held <= quota:
                self.lowered.discard(t)
                continue
            assert t in self.lowered, f"tenant {t} holds {held} GPUs, quota {quota}"
            quotas = self.tenants[t].spec.quotas
            assert over_quota(quotas, usage(self.rt.ledger.held_in([ns(t)]))), t
        assert not self.uncounted(), f"pools the ledger does not count: {self.uncounted()}"
        for c in CLUSTERS:
            held = self.rt.ledger.in_cluster(c).get(GPU, 0)
            assert held <= self.capacity[c], f"{c}: {held} GPUs held of {self.capacity[c]}"

    def uncounted(self) -> set[str]:
        """Clusters running a pool of a live deployment with more GPUs than the ledger counts
        for it there (an unreachable cluster's pool included: it may well run)."""
        out = set()
        for c in CLUSTERS:
            for key, child in self.children[c].items():
                md = self.mds.get(key)
                if md is None or child["kind"] != "RayService":
                    continue
                replicas = child["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"]
                runs = (md.spec.resources.gpu.count if md.spec.resources.gpu else 0) * replicas
                entry = self.rt.ledger.get(key)
                held = entry.clusters.get(c, {}).get(GPU, 0) if entry is not None else 0
                if runs > held:
                    out.add(c)
        return out

    def check_settled(self) -> None:
        """No queued workload fits its tenant's remaining quota and a usable cluster."""
        free = {
            c: self.capacity[c] - self.rt.ledger.in_cluster(c).get(GPU, 0)
            for c in CLUSTERS
            if self.up[c]
        }
        for key, md in self.mds.items():
            if md.status is None or md.status.phase != "Queued":
                continue
            t = self.tenant_of(md.metadata.namespace or "").metadata.name
            need = md_workload(md).gpus.get(GPU, 0)
            assert self.held(t) + need > self.quota(t), f"{key} queued but fits the quota"
        for key, job in self.jobs.items():
            if job.status is None or job.status.phase != "Queued":
                continue
            tenant = self.tenant_of(job.metadata.namespace or "")
            t = tenant.metadata.name
            need = job_workload(job).gpus.get(GPU, 0)
            allowed = set(tenant.spec.allowed_clusters or CLUSTERS)
            named = job.spec.placement.clusters if job.spec.placement else None
            usable = [c for c in free if c in allowed and (named is None or c in named)]
            fits_cluster = any(free[c] >= need for c in usable)
            fits_quota = self.held(t) + need <= self.quota(t)
            assert not (fits_quota and fits_cluster), (
                f"{key} queued ({job.status.conditions}) but fits: held {self.held(t)} + "
                f"{need} <= {self.quota(t)}; free {free} in {usable}"
            )


# Programs.
tenant_st = st.sampled_from(TENANTS)
cluster_st = st.sampled_from(CLUSTERS)
step_st = st.one_of(
    st.tuples(
        st.just("md"),
        tenant_st,
        st.integers(0, 2),
        st.integers(1, 2),
        st.integers(1, 3),
        st.one_of(st.none(), cluster_st),
    ),
    st.tuples(
        st.just("ftj"),
        tenant_st,
        st.integers(0, 2),
        st.integers(1, 4),
        st.one_of(st.none(), cluster_st),
    ),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("priority"), st.integers(0, 30), st.integers(0, 3)),
    st.tuples(st.just("scale"), st.integers(0, 30), st.integers(1, 4)),
    st.tuples(st.just("grow"), st.integers(0, 30), st.integers(1, 6)),
    st.tuples(st.just("down"), cluster_st),
    st.tuples(st.just("up"), cluster_st),
    st.tuples(st.just("restart")),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("reconcile"), st.integers(0, 30)),
    st.tuples(st.just("quota"), tenant_st, st.integers(0, 8)),
    st.tuples(st.just("settle")),
)
world_st = st.tuples(
    st.lists(st.integers(0, 8), min_size=3, max_size=3),  # GPU quota per tenant
    st.lists(st.sampled_from([0, 4, 8]), min_size=3, max_size=3),  # H100s per cluster
    st.lists(
        st.one_of(st.none(), st.lists(cluster_st, min_size=1, max_size=2, unique=True)),
        min_size=3,
        max_size=3,
    ),  # allowedClusters per tenant
)


def run(world: World, program: list[tuple[Any, ...]]) -> None:
    for step in program:
        op, args = step[0], step[1:]
        keys = world.keys()
        pick = keys[args[0] % len(keys)] if keys and op in _PICKS else None
        if op == "md":
            tenant, prio, count, max_r, pinned = args
            md = make_md(f"md{world.made}", tenant, world.now(), prio, count, max_r, pinned)
            world.made += 1
            world.mds[md_workload(md).key] = md
            world.reconcile(md_workload(md).key)
        elif op == "ftj":
            tenant, prio, workers, pinned = args
            job = make_job(f"ftj{world.made}", tenant, world.now(), prio, workers, pinned)
            world.made += 1
            world.jobs[job_workload(job).key] = job
            world.reconcile(job_workload(job).key)
        elif op in ("down", "up"):
            world.set_up(args[0], op == "up")
        elif op == "restart":
            world.restart()
        elif op == "quota":
            world.set_quota(*args)
        elif op == "settle":
            world.settle()
        elif pick is None:
            continue
        elif op == "delete":
            world.delete(pick)
        elif op == "priority":
            world.change(pick, priority=args[1])
            world.reconcile(pick)
        elif op == "scale" and pick in world.mds:
            # Shrinks here; `grow` below raises it past what the quota may have room for.
            max_r = min(args[1], world.mds[pick].spec.scaling.max_replicas)
            scaling = world.mds[pick].spec.scaling.model_copy(
                update={"replicas": max_r, "max_replicas": max_r}
            )
            world.change(pick, scaling=scaling)
            world.reconcile(pick)
        elif op == "grow" and pick in world.mds:
            scaling = world.mds[pick].spec.scaling.model_copy(
                update={"replicas": args[1], "max_replicas": args[1]}
            )
            world.change(pick, scaling=scaling)
            world.reconcile(pick)
        elif op == "finish" and pick in world.jobs:
            world.finish(pick)
            world.reconcile(pick)
        elif op == "reconcile":
            world.reconcile(pick)
        world.check()


_PICKS = {"delete", "priority", "scale", "grow", "finish", "reconcile"}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world_st, st.lists(step_st, min_size=5, max_size=40))
def test_random_interleavings_keep_quotas_capacity_and_the_ledger(
    shape: tuple[list[int], list[int], list[Any]], program: list[tuple[Any, ...]]
) -> None:
    world = World(*shape)
    run(world, program)
    world.restart()  # a restart at the end, whatever came before
    world.settle()
    world.check_settled()


def test_growing_an_admitted_deployment_is_checked_against_the_quota() -> None:
    """Found by the property above: `ModelDeployments._decide` checks admission only for a
    workload the ledger does not hold, so raising maxReplicas (or gpu.count) of an admitted
    deployment is held at once, whatever the quota says."""
    world = World([2, 2, 2], [0, 0, 0], [None, None, None])
    run(world, [("md", "t1", 0, 2, 1, None)])  # 1 x 2 GPUs: the whole quota (no capacity)
    assert world.held("t1") == 2
    run(world, [("grow", 0, 2)])  # maxReplicas 2: 4 GPUs wanted of a quota of 2


def test_an_unplaceable_job_does_not_block_its_tenant() -> None:
    """Found by the property above. A job that fits its tenant's quota but no cluster (here:
    no cluster has H100s) stays Queued (NoEligibleCluster) without holding anything, yet
    `admission_for` admits it first in every round of its tenant (it is in `waiting`), so a
    younger deployment that fits the quota (and needs no free GPU to be admitted) stays
    Queued for as long as the job cannot be placed."""
    world = World([0, 0, 0], [0, 0, 0], [None, None, None])
    run(world, [("ftj", "t0", 0, 1, None), ("quota", "t0", 1), ("md", "t0", 0, 1, 1, None)])
    world.settle()
    assert world.mds["ModelDeployment/ns-t0/md1"].status is not None
    assert world.mds["ModelDeployment/ns-t0/md1"].status.phase != "Queued"


def test_a_pool_behind_an_outage_keeps_its_gpus() -> None:
    """Found by the property above. A Spread deployment's pool is in `aks`; `aks` becomes
    unreachable and the deployment is decided again: nowhere else fits, so it is unplaced and
    its ledger entry drops the GPUs of the pool, which still runs in `aks` (nothing could
    delete it there). `aks` comes back and a new deployment is decided first: it gets those
    GPUs. The first one then finds its pool again and keeps it: 5 H100s held of 4 (a restart
    in between would count the pool again from the child, not from the ledger)."""
    world = World([8, 0, 0], [0, 4, 0], [None, None, None])
    run(world, [("md", "t0", 0, 1, 1, None), ("down", "aks"), ("reconcile", 0), ("up", "aks")])
    run(world, [("md", "t0", 0, 4, 1, None)])
    world.settle()
    assert world.rt.ledger.in_cluster("aks").get(GPU, 0) <= 4
