"""Where the routing table comes from: one small interface, two implementations.

`HubSource` (`hub.py`) watches the hub's Tenants, their key Secrets, ModelDeployments and
ComputeClusters; `StaticSource` holds manifests given to it (local mode, `router run --source
FILE`, tests) and takes new ones with `update`. Either swaps in a whole new table; a request
reads `table` once and keeps that snapshot, so a change never fails a request in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from .table import RoutingTable, table_from_objects

Listener = Callable[[RoutingTable], None]


class RoutingSource(Protocol):
    @property
    def table(self) -> RoutingTable: ...

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with each new table."""

    async def start(self) -> None:
        """Begin watching; returns once the first table is built."""

    async def stop(self) -> None: ...


class StaticSource:
    """A routing source over manifests held in memory."""

    def __init__(self, objects: Iterable[Mapping[str, Any]] = ()) -> None:
        self._table = table_from_objects(objects)
        self._listeners: list[Listener] = []

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> StaticSource:
        objects: list[Mapping[str, Any]] = []
        for path in paths:
            text = Path(path).read_text(encoding="utf-8")
            objects += [d for d in yaml.safe_load_all(text) if isinstance(d, Mapping)]
        return cls(objects)

    @property
    def table(self) -> RoutingTable:
        return self._table

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def update(self, objects: Iterable[Mapping[str, Any]]) -> None:
        self.set_table(table_from_objects(objects))

    def set_table(self, table: RoutingTable) -> None:
        self._table = table
        for listener in self._listeners:
            listener(table)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
