"""`python -m tramontane_workers.train --config-b64 ...`: the fine-tuning RayJob entrypoint.

Connects to the Ray cluster the job runs in (or starts a local one), trains, and exits 0 with
the adapter written, or 1 with progress.json marked failed. Progress lines are exempt from
Ray's log deduplication, so each reaches the job's log as printed (a restarted worker group is
another source of the same pattern, which Ray would otherwise batch).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tramontane_workers.contract.train_config import (
    PROGRESS_LINE_PREFIX,
    TrainConfig,
    config_from_b64,
)

DEDUP_ALLOW_ENV = "RAY_DEDUP_LOGS_ALLOW_REGEX"  # read by Ray at import, in this driver process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tramontane_workers.train")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-b64", help="TrainConfig JSON, base64 (what the operator renders)")
    source.add_argument("--config", type=Path, help="TrainConfig JSON file")
    args = parser.parse_args(argv)
    if args.config is not None:
        config = TrainConfig.model_validate_json(args.config.read_text())
    else:
        config = config_from_b64(args.config_b64)

    os.environ.setdefault(DEDUP_ALLOW_ENV, PROGRESS_LINE_PREFIX.strip())
    import ray

    from tramontane_workers.train.runner import run

    if not ray.is_initialized():
        ray.init()
    try:
        progress = run(config)
    except Exception as exc:
        print(f"fine-tune {config.job_name} failed: {exc}", file=sys.stderr)
        return 1
    done = f"{progress.state} at step {progress.step}"
    print(f"fine-tune {config.job_name}: {done}; adapter {progress.adapter_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
