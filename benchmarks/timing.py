"""The one timing helper the benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def rate(work: Callable[[], object], seconds: float, repeats: int) -> float:
    """Median operations per second of ``work`` over ``repeats`` runs of ``seconds`` each."""
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            work()
            n += 1
        rates.append(n / elapsed)
    return statistics.median(rates)
