"""Retries that do not turn a small outage into a large one.

A retry is a second request sent to a service that just failed; if every client does it, the
service gets more load exactly when it can take less. So, following the AWS Builders' Library
and the Google SRE book, retries here are:

* spaced by randomized exponential backoff (:func:`backoff_delays`), so clients that failed
  together do not come back together;
* limited per request (``attempts``) *and* per process (:class:`RetryBudget`), so retries stay a
  bounded fraction of traffic however long the outage lasts;
* only for idempotent calls, and never after an explicit :class:`Overloaded` answer: a server
  that says "I am overloaded" is asking for less traffic, not more;
* never past the request's deadline (:func:`toylib.core.deadline.current`): when the time left
  would not cover the backoff and one more attempt, the retry is not made (gRPC's rule: one
  deadline covers all attempts).

Retry at one layer only: three tries at each of five layers is 3**5 = 243 times the load.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterator

from toylib.core import validate as v
from toylib.core import deadline as dl

POLICIES = ("none", "full", "equal", "decorrelated")

MAX_DELAYS = 1_000_000      # delays backoff_delays lists at once

# Token arithmetic in floats drifts (ten deposits of 0.1 make 0.999...); forgive the drift.
_EPS = 1e-9


class Overloaded(Exception):
    """The server said it is overloaded (e.g. 503 with a marker, or 429). Never retried."""

    def __init__(self, message: str = "overloaded", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _temp(base: float, cap: float, k: int) -> float:
    # The exponent is clamped so that a long retry loop cannot overflow float conversion.
    return min(cap, base * 2.0 ** min(k, 1000))


def _delays(policy: str, base: float, cap: float, rng: random.Random | None) -> Iterator[float]:
    prev = base
    k = 0
    while True:
        temp = _temp(base, cap, k)
        if policy == "none":
            yield temp
        elif policy == "full":
            yield rng.uniform(0, temp)
        elif policy == "equal":
            yield temp / 2 + rng.uniform(0, temp / 2)
        else:  # decorrelated: grows from the previous delay, not from the attempt number
            prev = min(cap, rng.uniform(base, 3 * prev))
            yield prev
        k += 1


def _check_backoff(policy, base, cap, rng) -> None:
    v.one_of("policy", policy, POLICIES)
    v.seconds("base", base)       # each of the pair on its own first, so a bad one is named
    v.seconds("cap", cap)
    if cap < base:
        raise ValueError(f"cap must be a number >= base ({base!r}); got cap={cap!r} "
                         f"(raise cap or lower base)")
    if policy != "none" and not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random (seed it to make runs repeatable) for "
                        f"policy {policy!r}; got {rng!r}")


def backoff_delays(policy: str, base: float, cap: float, attempts: int,
                   rng: random.Random | None = None) -> list[float]:
    """The first ``attempts`` delays (seconds) of a backoff policy; delay k precedes retry k+1.

    With temp = min(cap, base * 2**k):
    ``"none"`` temp; ``"full"`` U(0, temp); ``"equal"`` temp/2 + U(0, temp/2);
    ``"decorrelated"`` min(cap, U(base, 3 * previous)), previous starting at base.
    ``rng`` (a seeded ``random.Random``) is required for every policy but ``"none"``.
    """
    _check_backoff(policy, base, cap, rng)
    attempts = v.non_negative("attempts", attempts, integer=True, high=MAX_DELAYS)
    return list(islice(_delays(policy, base, cap, rng), attempts))


class RetryBudget:
    """A token bucket that keeps retries to a fraction of requests (SRE book, Envoy, Finagle).

    The rule: every request deposits ``ratio`` tokens, every retry spends one whole token, and
    a retry with no whole token available is not made. The balance starts at ``initial``
    (default: full) and never exceeds ``burst``, so a quiet client can still retry a few times,
    and ``per_second`` tokens trickle in so that a client with very little traffic is not
    starved. Hence, over any run:

        retries <= initial + ratio * requests + per_second * elapsed      (see :meth:`bound`)

    With ratio 0.1 a long outage costs at most about 10 % extra load, not 3x.
    """

    def __init__(self, ratio: float = 0.1, *, burst: float = 10.0, initial: float | None = None,
                 per_second: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.ratio = v.probability("ratio", ratio)
        # A bucket that cannot hold one whole token could never pay for a retry.
        self.burst = v.number("burst", burst, low=1, high=v.MAX_ITEMS)
        self.initial = v.number("initial", self.burst if initial is None else initial,
                                low=0, high=self.burst)
        self.per_second = v.non_negative("per_second", per_second, high=v.MAX_RATE)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self.tokens = float(self.initial)
        self.requests = self.retries = self.refused = 0
        self._started = self._last = clock()

    def _refill(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self.tokens = min(self.burst, self.tokens + self.per_second * elapsed)

    def on_request(self) -> None:
        """A new request (not a retry) arrived: deposit ``ratio`` tokens."""
        self._refill()
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        """May a retry be sent? If so, its token is taken."""
        self._refill()
        if self.tokens + _EPS >= 1.0:
            self.tokens = max(0.0, self.tokens - 1.0)
            self.retries += 1
            return True
        self.refused += 1
        return False

    def bound(self) -> float:
        """The most retries this budget can have allowed so far (the rule above)."""
        elapsed = max(0.0, self._last - self._started)
        return self.initial + self.ratio * self.requests + self.per_second * elapsed


@dataclass
class RetryStats:
    """Counters over every :func:`retry` call that shares this object."""
    calls: int = 0            # retry() invocations (requests)
    attempts: int = 0         # times fn actually ran
    retries: int = 0          # attempts after the first
    successes: int = 0
    failures: int = 0         # calls that ended in an exception
    last_attempts: int = 0    # attempts made by the most recent call
    # reason -> count, reasons: limit, budget, deadline, overloaded, not_idempotent,
    # not_retryable
    gave_up: dict = field(default_factory=dict)

    def _give_up(self, reason: str) -> None:
        self.failures += 1
        self.gave_up[reason] = self.gave_up.get(reason, 0) + 1


def _why_not_retry(exc: Exception, retry_on: tuple, retryable, idempotent: bool) -> str | None:
    if isinstance(exc, Overloaded):
        return "overloaded"
    if not isinstance(exc, retry_on) or (retryable is not None and not retryable(exc)):
        return "not_retryable"
    if not idempotent:
        # The first attempt may have taken effect even though it failed (e.g. a timeout).
        return "not_idempotent"
    return None


def _no_time_for(delay: float, min_attempt: float) -> bool:
    """True when the inherited deadline cannot fit the backoff and one more attempt."""
    deadline = dl.current()
    return deadline is not None and deadline.remaining() - delay <= min_attempt


def _check_retry(fn, attempts, policy, base, cap, budget, retry_on, retryable, idempotent,
                 rng, min_attempt=0.0) -> tuple[int, tuple]:
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {fn!r}")
    attempts = v.positive("attempts", attempts, integer=True, high=v.MAX_ATTEMPTS)
    v.seconds("min_attempt", min_attempt, zero=True)
    _check_backoff(policy, base, cap, rng)
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
        raise TypeError(f"retry_on must be a tuple of exception classes; got {retry_on!r}")
    if retryable is not None and not callable(retryable):
        raise TypeError(f"retryable must be a predicate exc -> bool; got {retryable!r}")
    if not isinstance(idempotent, bool):
        raise TypeError(f"idempotent must be True or False; got {idempotent!r}")
    if budget is not None and not isinstance(budget, RetryBudget):
        raise TypeError(f"budget must be a RetryBudget or None; got {budget!r}")
    return attempts, retry_on


async def retry(fn, *, attempts: int = 3, policy: str = "full", base: float = 0.1,
                cap: float = 10.0, budget: RetryBudget | None = None,
                retry_on: tuple = (Exception,), retryable: Callable | None = None,
                idempotent: bool = True, rng: random.Random | None = None,
                sleep=asyncio.sleep, stats: RetryStats | None = None,
                min_attempt: float = 0.0):
    """Await ``fn()``, retrying failures with backoff; return its result.

    ``attempts`` is the per-request limit (the first try included). An exception is retried
    only if it is an instance of ``retry_on``, ``retryable(exc)`` (when given) is true, it is
    not :class:`Overloaded`, the call is ``idempotent``, attempts remain, the inherited
    deadline (:func:`toylib.core.deadline.current`, if any) leaves more than ``min_attempt`` seconds
    after the backoff delay, and ``budget`` (when given) has a token. Otherwise the last
    exception is raised. Cancellation is never retried.
    ``stats`` (a :class:`RetryStats`) receives the counters; ``sleep`` can be faked in tests.
    ``fn`` takes no arguments (use a lambda or functools.partial) so that its own parameters
    can never collide with these.
    """
    attempts, retry_on = _check_retry(fn, attempts, policy, base, cap, budget, retry_on,
                                      retryable, idempotent, rng, min_attempt)
    if stats is not None and not isinstance(stats, RetryStats):
        raise TypeError(f"stats must be a RetryStats or None; got {stats!r}")
    if not callable(sleep):
        raise TypeError(f"sleep must be an async function of seconds; got {sleep!r}")
    stats = stats if stats is not None else RetryStats()
    stats.calls += 1
    if budget is not None:
        budget.on_request()
    delays = _delays(policy, base, cap, rng)
    made = 0    # local, not on stats: concurrent calls may share one stats object
    while True:
        made += 1
        stats.attempts += 1
        stats.last_attempts = made
        try:
            result = await fn()
        except Exception as exc:
            reason = _why_not_retry(exc, retry_on, retryable, idempotent)
            if reason is None and made >= attempts:
                reason = "limit"
            delay = next(delays) if reason is None else 0.0
            # Checked before the budget, so that a retry the deadline forbids costs no token.
            if reason is None and _no_time_for(delay, min_attempt):
                reason = "deadline"
            if reason is None and budget is not None and not budget.try_spend():
                reason = "budget"
            if reason is not None:
                stats._give_up(reason)
                raise
            stats.retries += 1
            await sleep(delay)
        else:
            stats.successes += 1
            return result
