"""Lab 6 (ch06_breakers): its checker passes the reference solution, rejects known-wrong ones, and its
cases inject the faults their names promise. Each wrong solution is the reference with one
realistic mistake.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest

from toylib.core.clock import FakeClock

from toylib.chapters import ch02_chatty as chatty
from toylib.labs import ch02_chatty as chatty_lab

ROOT = Path(__file__).resolve().parent.parent


from conftest import reference

# -- lab 6 --------------------------------------------------------------------------------------
from collections import Counter  # noqa: E402

from toylib.labs import ch06_breakers as breaker_lab  # noqa: E402


@pytest.fixture(scope="module")
def ref_breaker():
    return reference("ch06_breakers_lab.ipynb", "RefBreaker")["RefBreaker"]


async def test_lab6_reference_passes(ref_breaker):
    report = await breaker_lab.check(ref_breaker)
    assert report.ok, report.summary()


def test_lab6_traces_reach_every_state_and_rule():
    """The traces are only worth something if they drive the model through every rule."""
    seen, transitions = Counter(), Counter()
    for case in breaker_lab.CASES:
        clock = breaker_lab.FakeClock()
        oracle = breaker_lab._oracle(case.params["config"], clock)
        wait, permits = case.params["config"][3], case.params["config"][4]
        for kind, arg in breaker_lab.trace(case.seed, case.size, wait, permits):
            if kind == "advance":
                clock.t += arg
                continue
            for ok in (arg,) if kind == "call" else arg:
                if oracle.try_acquire():
                    breaker_lab._record(oracle, ok)
                seen[oracle.state] += 1
        transitions.update((e.from_state, e.state) for e in oracle.events
                           if e.kind == "state_transition")
    assert set(seen) == {"closed", "open", "half_open"}
    for t in [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
              ("half_open", "closed")]:
        assert transitions[t] >= 3, (t, transitions)


def wrong_breakers(Ref):
    class LeaksWhileOpen(Ref):
        """Lets one call in ten through while open."""
        n = 0

        def try_acquire(self):
            ok = super().try_acquire()
            self.n += 1
            return ok or (self.state == "open" and self.n % 10 == 0)

    class StrictThreshold(Ref):
        """Opens only when the rate is strictly above the threshold."""
        def _rate(self, outcomes):
            rate = super()._rate(outcomes)
            return rate - 1e-9 if rate == self.threshold else rate

    class ReopensOnFirstFailure(Ref):
        """pybreaker's rule in a resilience4j breaker: one half-open failure reopens."""
        def on_result(self, ok):
            if self.state == "half_open" and not ok:
                self._open()
                return
            super().on_result(ok)

    class EagerHalfOpen(Ref):
        """Leaves open as soon as the wait is over, even without a call (and on the dot)."""
        @property
        def state(self):
            if self._state == "open" and self.clock() >= self.opened_at + self.wait:
                self._half_open()
            return self._state

        @state.setter
        def state(self, value):
            self._state = value

    class NoMinimum(Ref):
        """Trips on the first failure, ignoring the minimum number of calls."""
        def __init__(self, **kw):
            super().__init__(**kw)
            self.minimum = 1

    class UnlimitedTrials(Ref):
        """Admits every call in half-open."""
        def try_acquire(self):
            ok = super().try_acquire()
            return ok or self.state == "half_open"

    class KeepsWindowOnClose(Ref):
        """Closes without forgetting the failures that opened it."""
        def _close(self):
            old = getattr(self, "window", None)
            super()._close()
            if old:
                self.window.extend(old)

    return {c.__name__: c for c in (LeaksWhileOpen, StrictThreshold, ReopensOnFirstFailure,
                                   EagerHalfOpen, NoMinimum, UnlimitedTrials, KeepsWindowOnClose)}


@pytest.mark.parametrize("mistake", ["LeaksWhileOpen", "StrictThreshold",
                                     "ReopensOnFirstFailure", "EagerHalfOpen", "NoMinimum",
                                     "UnlimitedTrials", "KeepsWindowOnClose"])
async def test_lab6_rejects_wrong_breaker(ref_breaker, mistake):
    report = await breaker_lab.check(wrong_breakers(ref_breaker)[mistake], stop_after=1)
    assert not report.ok, f"the checker accepted a wrong breaker: {mistake}"
    assert "the model says" in report.first_failure.message


async def test_lab6_bad_argument():
    with pytest.raises(TypeError, match="Breaker"):
        await breaker_lab.check(lambda **kw: None)
