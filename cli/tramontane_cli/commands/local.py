"""`tramontane local`: run a ModelDeployment on this machine (local mode), and talk to it.

With no FILE it runs the quickstart embedded in the package (a tiny Mistral on the reference
engine, written on first use: seeded random weights and the real v3 tokenizer, so nothing is
downloaded and its answers are word salad). Steps: validate the manifest exactly as
`tramontane validate` does, render the Serve application exactly as the operator renders it
into a RayService's serveConfigV2, run it on a local Ray with Serve's gRPC proxy, then stream
one chat completion over gRPC and print it with its usage. `--serve` keeps serving afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

QUICKSTART = "quickstart.yaml"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local",
        help="Run a ModelDeployment locally on Ray Serve and chat with it (local mode).",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument(
        "file", nargs="?", type=Path, help="ModelDeployment manifest (default: the quickstart)"
    )
    parser.add_argument("--prompt", default="Say hello to Tramontane.", help="user message")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7, help="random_seed of the request")
    parser.add_argument("--grpc-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    parser.add_argument(
        "--write-tiny",
        action="store_true",
        help="write the tiny model at the manifest's file:// source if it is missing "
        "(implied for the quickstart)",
    )
    parser.set_defaults(func=run)


def load_deployment(text: str, name: str) -> Any:
    """The first ModelDeployment in `text`, validated; `ValueError` lists every problem."""
    import yaml

    from tramontane_api.v1alpha1 import ModelDeployment
    from tramontane_api.validate import validate_text

    _, problems = validate_text(text)
    if problems:
        raise ValueError("\n".join(p.format(name) for p in problems))
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment":
            return ModelDeployment.model_validate(doc)
    raise ValueError(f"{name}: no ModelDeployment in the file")


def run(args: argparse.Namespace) -> int:
    if args.file is None:
        name = f"<embedded {QUICKSTART}>"
        text = resources.files("tramontane_cli").joinpath(QUICKSTART).read_text()
        write_tiny = True
    else:
        name = str(args.file)
        try:
            text = args.file.read_text()
        except OSError as exc:
            print(f"{name}: cannot read: {exc}", file=sys.stderr)
            return 2
        write_tiny = args.write_tiny
    try:
        md = load_deployment(text, name)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1

    source = md.spec.model.source
    if source.startswith("file://") and not Path(source.removeprefix("file://")).exists():
        if not write_tiny:
            print(
                f"{name}: spec.model.source: {source} does not exist "
                "(--write-tiny writes the tiny test model there)",
                file=sys.stderr,
            )
            return 1
        from tramontane_workers.models.tiny import write_tiny_mistral

        print(f"writing the tiny Mistral to {source} ...", flush=True)
        write_tiny_mistral(Path(source.removeprefix("file://")))
    return _serve_and_chat(md, args)


def _serve_and_chat(md: Any, args: argparse.Namespace) -> int:
    import grpc
    import ray
    from ray import serve

    from tramontane_operator.builders.serve import serve_app
    from tramontane_operator.placement import PoolSize
    from tramontane_workers.contract import inference_pb2 as pb
    from tramontane_workers.contract import inference_pb2_grpc as pb_grpc
    from tramontane_workers.serve.local import free_port, run_local

    scaling = md.spec.scaling
    replicas = scaling.replicas if scaling.replicas is not None else max(1, scaling.min_replicas)
    app = serve_app(md, PoolSize(replicas, scaling.min_replicas, scaling.max_replicas))
    port = args.grpc_port or free_port()

    started = time.monotonic()
    own_ray = not ray.is_initialized()  # embedded callers (tests) bring their own session
    if own_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        print(f"starting {md.metadata.name!r} on Ray Serve ({app.engine.engine} engine) ...")
        run_local([app], grpc_port=port, http_port=free_port())
        print(
            f"ready in {time.monotonic() - started:.1f} s: gRPC 127.0.0.1:{port}, "
            f"metadata application={app.name}, model {app.engine.served_model_name!r}"
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
            request = pb.ChatRequest(
                model=app.engine.served_model_name,
                messages=[pb.Message(role="user", content=args.prompt)],
                max_tokens=args.max_tokens,
                random_seed=args.seed,
            )
            print(f"\nuser> {args.prompt}\nassistant> ", end="", flush=True)
            sent = time.monotonic()
            first: float | None = None
            usage = finish = None
            for chunk in stub.ChatStream(request, metadata=(("application", app.name),)):
                for choice in chunk.choices:
                    if choice.delta.content and first is None:
                        first = time.monotonic() - sent
                    print(choice.delta.content, end="", flush=True)
                    finish = choice.finish_reason or finish
                if chunk.HasField("usage"):
                    usage = chunk.usage
            print()
            if usage is not None:
                print(
                    f"\n[{finish}] prompt {usage.prompt_tokens} + completion "
                    f"{usage.completion_tokens} tokens; first token after "
                    f"{(first or 0) * 1000:.0f} ms, all in {time.monotonic() - sent:.2f} s"
                )
        if args.serve:
            print("serving; Ctrl-C stops")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        # Serve keeps its proxy's port for life: shut it down so that a later serve.start
        # (in the same Ray session) can listen where it asks to.
        serve.shutdown()  # type: ignore[no-untyped-call]
        if own_ray:
            ray.shutdown()
    return 0
