"""Chapter 6's designs: the cascade without breakers, containment with them, the breaker's rules
on a script, the fallback cache, the timeline helpers, and nothing left running."""
from __future__ import annotations

from dataclasses import replace

import matplotlib
import pandas as pd
import pytest

from toylib import CallError
from toylib.chapters import ch06_breakers as cascade
from toylib.chapters.ch06_breakers import Knobs, Outage

matplotlib.use("Agg")

# A short outage: 0.4 s to 1.9 s of a 2.6 s run, 8 workers. Small enough for a unit test, long
# enough for the pool to fill, the cascade to last, and the breaker to open and close.
SHORT = Knobs(pool=8, rate=60, run_s=2.6, outage_start=0.4, outage_end=1.9,
              outage_delay_ms=1000, patience_ms=500, grace_s=1.5, wait_in_open=0.5,
              call_timeout_ms=100)
BREAKER = dict(failure_rate_threshold=50, window_size=10, minimum_calls=5, wait_in_open=1.0,
               permitted_in_half_open=3, slow_call_duration=0.15, slow_call_rate_threshold=100)


# -- knobs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, param", [
    ({"pool": 0}, "pool"), ({"latency_ms": -1}, "latency_ms"),
    ({"outage_start": -1}, "outage_start"), ({"outage_end": 1.0}, "outage_end"),
    ({"outage_start": 2.0, "outage_end": 1.5}, "outage_end"),
    ({"outage_delay_ms": -5}, "outage_delay_ms"), ({"rate": 0}, "rate"),
    ({"run_s": 0}, "run_s"), ({"patience_ms": 0}, "patience_ms"), ({"grace_s": -1}, "grace_s"),
    ({"call_timeout_ms": 0}, "call_timeout_ms"), ({"failure_threshold": 0}, "failure_threshold"),
    ({"failure_threshold": 101}, "failure_threshold"), ({"slow_call_ms": -1}, "slow_call_ms"),
    ({"slow_threshold": 0}, "slow_threshold"), ({"window": 0}, "window"),
    ({"minimum_calls": 0}, "minimum_calls"), ({"wait_in_open": 0}, "wait_in_open"),
    ({"half_open_calls": 0}, "half_open_calls"), ({"rate_limit": 0}, "rate_limit"),
    ({"burst": 0.5}, "burst"), ({"health_interval": 0}, "health_interval"),
    ({"seed": "x"}, "seed"),
])
def test_bad_knobs_name_the_parameter(kwargs, param):
    with pytest.raises((ValueError, TypeError), match=param):
        Knobs(**kwargs)


@pytest.mark.parametrize("kwargs, param", [
    ({"design": "sideways"}, "design"),
    ({"design": "after", "target": "database"}, "target"),
    ({"design": "after", "k": Knobs(run_s=2.0, outage_end=3.0)}, "outage_end"),
])
async def test_bad_experiment_arguments_name_the_parameter(kwargs, param, leakcheck):
    with pytest.raises((ValueError, TypeError), match=param):
        await cascade.outage(**kwargs)


# -- the breaker's rules, on a script ------------------------------------------------------------
def test_replay_follows_resilience4j_rules():
    script = [(0.0, "ok"), (0.1, "slow"), (0.2, "fail"), (0.3, "fail"), (0.4, "fail"),
              (0.5, "ok"), (1.4, "ok"), (1.5, "fail"), (1.6, "fail"), (1.7, "ok"),
              (2.8, "slow"), (2.9, "ok"), (2.95, "fail"), (3.0, "fail")]
    df = cascade.replay(script, **BREAKER)
    assert list(df["state after"]) == [
        "closed", "closed", "closed", "closed", "open",      # 3 failures of 5: 60 % >= 50 %
        "open", "open",                                      # 1.4 is not strictly after 1.4
        "half_open", "half_open", "open",                    # 2 of 3 trials failed
        "half_open", "half_open", "closed",                  # 1 of 3: below half
        "closed"]                                            # a new window, below the minimum
    assert list(df["let through"]) == [True] * 5 + [False, False] + [True] * 7
    assert list(df.loc[~df["let through"], "outcome"]) == ["-", "-"]


def test_replay_trips_on_slowness_only_when_every_call_is_slow():
    df = cascade.replay([(0.1 * i, "slow") for i in range(5)], **BREAKER)
    assert list(df["state after"]) == ["closed"] * 4 + ["open"]
    mixed = cascade.replay([(0.1 * i, "slow" if i % 2 else "ok") for i in range(10)], **BREAKER)
    assert set(mixed["state after"]) == {"closed"}


@pytest.mark.parametrize("script, param", [
    ([(0.0, "maybe")], "outcome"),
    ([(1.0, "ok"), (0.5, "ok")], "t"),
])
def test_replay_rejects_bad_scripts(script, param):
    with pytest.raises(ValueError, match=param):
        cascade.replay(script, **BREAKER)


# -- the designs --------------------------------------------------------------------------------
async def test_both_designs_serve_the_same_answers_when_nothing_fails(leakcheck):
    answers = {}
    for name, build in (("before", cascade.before), ("after", cascade.after)):
        async with build(SHORT) as topo:
            answers[name] = [
                await topo.call(topo.entry, "POST", "/checkout/7"),
                await topo.call(topo.entry, "GET", "/stock/3"),
                await topo.call(topo.entry, "GET", "/profile/4")]
    b, a = answers["before"], answers["after"]
    assert b[0] == a[0] == {"order": 7, "user": "user7", "paid": True}
    assert a[1] == {**b[1], "stale": False} and a[2] == {**b[2], "stale": False}


async def test_after_serves_reads_stale_and_fails_writes_fast_when_a_dependency_is_down(
        leakcheck):
    async with cascade.after(SHORT) as topo:
        fresh = await topo.call("gateway", "GET", "/stock/3")
        await topo.service("inventory").down()
        stale = await topo.call("gateway", "GET", "/stock/3")
        assert stale == {**fresh, "stale": True}
        with pytest.raises(CallError) as never_seen:
            await topo.call("gateway", "GET", "/stock/4")       # nothing cached: fail fast
        with pytest.raises(CallError) as checkout:
            await topo.call("gateway", "POST", "/checkout/1")   # a reservation is a write
        assert never_seen.value.status == checkout.value.status == 503
        assert topo.fallback.stale == 1


async def test_the_edge_rate_limit_turns_excess_away(leakcheck):
    k = replace(SHORT, rate_limit=1, burst=2)
    async with cascade.after(k) as topo:
        statuses = []
        for i in range(4):
            try:
                await topo.call("gateway", "GET", f"/profile/{i}")
                statuses.append(200)
            except CallError as e:
                statuses.append((e.kind, e.status))
        assert statuses[:2] == [200, 200]
        assert ("overloaded", 429) in statuses[2:]
        assert topo.limiter.rejected >= 1


# -- the outage experiment ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_runs():
    import asyncio

    async def both():
        return [await cascade.outage(d, SHORT) for d in ("before", "after")]
    return asyncio.run(both())


def test_without_breakers_the_unaffected_endpoints_fail_too(short_runs):
    before, after = short_runs
    un_b, un_a = cascade.during_outage(before), cascade.during_outage(after)
    assert un_b["success"] < 0.7 <= 0.99 <= un_a["success"]
    assert un_b["p50_ms"] > SHORT.patience_ms * 0.5 > un_a["p50_ms"]
    assert int(before.busy["busy"].max()) == SHORT.pool


def test_the_payment_breaker_opens_during_the_outage_and_closes_after(short_runs):
    after = short_runs[1]
    states = after.transitions("payment")
    assert states[0] == "closed" and states[-1] == "closed" and "open" in states
    ev = after.breaker_events
    first_open = ev[(ev.breaker == "payment") & (ev.state == "open")
                    & (ev.kind == "state_transition")]["t_s"].min()
    assert SHORT.outage_start < first_open < SHORT.outage_end
    assert after.transitions("inventory") == after.transitions("user") == ["closed"]
    assert short_runs[0].transitions() == ["closed"]      # no breaker, no events


def test_fewer_calls_reach_the_failing_service_with_a_breaker(short_runs):
    before, after = short_runs
    key = "calls to the failing service during the outage"
    assert after.counts[key] < before.counts[key]
    assert after.counts["rate limited at the edge"] == 0
    assert "admitted at the edge" not in before.counts


def test_summary_and_recovery(short_runs):
    table = cascade.summary(*short_runs)
    assert list(table.index) == ["before", "after"]
    assert table.loc["after", "unaffected recovery (s)"] == 0.0
    assert table.loc["before", "unaffected recovery (s)"] > 0
    assert table.loc["after", "checkout recovery (s)"] <= \
        SHORT.wait_in_open + SHORT.call_timeout_ms / 1000 + 0.3


def test_timeline_columns_and_times(short_runs):
    for o in short_runs:
        t = o.timeline
        assert {"t_s", "endpoint", "ok", "answered", "latency_ms", "stale", "in_outage"} <= \
            set(t.columns)
        assert t["t_s"].between(0, SHORT.run_s).all()
        assert (t["i"] % 3).map(lambda r: cascade.ENDPOINTS[r]).tolist() == t["endpoint"].tolist()
        assert not (t["ok"] & ~t["answered"]).any()
        assert (t.loc[t["answered"] & ~t["ok"], "latency_ms"] > SHORT.patience_ms).all()


def test_timeline_figure_has_a_breaker_row_only_with_breakers(short_runs):
    import matplotlib.pyplot as plt
    fig = cascade.timeline_figure(*short_runs)
    assert len(fig.axes) == 4
    plt.close(fig)
    fig = cascade.timeline_figure(short_runs[0])
    assert len(fig.axes) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="Outage"):
        cascade.timeline_figure()
    ts, levels = cascade.state_steps(short_runs[1], "payment")
    assert len(ts) == len(levels) and levels[0] == levels[-1] == 0 and max(levels) == 2


# -- reading results, on a hand-made timeline ----------------------------------------------------
def made_up(ok_by_time: dict[float, bool], endpoint="/stock") -> Outage:
    k = Knobs(outage_start=1.0, outage_end=2.0, run_s=3.0)
    rows = [{"i": n, "t_s": t, "endpoint": endpoint, "ok": ok, "answered": ok,
             "latency_ms": 20.0, "error": "" if ok else "timeout", "stale": False,
             "in_outage": 1.0 <= t < 2.0} for n, (t, ok) in enumerate(ok_by_time.items())]
    empty = pd.DataFrame()
    return Outage("made up", k, "payment", pd.DataFrame(rows),
                  pd.DataFrame(columns=["t_s", "duration_ms", "status"]),
                  pd.DataFrame(columns=["t_s", "breaker", "kind", "state", "from_state"]),
                  empty, pd.DataFrame(columns=["t_s", "busy"]))


def test_recovery_time_is_the_end_of_the_last_bad_bin_after_the_outage():
    o = made_up({0.55: True, 1.05: False, 1.95: False, 2.05: False, 2.25: False, 2.35: True,
                 2.45: True})
    assert cascade.recovery_time(o, ("/stock",)) == pytest.approx(0.3)
    assert cascade.recovery_time(made_up({1.5: False, 2.1: True}), ("/stock",)) == 0.0
    s = cascade.success_by_bin(o, ("/stock",))
    assert s.loc[0.5] == 1.0 and s.loc[2.2] == 0.0
    with pytest.raises(ValueError, match="threshold"):
        cascade.recovery_time(o, ("/stock",), threshold=2)
    with pytest.raises(ValueError, match="bin_s"):
        cascade.success_by_bin(o, ("/stock",), bin_s=0)


def test_during_outage_counts_only_requests_that_arrived_in_the_window():
    o = made_up({0.5: False, 1.0: True, 1.5: False, 1.99: True, 2.0: False})
    d = cascade.during_outage(o, ("/stock",))
    assert d["requests"] == 3 and d["succeeded"] == 2
    assert d["success"] == pytest.approx(2 / 3)
