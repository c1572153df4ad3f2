"""A sliding 60-second window of admissions, exact: the promise behind "per minute".

A token bucket that starts full and refills across the minute admits up to twice its rate in
the first minute; a fixed window admits twice the limit across a window boundary. Here every
admission is an entry (time, amount) and a new one is admitted only if the entries of the last
60 seconds plus it stay within the cap, so in ANY 60-second window what was admitted stays
within the limit. An entry made as a reservation (the worst case of a request) is settled to
the real amount when the request ends, which frees the difference at once. Entries are kept
only for the window, so memory is bounded by what the window admits.

When a request does not fit, `retry_after` is when enough of the oldest entries leave the
window for it to fit (if nothing else is admitted meanwhile) — what `Retry-After` says.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .types import WINDOW_S


@dataclass
class Entry:
    at: float
    amount: float
    live: bool = True  # still inside the window (settling an evicted entry changes nothing)


class SlidingWindow:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._entries: deque[Entry] = deque()
        self.total = 0.0

    def _evict(self, now: float) -> None:
        horizon = now - self.window_s
        entries = self._entries
        while entries and entries[0].at <= horizon:
            old = entries.popleft()
            old.live = False
            self.total -= old.amount
        if not entries:
            self.total = 0.0  # no float drift once empty

    def used(self, now: float) -> float:
        self._evict(now)
        return self.total

    def retry_after(self, amount: float, cap: float, now: float) -> float | None:
        """0 if `amount` fits now; else seconds until it would fit; None if it never can."""
        self._evict(now)
        if amount > cap:
            return None
        excess = self.total + amount - cap
        if excess <= 0:
            return 0.0
        freed = 0.0
        for entry in self._entries:
            freed += entry.amount
            if freed >= excess:  # (a microsecond more: the entry is out at that instant)
                return max(entry.at + self.window_s - now, 0.0) + 1e-6
        return self.window_s  # unreachable while total >= excess; a safe answer anyway

    def add(self, amount: float, now: float) -> Entry:
        """Admit `amount` now (call `retry_after` first)."""
        self._evict(now)
        entry = Entry(now, amount)
        self._entries.append(entry)
        self.total += amount
        return entry

    def settle(self, entry: Entry, amount: float) -> None:
        """Replace a reservation by the real amount."""
        if entry.live:
            self.total += amount - entry.amount
        entry.amount = amount
