"""ComputeCluster status from probe results: conditions, phase, GPU allocation summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
import yaml
from tests.conftest import EXAMPLES_DIR

from tramontane_api.v1alpha1 import ComputeCluster
from tramontane_api.validate import validate_object
from tramontane_operator.reconcile import cluster_status_changed, compute_cluster_status

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=30)


def example(cordoned: bool = False) -> ComputeCluster:
    body = yaml.safe_load((EXAMPLES_DIR / "computecluster-aks-westeurope.yaml").read_text())
    body["spec"]["cordoned"] = cordoned
    body["metadata"]["generation"] = 2
    return ComputeCluster.model_validate(body)


@pytest.mark.parametrize(
    ("reachable", "kuberay", "cordoned", "phase", "expected"),
    [
        (None, None, False, "Pending",
         {"Ready": ("Unknown", "NotProbed"), "Reachable": ("Unknown", "NotProbed"),
          "KubeRayInstalled": ("Unknown", "NotProbed")}),
        (False, None, False, "Unreachable",
         {"Ready": ("False", "Unreachable"), "Reachable": ("False", "Unreachable"),
          "KubeRayInstalled": ("Unknown", "NotProbed")}),
        (True, False, False, "NotReady",
         {"Ready": ("False", "CRDsMissing"), "Reachable": ("True", "Reachable"),
          "KubeRayInstalled": ("False", "CRDsMissing")}),
        (True, None, False, "Pending",
         {"Ready": ("Unknown", "NotProbed"), "KubeRayInstalled": ("Unknown", "NotProbed")}),
        (True, True, False, "Ready",
         {"Ready": ("True", "ClusterReady"), "Reachable": ("True", "Reachable"),
          "KubeRayInstalled": ("True", "CRDsFound")}),
        (True, True, True, "Ready", {"Ready": ("True", "Cordoned")}),
    ],
)  # fmt: skip
def test_probe_to_status(
    reachable: bool | None,
    kuberay: bool | None,
    cordoned: bool,
    phase: str,
    expected: dict[str, tuple[str, str]],
) -> None:
    cc = example(cordoned)
    status = compute_cluster_status(
        cc,
        reachable=reachable,
        kuberay_installed=kuberay,
        allocated_gpus={"H100": 2, "A100-80GB": 0},
        previous=None,
        now=T0,
        error="connection refused" if reachable is False else None,
    )
    assert status.phase == phase
    got = {c.type: (c.status, c.reason) for c in status.conditions or []}
    for type_, pair in expected.items():
        assert got[type_] == pair
    assert [c.type for c in status.conditions or []] == ["Ready", "Reachable", "KubeRayInstalled"]
    assert status.allocated_gpus == {"H100": 2}
    assert status.gpu_summary == "A100-80GB 0/16, H100 2/8"
    assert status.observed_generation == 2
    assert status.last_probe_time == (None if reachable is None else T0)
    if reachable is False:
        reach = next(c for c in status.conditions or [] if c.type == "Reachable")
        assert reach.message == "connection refused"
    body = cc.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert validate_object(body) == []


def test_repeated_probe_is_not_a_change_but_a_flip_is() -> None:
    cc = example()
    up = partial(
        compute_cluster_status,
        cc,
        reachable=True,
        kuberay_installed=True,
        allocated_gpus={},
        kubernetes_version="v1.31.2",
    )
    first = up(previous=None, now=T0)
    again = up(previous=first, now=T1)
    assert again.last_probe_time == T1
    assert not cluster_status_changed(first, again)
    down = compute_cluster_status(
        cc, reachable=False, kuberay_installed=None, allocated_gpus={}, previous=again, now=T1
    )
    assert cluster_status_changed(again, down)
    times = {c.type: c.last_transition_time for c in down.conditions or []}
    assert times == {"Ready": T1, "Reachable": T1, "KubeRayInstalled": T1}
    assert down.kubernetes_version == "v1.31.2"  # remembered while unreachable
    assert cluster_status_changed(None, down)
