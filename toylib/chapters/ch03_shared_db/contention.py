"""Experiment 2: services writing at once to one file, or each to its own.

SQLite lets one writer at a time into a file; ``busy_timeout`` makes the others sleep and
retry (not queue), so *who* gets the lock varies from run to run. What does not vary is the
total: all writers together get at most one writer's ceiling, ``1000 / hold_ms`` writes/s. So
the experiment repeats each set-up over several trials, interleaving the two designs, and its
verdict is about the total (a count of writes over a window, as a multiple of that ceiling),
with the spread over trials as its interval; the per-writer shares are shown, not judged.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pandas as pd

from toylib.chapters.ch03_shared_db.designs import DESIGNS, ShopDesign, require_running
from toylib.chapters.ch03_shared_db.knobs import (SERVICES, knobs_or_default, order_for,
                                                  within_budget)
from toylib.chapters.ch03_shared_db.models import MAX_WRITERS, ideal_contention
from toylib.core import validate as v
from toylib.core.calibrate import BUSY_P99_MS, lag_during
from toylib.core.clock import now

OWN_WRITE = {   # each service's everyday write, self-contained (no other team's data needed)
    "orders": lambda i, k: ("/orders", order_for(i, k)),
    "inventory": lambda i, k: ("/stock/adjust", {"sku": k.sku_names[i % k.skus], "delta": 1}),
    "billing": lambda i, k: ("/charges", {"order_id": f"walk-in-{i}", "amount": 10.0}),
    "notification": lambda i, k: ("/preferences", {"customer_id": i % k.customers,
                                                   "channel": "email"}),
    "analytics": lambda i, k: ("/rollups", {"day": i % 30, "amount": 10.0}),
}
MAX_WRITES = 100_000      # per writer: a bound on the loop whatever the clock says


async def writer(d: ShopDesign, service: str, until: float, rows: list, start: int = 0) -> None:
    """One client writing to ``service`` back to back until ``until``.

    A request started before the deadline is finished, never cancelled: the run ends a little
    late instead of leaving a transaction half done.
    """
    for i in range(start, start + MAX_WRITES):
        if now() >= until:
            break
        path, body = OWN_WRITE[service](i, d.knobs)
        t0 = now()
        outcome = await d.request(service, "POST", path, body)
        rows.append({"service": service, "start": t0, "end": now(), **outcome})


class Reports:
    """Analysts asking for the heavy report back to back while the block runs."""

    def __init__(self, d: ShopDesign, analysts: int):
        self.d, self.analysts, self.done = d, analysts, 0


@asynccontextmanager
async def reports_running(d: ShopDesign, analysts: int):
    """``analysts`` clients asking analytics for the heavy report, back to back, during the
    block; the report in progress at the end is finished (``.done`` counts them)."""
    v.number("analysts", analysts, low=0, high=d.knobs.analysts, integer=True)
    stop, box = asyncio.Event(), Reports(d, analysts)

    async def analyst():
        while not stop.is_set():
            await d.call("analytics", "GET", "/report")
            box.done += 1

    tasks = [asyncio.ensure_future(analyst()) for _ in range(analysts)]
    try:
        yield box
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, Exception):
            raise r


async def write_burst(d: ShopDesign, *, writers: int, seconds: float = 0.5,
                      analysts: int = 0) -> pd.DataFrame:
    """Probe of a running design: the first ``writers`` services write back to back for
    ``seconds`` (one client each), while ``analysts`` run the heavy report. One row per write."""
    require_running(d)
    v.number("writers", writers, low=1, high=MAX_WRITERS, integer=True)
    v.number("seconds", seconds, low=0.05, high=30)
    v.number("analysts", analysts, low=0, high=d.knobs.analysts, integer=True)
    rows: list = []
    start = now()
    until = start + seconds
    async with lag_during(seconds) as lag, reports_running(d, analysts):
        await asyncio.gather(*(writer(d, svc, until, rows) for svc in SERVICES[:writers]))
    df = pd.DataFrame(rows)
    df["latency_ms"] = (df.end - df.start) * 1000
    df.attrs["elapsed_s"] = df.end.max() - start
    df.attrs["lag_p99_ms"] = lag.p99_ms
    return df


MIN_CALM = 2     # trials the machine could time, at least, behind a timing verdict
EXTRA_PAUSE_S = 1.0   # before an extra round: a burst of load (a program starting) often ends


def calm(lag_p99_ms: float) -> bool:
    """Did the event loop keep time during a trial (lag p99 within the limit; NaN: no)?"""
    return lag_p99_ms <= BUSY_P99_MS


def enough_calm(rows: list[dict], by: tuple[str, ...]) -> bool:
    """Has every set-up (rows with the same values of ``by``) :data:`MIN_CALM` calm trials?

    The experiments with ``extra_trials`` run more interleaved rounds only while this is
    false, each after a pause of :data:`EXTRA_PAUSE_S` (back to back, every round could land
    in the same burst): a burst of load spoils a trial or two and the next calm ones replace
    them, while a machine busy throughout still ends with "not shown by this run" (bounded
    rounds)."""
    calm_per: dict[tuple, int] = {}
    for r in rows:
        key = tuple(r[k] for k in by)
        calm_per[key] = calm_per.get(key, 0) + calm(r["lag p99 ms"])
    return bool(calm_per) and all(n >= MIN_CALM for n in calm_per.values())


async def another_round(rows: list[dict], by: tuple[str, ...], trial: int, trials: int) -> bool:
    """Run round ``trial`` (0-based)? The ``trials`` planned ones always; an extra one only
    while :func:`enough_calm` is false, and after a pause of :data:`EXTRA_PAUSE_S`."""
    if trial < trials:
        return True
    if enough_calm(rows, by):
        return False
    await asyncio.sleep(EXTRA_PAUSE_S)
    return True


def write_summary(df: pd.DataFrame) -> dict:
    """Throughput (ok writes/s), mean/p50/p99 latency, failures, and fairness of one run."""
    if not isinstance(df, pd.DataFrame) or "elapsed_s" not in df.attrs:
        raise TypeError("df must be the DataFrame write_burst() returns")
    ok = df[df.ok]
    per = ok.groupby("service").size()
    return {"writes/s": len(ok) / df.attrs["elapsed_s"], "mean ms": ok.latency_ms.mean(),
            "p50 ms": ok.latency_ms.median(), "p99 ms": ok.latency_ms.quantile(0.99),
            "failed": int((~df.ok).sum()), "lag p99 ms": df.attrs.get("lag_p99_ms", float("nan")),
            # Jain's fairness index over the writers: 1 = equal shares, 1/n = one takes all
            "fairness": float(per.sum() ** 2 / (len(per) * (per ** 2).sum())) if len(per) else
            float("nan")}


@dataclass
class ContentionResult:
    """One row per (trial, writers, design) with its summary; the busiest runs kept whole."""
    hold_ms: float
    rows: pd.DataFrame
    busiest: dict[str, pd.DataFrame] = field(default_factory=dict)   # design -> last run

    def ceiling_multiples(self, name: str, writers: int) -> list[float]:
        """All writers' writes/s over one writer's ceiling (1000 / hold_ms), per trial."""
        v.one_of("name", name, sorted(set(self.rows.design)))
        r = self.rows[(self.rows.design == name) & (self.rows.writers == writers)]
        if r.empty:
            raise ValueError(f"no run of the {name!r} design with writers={writers!r}")
        return list(r["writes/s"] / (1000 / self.hold_ms))

    def table(self) -> pd.DataFrame:
        """Median over trials per (writers, design), with the ideal beside it."""
        med = self.rows.groupby(["writers", "design"]).median(numeric_only=True)
        med = med.drop(columns="trial")
        ideal = [ideal_contention(w, self.hold_ms)[d] for w, d in med.index]
        med["ideal writes/s"] = [i["writes/s"] for i in ideal]
        med["ideal mean ms"] = [i["mean ms"] for i in ideal]
        return med

    def shares(self) -> pd.DataFrame:
        """Writes each service got in the busiest run of each design (who got the lock)."""
        return pd.DataFrame({n: df[df.ok].groupby("service").size()
                             for n, df in self.busiest.items()}).reindex(list(SERVICES))


async def contention(knobs=None, *, writers=(1, 2, 3, 4, 5), seconds: float = 0.5,
                     trials: int = 3) -> ContentionResult:
    """Each number of ``writers``, in both designs (interleaved), ``trials`` times."""
    knobs = knobs_or_default(knobs)
    if knobs.hold_ms <= 0:
        raise ValueError(f"knobs.hold_ms must be > 0 for contention (a write that holds no "
                         f"lock cannot contend); got {knobs.hold_ms!r}")
    writers = counts("writers", writers, 1, MAX_WRITERS)
    v.number("seconds", seconds, low=0.05, high=30)
    v.number("trials", trials, low=1, high=20, integer=True)
    within_budget(trials * len(writers) * 2, seconds, "contention")
    rows, busiest = [], {}
    for trial in range(trials):
        for n in writers:
            for name, kind in DESIGNS.items():
                async with kind(knobs) as d:
                    df = await write_burst(d, writers=n, seconds=seconds)
                rows.append({"design": name, "writers": n, "trial": trial,
                             **write_summary(df)})
                if n == writers[-1]:
                    busiest[name] = df
    return ContentionResult(knobs.hold_ms, pd.DataFrame(rows), busiest)


def counts(name: str, values, low: int, high: int) -> tuple[int, ...]:
    """A non-empty, increasing tuple of distinct integers in [low, high] (a grid of runs)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of integers in [{low}, {high}]; "
                        f"got {values!r}")
    out = tuple(v.number(name, x, low=low, high=high, integer=True) for x in values)
    if not out or len(out) > 16 or list(out) != sorted(set(out)):
        raise ValueError(f"{name} must hold 1 to 16 distinct integers in [{low}, {high}], "
                         f"increasing; got {values!r}")
    return out
