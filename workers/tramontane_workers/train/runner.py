"""Ray Train glue: run `loop.train` on a `TorchTrainer` worker group, with restarts that resume.

`build_trainer(config)` is what the RayJob entrypoint runs (`python -m tramontane_workers.train`):
one `TorchTrainer` with `config.num_workers` workers, GPU or CPU, and a `FailureConfig` so a
worker that dies restarts the group; the restarted loop resumes from the newest complete
checkpoint under the output URI. A retried RayJob (a new driver) resumes the same way. The
driver prints the final progress line itself once `fit` returns: the job's log ends with it
even when Ray has not yet forwarded the workers' last lines.
"""

from __future__ import annotations

from typing import Any

import torch
from ray import train as ray_train
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device, prepare_model

from tramontane_workers.contract.train_config import PROGRESS_FILE, TrainConfig, TrainProgress
from tramontane_workers.train.loop import WorkerEnv, print_progress, publish_progress, train
from tramontane_workers.train.storage import OutputStore


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


def _prepare(model: torch.nn.Module) -> torch.nn.Module:
    # prepare_model moves to the device and wraps in DDP when there are several workers.
    prepared: torch.nn.Module = prepare_model(model, move_to_device=True)
    return prepared


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    cfg = TrainConfig.model_validate(config)
    context = ray_train.get_context()
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.cpus_per_worker)
    env = WorkerEnv(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        device=get_device(),
        report=ray_train.report,
        prepare=_prepare,
        all_reduce=_all_reduce,
    )
    train(cfg, env)


def build_trainer(config: TrainConfig) -> TorchTrainer:
    resources = {"CPU": float(config.cpus_per_worker)}
    if config.use_gpu:
        resources["GPU"] = 1.0
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=config.job_name,
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )


def run(config: TrainConfig) -> TrainProgress:
    """Train to the end (resuming if possible); mark progress failed if Ray Train gives up."""
    store = OutputStore(config.output_uri)
    try:
        build_trainer(config).fit()
    except Exception as exc:
        previous = store.read_json(PROGRESS_FILE)
        if previous is not None:
            failed = TrainProgress.model_validate(previous)
            failed = failed.model_copy(update={"state": "failed", "message": str(exc)[:1000]})
            publish_progress(store, failed)
        raise
    final = store.read_json(PROGRESS_FILE)
    if final is None:
        raise RuntimeError(f"training finished without writing {config.output_uri}/{PROGRESS_FILE}")
    progress = TrainProgress.model_validate(final)
    print_progress(progress)  # the driver's own line: workers' lines may not be forwarded yet
    return progress
