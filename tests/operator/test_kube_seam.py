"""The I/O seam's pure parts and its client against one emulator: kubeconfigs, patches, apply."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from manifests import NS, model_deployment
from operator_harness import RAYSERVICES, Clusters
from tramontane_kube import (
    MODELDEPLOYMENT,
    RAYSERVICE,
    ClusterConfig,
    Conflict,
    Invalid,
    KubeClient,
    KubeconfigError,
    NotFound,
    Unreachable,
)
from tramontane_kube.patches import diff, merge_patch_diff
from tramontane_local.kube_emulator import Fault

KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "aks",
    "clusters": [
        {
            "name": "aks",
            "cluster": {
                "server": "https://aks.example.com:443/",
                "certificate-authority-data": base64.b64encode(b"PEM").decode(),
            },
        }
    ],
    "users": [{"name": "sa", "user": {"token": "t0k3n"}}],
    "contexts": [{"name": "aks", "context": {"cluster": "aks", "user": "sa", "namespace": "x"}}],
}


def test_kubeconfig_with_embedded_credentials() -> None:
    config = ClusterConfig.from_kubeconfig(KUBECONFIG)
    assert config.server == "https://aks.example.com:443"
    assert config.ca_data == "PEM" and config.token == "t0k3n"
    assert config.default_namespace == "x"


@pytest.mark.parametrize(
    ("user", "field"),
    [
        # An exec plugin is accepted (tramontane_kube.execauth) once its block is complete.
        ({"exec": {"command": "kubelogin"}}, "users[sa].user.exec.apiVersion is missing"),
        ({"auth-provider": {"name": "azure"}}, "users[].user.auth-provider"),
        ({"client-certificate": "/tmp/c.crt"}, "users[].user.client-certificate"),
    ],
)
def test_kubeconfig_without_embedded_credentials_is_rejected(
    user: dict[str, Any], field: str
) -> None:
    broken = {**KUBECONFIG, "users": [{"name": "sa", "user": user}]}
    with pytest.raises(KubeconfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ClusterConfig.from_kubeconfig(broken)


def test_a_users_kubeconfig_may_name_credential_files(tmp_path: Any) -> None:
    """The CLI reads a user's kubeconfig: files resolve against its directory; a Secret's may
    not name files; both may name an exec credential plugin (checked when parsed)."""
    (tmp_path / "ca.crt").write_text("CA")
    (tmp_path / "c.crt").write_text("CERT")
    (tmp_path / "c.key").write_text("KEY")
    (tmp_path / "token").write_text("file-token\n")
    user = {"client-certificate": "c.crt", "client-key": str(tmp_path / "c.key"),
            "tokenFile": "token"}  # fmt: skip
    cluster = {"server": "https://k.example.com", "certificate-authority": "ca.crt"}
    data = {**KUBECONFIG, "users": [{"name": "sa", "user": user}],
            "clusters": [{"name": "aks", "cluster": cluster}]}  # fmt: skip
    config = ClusterConfig.from_kubeconfig(data, files_from=tmp_path)
    assert config.ca_path == str(tmp_path / "ca.crt")
    assert config.client_cert_data == "CERT\n" and config.client_key_data == "KEY\n"
    assert config.bearer_token() == "file-token"
    with pytest.raises(KubeconfigError, match="certificate-authority"):
        ClusterConfig.from_kubeconfig({**data, "users": KUBECONFIG["users"]})
    with pytest.raises(KubeconfigError, match=r"users\[sa\]\.user\.exec\.command is missing"):
        ClusterConfig.from_kubeconfig(
            {**data, "users": [{"name": "sa", "user": {"exec": {}}}]}, files_from=tmp_path
        )
    (tmp_path / "c.crt").unlink()
    with pytest.raises(KubeconfigError, match="client-certificate: cannot read"):
        ClusterConfig.from_kubeconfig(data, files_from=tmp_path)


def test_kubeconfig_names_a_missing_context() -> None:
    with pytest.raises(KubeconfigError, match="contexts has no entry named 'other'"):
        ClusterConfig.from_kubeconfig(KUBECONFIG, context="other")


def test_merge_patch_owns_spec_but_only_our_metadata() -> None:
    current = {
        "metadata": {"labels": {"ours": "a", "theirs": "x"}, "annotations": {"k": "v"}},
        "spec": {"keep": 1, "gone": {"deep": True}, "nested": {"a": 1, "b": 2}},
        "status": {"whatever": True},
    }
    desired = {
        "metadata": {"labels": {"ours": "b"}},
        "spec": {"keep": 1, "nested": {"a": 1}, "new": [1, 2]},
    }
    assert merge_patch_diff(current, desired) == {
        "metadata": {"labels": {"ours": "b"}},
        "spec": {"gone": None, "nested": {"b": None}, "new": [1, 2]},
    }
    same = {"metadata": {"labels": {"ours": "a"}}, "spec": current["spec"]}
    assert merge_patch_diff(current, same) is None
    assert diff({"a": 1, "b": 2}, {"a": 1}) == {"b": None}
    assert diff({"a": 1}, {"a": 1}) is None


@pytest.fixture
async def member() -> AsyncIterator[tuple[Clusters, KubeClient]]:
    clusters = await Clusters.start("hub", ["m"])
    client = KubeClient("m", ClusterConfig(server=clusters["m"].url), attempts=3, backoff_s=0.01)
    try:
        yield clusters, client
    finally:
        await client.close()
        await clusters.close()


def _rayservice(replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "rs", "namespace": "ns", "labels": {"app": "x"}},
        "spec": {
            "rayClusterConfig": {
                "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": []}}},
                "workerGroupSpecs": [
                    {
                        "groupName": "w",
                        "replicas": replicas,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": []}},
                    }
                ],
            }
        },
    }


async def test_apply_creates_patches_and_skips_unchanged(
    member: tuple[Clusters, KubeClient],
) -> None:
    clusters, client = member
    emulator = clusters["m"].emulator
    created, outcome = await client.apply(RAYSERVICE, _rayservice(), None)
    assert outcome == "created" and created["metadata"]["uid"]
    version = created["metadata"]["resourceVersion"]
    _, outcome = await client.apply(RAYSERVICE, _rayservice(), created)
    stored = emulator.stored(RAYSERVICES, "ns", "rs")
    assert outcome == "unchanged" and stored and stored["metadata"]["resourceVersion"] == version
    patched, outcome = await client.apply(RAYSERVICE, _rayservice(3), created)
    assert outcome == "patched"
    assert patched["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 3
    # Believed absent but there (another run created it): 409, re-read, patch; one object.
    again, outcome = await client.apply(RAYSERVICE, _rayservice(2), None)
    assert outcome == "patched" and again["metadata"]["uid"] == created["metadata"]["uid"]
    assert len(emulator.stored_all(RAYSERVICES)) == 1


async def test_replace_is_optimistic_on_resource_version(
    member: tuple[Clusters, KubeClient],
) -> None:
    """PUT with the resourceVersion that was read: the first writer wins, a stale one gets 409
    and the object keeps the winner's spec; uid survives, status stays the server's."""
    clusters, _ = member
    client = KubeClient("hub", ClusterConfig(server=clusters.hub.url), attempts=1)
    emulator = clusters.hub.emulator
    try:
        await client.create(MODELDEPLOYMENT, model_deployment("md"))
        await client.patch(MODELDEPLOYMENT, NS, "md", {"status": {"phase": "Ready"}}, "status")
        read = await client.get(MODELDEPLOYMENT, NS, "md") or {}
        first = model_deployment("md", scaling={"replicas": 3, "maxReplicas": 4})
        first["metadata"]["resourceVersion"] = read["metadata"]["resourceVersion"]
        first["status"] = {"phase": "Failed"}  # not the main resource's to write
        won = await client.replace(MODELDEPLOYMENT, first)
        assert won["metadata"]["uid"] == read["metadata"]["uid"]
        assert won["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]
        assert won["metadata"]["generation"] == read["metadata"]["generation"] + 1
        stale = model_deployment("md", scaling={"replicas": 1, "maxReplicas": 4})
        stale["metadata"]["resourceVersion"] = read["metadata"]["resourceVersion"]
        with pytest.raises(Conflict, match="modified"):
            await client.replace(MODELDEPLOYMENT, stale)
        stored = emulator.stored("tramontane.dev/v1alpha1/modeldeployments", NS, "md") or {}
        assert stored["spec"]["scaling"]["replicas"] == 3
        assert stored["status"] == {"phase": "Ready"}
        with pytest.raises(NotFound):
            await client.replace(MODELDEPLOYMENT, model_deployment("absent"))
    finally:
        await client.close()


async def test_errors_are_mapped_and_5xx_retried(member: tuple[Clusters, KubeClient]) -> None:
    clusters, client = member
    emulator = clusters["m"].emulator
    emulator.faults.append(Fault("POST", "/rayservices", status=503, times=2))
    await client.create(RAYSERVICE, _rayservice())  # two 503s, then created
    assert emulator.faults[0].hits == 2
    with pytest.raises(Invalid, match="replicas"):
        await client.patch(
            RAYSERVICE,
            "ns",
            "rs",
            {"spec": {"rayClusterConfig": {"workerGroupSpecs": [{"replicas": "many"}]}}},
        )
    emulator.violations.clear()  # that rejection was the point
    with pytest.raises(NotFound):
        await client.patch(RAYSERVICE, "ns", "nope", {"spec": {}})
    assert await client.get(RAYSERVICE, "ns", "nope") is None
    await clusters["m"].stop()
    with pytest.raises(Unreachable):
        await client.get(RAYSERVICE, "ns", "rs")
