"""Exec credential plugins end to end: a member whose kubeconfig Secret names a plugin (the
ComputeCluster's status says why it fails, then it becomes Ready), and the tenant CLI against a
hub reached through a plugin. The fake plugin is tests/unit/test_exec_credentials.py's."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.test_exec_credentials import exec_block, make_plugin

from manifests import AKS, SYSTEM_NS, compute_cluster
from operator_harness import Clusters, OperatorRun, eventually
from test_modeldeployment_faults import CCS, cc_phase
from tramontane_cli.main import main
from tramontane_kube import COMPUTECLUSTER, SECRET, KubeClient

MEMBER = "aks-entra"


def secret(name: str, kubeconfig: dict[str, Any]) -> dict[str, Any]:
    text = yaml.safe_dump(kubeconfig).encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": SYSTEM_NS},
        "data": {"kubeconfig": base64.b64encode(text).decode()},
    }


def with_exec(server: str, user: str, block: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": user,
        "clusters": [{"name": user, "cluster": {"server": server}}],
        "users": [{"name": user, "user": {"exec": block}}],
        "contexts": [{"name": user, "context": {"cluster": user, "user": user}}],
    }


def reachable_message(clusters: Clusters, name: str) -> str:
    cc = clusters.hub.emulator.stored(CCS, None, name) or {}
    conditions = (cc.get("status") or {}).get("conditions") or []
    return next((c["message"] for c in conditions if c["type"] == "Reachable"), "")


async def test_a_member_reached_through_an_exec_plugin(
    tmp_path: Path, clusters: Clusters, api: KubeClient, operator: OperatorRun
) -> None:
    plugin = make_plugin(tmp_path)
    failing = with_exec(clusters[AKS].url, "entra", exec_block(plugin, MODE="fail"))
    await api.create(SECRET, secret(f"{MEMBER}-kubeconfig", failing))
    ref = {"namespace": SYSTEM_NS, "name": f"{MEMBER}-kubeconfig"}
    await api.create(
        COMPUTECLUSTER,
        compute_cluster(
            MEMBER, cloud="azure", region="swedencentral", connection={"kubeconfigSecretRef": ref}
        ),
    )
    await eventually(lambda: cc_phase(clusters, MEMBER) == "Unreachable")
    message = reachable_message(clusters, MEMBER)
    assert message.startswith(
        f"Secret {SYSTEM_NS}/{MEMBER}-kubeconfig: users[entra].user.exec: "
    ), message
    assert "exited with status 3: AADSTS700016" in message

    # A block the plugin never runs for: the parse error is the status.
    always = exec_block(plugin, exec_extra={"interactiveMode": "Always"})
    await api.replace(SECRET, secret(f"{MEMBER}-kubeconfig", with_exec("x", "entra", always)))
    await api.patch(COMPUTECLUSTER, None, MEMBER, {"spec": {"region": "norwayeast"}})
    await eventually(lambda: "interactiveMode: Always" in reachable_message(clusters, MEMBER))

    # Fixed: the plugin gives a token, the probe passes, the member is Ready.
    working = with_exec(clusters[AKS].url, "entra", exec_block(plugin))
    await api.replace(SECRET, secret(f"{MEMBER}-kubeconfig", working))
    await api.patch(COMPUTECLUSTER, None, MEMBER, {"spec": {"region": "westeurope"}})
    await eventually(lambda: cc_phase(clusters, MEMBER) == "Ready")
    assert plugin.runs >= 2  # one failed run, then the working one


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


async def test_the_cli_reaches_the_hub_through_an_exec_plugin(
    tmp_path: Path, clusters: Clusters, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path)
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump(with_exec(clusters.hub.url, "hub", exec_block(plugin))))
    capsys.readouterr()
    code = await asyncio.to_thread(run_main, ["get", "md", "--kubeconfig", str(config)])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert plugin.runs == 1

    failing = with_exec(clusters.hub.url, "hub", exec_block(plugin, MODE="fail"))
    config.write_text(yaml.safe_dump(failing))
    code = await asyncio.to_thread(run_main, ["get", "md", "--kubeconfig", str(config)])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(
        f"no credentials for the Kubernetes API server: hub: {config}: users[hub].user.exec: "
    ), err
    assert "exited with status 3: AADSTS700016" in err and "Traceback" not in err

    always = exec_block(plugin, exec_extra={"interactiveMode": "Always"})
    config.write_text(yaml.safe_dump(with_exec(clusters.hub.url, "hub", always)))
    code = await asyncio.to_thread(run_main, ["get", "md", "--kubeconfig", str(config)])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(f"{config}: users[hub].user.exec.interactiveMode: Always"), err
