"""Traces and metrics of the router.

One OpenTelemetry span per request, `chat <model>` (kind SERVER), with the GenAI semantic
conventions' attributes (`gen_ai.operation.name`, `gen_ai.provider.name`,
`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.request.max_tokens`,
`gen_ai.request.temperature`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`),
`tramontane.tenant`, `tramontane.cluster` and `error.type`. The W3C trace context of the
span goes to the worker in the call's metadata (`traceparent`), and a caller's `traceparent`
becomes the span's parent. Never an API key.

Prometheus metrics (per tenant and model):
- `tramontane_router_requests_total{tenant,model,code}`: finished requests by status code;
- `tramontane_router_request_duration_seconds{tenant,model}`: latency histogram;
- `tramontane_router_time_to_first_token_seconds{tenant,model}`: streams' first content;
- `tramontane_router_in_flight_requests{tenant,model}`;
- `tramontane_router_routed_total{cluster}`: routing decisions per member cluster;
- `tramontane_router_upstream_failures_total{cluster,code}`;
- `tramontane_router_ejections_total{cluster}`: outlier ejections;
- `tramontane_router_version_requests_total{application,version,outcome}`: attempts per
  adapter version (`<adapter>@<version>`), `ok` or `error`;
- `tramontane_router_canary_vetoes_total{application,version}`: canaries this replica
  stopped routing to on a breach of their analysis.
Token counts for billing are in `usage.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "tramontane_router_requests_total", "Requests by status code.", ["tenant", "model", "code"]
)
DURATION = Histogram(
    "tramontane_router_request_duration_seconds",
    "Time from the request to its last byte.",
    ["tenant", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TTFT = Histogram(
    "tramontane_router_time_to_first_token_seconds",
    "Time from a streamed request to its first chunk.",
    ["tenant", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge(
    "tramontane_router_in_flight_requests", "Requests being served.", ["tenant", "model"]
)
ROUTED = Counter(
    "tramontane_router_routed_total", "Attempts sent to each member cluster.", ["cluster"]
)
UPSTREAM_FAILURES = Counter(
    "tramontane_router_upstream_failures_total",
    "Failed attempts by member cluster and gRPC code.",
    ["cluster", "code"],
)
EJECTIONS = Counter(
    "tramontane_router_ejections_total", "Outlier ejections by member cluster.", ["cluster"]
)

VERSION_REQUESTS = Counter(
    "tramontane_router_version_requests_total",
    "Attempts per adapter version, by outcome.",
    ["application", "version", "outcome"],
)
CANARY_VETOES = Counter(
    "tramontane_router_canary_vetoes_total",
    "Canary versions this replica stopped routing to on a breach.",
    ["application", "version"],
)

tracer = trace.get_tracer("tramontane.router")
PROVIDER = "mistral_ai"


def setup_tracing() -> None:
    """Give the process an SDK tracer provider (once), so requests get real trace ids that
    reach the workers even when no exporter is configured. Exporters are configured the
    OpenTelemetry way (an SDK span processor added by the deployment's instrumentation)."""
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


def parent_context(carrier: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context from its headers or metadata (W3C `traceparent`)."""
    return propagate.extract(dict(carrier))


def trace_metadata(span: trace.Span) -> list[tuple[str, str]]:
    """`span`'s trace context as gRPC metadata for the worker call. Passed explicitly rather
    than made current: a stream's chunks are produced in more than one task (the HTTP front
    reads the first in one), and a context attached in one task cannot be detached in another."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return [(k.lower(), v) for k, v in carrier.items()]
