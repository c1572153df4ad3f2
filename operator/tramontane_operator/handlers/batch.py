"""What the controllers of the batch kinds (FineTuneJobs, Evaluations) share: the controller
itself and the deletion of a RayJob wherever it may be.

A batch workload is reconciled like every kind (`controller.py`): the finalizer lands before
any child, a deleted one is cleaned up before the finalizer goes, and its GPUs are released
from the ledger once it is gone. While it runs it is looked at again every `poll_s` (its
RayJob's state and its submitter's log); once its phase is final and nothing is left to do,
only at the resync interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol

from tramontane_api.v1alpha1 import ComputeCluster, EvaluationStatus, FineTuneJobStatus
from tramontane_kube import ApiError, ResourceRef, Unreachable
from tramontane_operator.builders.labels import OWNER_KIND_LABEL, OWNER_NAME_LABEL
from tramontane_operator.reconcile.conditions import status_differs

from .controller import Body, Controller, Key, Requeue
from .finalizers import add_finalizer, has_finalizer, remove_finalizer
from .finetunejob_children import RAYJOB
from .runtime import Runtime


class Decided(Protocol):
    """What a kind's reconcile decided: its phase and the actions it still had to take."""

    @property
    def phase(self) -> str | None: ...

    @property
    def actions(self) -> Collection[Any]: ...


BatchStatus = FineTuneJobStatus | EvaluationStatus
Reconcile = Callable[[Runtime, Mapping[str, Any], float], Awaitable[Decided]]
Cleanup = Callable[[Runtime, Mapping[str, Any]], Awaitable[None]]


class BatchController:
    """The controller of one batch kind (`kind`: the runtime's name for it; `ref`: its API)."""

    def __init__(
        self,
        rt: Runtime,
        kind: str,
        ref: ResourceRef,
        reconcile: Reconcile,
        cleanup: Cleanup,
        terminal: Collection[str],
        poll_s: float,
    ) -> None:
        self.rt, self.kind, self.ref = rt, kind, ref
        self._reconcile, self._cleanup, self._terminal = reconcile, cleanup, terminal
        self.poll_s = poll_s
        cache = rt.indexes.cache(kind)
        self.controller = Controller(
            kind,
            cache.raw,
            cache.object_keys,
            self._process,
            workers=rt.settings.reconcile_workers,
            ready=rt.ready,
            queue=rt.work_queue(),
        )
        cache.listeners.append(self.controller.observed)
        rt.controllers[kind] = self.controller

    async def _process(self, key: Key, raw: Body | None) -> Requeue | None:
        rt = self.rt
        if raw is None:  # gone without our finalizer: the sweep deletes what it left
            rt.release(self.kind, key)
            rt.forget(self.kind, key)
            return None
        if raw["metadata"].get("deletionTimestamp"):
            if has_finalizer(raw):
                await self._cleanup(rt, raw)
                await remove_finalizer(rt, self.ref, raw)
            rt.release(self.kind, key)
            rt.forget(self.kind, key)
            return None
        if not has_finalizer(raw):  # before any child: a delete can never orphan one
            await add_finalizer(rt, self.ref, raw)
        decision = await self._reconcile(rt, raw, self.poll_s)
        if decision.phase in self._terminal and not decision.actions:
            return Requeue(rt.settings.resync_interval_s)
        return Requeue(self.poll_s)


async def delete_rayjobs(
    rt: Runtime, owner_kind: str, owner_name: str, namespace: str, rayjob: str,
    placed: str | None,
) -> list[str]:  # fmt: skip
    """Delete RayJob `rayjob` of `owner_kind` `owner_name` in every member at once (one slow
    member holds up no other's cleanup); why it is not gone yet, per member that still has it
    (`placed`: the member the owner runs in, whose being unreachable keeps it waiting)."""

    async def one(cc: ComputeCluster) -> str | None:
        member = await rt.ensure_member(cc)
        if member is None or not member.probe.reachable:
            return f"{cc.metadata.name} (unreachable)" if placed == cc.metadata.name else None
        try:
            found = await member.client.get(RAYJOB, namespace, rayjob)
            if found is not None and owned_by(found, owner_kind, owner_name):
                await member.client.delete(RAYJOB, namespace, rayjob)
                if await member.client.get(RAYJOB, namespace, rayjob) is not None:
                    return f"{cc.metadata.name} (deleting)"
        except (ApiError, Unreachable) as exc:
            return f"{cc.metadata.name} ({exc})"
        return None

    outcomes = await asyncio.gather(*(one(cc) for cc in rt.indexes.compute_clusters()))
    return [why for why in outcomes if why]


def owned_by(child: Mapping[str, Any], kind: str, name: str) -> bool:
    labels = (child.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(OWNER_KIND_LABEL) == kind and labels.get(OWNER_NAME_LABEL) == name)


async def write_phase_status(
    rt: Runtime, kind: str, ref: ResourceRef, obj: Any, key: Key, status: BatchStatus
) -> bool:
    """Write `status` of the batch object `obj` (at `key`) when it differs from its own, and
    keep the runtime's record of it; True when the write changed its phase (time for an
    Event)."""
    previous = obj.status
    if not status_differs(previous, status):
        return False
    namespace, name = key
    if not await rt.write_status(ref, namespace, name, previous, status):
        return False
    rt.remember_status(kind, obj.model_dump(by_alias=True), status)
    rt.phases[kind].set(namespace, name, status.phase)
    return previous is None or previous.phase != status.phase
