"""The per-client token bucket behind speech.rate_limit_per_s / rate_limit_burst."""

from __future__ import annotations

from daemon import ratelimit
from daemon.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.49
    assert not limiter.allow("a")  # 0.98 tokens: not yet
    clock.now += 0.02
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 100
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_clients_have_their_own_buckets_and_anonymous_senders_share_one() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.allow("kitchen") and not limiter.allow("kitchen")
    assert limiter.allow("hall")
    assert limiter.allow(None) and not limiter.allow(None)
    assert not limiter.allow(ratelimit.SHARED)  # None is the shared bucket


def test_zero_rate_means_unlimited() -> None:
    limiter = RateLimiter(rate=0.0, burst=1, clock=Clock())
    assert all(limiter.allow("x") for _ in range(1000))


def test_made_up_client_names_cannot_grow_memory_without_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    for i in range(ratelimit.MAX_BUCKETS * 3):
        limiter.allow(f"sender-{i}")
    assert len(limiter._buckets) <= ratelimit.MAX_BUCKETS + 1
    # Past the cap, strangers share one bucket: a flood of new names is limited like one sender.
    assert sum(limiter.allow(f"new-{i}") for i in range(10)) <= 2
    clock.now += 10  # buckets refill and are forgotten: new names get their own again
    assert limiter.allow("later") and limiter.allow("later") and not limiter.allow("later")
