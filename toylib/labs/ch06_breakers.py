"""Lab 6, No circuit breakers: write a circuit breaker that passes the conformance rules.

The reader writes a class with this shape (see labs/ch06_breakers_lab.ipynb)::

    class Breaker:
        def __init__(self, *, failure_rate_threshold, minimum_calls, window_size,
                     wait_in_open, permitted_in_half_open, clock): ...
        state: str                     # "closed", "open" or "half_open"
        def try_acquire(self) -> bool  # may a call go through now?
        def on_result(self, ok: bool)  # the outcome of a call that was let through

``check`` is model-based, as Maelstrom's checkers are: it drives the reader's breaker and
toylib's resilience4j-style :class:`~toylib.resilience.breaker.CircuitBreaker` (the model)
through the same seeded traces of calls, failures, clock ticks and bursts of concurrent trial
calls, and compares after every step whether each call was admitted and which state each is
in. A trace on which they disagree is shrunk to the shortest one that still disagrees
(:func:`toylib.labs.grading.shrink`); the report shows that trace's history, the model's
state beside the reader's at every step up to the divergence, and one line that replays it
(:func:`replay`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from toylib.core import validate as v
from toylib.core.clock import FakeClock
from toylib.labs.grading import Case, CaseFailed, Report, grade, shrink, window
from toylib.resilience.breaker import CircuitBreaker

LAB = "Lab 6 (circuit breaker)"
STEP_KINDS = ("call", "advance", "burst")
MAX_STEPS = 10_000

# (threshold %, minimum calls, window size, wait in open s, half-open permits)
CONFIGS = ((50.0, 4, 4, 5.0, 1), (50.0, 2, 5, 3.0, 2), (40.0, 5, 10, 10.0, 3),
           (100.0, 3, 3, 2.0, 1), (25.0, 4, 8, 4.0, 2))
LENGTHS = (8, 20, 60, 150)


def _cases() -> list[Case]:
    return [Case(f"trace-{length}-cfg{i}", length, seed=length * 10 + i, params={"config": cfg})
            for length in LENGTHS for i, cfg in enumerate(CONFIGS)]


CASES = _cases()


def trace(seed: int, length: int, wait: float, permits: int) -> list[tuple]:
    """A seeded trace: calls that succeed or fail (failures come in bursts, as in outages),
    clock advances around the wait in open (exactly on it, just before, after), and bursts of
    concurrent trial calls (acquire several, then report their outcomes)."""
    v.number("seed", seed, low=0, high=2**32 - 1, integer=True)
    v.number("length", length, low=1, high=MAX_STEPS, integer=True)
    v.number("wait", wait, low=0, low_open=True, high=3600)
    v.number("permits", permits, low=1, high=100, integer=True)
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


def model(cfg, clock) -> CircuitBreaker:
    """toylib's resilience4j-style breaker configured like the reader's (the oracle)."""
    threshold, minimum, window_size, wait, permits = check_config(cfg)
    return CircuitBreaker("model", failure_rate_threshold=threshold, minimum_calls=minimum,
                          window_type="count", window_size=window_size, wait_in_open=wait,
                          permitted_in_half_open=permits, slow_call_rate_threshold=100.0,
                          slow_call_duration=1e9, clock=clock)


class _Boom(Exception):
    pass


def record(cb: CircuitBreaker, ok: bool) -> None:
    """Report one outcome to the model."""
    if ok:
        cb.on_success(0.0)
    else:
        cb.on_error(0.0, _Boom())


# -- arguments ----------------------------------------------------------------------------------
def check_config(cfg) -> tuple:
    """``(threshold %, minimum calls, window size, wait in open s, half-open permits)``."""
    if not isinstance(cfg, (tuple, list)) or len(cfg) != 5:
        raise TypeError(f"config must be (threshold %, minimum calls, window size, wait in open "
                        f"s, half-open permits); got {cfg!r}")
    threshold, minimum, window_size, wait, permits = cfg
    return (v.number("config threshold", threshold, low=0, low_open=True, high=100),
            v.number("config minimum calls", minimum, low=1, high=1000, integer=True),
            v.number("config window size", window_size, low=1, high=1000, integer=True),
            v.number("config wait in open", wait, low=0, low_open=True, high=3600),
            v.number("config half-open permits", permits, low=1, high=100, integer=True))


def check_steps(steps) -> list[tuple]:
    """Steps of a trace: ``("call", ok)``, ``("advance", seconds)``, ``("burst", (ok, ...))``."""
    if not isinstance(steps, (list, tuple)) or not 1 <= len(steps) <= MAX_STEPS:
        raise ValueError(f"steps must be a list of 1 to {MAX_STEPS:,} steps; got {steps!r:.80}")
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, (tuple, list)) or len(step) != 2 or step[0] not in STEP_KINDS:
            raise ValueError(f"steps[{i}] must be ('call', ok), ('advance', seconds) or "
                             f"('burst', (ok, ...)); got {step!r}")
        kind, arg = step
        if kind == "advance":
            v.number(f"steps[{i}] seconds", arg, low=0, high=3600)
        elif kind == "call" and not isinstance(arg, bool):
            raise TypeError(f"steps[{i}] outcome must be True or False; got {arg!r}")
        elif kind == "burst" and (not isinstance(arg, (tuple, list)) or not 1 <= len(arg) <= 100
                                  or not all(isinstance(ok, bool) for ok in arg)):
            raise TypeError(f"steps[{i}] burst must be 1 to 100 outcomes True/False; got {arg!r}")
        out.append((kind, tuple(arg) if kind == "burst" else arg))
    return out


def _check_class(Breaker) -> None:
    if not isinstance(Breaker, type):
        raise TypeError(f"Breaker must be a class; got {Breaker!r}")


# -- running one trace on both breakers ---------------------------------------------------------
@dataclass
class Divergence:
    """Where the reader's breaker first parted from the model on a trace."""
    config: tuple
    steps: list
    at: int                 # index of the step where they parted
    what: str               # "try_acquire()", "try_acquire() in a burst", "state", "an exception"
    yours: object
    model: object
    history: list[dict]     # one row per step up to ``at``: the step, admitted and state of each

    def message(self) -> str:
        threshold, minimum, window_size, wait, permits = self.config
        return (f"step {self.at + 1} of {len(self.steps)} {self.steps[self.at]}: {self.what} "
                f"was {self.yours!r}, the model says {self.model!r} (config: threshold "
                f"{threshold}%, minimum {minimum}, window {window_size}, wait {wait}s, "
                f"{permits} half-open permits)")

    def table(self) -> str:
        """Every step up to the divergence (a window around it for long traces): the step,
        what each breaker admitted, and each one's state after it."""
        return window(self.history, self.at, before=12, after=0)

    def __str__(self) -> str:
        return self.message() + "\n" + self.table()


def run_trace(Breaker, cfg, steps) -> Divergence | None:
    """Drive a fresh reader's breaker and a fresh model through ``steps`` on one fake clock;
    the first disagreement, or None when they agree on every step. Deterministic."""
    cfg = check_config(cfg)
    threshold, minimum, window_size, wait, permits = cfg
    clock = FakeClock(1000.0)
    oracle = model(cfg, clock)
    history: list[dict] = []

    def diverged(i, step, what, yours, want, admitted=("", "")):
        history.append(_row(i, step, admitted, oracle.state, yours if what == "state"
                            else _safe_state(theirs)))
        return Divergence(cfg, list(steps), i, what, yours, want, history)

    try:
        theirs = Breaker(failure_rate_threshold=threshold, minimum_calls=minimum,
                         window_size=window_size, wait_in_open=wait,
                         permitted_in_half_open=permits, clock=clock)
    except Exception as e:
        theirs = None
        history.append(_row(0, ("construct", None), ("", ""), oracle.state, "-"))
        return Divergence(cfg, list(steps), 0, "Breaker(...)", f"{type(e).__name__}: {e}",
                          "a breaker", history)
    for i, step in enumerate(steps):
        kind, arg = step
        mine_in, model_in = [], []
        try:
            if kind == "advance":
                clock.t += arg
            else:
                outcomes = (arg,) if kind == "call" else arg
                what = "try_acquire()" if kind == "call" else "try_acquire() in a burst"
                admitted = []
                for ok in outcomes:       # a burst: several calls in flight, then outcomes
                    want = oracle.try_acquire()
                    mine = bool(theirs.try_acquire())
                    model_in.append(want)
                    mine_in.append(mine)
                    if mine != want:
                        return diverged(i, step, what, mine, want, (model_in, mine_in))
                    if want:
                        admitted.append(ok)
                for ok in admitted:
                    record(oracle, ok)
                    theirs.on_result(ok)
            state = theirs.state
        except Exception as e:
            return diverged(i, step, "an exception", f"{type(e).__name__}: {e}", "no exception",
                            (model_in, mine_in))
        if state != oracle.state:
            return diverged(i, step, "state", state, oracle.state, (model_in, mine_in))
        history.append(_row(i, step, (model_in, mine_in), oracle.state, state))
    return None


def _safe_state(b) -> str:
    try:
        return str(b.state)
    except Exception as e:
        return f"({type(e).__name__})"


def _yn(xs) -> str:
    return "" if isinstance(xs, str) else " ".join("yes" if x else "no" for x in xs) or "-"


def _row(i, step, admitted, model_state, your_state) -> dict:
    kind, arg = step
    shown = {"call": lambda: "ok" if arg else "fail",
             "advance": lambda: f"+{arg:g} s",
             "burst": lambda: " ".join("ok" if ok else "fail" for ok in arg)}.get(kind, str)
    model_in, mine_in = admitted
    return {"step": i + 1, "kind": kind, "outcome": shown(),
            "admitted (model)": _yn(model_in), "admitted (yours)": _yn(mine_in),
            "state (model)": model_state, "state (yours)": your_state}


def shortest_failing(Breaker, cfg, steps) -> Divergence | None:
    """The divergence on the shortest sub-trace of ``steps`` that still diverges (None when
    the breakers agree on ``steps``). Shrinking first cuts the trace at the divergence, then
    removes chunks and single steps, then shortens bursts and clock advances."""
    first = run_trace(Breaker, cfg, steps)
    if first is None:
        return None
    prefix = list(steps[:first.at + 1])
    small = shrink(prefix, lambda s: run_trace(Breaker, cfg, s) is not None,
                   simpler=_simpler)
    return run_trace(Breaker, cfg, small)


def _simpler(step):
    kind, arg = step
    if kind == "burst":
        if len(arg) == 1:
            yield ("call", arg[0])
        for j in range(len(arg)):
            if len(arg) > 1:
                yield ("burst", arg[:j] + arg[j + 1:])


def replay(Breaker, config, steps) -> Divergence | None:
    """Replay one trace (e.g. the shortest failing one a report printed): the divergence, with
    its history, or None when your breaker agrees with the model on every step."""
    _check_class(Breaker)
    return run_trace(Breaker, check_config(config), check_steps(steps))


async def _run(Breaker, case: Case) -> None:
    cfg = case.params["config"]
    steps = trace(case.seed, case.size, cfg[3], cfg[4])
    first = run_trace(Breaker, cfg, steps)
    if first is None:
        return
    d = shortest_failing(Breaker, cfg, steps)
    shrunk = (f"shrunk from step {first.at + 1} of the case's {len(steps)}-step trace"
              if len(d.steps) < first.at + 1 else "not shrinkable further")
    raise CaseFailed(f"{d.message()}; {shrunk}",
                     detail="Every step of the shortest failing trace, the model beside "
                            "yours:\n" + d.table(),
                     replay=f"replay(Breaker, config={tuple(cfg)!r}, steps={d.steps!r})")


async def check(Breaker, *, only: str | None = None, stop_after: int | None = None) -> Report:
    """Grade a breaker class: ``await check(Breaker)``."""
    _check_class(Breaker)
    return await grade(LAB, CASES, _run, Breaker, only=only, stop_after=stop_after,
                       replay="await check(Breaker, only={name!r})")
