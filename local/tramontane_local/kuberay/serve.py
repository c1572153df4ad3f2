"""Ray Serve applications of RayServices' serveConfigV2, on the local Ray (blocking calls).

Each application is built as KubeRay's Ray cluster would build it: `ServeAppConfig` parsed
from the application's `args`, the worker's app builder (`tramontane_workers.serve.app`), and
the name and route prefix the config gives. Serve's gRPC proxy listens on `grpc_port` with the
servicer functions the config names. Calls block (a deploy waits for its replicas to be
healthy): run them in a thread, one at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.config import gRPCOptions

from tramontane_workers.contract.serve_config import GRPC_SERVICER_FUNCTION, ServeAppConfig
from tramontane_workers.serve.app import build_app


class ServeApps:
    """Serve on the connected Ray, with gRPC on `grpc_port` and HTTP on `http_port`."""

    def __init__(self, grpc_port: int, http_port: int) -> None:
        self.grpc_port = grpc_port
        self.http_port = http_port
        self._started = False

    def _start(self, servicers: list[str]) -> None:
        if self._started:
            return
        serve.start(
            http_options={"host": "127.0.0.1", "port": self.http_port},
            grpc_options=gRPCOptions(port=self.grpc_port, grpc_servicer_functions=servicers),
        )
        self._started = True

    def deploy(self, app: Mapping[str, Any], grpc_options: Mapping[str, Any] | None) -> None:
        """Deploy (or update in place) one `applications[]` entry; raises what Serve raises
        (an invalid `args` is a pydantic ValidationError)."""
        servicers = list((grpc_options or {}).get("grpc_servicer_functions") or [])
        self._start(servicers or [GRPC_SERVICER_FUNCTION])
        config = ServeAppConfig.from_serve_args(dict(app["args"]))
        serve.run(
            build_app(config.to_serve_args()),
            name=str(app["name"]),
            route_prefix=app.get("route_prefix", config.route_prefix),
        )

    def delete(self, name: str) -> None:
        """Delete the application `name` (nothing if it is not deployed)."""
        if self._started:
            serve.delete(name)

    def shutdown(self) -> None:
        """Stop Serve (its proxies release their ports)."""
        if self._started:
            with contextlib.suppress(Exception):  # already gone with its Ray
                serve.shutdown()  # type: ignore[no-untyped-call]
            self._started = False
