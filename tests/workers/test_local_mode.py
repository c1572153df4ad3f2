"""`tramontane local up | status | down`: the whole loop on this machine, as a user runs it.

The quickstart runs end to end in a subprocess (its own Ray, API server, KubeRay, operator and
router: `local down` and the teardown are about processes, so they need one): the tiny Mistral
is served, a chat goes through the router, a FineTuneJob trains an adapter that is deployed,
and through the router the adapter answers the trained answers while the base model does not.
`local status -o json` is read while it runs; afterwards no Ray process, router or API server
is left. Bad input is refused before anything starts, naming file, line and field.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tramontane_cli.main import main
from tramontane_local.manifests import quickstart_pairs
from tramontane_local.stack import ray_processes

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ["core", "operator", "router", "workers", "cli", "local"]


def _env(home: Path) -> dict[str, str]:
    path = os.pathsep.join(
        [*(str(ROOT / r) for r in SOURCE_ROOTS), os.environ.get("PYTHONPATH", "")]
    )
    return {**os.environ, "TRAMONTANE_HOME": str(home), "PYTHONPATH": path, "COLUMNS": "200"}


def _cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tramontane_cli.main", "local", *args],
        env=_env(home), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _cli_main(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`tramontane ARGS` (any command, not only `local`) with local mode's home."""
    return subprocess.run(
        [sys.executable, "-m", "tramontane_cli.main", *args],
        env=_env(home), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _start(home: Path, *args: str) -> subprocess.Popen[str]:
    # Output to a file: an unread pipe would fill and block the process.
    home.mkdir(parents=True, exist_ok=True)
    out = (home / "up.out").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "tramontane_cli.main", "local", "up", *args],
        env=_env(home), stdout=out, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _output(home: Path) -> str:
    return (home / "up.out").read_text()


def _wait_for_state(
    home: Path, proc: subprocess.Popen[str], timeout_s: float = 180
) -> dict[str, Any]:
    state = home / "local" / "state.json"
    deadline = time.monotonic() + timeout_s
    while not state.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"local up exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no state.json")
        time.sleep(0.5)
    return dict(json.loads(state.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening(address: str) -> bool:
    host, _, port = address.split("://")[-1].rpartition(":")
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0


def _nothing_left(state: dict[str, Any]) -> None:
    assert state["raySession"].startswith("session_"), state
    deadline = time.monotonic() + 30
    while ray_processes(state["raySession"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_processes(state["raySession"]) == []
    assert not _alive(state["pid"])
    for address in (state["http"], state["grpc"], state["apiServer"]):
        assert not _listening(address), address


# ------------------------------------------------------------------------- bad input
def test_a_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path))
    missing = tmp_path / "nope.yaml"
    assert main(["local", "up", "-f", str(missing)]) == 1
    assert f"{missing}: cannot read: No such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "local" / "state.json").exists()


def test_an_invalid_manifest_names_file_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRAMONTANE_HOME", str(tmp_path))
    text = (
        (ROOT / "examples" / "quickstart-local.yaml")
        .read_text()
        .replace("maxReplicas: 1", "maxReplicas: 0")
    )
    bad = tmp_path / "md.yaml"
    bad.write_text(text)
    other = tmp_path / "deploy.yaml"
    other.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    assert main(["local", "up", "-f", str(bad), "-f", str(other)]) == 1
    err = capsys.readouterr().err
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "maxReplicas: 0" in row)
    assert f"{bad}:{line}: spec.scaling.maxReplicas:" in err
    assert f"{other}:1: kind: local mode serves" in err and "apps/v1 Deployment" in err
    assert "Traceback" not in err


def test_status_and_down_say_when_nothing_runs(tmp_path: Path) -> None:
    for command in ("status", "down"):
        result = _cli(tmp_path, command)
        assert result.returncode == 1
        assert "local mode is not running" in result.stderr and "Traceback" not in result.stderr


def _router_leases(api_server: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """The router Leases in local mode's API server (the operator lists the same)."""
    from tramontane_api.rollouts import ROUTER_LEASE_LABELS
    from tramontane_local.stack import SYSTEM_NAMESPACE

    selector = ",".join(f"{k}={v}" for k, v in ROUTER_LEASE_LABELS.items())
    url = (f"{api_server}/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NAMESPACE}/leases"
           f"?labelSelector={urllib.parse.quote(selector)}")  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(url, timeout=5) as response:
            items: list[dict[str, Any]] = json.load(response).get("items") or []
        if items or time.monotonic() > deadline:
            return items
        time.sleep(0.5)


# ----------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_the_quickstart_runs_the_whole_loop(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _start(tmp_path, "--exit-when-done")
    try:
        state = _wait_for_state(tmp_path, proc)
        status = _cli(tmp_path, "status", "-o", "json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["http"] == state["http"] and shown["grpc"] == state["grpc"]
        assert set(shown["apiKeys"]) == {"quickstart"} and len(shown["apiKeys"]["quickstart"]) >= 16
        assert {"name": "tiny-mistral", "tenant": "quickstart"}.items() <= shown["models"][
            0
        ].items()
        # The router publishes its Lease (canary figures) where the operator reads them.
        assert _router_leases(state["apiServer"]), "no router Lease in tramontane-system"
        kinds = {o["kind"] for o in shown["objects"]}
        assert kinds == {"Tenant", "ComputeCluster", "ModelDeployment", "FineTuneJob"}
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - started
    out = _output(tmp_path)
    assert proc.returncode == 0, out[-5000:]
    assert "every step succeeded" in out
    # The deployment gate ran for real (the evaluator as a RayJob): both scores, before the
    # adapter was deployed and asked.
    gate = "gate qa-tune-gate: Passed: exactMatch 1.00 (base model 0.00)"
    assert gate in out, out[-5000:]
    assert out.index(gate) < out.index("adapter tiny-mistral:qa deployed")
    for question, answer in quickstart_pairs():
        assert f"tiny-mistral:qa: {question}: {answer!r}" in out, out[-5000:]
    assert "(no adapter) does not know the trained answers" in out
    # The console carries local mode's steps, not other programs' notices (they go to the logs).
    noise = ("Token authentication", "SIGTERM handler", "(raylet)", "model shards", "Traceback")
    assert not [n for n in noise if n in out], out[-5000:]
    _nothing_left(state)
    assert not (tmp_path / "local" / "state.json").exists()
    # Stopped, the CLI says so (the kubeconfig to a closed port is gone too).
    assert not (tmp_path / "local" / "kubeconfig").exists()
    after = _cli_main(tmp_path, "get", "md", "--local")
    assert after.returncode == 2 and "local mode is not running" in after.stderr, after.stderr
    print(f"quickstart end to end: {elapsed:.0f} s")


@pytest.mark.slow
def test_down_stops_local_mode_and_leaves_nothing(tmp_path: Path) -> None:
    tenant = tmp_path / "tenant.yaml"
    tenant.write_text(
        "apiVersion: tramontane.dev/v1alpha1\nkind: Tenant\nmetadata: {name: team}\n"
        "spec:\n  namespaces: [team]\n  apiKeySecretRefs: [{namespace: team, name: keys}]\n"
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: team}\n"
        "stringData: {api-key: team-key-0123456789abcdef}\n"
    )
    proc = _start(tmp_path, "-f", str(tenant))
    try:
        state = _wait_for_state(tmp_path, proc)
        shown = json.loads(_cli(tmp_path, "status", "-o", "json").stdout)
        assert shown["apiKeys"] == {"team": "team-key-0123456789abcdef"}
        assert shown["models"] == []
        down = _cli(tmp_path, "down", timeout=180)
        assert down.returncode == 0, down.stderr + _output(tmp_path)[-3000:]
        assert "nothing left behind" in down.stdout
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    _nothing_left(state)
