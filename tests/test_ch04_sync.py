"""Chapter 4's designs: the chain and the saga make the same calls; every saga completes or
compensates; retries never apply a command twice; timing and throughput ratios near the ideal;
the claims judged from results by their intervals; bad input refused with the parameter named."""
from __future__ import annotations

import asyncio
import math

import pandas as pd
import pytest

from toylib import claims
from toylib.chapters import ch04_sync as ch
from toylib.chapters.ch04_sync import CHAIN, KEY, Knobs, design, ideal, request_for
from toylib.chapters.design import Design
from toylib.core.calibrate import LoopLag
from toylib.core.faults import Error
from toylib.core.load import LoadResult
from toylib.testing import binomial_margin, thread_count

K0 = Knobs(scale=0)


# -- the contract ---------------------------------------------------------------------------------
def test_the_module_follows_the_chapter_contract():
    assert ch.CHAPTER == "ch04_sync"
    assert set(ch.DESIGNS) == {"before", "after"}
    for name, cls in ch.DESIGNS.items():
        d = design(name, K0)
        assert isinstance(d, Design) and isinstance(d, cls) and d.name == name
        assert d.chapter == "ch04_sync" and d.knobs is K0 and not d.running
        assert "checkout" in str(d.diagram()) and "flowchart" in str(d.diagram())
    assert design("after").knobs == Knobs()          # knobs default to the source's figures
    ids = claims.claim_ids(ch.CLAIMS)
    assert all(i.startswith("ch04_sync.") for i in ids) and len(ids) == 4
    with pytest.raises(Exception):
        K0.scale = 2                                 # frozen


async def test_state_lives_on_the_design_not_on_the_topology(leakcheck):
    system = design("after", K0)
    before_attrs = set(vars(system.topology))
    async with system:
        assert system.orchestrator is not None and system.bus is not None
        assert set(vars(system.topology)) - before_attrs <= {"_client_session"}
    assert system.orchestrator is None and system.db is None


# -- the same work, two shapes --------------------------------------------------------------------
async def test_the_chain_makes_five_calls_in_the_sources_order(leakcheck):
    async with design("before", K0) as system:
        answer = await system.place(4, trace_id="c4")
        spans = [s for s in system.tracer.spans if s.trace_id == "c4"]
        inv = await system.invariants()
    assert answer["status"] == "completed" and answer["label"] == "LBL-order-1"
    assert [s.callee for s in spans if s.caller == "checkout"] == list(CHAIN)
    assert inv["completed"] == 1 and inv["charged, order not completed"] == 0


async def test_the_saga_accepts_at_once_then_runs_the_steps_and_reports_back(leakcheck):
    async with design("after", K0) as system:
        answer = await system.place(4, trace_id="c4")
        assert answer == {"order_id": "order-1", "status": "accepted",
                          "poll": "/orders/order-1"}
        final, polls = await system.poll("order-1", interval=0.01)
        spans = [s for s in system.tracer.spans if s.trace_id == "c4"]
        inv = await system.invariants()
    assert [h["status"] for h in final["history"]] == ["accepted", "in_progress", "completed"]
    assert polls >= 1
    assert [s.callee for s in spans if s.caller == "orchestrator"] == \
        ["cart", "customer", "inventory", "payment", "shipping"]
    event = [s for s in spans if s.method == "EVENT"]
    assert len(event) == 1 and event[0].status == "completed"   # the saga's span, for diagrams
    assert inv == {"orders": 1, "completed": 1, "compensated": 0, "failed": 0,
                   "charged, order not completed": 0, "stock held, order not completed": 0,
                   "completed, not charged": 0, "completed, no label": 0,
                   "commands applied twice": 0}


async def test_polling_an_unknown_order_is_a_404(leakcheck):
    async with design("after", K0) as system:
        reply = await system.call("checkout", "GET", "/orders/order-9", raw=True)
    assert reply.status == 404 and "request_id" in reply.json()["error"]


# -- failures: compensation, retries, idempotency -------------------------------------------------
async def test_a_payment_that_fails_for_good_is_compensated_in_reverse_order(leakcheck):
    async with design("after", Knobs(scale=0, attempts=2, backoff_ms=1)) as system:
        system.service("payment").faults.add(Error(1.0, 503), route="/charges")
        await system.place(1)
        await system.wait_done()
        log = await system.orchestrator.log("order-1")
        inv = await system.invariants()
        parts = system.participants
    undo = log[(log.phase == "undo") & (log.status != "started")]
    assert list(undo.name) == ["payment", "inventory", "customer", "cart"]
    assert inv["compensated"] == 1 and inv["completed"] == 0
    assert "order-1" in parts.released and "order-1" not in parts.charged
    assert inv["stock held, order not completed"] == 0
    do = log[(log.phase == "do") & (log.name == "payment") & (log.status == "started")]
    assert len(do) == 1                        # one saga attempt before the pivot...
    assert parts.services[2].handled == 2 + 1  # ...of 2 tries per call, then one refund call


async def test_after_the_pivot_the_label_is_retried_until_it_succeeds(leakcheck):
    async with design("after", Knobs(scale=0, backoff_ms=40, saga_attempts=10)) as system:
        system.service("shipping").faults.add(Error(1.0, 503), route="/labels", end=0.3)
        await system.place(1)
        await system.wait_done()
        log = await system.orchestrator.log("order-1")
        inv = await system.invariants()
    tries = log[(log.name == "shipping") & (log.status == "started")]
    assert len(tries) > 1
    assert inv["completed"] == 1 and inv["completed, no label"] == 0


async def test_every_saga_completes_or_compensates_and_nobody_pays_for_nothing(leakcheck):
    k = Knobs(scale=0, p=0.25, seed=3)
    after = await ch.checkouts("after", k, n=60, concurrency=10)
    before = await ch.checkouts("before", k, n=60, concurrency=10)
    assert after.df["ok"].all() and after.n == 60                # every checkout accepted
    assert after.outcome["completed"] + after.outcome["compensated"] == 60
    for key in ("charged, order not completed", "stock held, order not completed",
                "completed, not charged", "completed, no label", "commands applied twice"):
        assert after.outcome[key] == 0, key
    assert before.outcome["failed"] > 0 and before.outcome["charged, order not completed"] > 0
    assert before.outcome["commands applied twice"] == 0
    again = await ch.checkouts("after", k, n=60, concurrency=10)
    assert again.outcome["completed"] == after.outcome["completed"]   # seeded: a run replays


async def test_a_command_sent_twice_with_one_key_is_applied_once(leakcheck):
    async with design("before", K0) as system:
        body = {"order_id": "order-7", "amount": 30.0}
        first = await system.call("payment", "POST", "/charges", json=body,
                                  headers={KEY: "order-7:payment"})
        second = await system.call("payment", "POST", "/charges", json=body,
                                   headers={KEY: "order-7:payment"})
        missing = await system.call("payment", "POST", "/charges", json=body, raw=True)
        parts = system.participants
    assert first == second == {"charge_id": "ch-order-7"}
    assert parts.applied["charge", "order-7"] == 1 and parts.replays["charge"] == 1
    assert missing.status == 400 and KEY in missing.json()["error"]


async def test_completion_rates_track_the_product_of_per_step_success(leakcheck):
    n = 150
    res = await ch.success_rates(Knobs(scale=0, backoff_ms=1, seed=4), ps=(0.1,),
                                 attempts=(1, 3), n=n)
    assert len(res.rows) == 4
    for _, row in res.rows.iterrows():
        assert abs(row["completed"] / n - row["ideal"]) <= binomial_margin(row["ideal"], n), row
    est = res.estimate(0.1, 1, "before")
    assert est.n == n and est.low < est.value < est.high and est.k == \
        res.row(0.1, 1, "before")["completed"]
    with pytest.raises(ValueError, match="must be a run"):
        res.row(0.3, 1, "before")


def test_ideal_figures():
    got = ideal(Knobs(p=0.1, attempts=2, saga_attempts=3, workers=10))
    assert got["response_before_ms"] == 530 and got["completion_after_ms"] == 530
    assert got["response_after_ms"] == 0
    assert got["success_before"] == pytest.approx(0.99 ** 5)
    assert got["success_after"] == pytest.approx(0.99 ** 4 * (1 - 0.1 ** 6))
    assert got["throughput_before_rps"] == pytest.approx(10 / 0.53)
    assert ideal(Knobs(scale=0.5))["response_before_ms"] == 265


# -- timing: ratios with margins, repeated trials -------------------------------------------------
async def test_the_client_waits_for_the_chain_before_and_not_after(leakcheck):
    """At the source's latencies: before, at least 530 ms to answer (sleeps are never short);
    after, a small fraction of it to answer and about 530 ms to complete. Medians of trials."""
    t = await ch.response_times(Knobs(), n=3, trials=3)
    med = t.trial_medians().median()
    assert t.trial_medians().shape == (3, 3)
    assert (t.trial_medians()["before: response"] >= 530).all()
    assert med["before: response"] / med["after: response"] > 10   # ~100x on a quiet machine
    assert 0.95 < med["after: completion"] / 530 < 4                # never sooner than the chain
    assert t.n_after == 2 * t.n and all(o.n == 6 for o in t.runs["after"])
    assert len(t.round_trips_ms) == 3 and all(0 < x < 1000 for x in t.round_trips_ms)
    table = t.table()
    assert list(table.index) == list(ch.SERIES) and table.loc["before: response",
                                                               "ideal (ms)"] == 530


async def test_a_bounded_pool_caps_the_chain_but_not_the_front_door(leakcheck):
    k = Knobs(workers=4, scale=0.4)
    cap = ideal(k)["throughput_before_rps"]
    got = await ch.throughput(k, n=24, clients=8)
    assert got.loc["before", "answered per second"] <= 1.1 * cap
    assert got.loc["after", "answered per second"] > 3 * got.loc["before", "answered per second"]
    assert got.loc["after", "completed"] == 24


# -- claims: judged by the interval, from results -------------------------------------------------
def _orders(design_: str, response_ms, completion_ms=None) -> ch.Orders:
    df = pd.DataFrame({"latency_ms": response_ms, "ok": True,
                       "completion_ms": completion_ms if completion_ms is not None
                       else response_ms})
    return ch.Orders(design_, LoadResult(df, "sequential", 1.0), {}, 1.0)


def _timing(after_medians, before_ms=540.0) -> ch.Timing:
    runs = {"before": [_orders("before", [before_ms] * 3) for _ in after_medians],
            "after": [_orders("after", [m] * 3, [560.0] * 3) for m in after_medians]}
    return ch.Timing(Knobs(), 3, 1, runs)


def _success(chain_completed: int, saga_completed: int, n: int = 200) -> ch.Success:
    rows = []
    for design_, tries, done in (("before", 1, chain_completed), ("after", 3, saga_completed)):
        kp = Knobs(scale=0, p=ch.CLAIM_P, attempts=tries)
        rows.append({"p": ch.CLAIM_P, "tries per call": tries, "design": design_, "n": n,
                     "answered": 1.0, "ideal": ideal(kp)[f"success_{design_}"],
                     "completed": done, "compensated": n - done,
                     "charged, order not completed": 0})
    return ch.Success(ch.SUCCESS_KNOBS, n, pd.DataFrame(rows))


def test_findings_judge_every_claim_by_its_interval():
    found = ch.findings(_timing([2.0, 3.0, 4.0]), _success(155, 200))
    assert [f.claim.id for f in found] == [c.id for c in ch.CLAIMS]
    verdicts = {f.claim.id.split(".")[1]: f.verdict for f in found}
    assert verdicts == {"chain": claims.HOLDS, "immediate": claims.HOLDS,
                        "multiplication": claims.HOLDS, "availability": claims.NOT_SHOWN}
    immediate = found[1]
    assert immediate.measured.n == 3 and (immediate.measured.low, immediate.measured.high) == \
        (2.0, 4.0)
    assert found[3].needed and found[3].needed > 200    # it says how many trials would decide
    # a trial that straddles the threshold cannot decide; all trials above it refute
    assert ch.findings(_timing([3.0, 5.0, 20.0]), _success(155, 200))[1].verdict == \
        claims.NOT_SHOWN
    assert ch.findings(_timing([15.0, 16.0, 20.0]), _success(155, 200))[1].verdict == \
        claims.FAILS
    # a chain that completes far more than the product of five refutes "all must succeed"
    assert ch.findings(_timing([2.0]), _success(195, 200))[2].verdict == claims.FAILS
    # several lost orders out of 200 refute 99.9 %
    assert ch.findings(_timing([2.0]), _success(155, 190))[3].verdict == claims.FAILS
    table = claims.table(found)
    assert "not shown by this run" in table.markdown() and len(table.rows()) == 4


def test_a_busy_machine_widens_the_timing_interval_rather_than_misjudging():
    quiet = LoopLag(50, 0.2, 1.0, 2.0)
    busy = LoopLag(50, 5.0, 30.0, 40.0)
    t, s = _timing([2.0, 3.0, 4.0]), _success(155, 200)
    assert ch.findings(t, s, quiet)[1].verdict == claims.HOLDS
    widened = ch.findings(t, s, busy)[1]
    assert widened.verdict == claims.NOT_SHOWN and widened.measured.high == 34.0
    assert ch.findings(t, s, busy)[0].verdict == claims.HOLDS   # "at least" is unaffected


async def test_the_audit_judges_every_claim_from_a_small_run(leakcheck):
    found = await ch.audit()
    assert [f.claim.id for f in found] == [c.id for c in ch.CLAIMS]
    by = {f.claim.id.split(".")[1]: f for f in found}
    # counts from seeded faults and a chain that sleeps at least 530 ms: these cannot flip
    assert by["chain"].verdict == claims.HOLDS and by["chain"].measured.low >= 530
    assert by["multiplication"].verdict == claims.HOLDS and by["multiplication"].measured.n == 200
    assert by["availability"].verdict in (claims.NOT_SHOWN, claims.HOLDS_IF)
    assert by["immediate"].verdict in (claims.HOLDS, claims.NOT_SHOWN)


async def test_the_sweep_gives_one_row_per_grid_point_and_design(leakcheck):
    df = await ch.sweep(ps=(0.0, 0.2), attempts=(1,), n=10)
    assert len(df) == 4 and set(df.design) == {"before", "after"}
    assert {"p", "attempts", "completed share", "ideal"} <= set(df.columns)
    assert (df[df.p == 0.0]["completed share"] == 1.0).all()
    assert len(ch.SWEEP_PS) * len(ch.SWEEP_ATTEMPTS) * 2 <= 20     # a small grid, built fast


# -- scopes and bad input -------------------------------------------------------------------------
async def test_leaving_the_block_on_error_stops_everything_and_deletes_the_databases(leakcheck):
    threads = thread_count()
    for name in ch.DESIGNS:
        system = design(name, Knobs(scale=0.2))
        with pytest.raises(RuntimeError, match="boom"):
            async with system:
                folder = system.ws.path
                await system.place(0)                 # after: its saga is still running
                raise RuntimeError("boom")
        assert not folder.exists()
        assert all(s.port is None for s in system.topology.services.values())
    await asyncio.sleep(0.05)
    assert thread_count() <= threads


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kw, param", [
    ({"scale": -1}, "scale"), ({"scale": NAN}, "scale"), ({"scale": INF}, "scale"),
    ({"scale": 11}, "scale"), ({"scale": "1"}, "scale"), ({"scale": True}, "scale"),
    ({"p": 2}, "p"), ({"p": -0.1}, "p"), ({"p": NAN}, "p"),
    ({"attempts": 0}, "attempts"), ({"attempts": 1.5}, "attempts"), ({"attempts": 11}, "attempts"),
    ({"attempts": INF}, "attempts"),
    ({"saga_attempts": 0}, "saga_attempts"), ({"saga_attempts": 10**12}, "saga_attempts"),
    ({"backoff_ms": 0}, "backoff_ms"), ({"backoff_ms": -5}, "backoff_ms"),
    ({"backoff_ms": INF}, "backoff_ms"), ({"backoff_ms": NAN}, "backoff_ms"),
    ({"workers": 0}, "workers"), ({"workers": 10**9}, "workers"), ({"workers": 2.5}, "workers"),
    ({"partitions": 0}, "partitions"), ({"partitions": 10**9}, "partitions"),
    ({"seed": "1"}, "seed"), ({"seed": -1}, "seed"), ({"seed": 2**70}, "seed"),
    ({"seed": 1.5}, "seed"),
])
def test_knobs_reject_bad_values_naming_the_parameter_and_range(kw, param):
    with pytest.raises((ValueError, TypeError)) as e:
        Knobs(**kw)
    assert str(e.value).startswith(param + " must be"), str(e.value)


def test_knobs_refuse_unknown_names():
    with pytest.raises(TypeError, match="latency"):
        Knobs(latency=3)


@pytest.mark.parametrize("call, param", [
    (lambda: design("sideways"), "name"), (lambda: design(None), "name"),
    (lambda: design("after", 0.5), "knobs"), (lambda: design("after", {"p": 0.1}), "knobs"),
    (lambda: ch.SyncCheckout("fast"), "knobs"),
    (lambda: request_for(-2), "i"), (lambda: request_for(NAN), "i"),
    (lambda: request_for(10**12), "i"), (lambda: request_for("3"), "i"),
    (lambda: K0.latency_ms("cache"), "service"),
    (lambda: ideal("seed"), "knobs"),
    (lambda: ch.findings(None, None), "timing"),
    (lambda: ch.findings(_timing([1.0]), "x"), "success"),
    (lambda: ch.findings(_timing([1.0]), _success(1, 1, 1), lag=3), "lag"),
])
def test_public_functions_reject_bad_values_naming_the_parameter(call, param):
    with pytest.raises((ValueError, TypeError)) as e:
        call()
    assert str(e.value).startswith(param + " must be"), str(e.value)


@pytest.mark.parametrize("make, param", [
    (lambda: ch.checkouts("sideways", K0, n=1), "name"),
    (lambda: ch.checkouts("before", K0, n=0), "n"),
    (lambda: ch.checkouts("before", K0, n=10**9), "n"),
    (lambda: ch.checkouts("before", K0, n=NAN), "n"),
    (lambda: ch.checkouts("before", K0, n=1, concurrency=0), "concurrency"),
    (lambda: ch.checkouts("before", K0, n=1, concurrency=INF), "concurrency"),
    (lambda: ch.checkouts("before", K0, n=1, first=-1), "first"),
    (lambda: ch.response_times(K0, n=0), "n"),
    (lambda: ch.response_times(K0, trials=10**6), "trials"),
    (lambda: ch.response_times(K0, clients=-3), "clients"),
    (lambda: ch.response_times("fast"), "knobs"),
    (lambda: ch.success_rates(K0, ps=(0.1, 2.0)), "ps"),
    (lambda: ch.success_rates(K0, ps=()), "ps"),
    (lambda: ch.success_rates(K0, ps=0.1), "ps"),
    (lambda: ch.success_rates(K0, ps=[NAN]), "ps"),
    (lambda: ch.success_rates(K0, attempts=(0,)), "attempts"),
    (lambda: ch.success_rates(K0, n=10**7), "n"),
    (lambda: ch.throughput(Knobs(), n=5), "knobs.workers"),
    (lambda: ch.throughput(Knobs(workers=2), n=-1), "n"),
    (lambda: ch.audit("quick"), "knobs"),
    (lambda: ch.place_orders("running", 1), "system"),
    (lambda: ch.sweep(n=0), "n"), (lambda: ch.sweep(ps=(INF,)), "ps"),
    (lambda: ch.sweep(attempts=("3",)), "attempts"), (lambda: ch.sweep("k"), "knobs"),
    (lambda: ch.success_rates(K0, designs=("sideways",)), "designs"),
])
async def test_experiments_reject_bad_values_naming_the_parameter(make, param, leakcheck):
    with pytest.raises((ValueError, TypeError)) as e:
        await make()
    assert str(e.value).startswith(param + " must be"), str(e.value)


async def test_probes_need_a_running_design_and_valid_arguments(leakcheck):
    system = design("after", K0)
    with pytest.raises(RuntimeError, match="not running"):
        await system.place(1)
    with pytest.raises(RuntimeError, match="not running"):
        await ch.place_orders(system, 1)
    async with system:
        for kw, param in (({"interval": 0}, "interval"), ({"timeout": NAN}, "timeout"),
                          ({"timeout": INF}, "timeout"), ({"interval": -1}, "interval")):
            with pytest.raises((ValueError, TypeError), match=f"^{param} must be"):
                await system.poll("order-1", **kw)
        with pytest.raises((ValueError, TypeError), match="^order_id must be"):
            await system.poll("../x")
        with pytest.raises((ValueError, TypeError), match="^timeout must be"):
            await system.wait_done(timeout=-1)
    assert math.isnan(ideal(Knobs())["throughput_before_rps"])


def test_a_slow_database_round_trip_widens_the_interval_down_not_the_verdict_to_fails():
    t = _timing([27.0, 34.0, 41.0])
    assert ch.findings(t, _success(155, 200))[1].verdict == claims.FAILS
    t.round_trips_ms = [3.0, 3.5, 4.0]          # a loaded machine: about 3.5 ms a round trip
    f = ch.findings(t, _success(155, 200))[1]
    assert f.verdict == claims.NOT_SHOWN and f.measured.low == 27.0 - 8 * 3.0
    assert f.measured.high == 41.0 and "3.50 ms" in f.note
    quiet = _timing([2.0, 3.0, 4.0])
    quiet.round_trips_ms = [0.2, 0.2, 0.2]
    assert ch.findings(quiet, _success(155, 200))[1].verdict == claims.HOLDS


async def test_round_trip_calibration_times_a_real_statement(leakcheck):
    async with design("after", K0) as system:
        ms = await ch.round_trip_ms(system.db, n=5)
        with pytest.raises(TypeError, match="^db must be"):
            await ch.round_trip_ms("db")
        with pytest.raises(ValueError, match="^n must be"):
            await ch.round_trip_ms(system.db, n=0)
    assert 0 < ms < 1000
