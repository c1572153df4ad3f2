"""How the tenant commands fail: one `CliError` carrying the exit status, and `run` that turns
it (and the Kubernetes client's and the manifest reader's errors) into clear lines on stderr.

A command's work is an async function; `run(work)` drives it with `asyncio.run` and returns the
exit status: 0 ok, 1 the input (or the answer to it) is wrong, 2 usage, I/O or a connection
that failed. No traceback reaches the user for any of these.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from tramontane_cli.args import EXIT_INVALID, EXIT_USAGE
from tramontane_cli.manifest import ManifestError
from tramontane_kube import ApiError, CredentialError, KubeconfigError, Unreachable

__all__ = ["ApiError", "CliError", "describe_api_error", "run"]


class CliError(Exception):
    """A failure to print as one line, with the exit status to return."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def describe_api_error(exc: ApiError) -> CliError:
    """A Kubernetes API error in words, with the status it exits with."""
    if exc.status in (401, 403):
        return CliError(
            EXIT_INVALID, f"{exc.cluster}: not allowed (HTTP {exc.status}): {exc.message}"
        )
    if exc.status >= 500:
        return CliError(EXIT_USAGE, f"{exc.cluster}: API server error {exc.status}: {exc.message}")
    return CliError(EXIT_INVALID, f"{exc.cluster}: {exc.message}")


def run(work: Callable[[], Awaitable[int]]) -> int:
    """Run `work()` on a new event loop; its status, or the status of the error it raised."""
    try:
        return asyncio.run(_call(work))
    except CliError as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return exc.code
    except KubeconfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except CredentialError as exc:  # the kubeconfig's exec plugin gave no token
        print(f"no credentials for the Kubernetes API server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"cannot reach the Kubernetes API server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        error = describe_api_error(exc)
        print(error.message, file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


async def _call(work: Callable[[], Awaitable[int]]) -> int:
    return await work()
