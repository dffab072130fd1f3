"""Lab 5 (timeouts and retries): the checker passes the reference and rejects wrong solutions.

The reference is taken from the lab notebook's hidden solution block (``reference`` from
tests/conftest.py), so the solution a reader can reveal is the one proven here. Each wrong
solution is the reference with one realistic mistake, and must be rejected *for that mistake*:
the smallest failing scenario's message names it. The checker's verdicts rest on counts (calls
that reached the dependency, requests answered right, retries after "overloaded") and on
latencies compared with the bound as ratios with a margin, never on absolute times here.
"""
from __future__ import annotations

import dataclasses

import aiohttp
import pytest
from conftest import reference

from toylib.core import deadline as dl
from toylib.labs import ch05_timeouts as timeouts_lab
from toylib.resilience.retry import RetryBudget, retry
from toylib.core.services import CallError


@pytest.fixture(scope="module")
def ns():
    return reference("ch05_timeouts_lab.ipynb", "RefPolicy")


@pytest.fixture(scope="module")
def lab5(ns):
    return {"choose_policy": ns["ref_choose_policy"],
            "call_with_policy": ns["ref_call_with_policy"]}


async def test_lab5_reference_passes(lab5):
    report = await timeouts_lab.check(**lab5)
    if not report.ok:
        # The one thing that can fail a right solution is the machine's own noise (a busy
        # machine stalls the event loop and every wait grows): replay the failed cases once
        # alone; a real mistake fails again, deterministically, since every fault is seeded.
        for o in report.outcomes:
            if not o.passed:
                again = await timeouts_lab.check(**lab5, only=o.case.name)
                assert again.ok, f"{report.summary()}\nreplayed:\n{again.summary()}"
    assert len(report.outcomes) == len(timeouts_lab.CASES)


# -- known-wrong solutions: the reference with one mistake -------------------------------------
def call_variant(ns, *, timeout=True, deadline=True, retryable=None, per_request_budget=False):
    """The reference's call_with_policy, with one of its parts taken out or changed."""
    async def call_with_policy(service, target, path, policy):
        budget = RetryBudget(0.2, burst=3) if per_request_budget else policy.budget
        scope = (dl.scope(dl.Deadline.after(policy.deadline_s)) if deadline
                 else dl.scope(None))
        with scope:
            return await retry(
                lambda: service.call(target, "GET", path,
                                     timeout=policy.timeout_s if timeout else None),
                attempts=policy.attempts, policy="full", base=policy.base_s, cap=policy.cap_s,
                budget=budget, retryable=retryable or ns["ref_retryable"], rng=policy.rng,
                min_attempt=policy.min_attempt_s)
    return call_with_policy


def choose_variant(ns, change):
    """The reference's choose_policy, then ``change(policy, latencies_ms)``."""
    def choose_policy(latencies_ms, bound_ms, seed):
        policy = ns["ref_choose_policy"](latencies_ms, bound_ms, seed)
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


def wrong_solutions(ns, lab5):
    def retry_everything(exc):
        return isinstance(exc, CallError) and exc.kind != "deadline"

    return {
        # (solution, what the smallest failing scenario's message must say)
        "no timeout, no deadline, no retry": (
            {**lab5, "call_with_policy": naive_call}, "Does every call have a timeout?"),
        "a deadline but no timeout per attempt": (
            {**lab5, "call_with_policy": call_variant(ns, timeout=False)},
            "ran until the deadline cut them"),
        "per-attempt timeouts but no deadline": (
            {**lab5, "call_with_policy": call_variant(ns, deadline=False)},
            "one deadline must cover every attempt"),
        "retries with no budget": (
            {**lab5, "choose_policy": choose_variant(ns, lambda p, lat: {"budget": None})},
            "bound them with a retry budget"),
        "a new budget for every request": (
            {**lab5, "call_with_policy": call_variant(ns, per_request_budget=True)},
            "bound them with a retry budget"),
        "a budget with a burst of 10 in every process": (
            {**lab5, "choose_policy": choose_variant(
                ns, lambda p, lat: {"budget": RetryBudget(0.2, burst=10)})},
            "bound them with a retry budget"),
        "retrying an 'overloaded' answer": (
            {**lab5, "call_with_policy": call_variant(ns, retryable=retry_everything)},
            "never retry that answer"),
        "a timeout at half the median": (
            {**lab5, "choose_policy": choose_variant(
                ns, lambda p, lat: {"timeout_s": timeouts_lab.quantile(lat, 0.5) / 2000})},
            "false timeouts"),
        "a 100 ms timeout copied from another service": (
            {**lab5, "choose_policy": choose_variant(ns, lambda p, lat: {"timeout_s": 0.1})},
            "false timeouts"),
        "no retries at all": (
            {**lab5, "choose_policy": choose_variant(ns, lambda p, lat: {"attempts": 1})},
            "need a retry"),
        "calls made outside service.call": (
            {**lab5, "call_with_policy": untraced_call}, "are in the trace"),
    }


MISTAKES = ["no timeout, no deadline, no retry", "a deadline but no timeout per attempt",
            "per-attempt timeouts but no deadline", "retries with no budget",
            "a new budget for every request", "a budget with a burst of 10 in every process",
            "retrying an 'overloaded' answer", "a timeout at half the median",
            "a 100 ms timeout copied from another service", "no retries at all",
            "calls made outside service.call"]


@pytest.mark.parametrize("mistake", MISTAKES)
async def test_lab5_rejects_wrong_solution(ns, lab5, mistake):
    solution, says = wrong_solutions(ns, lab5)[mistake]
    report = await timeouts_lab.check(**solution, stop_after=1)
    assert not report.ok, f"the checker accepted a wrong solution: {mistake}"
    message = report.first_failure.message
    assert says in message, f"{mistake}: rejected, but not for its mistake:\n{report.summary()}"
    summary = report.summary()      # the replay line names the case and its seed
    assert f"only={report.first_failure.case.name!r}" in summary
    assert f"seed {report.first_failure.case.seed}" in summary


def test_lab5_every_mistake_is_tested(ns, lab5):
    assert sorted(wrong_solutions(ns, lab5)) == sorted(MISTAKES)


# -- the starter, replays, arguments ------------------------------------------------------------
async def test_lab5_starter_fails_with_a_message():
    def choose_policy(latencies_ms, bound_ms, seed):
        raise NotImplementedError("choose_policy: TODO")

    async def call_with_policy(service, target, path, policy):
        raise NotImplementedError("call_with_policy: TODO")

    report = await timeouts_lab.check(choose_policy=choose_policy,
                                      call_with_policy=call_with_policy)
    assert report.passed == 0 and len(report.outcomes) == len(timeouts_lab.CASES)
    assert all("not implemented yet: choose_policy: TODO" in o.message
               for o in report.outcomes)


async def test_lab5_half_done_starter_names_the_missing_part(lab5):
    """With choose_policy written, the TODO raised inside the API's handler still reaches
    the report (the client only saw 500s)."""
    async def call_with_policy(service, target, path, policy):
        raise NotImplementedError("call_with_policy: TODO")

    report = await timeouts_lab.check(choose_policy=lab5["choose_policy"],
                                      call_with_policy=call_with_policy, only="tail-fast")
    assert report.first_failure.message == "not implemented yet: call_with_policy: TODO"


async def test_lab5_reports_a_crash_in_the_solution(lab5):
    async def call_with_policy(service, target, path, policy):
        return await service.call(target, "GET", path, timeout=policy.timeout_ms)   # a typo

    report = await timeouts_lab.check(choose_policy=lab5["choose_policy"],
                                      call_with_policy=call_with_policy, only="tail-fast")
    assert "AttributeError" in report.first_failure.message
    assert "timeout_ms" in report.first_failure.message


async def test_lab5_replays_one_case(lab5):
    report = await timeouts_lab.check(**lab5, only="outage")
    assert [o.case.name for o in report.outcomes] == ["outage"]
    with pytest.raises(ValueError, match="only"):
        await timeouts_lab.check(**lab5, only="no-such-case")


async def test_lab5_rejects_bad_arguments(lab5):
    with pytest.raises(TypeError, match="call_with_policy"):
        await timeouts_lab.check(choose_policy=lab5["choose_policy"],
                                 call_with_policy=lambda *a: None)
    with pytest.raises(TypeError, match="choose_policy"):
        await timeouts_lab.check(choose_policy=None, call_with_policy=lab5["call_with_policy"])


async def test_lab5_releases_everything(lab5, leakcheck):
    """A case with hung calls (cut by the client) leaves no task, socket or session behind."""
    await timeouts_lab.measured_latencies("fast")     # measured before the fd count matters
    solution = {**lab5, "call_with_policy": naive_call}
    report = await timeouts_lab.check(**solution, only="hang-window")
    assert not report.ok


def test_lab5_scenarios_table():
    table = timeouts_lab.scenarios()
    assert sorted(table.index) == sorted(c.name for c in timeouts_lab.CASES)
    assert list(table.index) == [c.name for c in sorted(timeouts_lab.CASES,
                                                        key=lambda c: (c.size, c.name))]
    assert len({c.seed for c in timeouts_lab.CASES}) == len(timeouts_lab.CASES)


def test_lab5_quantile():
    assert timeouts_lab.quantile([10, 20, 30, 40, 50], 0.5) == 30
    assert timeouts_lab.quantile([10, 20], 1.0) == 20
    with pytest.raises(ValueError, match="empty"):
        timeouts_lab.quantile([], 0.5)
    with pytest.raises(ValueError, match="q"):
        timeouts_lab.quantile([1.0], 1.5)
