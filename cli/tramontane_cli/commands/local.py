"""`tramontane local up | status | down`: the whole control plane on this machine (local mode).

`up [-f FILE ...] [--exit-when-done]` starts a local Ray, an emulated Kubernetes API server
on 127.0.0.1 (kubeconfig in `$TRAMONTANE_HOME/local/`, default `~/.tramontane/local/`), a
local KubeRay, the operator and the router — the same code a cluster runs — then applies the
FILEs (Tenants and their API-key Secrets, ModelDeployments, FineTuneJobs: validated first).
With no FILE it runs the embedded quickstart: a tenant, a tiny Mistral, a chat through the
router, a LoRA fine-tune auto-deployed as an adapter, and its trained answers. Ctrl-C stops
everything. `status [-o json]` shows objects, phases, endpoints and models; `down` stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tramontane_cli.args import EXIT_CODES_EPILOG


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local",
        help="Run the whole control plane on this machine (local mode).",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="local_command", metavar="COMMAND")
    sub.required = True
    up = sub.add_parser("up", help="Start local mode (the quickstart with no -f).",
                        epilog=EXIT_CODES_EPILOG)  # fmt: skip
    up.add_argument("-f", "--file", dest="files", action="append", type=Path, default=[],
                    metavar="FILE", help="manifests to apply (repeatable)")  # fmt: skip
    up.add_argument("--exit-when-done", action="store_true",
                    help="run the quickstart (or apply the files), tear down, exit 0 only if "
                    "every step succeeded")  # fmt: skip
    up.set_defaults(func=_up)
    status = sub.add_parser("status", help="Objects, phases, endpoints and models.")
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    status.set_defaults(func=_status)
    down = sub.add_parser("down", help="Stop local mode and check nothing is left.")
    down.set_defaults(func=_down)


def _up(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tramontane_local.manifests import ManifestProblems
    from tramontane_local.up import LocalError, up

    try:
        return asyncio.run(up(args.files, args.exit_when_done, Console()))
    except ManifestProblems as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 1
    except LocalError as exc:
        print(f"tramontane local up: {exc}", file=sys.stderr)
        return 1


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tramontane_local.up import LocalError, print_status, status

    try:
        data = asyncio.run(status())
    except LocalError as exc:
        print(f"tramontane local status: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        print_status(data, Console())
    return 0


def _down(args: argparse.Namespace) -> int:
    from tramontane_local.up import LocalError, down

    try:
        left = down()
    except LocalError as exc:
        print(f"tramontane local down: {exc}", file=sys.stderr)
        return 1
    if left:
        print("tramontane local down: left behind: " + "; ".join(left), file=sys.stderr)
        return 1
    print("local mode stopped; nothing left behind")
    return 0
