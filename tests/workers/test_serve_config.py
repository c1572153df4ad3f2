"""The serving contract: validation, rendering, and acceptance by Ray Serve's own schema."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from tramontane_workers.contract.serve_config import (
    DEPLOYMENT_NAME,
    GRPC_PORT,
    GRPC_SERVICER_FUNCTION,
    SERVE_APP_IMPORT_PATH,
    AdapterSource,
    AutoscalingConfig,
    EngineConfig,
    ReplicaResources,
    ServeAppConfig,
    render_serve_config_v2,
)


def _app(name: str = "chat", **kw: object) -> ServeAppConfig:
    engine = EngineConfig(
        engine="transformers",
        model_uri="file:///models/tiny",
        served_model_name="tiny",
        adapters=[AdapterSource(name="legal", uri="pvc://adapters/legal")],
    )
    return ServeAppConfig(name=name, route_prefix=f"/{name}", engine=engine, **kw)


def test_render_has_grpc_apps_and_deployment_options() -> None:
    app = _app(
        autoscaling=AutoscalingConfig(min_replicas=0, max_replicas=4, initial_replicas=1),
        resources=ReplicaResources(num_cpus=2, num_gpus=1, memory_bytes=2**30),
        max_ongoing_requests=8,
    )
    doc = render_serve_config_v2([app])
    assert doc["grpc_options"] == {
        "port": GRPC_PORT,
        "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION],
    }
    (rendered,) = doc["applications"]
    assert rendered["import_path"] == SERVE_APP_IMPORT_PATH
    assert rendered["route_prefix"] == "/chat"
    (dep,) = rendered["deployments"]
    assert dep["name"] == DEPLOYMENT_NAME
    assert dep["max_ongoing_requests"] == 8
    assert dep["autoscaling_config"]["min_replicas"] == 0
    assert dep["autoscaling_config"]["initial_replicas"] == 1
    assert dep["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0, "memory": 2**30}
    assert ServeAppConfig.from_serve_args(rendered["args"]) == app


def test_rendered_document_passes_ray_serve_schema() -> None:
    schema = pytest.importorskip("ray.serve.schema")
    doc = render_serve_config_v2([_app("a"), _app("b")])
    parsed = schema.ServeDeploySchema.model_validate(doc)
    assert [a.name for a in parsed.applications] == ["a", "b"]
    assert parsed.grpc_options.grpc_servicer_functions == [GRPC_SERVICER_FUNCTION]


def test_duplicate_application_names_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate name"):
        render_serve_config_v2([_app("a"), _app("a")])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"min_replicas": 1, "max_replicas": 2, "initial_replicas": 5}, "initial_replicas"),
    ],
)
def test_autoscaling_bounds(kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        AutoscalingConfig(**kwargs)


def test_bad_uri_names_the_field() -> None:
    with pytest.raises(ValidationError, match="model_uri 'http://x'"):
        EngineConfig(engine="vllm", model_uri="http://x", served_model_name="m")
    with pytest.raises(ValidationError, match="adapter uri"):
        AdapterSource(name="a", uri="/no/scheme")


def test_duplicate_adapter_names_rejected() -> None:
    src = AdapterSource(name="a", uri="file:///a")
    with pytest.raises(ValidationError, match="duplicate adapter names"):
        EngineConfig(
            engine="vllm", model_uri="file:///m", served_model_name="m", adapters=[src, src]
        )


def test_contract_imports_without_torch_or_ray() -> None:
    code = (
        "import sys, tramontane_workers.contract.serve_config\n"
        "bad = {'torch', 'ray', 'transformers'} & set(sys.modules)\n"
        "raise SystemExit(f'imported {bad}' if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
