"""What every subcommand shares about its command line: exit codes and range-checked flag types.

Each `type=` here raises `argparse.ArgumentTypeError`, so argparse itself prints
`tramontane ...: error: argument --flag: message` on stderr and exits 2 before any work is done.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from datetime import date
from typing import Final

EXIT_OK: Final = 0
EXIT_INVALID: Final = 1  # the input was read and is wrong
EXIT_USAGE: Final = 2  # bad flags, or a file that cannot be read

EXIT_CODES_EPILOG: Final = (
    "exit status: 0 ok; 1 invalid input (each problem printed on stderr as FILE:LINE: field: "
    "message); 2 usage error (--flag: message) or a file that cannot be read"
)


def _number(text: str, kind: Callable[[str], float]) -> float:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}")
    return value


def port(text: str) -> int:
    value = int(_number(text, int))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535, got {text!r}")
    return value


def iso_date(text: str) -> date:
    """A calendar day, YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {text!r}") from None


def http_url(text: str) -> str:
    """An http:// or https:// URL with a host."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        raise argparse.ArgumentTypeError(
            f"must be an http:// or https:// URL such as http://127.0.0.1:8080, got {text!r}"
        )
    return text.rstrip("/")
