"""Run Serve applications locally (tests, benchmarks, local mode) exactly as KubeRay would.

Each application is built from the `args` that `render_serve_config_v2` puts into
serveConfigV2, and Serve's gRPC proxy is started with the same servicer function.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from ray import serve
from ray.serve.config import gRPCOptions

from tramontane_workers.contract.serve_config import ServeAppConfig, render_serve_config_v2
from tramontane_workers.serve.app import build_app


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for local gRPC/HTTP listeners)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_local(apps: Sequence[ServeAppConfig], *, grpc_port: int, http_port: int = 8000) -> None:
    """Start Serve (gRPC on `grpc_port`) in the connected Ray cluster and run `apps`."""
    document = render_serve_config_v2(apps)
    grpc = document["grpc_options"]
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port},
        grpc_options=gRPCOptions(
            port=grpc_port, grpc_servicer_functions=grpc["grpc_servicer_functions"]
        ),
    )
    for rendered in document["applications"]:
        serve.run(
            build_app(rendered["args"]),
            name=rendered["name"],
            route_prefix=rendered["route_prefix"],
        )
