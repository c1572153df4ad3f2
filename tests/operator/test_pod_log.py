"""`KubeClient.pod_log` against the emulator's pod log route: the tail, the byte limit (the
server cuts the end), and a pod that is gone."""

from __future__ import annotations

from manifests import NS
from operator_harness import Clusters
from tramontane_kube import POD, KubeClient
from tramontane_kube.config import ClusterConfig


async def test_pod_log_reads_a_bounded_tail(clusters: Clusters) -> None:
    hub = clusters.hub
    client = KubeClient("hub", ClusterConfig(server=hub.url), attempts=1)
    try:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tune-x1", "namespace": NS},
               "spec": {"containers": [{"name": "c", "image": "i"}]}}  # fmt: skip
        await client.create(POD, pod)
        hub.emulator.pod_logs[(NS, "tune-x1")] = "one\ntwo\nthree\nfour\n"
        assert await client.pod_log(NS, "tune-x1", 2, 1024) == "three\nfour\n"
        assert await client.pod_log(NS, "tune-x1", 3, 8) == "two\nthre"  # cut at the limit
        assert await client.pod_log(NS, "gone", 2, 1024) is None
    finally:
        await client.close()
