"""Load generators, always bounded in count and in time.

Three shapes, as in the load-testing literature:

* ``sequential``: one request after another (the cleanest latency of a single user);
* ``closed_loop``: ``concurrency`` users, each sending its next request when the last returns.
  Throughput adapts to the system, so a slow system is asked less: latency is understated;
* ``open_loop``: requests *arrive* at a fixed rate whether or not earlier ones have returned,
  and latency counts from the moment a request was due, not from when it was sent. This avoids
  coordinated omission (Gil Tene), which hides exactly the tail a slow dependency creates.

``fn(i)`` is an async function doing request ``i``; it may return a dict of extra columns.
A request still unfinished when ``max_seconds`` runs out is cancelled and reported as
``error="unfinished"``: hung requests are counted, never waited for forever.

The bounds are a safety promise, kept even when ``fn`` never awaits (and so never lets a timer
fire): each generator reads the clock before starting a request. ``n`` is at most
``MAX_REQUESTS``, ``max_seconds`` at most a day, ``rate`` at most ``MAX_RATE`` per second. A
function that does not return an awaitable is a mistake in the caller's code, not a failed
request: it raises TypeError at once instead of filling the result with error rows.
"""
from __future__ import annotations

import asyncio
import inspect
import random
from dataclasses import dataclass

import numpy as np
import pandas as pd

from toylib.core import validate as v
from toylib.core.clock import now

PROGRESS_AFTER_S = 2.0   # runs longer than this show a progress bar
MAX_REQUESTS = v.MAX_REQUESTS
MAX_RATE = v.MAX_RATE
MAX_CONCURRENCY = v.MAX_WORKERS


class NotAsync(TypeError):
    """``fn(i)`` returned something that cannot be awaited: the run stops at once."""


@dataclass
class LoadResult:
    """One run: a row per request (i, due, start, end, latency_ms, ok, error, extras)."""
    df: pd.DataFrame
    mode: str
    elapsed_s: float
    label: str = ""

    @property
    def latencies(self) -> pd.Series:
        """Latency in ms of the requests that succeeded."""
        return self.df.loc[self.df["ok"], "latency_ms"]

    def summary(self, percentiles=(50, 90, 99)) -> dict:
        percentiles = _percentiles(percentiles)
        ok = self.latencies
        out = {"label": self.label, "mode": self.mode, "requests": len(self.df),
               "ok": int(self.df["ok"].sum()),
               "success_rate": float(self.df["ok"].mean()) if len(self.df) else float("nan"),
               "unfinished": int((self.df["error"] == "unfinished").sum()),
               "throughput_rps": (int(self.df["ok"].sum()) / self.elapsed_s
                                  if self.elapsed_s > 0 else float("nan")),
               "mean_ms": float(ok.mean()) if len(ok) else float("nan")}
        for p in percentiles:
            out[f"p{p}_ms"] = float(np.percentile(ok, p)) if len(ok) else float("nan")
        out["max_ms"] = float(self.df["latency_ms"].max()) if len(self.df) else float("nan")
        return out


def _percentiles(ps) -> tuple:
    if not isinstance(ps, (list, tuple)) or not ps:
        raise TypeError(f"percentiles must be a non-empty list of numbers in [0, 100]; got {ps!r}")
    return tuple(v.number("percentiles", p, low=0, high=100) for p in ps)


def summarize(*results: LoadResult, percentiles=(50, 90, 99)) -> pd.DataFrame:
    """Summaries of several runs, one row each, indexed by label."""
    if not results or not all(isinstance(r, LoadResult) for r in results):
        raise TypeError(f"results must be one or more LoadResult; got {results!r}")
    return pd.DataFrame([r.summary(percentiles) for r in results]).set_index("label")


class Progress:
    """A progress bar that appears only once a run has lasted PROGRESS_AFTER_S."""

    def __init__(self, total: int, label: str, enabled: bool | None):
        self.total, self.label, self.enabled = total, label, enabled
        self.t0, self.done, self.bar = now(), 0, None

    def step(self) -> None:
        self.done += 1
        if self.enabled is False:
            return
        if self.bar is None and (self.enabled or now() - self.t0 > PROGRESS_AFTER_S):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, desc=self.label or "requests", leave=False)
            self.bar.update(self.done)
        elif self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def _one(fn, i, due, rows, progress):
    start = now()
    pending = fn(i)
    if not inspect.isawaitable(pending):
        raise NotAsync(f"fn must be an async function of the request index (async def, or a "
                       f"lambda returning a coroutine); fn({i}) returned {pending!r}")
    row = {"i": i, "due": due, "start": start, "end": float("nan"), "ok": False, "error": ""}
    rows.append(row)
    try:
        extra = await pending
        row["ok"] = True
        if isinstance(extra, dict):
            row.update(extra)
    except asyncio.CancelledError:
        row["error"] = "unfinished"
        raise
    except Exception as e:  # a failed request is data, not a crash of the run
        row["error"] = getattr(e, "kind", None) or type(e).__name__
    finally:
        row["end"] = now()
        progress.step()


def _check(fn, n, max_seconds, label="", progress=None):
    if not callable(fn):
        raise TypeError(f"fn must be an async function of the request index; got {fn!r}")
    v.positive("n", n, integer=True, high=MAX_REQUESTS)
    v.seconds("max_seconds", max_seconds)
    if not isinstance(label, str):
        raise TypeError(f"label must be a string; got {label!r}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None; got {progress!r}")


def _raise_misuse(tasks) -> None:
    """Re-raise a NotAsync (the caller's mistake) that ended one of the run's tasks."""
    for t in tasks:
        if t.done() and not t.cancelled() and isinstance(t.exception(), NotAsync):
            raise t.exception()


def _result(rows, t0, mode, label) -> LoadResult:
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["i", "due", "start", "end", "ok", "error"])
    df = df.sort_values("i").reset_index(drop=True)
    for col in ("due", "start", "end"):
        df[col] = (df[col].astype(float) - t0) * 1000.0
    # From when the request was due (open loop) or sent (otherwise): see the module docstring.
    df["latency_ms"] = df["end"] - df["due"]
    df["ok"] = df["ok"].astype(bool)
    return LoadResult(df, mode, now() - t0, label)


async def sequential(fn, *, n: int, max_seconds: float = 60.0, label: str = "",
                     progress: bool | None = None) -> LoadResult:
    """Requests one after another, at most ``n`` of them and for at most ``max_seconds``."""
    _check(fn, n, max_seconds, label, progress)
    rows, t0 = [], now()
    bar = Progress(n, label, progress)
    try:
        for i in range(n):
            left = t0 + max_seconds - now()
            if left <= 0:
                break
            due = now()
            try:
                await asyncio.wait_for(_one(fn, i, due, rows, bar), left)
            except asyncio.TimeoutError:
                break
    finally:
        bar.close()
    return _result(rows, t0, "sequential", label)


async def closed_loop(fn, *, n: int, concurrency: int, max_seconds: float = 60.0,
                      label: str = "", progress: bool | None = None) -> LoadResult:
    """``concurrency`` workers share ``n`` requests; each sends the next when its last returns."""
    _check(fn, n, max_seconds, label, progress)
    v.positive("concurrency", concurrency, integer=True, high=MAX_CONCURRENCY)
    rows, t0 = [], now()
    end = t0 + max_seconds
    counter = iter(range(n))
    bar = Progress(n, label, progress)

    async def worker():
        for i in counter:
            if now() >= end:     # the timeout below cannot fire while fn never awaits
                return
            await _one(fn, i, now(), rows, bar)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, n))]
    try:
        await asyncio.wait(workers, timeout=max_seconds)
        _raise_misuse(workers)
    finally:
        await _cancel(workers)
        bar.close()
    return _result(rows, t0, "closed", label)


async def open_loop(fn, *, rate: float, n: int, max_seconds: float = 60.0,
                    arrivals: str = "uniform", seed: int = 0, label: str = "",
                    progress: bool | None = None) -> LoadResult:
    """Requests arrive at ``rate`` per second (evenly spaced or Poisson), ``n`` at most.

    Sending stops at ``max_seconds``; requests still running then are cancelled and counted
    as unfinished.
    """
    _check(fn, n, max_seconds, label, progress)
    v.positive("rate", rate, high=MAX_RATE)
    v.one_of("arrivals", arrivals, ("uniform", "poisson"))
    rng = random.Random(v.seed("seed", seed))
    rows, t0 = [], now()
    bar = Progress(n, label, progress)
    tasks: list[asyncio.Task] = []
    try:
        due = t0
        for i in range(n):
            due += (rng.expovariate(rate) if arrivals == "poisson" else 1.0 / rate) if i else 0.0
            if due - t0 >= max_seconds or now() - t0 >= max_seconds:
                break
            wait = due - now()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(_one(fn, i, due, rows, bar)))
            if i == 0:
                await asyncio.sleep(0)      # run the first request now: a misuse shows at once
                _raise_misuse(tasks)
        left = t0 + max_seconds - now()
        if tasks and left > 0:
            await asyncio.wait(tasks, timeout=left)
        _raise_misuse(tasks)
    finally:
        await _cancel(tasks)
        bar.close()
    return _result(rows, t0, "open", label)


async def _cancel(tasks) -> None:
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for t in tasks:   # retrieve exceptions so none is reported as "never retrieved"
        if t.done() and not t.cancelled():
            t.exception()
