"""`tramontane serve`: run a model locally on Ray Serve with the gRPC API (local mode).

The same Serve application KubeRay runs, on a local Ray: gRPC `tramontane.v1.Inference` on
`--grpc-port`, metadata `("application", NAME)`. `--tiny DIR` writes the tiny test Mistral into
DIR first, so `tramontane serve --tiny /tmp/tiny` works with no model download.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from tramontane_workers.contract.serve_config import (
    GRPC_PORT,
    AdapterSource,
    EngineConfig,
    ReplicaResources,
    ServeAppConfig,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="serve a model locally over gRPC (Ray Serve)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-uri", help="checkpoint URI (file://, pvc://, hf://, s3://...)")
    source.add_argument("--tiny", type=Path, metavar="DIR", help="write and serve the tiny model")
    parser.add_argument("--name", default="local", help="application name (gRPC metadata)")
    parser.add_argument("--served-model-name", default=None, help="model name requests use")
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=URI", help="a LoRA adapter"
    )
    parser.add_argument("--max-adapters", type=int, default=4, help="adapters per replica")
    parser.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    parser.set_defaults(func=run)


def local_config(args: argparse.Namespace, model_uri: str) -> ServeAppConfig:
    """The application config a `serve` invocation describes (pure)."""
    adapters = []
    for item in args.adapter:
        name, sep, uri = item.partition("=")
        if not sep:
            raise ValueError(f"--adapter {item!r}: expected NAME=URI")
        adapters.append(AdapterSource(name=name, uri=uri))
    return ServeAppConfig(
        name=args.name,
        route_prefix=f"/{args.name}",
        engine=EngineConfig(
            engine=args.engine,
            model_uri=model_uri,
            served_model_name=args.served_model_name or args.name,
            max_adapters_per_replica=args.max_adapters,
            adapters=adapters,
        ),
        resources=ReplicaResources(num_cpus=args.num_cpus, num_gpus=args.num_gpus),
    )


def run(args: argparse.Namespace) -> int:
    model_uri = args.model_uri
    if args.tiny is not None:
        from tramontane_workers.models.tiny import write_tiny_mistral

        model_uri = f"file://{write_tiny_mistral(args.tiny.resolve())}"
    try:
        config = local_config(args, model_uri)
    except ValueError as exc:
        print(f"tramontane serve: {exc}")
        return 2
    import ray

    from tramontane_workers.serve.local import run_local

    ray.init(include_dashboard=False)
    run_local([config], grpc_port=args.grpc_port)
    print(
        f"serving {config.engine.served_model_name!r} on gRPC 127.0.0.1:{args.grpc_port} "
        f"(metadata application={config.name}); Ctrl-C stops",
        flush=True,
    )
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        ray.shutdown()
    return 0
