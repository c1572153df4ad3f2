"""Where the operator reads a FineTuneJob's progress from (progress.json or the submitter's log)."""

from __future__ import annotations

from datetime import UTC, datetime

from tramontane_operator.reconcile.finetunejob_progress import (
    output_readable,
    reads_submitter_log,
)
from tramontane_workers.contract.train_config import TrainProgress


def test_the_operator_reads_the_log_only_for_a_submitted_rayjob_without_output_progress() -> None:
    assert not output_readable("pvc://out/tune") and output_readable("s3://bucket/tune")
    running = {"status": {"jobDeploymentStatus": "Running"}}
    assert reads_submitter_log(running, None)
    assert reads_submitter_log({"status": {"jobDeploymentStatus": "Complete"}}, None)
    assert not reads_submitter_log(
        running, TrainProgress(step=3, total_steps=9, updated=datetime.now(UTC))
    )  # progress.json was read
    assert not reads_submitter_log(None, None)  # no RayJob (terminal, or not created)
    for state in ("", "Initializing", "Suspended", "Retrying"):  # no submitter pod to read
        assert not reads_submitter_log({"status": {"jobDeploymentStatus": state}}, None)
