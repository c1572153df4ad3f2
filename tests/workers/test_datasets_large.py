"""Validation streams: flat memory on a ~20 MB file; a process pool gives the same answer."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES_DIR

from tramontane_workers.contract.datasets import validate_uri
from tramontane_workers.train.synthetic import synthetic_record, write_synthetic_dataset

SIZE = 20 * 1024 * 1024


@pytest.mark.slow
def test_twenty_megabytes_validate_with_bounded_memory(tmp_path: Path) -> None:
    # Nine lines in ten break a rule (weight 0.5) so the run stays quick under tracemalloc
    # while still exercising the error path: errors are counted, not accumulated.
    path, rng, size, lines = tmp_path / "big.jsonl", random.Random(0), 0, 0
    with path.open("w", encoding="utf-8") as out:
        while size < SIZE:
            record = synthetic_record(rng, lines)
            if lines % 10:
                record["messages"][-1]["weight"] = 0.5
            text = json.dumps(record) + "\n"
            out.write(text)
            size += len(text)
            lines += 1
    validate_uri((EXAMPLES_DIR / "datasets" / "good.jsonl").as_uri())  # load the tokenizer first
    tracemalloc.start()
    try:
        summary = validate_uri(path.as_uri(), max_errors=20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.lines == lines and summary.conversations == (lines + 9) // 10
    assert summary.bad_lines == lines - summary.conversations and len(summary.errors) == 20
    assert peak < SIZE / 50, f"peak {peak} bytes while validating {SIZE} bytes"


@pytest.mark.slow
def test_process_pool_gives_the_same_summary(tmp_path: Path) -> None:
    path = tmp_path / "valid.jsonl"
    lines = write_synthetic_dataset(path, 600_000)  # two pool batches
    with path.open("a") as out:
        out.write('{"messages": []}\n')
    serial = validate_uri(str(path))
    pooled = validate_uri(str(path), processes=2)
    assert serial == pooled
    assert serial.conversations == lines and serial.errors[0].line == lines + 1
