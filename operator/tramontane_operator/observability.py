"""Traces and metrics of the operator.

One OpenTelemetry span per reconcile (`reconcile <Kind>`, attributes `tramontane.kind`,
`k8s.namespace.name`, `tramontane.name`, `tramontane.cluster`, `tramontane.outcome`) and the
Prometheus metrics:

- `tramontane_reconcile_duration_seconds{kind}`: histogram of reconcile durations;
- `tramontane_reconcile_errors_total{kind,reason}`: failed reconciles by reason;
- `tramontane_objects{kind,phase}`: objects the operator knows, by status phase;
- `tramontane_cluster_reachable{cluster}`: 1 when the member cluster answered its last probe;
- `tramontane_workqueue_depth{priority}`: ModelDeployments waiting for a reconcile;
- `tramontane_workqueue_wait_seconds{priority}`: how long each waited before a worker took it
  (as controller-runtime's `workqueue_depth` and `workqueue_queue_duration_seconds`).
"""

from __future__ import annotations

import functools
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILE_DURATION = Histogram(
    "tramontane_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RECONCILE_ERRORS = Counter(
    "tramontane_reconcile_errors_total", "Reconciles that failed, by reason.", ["kind", "reason"]
)
OBJECTS = Gauge("tramontane_objects", "Objects known to the operator, by phase.", ["kind", "phase"])
CLUSTER_REACHABLE = Gauge(
    "tramontane_cluster_reachable", "1 if the member cluster answered its last probe.", ["cluster"]
)

WORKQUEUE_DEPTH = Gauge(
    "tramontane_workqueue_depth", "ModelDeployments waiting for a reconcile.", ["priority"]
)
WORKQUEUE_WAIT = Histogram(
    "tramontane_workqueue_wait_seconds",
    "Time a ModelDeployment waited in the work queue before a worker took it.",
    ["priority"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
QUEUE_PRIORITIES = ("high", "low")  # the work queue's lanes, HIGH = 0 and LOW = 1

_tracer = trace.get_tracer("tramontane.operator")


@dataclass
class Reconcile:
    """What a reconcile reports about itself before its span ends."""

    kind: str
    outcome: str = "ok"
    clusters: str = ""


@contextmanager
def reconcile_scope(kind: str, namespace: str | None, name: str) -> Iterator[Reconcile]:
    """Span + duration + error count around one reconcile; the caller fills `outcome`."""
    state = Reconcile(kind)
    started = time.perf_counter()
    with _tracer.start_as_current_span(f"reconcile {kind}") as span:
        span.set_attribute("tramontane.kind", kind)
        span.set_attribute("tramontane.name", name)
        if namespace:
            span.set_attribute("k8s.namespace.name", namespace)
        try:
            yield state
        except BaseException as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            if state.outcome == "ok":
                state.outcome = "error"
            if type(exc).__name__ != "CancelledError":
                RECONCILE_ERRORS.labels(kind, str(reason)).inc()
                span.record_exception(exc)
            raise
        finally:
            span.set_attribute("tramontane.outcome", state.outcome)
            span.set_attribute("tramontane.cluster", state.clusters)
            RECONCILE_DURATION.labels(kind).observe(time.perf_counter() - started)


class PhaseTracker:
    """Keeps `tramontane_objects{kind,phase}` equal to the phases last seen per object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: Tally[str] = Tally()

    def set(self, namespace: str | None, name: str, phase: str | None) -> None:
        key = (namespace or "", name)
        before = self._phases.pop(key, None)
        if phase is not None:
            self._phases[key] = phase
        if before == phase:
            return
        for changed, delta in ((before, -1), (phase, 1)):
            if changed is not None:
                self._counts[changed] += delta
                OBJECTS.labels(self.kind, changed).set(self._counts[changed])


def set_cluster_reachable(cluster: str, reachable: bool | None) -> None:
    """Record a probe result; None forgets the cluster (its ComputeCluster was deleted)."""
    if reachable is not None:
        CLUSTER_REACHABLE.labels(cluster).set(1 if reachable else 0)
        return
    with suppress(KeyError):
        CLUSTER_REACHABLE.remove(cluster)


def track_queue(waiting: Callable[[int], int]) -> None:
    """Report `waiting(lane)` as the work queue's depth per priority (read at each scrape)."""
    for lane, label in enumerate(QUEUE_PRIORITIES):
        WORKQUEUE_DEPTH.labels(label).set_function(functools.partial(waiting, lane))


def record_queue_wait(lane: int, waited_s: float) -> None:
    WORKQUEUE_WAIT.labels(QUEUE_PRIORITIES[lane]).observe(waited_s)


def serve_metrics(port: int) -> None:
    """Expose /metrics on `port` (all interfaces)."""
    start_http_server(port)
