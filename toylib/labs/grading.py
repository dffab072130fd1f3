"""Graders for the labs: run a reader's solution against many seeded cases, smallest first.

A lab's checker is a list of :class:`Case` (each with a size and a seed) and an async function
that runs one case against the solution and raises ``AssertionError`` with a message when the
solution misbehaves. :func:`grade` runs every case, catches what goes wrong, and returns a
:class:`Report`. A checker is only trustworthy if it rejects wrong answers, so every lab also
ships known-wrong solutions that its tests make sure it fails (tests/test_lab_chNN_*.py).

Like MIT 6.824's test scripts and Maelstrom's checkers, the grader never trusts the solution's
own account of what it did: it counts calls from the topology's trace and reads state back
from the services or the databases.

What a report says (the same for every lab):

* ``done: cases passed: n of n`` when every case passed, and otherwise plainly
  ``not done: cases passed: k of n``: partial credit is a count, never a percentage that reads
  like a pass;
* for a failure, the *smallest* failing case (cases run in size order), its message, the
  history around the point where the solution parted from what was expected (``detail``), and
  one line that replays it alone (``replay``; by default ``await check(..., only=<case>)``);
* cases the machine was too busy to grade (the checker raised :class:`TooBusy`) get a second
  chance once the others have run (a burst of load is over by then); those still too busy are
  counted apart and named: the student is told to rerun, not that the solution is wrong.

Helpers a checker may use:

* :class:`CaseFailed` (an ``AssertionError``): raise it with ``detail=`` (a history table,
  expected beside actual) and ``replay=`` (a line that replays exactly this failure, e.g. with
  the shrunk steps spelt out); the report shows both.
* :class:`TooBusy`: raise it when a calibration in the same run shows the machine cannot time
  the case; the case is "not graded", not failed.
* ``Case(..., timing=True)`` marks a case whose verdict depends on timing: :func:`grade` runs a
  failing timing case again (``attempts`` in all) before failing it, as a busy moment can fail
  a correct solution once but not every time.
* :func:`shrink`: the smallest sub-sequence of a generated list of steps (a trace, a schedule
  of faults) that still fails, by delta debugging (remove chunks, then single steps, then
  simplify steps), deterministic and bounded in tries.
* :func:`window`: the rows of a history around the step where it diverged.
"""
from __future__ import annotations

import asyncio
import html
import math
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from toylib.core import validate as v

CASE_TIMEOUT_S = 5.0   # every case finishes in well under a second when right
BUSY_AGAIN_S = 2.0     # pause before the second chance of the cases the machine was too busy for
SHRINK_TRIES = 5000    # predicate evaluations a shrink may spend (each replays a short trace)


@dataclass(frozen=True)
class Case:
    name: str
    size: int                     # used to order cases: the smallest failing one is reported
    seed: int = 0
    params: dict = field(default_factory=dict, hash=False, compare=False)
    timing: bool = field(default=False, compare=False)   # run again before failing it


class CaseFailed(AssertionError):
    """A failed case with what the report shows under its message: ``detail`` (the history
    around the divergence, expected beside actual) and ``replay`` (one line that replays it)."""

    def __init__(self, message: str, *, detail: str = "", replay: str = ""):
        super().__init__(message)
        self.detail = detail
        self.replay = replay


class TooBusy(Exception):
    """The machine was too busy to grade this case (raise it from a calibration check)."""


@dataclass
class Outcome:
    case: Case
    passed: bool
    message: str = ""
    detail: str = ""              # history around the divergence, expected beside actual
    replay: str = ""              # a line that replays this failure alone
    busy: bool = False            # not graded: the machine was too busy (not the solution's fault)
    attempts: int = 1


@dataclass
class Report:
    lab: str
    outcomes: list[Outcome]
    replay_template: str = "await check(..., only={name!r})"

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def score(self) -> float:
        """The fraction of cases passed (for programs; the report itself shows a count)."""
        return self.passed / len(self.outcomes) if self.outcomes else 0.0

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.passed for o in self.outcomes)

    @property
    def busy(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.busy]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed and not o.busy]

    @property
    def first_failure(self) -> Outcome | None:
        failed = self.failures or self.busy
        return min(failed, key=lambda o: (o.case.size, o.case.name)) if failed else None

    def replay_line(self, outcome: Outcome) -> str:
        return outcome.replay or self.replay_template.format(name=outcome.case.name)

    def verdict(self) -> str:
        """``done`` or ``not done``, with the count of cases passed."""
        word = "done" if self.ok else "not done"
        return f"{word}: cases passed: {self.passed} of {self.total}"

    def summary(self) -> str:
        head = f"{self.lab}: {self.verdict()}"
        if self.ok:
            return head + "."
        lines = [head]
        if self.busy:
            lines.append(f"{len(self.busy)} case(s) could not be graded, the machine was too "
                         f"busy ({', '.join(o.case.name for o in self.busy)}): rerun the check "
                         f"when it is quieter.")
        f = self.first_failure
        if f is not None and not f.busy:
            lines.append(f"Smallest failing case: {f.case.name} (size {f.case.size}, "
                         f"seed {f.case.seed}, {f.case.params})")
            lines.append(f"  {f.message}")
            if f.detail:
                lines.append(f.detail.rstrip("\n"))
            lines.append(f"Replay it alone: {self.replay_line(f)}")
            if f.replay:      # the case by name too, for a reader who wants the whole case
                lines.append(f"  (the whole case: {self.replay_template.format(name=f.case.name)})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        colour = "#047857" if self.ok else "#b91c1c"
        body = html.escape(self.summary())
        return (f"<div style='border-left:4px solid {colour};padding:4px 10px'>"
                f"<pre style='white-space:pre-wrap;margin:0'>{body}</pre></div>")


async def grade(lab: str, cases: list[Case], run_case, solution, *, only: str | None = None,
                stop_after: int | None = None, timeout: float = CASE_TIMEOUT_S,
                attempts: int = 2, replay: str | None = None,
                busy_again_s: float = BUSY_AGAIN_S) -> Report:
    """Run ``await run_case(solution, case)`` for each case (smallest first) and report.

    ``only`` replays one case by name; ``stop_after`` stops after that many failures (the
    smallest failure is still found, since cases run in size order). A failing case marked
    ``timing`` is run up to ``attempts`` times in all before it counts as failed. ``replay`` is
    the report's replay line with ``{name}`` for the case (default ``await check(...,
    only=<name>)``).

    A case the machine was too busy to grade (:class:`TooBusy`) is run once more after the
    others, ``busy_again_s`` seconds after they finish: load comes in bursts (a program
    starting, an install), and the second chance usually lands after the burst. Its outcome
    then replaces the first, whatever it is: a run the machine could time is the one to trust.
    """
    if not cases:
        raise ValueError("cases must not be empty")
    if not all(isinstance(c, Case) for c in cases):
        raise TypeError("cases must be Case objects")
    v.number("timeout", timeout, low=0, low_open=True, high=600)
    v.optional(v.number, "stop_after", stop_after, low=1, high=10**6, integer=True)
    v.number("attempts", attempts, low=1, high=10, integer=True)
    v.number("busy_again_s", busy_again_s, low=0, high=60)
    if replay is not None and (not isinstance(replay, str) or "{name" not in replay):
        raise ValueError(f"replay must be a line with {{name}} in it; got {replay!r}")
    names = [c.name for c in cases]
    if only is not None:
        v.one_of("only", only, names)
    outcomes, failures = [], 0

    async def run(case: Case, done: int = 0) -> Outcome:
        tries = attempts if case.timing else 1
        for attempt in range(done + 1, done + tries + 1):
            outcome = await _run_one(run_case, solution, case, timeout)
            outcome.attempts = attempt
            if outcome.passed or outcome.busy:
                break
        return outcome

    stopped = False
    for case in sorted(cases, key=lambda c: (c.size, c.name)):
        if only is not None and case.name != only:
            continue
        outcomes.append(await run(case))
        if not outcomes[-1].passed and not outcomes[-1].busy:
            failures += 1
            stopped = stop_after is not None and failures >= stop_after
            if stopped:
                break
    busy = [i for i, o in enumerate(outcomes) if o.busy]
    if busy and not stopped:
        await asyncio.sleep(busy_again_s)      # let the burst of load pass
        for i in busy:
            outcomes[i] = await run(outcomes[i].case, outcomes[i].attempts)
    return Report(lab, outcomes, **({"replay_template": replay} if replay else {}))


async def _run_one(run_case, solution, case: Case, timeout: float) -> Outcome:
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation (a reader's interrupt) that arrives as the case ends (gh-86296).
        async with asyncio.timeout(timeout):
            await run_case(solution, case)
        return Outcome(case, True)
    except TooBusy as e:
        return Outcome(case, False, f"not graded: the machine was too busy ({e})", busy=True)
    except CaseFailed as e:
        return Outcome(case, False, str(e) or "an assertion failed", e.detail, e.replay)
    except AssertionError as e:
        return Outcome(case, False, str(e) or "an assertion failed")
    except NotImplementedError as e:
        return Outcome(case, False, f"not implemented yet: {e}")
    except asyncio.TimeoutError:
        return Outcome(case, False, f"did not finish within {timeout:.0f} s "
                                    "(a hang, or a loop that never ends?)")
    except Exception as e:  # the solution crashed: that is a failed case, with its cause
        where = traceback.extract_tb(e.__traceback__)[-1]
        return Outcome(case, False, f"{type(e).__name__}: {e} "
                                    f"(at {where.name}, line {where.lineno})")


# -- generated cases: shrinking and showing a history ----------------------------------------------
def search(strategy, attempt: Callable, *, seed: int, examples: int, budget_s: float,
           stop=None):
    """Hypothesis's search for the smallest failing generated case, within a time budget.

    Run it in a thread (``await asyncio.to_thread(search, ...)``): ``attempt(drawn)`` runs one
    drawn case to the end (with its own event loop, ``asyncio.run``) and returns the failure (an
    exception or a message), or None when the case passed or must not count (the machine was
    too busy, a planned fault the solution never reached). Hypothesis draws from ``strategy``
    with ``seed`` (printed in reports, so a failure replays), up to ``examples`` cases, then
    shrinks the failure it found. Past ``budget_s`` seconds (or once ``stop``, a
    ``threading.Event``, is set) no more cases run and the smallest failure found so far is
    kept. Returns ``(smallest drawn case or None, its failure or None, cases run)``.
    """
    import random
    import time

    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    v.number("seed", seed, integer=True)
    v.number("examples", examples, low=1, high=10_000, integer=True)
    v.number("budget_s", budget_s, low=0, high=3600, low_open=True)
    end = time.monotonic() + budget_s
    failures: dict[str, object] = {}
    runs = [0]

    def fails(drawn) -> bool:
        key = repr(drawn)
        if key in failures:
            return True
        if time.monotonic() > end or (stop is not None and stop.is_set()):
            return False                    # out of budget: keep the smallest found so far
        runs[0] += 1
        failure = attempt(drawn)
        if failure is not None:
            failures[key] = failure
        return failure is not None

    try:
        found = find(strategy, fails, random=random.Random(seed),
                     settings=settings(max_examples=examples, database=None, deadline=None,
                                       suppress_health_check=list(HealthCheck),
                                       phases=[Phase.generate, Phase.shrink]))
    except NoSuchExample:
        return None, None, runs[0]
    return found, failures[repr(found)], runs[0]


def shrink(steps: Iterable, fails: Callable[[list], bool], *,
           simpler: Callable[[object], Iterable] | None = None,
           max_tries: int = SHRINK_TRIES) -> list:
    """The smallest sub-sequence of ``steps`` for which ``fails`` is still true.

    Delta debugging (Zeller's ddmin, as Hypothesis and QuickCheck shrink lists): try removing
    chunks of halving size, then single steps, until no single removal still fails; then try
    each step's ``simpler(step)`` replacements. ``fails(candidate)`` must be deterministic and
    return True when the candidate still shows a failure (an exception in it counts as a
    failure). Bounded by ``max_tries`` calls of ``fails``; the result always fails.
    """
    items = list(steps)
    v.number("max_tries", max_tries, low=1, high=10**6, integer=True)
    if not callable(fails):
        raise TypeError(f"fails must be a callable taking a list of steps; got {fails!r}")
    if simpler is not None and not callable(simpler):
        raise TypeError(f"simpler must be None or a callable; got {simpler!r}")
    tries = 0

    def still_fails(candidate: list) -> bool:
        nonlocal tries
        tries += 1
        try:
            return bool(fails(candidate))
        except Exception:       # the solution crashed on the smaller input: still a failure
            return True

    if not still_fails(items):
        raise ValueError("steps must fail to be shrunk (fails(steps) was false)")
    n = 2
    while len(items) >= 2 and tries < max_tries:
        chunk = math.ceil(len(items) / n)
        for start in range(0, len(items), chunk):
            candidate = items[:start] + items[start + chunk:]
            if candidate and tries < max_tries and still_fails(candidate):
                items, n = candidate, max(n - 1, 2)
                break
        else:
            if chunk == 1:
                break
            n = min(len(items), 2 * n)
    changed = simpler is not None
    while changed and tries < max_tries:
        changed = False
        for i, step in enumerate(items):
            for smaller in simpler(step):
                candidate = items[:i] + [smaller] + items[i + 1:]
                if tries < max_tries and still_fails(candidate):
                    items, changed = candidate, True
                    break
            if changed:
                break
    return items


def window(rows: Sequence[dict], at: int, *, before: int = 8, after: int = 2,
           columns: Sequence[str] | None = None, mark: str = "<-- here") -> str:
    """A plain-text table of ``rows[at - before : at + after + 1]``, the row ``at`` marked.

    Rows are dicts (e.g. step, expected state, actual state); every row of a short history
    is shown, so the divergence is never off screen.
    """
    v.number("at", at, low=0, high=max(0, len(rows) - 1), integer=True)
    v.number("before", before, low=0, high=10_000, integer=True)
    v.number("after", after, low=0, high=10_000, integer=True)
    lo, hi = max(0, at - before), min(len(rows), at + after + 1)
    shown = list(rows[lo:hi])
    cols = list(columns or (shown[0].keys() if shown else []))
    cells = [[str(r.get(c, "")) for c in cols] for r in shown]
    widths = [max([len(c)] + [len(row[j]) for row in cells]) for j, c in enumerate(cols)]
    lines = []
    if lo > 0:
        lines.append(f"  ... {lo} earlier step(s) agreed")
    lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for i, row in zip(range(lo, hi), cells):
        text = "  " + "  ".join(x.ljust(w) for x, w in zip(row, widths))
        lines.append(text + ("  " + mark if i == at else ""))
    if hi < len(rows):
        lines.append(f"  ... {len(rows) - hi} later step(s)")
    return "\n".join(line.rstrip() for line in lines)
