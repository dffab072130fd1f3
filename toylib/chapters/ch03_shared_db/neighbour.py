"""Experiment 3: a heavy analytics report next to order writes (the noisy neighbour).

In a shared rollback-journal file a running report holds a shared lock that the order
commit must wait out: each order waits for the report in progress (a fraction of a second of
CPU work), far above the harness's noise. One client places orders back to back for a window while
an analyst runs the report back to back, so the headline is two counts: orders placed per
report run. In the shared journal file about one order gets in per report whatever the machine's
speed (the lock decides); per service the orders go at their own pace, and a busy machine only
slows the report further, so the ratio of the two counts keeps its side of the claim under
load. Orders per second and each order's latency are shown too; the set-ups are interleaved
and repeated, and the verdict uses the spread over trials.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from toylib.chapters.ch03_shared_db.contention import another_round, reports_running, writer
from toylib.chapters.ch03_shared_db.designs import (DatabasePerService, SharedDatabase,
                                                    ShopDesign, require_running)
from toylib.chapters.ch03_shared_db.knobs import knobs_or_default, order_for, within_budget
from toylib.core import validate as v
from toylib.core.calibrate import lag_during
from toylib.core.clock import now

# label -> (design, journal in WAL mode, analysts running the report)
SETUPS = {"shared (journal)": (SharedDatabase, False, 1),
          "per service": (DatabasePerService, False, 1),
          "shared (WAL)": (SharedDatabase, True, 1),
          "shared, no report": (SharedDatabase, False, 0)}
MIN_HISTORY = 5_000      # below this the report is too quick to matter


async def orders_beside_reports(d: ShopDesign, *, analysts: int,
                                seconds: float = 1.0) -> pd.DataFrame:
    """Probe of a running design: one client places orders back to back for ``seconds`` while
    ``analysts`` run the report back to back. One row per order (start, end, ok, latency_ms);
    ``attrs`` holds the elapsed time and how many reports ran.

    A closed loop on purpose: how many orders got through in the window is a count, and the
    run's length is bounded by the window plus one report, however slow the machine."""
    require_running(d)
    v.number("seconds", seconds, low=0.1, high=30)
    v.number("analysts", analysts, low=0, high=d.knobs.analysts, integer=True)
    await d.call("orders", "POST", "/orders", json=order_for(99_999, d.knobs))   # warm up
    rows: list = []
    async with lag_during(seconds) as lag, reports_running(d, analysts) as reports:
        start = now()
        await writer(d, "orders", start + seconds, rows, start=100_000)
        elapsed = now() - start
    df = pd.DataFrame(rows)
    df["latency_ms"] = (df.end - df.start) * 1000
    df.attrs.update(elapsed_s=elapsed, reports=reports.done, lag_p99_ms=lag.p99_ms)
    return df


@dataclass
class NeighbourResult:
    rows: pd.DataFrame   # set-up, trial, reports, orders ok, per s and per report, p50/p90/max
    latencies: dict[str, pd.Series]      # set-up -> every ok order's latency, all trials

    def trials(self, setup: str, column: str = "orders/s") -> list[float]:
        r = self.rows[self.rows["set-up"] == v.one_of("setup", setup, list(SETUPS))]
        return list(r[v.one_of("column", column, list(self.rows.columns))])

    def table(self) -> pd.DataFrame:
        return self.rows.groupby("set-up", sort=False).median(numeric_only=True).drop(
            columns="trial")


async def noisy_neighbour(knobs=None, *, setups=tuple(SETUPS), seconds: float = 1.0,
                          trials: int = 1, extra_trials: int = 0) -> NeighbourResult:
    """Each set-up in turn (interleaved over ``trials``), with ``knobs.history`` past orders;
    then up to ``extra_trials`` more rounds while some set-up has too few trials during which
    the event loop kept time (:func:`~.contention.enough_calm`)."""
    knobs = knobs_or_default(knobs)
    if knobs.history < MIN_HISTORY:
        raise ValueError(f"knobs.history must be >= {MIN_HISTORY} for the noisy neighbour "
                         f"(the report scans it); got {knobs.history!r}")
    if isinstance(setups, str) or not setups or any(s not in SETUPS for s in setups):
        raise ValueError(f"setups must be a non-empty sequence of {list(SETUPS)}; "
                         f"got {setups!r}")
    v.number("trials", trials, low=1, high=20, integer=True)
    v.number("extra_trials", extra_trials, low=0, high=20, integer=True)
    v.number("seconds", seconds, low=0.1, high=30)
    within_budget((trials + extra_trials) * len(setups), seconds, "the noisy neighbour")
    rows, lat = [], {s: [] for s in setups}
    for trial in range(trials + extra_trials):
        if not await another_round(rows, ("set-up",), trial, trials):
            break
        for label in setups:
            kind, wal, analysts = SETUPS[label]
            async with kind(knobs.but(wal=wal, analysts=1)) as d:
                df = await orders_beside_reports(d, analysts=analysts, seconds=seconds)
            ok = df.loc[df.ok, "latency_ms"]
            lat[label].append(ok)
            rows.append({"set-up": label, "trial": trial, "reports run": df.attrs["reports"],
                         "orders ok": int(df.ok.sum()),
                         "orders/s": int(df.ok.sum()) / df.attrs["elapsed_s"],
                         # a count over a count; no report ran: not defined
                         "orders per report": (int(df.ok.sum()) / df.attrs["reports"]
                                               if df.attrs["reports"] else float("nan")),
                         "p50 ms": ok.median(), "p90 ms": ok.quantile(0.9), "max ms": ok.max(),
                         "lag p99 ms": df.attrs["lag_p99_ms"]})
    return NeighbourResult(pd.DataFrame(rows),
                           {s: pd.concat(x, ignore_index=True) for s, x in lat.items()})
