"""`tramontane get KIND [NAME]`: our kinds as `kubectl get` shows them, with their conditions.

KIND is `md`/`modeldeployment(s)`, `ftj`/`finetunejob(s)`, `ev`/`evaluation(s)`, `tenant(s)`,
`cc`/`computecluster(s)`, or `tramontane` for all of them. A list is a table of the kind's
printer columns; one object (NAME given) adds every condition with its reason and message. `-o
json|yaml` prints the objects as the API server returns them. Exit status: 0 ok, 1 unknown KIND
or NAME not found, 2 usage error or the API server cannot be reached.
"""

from __future__ import annotations

import argparse
from typing import Any

from tramontane_api.v1alpha1 import KINDS, KindInfo
from tramontane_cli import errors, kubeaccess, output
from tramontane_cli.args import EXIT_INVALID, EXIT_OK
from tramontane_cli.errors import CliError
from tramontane_kube import (
    COMPUTECLUSTER,
    EVALUATION,
    FINETUNEJOB,
    MODELDEPLOYMENT,
    TENANT,
    ResourceRef,
)

REFS: dict[str, ResourceRef] = {
    r.kind: r for r in (MODELDEPLOYMENT, FINETUNEJOB, EVALUATION, TENANT, COMPUTECLUSTER)
}
INFOS: dict[str, KindInfo] = {k.KIND_INFO.kind: k.KIND_INFO for k in KINDS}
ALL = "tramontane"
EPILOG = (
    "exit status: 0 ok; 1 unknown kind, or no object of that name; 2 usage error, "
    "unusable kubeconfig, or the API server cannot be reached"
)


def kind_names() -> dict[str, str]:
    """Every name a kind goes by (kind, singular, plural, short names; lower case) -> kind."""
    names = {}
    for info in INFOS.values():
        for name in (info.kind, info.singular, info.plural, *info.short_names):
            names[name.lower()] = info.kind
    return names


def resolve_kinds(text: str) -> list[str]:
    """The kinds KIND names (all four for `tramontane`); CliError naming the known ones."""
    wanted = text.lower().split(".", 1)[0]  # `finetunejobs.tramontane.dev` too
    if wanted == ALL:
        return list(INFOS)
    kind = kind_names().get(wanted)
    if kind is None:
        known = "md, ftj, ev, tenant, cc (or their full names), tramontane"
        raise CliError(EXIT_INVALID, f"KIND: unknown kind {text!r}; known: {known}")
    return [kind]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "get",
        help="show ModelDeployments, FineTuneJobs, Evaluations, Tenants, ComputeClusters and "
        "their conditions",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=EPILOG,
    )
    parser.add_argument("kind", metavar="KIND", help="md, ftj, ev, tenant, cc, or tramontane (all)")
    parser.add_argument("name", nargs="?", metavar="NAME", help="one object")
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="list in every namespace"
    )
    kubeaccess.add_kube_flags(parser)
    output.add_output_flag(parser)
    parser.set_defaults(func=lambda args: errors.run(lambda: run_get(args)))


async def fetch(
    target: kubeaccess.Target, kind: str, name: str | None, all_namespaces: bool = False
) -> list[dict[str, Any]]:
    """The objects of `kind` (one, by name) in the target's namespace; CliError if not found."""
    ref = REFS[kind]
    namespace = None if all_namespaces or not ref.namespaced else target.namespace
    async with kubeaccess.client(target) as api:
        if name is None:
            items, _ = await api.list(ref, namespace)
            return sorted(items, key=_sort_key)
        found = await api.get(ref, target.namespace if ref.namespaced else None, name)
    if found is None:
        where = f" in namespace {target.namespace}" if ref.namespaced else ""
        raise CliError(EXIT_INVALID, f"{kind} {name!r} not found{where}")
    return [found]


def _sort_key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _with_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Items as a list returns them may lack `kind`/`apiVersion`: add them for -o json|yaml."""
    ref = REFS[kind]
    return [{"apiVersion": ref.api_version, "kind": kind, **i} for i in items]


async def run_get(args: argparse.Namespace) -> int:
    kinds = resolve_kinds(args.kind)
    if args.name is not None and len(kinds) > 1:
        raise CliError(EXIT_INVALID, "NAME: give one kind with a name, not 'tramontane'")
    target = kubeaccess.connect(args)
    found = {
        k: _with_kind(await fetch(target, k, args.name, args.all_namespaces), k) for k in kinds
    }
    if args.output != "table":
        objects = [o for k in kinds for o in found[k]]
        print(output.dump(objects, args.output, single=args.name is not None))
        return EXIT_OK
    blocks = []
    for kind in kinds:
        info = INFOS[kind]
        if args.name is not None:
            blocks.append(output.describe(found[kind][0], info))
        elif found[kind]:
            blocks.append(output.table(found[kind], info))
        elif len(kinds) == 1:
            where = f" in namespace {target.namespace}" if REFS[kind].namespaced else ""
            blocks.append(f"No {info.plural} found{where}.")
    print("\n\n".join(blocks) if blocks else "No Tramontane objects found.")
    return EXIT_OK
