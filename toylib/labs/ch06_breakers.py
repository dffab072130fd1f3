"""Lab 6, No circuit breakers: write a circuit breaker that passes the conformance rules.

The reader writes a class with this shape (see labs/ch06_breakers_lab.ipynb)::

    class Breaker:
        def __init__(self, *, failure_rate_threshold, minimum_calls, window_size,
                     wait_in_open, permitted_in_half_open, clock): ...
        state: str                     # "closed", "open" or "half_open"
        def try_acquire(self) -> bool  # may a call go through now?
        def on_result(self, ok: bool)  # the outcome of a call that was let through

``check`` is model-based, as Maelstrom's checkers are: it drives the reader's breaker and
toylib's resilience4j-style :class:`~toylib.resilience.breaker.CircuitBreaker` (the oracle) through the
same seeded traces of calls, failures and clock ticks, and compares after every step whether
the call was admitted and which state each is in. The smallest trace on which they disagree is
reported with its seed and the step where they parted.
"""
from __future__ import annotations

import random

from toylib.core.clock import FakeClock
from toylib.resilience.breaker import CircuitBreaker
from toylib.labs.grading import Case, Report, grade

LAB = "Lab 6 (circuit breaker)"




def _configs():
    # (threshold %, minimum calls, window size, wait in open s, half-open permits)
    return [(50.0, 4, 4, 5.0, 1), (50.0, 2, 5, 3.0, 2), (40.0, 5, 10, 10.0, 3),
            (100.0, 3, 3, 2.0, 1), (25.0, 4, 8, 4.0, 2)]


def _cases() -> list[Case]:
    cases = []
    for length in (8, 20, 60, 150):
        for i, cfg in enumerate(_configs()):
            cases.append(Case(f"trace-{length}-cfg{i}", length, seed=length * 10 + i,
                              params={"config": cfg}))
    return cases


CASES = _cases()


def trace(seed: int, length: int, wait: float, permits: int) -> list[tuple]:
    """A seeded trace: calls that succeed or fail (failures come in bursts, as in outages),
    clock advances around the wait in open (exactly on it, just before, after), and bursts of
    concurrent trial calls (acquire several, then report their outcomes)."""
    rng = random.Random(seed)
    steps, fail_p = [], 0.2
    while len(steps) < length:
        r = rng.random()
        if r < 0.08:
            fail_p = rng.choice([0.0, 0.2, 0.6, 1.0])      # the dependency's mood changes
        elif r < 0.22:
            steps.append(("advance", rng.choice([wait, wait - 0.001, wait + 0.5, 0.5, 2 * wait])))
        elif r < 0.32:
            n = rng.randint(1, permits + 1)
            steps.append(("burst", tuple(rng.random() >= fail_p for _ in range(n))))
        else:
            steps.append(("call", rng.random() >= fail_p))
    return steps


def _oracle(cfg, clock) -> CircuitBreaker:
    threshold, minimum, window, wait, permits = cfg
    return CircuitBreaker("oracle", failure_rate_threshold=threshold, minimum_calls=minimum,
                          window_type="count", window_size=window, wait_in_open=wait,
                          permitted_in_half_open=permits, slow_call_rate_threshold=100.0,
                          slow_call_duration=1e9, clock=clock)


class _Boom(Exception):
    pass


def _record(cb: CircuitBreaker, ok: bool) -> None:
    if ok:
        cb.on_success(0.0)
    else:
        cb.on_error(0.0, _Boom())


async def _run(Breaker, case: Case) -> None:
    cfg = case.params["config"]
    threshold, minimum, window, wait, permits = cfg
    clock = FakeClock(1000.0)
    oracle = _oracle(cfg, clock)
    theirs = Breaker(failure_rate_threshold=threshold, minimum_calls=minimum,
                     window_size=window, wait_in_open=wait, permitted_in_half_open=permits,
                     clock=clock)
    history = []

    def agree(i, step, what, mine, want):
        assert mine == want, (
            f"step {i} {step}: {what} was {mine!r}, the model says {want!r} "
            f"(config: threshold {threshold}%, minimum {minimum}, window {window}, wait "
            f"{wait}s, {permits} half-open permits; last steps: {history[-6:]})")

    for i, step in enumerate(trace(case.seed, case.size, wait, permits)):
        kind, arg = step
        if kind == "advance":
            clock.t += arg
        elif kind == "call":
            want = oracle.try_acquire()
            agree(i, step, "try_acquire()", bool(theirs.try_acquire()), want)
            if want:
                _record(oracle, arg)
                theirs.on_result(arg)
        else:   # a burst: several calls in flight at once, then their outcomes
            admitted = []
            for ok in arg:
                want = oracle.try_acquire()
                agree(i, step, "try_acquire() in a burst", bool(theirs.try_acquire()), want)
                if want:
                    admitted.append(ok)
            for ok in admitted:
                _record(oracle, ok)
                theirs.on_result(ok)
        history.append(step)
        agree(i, step, "state", theirs.state, oracle.state)


async def check(Breaker, *, only: str | None = None, stop_after: int | None = None) -> Report:
    """Grade a breaker class: ``await check(Breaker)``."""
    if not isinstance(Breaker, type):
        raise TypeError(f"Breaker must be a class; got {Breaker!r}")
    return await grade(LAB, CASES, _run, Breaker, only=only, stop_after=stop_after)
