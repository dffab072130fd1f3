"""How busy is this machine? Event-loop lag, measured in the same run as the experiment.

Timings in this course are only as good as the event loop's punctuality: a reader's laptop
running other programs, or a Binder pod on a throttled CPU, wakes a sleeping task late. Every
chapter measures that lateness first (:func:`loop_lag`), derives what it must (timeouts, floors,
margins) from a calibration in the same run, and warns the reader when the machine is too busy
to measure rather than printing a wrong verdict (:meth:`LoopLag.warning`).

:class:`Stalls` is the opposite tool, for the course's own stress check: it blocks the event
loop for random moments, as a burst of load on the machine does, so that the rare failures a
busy machine causes become common enough to fix. ``TOYLIB_STALLS="p=0.05,ms=40,seed=1"`` in
the environment makes :func:`stalls_from_env` start one (``make stress`` sets it).
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from toylib.core import validate as v
from toylib.core.clock import now

# Lateness of a 5 ms sleep above which timings of 20 ms hops are no longer trustworthy.
BUSY_P99_MS = 15.0
# An experiment run the machine was too busy to time is run again after a pause (a burst of
# load on a laptop often ends within a second), up to this many times per experiment.
BUSY_RERUNS = 3
BUSY_PAUSE_S = 1.0


@dataclass(frozen=True)
class LoopLag:
    """How late the event loop woke a sleeping task, over ``n`` short sleeps (milliseconds)."""
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def busy(self) -> bool:
        return self.p99_ms > BUSY_P99_MS

    def warning(self) -> str | None:
        """A sentence for the page when the machine is too busy to time 20 ms hops, else None."""
        if not self.busy:
            return None
        return (f"This machine is busy: the event loop woke tasks up to {self.p99_ms:.0f} ms "
                f"late (99th percentile of {self.n} sleeps; {BUSY_P99_MS:.0f} ms is the limit "
                f"for timing 20 ms hops). Timing results below may be off; verdicts that the "
                f"noise could change say 'not shown by this run'. Rerun when the machine is quieter.")

    def __str__(self) -> str:
        return (f"event-loop lag p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, "
                f"max {self.max_ms:.2f} ms over {self.n} sleeps")


async def loop_lag(seconds: float = 0.25, interval: float = 0.005) -> LoopLag:
    """Sleep ``interval`` repeatedly for ``seconds`` and measure how late each wake-up is."""
    v.number("seconds", seconds, low=0.01, high=30)
    v.number("interval", interval, low=0.0005, high=1)
    if interval > seconds:
        raise ValueError(f"interval must be at most seconds ({seconds}); got {interval}")
    late: list[float] = []
    end = now() + seconds
    while now() < end and len(late) < 100_000:
        t0 = now()
        await asyncio.sleep(interval)
        late.append(max(0.0, (now() - t0 - interval) * 1000))
    late.sort()

    def q(p: float) -> float:
        return late[min(len(late) - 1, int(p * len(late)))]
    return LoopLag(len(late), q(0.5), q(0.99), late[-1])


class LagBeside:
    """What :func:`lag_during` measured: ``.lag`` once its block is done."""
    lag: LoopLag | None = None

    @property
    def p99_ms(self) -> float:
        return self.lag.p99_ms if self.lag is not None else float("nan")


@asynccontextmanager
async def lag_during(seconds: float):
    """The event loop's lateness measured beside the block (a calibration in the same run),
    for about ``seconds`` (at most 30): ``.lag`` and ``.p99_ms`` once the block is done. A busy
    machine shows here, in the very trial it spoils, so a verdict can say "not shown by this
    run" rather than be wrong."""
    v.number("seconds", seconds, low=0.01, high=3600)
    box = LagBeside()
    task = asyncio.ensure_future(loop_lag(max(0.05, min(seconds, 30))))
    try:
        yield box
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    box.lag = await task


class Stalls:
    """Block the running event loop now and then, as a burst of load does (stress checks only).

    Every ``every_s`` seconds, with probability ``p``, the loop is blocked for up to ``ms``
    milliseconds (uniformly drawn). Use it as ``async with Stalls(...):``; it stops at the end.
    """

    def __init__(self, *, p: float = 0.05, ms: float = 40.0, every_s: float = 0.01,
                 seed: int = 0):
        self.p = v.number("p", p, low=0, high=1)
        self.ms = v.number("ms", ms, low=0, high=1000)
        self.every_s = v.number("every_s", every_s, low=0.001, high=10)
        self.seed = v.seed("seed", seed)
        self.stalls = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        rng = random.Random(self.seed)
        while True:
            await asyncio.sleep(self.every_s)
            if rng.random() < self.p:
                self.stalls += 1
                time.sleep(rng.uniform(0, self.ms) / 1000)   # blocks the loop on purpose

    def start(self) -> "Stalls":
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> "Stalls":
        return self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def stalls_from_env(env: str = "TOYLIB_STALLS") -> Stalls | None:
    """A started :class:`Stalls` configured by ``$TOYLIB_STALLS`` ("p=0.05,ms=40,seed=1"), or
    None when the variable is unset. Call it from a running event loop."""
    spec = os.environ.get(env, "").strip()
    if not spec:
        return None
    kw = {}
    for part in spec.split(","):
        key, _, val = part.partition("=")
        key = key.strip()
        if key not in ("p", "ms", "every_s", "seed"):
            raise ValueError(f"{env}: unknown setting {key!r}; allowed: p, ms, every_s, seed")
        kw[key] = int(val) if key == "seed" else float(val)
    return Stalls(**kw).start()
