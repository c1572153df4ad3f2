"""Where the operator reads a FineTuneJob's progress from (progress.json or the submitter's log)."""

from __future__ import annotations

from datetime import UTC, datetime

from tramontane_operator.reconcile.finetunejob_progress import reads_submitter_log
from tramontane_operator.reconcile.finetunejob_trust import reads_output
from tramontane_workers.contract.train_config import TrainProgress


def test_the_operator_reads_the_log_only_for_a_submitted_rayjob_without_output_progress() -> None:
    # progress.json is read by the operator only from a local directory in local mode
    assert not reads_output("pvc://out/tune", True) and not reads_output("s3://bucket/tune", True)
    assert reads_output("file:///tmp/tune", True) and not reads_output("file:///tmp/tune", False)
    running = {"status": {"jobDeploymentStatus": "Running"}}
    assert reads_submitter_log(running, None)
    assert reads_submitter_log({"status": {"jobDeploymentStatus": "Complete"}}, None)
    assert not reads_submitter_log(
        running, TrainProgress(step=3, total_steps=9, updated=datetime.now(UTC))
    )  # progress.json was read
    assert not reads_submitter_log(None, None)  # no RayJob (terminal, or not created)
    for state in ("", "Initializing", "Suspended", "Retrying"):  # no submitter pod to read
        assert not reads_submitter_log({"status": {"jobDeploymentStatus": state}}, None)
