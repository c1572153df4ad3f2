"""Fixtures shared by every test tier.

One Ray session serves the whole test run (starting Ray costs ~7 s); tests that need it ask
for `ray_session`; tests that render the Helm chart ask for `helm`; tests of az:// storage ask
for `azurite` (a real Blob endpoint). Paths to the repository, CRDs and KubeRay's reference
CRDs live here so that no test guesses them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO_ROOT / "crds"
EXAMPLES_DIR = REPO_ROOT / "examples"


def _shared_dir() -> Path:
    """`shared/` beside the checkout; for a git worktree, beside its main checkout."""
    git = REPO_ROOT / ".git"
    roots = [REPO_ROOT]
    if git.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"
        gitdir = Path(git.read_text().partition("gitdir:")[2].strip())
        roots.append(gitdir.parents[2])
    return next((r.parent / "shared" for r in roots if (r.parent / "shared").is_dir()), roots[0])


KUBERAY_CRDS_DIR = _shared_dir() / "reference" / "kuberay-v1.7.0"


@pytest.fixture(scope="session")
def helm() -> str:
    """Path to helm v4; skip locally when absent, fail in CI."""
    local = REPO_ROOT / ".tools" / "bin" / "helm"
    found = str(local) if local.is_file() else shutil.which("helm")
    if found is None:
        message = "helm not found: run `bash .ci/install-tools.sh` (installs .tools/bin/helm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Azure Blob endpoint (Microsoft's Azurite, installed from npm by
    `.ci/install-tools.sh`) for az:// through adlfs; yields its connection string. Skipped
    locally when absent, a failure in CI."""
    local = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    found = str(local) if local.is_file() else shutil.which("azurite-blob")
    if found is None:
        message = "azurite-blob not found: run `bash .ci/install-tools.sh`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path_factory.mktemp("azurite")
    server = subprocess.Popen(
        [found, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(data),
         "--silent", "--skipApiVersionCheck", "--loose"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"azurite-blob did not start on port {port}")
            time.sleep(0.1)
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )
    finally:
        server.kill()  # its data is this run's temporary folder: nothing to shut down cleanly
        server.wait(10)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray session for the whole run; shut down at the end."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            num_cpus=int(os.environ.get("TRAMONTANE_TEST_RAY_CPUS", "4")),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    from ray import serve

    with contextlib.suppress(Exception):  # Serve may never have started
        serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def spans() -> Iterator[Any]:
    """Every span the process ends, in memory (an SDK tracer provider set once per run)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()
