"""The TTL response cache, and the analytic hit rate checked against a simulation."""
from __future__ import annotations

import random

import pytest

from toylib.testing import FakeClock
from toylib.resilience.cache import TTLCache, ttl_hit_rate


def test_entries_expire_after_ttl_from_when_they_were_stored():
    clock = FakeClock(1000.0)
    c = TTLCache(10, clock=clock)
    c.put("a", 1)
    clock.advance(9.99)
    assert c.get("a") == 1               # a read does not extend the entry
    clock.advance(0.01)
    assert c.get("a") is None
    assert c.get("a", "dflt") == "dflt"
    assert (c.hits, c.misses, c.expired) == (1, 2, 1)
    assert len(c) == 0


def test_put_refreshes_the_expiry():
    clock = FakeClock(1000.0)
    c = TTLCache(10, clock=clock)
    c.put("a", 1)
    clock.advance(8)
    c.put("a", 2)
    clock.advance(8)
    assert c.get("a") == 2


def test_hit_and_miss_counters_and_rate():
    c = TTLCache(60, clock=FakeClock(1000.0))
    assert c.hit_rate != c.hit_rate      # NaN before any read
    assert c.get("x") is None
    c.put("x", {"page": 1})
    for _ in range(3):
        assert c.get("x") == {"page": 1}
    stats = c.stats()
    assert stats == {"hits": 3, "misses": 1, "hit_rate": 0.75, "expired": 0, "evicted": 0,
                     "entries": 1}


def test_cached_falsy_values_are_hits():
    c = TTLCache(60, clock=FakeClock(1000.0))
    c.put("empty", [])
    assert c.get("empty", "missing") == []
    assert c.hits == 1


def test_max_entries_evicts_the_oldest_stored():
    clock = FakeClock(1000.0)
    c = TTLCache(100, max_entries=3, clock=clock)
    for k in "abc":
        c.put(k, k.upper())
        clock.advance(1)
    c.put("a", "A2")           # re-stored: now the newest
    c.put("d", "D")            # evicts b, the oldest stored
    assert len(c) == 3 and c.evicted == 1
    assert c.get("b") is None
    assert [c.get(k) for k in "acd"] == ["A2", "C", "D"]
    c.put("e", "E")
    assert c.get("c") is None and c.evicted == 2
    c.clear()
    assert len(c) == 0


@pytest.mark.parametrize("make, param", [
    (lambda: TTLCache(0), "ttl"),
    (lambda: TTLCache(-1), "ttl"),
    (lambda: TTLCache(1, max_entries=0), "max_entries"),
    (lambda: ttl_hit_rate([1.0], 0), "ttl"),
    (lambda: ttl_hit_rate([0.0, 0.0], 1), "rates"),
    (lambda: ttl_hit_rate([], 1), "rates"),
])
def test_bad_parameters_name_the_parameter(make, param):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value).startswith(param)


def test_ttl_hit_rate_limits():
    assert ttl_hit_rate([1.0], 1.0) == pytest.approx(0.5)
    assert ttl_hit_rate([100.0], 10.0) == pytest.approx(1000 / 1001)
    assert ttl_hit_rate([1e-6], 1.0) == pytest.approx(0.0, abs=1e-5)
    # weighted by traffic: a hot key dominates
    assert ttl_hit_rate([9.0, 1.0], 1.0) == pytest.approx(0.9 * 0.9 + 0.1 * 0.5)
    assert ttl_hit_rate([1.0, 0.0], 1.0) == pytest.approx(0.5)


def simulate(rates, ttl, horizon, seed) -> tuple[float, int]:
    """Poisson arrivals per key, merged in time order, through a real TTLCache."""
    rng = random.Random(seed)
    events = []
    for key, lam in enumerate(rates):
        t = rng.expovariate(lam)
        while t < horizon:
            events.append((t, key))
            t += rng.expovariate(lam)
    events.sort()
    clock = FakeClock(0.0)
    cache = TTLCache(ttl, clock=clock)
    for t, key in events:
        clock.t = t
        if cache.get(key) is None:
            cache.put(key, "page")
    return cache.hit_rate, len(events)


@pytest.mark.parametrize("s, ttl", [(1.0, 5.0), (0.6, 2.0), (1.2, 30.0)])
def test_ttl_hit_rate_matches_a_poisson_simulation(s, ttl):
    users, total_rate = 200, 50.0
    weights = [1 / r ** s for r in range(1, users + 1)]
    rates = [total_rate * w / sum(weights) for w in weights]
    expected = ttl_hit_rate(rates, ttl)
    got, n = simulate(rates, ttl, horizon=400.0, seed=1)
    assert n > 15_000
    assert abs(got - expected) < 0.02, (got, expected)


def test_the_simulation_can_tell_a_wrong_formula():
    """The check above bites: the naive λT (no renewal) or a read-extended TTL would differ."""
    rates = [2.0, 0.5, 0.1]
    got, _ = simulate(rates, 3.0, horizon=3000.0, seed=2)
    total = sum(rates)
    naive = sum((lam / total) * min(1.0, lam * 3.0) for lam in rates)
    assert abs(got - ttl_hit_rate(rates, 3.0)) < 0.02
    assert abs(got - naive) > 0.1
