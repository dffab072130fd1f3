"""Measured data for the static site's explorer: experiment 2 over a small grid of knobs.

Run at build time (on the build machine), so a reader of the published pages can move the
knobs and see results that were measured, without a kernel. Labelled as such where shown.
"""
from __future__ import annotations

import pandas as pd

from toylib.chapters.ch03_shared_db.contention import counts, write_burst, write_summary
from toylib.chapters.ch03_shared_db.designs import DESIGNS
from toylib.chapters.ch03_shared_db.knobs import Knobs
from toylib.chapters.ch03_shared_db.models import MAX_WRITERS, ideal_contention
from toylib.core import validate as v

SWEEP_HOLD_MS = (10, 20, 40)
SWEEP_WRITERS = (1, 3, 5)


async def sweep(*, hold_ms=SWEEP_HOLD_MS, writers=SWEEP_WRITERS,
                seconds: float = 0.4) -> pd.DataFrame:
    """Services writing at once (``writers``) with write transactions of ``hold_ms``, in both
    designs: one row per grid point and design, with the knob values, the measured results and
    the ideal (about 9 s for the default 3 x 3 grid)."""
    holds = counts("hold_ms", hold_ms, 1, 200)
    writers = counts("writers", writers, 1, MAX_WRITERS)
    v.number("seconds", seconds, low=0.1, high=5)
    if len(holds) * len(writers) * seconds * 2 > 40:
        raise ValueError(f"the grid would take over 40 s: {len(holds)} x {len(writers)} points "
                         f"x 2 designs x seconds={seconds}; make it smaller")
    rows = []
    for h in holds:
        for n in writers:
            for name, kind in DESIGNS.items():
                async with kind(Knobs(hold_ms=h)) as d:
                    s = write_summary(await write_burst(d, writers=n, seconds=seconds))
                ideal = ideal_contention(n, h)[name]
                rows.append({"design": name, "hold_ms": h, "writers": n,
                             "writes/s": s["writes/s"], "mean ms": s["mean ms"],
                             "p99 ms": s["p99 ms"], "failed": s["failed"],
                             "fairness": s["fairness"], "ideal writes/s": ideal["writes/s"],
                             "ideal mean ms": ideal["mean ms"]})
    return pd.DataFrame(rows)
