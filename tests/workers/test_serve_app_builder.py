"""Round trip: `ServeAppConfig` -> serveConfigV2 `args` -> `build_app` (what Ray Serve calls)."""

from __future__ import annotations

import importlib

import pytest

from tramontane_workers.contract.serve_config import (
    DEPLOYMENT_NAME,
    SERVE_APP_IMPORT_PATH,
    AdapterSource,
    AutoscalingConfig,
    EngineConfig,
    ReplicaResources,
    ServeAppConfig,
    render_serve_config_v2,
)

pytest.importorskip("ray.serve")


def test_builder_parses_rendered_args_back() -> None:
    config = ServeAppConfig(
        name="chat",
        route_prefix="/chat",
        engine=EngineConfig(
            engine="vllm",
            model_uri="pvc://models/mistral-7b",
            served_model_name="mistral-7b",
            max_adapters_per_replica=3,
            adapters=[AdapterSource(name="legal", uri="s3://bucket/legal")],
        ),
        autoscaling=AutoscalingConfig(min_replicas=0, max_replicas=5, target_ongoing_requests=4),
        resources=ReplicaResources(num_cpus=4, num_gpus=1, memory_bytes=8 * 2**30),
        max_ongoing_requests=32,
    )
    (rendered,) = render_serve_config_v2([config])["applications"]
    module, _, attr = rendered["import_path"].partition(":")
    assert rendered["import_path"] == SERVE_APP_IMPORT_PATH
    builder = getattr(importlib.import_module(module), attr)
    app = builder(rendered["args"])
    # Application internals: the bound deployment carries the options Serve will apply.
    deployment = app._bound_deployment
    assert deployment.name == DEPLOYMENT_NAME
    assert ServeAppConfig.from_serve_args(deployment.init_args[0]) == config
    assert deployment.max_ongoing_requests == 32
    assert deployment.ray_actor_options["num_gpus"] == 1.0
    assert deployment.ray_actor_options["memory"] == 8 * 2**30
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (0, 5)
    assert scaling.target_ongoing_requests == 4


def test_builder_rejects_bad_args_naming_the_field() -> None:
    from pydantic import ValidationError

    from tramontane_workers.serve.app import build_app

    with pytest.raises(ValidationError, match="route_prefix"):
        build_app({"name": "x", "engine": {"engine": "vllm", "model_uri": "file:///m"}})
