"""`tramontane usage [--tenant T] [--since DATE]`: a tenant's tokens per model.

Asks the router (`GET /v1/usage`) for the tokens its key's tenant used, per model and adapter,
summed over every router replica's usage record from DATE (a UTC day) on, with the daily and
monthly budget when the tenant has one. A key sees only its own tenant: `--tenant` picks the key
in local mode and, with a key from `TRAMONTANE_API_KEY`, checks the key is that tenant's.
"""

from __future__ import annotations

import argparse
from typing import Any

from tramontane_cli import errors, output, routerapi
from tramontane_cli.args import EXIT_INVALID, EXIT_OK, iso_date
from tramontane_cli.commands.chat import EPILOG
from tramontane_cli.errors import CliError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "usage",
        help="a tenant's tokens per model (from the router)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=EPILOG,
    )
    parser.add_argument("--since", type=iso_date, metavar="DATE", help="from this UTC day on")
    routerapi.add_router_flags(parser)
    output.add_output_flag(parser)
    parser.set_defaults(func=lambda args: errors.run(lambda: run_usage(args)))


def _table(answer: dict[str, Any]) -> str:
    rows = [["MODEL", "ADAPTER", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL"]]
    for r in answer.get("data") or []:
        rows.append(
            [
                str(r.get("model")),
                str(r.get("adapter") or "-"),
                *(
                    f"{int(r.get(k) or 0):,}"
                    for k in ("requests", "promptTokens", "completionTokens", "totalTokens")
                ),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            v.ljust(w) if i < 2 else v.rjust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]
    since = answer.get("since") or "the start of the record"
    head = f"tenant {answer.get('tenant')}, since {since}"
    if len(rows) == 1:
        lines = ["no usage recorded"]
    budget = answer.get("tokenBudget")
    if budget:
        day = f"{budget.get('tokensToday', 0):,} tokens on {budget.get('day')}"
        if budget.get("remainingToday") is not None:
            day += f" ({budget['remainingToday']:,} left)"
        month = f"{budget.get('tokensThisMonth', 0):,} in {budget.get('month')}"
        if budget.get("remainingThisMonth") is not None:
            month += f" ({budget['remainingThisMonth']:,} left)"
        lines.append(f"budget: {day}; {month}")
    return "\n".join([head, *lines])


async def run_usage(args: argparse.Namespace) -> int:
    target = routerapi.resolve(args)
    params = {"since": args.since.isoformat()} if args.since else {}
    answer = await routerapi.get_json(target, "/v1/usage", params)
    if target.tenant and answer.get("tenant") != target.tenant:
        raise CliError(
            EXIT_INVALID,
            f"--tenant: the API key belongs to tenant "
            f"{answer.get('tenant')!r}, not {target.tenant!r}",
        )
    if args.output != "table":
        print(output.dump([answer], args.output, single=True))
    else:
        print(_table(answer))
    return EXIT_OK
