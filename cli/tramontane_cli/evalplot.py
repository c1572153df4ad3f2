"""`tramontane eval show --plot FILE.png`: a small bar chart of an Evaluation's scores.

One pair of bars per metric (the target's score, the baseline's when there is one), the delta
written above each pair, the threshold's text under the metric's name. matplotlib (the `plot`
extra) draws it with its non-interactive Agg backend; without it, a clear error names the
extra. The scores are those of `status.results` as the operator wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tramontane_cli.args import EXIT_INVALID, EXIT_USAGE
from tramontane_cli.errors import CliError


def _score(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def write(path: str, name: str, results: Sequence[Mapping[str, Any]]) -> None:
    """Draw `results` (status.results) into the PNG at `path`; CliError when it cannot."""
    if not results:
        raise CliError(EXIT_INVALID, f"--plot: evaluation {name} has no scores yet")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as exc:
        raise CliError(
            EXIT_USAGE,
            "--plot: needs matplotlib, which is not installed: "
            "pip install 'tramontane[plot]' (the plot extra)",
        ) from exc
    metrics = [str(r.get("metric")) for r in results]
    scores = [_score(r.get("score")) for r in results]
    has_baseline = any(r.get("baseline") is not None for r in results)
    width = 0.38 if has_baseline else 0.6
    xs = list(range(len(results)))
    figure, axes = pyplot.subplots(figsize=(max(4.0, 1.6 * len(results) + 1.5), 3.2), dpi=100)
    try:
        offset = width / 2 if has_baseline else 0.0
        axes.bar([x - offset for x in xs], scores, width, label="target", color="#1f77b4")
        if has_baseline:
            baselines = [_score(r.get("baseline")) for r in results]
            axes.bar([x + offset for x in xs], baselines, width, label="baseline", color="#bbbbbb")
        top = max([*scores, *([_score(r.get("baseline")) for r in results]), 1e-9])
        for x, r in zip(xs, results, strict=True):
            delta = r.get("delta")
            if isinstance(delta, int | float):
                high = max(_score(r.get("score")), _score(r.get("baseline")))
                axes.text(x, high + top * 0.03, f"Δ {delta:+.3g}", ha="center", fontsize=8)
        labels = [
            f"{m}\n{r.get('threshold') or ''}\n{'pass' if r.get('passed') else ''}"
            f"{'FAIL' if r.get('passed') is False else ''}"
            for m, r in zip(metrics, results, strict=True)
        ]
        axes.set_xticks(xs, labels, fontsize=8)
        axes.set_ylim(0, top * 1.2)
        axes.set_title(f"evaluation {name}", fontsize=10)
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        figure.tight_layout()
        try:
            figure.savefig(path, format="png")
        except OSError as exc:
            raise CliError(
                EXIT_USAGE, f"--plot: {path}: cannot write: {exc.strerror or exc}"
            ) from exc
    finally:
        pyplot.close(figure)
