"""Chapter 5's designs: the pool fills without timeouts, the fix answers everything in time,
retries amplify exactly 3^k, budgets and deadlines bound them, and nothing is left running."""
from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from dataclasses import replace

import pandas as pd
import pytest

from toylib.testing import FakeClock
from toylib import CallError, claims
from toylib.chapters import ch05_timeouts as timeouts
from toylib.core import deadline as dl
from toylib.resilience.retry import RetryStats, retry
from toylib.chapters.ch05_timeouts import HEALTHY, HUNG, Knobs

FAST = Knobs(pool=2, latency_ms=20, sigma=0.3, hang_p=1.0, timeout_ms=60, attempts=2,
             base_ms=5, cap_ms=10, deadline_ms=400)


# -- knobs and small functions ----------------------------------------------------------------
@pytest.mark.parametrize("kwargs, param", [
    ({"pool": 0}, "pool"), ({"pool": 2.5}, "pool"), ({"latency_ms": 0}, "latency_ms"),
    ({"sigma": -1}, "sigma"), ({"hang_p": 1.5}, "hang_p"), ({"timeout_ms": 0}, "timeout_ms"),
    ({"attempts": 0}, "attempts"), ({"policy": "random"}, "policy"),
    ({"base_ms": 0}, "base_ms"), ({"base_ms": 50, "cap_ms": 10}, "cap_ms"),
    ({"budget_ratio": 2}, "budget_ratio"), ({"budget_burst": 0.5}, "budget_burst"),
    ({"deadline_ms": 0}, "deadline_ms"), ({"reply_ms": -1}, "reply_ms"), ({"seed": 1.5}, "seed"),
])
def test_bad_knobs_name_the_parameter(kwargs, param):
    with pytest.raises((ValueError, TypeError), match=param):
        Knobs(**kwargs)


def test_a_budget_of_none_means_no_budget():
    assert timeouts.design("after", Knobs(budget_ratio=None)).budget is None
    assert timeouts.design("after", Knobs(budget_ratio=0.0)).budget is not None


def test_the_contract():
    assert timeouts.CHAPTER == "ch05_timeouts"
    assert set(timeouts.DESIGNS) == {"before", "after"}
    for name in timeouts.DESIGNS:
        d = timeouts.design(name)
        assert d.name == name and d.chapter == timeouts.CHAPTER and not d.running
        assert "api" in str(d.diagram()) and d.topology.service("api")
        assert not hasattr(d.topology, "retry_stats") and not hasattr(d.topology, "budget")
    with pytest.raises(ValueError, match="name"):
        timeouts.design("sideways")
    with pytest.raises(TypeError, match="knobs"):
        timeouts.design("after", {"pool": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        Knobs().pool = 3
    assert [c.id for c in timeouts.CLAIMS] == ["ch05_timeouts.exhaustion",
                                               "ch05_timeouts.no_hanging"]


@pytest.mark.parametrize("exc, expected", [
    (CallError("a", "b", "/", "timeout"), True),
    (CallError("a", "b", "/", "reset"), True),
    (CallError("a", "b", "/", "refused"), True),
    (CallError("a", "b", "/", "http", 503), True),
    (CallError("a", "b", "/", "http", 502), True),
    (CallError("a", "b", "/", "http", 404), False),
    (CallError("a", "b", "/", "overloaded", 503), False),
    (CallError("a", "b", "/", "deadline"), False),
    (ValueError("not a call"), False),
])
def test_transient_retries_only_what_may_succeed_next_time(exc, expected):
    assert timeouts.transient(exc) is expected


def test_lognormal_quantile_and_survival_are_inverse():
    for q in (0.5, 0.9, 0.99, 0.999):
        t = timeouts.lognormal_quantile(q, 20, 0.5)
        assert timeouts.lognormal_survival(t, 20, 0.5) == pytest.approx(1 - q, rel=1e-9)
    assert timeouts.lognormal_quantile(0.5, 20, 0.5) == pytest.approx(20)
    assert timeouts.lognormal_survival(0, 20, 0.5) == 1.0


def test_false_timeout_rate_and_choose_timeout():
    lat = list(range(1, 1001))            # 1 .. 1000 ms
    rates = timeouts.false_timeout_rate(lat, [0, 500, 990, 1000])
    assert list(rates) == [1.0, 0.5, 0.01, 0.0]
    assert timeouts.choose_timeout(lat, 0.001) == pytest.approx(999.001)
    assert timeouts.choose_timeout(lat, 0.01) == pytest.approx(990.01)


@pytest.mark.parametrize("call, param", [
    (lambda: timeouts.false_timeout_rate([], [1]), "latencies_ms"),
    (lambda: timeouts.choose_timeout([1, 2], 0), "false_timeouts"),
    (lambda: timeouts.choose_timeout([1, 2], 1), "false_timeouts"),
    (lambda: timeouts.choose_timeout([], 0.01), "latencies_ms"),
    (lambda: timeouts.lognormal_survival(10, 0, 0.5), "median_ms"),
    (lambda: timeouts.lognormal_survival(10, 20, 0), "sigma"),
    (lambda: timeouts.lognormal_quantile(1.0, 20, 0.5), "q"),
    (lambda: timeouts.layered(0), "k_layers"),
    (lambda: timeouts.layered(2, tries=0), "tries"),
    (lambda: timeouts.layered(2, retry_at="middle"), "retry_at"),
    (lambda: timeouts.layered(2, budget_ratio=3), "budget_ratio"),
    (lambda: timeouts.recovering_dependency(capacity=0), "capacity"),
    (lambda: timeouts.recovering_dependency(service_ms=0), "service_ms"),
    (lambda: timeouts.hang_schedule(Knobs(), -1), "n"),
    (lambda: timeouts.fill_time(Knobs(), rate=0, seconds=1), "rate"),
])
def test_bad_arguments_name_the_parameter(call, param):
    with pytest.raises((ValueError, TypeError), match=param):
        call()


@pytest.mark.parametrize("coro, param", [
    (lambda: timeouts.amplification(2, requests=0), "requests"),
    (lambda: timeouts.shared_recovery("sometimes"), "policy"),
    (lambda: timeouts.shared_recovery("full", clients=0), "clients"),
    (lambda: timeouts.shared_recovery("full", down_s=-1), "down_s"),
    (lambda: timeouts.shared_recovery("full", budget_ratio=2), "budget_ratio"),
    (lambda: timeouts.count_timeouts(FAST, 0), "timeout_ms"),
    (lambda: timeouts.deadlines(FAST, deadline_ms=0), "deadline_ms"),
    (lambda: timeouts.deadlines(FAST, deadline_ms=100, n=10**9), "n"),
])
async def test_bad_arguments_of_experiments_name_the_parameter(coro, param, leakcheck):
    with pytest.raises((ValueError, TypeError), match=param):
        await coro()


async def test_mixed_load_rejects_bad_arguments(leakcheck):
    async with timeouts.design("before", FAST) as d:
        for kwargs, param in (({"rate": 0}, "rate"), ({"seconds": -1}, "seconds"),
                              ({"grace": -1}, "grace"), ({"sample_every": 0}, "sample_every"),
                              ({"rate": 1e300}, "rate"), ({"seconds": math.inf}, "seconds"),
                              ({"rate": math.nan}, "rate")):
            with pytest.raises((ValueError, TypeError), match=param):
                await timeouts.mixed_load(d, **kwargs)
    with pytest.raises(RuntimeError, match="not running"):
        await timeouts.mixed_load(timeouts.design("before", FAST))
    with pytest.raises(TypeError, match="design"):
        await timeouts.mixed_load("before")


# -- before: the pool fills and the healthy endpoint starves -----------------------------------
async def test_without_timeouts_hung_calls_starve_the_healthy_endpoint(leakcheck):
    async with timeouts.design("before", FAST) as d:
        for i in range(FAST.pool):
            d.topology.spawn(d.call("api", "GET", f"{HUNG}/{i}"))
        await asyncio.sleep(0.2)
        assert d.busy_workers() == FAST.pool
        with pytest.raises(CallError) as e:
            await d.call("api", "GET", f"{HEALTHY}/1", timeout=0.3)
        assert e.value.kind == "timeout"
        assert d.service("catalog").handled == 0
    assert d.busy_workers() == 0        # the block's end cancelled the hung calls


async def test_the_hang_schedule_predicts_which_requests_hang(leakcheck):
    k = replace(FAST, pool=50, hang_p=0.3, seed=3)     # a pool too big to fill: no queueing
    async with timeouts.design("before", k) as d:
        res, busy = await timeouts.mixed_load(d, rate=80, seconds=0.5, grace=1.0)
    hung = res.df[(res.df.error == "unfinished")]
    assert set(hung["i"]) == set(timeouts.hang_schedule(k, len(res.df)))
    assert (hung["endpoint"] == HUNG).all()
    assert res.df.loc[res.df.endpoint == HEALTHY, "ok"].all()
    assert busy["busy"].max() >= len(hung)


def test_fill_time_is_the_arrival_of_the_pool_th_hang():
    k = Knobs(pool=3, hang_p=0.5, seed=1)
    hangs = timeouts.hang_schedule(k, 100)
    assert hangs == sorted(hangs) and all(i % 2 == 1 for i in hangs)
    assert timeouts.fill_time(k, rate=50, seconds=2) == hangs[2] / 50
    assert timeouts.fill_time(replace(k, hang_p=0.0), rate=50, seconds=2) is None


# -- after: every request is answered in time ---------------------------------------------------
async def test_with_timeouts_every_request_is_answered_and_the_pool_stays_free(leakcheck):
    k = replace(FAST, pool=8)          # 20 hung calls/s of at most ~130 ms: about 3 workers
    async with timeouts.design("after", k) as d:
        res, busy = await timeouts.mixed_load(d, rate=40, seconds=0.5, grace=0.5)
        stats = d.retry_stats
    summary = timeouts.starvation_summary(res)
    assert summary["hung"].sum() == 0                   # counts: the same on a busy machine
    assert summary.loc[HUNG, "success"] == 0.0          # every recommender call hangs: 504s
    assert summary.loc[HEALTHY, "success"] > 0.5        # the catalog is healthy
    assert busy["busy"].max() <= k.pool
    assert stats.retries > 0 and stats.failures == stats.calls


async def test_the_api_answers_before_an_inherited_deadline(leakcheck):
    # The deadline travels as a header; the client itself waits far longer, so that a busy
    # machine cannot make the client's own clock decide instead of the API's.
    k = replace(FAST, timeout_ms=1000, deadline_ms=None, reply_ms=10)
    async with timeouts.design("after", k) as d:
        reply = await d.call("api", "GET", f"{HUNG}/1", raw=True, timeout=10,
                             headers={dl.HEADER: "300"})
    assert reply.status == 504 and "deadline" in reply.json()["error"]


async def test_deadline_experiment_keeps_every_request_inside_its_deadline(leakcheck):
    k = replace(FAST, hang_p=0.5, timeout_ms=80, attempts=3)
    r = await timeouts.deadlines(k, deadline_ms=120, n=8, rate=40)
    prop, fixed = r.runs["deadline propagated"], r.runs["per-call timeouts only"]
    assert len(prop) == len(fixed) == 8
    assert prop["over_ms"].max() < r.margin_ms and r.late("deadline propagated") == 0
    assert prop["outcome"].isin(["ok", "HTTP 504", "deadline"]).all()
    assert prop.attrs["still_working_after"] == fixed.attrs["still_working_after"] == 0
    assert fixed["over_ms"].max() > prop["over_ms"].max()
    # the lag is measured beside the runs as well as before them; the page says "too busy"
    # from the worse of the two
    assert r.lag_during is not None and r.lag_during.n > 0
    assert r.worst_lag.p99_ms == max(r.lag.p99_ms, r.lag_during.p99_ms)
    assert r.busy == r.worst_lag.busy


# -- retries and deadlines (the extension of toylib.resilience.retry) --------------------------------------
class Failing:
    def __init__(self):
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        raise ConnectionError("down")


async def test_retry_stops_when_the_deadline_leaves_no_time_for_another_attempt():
    clock = FakeClock(1000.0)
    slept = []

    async def sleep(d):
        slept.append(d)
        clock.advance(d)

    fn, stats = Failing(), RetryStats()
    with dl.scope(dl.Deadline(clock() + 0.35, clock)):
        with pytest.raises(ConnectionError):
            await retry(fn, attempts=10, policy="none", base=0.1, cap=1.0, sleep=sleep,
                        stats=stats)
    # delays 0.1 and 0.2 fit (0.35 - 0.1, then 0.25 - 0.2 > 0); the next, 0.4, does not
    assert slept == pytest.approx([0.1, 0.2]) and fn.calls == 3
    assert stats.gave_up == {"deadline": 1}


async def test_min_attempt_keeps_back_time_for_the_attempt_itself():
    clock = FakeClock(1000.0)

    async def sleep(d):
        clock.advance(d)

    fn, stats = Failing(), RetryStats()
    with dl.scope(dl.Deadline(clock() + 0.35, clock)):
        with pytest.raises(ConnectionError):
            await retry(fn, attempts=10, policy="none", base=0.1, cap=1.0, sleep=sleep,
                        stats=stats, min_attempt=0.1)
    assert fn.calls == 2 and stats.gave_up == {"deadline": 1}


async def test_a_retry_the_deadline_forbids_costs_no_budget_token():
    from toylib.resilience.retry import RetryBudget
    clock = FakeClock(1000.0)
    budget = RetryBudget(0.0, burst=2)
    with dl.scope(dl.Deadline(clock() + 0.05, clock)):
        with pytest.raises(ConnectionError):
            await retry(Failing(), attempts=3, policy="none", base=0.1, cap=1.0, budget=budget,
                        sleep=lambda d: asyncio.sleep(0))
    assert budget.tokens == 2


async def test_without_a_deadline_retry_is_unchanged():
    fn = Failing()

    async def sleep(d):
        pass

    with pytest.raises(ConnectionError):
        await retry(fn, attempts=4, policy="full", rng=random.Random(0), sleep=sleep)
    assert fn.calls == 4


async def test_retry_rejects_a_negative_min_attempt():
    with pytest.raises(ValueError, match="min_attempt"):
        await retry(Failing(), attempts=2, policy="none", min_attempt=-1)


# -- retry amplification -------------------------------------------------------------------------
@pytest.mark.parametrize("k_layers", [1, 2, 3])
async def test_three_tries_at_every_layer_reach_the_bottom_3_to_the_k_times(k_layers, leakcheck):
    every = await timeouts.amplification(k_layers, requests=2)
    assert every["calls reaching the database"] == 2 * 3 ** k_layers
    top = await timeouts.amplification(k_layers, requests=2, retry_at="top")
    assert top["calls reaching the database"] == 2 * 3


async def test_a_retry_budget_at_every_layer_stays_under_its_bound(leakcheck):
    for k_layers in (1, 2, 3):
        r = await timeouts.amplification(k_layers, requests=10, budget_ratio=0.1,
                                         budget_burst=2)
        bound = timeouts.budget_bound(k_layers, 10, ratio=0.1, burst=2)
        assert 10 < r["calls reaching the database"] <= bound < 10 * 3 ** k_layers


def test_budget_bound_without_a_budget_worth_spending_is_the_request_count():
    assert timeouts.budget_bound(3, 10, ratio=0.0, burst=1) == 10 + 1 + 1 + 1
    assert timeouts.budget_bound(1, 10, ratio=1.0, burst=100) == 30   # capped by 3 tries


# -- shared recovery -----------------------------------------------------------------------------
def test_lockstep_model_counts_rounds():
    m = timeouts.lockstep_model(clients=10, capacity=5, service_ms=10, down_s=0, base_ms=20,
                                cap_ms=20, attempts=5)
    assert m == {"calls": 15, "drain_s": pytest.approx(0.03), "gave_up": 0}
    m = timeouts.lockstep_model(clients=10, capacity=1, service_ms=10, down_s=0, base_ms=20,
                                cap_ms=20, attempts=3)
    assert m["gave_up"] == 7 and math.isnan(m["drain_s"])
    assert timeouts.spread_bound(clients=10, capacity=5, service_ms=10, down_s=0.1) == \
        pytest.approx(0.12)


async def test_shared_recovery_serves_every_client_and_counts_every_call(leakcheck):
    r = await timeouts.shared_recovery("none", clients=10, capacity=5, service_ms=20,
                                       down_s=0.3, base_ms=20, cap_ms=40, attempts=20)
    assert r["succeeded"] == 10 and r["gave_up"] == 0 and r["unfinished"] == 0
    assert r["calls"] == len(r["arrivals"]) == r["done"]["attempts"].sum()
    assert r["calls"] >= 10 + 10                       # everyone failed once while it was down
    assert isinstance(r["done"], pd.DataFrame) and r["drain_s"] >= 0.3


async def test_a_shared_budget_makes_clients_give_up(leakcheck):
    r = await timeouts.shared_recovery("full", clients=10, capacity=5, service_ms=20,
                                       down_s=0.2, base_ms=10, cap_ms=20, attempts=10,
                                       budget_ratio=0.0)
    assert r["gave_up"] > 0
    assert r["calls"] <= 10 + 10                       # first tries plus a burst of 10


async def test_measure_latency_and_count_timeouts(leakcheck):
    k = replace(FAST, hang_p=1.0)                       # measurement turns hanging off
    res = await timeouts.latency(k, n=40, concurrency=10)
    assert res.df["ok"].all() and len(res.latencies) == 40
    assert res.latencies.median() >= k.latency_ms * 0.7
    assert await timeouts.count_timeouts(k, 1000, n=20) == 0.0
    assert await timeouts.count_timeouts(k, 1, n=20) == 1.0


async def test_compare_runs_both_designs(leakcheck):
    table = await timeouts.compare(replace(FAST, hang_p=0.5), rate=40, seconds=0.4)
    assert set(table["design"]) == {"before", "after"}
    assert set(table["endpoint"]) == {HEALTHY, HUNG}
    assert table.loc[table.design == "after", "hung"].sum() == 0


# -- claims, judged from one run ------------------------------------------------------------------
async def test_findings_from_a_small_run_say_what_the_sample_can_show(leakcheck):
    k = replace(FAST, pool=4, hang_p=1.0)        # every recommendation hangs: 504s after
    r = await timeouts.starvation(k, rate=40, seconds=1.0, reps=1)
    assert r.hung("after") == (0, 40) and r.hung("before")[0] > 20
    starved, due = r.starved_after_fill()
    assert due > 10 and starved == due             # every /product after the fill starves
    f = timeouts.findings(r)
    assert [x.claim.id for x in f] == [c.id for c in timeouts.CLAIMS]
    assert f[0].measured.n == due and f[1].measured.n == 40
    # 40 requests cannot show a share >= 99 %: the verdict says so instead of "holds"
    assert f[1].verdict == claims.NOT_SHOWN and f[1].needed
    table = r.table()
    # ratios with margins, never absolute times: /product does far better with timeouts
    assert table.loc[("after", HEALTHY), "success"] > 1.5 * table.loc[("before", HEALTHY),
                                                                       "success"]


# -- a busy machine: the count with timeouts is rerun, and never trusted when stalled -------------
def _fake_lag_during(max_ms_by_run):
    """A stand-in for lag_during that reports the given worst lag for each run in turn."""
    from contextlib import asynccontextmanager
    from toylib.core.calibrate import LagBeside, LoopLag
    seq = iter(max_ms_by_run)

    @asynccontextmanager
    async def fake(seconds):
        box = LagBeside()
        yield box
        box.lag = LoopLag(100, 1.0, 5.0, float(next(seq)))
    return fake


async def test_a_run_with_timeouts_beside_a_stalled_loop_is_rerun(monkeypatch, leakcheck):
    monkeypatch.setattr(timeouts, "BUSY_PAUSE_S", 0.0)
    # one rep: "before" (calm), "after" stalled 900 ms (over half the slack), rerun calm
    monkeypatch.setattr(timeouts, "lag_during", _fake_lag_during([3, 900, 4]))
    k = replace(FAST, pool=4, hang_p=0.5)
    r = await timeouts.starvation(k, rate=40, seconds=0.5, reps=1, grace=1.0)
    assert r.rerun == 1 and len(r.runs["after"]) == len(r.lags["after"]) == 1
    assert r.worst_lag("after").max_ms == 4 and not r.too_busy
    assert "1 run(s) rerun" in r.busy_note
    # reruns used up: the stalled run is kept, and the result says it was too busy
    monkeypatch.setattr(timeouts, "lag_during", _fake_lag_during([3, 900]))
    r = await timeouts.starvation(k, rate=40, seconds=0.5, reps=1, grace=1.0, reruns=0)
    assert r.rerun == 0 and r.too_busy and r.worst_lag("before").max_ms == 3


def _starvation_with(hung_after: int, max_lag_ms: float) -> timeouts.Starvation:
    """A synthetic result: 400 requests per design; the "before" design starved after its fill."""
    from toylib.core.calibrate import LoopLag
    from toylib.core.load import LoadResult
    n = 400

    def frame(hung):
        return pd.DataFrame({"i": range(n), "due": [i * 12.5 for i in range(n)],
                             "ok": [i >= hung for i in range(n)],
                             "error": ["unfinished" if i < hung else None for i in range(n)],
                             "latency_ms": 20.0,
                             "endpoint": [HEALTHY if i % 2 == 0 else HUNG for i in range(n)]})
    r = timeouts.Starvation(replace(FAST, deadline_ms=500.0), 80.0, 5.0, 1.0,
                            LoopLag(50, 1.0, 2.0, 3.0))
    for name, hung in (("before", 300), ("after", hung_after)):
        r.runs[name].append(LoadResult(frame(hung), "open", 5.0, name))
        r.pools[name].append(pd.DataFrame({"t_s": [0.0], "busy": [FAST.pool]}))
        r.lags[name].append(LoopLag(50, 1.0, 2.0, max_lag_ms))
    r.fills.append(0.5)
    return r


@pytest.mark.parametrize("hung, lag_ms, verdict", [
    (0, 10, claims.HOLDS_IF), (0, 900, claims.HOLDS_IF),    # zero hung stands, however busy
    (40, 10, claims.FAILS), (40, 900, claims.NOT_SHOWN)])   # hung beside a stall decide nothing
def test_no_hanging_is_not_judged_from_a_run_too_busy_to_time(hung, lag_ms, verdict):
    r = _starvation_with(hung, lag_ms)
    assert r.slack_ms == 500 and r.busy_limit_ms == 250 and r.too_busy == (lag_ms > 250)
    no_hanging = timeouts.findings(r)[1]
    assert no_hanging.verdict == verdict, no_hanging
    assert no_hanging.measured.n == 400 and "stalled up to" in no_hanging.note


def test_findings_refuse_what_is_not_a_starvation_result():
    with pytest.raises(TypeError, match="result"):
        timeouts.findings({"hung": 0})


def test_audit_knobs_are_knobs():
    assert isinstance(timeouts.AUDIT_KNOBS, Knobs)


# -- hostile input (issue 14): every public function refuses what it cannot honour -------------
NAN, INF = math.nan, math.inf


def test_issue_14_findings_now_raise():
    """Each of these came back as data, divided by zero or hung before."""
    with pytest.raises(ValueError, match="clients"):
        timeouts.lockstep_model(clients=-1)             # gave -4 calls
    with pytest.raises(ValueError, match="capacity"):
        timeouts.spread_bound(capacity=0)               # ZeroDivisionError
    with pytest.raises(ValueError, match="n"):
        timeouts.hang_schedule(Knobs(), 10**12)         # hung
    with pytest.raises(ValueError, match="base_ms"):     # said "cap_ms must be..."
        Knobs(base_ms=1e6)
    with pytest.raises(ValueError, match="cap_ms must be >= base_ms"):
        Knobs(base_ms=50, cap_ms=10)


async def test_issue_14_findings_of_experiments_now_raise(leakcheck):
    with pytest.raises(ValueError, match="base_ms"):
        await timeouts.shared_recovery("full", base_ms=-1)   # returned a result
    with pytest.raises(ValueError, match="rate"):
        await asyncio.wait_for(timeouts.compare(rate=1e300), 5)   # never returned


BAD_NUMBERS = [NAN, INF, -INF, -1, 10**12, "3", None, True]


def _bad(values, *, allow=()):
    return [x for x in values if not any(x is a or x == a for a in allow)]


SYNC = [
    # (function, valid keyword arguments, parameters to attack, values they allow)
    (lambda **kw: Knobs(**kw), {}, {
        "pool": (), "latency_ms": (), "sigma": (), "hang_p": (), "catalog_ms": (),
        "timeout_ms": (), "attempts": (), "base_ms": (), "cap_ms": (),
        "budget_ratio": (None,), "budget_burst": (), "deadline_ms": (None,), "reply_ms": (),
        "seed": ()}),
    (timeouts.hang_schedule, {"k": Knobs(), "n": 10}, {"n": ()}),
    (timeouts.fill_time, {"k": Knobs(), "rate": 10, "seconds": 1}, {"rate": (), "seconds": ()}),
    (timeouts.lognormal_survival, {"t_ms": 10, "median_ms": 20, "sigma": 0.5},
     {"t_ms": (-1, -INF), "median_ms": (), "sigma": ()}),
    (timeouts.lognormal_quantile, {"q": 0.5, "median_ms": 20, "sigma": 0.5},
     {"q": (), "median_ms": (), "sigma": ()}),
    (timeouts.choose_timeout, {"latencies_ms": [1, 2, 3], "false_timeouts": 0.1},
     {"false_timeouts": ()}),
    (timeouts.layered, {"k_layers": 2}, {"k_layers": (), "tries": (),
                                          "budget_ratio": (None,), "budget_burst": ()}),
    (timeouts.budget_bound, {"k_layers": 2, "requests": 10, "ratio": 0.1, "burst": 2},
     {"k_layers": (), "requests": (), "tries": (), "ratio": (), "burst": ()}),
    (timeouts.recovering_dependency, {}, {"capacity": (), "service_ms": ()}),
    (timeouts.lockstep_model, {}, {"clients": (), "capacity": (), "service_ms": (),
                                   "down_s": (), "base_ms": (), "cap_ms": (), "attempts": ()}),
    (timeouts.spread_bound, {}, {"clients": (), "capacity": (), "service_ms": (),
                                 "down_s": ()}),
]


def _sync_cases():
    for fn, ok, params in SYNC:
        for param, allowed in params.items():
            for bad in _bad(BAD_NUMBERS, allow=allowed):
                yield pytest.param(fn, ok, param, bad, id=f"{param}={bad!r}")


@pytest.mark.parametrize("fn, ok, param, bad", list(_sync_cases()))
def test_every_numeric_parameter_refuses_nonsense_naming_itself(fn, ok, param, bad):
    with pytest.raises((ValueError, TypeError), match=param):
        fn(**{**ok, param: bad})


@pytest.mark.parametrize("call, param", [
    (lambda: timeouts.design("sideways"), "name"),
    (lambda: timeouts.design(None), "name"),
    (lambda: timeouts.design("after", "knobs"), "knobs"),
    (lambda: timeouts.recommender(3), "knobs"),
    (lambda: Knobs(policy="sometimes"), "policy"),
    (lambda: Knobs(deadline_ms=100, reply_ms=100), "reply_ms"),
    (lambda: timeouts.false_timeout_rate([1, NAN], [1]), "latencies_ms"),
    (lambda: timeouts.false_timeout_rate([1, 2], [INF]), "timeouts_ms"),
    (lambda: timeouts.false_timeout_rate("abc", [1]), "latencies_ms"),
    (lambda: timeouts.choose_timeout([1, -5], 0.1), "latencies_ms"),
    (lambda: timeouts.starvation_summary("a result"), "res"),
])
def test_wrong_types_and_unknown_names_are_refused(call, param):
    with pytest.raises((ValueError, TypeError), match=param):
        call()


@pytest.mark.parametrize("coro, param", [
    (lambda: timeouts.starvation(rate=INF), "rate"),
    (lambda: timeouts.starvation(seconds=NAN), "seconds"),
    (lambda: timeouts.starvation(reps=0), "reps"),
    (lambda: timeouts.starvation(reps=10**9), "reps"),
    (lambda: timeouts.starvation(rate=1000, seconds=60), "rate \\* seconds"),
    (lambda: timeouts.latency(n=10**12), "n"),
    (lambda: timeouts.latency(concurrency=-3), "concurrency"),
    (lambda: timeouts.count_timeouts(Knobs(), NAN), "timeout_ms"),
    (lambda: timeouts.count_timeouts(Knobs(), 100, n=0), "n"),
    (lambda: timeouts.deadlines(deadline_ms=INF), "deadline_ms"),
    (lambda: timeouts.deadlines(rate=1e300), "rate"),
    (lambda: timeouts.deadlines(n=1000, rate=1), "n / rate"),
    (lambda: timeouts.amplification(2, requests=10**9), "requests"),
    (lambda: timeouts.retry_amplification(layers=[]), "layers"),
    (lambda: timeouts.retry_amplification(layers=[7]), "layers"),
    (lambda: timeouts.shared_recovery("full", clients=10**9), "clients"),
    (lambda: timeouts.shared_recovery("full", attempts=NAN), "attempts"),
    (lambda: timeouts.shared_recovery("full", max_seconds=INF), "max_seconds"),
    (lambda: timeouts.shared_recovery("full", seed=-1), "seed"),
    (lambda: timeouts.recovery(trials=0), "trials"),
    (lambda: timeouts.recovery(policies=["sometimes"]), "policies"),
    (lambda: timeouts.compare(seconds=-1), "seconds"),
    (lambda: timeouts.audit("knobs"), "knobs"),
])
async def test_experiments_refuse_nonsense_at_once(coro, param, leakcheck):
    with pytest.raises((ValueError, TypeError), match=param):
        await asyncio.wait_for(coro(), 5)


# -- the static explorer's data -------------------------------------------------------------------
async def test_sweep_has_a_row_per_grid_point_and_design(leakcheck):
    df = await timeouts.sweep(FAST, grid={"timeout_ms": (40.0, 80.0), "hang_p": (0.5,)},
                              rate=40, seconds=0.4)
    assert len(df) == 2 * 2 and set(df["design"]) == {"before", "after"}
    assert set(df["timeout_ms"]) == {40.0, 80.0} and set(df["hang_p"]) == {0.5}
    after = df[df.design == "after"]
    assert (after["hung"] == 0).all()                   # counts, not times
    assert (df[df.design == "before"]["shared_run"]).all()


@pytest.mark.parametrize("grid, param", [
    ({"timeout_ms": (10.0,)}, "grid"), ({"timeout_ms": (), "hang_p": (0.1,)}, "grid"),
    ({"timeout_ms": tuple(range(1, 30)), "hang_p": (0.1,)}, "grid"),
    ({"timeout_ms": (NAN,), "hang_p": (0.1,)}, "timeout_ms"),
    ({"timeout_ms": (10.0,), "hang_p": (2,)}, "hang_p"),
])
async def test_sweep_refuses_a_bad_grid(grid, param):
    with pytest.raises((ValueError, TypeError), match=param):
        await timeouts.sweep(grid=grid)
