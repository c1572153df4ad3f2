"""API keys: held only as SHA-256 digests, looked up by digest, confirmed in constant time.

A key is never stored, logged or put in an error; only its digest lives in the routing table.
Keys are long random strings (not passwords), so an unsalted fast hash is the right tool: the
digest is not reversible and equal digests are equal keys.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

Digest = bytes

MIN_KEY_LENGTH = 16  # shorter Secret values are refused: guessable


def digest(key: str) -> Digest:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def bearer_key(header: str | None) -> str | None:
    """The key in an `Authorization: Bearer KEY` value (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


class KeyRing:
    """Digest -> tenant. Candidates are found by an 8-byte prefix of the digest; the whole
    digest is then compared with `hmac.compare_digest`, so the time taken tells nothing about
    how close a wrong key came."""

    def __init__(self, keys: Mapping[Digest, str] | None = None) -> None:
        self._by_prefix: dict[bytes, list[tuple[Digest, str]]] = {}
        for full, tenant in (keys or {}).items():
            self._by_prefix.setdefault(full[:8], []).append((full, tenant))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_prefix.values())

    def tenant(self, key: str) -> str | None:
        """The tenant that owns `key`, or None."""
        wanted = digest(key)
        found = None
        for full, tenant in self._by_prefix.get(wanted[:8], ()):
            if hmac.compare_digest(full, wanted):
                found = tenant
        return found
