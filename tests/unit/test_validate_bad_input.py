"""`tramontane validate` on bad input: a table of files, each with its exit code and message.

Every case runs the command in-process and checks: the exit code (0 ok, 1 invalid input,
2 unreadable), a message on stderr that names the file and line (`FILE:LINE: ...`), nothing
that looks like a traceback or a raw pydantic dump, and bounded time and memory (measured
here with generous ceilings: 2 s, and 300 MB of Python allocations under tracemalloc).
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tramontane_api.yamlload import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, MAX_NODES
from tramontane_cli.main import main

MD = """\
apiVersion: tramontane.dev/v1alpha1
kind: ModelDeployment
metadata: {name: m, namespace: team-a}
spec:
  model: {name: m, source: "file:///models/m"}
  runtime: {engine: transformers}
"""
TENANT = """\
apiVersion: tramontane.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  namespaces: [team-a]
"""


def billion_laughs() -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    previous = "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n"
        previous = name
    return text


def adapters(count: int) -> str:
    items = "".join(f"  - {{name: a{i}, uri: 'file:///adapters/a{i}'}}\n" for i in range(count))
    return MD + "  adapters:\n" + items


@dataclass(frozen=True)
class Case:
    id: str
    content: str | bytes | Callable[[Path], Path]
    code: int
    stderr: str  # a fragment every run must print on stderr ("" to skip)
    line: int | None = None  # the line the first problem names
    stdout: str = ""


def make_dir(tmp: Path) -> Path:
    (tmp / "dir.yaml").mkdir()
    return tmp / "dir.yaml"


CASES = [
    # --- our kinds with a wrong or missing apiVersion --------------------------------------
    Case(
        "wrong-group",
        MD.replace("tramontane.dev/v1alpha1", "example.com/v1alpha1"),
        1,
        "apiVersion: expected tramontane.dev/v1alpha1 for kind ModelDeployment",
        1,
    ),
    Case(
        "no-group",
        TENANT.replace("tramontane.dev/v1alpha1", "v1alpha1"),
        1,
        "apiVersion: expected tramontane.dev/v1alpha1 for kind Tenant; got 'v1alpha1'",
        1,
    ),
    Case(
        "wrong-version",
        TENANT.replace("v1alpha1", "v1"),
        1,
        "expected tramontane.dev/v1alpha1 for kind Tenant; got 'tramontane.dev/v1'",
        1,
    ),
    Case(
        "core-group",
        TENANT.replace("tramontane.dev/v1alpha1", "v1"),
        1,
        "expected tramontane.dev/v1alpha1",
        1,
    ),
    Case(
        "missing-apiversion",
        "# a comment\n" + TENANT.split("\n", 1)[1],
        1,
        "expected tramontane.dev/v1alpha1 for kind Tenant; it is missing",
        2,
    ),
    Case(
        "missing-apiversion-second-doc",
        TENANT + "---\nkind: ComputeCluster\nmetadata: {name: c}\n",
        1,
        "for kind ComputeCluster; it is missing",
        7,
    ),
    Case(
        "unknown-kind-in-our-group",
        TENANT.replace("kind: Tenant", "kind: Tenants"),
        1,
        "kind: unknown kind 'Tenants'",
        2,
    ),
    # --- duplicate keys ----------------------------------------------------------------------
    Case("duplicate-top-key", TENANT + "kind: Tenant\n", 1, "duplicate key 'kind'", 6),
    Case(
        "duplicate-nested-key",
        MD.replace("  runtime:", "  model: {name: n, source: 'file:///n'}\n  runtime:"),
        1,
        "duplicate key 'model'",
        6,
    ),
    Case(
        "duplicate-flow-key",
        TENANT.replace("{name: team-a}", "{name: team-a, name: team-b}"),
        1,
        "duplicate key 'name'",
        3,
    ),
    # --- no objects ----------------------------------------------------------------------------
    Case("empty-file", "", 1, "no objects", 1),
    Case("only-comments", "# nothing here\n# really\n", 1, "no objects", 1),
    Case("only-separators", "---\n---\n...\n", 1, "no objects", 1),
    # --- foreign kinds are skipped, not errors --------------------------------------------------
    Case(
        "foreign-secret",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\n",
        0,
        "0 document(s) checked, 0 problem(s)",
        stdout=":1: skipped v1 Secret 'keys': not a tramontane.dev kind",
    ),
    Case(
        "foreign-namespace-beside-tenant",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\n" + TENANT,
        0,
        "1 document(s) checked, 0 problem(s)",
        stdout="skipped v1 Namespace 'team-a'",
    ),
    # --- bounded like an API server request ------------------------------------------------------
    Case("billion-laughs", billion_laughs(), 1, f"more than {MAX_NODES} nodes", None),
    Case(
        "billion-laughs-in-a-manifest",
        MD + "  adapters: &x [" + ",".join(["{name: a, uri: 'file:///a'}"] * 50) + "]\n"
        "metadata2: [" + ",".join(["*x"] * 99) + "]\n",
        1,
        "refused",
        None,
    ),
    Case("recursive-alias", "a: &a [1, *a]\n", 1, "refers to its own enclosing node", 1),
    Case(
        "too-many-aliases",
        "x: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(MAX_ALIASES + 1)),
        1,
        f"more than {MAX_ALIASES} aliases",
        MAX_ALIASES + 2,
    ),
    Case("deep-nesting", MD + "  x: " + "[" * 500 + "\n", 1, f"deeper than {MAX_DEPTH}", 7),
    Case("deeper-nesting", MD + "  x: " + "[" * 200_000 + "\n", 1, "nesting depth", 7),
    Case(
        "deep-block-nesting",
        "".join(" " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 2)),
        1,
        f"deeper than {MAX_DEPTH}",
        MAX_DEPTH,
    ),
    Case("too-many-nodes", "a: [" + "1," * (MAX_NODES + 1) + "1]\n", 1, "nodes", 1),
    Case("over-3-mib", adapters(90_000), 1, "3 MiB", None),
    Case("over-3-mib-one-line", "a: '" + "x" * MAX_BYTES + "'\n", 1, "API server request", None),
    # The read stops one byte past the limit, here inside a two-byte character: still "too
    # large" (exit 1), not "not UTF-8" (exit 2).
    Case("over-3-mib-cut-mid-character", "a: '" + "é" * MAX_BYTES + "'\n", 1, "3 MiB", None),
    # --- checks beyond the CRD schema, at the field's line -------------------------------------
    Case(
        "transformers-mistral-format",
        MD.replace('source: "file:///models/m"}', 'source: "file:///models/m", format: mistral}'),
        1,
        "spec.model.format: engine transformers needs a Hugging Face checkpoint",
        5,
    ),
    Case("unknown-field-line", MD + "  replicas: 3\n", 1, ":7: spec.replicas: unknown field"),
    Case(
        "bad-value-no-pydantic-dump",
        TENANT + "  fairShareWeight: -1\n",
        1,
        ":6: spec.fairShareWeight: Input should be greater than 0",
    ),
    Case(
        "metadata-not-a-mapping",
        TENANT.replace("{name: team-a}", "team-a"),
        1,
        "metadata",
        3,
    ),
    Case("yaml-syntax-error", "apiVersion: v1\nkind: [Tenant\n", 1, "invalid YAML", 3),
    Case("tab-indentation", "a:\n\tb: 1\n", 1, "invalid YAML", 2),
    Case("document-is-a-list", "- a\n- b\n", 1, "document is not a mapping", 1),
    Case("document-is-a-scalar", "---\nhello\n", 1, "document is not a mapping", 2),
    Case("python-tag", "!!python/object/apply:os.system [ls]\n", 1, "invalid YAML", 1),
    # --- read errors: one line on stderr, exit 2, no summary --------------------------------------
    Case("missing-file", lambda tmp: tmp / "nope.yaml", 2, "cannot read: No such file"),
    Case("directory", make_dir, 2, "cannot read: is a directory"),
    Case("not-utf8", b"apiVersion: v1\nkind: \xff\xfe\n", 2, "not UTF-8 text (byte 21)"),
    Case("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00", 2, "not UTF-8 text"),
]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def _write(case: Case, tmp: Path) -> Path:
    if callable(case.content):
        return case.content(tmp)
    path = tmp / f"{case.id}.yaml"
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        path.write_text(case.content)
    return path


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(case, tmp_path)

    started = time.perf_counter()
    code = main(["validate", str(path)])
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()

    assert code == case.code, out + err
    assert case.stderr in err, err
    assert case.stdout in out, out
    assert elapsed < 2.0, f"{case.id}: {elapsed:.2f} s"
    for noise in ("Traceback", "errors.pydantic.dev", "For further information"):
        assert noise not in out + err
    if case.code == 2:
        assert err.count("\n") == 1 and err.startswith(f"{path}: cannot read: "), err
        assert "problem(s)" not in err and out == ""
    if case.code == 1:
        problems = [line for line in err.splitlines() if not line.endswith("problem(s)")]
        assert problems and all(line.startswith(f"{path}:") for line in problems), err
        if case.line is not None:
            assert problems[0].startswith(f"{path}:{case.line}: "), err

    # Memory, in a second run so that tracemalloc's overhead does not count in the time.
    tracemalloc.start()
    try:
        main(["validate", "-q", str(path)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    capsys.readouterr()
    assert peak < 300 * 2**20, f"{case.id}: {peak / 2**20:.0f} MB"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(TENANT)
    path.chmod(0)
    assert main(["validate", str(path), str(path)]) == 2
    out, err = capsys.readouterr()
    assert err == f"{path}: cannot read: Permission denied\n" and out == ""


def test_a_read_error_stops_before_any_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(TENANT)
    assert main(["validate", str(good), str(tmp_path / "missing.yaml")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    ]


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "0 ok; 1 invalid input" in out
        and "2 usage error (--flag: message) or a file that cannot be read" in out
    )
    assert "3 MiB" in out


def test_a_valid_manifest_of_many_adapters_is_accepted_quickly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Under the bounds, a large valid manifest still passes (the bounds are not too tight)."""
    path = tmp_path / "many.yaml"
    path.write_text(adapters(1000).replace("engine: transformers", "engine: transformers"))
    started = time.perf_counter()
    assert main(["validate", str(path)]) == 0, capsys.readouterr()
    assert time.perf_counter() - started < 5.0
