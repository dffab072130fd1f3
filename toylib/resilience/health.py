"""Active health checking: probe each target on an interval and keep a healthy/unhealthy verdict.

One failed probe is noise and one success after an outage is luck, so a target changes state
only after ``unhealthy_threshold`` consecutive failures or ``healthy_threshold`` consecutive
successes (Kubernetes' probe defaults: 3 and 1; Envoy calls them unhealthy/healthy thresholds).

The checker is a scope, not a daemon: ``async with HealthChecker(...) as hc:`` starts its task
and leaving the block cancels and awaits it, on a normal exit, an exception or a cancellation,
so nothing keeps probing after the block (the rule of trio and aiohttp's AppRunner).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Awaitable, Callable

from toylib.core import validate as v

Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class HealthEvent:
    """A target changed state at ``time`` (clock seconds)."""
    time: float
    target: str
    healthy: bool


class _Target:
    def __init__(self, probe: Probe, healthy: bool):
        self.probe = probe
        self.healthy = healthy
        self.successes = 0   # consecutive
        self.failures = 0    # consecutive
        self.probes = 0


class HealthChecker:
    """Probes ``targets`` (name -> async callable) every ``interval`` seconds.

    A probe passes when it returns without raising and does not return ``False`` within
    ``timeout`` seconds. Targets start healthy (``start_healthy``), as a load balancer that
    has just learned of them would assume. ``clock`` and ``sleep`` can be faked; a fake
    ``sleep`` must still yield to the event loop (``await asyncio.sleep(0)``).
    """

    def __init__(self, targets: Mapping[str, Probe], *, interval: float = 1.0,
                 timeout: float | None = 1.0, healthy_threshold: int = 1,
                 unhealthy_threshold: int = 3, start_healthy: bool = True,
                 clock: Callable[[], float] = time.monotonic, sleep=asyncio.sleep):
        if not isinstance(targets, Mapping) or not targets:
            raise ValueError(f"targets must be a non-empty mapping name -> async probe; "
                             f"got {targets!r}")
        for target, probe in targets.items():
            v.name("targets", target)
            if not callable(probe):
                raise TypeError(f"targets[{target!r}] must be an async callable; got {probe!r}")
        self.interval = v.seconds("interval", interval)
        self.timeout = v.optional(v.seconds, "timeout", timeout)
        self.healthy_threshold = v.positive("healthy_threshold", healthy_threshold, integer=True,
                                            high=v.MAX_ATTEMPTS)
        self.unhealthy_threshold = v.positive("unhealthy_threshold", unhealthy_threshold,
                                              integer=True, high=v.MAX_ATTEMPTS)
        if not isinstance(start_healthy, bool):
            raise TypeError(f"start_healthy must be True or False; got {start_healthy!r}")
        if not callable(clock) or not callable(sleep):
            raise TypeError("clock and sleep must be callables")
        self.clock = clock
        self.sleep = sleep
        self._targets = {t: _Target(p, start_healthy) for t, p in targets.items()}
        self.events: list[HealthEvent] = []
        self.rounds = 0
        self._task: asyncio.Task | None = None

    # -- verdicts -------------------------------------------------------------------------------

    def is_healthy(self, target: str) -> bool:
        v.one_of("target", target, self._targets)
        return self._targets[target].healthy

    def healthy(self) -> list[str]:
        """Names of the targets currently considered healthy."""
        return [t for t, s in self._targets.items() if s.healthy]

    def status(self) -> dict[str, bool]:
        return {t: s.healthy for t, s in self._targets.items()}

    # -- probing --------------------------------------------------------------------------------

    async def check_once(self) -> dict[str, bool]:
        """Probe every target once, concurrently, and update the verdicts."""
        names = list(self._targets)
        results = await asyncio.gather(*(self._probe(self._targets[n]) for n in names))
        now = self.clock()
        for name, passed in zip(names, results):
            self._update(name, passed, now)
        self.rounds += 1
        return self.status()

    async def _probe(self, target: _Target) -> bool:
        target.probes += 1
        try:
            async with asyncio.timeout(self.timeout):
                return (await target.probe()) is not False
        except Exception:
            # A probe that raises (or times out) is the very signal we are looking for.
            return False

    def _update(self, name: str, passed: bool, now: float) -> None:
        t = self._targets[name]
        if passed:
            t.successes, t.failures = t.successes + 1, 0
            flip = not t.healthy and t.successes >= self.healthy_threshold
        else:
            t.successes, t.failures = 0, t.failures + 1
            flip = t.healthy and t.failures >= self.unhealthy_threshold
        if flip:
            t.healthy = not t.healthy
            self.events.append(HealthEvent(now, name, t.healthy))

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await self.sleep(self.interval)

    # -- scope ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> HealthChecker:
        if self._task is not None:
            raise RuntimeError("HealthChecker is already running; it cannot be entered twice")
        self._task = asyncio.create_task(self._run(), name="toylib-health-checker")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        task, self._task = self._task, None
        task.cancel()
        outer_cancelled = False
        # asyncio.wait, unlike awaiting the task, does not pass our own cancellation on to
        # it, so we keep waiting until the task is really finished before leaving the block.
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                outer_cancelled = True
        if outer_cancelled:
            raise asyncio.CancelledError
        if not task.cancelled() and task.exception() is not None and exc is None:
            raise task.exception()
        return False
