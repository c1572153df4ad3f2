"""The trainer's progress line (what the operator reads from the submitter pod's log): round
trip, Ray's decorations, garbage and half lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tramontane_workers.contract.train_config import (
    PROGRESS_LINE_PREFIX,
    CheckpointRecord,
    TrainProgress,
    last_progress,
    progress_line,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def progress(step: int, **kw: object) -> TrainProgress:
    values: dict[str, object] = {"step": step, "total_steps": 100, "percent": float(step),
                                 "train_loss": 2.0 - step / 100, "updated": NOW}  # fmt: skip
    return TrainProgress.model_validate({**values, **kw})


def test_a_line_round_trips_every_field() -> None:
    full = progress(
        40, valid_loss=1.5, tokens_per_second=812.5, eta=NOW + timedelta(minutes=3), attempt=2,
        resumed_from_step=20, adapter_uri="pvc://out/tune/adapter", message="ok",
        checkpoints=[CheckpointRecord(step=20, uri="pvc://out/tune/checkpoints/a", time=NOW)],
    )  # fmt: skip
    line = progress_line(full)
    assert line.startswith(PROGRESS_LINE_PREFIX) and "\n" not in line
    assert last_progress(line) == full
    assert last_progress(progress_line(progress(0))) == progress(0)  # None fields left out


def test_a_line_carries_the_newest_checkpoints_only() -> None:
    records = [CheckpointRecord(step=s, uri=f"u{s}", time=NOW) for s in range(10, 110, 10)]
    parsed = last_progress(progress_line(progress(100, checkpoints=records[::-1])))
    assert parsed is not None and [c.step for c in parsed.checkpoints] == [60, 70, 80, 90, 100]


def test_the_last_whole_line_wins_over_garbage_half_lines_and_other_output() -> None:
    log = "\n".join([
        "Waiting for Ray Dashboard GCS to become healthy at http://tune-head-svc:8265 ...",
        progress_line(progress(5)),
        f"(RayTrainWorker pid=4242, ip=10.0.0.7) {progress_line(progress(12))}",
        # Ray's deduplication appends a colour-coded count after the line it repeats.
        f"(RayTrainWorker pid=77) {progress_line(progress(15))} \x1b[32m [repeated 2x across cluster]\x1b[0m",
        "Traceback (most recent call last): nothing to do with progress",
        f"{PROGRESS_LINE_PREFIX}{{not json",
        f"{PROGRESS_LINE_PREFIX}{{\"step\": 99}}",  # JSON, but not a TrainProgress
        progress_line(progress(20))[:-15],  # the tail cut mid-line
    ])  # fmt: skip
    found = last_progress(log)
    assert found is not None and found.step == 15
    assert last_progress(log + "\n" + progress_line(progress(21)) + "\n") == progress(21)


@pytest.mark.parametrize(
    "text", ["", "\n\n", "hello\nworld", f"{PROGRESS_LINE_PREFIX}", "TRAMONTANE_PROGRESS{}"]
)
def test_no_progress_in_a_log_without_a_whole_line(text: str) -> None:
    assert last_progress(text) is None
