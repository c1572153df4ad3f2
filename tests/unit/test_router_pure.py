"""The router's pure parts: the routing table, the balancer, API keys and the usage record."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tramontane_router.balancer import Balancer, BalancerSettings
from tramontane_router.errors import ModelNotFound, Unavailable
from tramontane_router.keys import KeyRing, bearer_key, digest
from tramontane_router.table import Endpoint, secret_values, table_from_objects
from tramontane_router.usage import UsageLog, read_usage

KEY = "k" * 24


def _objects(**overrides: Any) -> list[dict[str, Any]]:
    md_status = overrides.get(
        "status",
        {"adapters": ["a1"], "clusters": [{"name": "c1", "endpoint": "h1:9000", "readyReplicas": 2}]},
    )
    return [
        {"kind": "Secret", "metadata": {"name": "s", "namespace": "keys"},
         "data": {"api-key": base64.b64encode(KEY.encode()).decode()}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"},
         "spec": {"namespaces": ["ns"], "apiKeySecretRefs": [{"namespace": "keys", "name": "s"}]}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ComputeCluster", "metadata": {"name": "c1"},
         "spec": {"cloud": "aws", "region": "r1", "connection": {"inCluster": True},
                  "ingress": {"grpcEndpoint": "h1:9000", "tls": True}}},
        {"apiVersion": "tramontane.dev/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "md", "namespace": "ns"},
         "spec": {"model": {"name": "m", "source": "hf://x/y"}, "runtime": {"maxModelLen": 4096}},
         "status": md_status},
    ]  # fmt: skip


def test_table_resolves_base_and_adapter() -> None:
    table = table_from_objects(_objects())
    tenant = table.tenant(KEY)
    assert tenant is not None and tenant.name == "t"
    base = table.resolve(tenant, "m")
    assert (base.model, base.adapter, base.max_model_len) == ("m", None, 4096)
    (endpoint,) = base.endpoints
    assert endpoint == Endpoint("c1", "h1:9000", True, "ns.md", 2, "r1", "aws")
    adapter = table.resolve(tenant, "m:a1")
    assert (adapter.model, adapter.adapter) == ("m", "a1")
    assert [(e.id, e.kind) for e in table.models(tenant)] == [("m", "base"), ("m:a1", "adapter")]
    for name in ("m:a2", "a1", "m:", "md", "M"):
        with pytest.raises(ModelNotFound):
            table.resolve(tenant, name)


def test_pools_without_ready_replicas_or_cluster_are_not_routed() -> None:
    status = {"clusters": [{"name": "c1", "endpoint": "h1:9000", "readyReplicas": 0},
                           {"name": "gone", "endpoint": "h2:9000", "readyReplicas": 3}]}  # fmt: skip
    table = table_from_objects(_objects(status=status))
    tenant = table.tenant(KEY)
    assert tenant is not None
    with pytest.raises(Unavailable):
        table.resolve(tenant, "m")
    assert [e.ready for e in table.models(tenant)] == [False]


def test_short_and_missing_keys_are_refused() -> None:
    objects = _objects()
    objects[0]["data"]["api-key"] = base64.b64encode(b"short").decode()
    assert table_from_objects(objects).tenant("short") is None
    assert table_from_objects(objects[1:]).tenant(KEY) is None


def test_secret_values_skip_undecodable_entries() -> None:
    secret = {"data": {"ok": base64.b64encode(b"v").decode(), "bad": "!!!", "bin": "/w=="}}
    assert secret_values(secret) == {"ok": "v"}


@pytest.mark.parametrize(
    ("header", "key"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
     ("", None), (None, None), ("abc", None)],
)  # fmt: skip
def test_bearer_key(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


def test_keyring_finds_only_the_exact_key() -> None:
    ring = KeyRing({digest(KEY): "t"})
    assert ring.tenant(KEY) == "t"
    assert ring.tenant(KEY[:-1]) is None and ring.tenant(KEY + "x") is None
    assert len(ring) == 1


def _ep(cluster: str, region: str = "r", cloud: str = "azure", replicas: int = 1) -> Endpoint:
    return Endpoint(cluster, f"{cluster}:1", False, "app", replicas, region, cloud)


def test_two_choices_pick_the_less_loaded() -> None:
    a, b = _ep("a"), _ep("b")
    balancer = Balancer(rng=random.Random(0))
    for _ in range(5):
        balancer.started(a)
    assert all(balancer.pick([a, b]) == b for _ in range(20))


def test_tiers_region_then_cloud_then_anywhere() -> None:
    home, same_cloud, other = _ep("home", "r1"), _ep("near", "r2"), _ep("far", "r3", "gcp")
    balancer = Balancer(BalancerSettings(region="r1", cloud="azure", room_per_replica=2))
    assert balancer.pick([other, same_cloud, home]) == home
    balancer.started(home)
    balancer.started(home)  # home is full
    assert balancer.pick([other, same_cloud, home]) == same_cloud
    balancer.started(same_cloud)
    balancer.started(same_cloud)
    for _ in range(3):
        balancer.started(other)
    # Everyone is full: all compete, and the least loaded pair member wins.
    assert balancer.pick([other, same_cloud, home]) in {home, same_cloud}


def test_ejection_backs_off_and_panics_when_all_are_ejected() -> None:
    now = [0.0]
    a, b = _ep("a"), _ep("b")
    balancer = Balancer(BalancerSettings(eject_after=2, eject_base_s=10, eject_max_s=25),
                        clock=lambda: now[0])  # fmt: skip
    for _ in range(2):
        balancer.started(a)
        balancer.finished(a, False)
    assert not balancer.healthy(a)
    assert all(balancer.pick([a, b]) == b for _ in range(10))
    assert balancer.pick([a, b], exclude_clusters=["b"]) == a  # panic: only a is left
    now[0] = 10.0
    assert balancer.healthy(a)
    for _ in range(2):
        balancer.finished(a, False)
    assert balancer.state(a).ejected_until == 30.0  # 10 * 2, the second ejection
    now[0] = 31.0
    for _ in range(2):
        balancer.finished(a, False)
    assert balancer.state(a).ejected_until == 31.0 + 25  # capped
    balancer.finished(a, None)  # says nothing about the endpoint
    assert balancer.state(a).consecutive_failures == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=60))
def test_outstanding_never_goes_negative_or_leaks(ops: list[tuple[int, bool]]) -> None:
    endpoints = [_ep(f"c{i}") for i in range(4)]
    balancer = Balancer(rng=random.Random(1))
    open_calls: list[Endpoint] = []
    for i, finish in ops:
        if finish and open_calls:
            balancer.finished(open_calls.pop(i % len(open_calls)), True)
        else:
            chosen = balancer.pick(endpoints)
            assert chosen is not None
            balancer.started(chosen)
            open_calls.append(chosen)
    for e in endpoints:
        assert balancer.state(e).outstanding == sum(1 for c in open_calls if c == e)


def test_usage_log_is_durable_across_restarts(tmp_path: Path) -> None:
    first = UsageLog(tmp_path, "r1")
    first.record("t", "m", None, 10, 5)
    first.record("t", "m", "a", 1, 2)
    first.flush()
    second = UsageLog(tmp_path, "r1")  # the same replica after a restart
    second.record("t", "m", None, 3, 4)
    second.flush()
    other = UsageLog(tmp_path, "r2")
    other.record("t", "m", None, 100, 0)
    other.flush()
    files = sorted(tmp_path.glob("usage-*.jsonl"))
    with files[0].open("a") as handle:
        handle.write('{"torn": ')  # a crash mid-line
    totals = read_usage(files)
    assert totals[("t", "m", None)] == {"requests": 3, "promptTokens": 113, "completionTokens": 9}
    assert totals[("t", "m", "a")] == {"requests": 1, "promptTokens": 1, "completionTokens": 2}
    row = json.loads(files[0].read_text().splitlines()[0])
    assert set(row) == {"minute", "replica", "tenant", "model", "adapter", "requests",
                        "promptTokens", "completionTokens"}  # fmt: skip


def test_usage_log_keeps_rows_when_the_write_fails(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    log = UsageLog(tmp_path, "r1")
    log.record("t", "m", None, 1, 1)
    blocker = tmp_path / f"usage-r1-{datetime.now(UTC):%Y-%m-%d}.jsonl"
    blocker.mkdir()  # the file's path is taken: the append fails, even as root
    with pytest.raises(OSError):
        log.flush()
    blocker.rmdir()
    log.flush()
    assert read_usage(tmp_path.glob("*.jsonl"))[("t", "m", None)]["requests"] == 1
