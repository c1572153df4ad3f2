"""Manifests for local mode: read and validated before anything starts, and the quickstart's.

`load_files` reads YAML files of Tenants, ModelDeployments, FineTuneJobs, ComputeClusters and
the core objects local mode serves (Secrets, Namespaces), validates our kinds exactly as
`tramontane validate` does, and reports every problem as `FILE:LINE: field: message`.
`quickstart` renders the embedded quickstart (package data) for one local home.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tramontane_api.validate import check_text
from tramontane_api.yamlload import ManifestError, load_documents

# Kinds of other APIs that local mode's API server serves (besides ours).
CORE_KINDS = {("v1", "Secret"), ("v1", "Namespace")}
QUICKSTART_FILES = ("tenant.yaml", "modeldeployment.yaml", "finetunejob.yaml")
QUICKSTART_DATA = "qa.jsonl"
QUICKSTART_EVAL_DATA = "qa-eval.jsonl"  # the deployment gate's questions


class ManifestProblems(Exception):
    """Problems found in manifests; each line is `FILE:LINE: field: message`."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class Manifest:
    """One object to apply, with where it came from."""

    source: str  # FILE:LINE
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        meta = self.obj.get("metadata") or {}
        namespace = meta.get("namespace")
        return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def check(text: str, name: str) -> list[Manifest]:
    """The objects of one YAML text, validated; `ManifestProblems` lists every problem."""
    report = check_text(text)
    problems = [p.format(name) for p in report.problems]
    for skipped in report.skipped:
        if (skipped.api_version, skipped.kind) not in CORE_KINDS:
            what = f"{skipped.api_version or '(no apiVersion)'} {skipped.kind or '(no kind)'}"
            problems.append(
                f"{name}:{skipped.line}: kind: local mode serves Tenant, ModelDeployment, "
                f"FineTuneJob, Evaluation, ComputeCluster, Secret and Namespace objects, "
                f"not {what}"
            )
    if problems:
        raise ManifestProblems(problems)
    try:
        documents = load_documents(text)
    except ManifestError as exc:  # check_text reported it already; for completeness
        raise ManifestProblems([f"{name}:{exc.line}: {exc.message}"]) from None
    return [Manifest(f"{name}:{d.line}", dict(d.data)) for d in documents if d.data is not None]


def load_files(paths: Sequence[Path]) -> list[Manifest]:
    """Every object of these files, in order; `ManifestProblems` lists every problem of all."""
    found: list[Manifest] = []
    problems: list[str] = []
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"{path}: cannot read: {reason}")
            continue
        try:
            found += check(text, str(path))
        except ManifestProblems as exc:
            problems += exc.lines
    if problems:
        raise ManifestProblems(problems)
    return found


def quickstart(local_uri: str, api_key: str) -> list[Manifest]:
    """The embedded quickstart for the local home at `local_uri` (a file:// URI): the tenant
    with its key Secret, the tiny Mistral's ModelDeployment and the FineTuneJob."""
    values = {
        "LOCAL_URI": local_uri.rstrip("/"),
        "API_KEY_BASE64": base64.b64encode(api_key.encode()).decode(),
    }
    out: list[Manifest] = []
    for name in QUICKSTART_FILES:
        text = string.Template(_data(name)).substitute(values)
        out += check(text, f"<embedded quickstart/{name}>")
    return out


def quickstart_dataset() -> str:
    """The quickstart's Q&A pairs (Mistral chat JSONL)."""
    return _data(QUICKSTART_DATA)


def quickstart_eval_dataset() -> str:
    """The quickstart's deployment gate dataset (Mistral chat JSONL)."""
    return _data(QUICKSTART_EVAL_DATA)


def quickstart_pairs() -> list[tuple[str, str]]:
    """(question, trained answer) of each line of the quickstart's dataset."""
    pairs = []
    for line in quickstart_dataset().splitlines():
        messages = yaml.safe_load(line)["messages"]
        pairs.append((str(messages[0]["content"]), str(messages[1]["content"])))
    return pairs


def _data(name: str) -> str:
    return resources.files("tramontane_local").joinpath("quickstart", name).read_text()
