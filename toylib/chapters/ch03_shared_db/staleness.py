"""Experiment 6: how stale the analytics read model gets, fed by events.

In the shared design analytics reads the order table itself and is never stale. Per service
it sees an order only after the event has gone from the outbox, through the relay and the
bus, into its own table. The model beside the measurement is a D/D/1 queue
(:func:`~toylib.chapters.ch03_shared_db.models.ideal_staleness`), its bookkeeping cost
calibrated on the fastest consumer in the same run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from toylib.chapters.ch03_shared_db.contention import counts
from toylib.chapters.ch03_shared_db.designs import DatabasePerService, require_running
from toylib.chapters.ch03_shared_db.knobs import knobs_or_default, order_for, within_budget
from toylib.chapters.ch03_shared_db.models import ideal_staleness
from toylib.core import validate as v
from toylib.core.calibrate import lag_during
from toylib.core.load import open_loop


async def read_model_staleness(d: DatabasePerService, *, rate: float = 40,
                               seconds: float = 1.0, start: int = 0) -> pd.DataFrame:
    """Probe of a running per-service design: place orders at ``rate`` per second (open loop);
    once analytics has caught up, return per order when it was committed, when analytics could
    see it, and the difference (``staleness_ms``)."""
    require_running(d, DatabasePerService)
    v.number("rate", rate, low=1, high=1000)
    v.number("seconds", seconds, low=0.1, high=30)
    v.number("start", start, low=0, high=10**8, integer=True)
    async with lag_during(seconds) as lag:
        await open_loop(lambda i: d.call("orders", "POST", "/orders",
                                         json=order_for(start + i, d.knobs)),
                        rate=rate, n=int(rate * seconds), max_seconds=seconds + 30,
                        progress=False)
    await d.sync(timeout=60)
    df = await d.primary("analytics").dataframe(
        "SELECT order_id, committed_at, visible_at FROM orders WHERE visible_at IS NOT NULL "
        "ORDER BY committed_at")
    df["staleness_ms"] = (df.visible_at - df.committed_at) * 1000
    placed = {o for (o,) in await d.primary("orders").fetchall("SELECT order_id FROM orders")}
    df.attrs["placed"] = len(placed)
    df.attrs["missing"] = len(placed - set(df.order_id))    # committed, never seen by analytics
    df.attrs["lag_p99_ms"] = lag.p99_ms
    return df


@dataclass
class StalenessResult:
    rate: float
    relay_interval_ms: float
    runs: dict[float, list[pd.DataFrame]]    # consumer work per event (ms) -> one per trial

    @property
    def placed(self) -> int:
        return sum(df.attrs["placed"] for dfs in self.runs.values() for df in dfs)

    @property
    def missing(self) -> int:
        """Orders committed that analytics never saw, once its consumer had caught up."""
        return sum(df.attrs["missing"] for dfs in self.runs.values() for df in dfs)

    @property
    def lags(self) -> list[float]:
        """The event loop's lag p99 beside each run (ms): how well this machine could time it."""
        return [df.attrs["lag_p99_ms"] for dfs in self.runs.values() for df in dfs]

    def p99s(self, delay_ms: float) -> list[float]:
        v.one_of("delay_ms", delay_ms, list(self.runs))
        return [float(df.staleness_ms.quantile(0.99)) for df in self.runs[delay_ms]]

    def all(self, delay_ms: float) -> pd.Series:
        v.one_of("delay_ms", delay_ms, list(self.runs))
        return pd.concat([df.staleness_ms for df in self.runs[delay_ms]], ignore_index=True)

    @property
    def overhead_ms(self) -> float:
        """Bookkeeping per event, calibrated on the fastest consumer: its median staleness
        less half a relay interval."""
        fastest = min(self.runs)
        return max(0.0, float(self.all(fastest).median()) - self.relay_interval_ms / 2)

    def model(self, delay_ms: float) -> np.ndarray:
        v.one_of("delay_ms", delay_ms, list(self.runs))
        return ideal_staleness(rate=self.rate, n=len(self.runs[delay_ms][0]), delay_ms=delay_ms,
                               relay_interval_ms=self.relay_interval_ms,
                               overhead_ms=self.overhead_ms)

    def table(self) -> pd.DataFrame:
        o, out = self.overhead_ms, {}
        for dl in self.runs:
            m = pd.Series(self.model(dl))
            out[f"{dl:g} ms of work per event"] = {
                "consumer speed (events/s)": 1000 / (dl + o) if dl + o else float("inf"),
                "load (arrivals / consumer speed)": self.rate * (dl + o) / 1000,
                "p50 measured (ms)": float(self.all(dl).median()),
                "p99 measured (ms)": float(np.median(self.p99s(dl))),
                "p50 model (ms)": float(m.median()), "p99 model (ms)": float(m.quantile(0.99))}
        return pd.DataFrame(out).T


async def staleness(knobs=None, *, rate: float = 40, seconds: float = 1.0,
                    delays=(0, 20, 35), trials: int = 1) -> StalenessResult:
    """Orders at ``rate``/s for ``seconds``, once per analytics consumer speed in ``delays``
    (ms of work per event), ``trials`` times each."""
    knobs = knobs_or_default(knobs)
    v.number("rate", rate, low=1, high=1000)
    v.number("seconds", seconds, low=0.1, high=30)
    delays = counts("delays", delays, 0, 1000)
    v.number("trials", trials, low=1, high=20, integer=True)
    within_budget(trials * len(delays), seconds, "staleness")
    runs = {dl: [] for dl in delays}
    for _ in range(trials):
        for dl in delays:
            async with DatabasePerService(knobs.but(analytics_delay_ms=dl)) as d:
                runs[dl].append(await read_model_staleness(d, rate=rate, seconds=seconds))
    return StalenessResult(rate, knobs.relay_interval_ms, runs)
