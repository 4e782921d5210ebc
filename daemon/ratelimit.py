"""Requests-per-second limits: one token bucket per client key.

MQTT 3.1.1 does not tell a subscriber who published a message, so the key is what the request
says about its sender (the JSON "client" field; the speech service falls back to the request's
source, so plain MQTT and Hermes requests each share one bucket); a None key means the bucket
`SHARED`. A bucket holds `burst` tokens and refills at `rate` per second; each request takes one.
Buckets that are full again are forgotten, so a flood of made-up client names costs at most
`MAX_BUCKETS` entries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

SHARED = "*"
MAX_BUCKETS = 1024


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`allow(key)` is True while `key` is within `rate`/s with bursts of `burst`; rate 0 = unlimited."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str | None) -> bool:
        if self.rate <= 0:
            return True
        key = SHARED if key is None else key
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
                if len(self._buckets) >= MAX_BUCKETS:
                    key = SHARED  # too many distinct senders at once: they share one bucket
                    bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full(self, now: float) -> None:
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
