"""A response cache with a time to live (TTL), as a BFF keeps in front of its backends.

Entries expire ``ttl`` seconds after they were stored (not after their last read: a popular
page is still refreshed every ``ttl``). The clock is injectable so tests need no sleeping.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from toylib.core import validate as v


class TTLCache:
    def __init__(self, ttl: float, *, max_entries: int = 10_000, clock=time.monotonic):
        self.ttl = v.seconds("ttl", ttl)
        self.max_entries = v.positive("max_entries", max_entries, integer=True, high=v.MAX_ITEMS)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self._data: OrderedDict = OrderedDict()   # key -> (expires_at, value), oldest first
        self.hits = self.misses = self.expired = self.evicted = 0

    def get(self, key, default=None):
        entry = self._data.get(key)
        if entry is not None and entry[0] > self.clock():
            self.hits += 1
            return entry[1]
        if entry is not None:
            self.expired += 1
            del self._data[key]
        self.misses += 1
        return default

    def put(self, key, value) -> None:
        self._data.pop(key, None)
        self._data[key] = (self.clock() + self.ttl, value)
        while len(self._data) > self.max_entries:   # least recently stored goes first
            self._data.popitem(last=False)
            self.evicted += 1

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else float("nan")

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate,
                "expired": self.expired, "evicted": self.evicted, "entries": len(self)}


def ttl_hit_rate(rates, ttl: float) -> float:
    """Expected hit rate of a TTL cache under Poisson arrivals with per-key ``rates`` (1/s).

    A key whose entry is refreshed only on a miss, with arrivals at rate λ, hits with
    probability λT / (1 + λT) (renewal argument: each miss opens a window of T seconds holding
    λT hits on average). Weighted by each key's share of the traffic.
    """
    v.seconds("ttl", ttl)
    if isinstance(rates, (str, bytes)) or not hasattr(rates, "__iter__"):
        raise TypeError(f"rates must be a list of per-key request rates (1/s); got {rates!r}")
    rates = [v.non_negative("rates", lam, high=v.MAX_RATE) for lam in rates]
    total = float(sum(rates))
    if total <= 0:
        raise ValueError("rates must contain at least one positive rate")
    return sum((lam / total) * (lam * ttl) / (1.0 + lam * ttl) for lam in rates if lam > 0)
