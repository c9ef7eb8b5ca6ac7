"""Request rate limiting: a token bucket per key (the session's user)."""

from __future__ import annotations

import time


class TokenBucket:
    """`rate` requests per `per` seconds on average, bursts up to `rate`."""

    def __init__(self, rate: int, per: float) -> None:
        self.capacity = float(rate)
        self.refill_per_second = rate / per
        self.tokens = float(rate)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """Takes one token; returns 0, or the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_second)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.refill_per_second


class RequestLimiter:
    """One bucket per key, process-local; idle keys are forgotten."""

    def __init__(self, rate: int, per: float, max_keys: int = 10_000) -> None:
        self.rate, self.per, self.max_keys = rate, per, max_keys
        self.buckets: dict[str, TokenBucket] = {}

    def retry_after_ms(self, key: str) -> int:
        """0 when the request may go ahead, else how long to wait."""
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._forget_full_buckets()
            bucket = self.buckets[key] = TokenBucket(self.rate, self.per)
        wait = bucket.take()
        return 0 if wait == 0 else max(1, int(wait * 1000 + 0.999))

    def _forget_full_buckets(self) -> None:
        now = time.monotonic()
        for key, bucket in list(self.buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * bucket.refill_per_second >= bucket.capacity:
                del self.buckets[key]
