"""Fault injection in Toxiproxy's vocabulary, applied inside each toy server.

A *toxic* says what goes wrong (latency, an error status, a hang, a reset, a gradual slowdown);
a *rule* says where (the whole service or one route), how often (``toxicity``, the probability
that the toxic applies to a request) and when (a window in seconds after the rule was added).
Rules can be added and removed while the topology runs.

Every random choice is seeded and keyed by (seed, service, rule, trace id, path, n-th time this
trace asked this path), not by arrival order, so a run replays the same faults even when
concurrent requests interleave differently.
"""
from __future__ import annotations

import itertools
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from toylib.core import validate as v

DISTRIBUTIONS = ("fixed", "uniform", "normal", "exponential", "lognormal")
MAX_MS = v.MAX_SECONDS * 1000.0     # the longest injected delay: a day
# (trace, path) pairs whose request count is remembered (see Faults.decide); beyond this the
# oldest are forgotten, so a long-running service's memory stays bounded.
MAX_SEEN = 100_000


@dataclass(frozen=True)
class Latency:
    """Delay each request by ``ms`` (± ``jitter_ms``), drawn from a distribution.

    fixed: exactly ms.  uniform: ms ± jitter_ms.  normal: mean ms, sd jitter_ms (clipped at 0).
    exponential: mean ms.  lognormal: median ms, shape sigma = jitter_ms / ms (a long tail).
    """
    ms: float
    jitter_ms: float = 0.0
    distribution: str = "uniform"

    def __post_init__(self):
        v.non_negative("ms", self.ms, high=MAX_MS)
        v.non_negative("jitter_ms", self.jitter_ms, high=MAX_MS)
        v.one_of("distribution", self.distribution, DISTRIBUTIONS)
        if self.distribution == "uniform" and self.jitter_ms > self.ms:
            raise ValueError(f"jitter_ms must be <= ms ({self.ms}) for a uniform latency; "
                             f"got {self.jitter_ms!r}")

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds."""
        ms, j = self.ms, self.jitter_ms
        if self.distribution == "fixed" or (j == 0 and self.distribution in ("uniform", "normal")):
            d = ms
        elif self.distribution == "uniform":
            d = rng.uniform(ms - j, ms + j)
        elif self.distribution == "normal":
            d = max(0.0, rng.gauss(ms, j))
        elif self.distribution == "exponential":
            d = rng.expovariate(1.0 / ms) if ms > 0 else 0.0
        else:  # lognormal: median ms
            d = ms * rng.lognormvariate(0.0, j / ms) if ms > 0 else 0.0
        return d / 1000.0


@dataclass(frozen=True)
class SlowDown:
    """Latency that grows while the rule is active: ``start_ms`` + ``ms_per_s`` × seconds active.

    The way a dependency degrades under a leak or a filling disk, rather than failing at once.
    """
    ms_per_s: float
    start_ms: float = 0.0
    max_ms: float = 60_000.0

    def __post_init__(self):
        v.non_negative("ms_per_s", self.ms_per_s, high=MAX_MS)
        v.non_negative("start_ms", self.start_ms, high=MAX_MS)
        v.positive("max_ms", self.max_ms, high=MAX_MS)


@dataclass(frozen=True)
class Error:
    """Answer with an HTTP error status (5xx by default) with probability ``p``."""
    p: float = 1.0
    status: int = 503

    def __post_init__(self):
        v.probability("p", self.p)
        v.number("status", self.status, low=400, high=599, integer=True)


@dataclass(frozen=True)
class Hang:
    """Accept the connection and the request, never answer (Toxiproxy's ``timeout`` toxic, 0)."""


@dataclass(frozen=True)
class Reset:
    """Close the connection without an answer (Toxiproxy's ``reset_peer``)."""


TOXICS = (Latency, SlowDown, Error, Hang, Reset)


@dataclass
class Rule:
    toxic: object
    route: str | None = None      # a path prefix or route pattern; None = every route
    toxicity: float = 1.0
    start: float = 0.0            # seconds after the rule is added
    end: float | None = None      # seconds after the rule is added; None = until removed
    id: int = 0
    added_at: float = 0.0

    def matches(self, route: str, path: str) -> bool:
        return self.route is None or self.route == route or path.startswith(self.route)

    def active(self, now: float) -> bool:
        t = now - self.added_at
        return t >= self.start and (self.end is None or t < self.end)


@dataclass
class Decision:
    """What the server does with one request."""
    delay: float = 0.0
    status: int | None = None
    hang: bool = False
    reset: bool = False
    applied: list = field(default_factory=list)


class Faults:
    """The fault rules of one service. ``svc.faults.add(Latency(20))``, ``.clear()``."""

    def __init__(self, service: str, seed: int = 0, clock=time.monotonic):
        self.service = v.name("service", service)
        self.seed = v.seed("seed", seed)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self.rules: list[Rule] = []
        self._ids = itertools.count(1)
        # (trace id, path) -> requests seen, oldest first; at most MAX_SEEN pairs are kept
        self._seen: OrderedDict[tuple, int] = OrderedDict()
        self._untraced = itertools.count()

    def add(self, toxic, *, route: str | None = None, toxicity: float = 1.0,
            start: float = 0.0, end: float | None = None) -> Rule:
        """Add a toxic; returns the rule (pass it to :meth:`remove`)."""
        if not isinstance(toxic, TOXICS):
            raise TypeError(f"toxic must be one of {', '.join(t.__name__ for t in TOXICS)}; "
                            f"got {toxic!r}")
        v.probability("toxicity", toxicity)
        v.seconds("start", start, zero=True)
        if end is not None:   # start is checked on its own first: this names end only if end is
            v.number("end", end, low=start, low_open=True, high=v.MAX_SECONDS)
        if route is not None and (not isinstance(route, str) or not route.startswith("/")):
            raise ValueError(f"route must be None or a path starting with '/'; got {route!r}")
        rule = Rule(toxic, route, toxicity, start, end, next(self._ids), self.clock())
        self.rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        if rule not in self.rules:
            raise ValueError(f"rule is not a rule of service {self.service!r}: {rule!r}")
        self.rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule (Toxiproxy's reset)."""
        self.rules.clear()

    def reseed(self, seed: int) -> None:
        """Start the random choices again from ``seed`` (a replay)."""
        self.seed = v.seed("seed", seed)
        self._seen.clear()
        self._untraced = itertools.count()

    def decide(self, route: str, path: str, trace_id: str | None) -> Decision:
        decision = Decision()
        if not self.rules:
            return decision
        now = self.clock()
        if trace_id is None:
            trace_id = f"untraced{next(self._untraced)}"
        key = (trace_id, path)
        nth = self._seen.pop(key, 0)
        self._seen[key] = nth + 1          # now the newest
        if len(self._seen) > MAX_SEEN:     # forget the pair not asked for the longest
            self._seen.popitem(last=False)
        for rule in self.rules:
            if not (rule.matches(route, path) and rule.active(now)):
                continue
            rng = random.Random(f"{self.seed}|{self.service}|{rule.id}|{trace_id}|{path}|{nth}")
            if rng.random() >= rule.toxicity:
                continue
            t = rule.toxic
            if isinstance(t, Latency):
                decision.delay += t.sample(rng)
            elif isinstance(t, SlowDown):
                active_for = max(0.0, now - rule.added_at - rule.start)
                decision.delay += min(t.max_ms, t.start_ms + t.ms_per_s * active_for) / 1000.0
            elif isinstance(t, Error):
                if rng.random() < t.p:
                    decision.status = t.status
                else:
                    continue
            elif isinstance(t, Hang):
                decision.hang = True
            elif isinstance(t, Reset):
                decision.reset = True
            decision.applied.append(type(t).__name__)
        return decision
