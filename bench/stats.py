"""Repeat-and-summarise helpers: medians and spreads, never a single lucky run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    median: float
    low: float  # min over repeats
    high: float  # max over repeats
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, unit: str = "ms", scale: float = 1000.0) -> str:
        return (f"{self.median * scale:.1f} {unit} "
                f"[{self.low * scale:.1f}-{self.high * scale:.1f}, n={self.n}]")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def repeat(fn: Callable[[], float], times: int) -> Summary:
    """Call fn (which returns a measured duration in seconds) `times` times."""
    return Summary.of([fn() for _ in range(times)])


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ratio(a: Summary, b: Summary) -> float:
    return a.median / b.median
