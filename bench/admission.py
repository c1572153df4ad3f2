"""Admission throughput: how fast quota admission decides for a crowded tenant.

Each round admits a tenant's pending FineTuneJobs and ModelDeployments against its quotas
(`tramontane_operator.quotas.admit`). The baseline, measured in the same run, is the floor any
admission has to pay: ordering the same workloads (`sorted` by priority and age). Figures:
`admissions_per_s` (workloads decided per second), `admit_p95_s` (one round, 95th percentile),
and `overhead_ratio` (round time / baseline sort time).

    python bench/admission.py [--quick] [--pending N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from tramontane_api.v1alpha1.tenant import Quotas
from tramontane_operator.quotas import Workload, admit

T0 = datetime(2026, 11, 26, tzinfo=UTC)
GPU_TYPES = ("H100", "A100-80GB", "L40S")


def workloads(n: int, seed: int) -> list[Workload]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = "FineTuneJob" if rng.random() < 0.8 else "ModelDeployment"
        out.append(
            Workload(
                kind=kind,  # type: ignore[arg-type]
                namespace=f"team-{i % 7}",
                name=f"w{i}",
                created=T0 + timedelta(seconds=rng.randint(0, 86_400)),
                gpus={rng.choice(GPU_TYPES): rng.choice((1, 2, 4, 8))},
                priority=rng.choice((0, 0, 0, 10, 100)),
                admitted=rng.random() < 0.2,
            )
        )
    return out


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run well under a minute")
    parser.add_argument("--pending", type=int, default=2000, help="workloads per tenant")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rounds = 30 if args.quick else args.rounds
    quotas = Quotas(
        gpus={"H100": 64, "A100-80GB": 128, "L40S": 32},
        max_concurrent_fine_tune_jobs=50,
        max_model_deployments=40,
    )
    batches = [workloads(args.pending, seed) for seed in range(rounds)]

    admit_times, sort_times = [], []
    decided = 0
    for batch in batches:
        start = time.perf_counter()
        result = admit(quotas, batch)
        admit_times.append(time.perf_counter() - start)
        decided += len(result.admitted) + len(result.queued)

        start = time.perf_counter()
        sorted(batch, key=lambda w: (-w.priority, w.created, w.key))
        sort_times.append(time.perf_counter() - start)

    total = sum(admit_times)
    figures = {
        "bench": "admission",
        "pending_per_round": args.pending,
        "rounds": rounds,
        "admissions_per_s": round(decided / total, 1),
        "admit_p50_s": round(statistics.median(admit_times), 6),
        "admit_p95_s": round(p95(admit_times), 6),
        "baseline_sort_p50_s": round(statistics.median(sort_times), 6),
        "overhead_ratio": round(statistics.median(admit_times) / statistics.median(sort_times), 2),
    }
    print(
        f"admit {args.pending} pending: p50 {figures['admit_p50_s'] * 1e3:.2f} ms, "
        f"p95 {figures['admit_p95_s'] * 1e3:.2f} ms; sort baseline "
        f"{figures['baseline_sort_p50_s'] * 1e3:.2f} ms"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
