"""The serving contract: what the operator renders into KubeRay's `RayService.spec.serveConfigV2`.

Pure pydantic, importable without torch or ray. The operator builds `ServeAppConfig` objects
from a `ModelDeployment` and calls `render_serve_config_v2`; Ray Serve then imports
`SERVE_APP_IMPORT_PATH` and calls it with the rendered `args`, which
`ServeAppConfig.from_serve_args` parses back (the round trip is tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GRPC_PORT = 9000
HTTP_PORT = 8000
# The Serve application builder (`tramontane_workers.serve.app.build_app`).
SERVE_APP_IMPORT_PATH = "tramontane_workers.serve.app:build_app"
# The gRPC servicer registration of the project proto (`contract/inference.proto`).
GRPC_SERVICER_FUNCTION = (
    "tramontane_workers.contract.inference_pb2_grpc.add_InferenceServicer_to_server"
)
# Name of the single deployment of every application (ingress and engine in one replica, so
# LoRA multiplexing routes on the gRPC `multiplexed_model_id` metadata with no extra hop).
DEPLOYMENT_NAME = "MistralServer"


def application_name(namespace: str, name: str) -> str:
    """The Serve application of a ModelDeployment's pools: `<namespace>.<name>`. What callers
    put in the `application` metadata, so it must be unique in a member cluster, whose one
    ingress fronts every tenant's pools: two tenants' ModelDeployments may share a name, never
    a namespace (a DNS label, without dots)."""
    return f"{namespace}.{name}"


ALLOWED_URI_SCHEMES = ("file", "pvc", "hf", "az", "s3", "gs")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_uri(value: str, field: str) -> str:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ALLOWED_URI_SCHEMES or not rest:
        allowed = ", ".join(f"{s}://" for s in ALLOWED_URI_SCHEMES)
        raise ValueError(f"{field} {value!r} must start with one of {allowed} and name a path")
    return value


class AdapterSource(_Strict):
    """A LoRA adapter a replica may load on demand, addressed by `name` in requests (one
    version of a ModelDeployment's adapter: `<adapter>@<version>`)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
    uri: str

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value, "adapter uri")


class EngineConfig(_Strict):
    """Which engine serves which base model, and how."""

    engine: Literal["vllm", "transformers"]
    model_uri: str
    served_model_name: str = Field(min_length=1)
    format: Literal["auto", "mistral", "hf"] = "auto"
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    enable_tool_calling: bool = True
    max_adapters_per_replica: int = Field(default=4, ge=1)
    adapters: list[AdapterSource] = []

    @field_validator("model_uri")
    @classmethod
    def _model_uri(cls, value: str) -> str:
        return _check_uri(value, "model_uri")

    @model_validator(mode="after")
    def _unique_adapters(self) -> EngineConfig:
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapters: duplicate adapter names {dupes}")
        if self.served_model_name in names:
            raise ValueError(
                f"adapters: adapter name {self.served_model_name!r} equals served_model_name"
            )
        return self


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling; `min_replicas=0` scales an idle deployment to zero."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"autoscaling: max_replicas ({self.max_replicas}) < "
                f"min_replicas ({self.min_replicas})"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                f"autoscaling: initial_replicas ({self.initial_replicas}) must lie within "
                f"[{self.min_replicas}, {self.max_replicas}]"
            )
        return self

    def to_ray(self) -> dict[str, Any]:
        """Ray Serve's `autoscaling_config` dict."""
        out: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "downscale_delay_s": self.downscale_delay_s,
            "upscale_delay_s": self.upscale_delay_s,
        }
        if self.initial_replicas is not None:
            out["initial_replicas"] = self.initial_replicas
        return out


class ReplicaResources(_Strict):
    """What one replica asks Ray for."""

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory_bytes: int | None = Field(default=None, gt=0)

    def to_ray(self) -> dict[str, Any]:
        """Ray's `ray_actor_options` dict."""
        out: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes is not None:
            out["memory"] = self.memory_bytes
        return out


class ServeAppConfig(_Strict):
    """One Serve application: one base model (plus adapters) behind one route prefix."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    route_prefix: str = Field(pattern=r"^/")
    engine: EngineConfig
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    resources: ReplicaResources = ReplicaResources()
    max_ongoing_requests: int = Field(default=16, ge=1)

    def to_serve_args(self) -> dict[str, Any]:
        """The JSON-able `args` Ray Serve passes to the app builder."""
        return self.model_dump(mode="json")

    @classmethod
    def from_serve_args(cls, args: dict[str, Any]) -> ServeAppConfig:
        """Parse the `args` of `to_serve_args` back (what the app builder does)."""
        return cls.model_validate(args)


def render_application(app: ServeAppConfig) -> dict[str, Any]:
    """One entry of `applications[]` in a Serve config document."""
    return {
        "name": app.name,
        "route_prefix": app.route_prefix,
        "import_path": SERVE_APP_IMPORT_PATH,
        "args": app.to_serve_args(),
        "deployments": [
            {
                "name": DEPLOYMENT_NAME,
                "max_ongoing_requests": app.max_ongoing_requests,
                "autoscaling_config": app.autoscaling.to_ray(),
                "ray_actor_options": app.resources.to_ray(),
            }
        ],
    }


def render_serve_config_v2(apps: Sequence[ServeAppConfig]) -> dict[str, Any]:
    """The full Ray Serve config document (YAML-dumped into `RayService.spec.serveConfigV2`).

    gRPC on `GRPC_PORT` with the project's servicer, HTTP on `HTTP_PORT` (health only), one
    application per `ServeAppConfig`. Application names and route prefixes must be unique.
    """
    names = [a.name for a in apps]
    prefixes = [a.route_prefix for a in apps]
    for label, values in (("name", names), ("route_prefix", prefixes)):
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"applications: duplicate {label} {dupes}")
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": HTTP_PORT},
        "grpc_options": {"port": GRPC_PORT, "grpc_servicer_functions": [GRPC_SERVICER_FUNCTION]},
        "applications": [render_application(a) for a in apps],
    }
