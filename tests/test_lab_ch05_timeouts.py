"""Lab 5 (timeouts and retries): the checker passes two correct solutions and rejects wrong ones.

The correct solutions are imported from ``toylib.labs.solutions.ch05_timeouts`` (the lab's
hidden solution shows the reference from there). Each wrong solution is the reference with one
realistic mistake, and must be rejected *for that mistake*: the smallest failing scenario's
message names it. The checker's verdicts rest on counts (calls that reached the dependency,
requests answered right, retries after "overloaded") and on latencies compared with the bound
as ratios with a margin, never on absolute times here.
"""
from __future__ import annotations

import asyncio
import dataclasses
import math

import aiohttp
import pytest

from toylib.core import deadline as dl
from toylib.core.services import CallError
from toylib.labs import ch05_timeouts as timeouts_lab
from toylib.labs.grading import Case
from toylib.labs.solutions import ch05_timeouts as sol
from toylib.resilience.retry import RetryBudget, retry

REFERENCE, ALTERNATIVE = sol.REFERENCE, sol.ALTERNATIVE


async def _passes(solution: dict) -> None:
    report = await timeouts_lab.check(**solution)
    assert report.total == len(timeouts_lab.CASES) + 1          # the fixed and the generated
    assert not report.failures, report.summary()
    # A case the machine was too busy to grade is not the solution's fault; it must not hide
    # a failure, and on a quiet machine there is none.
    assert report.ok or report.busy, report.summary()


async def test_lab5_reference_passes():
    await _passes(REFERENCE)


async def test_lab5_alternative_passes():
    await _passes(ALTERNATIVE)


# -- known-wrong solutions: the reference with one mistake -------------------------------------
def call_variant(*, timeout=True, deadline=True, retryable=None, per_request_budget=False,
                 per_instance_budget=False, lock=False, bulkhead=0):
    """The reference's call_with_policy, with one of its parts taken out or changed."""
    state = {}      # per policy (a process), keyed by id with the policy kept alive

    def mine(policy, key, make):
        return state.setdefault((id(policy), key), (policy, make()))[1]

    async def call_with_policy(service, target, path, policy):
        budget = policy.budget
        if per_request_budget:
            budget = RetryBudget(0.2, burst=3)
        if per_instance_budget:          # one budget per API instance, not per process
            budget = mine(policy, service.name, lambda: RetryBudget(0.2, burst=3))
        guard = None
        if lock:                         # one call at a time in each process
            guard = mine(policy, "lock", asyncio.Lock)
        if bulkhead:                     # a few calls at a time, waiting with no deadline
            guard = mine(policy, "slots", lambda: asyncio.Semaphore(bulkhead))
        async with (guard or _Nothing()):
            scope = (dl.scope(dl.Deadline.after(policy.deadline_s)) if deadline
                     else dl.scope(None))
            with scope:
                return await retry(
                    lambda: service.call(target, "GET", path,
                                         timeout=policy.timeout_s if timeout else None),
                    attempts=policy.attempts, policy="full", base=policy.base_s,
                    cap=policy.cap_s, budget=budget, retryable=retryable or sol.retryable,
                    rng=policy.rng, min_attempt=policy.min_attempt_s)
    return call_with_policy


class _Nothing:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return None


def choose_variant(change):
    """The reference's choose_policy, then ``change(policy, latencies_ms)``."""
    def choose_policy(latencies_ms, bound_ms, seed):
        policy = sol.choose_policy(latencies_ms, bound_ms, seed)
        return dataclasses.replace(policy, **change(policy, latencies_ms))
    return choose_policy


async def naive_call(service, target, path, policy):
    """The chapter's "before": one call, no timeout, no deadline, no retry."""
    return await service.call(target, "GET", path)


async def untraced_call(service, target, path, policy):
    """Calls the dependency with a session of its own, out of the trace (and of its count)."""
    url = service.topology.service(target).url + path
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.1)) as session:
        async with session.get(url) as r:
            return await r.json()


def retry_everything(exc):
    return isinstance(exc, CallError) and exc.kind != "deadline"


WRONG = {
    # (solution, what the smallest failing scenario's message must say)
    "no timeout, no deadline, no retry": (
        {**REFERENCE, "call_with_policy": naive_call}, "Does every call have a timeout?"),
    "a deadline but no timeout per attempt": (
        {**REFERENCE, "call_with_policy": call_variant(timeout=False)},
        "ran until the deadline cut them"),
    "per-attempt timeouts but no deadline": (
        {**REFERENCE, "call_with_policy": call_variant(deadline=False)},
        "one deadline must cover every attempt"),
    "retries with no budget": (
        {**REFERENCE, "choose_policy": choose_variant(lambda p, lat: {"budget": None})},
        "bound them with a retry budget"),
    "a new budget for every request": (
        {**REFERENCE, "call_with_policy": call_variant(per_request_budget=True)},
        "bound them with a retry budget"),
    "a budget with a burst of 10 in every process": (
        {**REFERENCE, "choose_policy": choose_variant(
            lambda p, lat: {"budget": RetryBudget(0.2, burst=10)})},
        "bound them with a retry budget"),
    "retrying an 'overloaded' answer": (
        {**REFERENCE, "call_with_policy": call_variant(retryable=retry_everything)},
        "never retry that answer"),
    "a timeout at half the median": (
        {**REFERENCE, "choose_policy": choose_variant(
            lambda p, lat: {"timeout_s": timeouts_lab.quantile(lat, 0.5) / 2000})},
        "false timeouts"),
    "a 100 ms timeout copied from another service": (
        {**REFERENCE, "choose_policy": choose_variant(lambda p, lat: {"timeout_s": 0.1})},
        "false timeouts"),
    "no retries at all": (
        {**REFERENCE, "choose_policy": choose_variant(lambda p, lat: {"attempts": 1})},
        "need a retry"),
    "calls made outside service.call": (
        {**REFERENCE, "call_with_policy": untraced_call}, "are in the trace"),
    # outages longer than a budget's burst: a budget that refills with time, not requests,
    # passes a 0.4 s outage at 100 requests/s and lets too much through in a 2 s one at 20/s
    "a budget that refills with time, not with requests": (
        {**REFERENCE, "choose_policy": choose_variant(
            lambda p, lat: {"budget": RetryBudget(0.0, burst=5, per_second=10)})},
        "bound them with a retry budget"),
    # several API instances in one process share one dependency and one budget
    "a budget per API instance, not per process": (
        {**REFERENCE, "call_with_policy": call_variant(per_instance_budget=True)},
        "one per process"),
    # concurrency: requests that arrive together must not wait for each other
    "one call at a time (a lock in the process)": (
        {**REFERENCE, "call_with_policy": call_variant(lock=True)},
        "one deadline must cover every attempt"),
    # sizes and rates beyond the fixed cases (generated): a bulkhead sized for the fast
    # profile, whose queue is outside the deadline
    "a bulkhead of 4 calls per process, waiting with no deadline": (
        {**REFERENCE, "call_with_policy": call_variant(bulkhead=4)},
        "one deadline must cover every attempt"),
}


async def rejected(solution: dict, **kwargs):
    """The report of a check that must fail; a check whose only non-passes were cases the
    machine was too busy to time is run once more, then skipped (not decided, not passed)."""
    for _ in range(2):
        report = await timeouts_lab.check(**solution, **kwargs)
        assert not report.ok, f"the checker accepted a wrong solution:\n{report.summary()}"
        if report.failures:
            return report
    pytest.skip(f"the machine was too busy to grade: {report.summary()}")


@pytest.mark.parametrize("mistake", list(WRONG))
async def test_lab5_rejects_wrong_solution(mistake):
    solution, says = WRONG[mistake]
    report = await rejected(solution, stop_after=1)
    failure = report.first_failure
    assert failure is not None and not failure.busy, report.summary()
    assert says in failure.message, \
        f"{mistake}: rejected, but not for its mistake:\n{report.summary()}"
    summary = report.summary()      # the replay line and the seed are in the report
    assert "Replay it alone: await" in summary
    assert f"seed {failure.case.seed}" in summary
    if failure.detail:              # the history shows actual beside expected
        assert "expected" in failure.detail and "<-- here" in failure.detail


async def test_the_new_mistakes_are_caught_by_their_own_cases():
    """Each new class of mistake is caught by the cases written for it."""
    for mistake, case in (("a budget that refills with time, not with requests", "long-outage"),
                          ("a budget per API instance, not per process", "shared-budget"),
                          ("one call at a time (a lock in the process)", "burst")):
        solution, says = WRONG[mistake]
        report = await rejected(solution, only=case)
        assert says in report.first_failure.message, report.summary()
        ok = await timeouts_lab.check(**REFERENCE, only=case)
        assert not ok.failures, ok.summary()


async def test_a_generated_failure_is_shrunk_and_replayable(monkeypatch):
    monkeypatch.setattr(timeouts_lab, "GENERATED_BUDGET_S", 40.0)   # a busy machine is slow
    solution, _ = WRONG["retries with no budget"]
    report = await rejected(solution, only="generated", seed=7, examples=12)
    f = report.first_failure
    assert f is not None and "Hypothesis shrank it to" in f.message and "seed 7" in f.message
    assert f.replay.startswith("await timeouts_lab.replay(")
    params = eval(f.replay[f.replay.index("params=") + 7:f.replay.rindex(", seed=")])  # noqa: S307
    again = await timeouts_lab.replay(**solution, params=params, seed=7)
    assert not again.ok and "bound them with a retry budget" in again.first_failure.message


# -- the starter, replays, arguments ------------------------------------------------------------
async def test_lab5_starter_fails_with_a_message():
    def choose_policy(latencies_ms, bound_ms, seed):
        raise NotImplementedError("choose_policy: TODO")

    async def call_with_policy(service, target, path, policy):
        raise NotImplementedError("call_with_policy: TODO")

    report = await timeouts_lab.check(choose_policy=choose_policy,
                                      call_with_policy=call_with_policy, examples=0)
    assert report.passed == 0 and report.total == len(timeouts_lab.CASES)
    assert all("not implemented yet: choose_policy: TODO" in o.message
               for o in report.outcomes)


async def test_lab5_half_done_starter_names_the_missing_part():
    """With choose_policy written, the TODO raised inside the API's handler still reaches
    the report (the client only saw 500s)."""
    async def call_with_policy(service, target, path, policy):
        raise NotImplementedError("call_with_policy: TODO")

    report = await timeouts_lab.check(choose_policy=REFERENCE["choose_policy"],
                                      call_with_policy=call_with_policy, only="tail-fast")
    assert report.first_failure.message == "not implemented yet: call_with_policy: TODO"


async def test_lab5_reports_a_crash_in_the_solution():
    async def call_with_policy(service, target, path, policy):
        return await service.call(target, "GET", path, timeout=policy.timeout_ms)   # a typo

    report = await timeouts_lab.check(choose_policy=REFERENCE["choose_policy"],
                                      call_with_policy=call_with_policy, only="tail-fast")
    assert "AttributeError" in report.first_failure.message      # a crash is never "busy"
    assert "timeout_ms" in report.first_failure.message and not report.busy


async def test_lab5_replays_one_case():
    report = await timeouts_lab.check(**REFERENCE, only="outage")
    assert [o.case.name for o in report.outcomes] == ["outage"]
    with pytest.raises(ValueError, match="only"):
        await timeouts_lab.check(**REFERENCE, only="no-such-case")


async def test_lab5_too_busy_is_not_a_failure(monkeypatch):
    """A timing failure while the event loop was too late to time it is 'not graded'."""
    monkeypatch.setattr(timeouts_lab, "BUSY_LAG", 0.0)     # any lateness counts as too busy
    monkeypatch.setattr(timeouts_lab, "BUSY_PAUSE_S", 0.01)
    runs = []
    real_run_case = timeouts_lab._run_case

    async def counted(solution, case):
        runs.append(case.name)
        return await real_run_case(solution, case)

    monkeypatch.setattr(timeouts_lab, "_run_case", counted)
    solution = {**REFERENCE, "choose_policy": choose_variant(lambda p, lat: {"attempts": 1})}
    report = await timeouts_lab.check(**solution, only="errors")
    assert report.busy and not report.failures and not report.ok
    assert "too busy" in report.summary()
    # busy runs do not use up the timed runs: the case waited for a calm one, up to its patience,
    # and again in its second chance after the other cases (grading.grade)
    assert len(runs) == 2 * timeouts_lab.BUSY_RUNS
    # counts are never excused: a missing budget fails however busy the machine
    solution, _ = WRONG["retries with no budget"]
    report = await timeouts_lab.check(**solution, only="outage")
    assert report.failures and not report.busy
    # nor is a call that started in time and never timed out (no busy machine does that)
    solution, says = WRONG["no timeout, no deadline, no retry"]
    report = await timeouts_lab.check(**solution, only="hangs")
    assert report.failures and not report.busy and says in report.first_failure.message


async def test_lab5_calibrates_in_every_case(monkeypatch):
    """choose_policy gets latencies measured in the case's own run, not a cached sample."""
    seen = []

    def choose_policy(latencies_ms, bound_ms, seed):
        seen.append(tuple(latencies_ms))
        return sol.choose_policy(latencies_ms, bound_ms, seed)

    for name in ("tail-fast", "errors"):
        await timeouts_lab.check(choose_policy=choose_policy,
                                 call_with_policy=REFERENCE["call_with_policy"], only=name)
    assert len(seen) >= 2 and seen[0] != seen[1]
    assert all(len(s) >= timeouts_lab.CALIBRATION_N // 2 for s in seen)


@pytest.mark.parametrize("kwargs, param", [
    ({"choose_policy": None}, "choose_policy"),
    ({"call_with_policy": lambda *a: None}, "call_with_policy"),
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": math.nan}, "seed"),
    ({"examples": 10**6}, "examples"), ({"stop_after": 0}, "stop_after"),
    ({"only": 3}, "only"),
])
async def test_lab5_rejects_bad_arguments(kwargs, param):
    with pytest.raises((TypeError, ValueError), match=param):
        await timeouts_lab.check(**{**REFERENCE, **kwargs})


@pytest.mark.parametrize("params, name", [
    ("not a dict", "params"), ({"n": 3}, "params"),
    ({"profile": "fast", "n": 10**9, "rate": 10.0, "floor": 0.0}, "n"),
    ({"profile": "fast", "n": 10, "rate": math.inf, "floor": 0.0}, "rate"),
])
async def test_lab5_replay_rejects_bad_params(params, name):
    with pytest.raises((TypeError, ValueError), match=name):
        await timeouts_lab.replay(**REFERENCE, params=params)


async def test_lab5_releases_everything(leakcheck):
    """A case with hung calls (cut by the client) leaves no task, socket or session behind."""
    await timeouts_lab.measured_latencies("fast", n=50)  # before the fd count matters
    solution = {**REFERENCE, "call_with_policy": naive_call}
    report = await timeouts_lab.check(**solution, only="hang-window")
    assert not report.ok


def test_lab5_scenarios_table():
    table = timeouts_lab.scenarios()
    assert sorted(table.index) == sorted(c.name for c in timeouts_lab.CASES)
    assert list(table.index) == [c.name for c in sorted(timeouts_lab.CASES,
                                                        key=lambda c: (c.size, c.name))]
    assert len({c.seed for c in timeouts_lab.CASES}) == len(timeouts_lab.CASES)
    assert all(isinstance(c, Case) for c in timeouts_lab.cases_for())


def test_lab5_quantile():
    assert timeouts_lab.quantile([10, 20, 30, 40, 50], 0.5) == 30
    assert timeouts_lab.quantile([10, 20], 1.0) == 20
    with pytest.raises(ValueError, match="empty"):
        timeouts_lab.quantile([], 0.5)
    with pytest.raises(ValueError, match="q"):
        timeouts_lab.quantile([1.0], 1.5)
    with pytest.raises((TypeError, ValueError), match="q"):
        timeouts_lab.quantile([1.0], math.nan)
    with pytest.raises(ValueError, match="latencies_ms"):
        timeouts_lab.quantile([1.0, math.inf], 0.5)
    with pytest.raises(TypeError, match="latencies_ms"):
        timeouts_lab.quantile(None, 0.5)
