"""`tramontane serve`: run a model locally on Ray Serve with the gRPC API (local mode).

The same Serve application KubeRay runs, on a local Ray: gRPC `tramontane.v1.Inference` on
`--grpc-port`, metadata `("application", NAME)`. `--tiny DIR` writes the tiny test Mistral into
DIR first, so `tramontane serve --tiny /tmp/tiny` works with no model download. A bad flag value
(a URI of an unknown scheme, a bad name) is refused before Ray starts, as `--flag: message` on
stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tramontane_cli.args import (
    EXIT_CODES_EPILOG,
    EXIT_USAGE,
    non_negative_float,
    port,
    positive_int,
)
from tramontane_workers.contract.serve_config import (
    GRPC_PORT,
    AdapterSource,
    EngineConfig,
    ReplicaResources,
    ServeAppConfig,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model locally over gRPC (Ray Serve)", epilog=EXIT_CODES_EPILOG
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-uri", help="checkpoint URI (file://, pvc://, hf://, s3://...)")
    source.add_argument("--tiny", type=Path, metavar="DIR", help="write and serve the tiny model")
    parser.add_argument("--name", default="local", help="application name (gRPC metadata)")
    parser.add_argument("--served-model-name", default=None, help="model name requests use")
    parser.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=URI", help="a LoRA adapter"
    )
    parser.add_argument("--max-adapters", type=positive_int, default=4, help="adapters per replica")
    parser.add_argument("--grpc-port", type=port, default=GRPC_PORT)
    parser.add_argument("--num-cpus", type=non_negative_float, default=1.0, help="CPUs per replica")
    parser.add_argument(
        "--num-gpus",
        type=non_negative_float,
        default=0.0,
        help="GPUs per replica (a fraction such as 0.5 shares one)",
    )
    parser.set_defaults(func=run)


# Where each field of the application config comes from on the command line. Each model is
# built on its own, so a problem's location is a field of the model its error is titled with.
_FLAGS: dict[str, str] = {
    "name": "--name",
    "route_prefix": "--name",
    "engine": "--engine",
    "model_uri": "--model-uri",
    "served_model_name": "--served-model-name",
    "max_adapters_per_replica": "--max-adapters",
    "adapters": "--adapter",
    "num_cpus": "--num-cpus",
    "num_gpus": "--num-gpus",
}


def flag_problems(error: ValidationError) -> list[str]:
    """`--flag: message` for each problem pydantic found in the config the flags describe."""
    from tramontane_api.validate import pydantic_message

    problems = []
    for item in error.errors():
        field = next((str(p) for p in item["loc"] if isinstance(p, str)), "")
        flag = "--adapter" if error.title == "AdapterSource" else _FLAGS.get(field, "--adapter")
        problems.append(f"{flag}: {pydantic_message(item)}")
    return problems


def local_config(args: argparse.Namespace, model_uri: str) -> ServeAppConfig:
    """The application config a `serve` invocation describes (pure)."""
    adapters = []
    for item in args.adapter:
        name, sep, uri = item.partition("=")
        if not sep:
            raise ValueError(f"--adapter: expected NAME=URI, got {item!r}")
        try:
            adapters.append(AdapterSource(name=name, uri=uri))
        except ValidationError as exc:
            from tramontane_api.validate import pydantic_message

            field = next((str(p) for p in exc.errors()[0]["loc"]), "")
            detail = pydantic_message(exc.errors()[0])
            raise ValueError(f"--adapter: {item!r}: {field}: {detail}") from exc
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


def checked_config(args: argparse.Namespace) -> ServeAppConfig | list[str]:
    """The config the flags describe, or `--flag: message` problems (before any model is
    written or Ray started). A local model directory must exist."""
    tiny = args.tiny.resolve() if args.tiny is not None else None
    model_uri = f"file://{tiny}" if tiny is not None else args.model_uri
    try:
        config = local_config(args, model_uri)
    except ValidationError as exc:
        return flag_problems(exc)
    except ValueError as exc:
        return [str(exc)]
    if tiny is None and model_uri.startswith("file://"):
        path = Path(model_uri.removeprefix("file://"))
        if not path.is_dir():
            return [f"--model-uri: {path} is not a directory holding a model"]
    if tiny is not None and tiny.exists() and not tiny.is_dir():
        return [f"--tiny: {tiny} exists and is not a directory"]
    return config


def run(args: argparse.Namespace) -> int:
    config = checked_config(args)
    if isinstance(config, list):
        for problem in config:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    if args.tiny is not None:
        from tramontane_workers.models.tiny import write_tiny_mistral

        try:
            written = write_tiny_mistral(args.tiny.resolve())
        except OSError as exc:
            print(f"--tiny: cannot write the tiny model: {exc}", file=sys.stderr)
            return EXIT_USAGE
        config.engine.model_uri = f"file://{written}"
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
