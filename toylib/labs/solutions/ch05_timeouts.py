"""Lab 5's correct solutions: the reference (shown in the lab's hidden solution) and one written
independently, in another style, so the grader is known to accept more than one right answer.

``choose_policy(latencies_ms, bound_ms, seed)`` is called once per API process with the
dependency's latencies measured in the same run; ``call_with_policy(service, target, path,
policy)`` makes one GET under the policy and returns the answer or raises the last CallError.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from toylib.core import deadline as dl
from toylib.core.services import CallError
from toylib.resilience.retry import RetryBudget, retry


def _quantile(latencies_ms, q: float) -> float:
    xs = sorted(float(x) for x in latencies_ms)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# -- the reference: toylib's retry() under one deadline --------------------------------------------
@dataclass
class RefPolicy:
    timeout_s: float        # per attempt: the measured p99.9, so 0.1 % of healthy calls time out
    attempts: int           # per request, the first included
    base_s: float           # backoff: full jitter, U(0, min(cap, base * 2**k))
    cap_s: float
    min_attempt_s: float    # no retry unless the deadline leaves at least a median call
    deadline_s: float       # one deadline for every attempt: the promise, less time to answer
    budget: RetryBudget     # per process: retries <= 3 + 20 % of requests
    rng: random.Random


def choose_policy(latencies_ms, bound_ms, seed):
    p50, p999 = _quantile(latencies_ms, 0.5), _quantile(latencies_ms, 0.999)
    return RefPolicy(timeout_s=p999 / 1000, attempts=3, base_s=p50 / 1000,
                     cap_s=4 * p50 / 1000, min_attempt_s=p50 / 1000,
                     deadline_s=0.9 * bound_ms / 1000,
                     budget=RetryBudget(0.2, burst=3), rng=random.Random(seed))


def retryable(exc):
    """Timeouts, resets, refusals and 5xx: yes. "overloaded", a spent deadline, 4xx: no."""
    if not isinstance(exc, CallError):
        return False
    return exc.kind in ("timeout", "reset", "refused") or (
        exc.kind == "http" and exc.status is not None and exc.status >= 500)


async def call_with_policy(service, target, path, policy):
    # One deadline covers every attempt; a tighter one sent by the caller wins (dl.scope).
    # retry() stops when the deadline cannot fit the backoff and one more median call.
    with dl.scope(dl.Deadline.after(policy.deadline_s)):
        return await retry(
            lambda: service.call(target, "GET", path, timeout=policy.timeout_s),
            attempts=policy.attempts, policy="full", base=policy.base_s, cap=policy.cap_s,
            budget=policy.budget, retryable=retryable, rng=policy.rng,
            min_attempt=policy.min_attempt_s)


REFERENCE = {"choose_policy": choose_policy, "call_with_policy": call_with_policy}


# -- an independent solution: a hand-written loop, a token bucket of its own, equal jitter --------
class Tokens:
    """Retries cost one token; every request earns a tenth of one; at most four are saved."""

    def __init__(self):
        self.tokens = 4.0

    def earn(self):
        self.tokens = min(4.0, self.tokens + 0.1)

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def alternative_choose_policy(latencies_ms, bound_ms, seed):
    ordered = sorted(latencies_ms)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    median = ordered[len(ordered) // 2]
    # A dict, not a class: the timeout a little above the p99 (about 0.5 % false timeouts),
    # and the whole request 85 % of the promise.
    return {"timeout": 1.25 * p99 / 1000, "median": median / 1000, "tries": 2,
            "budget": 0.85 * bound_ms / 1000, "tokens": Tokens(), "rng": random.Random(seed)}


def _worth_another_try(e: CallError) -> bool:
    if e.kind in ("overloaded", "deadline"):
        return False                   # the server asked for less; or nobody is waiting
    return e.kind != "http" or (e.status or 0) >= 500


async def alternative_call_with_policy(service, target, path, policy):
    loop = asyncio.get_running_loop()
    inherited = dl.current()
    end = loop.time() + policy["budget"]
    if inherited is not None:
        end = min(end, loop.time() + inherited.remaining())
    policy["tokens"].earn()
    tried = 0
    while True:
        tried += 1
        left = end - loop.time()
        try:
            # The timeout of this attempt: its own, or what the request has left if less.
            return await service.call(target, "GET", path,
                                      timeout=max(0.001, min(policy["timeout"], left)))
        except CallError as e:
            pause = policy["median"] / 2 + policy["rng"].uniform(0, policy["median"] / 2)
            if (tried >= policy["tries"] or not _worth_another_try(e)
                    or end - loop.time() - pause < policy["median"]
                    or not policy["tokens"].spend()):
                raise
            await asyncio.sleep(pause)


ALTERNATIVE = {"choose_policy": alternative_choose_policy,
               "call_with_policy": alternative_call_with_policy}
