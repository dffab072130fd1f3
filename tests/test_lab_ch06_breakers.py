"""Lab 6 (ch06_breakers): its checker passes the reference and an independent solution every
time, rejects known-wrong breakers (each the reference with one realistic mistake), reports
the shortest failing trace with the model's state beside the reader's and a one-line replay,
says "not done" whenever a case fails, and refuses hostile arguments. The grading framework's
own helpers (shrink, window, the report's wording) are tested here too: lab 6 owns them.
"""
from __future__ import annotations

import ast
import re
from collections import Counter, deque

import pytest

from toylib.core.clock import FakeClock
from toylib.labs import ch06_breakers as lab
from toylib.labs import grading
from toylib.labs.solutions import ch06_breakers as solutions

CORRECT = {"reference": solutions.RefBreaker, "alternative": solutions.AlternativeBreaker}
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("name", sorted(CORRECT))
async def test_correct_solutions_pass_every_time(name):
    for _ in range(10):       # model-based on a fake clock: nothing a busy machine can change
        report = await lab.check(CORRECT[name])
        assert report.ok, report.summary()
        assert report.summary() == f"{lab.LAB}: done: cases passed: 20 of 20."


def test_traces_reach_every_state_and_rule():
    """The traces are only worth something if they drive the model through every rule."""
    seen, transitions = Counter(), Counter()
    for case in lab.CASES:
        clock = FakeClock()
        oracle = lab.model(case.params["config"], clock)
        wait, permits = case.params["config"][3], case.params["config"][4]
        for kind, arg in lab.trace(case.seed, case.size, wait, permits):
            if kind == "advance":
                clock.t += arg
                continue
            for ok in (arg,) if kind == "call" else arg:
                if oracle.try_acquire():
                    lab.record(oracle, ok)
                seen[oracle.state] += 1
        transitions.update((e.from_state, e.state) for e in oracle.events
                           if e.kind == "state_transition")
    assert set(seen) == {"closed", "open", "half_open"}
    for t in [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
              ("half_open", "closed")]:
        assert transitions[t] >= 3, (t, transitions)


# -- known-wrong breakers -----------------------------------------------------------------------
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

    # -- new in the hardened grader (issue 12): one per class of report it must get right ----
    class ExtraTrialPermit(Ref):
        """Shrinking: N + 1 trial calls in half-open (fails deep into a long trace)."""
        def _half_open(self):
            super()._half_open()
            self.permits += 1

    class SeededWindow(Ref):
        """Shrinking: a window that starts each closed period with successes already in."""
        def _close(self):
            super()._close()
            self.window.extend([True] * (self.window_size // 2))

    class ClosesOnFirstSuccess(Ref):
        """History: closes on the first good trial; agrees for many steps first."""
        def on_result(self, ok):
            if self.state == "half_open" and ok:
                self._close()
                return
            super().on_result(ok)

    class OffByOneWindow(Ref):
        """"Not done": a window one call too long passes about half the cases."""
        def _close(self):
            self.state, self.window = "closed", deque(maxlen=self.window_size + 1)

    class CrashesWhenOpen(Ref):
        """Crashes (instead of refusing) when asked while open."""
        def try_acquire(self):
            if self.state == "open" and self.clock() <= self.opened_at + self.wait:
                raise RuntimeError("open")
            return super().try_acquire()

    return {c.__name__: c for c in (
        LeaksWhileOpen, StrictThreshold, ReopensOnFirstFailure, EagerHalfOpen, NoMinimum,
        UnlimitedTrials, KeepsWindowOnClose, ExtraTrialPermit, SeededWindow,
        ClosesOnFirstSuccess, OffByOneWindow, CrashesWhenOpen)}


WRONG = sorted(wrong_breakers(solutions.RefBreaker))


def shrunk_steps(report) -> list:
    """The steps of the one-line replay, read back with ast (the line must be valid Python)."""
    line = report.first_failure.replay
    call = ast.parse(line.strip()).body[0].value
    assert call.func.id == "replay"
    return ast.literal_eval(next(k.value for k in call.keywords if k.arg == "steps"))


@pytest.mark.parametrize("mistake", WRONG)
async def test_rejects_wrong_breaker_and_says_not_done(mistake):
    Wrong = wrong_breakers(solutions.RefBreaker)[mistake]
    report = await lab.check(Wrong)
    assert not report.ok, f"the checker accepted a wrong breaker: {mistake}"
    summary = report.summary()
    assert summary.startswith(f"{lab.LAB}: not done: cases passed: {report.passed} of 20")
    assert "%" not in summary.split("\n")[0]           # no percentage that reads like a pass
    f = report.first_failure
    assert "the model says" in f.message or "an exception" in f.message
    # the history: the model's state beside the reader's, the divergence marked
    assert "state (model)" in f.detail and "state (yours)" in f.detail
    assert "<-- here" in f.detail
    # the one-line replay reproduces exactly this failure
    steps = shrunk_steps(report)
    d = lab.replay(Wrong, f.case.params["config"], steps)
    assert d is not None and d.at == len(steps) - 1 and d.message() in f.message
    assert lab.replay(solutions.RefBreaker, f.case.params["config"], steps) is None
    assert f"only={f.case.name!r}" in summary and f"seed {f.case.seed}" in summary


@pytest.mark.parametrize("mistake, longest", [("ExtraTrialPermit", 5), ("SeededWindow", 6)])
async def test_a_failing_trace_is_shrunk_to_a_few_steps(mistake, longest):
    Wrong = wrong_breakers(solutions.RefBreaker)[mistake]
    report = await lab.check(Wrong, stop_after=1)
    f = report.first_failure
    first = lab.run_trace(Wrong, f.case.params["config"],
                          lab.trace(f.case.seed, f.case.size, *f.case.params["config"][3:]))
    steps = shrunk_steps(report)
    assert len(steps) <= longest < first.at + 1, (len(steps), first.at + 1)
    assert f"shrunk from step {first.at + 1}" in f.message
    # 1-minimal: removing any one step makes the disagreement go away
    for i in range(len(steps)):
        assert lab.run_trace(Wrong, f.case.params["config"], steps[:i] + steps[i + 1:]) is None


async def test_the_history_shows_every_step_up_to_a_late_divergence():
    Wrong = wrong_breakers(solutions.RefBreaker)["ClosesOnFirstSuccess"]
    report = await lab.check(Wrong, stop_after=1)
    f = report.first_failure
    steps = shrunk_steps(report)
    rows = [ln for ln in f.detail.splitlines() if re.match(r"\s+\d+\s", ln)]
    assert len(rows) == len(steps) >= 6          # nothing off screen, not only the last 6
    last = rows[-1].split()
    assert "half_open" in last and "closed" in last and last[-1] == "here"


async def test_a_crash_is_a_failure_with_its_cause():
    report = await lab.check(wrong_breakers(solutions.RefBreaker)["CrashesWhenOpen"])
    assert not report.ok
    assert "RuntimeError: open" in report.first_failure.message


async def test_the_starter_fails_every_case_and_says_so():
    class Starter:
        def __init__(self, **kw):
            self.state = "closed"

        def try_acquire(self):
            raise NotImplementedError("Breaker.try_acquire")

        def on_result(self, ok):
            raise NotImplementedError("Breaker.on_result")
    report = await lab.check(Starter)
    assert report.passed == 0 and report.summary().startswith(
        f"{lab.LAB}: not done: cases passed: 0 of 20")
    assert "NotImplementedError" in report.first_failure.message


# -- hostile arguments ---------------------------------------------------------------------------
async def test_bad_arguments_name_the_parameter():
    with pytest.raises(TypeError, match="Breaker"):
        await lab.check(lambda **kw: None)
    with pytest.raises(ValueError, match="only"):
        await lab.check(solutions.RefBreaker, only="trace-9-cfg9")
    for bad in (0, -1, 2.5, NAN, 10**9):
        with pytest.raises((ValueError, TypeError), match="stop_after"):
            await lab.check(solutions.RefBreaker, stop_after=bad)


@pytest.mark.parametrize("config, param", [
    ((50.0, 4, 4, 5.0), "config"), ("fast", "config"), ((NAN, 4, 4, 5.0, 1), "threshold"),
    ((150, 4, 4, 5.0, 1), "threshold"), ((50, 0, 4, 5.0, 1), "minimum"),
    ((50, 4, 10**9, 5.0, 1), "window"), ((50, 4, 4, INF, 1), "wait"),
    ((50, 4, 4, -1, 1), "wait"), ((50, 4, 4, 5.0, 0), "permits"), ((50, 4, 4, 5.0, 2.5), "permits"),
])
def test_replay_refuses_a_bad_config(config, param):
    with pytest.raises((ValueError, TypeError), match=param):
        lab.replay(solutions.RefBreaker, config, [("call", True)])


@pytest.mark.parametrize("steps, param", [
    ([], "steps"), ("call", "steps"), ([("call", True)] * 10_001, "steps"),
    ([("jump", True)], r"steps\[0\]"), ([("call", 1)], r"steps\[0\]"),
    ([("advance", NAN)], r"steps\[0\]"), ([("advance", -1)], r"steps\[0\]"),
    ([("advance", INF)], r"steps\[0\]"), ([("burst", ())], r"steps\[0\]"),
    ([("call", True), ("burst", (True, "no"))], r"steps\[1\]"),
])
def test_replay_refuses_bad_steps(steps, param):
    with pytest.raises((ValueError, TypeError), match=param):
        lab.replay(solutions.RefBreaker, lab.CONFIGS[0], steps)


@pytest.mark.parametrize("kwargs, param", [
    ({"seed": -1}, "seed"), ({"length": 0}, "length"), ({"length": 10**7}, "length"),
    ({"wait": NAN}, "wait"), ({"permits": 0}, "permits"),
])
def test_trace_refuses_bad_arguments(kwargs, param):
    args = {"seed": 1, "length": 10, "wait": 1.0, "permits": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=param):
        lab.trace(**args)


# -- the grading framework (every lab's reports) ----------------------------------------------
def test_shrink_finds_a_one_minimal_failing_subsequence():
    # fails when the list holds a 3 after a 1 (anywhere): the smallest is [1, 3]
    def fails(xs):
        return any(x == 3 for x in xs[xs.index(1) + 1:]) if 1 in xs else False
    steps = [5, 1, 7, 7, 2, 9, 3, 4, 3]
    assert grading.shrink(steps, fails) == [1, 3]
    assert grading.shrink([4, 8], lambda xs: sum(xs) >= 6,
                          simpler=lambda x: [x - 1] if x > 0 else []) == [6]
    with pytest.raises(ValueError, match="fail"):
        grading.shrink([1, 2], lambda xs: False)
    with pytest.raises(TypeError, match="fails"):
        grading.shrink([1], None)
    with pytest.raises((ValueError, TypeError), match="max_tries"):
        grading.shrink([1], bool, max_tries=0)
    calls = Counter()

    def counted(xs):
        calls["n"] += 1
        return len(xs) > 0
    grading.shrink(list(range(200)), counted, max_tries=25)
    assert calls["n"] <= 25                       # bounded


def test_window_marks_the_row_and_says_what_is_cut():
    rows = [{"step": i, "state": "closed"} for i in range(30)]
    text = grading.window(rows, 20, before=3, after=1)
    assert "20 earlier step(s)" not in text and "17 earlier step(s) agreed" in text
    assert text.splitlines()[-3].endswith("<-- here") and "8 later step(s)" in text
    with pytest.raises(ValueError, match="at"):
        grading.window(rows, 30)


async def test_grade_reports_busy_cases_apart_and_repeats_timing_cases():
    runs = Counter()

    async def run_case(solution, case):
        runs[case.name] += 1
        if case.name == "busy":
            raise grading.TooBusy("event-loop lag p99 80 ms")
        if case.name == "burst" and runs["burst"] == 1:      # busy, then calm again
            raise grading.TooBusy("event-loop lag p99 80 ms")
        if case.name == "flaky" and runs["flaky"] == 1:
            raise AssertionError("too slow once")
        if case.name == "wrong":
            raise grading.CaseFailed("wrong answer", detail="  a  b", replay="again()")
    cases = [grading.Case("busy", 1), grading.Case("flaky", 2, timing=True),
             grading.Case("fine", 3), grading.Case("burst", 4)]
    report = await grading.grade("Lab X", cases, run_case, None, busy_again_s=0)
    assert report.passed == 3 and not report.ok and len(report.busy) == 1
    assert runs["flaky"] == 2
    # a case too busy to grade gets one second chance after the others: a burst passes
    assert runs["busy"] == 2 and runs["burst"] == 2
    assert [o.case.name for o in report.outcomes] == ["busy", "flaky", "fine", "burst"]
    assert report.outcomes[0].attempts == 2 and report.outcomes[3].passed
    s = report.summary()
    assert s.startswith("Lab X: not done: cases passed: 3 of 4") and "too busy" in s
    assert "busy" in s and "Smallest failing case" not in s
    report = await grading.grade("Lab X", cases + [grading.Case("wrong", 5)], run_case, None,
                                 busy_again_s=0)
    s = report.summary()
    assert "Smallest failing case: wrong" in s and "  a  b" in s and "Replay it alone: again()" in s
    with pytest.raises((ValueError, TypeError), match="attempts"):
        await grading.grade("Lab X", cases, run_case, None, attempts=0)
    with pytest.raises(ValueError, match="replay"):
        await grading.grade("Lab X", cases, run_case, None, replay="no name")
    with pytest.raises((ValueError, TypeError), match="busy_again_s"):
        await grading.grade("Lab X", cases, run_case, None, busy_again_s=-1)
    with pytest.raises(TypeError, match="cases"):
        await grading.grade("Lab X", ["busy"], run_case, None)


def test_lab_notebook_imports_the_solutions_not_copies():
    import json
    from pathlib import Path
    nb = json.loads((Path(__file__).resolve().parent.parent / "labs"
                     / "ch06_breakers_lab.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "class RefBreaker" not in code and "source(solutions.RefBreaker" in code
