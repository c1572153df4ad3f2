"""Plain `kubectl` against local mode's API server (the emulator), as a newcomer would use it
with the kubeconfig `tramontane local up` writes: apply the examples, see them, be told why a
typo or an unsupported request is refused."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tramontane_local.apiserver import ApiServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


@pytest.fixture
async def kubeconfig(tmp_path: Path) -> AsyncIterator[Path]:
    server = ApiServer()
    await server.start()
    path = tmp_path / "kubeconfig"
    path.write_text(server.kubeconfig())
    try:
        yield path
    finally:
        await server.close()


async def kubectl(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", *args, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_apply_get_and_refusals(kubeconfig: Path, tmp_path: Path) -> None:
    tenant = EXAMPLES / "tenant-search-team.yaml"
    cluster = EXAMPLES / "computecluster-onprem.yaml"
    code, out, err = await kubectl(kubeconfig, "apply", "-f", str(tenant), "-f", str(cluster))
    assert code == 0, err
    assert "tenant.tramontane.dev/search-team created" in out
    code, out, err = await kubectl(kubeconfig, "apply", "-f", str(tenant))
    assert code == 0 and "tenant.tramontane.dev/search-team unchanged" in out, err

    # Short names and the category find the resources, not their subresources.
    code, out, err = await kubectl(kubeconfig, "get", "tramontane", "-A", "-o", "name")
    assert code == 0 and "Warning" not in err, err
    assert set(out.split()) == {
        "tenant.tramontane.dev/search-team",
        f"computecluster.tramontane.dev/{_name(cluster)}",
    }
    code, out, err = await kubectl(kubeconfig, "get", "tenants", "-o", "json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["kind"] == "List" and [i["kind"] for i in listed["items"]] == ["Tenant"]
    code, out, err = await kubectl(kubeconfig, "get", "secrets", "-A")
    assert code == 0, err

    # A typo is refused by the server's validation (kubectl sends fieldValidation=Strict).
    typo = tmp_path / "typo.yaml"
    typo.write_text(tenant.read_text().replace("namespaces:", "namespacez:", 1))
    code, _, err = await kubectl(kubeconfig, "apply", "-f", str(typo))
    assert code == 1 and "spec.namespacez: unknown field" in err, err

    # `kubectl create namespace` sends protobuf: refused, saying what to do instead.
    code, _, err = await kubectl(kubeconfig, "create", "namespace", "team-a")
    assert code == 1 and "reads JSON bodies only" in err and "kubectl apply -f" in err, err


def _name(path: Path) -> str:
    import yaml

    return str(yaml.safe_load(path.read_text())["metadata"]["name"])
