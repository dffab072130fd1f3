"""The chapter's panel: a small version of experiment 2 and of the saga with the reader's knobs."""
from __future__ import annotations

import pandas as pd

from toylib.chapters.ch03_shared_db.contention import write_burst, write_summary
from toylib.chapters.ch03_shared_db.designs import DESIGNS, DatabasePerService
from toylib.chapters.ch03_shared_db.knobs import SERVICES, Knobs
from toylib.chapters.ch03_shared_db.models import ideal_contention
from toylib.chapters.ch03_shared_db.order_saga import invariants, run_sagas
from toylib.core import validate as v
from toylib.present.plots import AFTER, BEFORE

PANEL_HOLD_MS = 20


async def try_it(writers: int = 3, analytics_load: int = 1, p_payment_fail: float = 0.2):
    """A small version of the chapter with your knobs: contention in both designs with
    ``writers`` writing services and ``analytics_load`` report queries running, then 60 order
    sagas with payment failing with probability ``p_payment_fail``."""
    import matplotlib.pyplot as plt
    v.number("writers", writers, low=1, high=len(SERVICES), integer=True)
    v.number("analytics_load", analytics_load, low=0, high=4, integer=True)
    v.probability("p_payment_fail", p_payment_fail)
    knobs = Knobs(hold_ms=PANEL_HOLD_MS, history=20_000, analysts=max(1, analytics_load))
    summary = {}
    for name, kind in DESIGNS.items():
        async with kind(knobs) as d:
            summary[name] = write_summary(await write_burst(
                d, writers=writers, seconds=0.6, analysts=analytics_load))
    table = pd.DataFrame(summary).T.round(2)
    table["ideal writes/s"] = [ideal_contention(writers, knobs.hold_ms)[n]["writes/s"]
                               for n in table.index]
    async with DatabasePerService(Knobs(p_decline=p_payment_fail, seed=1)) as d:
        await run_sagas(d, orders=60)
        checks = await invariants(d)
    fig, ax = plt.subplots(layout="constrained")
    ax.bar(table.index, table["writes/s"], color=[BEFORE, AFTER])
    ax.scatter(table.index, table["ideal writes/s"], color="#374151", marker="_", s=800,
               label="ideal")
    ax.set_ylabel("writes/s (all writers)")
    ax.set_title(f"{writers} writing services, {analytics_load} report(s) running")
    ax.legend()
    return table, fig, checks
