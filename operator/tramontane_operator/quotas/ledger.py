"""The one GPU ledger: what every admitted workload holds, per tenant and per cluster.

Pure data, no I/O. Serving (ModelDeployments) and training (FineTuneJobs) are entries of the
same ledger, keyed by `Workload.key`: each entry is an admitted `Workload` whose `gpus` count
against its tenant's quota and whose `clusters` are the GPUs it takes in each member cluster.
Placement of both kinds reads the totals per cluster (`allocations`, leaving out the workload
being placed); admission of both kinds reads what a tenant's namespaces hold (`held_in`).

The controllers update an entry at decision time, in the same synchronous step as the
decision (no `await` between reading the ledger and writing it), so two decisions never both
take the last GPUs. At start, `rebuild` fills it from what is durable: the children that
exist in the member clusters (their labels and specs) and the statuses in the hub (for
members that cannot be read at that moment). An entry counts a pool once, whichever of the
two reports it, so a restart neither loses nor double-counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from . import Workload

GpusPerCluster = Mapping[str, Mapping[str, int]]  # cluster -> GPU type -> GPUs


class Ledger:
    def __init__(self) -> None:
        self._entries: dict[str, Workload] = {}
        self._totals: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Workload | None:
        return self._entries.get(key)

    def entries(self) -> list[Workload]:
        return list(self._entries.values())

    def hold(self, workload: Workload) -> None:
        """Record `workload` as admitted, holding `workload.clusters` (replacing its entry)."""
        self.release(workload.key)
        entry = dataclasses.replace(workload, admitted=True)
        self._entries[entry.key] = entry
        self._add(entry.clusters, 1)

    def release(self, key: str) -> Workload | None:
        """Forget `key`'s entry (finished, suspended, deleted); the entry it had."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._add(entry.clusters, -1)
        return entry

    def _add(self, clusters: GpusPerCluster, sign: int) -> None:
        for cluster, per_type in clusters.items():
            totals = self._totals.setdefault(cluster, {})
            for gpu_type, n in per_type.items():
                totals[gpu_type] = totals.get(gpu_type, 0) + sign * n
                if not totals[gpu_type]:
                    del totals[gpu_type]
            if not totals:
                del self._totals[cluster]

    def in_cluster(self, cluster: str) -> dict[str, int]:
        """GPU type -> GPUs held in `cluster`, by every workload."""
        return dict(self._totals.get(cluster, {}))

    def allocations(self, exclude: str | None = None) -> dict[str, dict[str, int]]:
        """Cluster -> GPU type -> GPUs held, leaving out the workload `exclude` (the one being
        placed: it never competes with itself)."""
        own = self._entries[exclude].clusters if exclude in self._entries else {}
        out: dict[str, dict[str, int]] = {}
        for cluster, per_type in self._totals.items():
            mine = own.get(cluster, {})
            left = {t: n - mine.get(t, 0) for t, n in per_type.items() if n - mine.get(t, 0)}
            if left:
                out[cluster] = left
        return out

    def held_in(self, namespaces: Iterable[str]) -> list[Workload]:
        """The admitted workloads in `namespaces` (a tenant's)."""
        owned = set(namespaces)
        return [w for w in self._entries.values() if w.namespace in owned]


def merge_clusters(*sources: GpusPerCluster) -> dict[str, dict[str, int]]:
    """The union of several reports of one workload's GPUs, the largest count per cluster and
    type: a pool seen both in a child and in the status is counted once."""
    out: dict[str, dict[str, int]] = {}
    for source in sources:
        for cluster, per_type in source.items():
            mine = out.setdefault(cluster, {})
            for gpu_type, n in per_type.items():
                mine[gpu_type] = max(mine.get(gpu_type, 0), n)
    return {c: t for c, t in out.items() if any(t.values())}


def rebuild(workloads: Iterable[Workload], children: Mapping[str, GpusPerCluster]) -> Ledger:
    """A ledger from every known workload (`admitted` and `clusters` as its status says) and
    the GPUs their children take in the members (`children`: workload key -> cluster -> GPU
    type -> GPUs). A workload with a child is held whatever its status says: it runs (the
    operator may have stopped between creating the child and writing the status)."""
    ledger = Ledger()
    for workload in workloads:
        found = children.get(workload.key)
        if workload.admitted or found:
            clusters = merge_clusters(workload.clusters, found or {})
            ledger.hold(dataclasses.replace(workload, clusters=clusters))
    return ledger
