"""Benchmark: dataset validation lines/s and peak memory on a large generated JSONL file.

Baseline, measured in the same run over the same file: a plain `json.loads` pass (what any
validator must at least do). Each measurement runs in a fresh process so its peak RSS is its
own; flat memory shows as the peak on the big file staying at the peak on a 1 MB file.

    .venv/bin/python bench/dataset_validate.py --quick        # 8 MB, under a minute
    .venv/bin/python bench/dataset_validate.py --size-mb 1024 # the 1 GB claim (~10 min here)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "workers")]

from tramontane_workers.contract.datasets import raw_lines, validate_uri  # noqa: E402
from tramontane_workers.train.synthetic import write_synthetic_dataset  # noqa: E402


def _peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, children_kb) / 1024


def _json_pass(path: str) -> dict[str, Any]:
    start = time.perf_counter()
    lines = 0
    with open(path, "rb") as stream:
        for _, raw in raw_lines(stream):
            if raw is not None:
                json.loads(raw)
            lines += 1
    return {"seconds": time.perf_counter() - start, "lines": lines, "rss_mb": _peak_rss_mb()}


def _validate(path: str, processes: int) -> dict[str, Any]:
    validate_uri(str(REPO / "examples" / "datasets" / "good.jsonl"))  # load the tokenizer
    start = time.perf_counter()
    summary = validate_uri(path, processes=processes)
    seconds = time.perf_counter() - start
    if summary.bad_lines:
        raise SystemExit(f"generated data should be valid: {summary.errors[:3]}")
    return {
        "seconds": seconds,
        "lines": summary.lines,
        "tokens": summary.tokens,
        "rss_mb": _peak_rss_mb(),
    }


def _in_fresh_process(target: str, *args: Any) -> dict[str, Any]:
    """Run one measurement in a spawned process; its RSS is not ours."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        result: dict[str, Any] = pool.submit(globals()[target], *args).result()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=64.0)
    parser.add_argument("--quick", action="store_true", help="8 MB file, under a minute")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--serial-mb",
        type=float,
        default=64.0,
        help="one-process figures (and the json.loads baseline) use a file of at most this size",
    )
    args = parser.parse_args()
    size_mb = 8.0 if args.quick else args.size_mb
    serial_mb = min(size_mb, args.serial_mb)
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.jsonl", Path(tmp) / "small.jsonl"
        write_synthetic_dataset(big, int(size_mb * 1024 * 1024))
        write_synthetic_dataset(small, 1024 * 1024)
        serial_file = big
        if serial_mb < size_mb:
            serial_file = Path(tmp) / "serial.jsonl"
            write_synthetic_dataset(serial_file, int(serial_mb * 1024 * 1024))
        baseline = _in_fresh_process("_json_pass", str(serial_file))
        serial = _in_fresh_process("_validate", str(serial_file), 1)
        small_run = _in_fresh_process("_validate", str(small), 1)
        pooled = _in_fresh_process("_validate", str(big), args.processes)
    lines = serial["lines"]
    figures = {
        "bench": "dataset_validate",
        "file_mb": round(size_mb, 1),
        "file_lines": pooled["lines"],
        "file_tokens": pooled["tokens"],
        "serial_file_mb": round(serial_mb, 1),
        "lines_per_s": round(lines / serial["seconds"], 1),
        "mb_per_s": round(serial_mb / serial["seconds"], 2),
        "lines_per_s_pool": round(pooled["lines"] / pooled["seconds"], 1),
        "pool_processes": args.processes,
        "pool_seconds": round(pooled["seconds"], 1),
        "baseline_json_loads_lines_per_s": round(lines / baseline["seconds"], 1),
        "lines_per_s_ratio_vs_json_loads": round(baseline["seconds"] / serial["seconds"], 4),
        "peak_rss_mb": round(serial["rss_mb"], 1),
        "peak_rss_mb_1mb_file": round(small_run["rss_mb"], 1),
        "rss_growth_mb": round(serial["rss_mb"] - small_run["rss_mb"], 1),
        "peak_rss_mb_pool_per_process": round(pooled["rss_mb"], 1),
        "baseline_peak_rss_mb": round(baseline["rss_mb"], 1),
    }
    print(
        f"validated {figures['file_lines']} lines ({size_mb:.0f} MB): "
        f"{figures['lines_per_s']} lines/s serial ({serial_mb:.0f} MB), "
        f"{figures['lines_per_s_pool']} lines/s with {args.processes} processes; "
        f"peak RSS {figures['peak_rss_mb']} MB (1 MB file: {figures['peak_rss_mb_1mb_file']} MB)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
