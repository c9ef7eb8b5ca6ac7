"""Failed auth.login attempts per client address, in a sliding one-minute window.

The counts live in each server process's memory: with N processes an address
gets up to N times the limit, and a restart forgets. That is enough to make
guessing tokens (256 random bits each) pointless and to keep a misbehaving
client from loading the database; a shared limit would need Redis.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

WINDOW_SECONDS = 60.0
# Past this many tracked addresses, forget the idle ones (at most once a second).
SWEEP_ABOVE = 10_000


class FailureWindow:
    def __init__(self, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self.clock = clock
        self.failures: dict[str, collections.deque[float]] = {}
        self.last_sweep = 0.0

    def _recent(self, key: str, now: float) -> collections.deque[float] | None:
        times = self.failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.failures[key]
            return None
        return times

    def retry_after_ms(self, key: str, limit: int) -> int:
        """0 when `key` may try now; else how long until its oldest counted
        failure leaves the window."""
        if limit <= 0:
            return 0
        now = self.clock()
        times = self._recent(key, now)
        if times is None or len(times) < limit:
            return 0
        return max(1, math.ceil((times[-limit] + self.window - now) * 1000))

    def add(self, key: str, limit: int) -> int:
        """Counts a failure; returns the failures of `key` in the window."""
        now = self.clock()
        times = self._recent(key, now)
        if times is None:
            times = self.failures[key] = collections.deque()
        times.append(now)
        while len(times) > max(limit, 1):
            times.popleft()  # older ones cannot matter for the limit
        if len(self.failures) > SWEEP_ABOVE and now - self.last_sweep > 1.0:
            self.last_sweep = now
            for other in list(self.failures):
                self._recent(other, now)
        return len(times)

    def clear(self) -> None:
        self.failures.clear()


login_failures = FailureWindow()
