"""`tramontane finetune submit|list|get|logs|cancel`: a tenant's FineTuneJobs on the hub (or in
local mode with `--local`).

`submit -f job.yaml` checks the manifest as `tramontane validate` does and its local datasets as
`tramontane dataset validate` does (each problem as `FILE:LINE: ...`), then creates the job in
the manifest's namespace (else `-n`, else the context's); `--wait` follows it to its end (see
`follow`). A `file://` training or validation file is uploaded to the job's own object store
(`upload`: under `<output.uri>/inputs/`) and the job names the copy; a `file://` output or base
model is readable only by local mode, and refused against a cluster. `logs` prints the submitter
pod's log from the member cluster the job runs in, when the kubeconfig has a context named like
that cluster (or the cluster is the hub itself), else says where to look; in local mode it reads
local mode's log file (`local_state.job_log_path`). `logs -f` keeps printing until the run ends
(the submitter pod's log stream; in local mode, until the job's phase is final). `cancel`
deletes the job; the operator stops its RayJob.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tramontane_api.v1alpha1 import FineTuneJob
from tramontane_cli import errors, follow, kubeaccess, local_state, output, upload
from tramontane_cli.args import EXIT_INVALID, EXIT_OK, EXIT_USAGE, positive_float, positive_int
from tramontane_cli.commands import get as get_cmd
from tramontane_cli.errors import CliError
from tramontane_cli.manifest import checked_model
from tramontane_kube import (
    COMPUTECLUSTER,
    FINETUNEJOB,
    POD,
    Conflict,
    KubeClient,
    NotFound,
    Unreachable,
)

EPILOG = (
    "exit status: 0 ok (with --wait: the job Succeeded); 1 invalid manifest or dataset "
    "(FILE:LINE: message), job failed (its reason printed), not found; 2 usage error, "
    "unreadable file, unusable kubeconfig, or a cluster that cannot be reached"
)
SUBMITTER_LABEL = "batch.kubernetes.io/job-name"


def _run(work: Any) -> Any:
    return lambda args: errors.run(lambda: work(args))


def register_actions(actions: Any) -> None:
    """Add the job actions to `tramontane finetune`'s subparsers."""
    submit = actions.add_parser(
        "submit",
        help="validate and create a FineTuneJob",
        description=__doc__.split("\n\n")[1],
        epilog=EPILOG,
    )
    submit.add_argument("-f", "--filename", required=True, help="FineTuneJob YAML")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument(
        "--interval",
        type=positive_float,
        default=2.0,
        help="seconds between looks at the job with --wait (default 2)",
    )
    kubeaccess.add_kube_flags(submit)
    submit.set_defaults(func=_run(run_submit))

    listing = actions.add_parser("list", help="list FineTuneJobs", epilog=EPILOG)
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    kubeaccess.add_kube_flags(listing)
    output.add_output_flag(listing)
    listing.set_defaults(func=_run(run_list))

    show = actions.add_parser(
        "get", help="one FineTuneJob: phase, progress, conditions", epilog=EPILOG
    )
    show.add_argument("name", metavar="NAME")
    kubeaccess.add_kube_flags(show)
    output.add_output_flag(show)
    show.set_defaults(func=_run(run_show))

    logs = actions.add_parser("logs", help="the training log of a FineTuneJob", epilog=EPILOG)
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("--tail", type=positive_int, default=1000, help="last lines (default 1000)")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing the log as it is written, until the run ends",
    )
    kubeaccess.add_kube_flags(logs)
    logs.set_defaults(func=_run(run_logs))

    cancel = actions.add_parser("cancel", help="cancel (delete) a FineTuneJob", epilog=EPILOG)
    cancel.add_argument("name", metavar="NAME")
    kubeaccess.add_kube_flags(cancel)
    cancel.set_defaults(func=_run(run_cancel))


# ----------------------------------------------------------------------------- submit
def _check_manifest(path: str) -> FineTuneJob:
    """The FineTuneJob in `path`, checked by the model, the CRD schema and its CEL rules."""
    return checked_model(path, FineTuneJob, "FineTuneJob")


def _file_uris(job: FineTuneJob) -> list[tuple[str, str]]:
    """(field, uri) of every `file://` location the job reads or writes."""
    spec = job.spec
    found = [(f"spec.trainingFiles[{i}].uri", f.uri) for i, f in enumerate(spec.training_files)]
    found += [
        (f"spec.validationFiles[{i}].uri", f.uri) for i, f in enumerate(spec.validation_files or [])
    ]
    found += [("spec.output.uri", spec.output.uri)]
    if spec.base_model.uri:
        found.append(("spec.baseModel.uri", spec.base_model.uri))
    return [(field, uri) for field, uri in found if uri.startswith("file://")]


def _check_datasets(path: str, job: FineTuneJob) -> None:
    """Validate the job's file:// datasets as the operator will; CliError with each bad line."""
    from tramontane_cli.commands.dataset import print_dataset_problems
    from tramontane_workers.contract.datasets import DatasetUnreadable, validate_uri

    uris = [f.uri for f in job.spec.training_files]
    uris += [f.uri for f in job.spec.validation_files or []]
    bad = False
    for uri in (u for u in uris if u.startswith("file://")):
        try:
            summary = validate_uri(uri, max_seq_len=job.spec.hyperparameters.sequence_length)
        except DatasetUnreadable as exc:
            raise CliError(EXIT_USAGE, f"{path}: {uri}: cannot read: {exc}") from exc
        bad = print_dataset_problems(summary, list_errors=True) or bad
    if bad:
        raise CliError(
            EXIT_INVALID, f"{path}: the job's data is invalid (see above); not submitted"
        )


def _namespace(args: argparse.Namespace, doc_namespace: str | None, target_ns: str) -> str:
    if args.namespace and doc_namespace and args.namespace != doc_namespace:
        raise CliError(
            EXIT_USAGE,
            f"--namespace: {args.namespace} does not match the manifest's metadata.namespace "
            f"{doc_namespace}",
        )
    return doc_namespace or target_ns


async def run_submit(args: argparse.Namespace) -> int:
    import yaml

    job = _check_manifest(args.filename)
    target = kubeaccess.connect(args)
    local_files = _file_uris(job)
    datasets = [(f, u) for f, u in local_files if f.startswith(_DATASET_FIELDS)]
    if not target.local:
        for field, uri in local_files:
            if not field.startswith(_DATASET_FIELDS):
                raise CliError(
                    EXIT_INVALID,
                    f"{args.filename}: {field}: {uri}: file:// is only readable in local mode "
                    "(--local); put it where the cluster can read it (az://, s3://, gs:// or "
                    "pvc://)",
                )
        upload.check_uploadable(args.filename, job.spec.output.uri, datasets)
    _check_datasets(args.filename, job)
    with open(args.filename, encoding="utf-8") as handle:
        body = next(d for d in yaml.safe_load_all(handle) if d is not None)
    if datasets and not target.local:
        sent = upload.upload_datasets(args.filename, job.spec.output.uri, datasets, _uploaded)
        body = upload.with_uploads(body, sent)
    namespace = _namespace(args, job.metadata.namespace, target.namespace)
    body.setdefault("metadata", {})["namespace"] = namespace
    name = job.metadata.name
    async with kubeaccess.client(target) as api:
        try:
            await api.create(FINETUNEJOB, body)
        except Conflict as exc:
            raise CliError(
                EXIT_INVALID,
                f"finetunejob {namespace}/{name} already exists: cancel it first or rename "
                f"the job ({exc.message})",
            ) from exc
        where = "local mode" if target.local else f"context {target.context}"
        print(f"finetunejob {namespace}/{name} created ({where})")
        if not args.wait:
            return EXIT_OK
        return await follow.follow(api, namespace, name, args.interval)


_DATASET_FIELDS = ("spec.trainingFiles[", "spec.validationFiles[")


def _uploaded(done: upload.Upload) -> None:
    verb = "uploaded" if done.sent else "already there"
    print(f"{done.field}: {done.source} -> {done.uri} ({verb})")


# ----------------------------------------------------------------------------- list / get
async def run_list(args: argparse.Namespace) -> int:
    args.kind, args.name = "ftj", None
    return await get_cmd.run_get(args)


def _details(obj: Mapping[str, Any]) -> list[str]:
    status = obj.get("status") or {}
    progress = status.get("progress") or {}
    lines = [f"  Summary: {follow.summary(obj)}"]
    if status.get("rayJob"):
        lines.append(f"  RayJob: {status['rayJob']} in cluster {status.get('cluster') or '?'}")
    estimate = status.get("estimate") or {}
    if estimate.get("steps"):
        lines.append(
            f"  Estimate: {estimate['steps']} steps, "
            f"{estimate.get('trainTokens', 0):,} train tokens"
        )
    if progress.get("tokensPerSecond"):
        lines.append(f"  Tokens/s: {progress['tokensPerSecond']:.4g}")
    if (status.get("adapter") or {}).get("uri"):
        lines.append(f"  Adapter: {status['adapter']['uri']}")
    if status.get("phase") in ("Failed", "FailedValidation", "Cancelled"):
        lines.append(f"  Reason: {follow.failure_reason(obj)}")
    return lines


async def run_show(args: argparse.Namespace) -> int:
    target = kubeaccess.connect(args)
    (obj,) = await get_cmd.fetch(target, "FineTuneJob", args.name)
    if args.output != "table":
        print(
            output.dump(
                [{"apiVersion": FINETUNEJOB.api_version, "kind": "FineTuneJob", **obj}],
                args.output,
                single=True,
            )
        )
        return EXIT_OK
    head, _, rest = output.describe(obj, get_cmd.INFOS["FineTuneJob"]).partition("\nConditions")
    print("\n".join([head, *_details(obj)]) + "\nConditions" + rest)
    return EXIT_OK


# ----------------------------------------------------------------------------- cancel
async def run_cancel(args: argparse.Namespace) -> int:
    target = kubeaccess.connect(args)
    (obj,) = await get_cmd.fetch(target, "FineTuneJob", args.name)
    status = obj.get("status") or {}
    async with kubeaccess.client(target) as api:
        await api.delete(FINETUNEJOB, target.namespace, args.name)
    name = f"{target.namespace}/{args.name}"
    phase = status.get("phase")
    if phase in follow.TERMINAL:
        print(f"finetunejob {name} deleted (it had already ended: {phase})")
    elif status.get("rayJob"):
        print(
            f"finetunejob {name} cancelled: the operator stops RayJob {status['rayJob']} "
            f"in cluster {status.get('cluster') or '?'}"
        )
    else:
        print(f"finetunejob {name} cancelled before it started ({phase or 'Pending'})")
    return EXIT_OK


# ----------------------------------------------------------------------------- logs
def _tail(text: str, lines: int) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:])


async def run_logs(args: argparse.Namespace) -> int:
    target = kubeaccess.connect(args)
    (obj,) = await get_cmd.fetch(target, "FineTuneJob", args.name)
    status = obj.get("status") or {}
    if target.local:
        if args.follow:
            return await _follow_local(target, args.name, args.tail)
        sys.stdout.write(_tail(_read_local_log(target.namespace, args.name)[1], args.tail))
        return EXIT_OK
    cluster, rayjob = status.get("cluster"), status.get("rayJob")
    if not cluster or not rayjob:
        raise CliError(
            EXIT_INVALID,
            f"finetunejob {args.name} has not started on a cluster "
            f"(phase {status.get('phase') or 'Pending'}): no log yet",
        )
    hint = (
        f"look there: kubectl --context {cluster} logs -n {target.namespace} job/{rayjob}"
        f" (the RayJob's submitter in cluster {cluster})"
    )
    async with kubeaccess.client(target) as hub:
        found = await _member_log(target, hub, cluster, rayjob, args.tail, args.follow)
    if not found:
        raise CliError(
            EXIT_USAGE,
            f"cannot read the log of cluster {cluster} from here (no "
            f"kubeconfig context named {cluster}, or it cannot be reached); {hint}",
        )
    return EXIT_OK


def _read_local_log(namespace: str, name: str) -> tuple[Path, str]:
    path = local_state.job_log_path(namespace, name)
    try:
        return path, path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise CliError(EXIT_USAGE, f"no log yet for finetunejob {name} ({path})") from None
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{path}: cannot read: {exc.strerror or exc}") from exc


async def _follow_local(target: kubeaccess.Target, name: str, tail: int) -> int:
    """Local mode's log file, then what is appended to it, until the job ends (or is deleted);
    a new run (a resumed job) continues in its own file."""
    path = local_state.job_log_path(target.namespace, name)
    sent, first = 0, True
    async with kubeaccess.client(target) as api:
        while True:
            latest = local_state.job_log_path(target.namespace, name)
            if latest != path:
                path, sent = latest, 0
                sys.stdout.write(f"--- {path.name}\n")
            with contextlib.suppress(FileNotFoundError):
                data = path.read_bytes()
                chunk = data[sent:].decode("utf-8", errors="replace")
                sys.stdout.write(_tail(chunk, tail) if first else chunk)
                sys.stdout.flush()
                sent, first = len(data), False
            job = await api.get(FINETUNEJOB, target.namespace, name)
            if job is None or ((job.get("status") or {}).get("phase")) in follow.TERMINAL:
                return EXIT_OK
            await asyncio.sleep(0.5)


async def _member_log(
    target: kubeaccess.Target,
    hub: KubeClient,
    cluster: str,
    rayjob: str,
    tail: int,
    stream: bool = False,
) -> bool:
    """Print the submitter pod's log (with `stream`, until it ends) through the member's API;
    False when the member cannot be reached."""
    config = target.member_config(cluster)
    if config is None:
        try:
            found = await hub.get(COMPUTECLUSTER, None, cluster)
        except errors.ApiError:  # a tenant may not read ComputeClusters
            found = None
        connection = ((found or {}).get("spec") or {}).get("connection") or {}
        if not connection.get("inCluster"):
            return False
        config = target.config  # the job runs in the hub itself
    member = KubeClient(cluster, config, attempts=2, backoff_s=0.2, user_agent="tramontane-cli")
    try:
        pods, _ = await member.list(POD, target.namespace, {SUBMITTER_LABEL: rayjob})
        if not pods:
            raise CliError(
                EXIT_INVALID,
                f"RayJob {rayjob} has no submitter pod in cluster "
                f"{cluster} yet; try again when it runs",
            )
        newest = max(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
        pod = newest["metadata"]["name"]
        if stream:
            with contextlib.suppress(NotFound):  # a pod gone meanwhile has no log left
                async for text in member.follow_pod_log(target.namespace, pod, tail):
                    sys.stdout.write(text)
                    sys.stdout.flush()
        else:
            sys.stdout.write(await member.pod_log(target.namespace, pod, tail, 4 << 20) or "")
    except Unreachable:
        return False
    finally:
        await member.close()
    return True
