"""`python -m tramontane_workers.evaluate --config-b64 ...`: the evaluation RayJob entrypoint.

A plain process on the Ray head (the run needs no actors: the engine batches on its own). It
prints `result_line`s while it runs and one final line, and writes `result.json` under the
output URI when one is set. Exit codes: 0 when every score was computed (low scores included:
pass or fail against thresholds is the operator's decision); 1 when the run failed (bad
dataset, unloadable model or adapter, engine error), the reason in the last result line's
`message`; 2 for a bad command line or config.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import ValidationError

from tramontane_workers.contract.eval_config import (
    ENTRYPOINT_MODULE,
    RESULT_FILE,
    EvalConfig,
    EvalResult,
    config_from_b64,
)

EXIT_FAILED = 1
EXIT_USAGE = 2


def _parse(argv: list[str] | None) -> EvalConfig:
    parser = argparse.ArgumentParser(
        prog=f"python -m {ENTRYPOINT_MODULE}",
        description="Score a model (and optionally a baseline) on a Mistral chat JSONL dataset; "
        "prints TRAMONTANE_EVAL result lines.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-b64", help="EvalConfig JSON, base64 (what the operator renders)")
    source.add_argument("--config", type=Path, help="EvalConfig JSON file")
    args = parser.parse_args(argv)
    try:
        if args.config is not None:
            return EvalConfig.model_validate_json(args.config.read_text())
        return config_from_b64(args.config_b64)
    except (ValidationError, ValueError, OSError) as exc:
        parser.error(f"invalid config: {exc}")  # exits 2


def _write_result(config: EvalConfig, result: EvalResult) -> None:
    if config.output_uri is None:
        return
    from tramontane_workers.train.storage import OutputStore

    OutputStore(config.output_uri).write_json(RESULT_FILE, result)


def main(argv: list[str] | None = None) -> int:
    config = _parse(argv)
    from tramontane_workers.evaluate.runner import Reporter, evaluate

    reporter = Reporter(emit=lambda line: print(line, flush=True))
    code = 0
    try:
        asyncio.run(evaluate(config, reporter))
    except Exception as exc:
        code = EXIT_FAILED
        reporter.update(force=True, state="failed", message=f"{type(exc).__name__}: {exc}")
    try:
        _write_result(config, reporter.result)
    except Exception as exc:  # the log line is the result the operator reads in any case
        print(f"evaluation {config.name}: cannot write {RESULT_FILE}: {exc}", file=sys.stderr)
        if code == 0:
            code = EXIT_FAILED
            reporter.update(
                force=True, state="failed", message=f"cannot write {RESULT_FILE}: {exc}"
            )
    return code


if __name__ == "__main__":
    sys.exit(main())
