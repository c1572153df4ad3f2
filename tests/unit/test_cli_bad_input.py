"""Bad input to `dataset validate`, `finetune estimate` and `serve`: one row per input.

Each row runs the command in-process through `tramontane_cli.main.main` and asserts the exit
status (1 invalid input, 2 usage or I/O error), that stderr names the file and line, field or
flag, that no traceback appears anywhere, and that the answer comes in bounded time and memory
(generous ceilings, so they cannot flake on a loaded machine). A few rows also run as real subprocesses.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES_DIR, REPO_ROOT

from tramontane_cli.main import main
from tramontane_workers.contract.datasets_tokens import tokenizer

CEILING_S = 2.0
GOOD = str(EXAMPLES_DIR / "datasets" / "good.jsonl")
USER = {"role": "user", "content": "Weather?"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


def _call_line(arguments: object) -> str:
    call = {"id": "a1b2c3d4e", "function": {"name": "get_weather", "arguments": arguments}}
    return json.dumps(
        {"messages": [USER, {"role": "assistant", "tool_calls": [call]}], "tools": TOOLS}
    )


MANIFEST = """\
apiVersion: tramontane.dev/v1alpha1
kind: FineTuneJob
metadata: {name: t, namespace: team}
spec:
  baseModel: {uri: 'BASE'}
  trainingFiles: [{uri: 'DATA'}]
  hyperparameters:
    epochs: 1
    batchSize: BATCH
  resources: {workers: 1, gpusPerWorker: 1, gpuType: GPU}
  output: {uri: 'file:///tmp/out'}
"""


def _manifest(
    data: str = Path(GOOD).as_uri(), batch: str = "2", gpu: str = "A100-80GB", base: str = ""
) -> str:
    return (
        MANIFEST.replace("DATA", data)
        .replace("BATCH", batch)
        .replace("GPU", gpu)
        .replace("BASE", base or "hf://mistralai/Mistral-7B-v0.3")
    )


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)

# Files every row may use, written once into a temporary directory.
FILES: dict[str, str | bytes] = {
    "empty.jsonl": "",
    "blank.jsonl": "\n  \n\n",
    "data.jsonl.gz": gzip.compress(Path(GOOD).read_bytes() * 50),
    "data.jsonl.zst": b"\x28\xb5\x2f\xfd" + b"\x00\x01" * 100,
    "pretty-object.json": json.dumps(json.loads(Path(GOOD).read_text().splitlines()[0]), indent=2)
    * 20,
    "pretty-array.json": json.dumps(
        [json.loads(line) for line in Path(GOOD).read_text().splitlines()], indent=2
    ),
    "pretty-later.jsonl": Path(GOOD).read_text().splitlines()[0]
    + "\n"
    + json.dumps({"messages": [USER, {"role": "assistant", "content": "x"}]}, indent=4),
    "args-not-json.jsonl": _call_line("{city: Nice}"),
    "args-array.jsonl": _call_line('["Nice"]'),
    "args-number.jsonl": _call_line("42"),
    "args-list.jsonl": _call_line(["Nice"]),
    "args-null.jsonl": _call_line(None),
    "latin1.jsonl": '{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"),
    "array-line.jsonl": "[1, 2, 3]\n",
    "cut-line.jsonl": '{"messages": [{"role": "user"\n',
    "ftj-good-data.yaml": _manifest(),
    "ftj-kind.yaml": _manifest().replace("kind: FineTuneJob", "kind: ModelDeployment"),
    "ftj-version.yaml": _manifest().replace("tramontane.dev/v1alpha1", "v1"),
    "ftj-batch0.yaml": _manifest(batch="0"),
    "ftj-yaml.yaml": "apiVersion: tramontane.dev/v1alpha1\nkind: [FineTuneJob\n",
    "ftj-dupe.yaml": _manifest() + "kind: FineTuneJob\n",
    "ftj-bomb.yaml": BOMB,
    "ftj-empty.yaml": "",
    "ftj-list.yaml": "- a\n- b\n",
    "ftj-two.yaml": _manifest() + "---\n" + _manifest(),
    "ftj-gpu.yaml": _manifest(gpu="B200"),
    "ftj-empty-data.yaml": "",  # written below: its data URI is the tmp dir's empty.jsonl
    "ftj-gz-data.yaml": "",
    "ftj-base.yaml": "",
    "cluster-kind.yaml": _manifest(),
    "model/config.json": json.dumps(
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 0,
            "intermediate_size": 128,
            "vocab_size": 100,
        }
    ),
    "not-a-dir": "x",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    (root / "ftj-empty-data.yaml").write_text(_manifest(data=(root / "empty.jsonl").as_uri()))
    (root / "ftj-gz-data.yaml").write_text(_manifest(data=(root / "data.jsonl.gz").as_uri()))
    (root / "ftj-base.yaml").write_text(_manifest(base=f"file://{root / 'model'}"))
    tokenizer()  # loaded once here, not inside the first timed row
    return root


@dataclass(frozen=True)
class Row:
    argv: tuple[str, ...]  # "{d}" stands for the fixture directory
    code: int
    stderr: tuple[str, ...]  # fragments stderr must hold ("{d}" likewise)
    max_stderr_lines: int | None = None  # a single hint, not a flood
    stdout: tuple[str, ...] = field(default=())


DV = ("dataset", "validate")
FE = ("finetune", "estimate")
FE_DATA = (*FE, "--dataset", GOOD)
SV = ("serve", "--model-uri", "s3://bucket/model")

ROWS: dict[str, Row] = {
    # ---- dataset validate ----
    "dataset empty file": Row((*DV, "{d}/empty.jsonl"), 1, ("{d}/empty.jsonl: no conversations",)),
    "dataset blank lines only": Row(
        (*DV, "{d}/blank.jsonl"), 1, ("blank.jsonl: no conversations",)
    ),
    "dataset gzip": Row(
        (*DV, "{d}/data.jsonl.gz"),
        1,
        ("{d}/data.jsonl.gz:1: the file is gzip-compressed: decompress it first (gunzip)",),
        max_stderr_lines=1,
    ),
    "dataset zstd": Row(
        (*DV, "{d}/data.jsonl.zst"), 1, ("data.jsonl.zst:1: the file is zstd-compressed",), 1
    ),
    "dataset pretty-printed object": Row(
        (*DV, "{d}/pretty-object.json"),
        1,
        ("pretty-object.json:1: this looks like pretty-printed JSON: JSONL holds one",),
        max_stderr_lines=1,
    ),
    "dataset pretty-printed array": Row(
        (*DV, "{d}/pretty-array.json"), 1, ("pretty-array.json:1: this looks like pretty",), 1
    ),
    "dataset pretty-printed after a good line": Row(
        (*DV, "{d}/pretty-later.jsonl"), 1, ("pretty-later.jsonl:2: this looks like pretty",), 1
    ),
    "dataset arguments not JSON": Row(
        (*DV, "{d}/args-not-json.jsonl"),
        1,
        (
            "args-not-json.jsonl:1: messages[1].tool_calls[0].function.arguments: "
            "must be a string holding a JSON object, got invalid JSON",
        ),
    ),
    "dataset arguments string of an array": Row(
        (*DV, "{d}/args-array.jsonl"),
        1,
        ("args-array.jsonl:1: messages[1].tool_calls[0].function.arguments: ", "an array"),
    ),
    "dataset arguments string of a number": Row(
        (*DV, "{d}/args-number.jsonl"), 1, ("args-number.jsonl:1: ", "arguments: ", "a number")
    ),
    "dataset arguments an array": Row(
        (*DV, "{d}/args-list.jsonl"), 1, ("args-list.jsonl:1: ", "arguments: ", "got an array")
    ),
    "dataset arguments null": Row(
        (*DV, "{d}/args-null.jsonl"), 1, ("args-null.jsonl:1: ", "arguments: ", "got null")
    ),
    "dataset missing file": Row((*DV, "{d}/nope.jsonl"), 2, ("{d}/nope.jsonl: cannot read",)),
    "dataset a directory": Row((*DV, "{d}/model"), 2, ("{d}/model: cannot read",)),
    "dataset unknown scheme": Row((*DV, "nosuch://b/x.jsonl"), 2, ("nosuch://b/x.jsonl: cannot",)),
    "dataset not UTF-8": Row((*DV, "{d}/latin1.jsonl"), 1, ("latin1.jsonl:1: not valid UTF-8",)),
    "dataset line is an array": Row(
        (*DV, "{d}/array-line.jsonl"), 1, ("array-line.jsonl:1: a line must be a JSON object",)
    ),
    "dataset line cut short": Row((*DV, "{d}/cut-line.jsonl"), 1, ("cut-line.jsonl:1: invalid",)),
    "dataset --max-errors negative": Row((*DV, "--max-errors", "-1", GOOD), 2, ("--max-errors: ",)),
    "dataset --jobs not a number": Row(
        (*DV, "--jobs", "abc", GOOD), 2, ("--jobs: must be an integer",)
    ),
    "dataset --max-seq-len 0": Row(
        (*DV, "--max-seq-len", "0", GOOD), 2, ("--max-seq-len: must be a positive integer",)
    ),
    "dataset --max-seq-len counts cut conversations": Row(
        (*DV, "--max-seq-len", "100", GOOD),
        0,
        ("good.jsonl: warning: 1 of 5 conversation(s) are longer than 100 tokens",),
        stdout=("5 conversations",),
    ),
    # ---- finetune estimate: flags ----
    "estimate --batch-size 0": Row(
        (*FE_DATA, "--batch-size", "0"), 2, ("--batch-size: must be a positive integer",)
    ),
    "estimate --batch-size 1.5": Row(
        (*FE_DATA, "--batch-size", "1.5"), 2, ("--batch-size: must be an integer",)
    ),
    "estimate --model-params 0": Row(
        (*FE_DATA, "--model-params", "0"), 2, ("--model-params: must be a positive number",)
    ),
    "estimate --model-params inf": Row(
        (*FE_DATA, "--model-params", "inf"), 2, ("--model-params: must be a finite number",)
    ),
    "estimate --training-steps negative": Row(
        (*FE_DATA, "--training-steps", "-5"), 2, ("--training-steps: must be a positive",)
    ),
    "estimate --epochs 0": Row((*FE_DATA, "--epochs", "0"), 2, ("--epochs: must be a positive",)),
    "estimate --epochs nan": Row((*FE_DATA, "--epochs", "nan"), 2, ("--epochs: must be a finite",)),
    "estimate --sequence-length negative": Row(
        (*FE_DATA, "--sequence-length", "-1"), 2, ("--sequence-length: must be a positive",)
    ),
    "estimate --gpus 0": Row((*FE_DATA, "--gpus", "0"), 2, ("--gpus: must be a positive integer",)),
    "estimate negative price": Row(
        (*FE_DATA, "--price-per-gpu-hour", "-1"), 2, ("--price-per-gpu-hour: must be 0 or",)
    ),
    "estimate unknown GPU type": Row(
        (*FE_DATA, "--gpu-type", "B200"),
        2,
        ("--gpu-type: unknown GPU type 'B200'; known: H200, H100, A100, A10, L4, T4, CPU",),
    ),
    "estimate nothing to estimate": Row(FE, 2, ("--dataset: give a FineTuneJob manifest",)),
    "estimate steps and epochs": Row(
        (*FE_DATA, "--training-steps", "3", "--epochs", "2"), 2, ("--epochs: give",)
    ),
    "estimate manifest and --dataset": Row(
        (*FE, "{d}/ftj-good-data.yaml", "--dataset", GOOD), 2, ("--dataset: the manifest",)
    ),
    # ---- finetune estimate: manifests and data ----
    "estimate wrong kind": Row(
        (*FE, "{d}/ftj-kind.yaml"),
        1,
        ("{d}/ftj-kind.yaml:2: kind: expected FineTuneJob, got 'ModelDeployment'",),
        max_stderr_lines=1,
    ),
    "estimate wrong apiVersion": Row(
        (*FE, "{d}/ftj-version.yaml"),
        1,
        ("ftj-version.yaml:1: apiVersion: expected tramontane.dev/v1alpha1, got 'v1'",),
    ),
    "estimate field out of range": Row(
        (*FE, "{d}/ftj-batch0.yaml"),
        1,
        ("ftj-batch0.yaml:9: spec.hyperparameters.batchSize: ",),
    ),
    "estimate invalid YAML": Row((*FE, "{d}/ftj-yaml.yaml"), 1, ("ftj-yaml.yaml:", "invalid YAML")),
    "estimate duplicate key": Row(
        (*FE, "{d}/ftj-dupe.yaml"), 1, ("ftj-dupe.yaml:12: invalid YAML: duplicate key 'kind'",)
    ),
    "estimate alias bomb": Row(
        (*FE, "{d}/ftj-bomb.yaml"), 1, ("ftj-bomb.yaml:", "nodes with aliases expanded")
    ),
    "estimate missing manifest": Row((*FE, "{d}/nope.yaml"), 2, ("{d}/nope.yaml: cannot read",)),
    "estimate empty manifest": Row(
        (*FE, "{d}/ftj-empty.yaml"), 1, ("ftj-empty.yaml: expected one FineTuneJob object",)
    ),
    "estimate manifest is a list": Row(
        (*FE, "{d}/ftj-list.yaml"), 1, ("ftj-list.yaml:1: expected a FineTuneJob object",)
    ),
    "estimate two documents": Row(
        (*FE, "{d}/ftj-two.yaml"), 1, ("ftj-two.yaml: expected one FineTuneJob object, got 2",)
    ),
    "estimate GPU type without a profile": Row(
        (*FE, "{d}/ftj-gpu.yaml"), 2, ("ftj-gpu.yaml: spec.resources.gpuType: ", "'B200'")
    ),
    "estimate empty dataset": Row(
        (*FE, "{d}/ftj-empty-data.yaml"), 1, ("file://{d}/empty.jsonl: no conversations",)
    ),
    "estimate gzip dataset": Row(
        (*FE, "{d}/ftj-gz-data.yaml"), 1, ("data.jsonl.gz:1: the file is gzip-compressed",)
    ),
    "estimate broken config.json": Row(
        (*FE, "{d}/ftj-base.yaml"), 2, ("model/config.json: cannot count the base model's",)
    ),
    "estimate cluster of the wrong kind": Row(
        (*FE_DATA, "--cluster", "{d}/cluster-kind.yaml"),
        1,
        ("cluster-kind.yaml:2: kind: expected ComputeCluster, got 'FineTuneJob'",),
    ),
    "estimate cluster missing": Row(
        (*FE_DATA, "--cluster", "{d}/nope.yaml"), 2, ("{d}/nope.yaml: cannot read",)
    ),
    # ---- serve ----
    "serve bad model URI": Row(
        ("serve", "--model-uri", "bogus"), 2, ("--model-uri: model_uri 'bogus' must start",), 1
    ),
    "serve missing local model": Row(
        ("serve", "--model-uri", "file:///no/such/model"), 2, ("--model-uri: /no/such/model is",)
    ),
    "serve adapter without URI": Row(
        (*SV, "--adapter", "legal"), 2, ("--adapter: expected NAME=URI, got 'legal'",)
    ),
    "serve adapter bad URI": Row(
        (*SV, "--adapter", "x=ftp://y"), 2, ("--adapter: 'x=ftp://y': uri: adapter uri",)
    ),
    "serve adapter without name": Row(
        (*SV, "--adapter", "=s3://b/a"), 2, ("--adapter: '=s3://b/a': name: ",)
    ),
    "serve duplicate adapters": Row(
        (*SV, "--adapter", "a=s3://b/a", "--adapter", "a=s3://b/c"), 2, ("--adapter: ", "dupl")
    ),
    "serve bad name": Row((*SV, "--name", "bad/name"), 2, ("--name: ",)),
    "serve port out of range": Row(
        (*SV, "--grpc-port", "70000"), 2, ("--grpc-port: must be a TCP port",)
    ),
    "serve negative GPUs": Row((*SV, "--num-gpus", "-1"), 2, ("--num-gpus: must be 0 or",)),
    "serve zero adapters": Row((*SV, "--max-adapters", "0"), 2, ("--max-adapters: must be a",)),
    "serve unknown engine": Row((*SV, "--engine", "foo"), 2, ("--engine: invalid choice",)),
    "serve no model": Row(("serve",), 2, ("one of the arguments --model-uri --tiny is required",)),
    "serve tiny onto a file": Row(
        ("serve", "--tiny", "{d}/not-a-dir"), 2, ("--tiny: ", "not-a-dir exists and is not a")
    ),
}


MEMORY_CEILING_BYTES = 300 * 2**20  # Python allocations, generous: a bound, not a target


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    return code, captured.out, captured.err, elapsed


def test_the_table_is_large_enough() -> None:
    assert len(ROWS) >= 40


@pytest.mark.parametrize("row", ROWS.values(), ids=list(ROWS))
def test_bad_input(
    row: Row, files: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # a `serve` row must never start Ray
    argv = [a.replace("{d}", str(files)) for a in row.argv]
    code, out, err, elapsed = _run(argv, capsys)
    assert "Traceback" not in out + err
    assert "errors.pydantic.dev" not in out + err  # no raw pydantic dump
    assert code == row.code, err
    for fragment in row.stderr:
        assert fragment.replace("{d}", str(files)) in err
    for fragment in row.stdout:
        assert fragment in out
    if row.max_stderr_lines is not None:
        assert len(err.splitlines()) <= row.max_stderr_lines, err
    if code:
        assert "problem(s)" not in out
    assert elapsed < CEILING_S
    # Memory, in a second run so that tracemalloc's overhead does not count in the time.
    tracemalloc.start()
    try:
        _run(argv, capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_CEILING_BYTES, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("command", ["dataset validate", "finetune estimate", "serve"])
def test_help_documents_the_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _, _ = _run([*command.split(), "--help"], capsys)
    assert code == 0
    assert "exit status: 0 ok; 1 invalid input" in " ".join(out.split())


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        ([*FE_DATA, "--batch-size", "0"], 2, "--batch-size: must be a positive integer"),
        (["serve", "--model-uri", "bogus"], 2, "--model-uri: model_uri 'bogus'"),
    ],
)
def test_console_script_exits_cleanly(argv: list[str], code: int, fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tramontane_cli.main", *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == code
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
