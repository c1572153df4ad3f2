"""`tramontane eval run|get|show`: a tenant's Evaluations on the hub (or in local mode with
`--local`).

`run -f eval.yaml` checks the manifest as `tramontane validate` does and a local `file://`
dataset by the evaluation rules the operator applies (each problem as `FILE:LINE: ...`), then
creates the Evaluation in the manifest's namespace (else `-n`, else the context's); when one of
that name exists, it runs it again with the manifest's spec and a new `spec.runId` (and says
so). `--wait` follows the run (phase, samples scored, queue position) until it is Passed,
Failed (each missed threshold printed) or Error (its reason printed). `get` lists Evaluations
(or shows one with its conditions); `show` prints one's scores against its thresholds and its
failing samples, and with `--plot FILE.png` draws each metric's score against the baseline's
(`evalplot`; the `plot` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from tramontane_api.v1alpha1 import Evaluation
from tramontane_cli import errors, kubeaccess, output
from tramontane_cli.args import EXIT_INVALID, EXIT_OK, EXIT_USAGE, positive_float
from tramontane_cli.commands import get as get_cmd
from tramontane_cli.errors import CliError
from tramontane_cli.manifest import checked_model
from tramontane_kube import EVALUATION, Conflict, KubeClient

EPILOG = (
    "exit status: 0 ok (with --wait: the evaluation Passed); 1 invalid manifest or dataset "
    "(FILE:LINE: message), the evaluation Failed (each missed threshold printed) or ended in "
    "Error (its reason printed), not found; 2 usage error, unreadable file, unusable "
    "kubeconfig, or a cluster that cannot be reached"
)
TERMINAL: Final = frozenset({"Passed", "Failed", "Error"})
CELL_CHARS: Final = 40


def _run(work: Any) -> Any:
    return lambda args: errors.run(lambda: work(args))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="run Evaluations and read their scores",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=EPILOG,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    run = actions.add_parser(
        "run", help="validate and create (or re-run) an Evaluation", epilog=EPILOG
    )
    run.add_argument("-f", "--filename", required=True, help="Evaluation YAML")
    run.add_argument("--wait", action="store_true", help="follow the run until it ends")
    run.add_argument(
        "--interval",
        type=positive_float,
        default=2.0,
        help="seconds between looks at the evaluation with --wait (default 2)",
    )
    kubeaccess.add_kube_flags(run)
    run.set_defaults(func=_run(run_run))

    get = actions.add_parser(
        "get", help="list Evaluations, or one with its conditions", epilog=EPILOG
    )
    get.add_argument("name", nargs="?", metavar="NAME", help="one evaluation")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    kubeaccess.add_kube_flags(get)
    output.add_output_flag(get)
    get.set_defaults(func=_run(run_get))

    show = actions.add_parser(
        "show", help="an Evaluation's scores, thresholds and failing samples", epilog=EPILOG
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument(
        "--plot", metavar="FILE.png", help="also draw each metric's scores into a PNG file"
    )
    kubeaccess.add_kube_flags(show)
    output.add_output_flag(show)
    show.set_defaults(func=_run(run_show))


# ----------------------------------------------------------------------------- run
def _check_manifest(path: str) -> Evaluation:
    """The Evaluation in `path`, checked by the model, the CRD schema and its CEL rules."""
    return checked_model(path, Evaluation, "Evaluation")


def _check_dataset(path: str, ev: Evaluation, local: bool) -> None:
    """A `file://` dataset: refused against a cluster (no one there can read it), else
    validated by the evaluation rules as the local operator will; CliError with each bad line."""
    uri = ev.spec.dataset.uri
    if not uri.startswith("file://"):
        return
    if not local:
        raise CliError(
            EXIT_INVALID,
            f"{path}: spec.dataset.uri: {uri}: file:// is only readable in local mode "
            "(--local); put it where the cluster can read it (az://, s3://, gs:// or pvc://)",
        )
    from tramontane_cli.commands.dataset import print_dataset_problems
    from tramontane_workers.contract.datasets import DatasetUnreadable, validate_uri

    try:
        summary = validate_uri(uri, evaluation=True)
    except DatasetUnreadable as exc:
        raise CliError(EXIT_USAGE, f"{path}: spec.dataset.uri: {uri}: cannot read: {exc}") from exc
    if print_dataset_problems(summary, list_errors=True):
        raise CliError(
            EXIT_INVALID, f"{path}: the evaluation's dataset is invalid (see above); not created"
        )


def _new_run_id(previous: str | None, wanted: str | None) -> str:
    if wanted and wanted != previous:
        return wanted
    return "cli-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


async def run_run(args: argparse.Namespace) -> int:
    import yaml

    ev = _check_manifest(args.filename)
    target = kubeaccess.connect(args)
    _check_dataset(args.filename, ev, target.local)
    with open(args.filename, encoding="utf-8") as handle:
        body = next(d for d in yaml.safe_load_all(handle) if d is not None)
    doc_namespace = ev.metadata.namespace
    if args.namespace and doc_namespace and args.namespace != doc_namespace:
        raise CliError(
            EXIT_USAGE,
            f"--namespace: {args.namespace} does not match the manifest's metadata.namespace "
            f"{doc_namespace}",
        )
    namespace = doc_namespace or target.namespace
    body.setdefault("metadata", {})["namespace"] = namespace
    name = ev.metadata.name
    where = "local mode" if target.local else f"context {target.context}"
    async with kubeaccess.client(target) as api:
        try:
            made = await api.create(EVALUATION, body)
            print(f"evaluation {namespace}/{name} created ({where})")
        except Conflict:
            made = await _rerun(api, namespace, name, body, where)
        if not args.wait:
            return EXIT_OK
        generation = (made.get("metadata") or {}).get("generation")
        return await follow(api, namespace, name, args.interval, generation)


async def _rerun(
    api: KubeClient, namespace: str, name: str, body: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Run the existing `name` again: the manifest's spec with a new `spec.runId`."""
    existing = await api.get(EVALUATION, namespace, name)
    if existing is None:  # deleted meanwhile: create it after all
        made = await api.create(EVALUATION, body)
        print(f"evaluation {namespace}/{name} created ({where})")
        return made
    previous = (existing.get("spec") or {}).get("runId")
    spec = dict(body.get("spec") or {})
    spec["runId"] = _new_run_id(previous, spec.get("runId"))
    made = await api.patch(
        EVALUATION, namespace, name, [{"op": "replace", "path": "/spec", "value": spec}]
    )
    print(
        f"evaluation {namespace}/{name} exists: running it again ({where}) with "
        f"spec.runId={spec['runId']} (was {previous or 'unset'})"
    )
    return made


def summary(obj: Mapping[str, Any]) -> str:
    """`Running 2/3 samples`, `Queued queue position 1: why` (only what the status knows)."""
    status = obj.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    parts = [phase]
    if status.get("queuePosition") is not None:
        parts.append(f"queue position {status['queuePosition']}")
    if status.get("samples") is not None and phase not in ("Pending", "Queued"):
        parts.append(f"{status.get('done') or 0}/{status['samples']} samples")
    if phase in ("Pending", "Queued") and status.get("message"):
        parts.append(f"({status['message']})")
    return " ".join(parts)


def _current(obj: Mapping[str, Any], generation: int | None) -> bool:
    """Whether the status speaks of this generation's run (not of one before it)."""
    status = obj.get("status") or {}
    now = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    return observed == now and (generation is None or (now or 0) >= generation)


def missed(obj: Mapping[str, Any]) -> list[str]:
    """One line per missed threshold: `exactMatch 0.5 misses >= 0.8 (baseline 0.3, ...)`."""
    lines = []
    for r in (obj.get("status") or {}).get("results") or []:
        if r.get("passed") is not False:
            continue
        extra = ""
        if r.get("baseline") is not None:
            extra = f" (baseline {_num(r['baseline'])}, delta {_num(r.get('delta'))})"
        lines.append(
            f"  {r.get('metric')} {_num(r.get('score'))} misses {r.get('threshold')}{extra}"
        )
    return lines


def error_reason(obj: Mapping[str, Any]) -> str:
    """Why a run ended in Error: the first False condition with a message."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("status") == "False" and c.get("message"):
            return f"{c.get('reason')}: {c['message']}"
    return str((obj.get("status") or {}).get("message") or "no condition says why")


def finished(obj: Mapping[str, Any]) -> int:
    """Print how the run ended; its exit status."""
    status = obj.get("status") or {}
    name = (obj.get("metadata") or {}).get("name")
    phase = status.get("phase")
    scores = ", ".join(f"{r['metric']} {_num(r.get('score'))}" for r in status.get("results") or [])
    if phase == "Passed":
        print(f"evaluation {name} Passed: {scores or 'no scores'}")
        return EXIT_OK
    if phase == "Failed":
        print(f"evaluation {name} Failed: {scores}", file=sys.stderr)
        for line in missed(obj):
            print(line, file=sys.stderr)
        return EXIT_INVALID
    print(f"evaluation {name} {phase}: {error_reason(obj)}", file=sys.stderr)
    return EXIT_INVALID


async def follow(
    api: KubeClient, namespace: str, name: str, interval_s: float, generation: int | None
) -> int:
    """Print the run's progress on stderr as it changes, until it ends; 0 Passed, 1 otherwise
    (or deleted meanwhile)."""
    last = ""
    while True:
        obj = await api.get(EVALUATION, namespace, name)
        if obj is None:
            print(f"evaluation {namespace}/{name} was deleted while followed", file=sys.stderr)
            return EXIT_INVALID
        if _current(obj, generation):
            line = summary(obj)
            if line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
            if (obj.get("status") or {}).get("phase") in TERMINAL:
                return finished(obj)
        await asyncio.sleep(interval_s)


# ----------------------------------------------------------------------------- get / show
def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return str(value)


def _short(text: Any, limit: int = CELL_CHARS) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def model_text(model: Mapping[str, Any] | None) -> str:
    """`chat`, `chat:support-v2`, `chat+ftj/tune`, `chat+hf://acme/lora`."""
    if not model:
        return "-"
    md = (model.get("modelDeploymentRef") or {}).get("name") or "?"
    if model.get("adapter"):
        return f"{md}:{model['adapter']}"
    if model.get("fineTuneJobRef"):
        return f"{md}+ftj/{model['fineTuneJobRef'].get('name')}"
    if model.get("adapterUri"):
        return f"{md}+{model['adapterUri']}"
    return md


def passed_text(obj: Mapping[str, Any]) -> str:
    judged = [r for r in (obj.get("status") or {}).get("results") or [] if r.get("threshold")]
    if not judged:
        return "-"
    return f"{sum(1 for r in judged if r.get('passed'))}/{len(judged)}"


def columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def listing(items: list[dict[str, Any]], all_namespaces: bool) -> str:
    header = ["NAME", "TARGET", "PHASE", "SAMPLES", "PASSED", "AGE"]
    rows = [(["NAMESPACE"] if all_namespaces else []) + header]
    for obj in items:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        samples = status.get("samples")
        done = status.get("done")
        row = [
            str(meta.get("name")),
            model_text((obj.get("spec") or {}).get("target")),
            str(status.get("phase") or "Pending"),
            "-" if samples is None else f"{done if done is not None else samples}/{samples}",
            passed_text(obj),
            output.age(meta.get("creationTimestamp")),
        ]
        rows.append(([str(meta.get("namespace"))] if all_namespaces else []) + row)
    return columns(rows)


def _dump(obj: Mapping[str, Any], fmt: str) -> str:
    return output.dump(
        [{"apiVersion": EVALUATION.api_version, "kind": "Evaluation", **obj}], fmt, single=True
    )


async def run_get(args: argparse.Namespace) -> int:
    target = kubeaccess.connect(args)
    items = await get_cmd.fetch(target, "Evaluation", args.name, args.all_namespaces)
    if args.output != "table":
        if args.name is not None:
            print(_dump(items[0], args.output))
        else:
            typed = [
                {"apiVersion": EVALUATION.api_version, "kind": "Evaluation", **i} for i in items
            ]
            print(output.dump(typed, args.output, single=False))
        return EXIT_OK
    if args.name is None:
        if not items:
            print(f"No evaluations found in namespace {target.namespace}.")
        else:
            print(listing(items, args.all_namespaces))
        return EXIT_OK
    obj = items[0]
    head, _, rest = output.describe(obj, get_cmd.INFOS["Evaluation"]).partition("\nConditions")
    spec = obj.get("spec") or {}
    details = [
        f"  Summary: {summary(obj)}",
        f"  Target: {model_text(spec.get('target'))}",
        f"  Baseline: {model_text(spec.get('baseline'))}",
        f"  Dataset: {(spec.get('dataset') or {}).get('uri')}",
        f"  Thresholds passed: {passed_text(obj)}",
    ]
    print("\n".join([head, *details]) + "\nConditions" + rest)
    return EXIT_OK


def metrics_table(obj: Mapping[str, Any]) -> str:
    rows = [["METRIC", "SCORE", "BASELINE", "DELTA", "THRESHOLD", "RESULT"]]
    for r in (obj.get("status") or {}).get("results") or []:
        verdict = {True: "pass", False: "FAIL"}.get(r.get("passed"), "-")
        delta = r.get("delta")
        rows.append([
            str(r.get("metric")),
            _num(r.get("score")),
            _num(r.get("baseline")),
            "-" if delta is None else f"{delta:+.4g}",
            str(r.get("threshold") or "-"),
            verdict,
        ])  # fmt: skip
    return columns(rows)


def failing_table(obj: Mapping[str, Any]) -> str:
    rows = [["LINE", "INPUT", "EXPECTED", "GOT"]]
    for s in (obj.get("status") or {}).get("failingSamples") or []:
        rows.append([str(s.get("line")), _short(s.get("input")), _short(s.get("expected")),
                     _short(s.get("got"))])  # fmt: skip
    return columns(rows)


async def run_show(args: argparse.Namespace) -> int:
    target = kubeaccess.connect(args)
    (obj,) = await get_cmd.fetch(target, "Evaluation", args.name)
    status = obj.get("status") or {}
    if args.plot:
        from tramontane_cli import evalplot

        evalplot.write(args.plot, args.name, status.get("results") or [])
    if args.output != "table":
        print(_dump(obj, args.output))
        return EXIT_OK
    name = f"{(obj.get('metadata') or {}).get('namespace')}/{args.name}"
    lines = [
        f"Evaluation {name}: {summary(obj)}",
        f"  target {model_text((obj.get('spec') or {}).get('target'))}, baseline "
        f"{model_text((obj.get('spec') or {}).get('baseline'))}",
    ]
    if status.get("results"):
        lines += ["", metrics_table(obj)]
    else:
        lines += ["", "No scores yet."]
    if status.get("phase") == "Error":
        lines += ["", f"Error: {error_reason(obj)}"]
    if status.get("failingSamples"):
        lines += ["", "Failing samples:", failing_table(obj)]
    if args.plot:
        lines += ["", f"plot written to {args.plot}"]
    print("\n".join(lines))
    return EXIT_OK
