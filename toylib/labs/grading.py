"""Graders for the labs: run a reader's solution against many seeded cases, smallest first.

A lab's checker is a list of :class:`Case` (each with a size and a seed) and an async function
that runs one case against the solution and raises ``AssertionError`` with a message when the
solution misbehaves. :func:`grade` runs every case, catches what goes wrong, and returns a
:class:`Report`: a score, and on failure the *smallest* failing case with the line that replays
it alone. A checker is only trustworthy if it rejects wrong answers, so every lab also ships
known-wrong solutions that the tests make sure it fails (tests/test_labs.py).

Like MIT 6.824's test scripts and Maelstrom's checkers, the grader never trusts the solution's
own account of what it did: it counts calls from the topology's trace and reads state back
from the services or the databases.
"""
from __future__ import annotations

import asyncio
import html
import traceback
from dataclasses import dataclass, field

from toylib.core import validate as v

CASE_TIMEOUT_S = 5.0   # every case finishes in well under a second when right


@dataclass(frozen=True)
class Case:
    name: str
    size: int                     # used to order cases: the smallest failing one is reported
    seed: int = 0
    params: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Outcome:
    case: Case
    passed: bool
    message: str = ""


@dataclass
class Report:
    lab: str
    outcomes: list[Outcome]

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def score(self) -> float:
        return self.passed / len(self.outcomes) if self.outcomes else 0.0

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.passed for o in self.outcomes)

    @property
    def first_failure(self) -> Outcome | None:
        failed = [o for o in self.outcomes if not o.passed]
        return min(failed, key=lambda o: (o.case.size, o.case.name)) if failed else None

    def summary(self) -> str:
        head = f"{self.lab}: {self.passed}/{len(self.outcomes)} cases passed " \
               f"(score {self.score:.0%})"
        f = self.first_failure
        if f is None:
            return head + " - all checks pass."
        return (f"{head}\nSmallest failing case: {f.case.name} (size {f.case.size}, "
                f"seed {f.case.seed}, {f.case.params})\n  {f.message}\n"
                f"Replay it alone: await check(..., only={f.case.name!r})")

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        colour = "#047857" if self.ok else "#b91c1c"
        body = html.escape(self.summary()).replace("\n", "<br>")
        return f"<div style='border-left:4px solid {colour};padding:4px 10px'>{body}</div>"


async def grade(lab: str, cases: list[Case], run_case, solution, *, only: str | None = None,
                stop_after: int | None = None, timeout: float = CASE_TIMEOUT_S) -> Report:
    """Run ``await run_case(solution, case)`` for each case (smallest first) and report.

    ``only`` replays one case by name; ``stop_after`` stops after that many failures (the
    smallest failure is still found, since cases run in size order).
    """
    if not cases:
        raise ValueError("cases must not be empty")
    v.positive("timeout", timeout)
    v.optional(v.positive, "stop_after", stop_after, integer=True)
    names = [c.name for c in cases]
    if only is not None:
        v.one_of("only", only, names)
    outcomes, failures = [], 0
    for case in sorted(cases, key=lambda c: (c.size, c.name)):
        if only is not None and case.name != only:
            continue
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation (a reader's interrupt) that arrives as the case ends (gh-86296).
            async with asyncio.timeout(timeout):
                await run_case(solution, case)
            outcomes.append(Outcome(case, True))
        except AssertionError as e:
            outcomes.append(Outcome(case, False, str(e) or "an assertion failed"))
        except NotImplementedError as e:
            outcomes.append(Outcome(case, False, f"not implemented yet: {e}"))
        except asyncio.TimeoutError:
            outcomes.append(Outcome(case, False, f"did not finish within {timeout:.0f} s "
                                                 "(a hang, or a loop that never ends?)"))
        except Exception as e:  # the solution crashed: that is a failed case, with its cause
            where = traceback.extract_tb(e.__traceback__)[-1]
            outcomes.append(Outcome(case, False, f"{type(e).__name__}: {e} "
                                                 f"(at {where.name}, line {where.lineno})"))
        if not outcomes[-1].passed:
            failures += 1
            if stop_after is not None and failures >= stop_after:
                break
    return Report(lab, outcomes)
