"""Experiment 4: more workers for one service, while the other services keep writing.

Each request does ``work_ms`` of work (an injected latency, well above the harness's noise)
and then a write that holds its transaction ``hold_ms``. Counts of writes over a window,
repeated over trials with the two designs interleaved; the verdict uses the spread.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pandas as pd

from toylib.chapters.ch03_shared_db.contention import another_round, counts, writer
from toylib.chapters.ch03_shared_db.designs import DESIGNS, ShopDesign, require_running
from toylib.chapters.ch03_shared_db.knobs import SERVICES, knobs_or_default, within_budget
from toylib.chapters.ch03_shared_db.models import ideal_scaling
from toylib.core import validate as v
from toylib.core.calibrate import lag_during
from toylib.core.clock import now
from toylib.core.faults import Latency


async def scaling_run(d: ShopDesign, *, seconds: float = 0.8, work_ms: float = 40.0,
                      background: bool = True) -> dict:
    """Probe of a running design: the order service's ``order_workers`` each do ``work_ms`` of
    work, then a write that holds its transaction ``hold_ms``; clients keep every worker busy.
    With ``background`` the four other services write too, one client each, the same way."""
    require_running(d)
    v.number("seconds", seconds, low=0.05, high=30)
    v.number("work_ms", work_ms, low=0, high=1000)
    if not isinstance(background, bool):
        raise TypeError(f"background must be True or False; got {background!r}")
    for svc in SERVICES:
        d.topology.service(svc).faults.clear()
        if work_ms:
            d.topology.service(svc).faults.add(Latency(work_ms))
    rows: list = []
    start = now()
    until = start + seconds
    clients = [writer(d, "orders", until, rows, start=10_000 * k)
               for k in range(d.knobs.order_workers)]
    if background:
        clients += [writer(d, svc, until, rows) for svc in SERVICES[1:]]
    async with lag_during(seconds) as lag:
        await asyncio.gather(*clients)
    df = pd.DataFrame(rows)
    elapsed = df.end.max() - start
    ok = df[df.ok]
    return {"order writes/s": int((ok.service == "orders").sum()) / elapsed,
            "other writes/s": int((ok.service != "orders").sum()) / elapsed,
            "failed": int((~df.ok).sum()), "lag p99 ms": lag.p99_ms}


@dataclass
class ScalingResult:
    work_ms: float
    hold_ms: float
    rows: pd.DataFrame        # design, order workers, trial, order/other/everyone writes/s

    def trials(self, name: str, workers: int, column: str) -> list[float]:
        v.one_of("name", name, sorted(set(self.rows.design)))
        r = self.rows[(self.rows.design == name) & (self.rows["order workers"] == workers)]
        if r.empty:
            raise ValueError(f"no run of the {name!r} design with {workers!r} order workers")
        return list(r[v.one_of("column", column, list(self.rows.columns))])

    def table(self) -> pd.DataFrame:
        med = self.rows.groupby(["order workers", "design"]).median(numeric_only=True)
        return med.drop(columns="trial")

    def ideal(self, workers: int) -> dict:
        return ideal_scaling(workers, work_ms=self.work_ms, hold_ms=self.hold_ms)


async def scaling(knobs=None, *, workers=(1, 2, 4, 8), seconds: float = 0.8,
                  work_ms: float = 40.0, trials: int = 1,
                  extra_trials: int = 0) -> ScalingResult:
    """The order service with each number of ``workers``, both designs interleaved, over
    ``trials`` rounds; then up to ``extra_trials`` more while some set-up has too few trials
    during which the event loop kept time (:func:`~.contention.enough_calm`)."""
    knobs = knobs_or_default(knobs)
    if knobs.hold_ms <= 0:
        raise ValueError(f"knobs.hold_ms must be > 0 for scaling (a write that holds no lock "
                         f"has no ceiling); got {knobs.hold_ms!r}")
    workers = counts("workers", workers, 1, 64)
    v.number("seconds", seconds, low=0.05, high=30)
    v.number("work_ms", work_ms, low=0, high=1000)
    v.number("trials", trials, low=1, high=20, integer=True)
    v.number("extra_trials", extra_trials, low=0, high=20, integer=True)
    within_budget((trials + extra_trials) * len(workers) * 2, seconds, "scaling")
    rows = []
    for trial in range(trials + extra_trials):
        if not await another_round(rows, ("design", "order workers"), trial, trials):
            break
        for w in workers:
            for name, kind in DESIGNS.items():
                async with kind(knobs.but(order_workers=w)) as d:
                    r = await scaling_run(d, seconds=seconds, work_ms=work_ms)
                rows.append({"design": name, "order workers": w, "trial": trial, **r,
                             "everyone writes/s": r["order writes/s"] + r["other writes/s"]})
    return ScalingResult(work_ms, knobs.hold_ms, pd.DataFrame(rows))
