"""A bulkhead: a cap on how many calls to one dependency may be in flight at once.

Named after a ship's watertight compartments: when one dependency hangs, only the calls in its
compartment wait, and the rest of the service keeps its connections, memory and event-loop
time. As in resilience4j's default (no wait), a full bulkhead fails fast with
:class:`BulkheadFull` and the function never runs: queueing would only move the pile-up.
"""
from __future__ import annotations

import inspect

from toylib.core import validate as v


class BulkheadFull(Exception):
    """The bulkhead had no free slot; the call was not attempted."""

    def __init__(self, name: str, max_concurrent: int):
        super().__init__(f"bulkhead {name!r} is full ({max_concurrent} calls in flight)")
        self.bulkhead = name
        self.max_concurrent = max_concurrent


class Bulkhead:
    """At most ``max_concurrent`` calls inside at once; the next one is rejected immediately.

    Use ``async with bulkhead: ...`` or ``await bulkhead.call(fn, *args)``. The slot is given
    back however the block ends: return, exception or cancellation.
    """

    def __init__(self, name: str, max_concurrent: int = 25):
        self.name = v.name("name", name)
        self.max_concurrent = v.positive("max_concurrent", max_concurrent, integer=True,
                                         high=v.MAX_WORKERS)
        self.active = 0
        self.admitted = 0
        self.rejected = 0
        self.peak = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free (the synchronous form; pair it with :meth:`release`)."""
        if self.active >= self.max_concurrent:
            self.rejected += 1
            return False
        self.active += 1
        self.admitted += 1
        self.peak = max(self.peak, self.active)
        return True

    def release(self) -> None:
        """Give a slot back."""
        if self.active <= 0:
            raise RuntimeError(f"bulkhead {self.name!r}: release() without a matching acquire")
        self.active -= 1

    async def __aenter__(self) -> Bulkhead:
        if not self.try_acquire():
            raise BulkheadFull(self.name, self.max_concurrent)
        return self

    async def __aexit__(self, *exc_info) -> bool:
        self.release()
        return False

    async def call(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` (awaited if it returns an awaitable) inside the bulkhead."""
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {fn!r}")
        async with self:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

    def __repr__(self) -> str:
        return (f"Bulkhead({self.name!r}, {self.active}/{self.max_concurrent} active, "
                f"admitted={self.admitted}, rejected={self.rejected})")
