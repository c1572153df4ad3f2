"""`tramontane chat --model M "prompt"`: one chat completion through the router, streamed.

The answer's text is printed on stdout as it arrives (server-sent events from
`POST /v1/chat/completions`), then its token usage on stderr. `-o json|yaml` asks for the whole
answer at once and prints it as the API returns it. PROMPT `-` reads the prompt from stdin.
See `routerapi` for where the router and the key come from, and how errors read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tramontane_cli import errors, output, routerapi
from tramontane_cli.args import EXIT_OK, EXIT_USAGE, non_negative_float, positive_int
from tramontane_cli.errors import CliError

EPILOG = (
    "exit status: 0 ok; 1 the router refused the request (key, model, field, limit: HTTP 4xx); "
    "2 usage error, no key or router given, router unreachable or failing (HTTP 5xx)"
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model through the router (streamed)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=EPILOG,
    )
    parser.add_argument("prompt", metavar="PROMPT", help="the user message (- reads stdin)")
    parser.add_argument("-m", "--model", required=True, help="model (or model:adapter) name")
    parser.add_argument("--system", help="a system message before the prompt")
    parser.add_argument("--max-tokens", type=positive_int, help="most tokens to generate")
    parser.add_argument("--temperature", type=non_negative_float, help="sampling temperature")
    routerapi.add_router_flags(parser)
    output.add_output_flag(parser)
    parser.set_defaults(func=lambda args: errors.run(lambda: run_chat(args)))


def _body(args: argparse.Namespace, prompt: str, stream: bool) -> dict[str, Any]:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {"model": args.model, "messages": messages, "stream": stream}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    return body


def _usage_line(usage: dict[str, Any]) -> str:
    return (
        f"[{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} "
        f"completion tokens]"
    )


async def run_chat(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise CliError(EXIT_USAGE, "PROMPT: empty prompt")
    target = routerapi.resolve(args)
    path = "/v1/chat/completions"
    if args.output != "table":
        answer = await routerapi.post_json(target, path, _body(args, prompt, stream=False))
        print(output.dump([answer], args.output, single=True))
        return EXIT_OK
    usage: dict[str, Any] | None = None
    async for event in routerapi.stream_events(target, path, _body(args, prompt, stream=True)):
        for choice in event.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                sys.stdout.write(text)
                sys.stdout.flush()
        usage = event.get("usage") or usage
    sys.stdout.write("\n")
    if usage:
        print(_usage_line(usage), file=sys.stderr)
    return EXIT_OK
