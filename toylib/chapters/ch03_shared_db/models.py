"""The analytic ideals the measurements are shown beside (no run needed)."""
from __future__ import annotations

import numpy as np

from toylib.core import validate as v

MAX_WRITERS = 5


def ideal_contention(writers: int, hold_ms: float) -> dict:
    """One writer at a time (shared) vs one per file (per service), from the hold time alone."""
    v.number("writers", writers, low=1, high=MAX_WRITERS, integer=True)
    v.number("hold_ms", hold_ms, low=0, high=1000, low_open=True)
    return {"before": {"writes/s": 1000 / hold_ms, "mean ms": writers * hold_ms},
            "after": {"writes/s": writers * 1000 / hold_ms, "mean ms": hold_ms}}


def ideal_scaling(workers: int, *, work_ms: float, hold_ms: float, others: int = 4) -> dict:
    """Writes/s if handing the lock over cost nothing. Per service: the order service is capped
    only by its own file's single writer (1/hold), and each other writer does 1/(work + hold).
    Shared: everyone together is capped by the one writer lock (1/hold)."""
    v.number("workers", workers, low=1, high=64, integer=True)
    v.number("hold_ms", hold_ms, low=0, high=1000, low_open=True)
    v.number("work_ms", work_ms, low=0, high=1000)
    v.number("others", others, low=0, high=MAX_WRITERS - 1, integer=True)
    cycle = work_ms + hold_ms
    return {"order, per service": min(workers * 1000 / cycle, 1000 / hold_ms),
            "others, per service": others * 1000 / cycle,
            "everyone, shared": 1000 / hold_ms}


def ideal_staleness(*, rate: float, n: int, delay_ms: float, relay_interval_ms: float,
                    overhead_ms: float = 0.0) -> np.ndarray:
    """Staleness of each of ``n`` orders arriving every 1/rate s at a consumer that takes
    ``delay_ms`` (+ ``overhead_ms`` of bookkeeping) per event, after waiting on average half a
    relay interval: a D/D/1 queue. Below saturation it is flat; above, it grows linearly."""
    v.number("rate", rate, low=0, high=10_000, low_open=True)
    v.number("n", n, low=1, high=1_000_000, integer=True)
    v.number("delay_ms", delay_ms, low=0, high=10_000)
    v.number("relay_interval_ms", relay_interval_ms, low=0, high=10_000)
    v.number("overhead_ms", overhead_ms, low=0, high=10_000)
    gap, done, out = 1000 / rate, -np.inf, []
    for k in range(n):
        arrival = k * gap + relay_interval_ms / 2
        done = max(arrival, done) + delay_ms + overhead_ms
        out.append(done - k * gap)
    return np.array(out)
