"""Chapter 1's experiments: probes that take a running design, experiments that take knobs
and build, run and release both designs, the outage figure, and the sweep for the static site."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd

from toylib.chapters.ch01_monolith.designs import DESIGNS, OwnedData, ShopDesign, design, ideal
from toylib.chapters.ch01_monolith.knobs import (CHAPTER, DEPENDENCIES, MAX_ORDERS, MIGRATIONS,
                                                 SERVICES, Knobs, Migration, as_knobs)
from toylib.claims import Estimate
from toylib.core import load
from toylib.chapters.design import running_design
from toylib.core import validate as v
from toylib.core.clock import now


# -- probes: each takes a running design first ----------------------------------------------------
def _running(system) -> ShopDesign:
    return running_design(ShopDesign, system, "system")


async def order_latencies(system: ShopDesign, n: int, *, first: int = 0,
                          label: str = "") -> load.LoadResult:
    """``n`` orders one after another. The result's ``latency_ms`` is the time to the answer;
    after, ``completion_ms`` adds the time until every consumer had processed the order."""
    _running(system)
    v.number("n", n, low=1, high=MAX_ORDERS, integer=True)
    v.number("first", first, low=0, high=10**9, integer=True)
    if not isinstance(label, str) or len(label) > 200:
        raise TypeError(f"label must be a string of at most 200 characters; got {label!r:.80}")

    async def one(i):
        t_sent = now()
        answer = await system.place_order(first + i)
        return {"order_id": answer["order_id"], "t_sent": t_sent}

    result = await load.sequential(one, n=n, label=label or system.name, progress=False)
    if isinstance(system, OwnedData):
        await system.drain()
        done = (await system.completion()).set_index("order_id")["done_at"]
        df = result.df
        df["completion_ms"] = (df["order_id"].map(done) - df["t_sent"]) * 1000
    return result


async def take_orders(system: ShopDesign, n: int, *, down: str | None = None,
                      concurrency: int = 10) -> dict:
    """``n`` orders from ``concurrency`` clients, with ``down`` (a dependency) down throughout.
    Before: the orders confirmed. After: the orders accepted, and (after the service is back)
    the accepted orders processed by every consumer, read from their databases."""
    _running(system)
    v.number("n", n, low=1, high=MAX_ORDERS, integer=True)
    v.number("concurrency", concurrency, low=1, high=100, integer=True)
    if down is not None:
        v.one_of("down", down, DEPENDENCIES)
    if down:
        await system.down(down)
    res = await load.closed_loop(
        lambda i: system.place_order(i, trace_id=f"order-{i}"), n=n,
        concurrency=concurrency, progress=False, label=system.name)
    ok = int(res.df["ok"].sum())
    out = {"design": system.name, "down": down or "", "p": system.k.p, "orders": n,
           "ok": ok, "answered ok": ok / n}
    if isinstance(system, OwnedData):
        if down:
            await system.up(down)
        await system.drain()
        rec = await system.reconcile()
        accepted = int(rec["orders accepted"].iloc[0])
        out["accepted orders processed everywhere"] = (
            float(rec["events processed"].min()) / accepted if accepted else float("nan"))
        out["not processed"] = int(rec["not processed"].max())
    return out


async def migration_probe(system: ShopDesign, migration: Migration) -> pd.DataFrame:
    """Probe every service, run the customer team's ``migration``, probe again.

    One row per service: the error after the migration (None if it still works), whether it
    broke, and how: its *own* query failed with SQLite's error, or a service it calls did.
    """
    _running(system)
    if not isinstance(migration, Migration):
        raise TypeError(f"migration must be a {CHAPTER}.Migration; got {migration!r}")
    healthy = await system.probe()
    await system.migrate(migration)
    broken = await system.probe()
    rows = []
    for service in SERVICES:
        err = broken[service]
        rows.append({"service": service, "worked before": healthy[service] is None,
                     "broken": healthy[service] is None and err is not None,
                     "how": "" if err is None else
                     ("a service it calls failed" if err.startswith("HTTP 502")
                      else "its own query"),
                     "error": err or ""})
    return pd.DataFrame(rows).set_index("service")


@dataclass
class OutageRun:
    """One design through one outage; every time in seconds since the load started."""
    design: str
    service: str
    load: load.LoadResult
    window: tuple                     # (down, up)
    lag: pd.DataFrame | None = None   # after: t, group, lag (events waiting, all partitions)
    drained_s: float | None = None    # after: from the service's return to its lag at 0
    reconcile: pd.DataFrame | None = None

    @property
    def answered_ok(self) -> float:
        return float(self.load.df["ok"].mean())

    @property
    def ok(self) -> int:
        return int(self.load.df["ok"].sum())

    @property
    def peak_lag(self) -> int | None:
        if self.lag is None:
            return None
        mine = self.lag[self.lag.group == self.service].lag
        return int(mine.max()) if len(mine) else 0


def _outage_args(service, start_s, duration_s, rate, seconds, drain_timeout) -> None:
    v.one_of("service", service, DEPENDENCIES)
    v.number("rate", rate, low=0, high=200, low_open=True)
    v.number("seconds", seconds, low=0.5, high=30)
    v.number("start_s", start_s, low=0, high=30)
    v.number("duration_s", duration_s, low=0, high=30, low_open=True)
    v.number("drain_timeout", drain_timeout, low=0, high=120, low_open=True)
    if start_s + duration_s > seconds:
        raise ValueError(f"duration_s must end the outage within the run: start_s + duration_s "
                         f"<= seconds ({seconds}); got {duration_s!r}")


async def outage_probe(system: ShopDesign, *, service: str = "payment", start_s: float = 1.0,
                       duration_s: float = 1.5, rate: float = 20.0, seconds: float = 4.0,
                       drain_timeout: float = 20.0) -> OutageRun:
    """Orders arrive at ``rate`` per second for ``seconds`` (open loop); ``service`` is down
    from ``start_s`` for ``duration_s``. After, the run then waits up to ``drain_timeout``
    seconds for the consumers to catch up: a consumer slower than the arrivals never does,
    and its ``drained_s`` is NaN (its events are still queued, not lost)."""
    _running(system)
    _outage_args(service, start_s, duration_s, rate, seconds, drain_timeout)
    owned = isinstance(system, OwnedData)
    monitor = system.bus.lag_monitor(0.02) if owned else nullcontext()
    async with monitor:
        t0 = now()
        outage_task = system.topology.spawn(system.outage(service, start_s, duration_s))
        res = await load.open_loop(lambda i: system.place_order(i), rate=rate,
                                   n=max(1, round(rate * seconds)), max_seconds=seconds + 5,
                                   progress=False, label=system.name)
        t_down, t_up = await outage_task
        try:
            await system.drain(drain_timeout)
        except TimeoutError:
            pass                         # reported below: drained_s is NaN
    run = OutageRun(system.name, service, res, (t_down - t0, t_up - t0))
    if owned:
        hist = system.bus.lag_history()
        hist = hist[hist.topic == "orders"]
        lag = hist.groupby(["t", "group"], as_index=False)["lag"].sum()
        lag["t"] = lag["t"] + system.bus.t0 - t0
        run.lag = lag
        mine = lag[(lag.group == service) & (lag.t >= run.window[1]) & (lag.lag == 0)]
        run.drained_s = float(mine.t.min() - run.window[1]) if len(mine) else float("nan")
        run.reconcile = await system.reconcile()
    return run


# -- the chapter's experiments: knobs in, both designs built, run and released --------------------
@dataclass
class Latency:
    """Order latency over ``trials`` trials of ``orders`` orders per design.

    In each trial both designs run side by side and take their orders alternately (one before,
    one after, ...), so a burst of load on the machine slows both alike; the factor is measured
    per trial (before's median over after's) and repeated: :meth:`factor` is the median of the
    trials' factors with their spread, which a busy machine barely moves (each of before's five
    hops pays the same scheduling delay as after's one)."""
    knobs: Knobs
    orders: int
    runs: dict                        # design -> [LoadResult per trial]

    def series(self) -> dict[str, list[pd.Series]]:
        """Per trial: before's time to answer, after's time to accept and to complete (ms)."""
        return {"before: answered": [r.latencies for r in self.runs["before"]],
                "after: accepted": [r.latencies for r in self.runs["after"]],
                "after: completed": [r.df["completion_ms"] for r in self.runs["after"]]}

    def ideal_ms(self) -> dict[str, float]:
        i = ideal(self.knobs)
        return {"before: answered": i["latency_before_ms"],
                "after: accepted": i["accept_after_ms"],
                "after: completed": i["completion_after_ms"]}

    def medians(self) -> dict[str, Estimate]:
        """Per series: the median of the per-trial medians, with the trials' spread."""
        return {name: Estimate.trials([float(s.median()) for s in trials], unit="ms")
                for name, trials in self.series().items()}

    def factor(self, of: str = "after: accepted") -> Estimate:
        """before's median latency over ``of``'s, per trial: the median factor and the
        lowest and highest of the trials."""
        v.one_of("of", of, ("after: accepted", "after: completed"))
        s = self.series()
        return Estimate.trials([float(b.median()) / float(a.median())
                                for b, a in zip(s["before: answered"], s[of])], unit="x")


def _joined(results: list) -> load.LoadResult:
    df = pd.concat([r.df for r in results], ignore_index=True)
    return load.LoadResult(df, results[0].mode, sum(r.elapsed_s for r in results),
                           results[0].label)


async def latency(knobs: Knobs | None = None, *, orders: int = 5, trials: int = 3) -> Latency:
    """``trials`` trials; in each, both designs run and take ``orders`` orders alternately
    (the after design's completion measured from its consumers' databases)."""
    k = as_knobs(knobs)
    v.number("orders", orders, low=1, high=1000, integer=True)
    v.number("trials", trials, low=1, high=20, integer=True)
    runs = {"before": [], "after": []}
    for t in range(trials):
        got = {"before": [], "after": []}
        async with design("before", k) as b, design("after", k) as a:
            for j in range(orders):
                for system in (b, a):
                    got[system.name].append(await order_latencies(system, 1,
                                                                  first=t * orders + j))
        for name, results in got.items():
            runs[name].append(_joined(results))
    return Latency(k, orders, runs)


@dataclass
class Availability:
    """``orders`` orders per design with ``down`` down (or each service failing with ``p``)."""
    knobs: Knobs
    down: str
    rows: dict                        # design -> what take_orders returned

    def failures(self, name: str) -> Estimate:
        """The share of orders that failed in design ``name``, with its Wilson interval."""
        r = self.rows[v.one_of("name", name, DESIGNS)]
        return Estimate.proportion(r["orders"] - r["ok"], r["orders"])

    def df(self) -> pd.DataFrame:
        i = ideal(self.knobs)
        ideal_ok = {"before": 0.0 if self.down else i["success_before"],
                    "after": i["accept_after"]}
        return pd.DataFrame([{**r, "ideal": ideal_ok[d]} for d, r in self.rows.items()])


async def availability(knobs: Knobs | None = None, *, n: int = 200, down: str | None = None,
                       concurrency: int = 10) -> Availability:
    """Both designs take ``n`` orders, with ``down`` down throughout (or, with ``down=None``,
    each service failing with the knobs' ``p``)."""
    k = as_knobs(knobs)
    v.number("n", n, low=1, high=MAX_ORDERS, integer=True)
    v.number("concurrency", concurrency, low=1, high=100, integer=True)
    if down is not None:
        v.one_of("down", down, DEPENDENCIES)
    rows = {}
    for name in ("before", "after"):
        async with design(name, k) as system:
            rows[name] = await take_orders(system, n, down=down, concurrency=concurrency)
    return Availability(k, down or "", rows)


async def degradation(knobs: Knobs | None = None, *, n: int = 40) -> list[Availability]:
    """:func:`availability` with each dependency down in turn (``n`` orders per design)."""
    k = as_knobs(knobs)
    v.number("n", n, low=1, high=MAX_ORDERS // len(DEPENDENCIES), integer=True)
    return [await availability(k, n=n, down=service) for service in DEPENDENCIES]


@dataclass
class BlastRadius:
    """One migration, run in each design: per design, one row per service."""
    migration: Migration
    frames: dict                      # design -> DataFrame (see migration_probe)

    def broken(self, name: str) -> list[str]:
        df = self.frames[v.one_of("name", name, DESIGNS)]
        return list(df.index[df.broken])


async def blast_radius(knobs: Knobs | None = None, migration: Migration = MIGRATIONS[2]
                       ) -> BlastRadius:
    """The customer team's ``migration``, in the before design and then in the after design."""
    k = as_knobs(knobs)
    if not isinstance(migration, Migration):
        raise TypeError(f"migration must be a {CHAPTER}.Migration; got {migration!r}")
    frames = {}
    for name in ("before", "after"):
        async with design(name, k) as system:
            frames[name] = await migration_probe(system, migration)
    return BlastRadius(migration, frames)


@dataclass
class Outage:
    """One outage, run in each design (before first)."""
    knobs: Knobs
    runs: dict                        # design -> OutageRun

    @property
    def before(self) -> OutageRun:
        return self.runs["before"]

    @property
    def after(self) -> OutageRun:
        return self.runs["after"]


async def outage(knobs: Knobs | None = None, *, service: str = "payment", start_s: float = 1.0,
                 duration_s: float = 1.5, rate: float = 20.0, seconds: float = 4.0,
                 drain_timeout: float = 20.0) -> Outage:
    """:func:`outage_probe` in the before design, then in the after design."""
    k = as_knobs(knobs)
    kw = dict(service=service, start_s=start_s, duration_s=duration_s, rate=rate,
              seconds=seconds, drain_timeout=drain_timeout)
    _outage_args(**kw)
    runs = {}
    for name in ("before", "after"):
        async with design(name, k) as system:
            runs[name] = await outage_probe(system, **kw)
    return Outage(k, runs)



def outage_figure(runs, bin_s: float = 0.25):
    """Top: orders answered OK per ``bin_s`` in each design. Bottom: the after design's lag
    per consumer group. The outage window is shaded in both. ``runs``: an :class:`Outage`
    (or a dict of :class:`OutageRun` by design)."""
    import matplotlib.pyplot as plt
    if isinstance(runs, Outage):
        runs = runs.runs
    if not isinstance(runs, dict) or not runs or not all(
            isinstance(r, OutageRun) for r in runs.values()):
        raise TypeError(f"runs must be an Outage (from outage(...)); got {runs!r}")
    v.number("bin_s", bin_s, low=0.01, high=10)
    from toylib.present import plots

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7.5, 5), layout="constrained")
    window = next(iter(runs.values())).window
    for ax in (top, bottom):
        ax.axvspan(*window, color=plots.BEFORE, alpha=0.12, label="service down")
    for name, run in runs.items():
        df = run.load.df
        t = df["due"] / 1000
        bins = (t // bin_s) * bin_s
        ok = df[df["ok"]].groupby(bins[df["ok"]]).size().reindex(
            sorted(bins.unique()), fill_value=0)
        x = list(ok.index) + [ok.index[-1] + bin_s]          # the last bin drawn to its end
        y = list(ok.values / bin_s) + [ok.values[-1] / bin_s]
        top.step(x, y, where="post", label=f"{name}: answered OK",
                 color=plots.BEFORE if name == "before" else plots.AFTER)
    top.set_ylabel("orders OK per second\n(by arrival time)")
    top.set_title(f"{next(iter(runs.values())).service} down: what the clients see")
    top.legend(fontsize=8, loc="lower left")
    after = runs.get("after")
    if after is not None and after.lag is not None:
        for j, (group, g) in enumerate(after.lag.groupby("group")):
            bottom.plot(g.t, g.lag, label=group, color=plots.PALETTE[(j + 2) % len(plots.PALETTE)]
                        if group != after.service else plots.BEFORE, lw=2 if
                        group == after.service else 1)
        bottom.set_ylabel("events waiting (lag)")
        bottom.set_title("after: queue lag per consumer group")
        bottom.legend(fontsize=8, ncol=3)
    bottom.set_xlabel("seconds since the first order")
    return fig


# -- the static site's explorer: the outage over a small grid of knobs ----------------------------
# Outages of 1 s or more: a busy machine can delay an order by a few hundred ms on its way to
# payment, which would make a shorter outage miss the orders due during it.
SWEEP_GRID = {"latency_ms": (10.0, 25.0), "duration_s": (1.0, 1.5, 2.0)}
SWEEP_RUN = {"service": "payment", "start_s": 0.3, "rate": 20.0, "tail_s": 0.7,
             "drain_timeout": 3.0}


async def sweep(latency_ms=SWEEP_GRID["latency_ms"], duration_s=SWEEP_GRID["duration_s"]
                ) -> pd.DataFrame:
    """:func:`outage` over a grid of each service's work (``latency_ms``) and the outage's
    length (``duration_s``): one row per grid point and design, with the knobs, the measured
    results and their ideals (about 35 s for the default 2 x 3 grid on a quiet machine). For the static site,
    where readers move these knobs without a kernel."""
    grid = {}
    for name, values in (("latency_ms", latency_ms), ("duration_s", duration_s)):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"{name} must be a list of numbers; got {values!r}")
        values = list(values)
        if not 1 <= len(values) <= 6:
            raise ValueError(f"{name} must hold 1 to 6 values; got {len(values)}")
        grid[name] = values
    for x in grid["latency_ms"]:
        v.number("latency_ms", x, low=0, high=100)
    for x in grid["duration_s"]:
        v.number("duration_s", x, low=0.1, high=3)
    s = SWEEP_RUN
    rows = []
    for lat in grid["latency_ms"]:
        for dur in grid["duration_s"]:
            seconds = s["start_s"] + dur + s["tail_s"]
            res = await outage(Knobs(latency_ms=lat), service=s["service"], start_s=s["start_s"],
                               duration_s=dur, rate=s["rate"], seconds=seconds,
                               drain_timeout=s["drain_timeout"])
            capacity = 1000 / lat if lat else float("inf")
            backlog = s["rate"] * dur
            for name, run in res.runs.items():
                owned = name == "after"
                rows.append({
                    "design": name, "latency_ms": lat, "duration_s": dur, "rate": s["rate"],
                    "service": s["service"], "orders": len(run.load.df), "answered_ok": run.ok,
                    "share_ok": run.answered_ok,
                    "ideal_share_ok": 1.0 if owned else 1 - dur / seconds,
                    "peak_lag": run.peak_lag if owned else None,
                    "ideal_peak_lag": backlog if owned else None,
                    "drained_s": run.drained_s if owned else None,
                    "ideal_drained_s": (backlog / (capacity - s["rate"])
                                        if owned and capacity > s["rate"] else None),
                    "not_processed": (int(run.reconcile["not processed"].max())
                                      if owned else None)})
    return pd.DataFrame(rows)
