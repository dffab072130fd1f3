"""Graceful degradation: when a dependency fails, answer with the last good answer, marked stale.

A product page can show yesterday's recommendations; it should not show an error because the
recommender is down. The answer says it is stale and how old it is, so the caller (and the
reader of a chart) can tell a degraded answer from a fresh one. With nothing remembered, or
only something older than ``max_age``, the error is raised: inventing data is worse than failing.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Callable

from toylib.core import validate as v


@dataclass(frozen=True)
class Answer:
    """A value with its freshness: ``stale`` is True when it came from the cache after a failure;
    ``age`` is seconds since it was fetched (0 for a fresh answer); ``error`` is what failed."""
    value: Any
    stale: bool
    age: float
    error: BaseException | None = None


class FallbackCache:
    """Remembers the last good answer per key and serves it when the wrapped call fails."""

    def __init__(self, *, max_age: float | None = None, fallback_on=(Exception,),
                 clock: Callable[[], float] = time.monotonic):
        self.max_age = v.optional(v.seconds, "max_age", max_age)
        if isinstance(fallback_on, type):
            fallback_on = (fallback_on,)
        if not isinstance(fallback_on, tuple) or not all(
                isinstance(t, type) and issubclass(t, Exception) for t in fallback_on):
            raise TypeError(f"fallback_on must be a tuple of Exception classes; "
                            f"got {fallback_on!r}")
        self.fallback_on = fallback_on
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self._good: dict[Hashable, tuple[float, Any]] = {}
        self.fresh = self.stale = self.misses = 0

    async def call(self, key: Hashable, fn, *args, **kwargs) -> Answer:
        """Await ``fn(*args, **kwargs)``; remember its value under ``key``, or fall back."""
        if not isinstance(key, Hashable):
            raise TypeError(f"key must be hashable; got {key!r}")
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {fn!r}")
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except self.fallback_on as exc:
            answer = self._fallback(key, exc)
            if answer is None:
                self.misses += 1
                raise
            self.stale += 1
            return answer
        self._good[key] = (self.clock(), value)
        self.fresh += 1
        return Answer(value, stale=False, age=0.0)

    def _fallback(self, key: Hashable, exc: BaseException) -> Answer | None:
        if key not in self._good:
            return None
        fetched_at, value = self._good[key]
        age = max(0.0, self.clock() - fetched_at)
        if self.max_age is not None and age > self.max_age:
            return None
        return Answer(value, stale=True, age=age, error=exc)

    def forget(self, key: Hashable) -> None:
        """Drop what is remembered for ``key`` (e.g. after the data was deleted upstream)."""
        self._good.pop(key, None)

    def __len__(self) -> int:
        return len(self._good)
