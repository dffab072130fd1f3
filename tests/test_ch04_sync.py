"""Chapter 4's designs: the chain and the saga make the same calls; every saga completes or
compensates; retries never apply a command twice; timing and throughput ratios near the ideal."""
from __future__ import annotations

import asyncio

import pytest

from toylib.testing import binomial_margin, median, thread_count
from toylib import Error
from toylib.chapters import ch04_sync as checkout
from toylib.chapters.ch04_sync import CHAIN, KEY, Knobs, after, before, ideal, request_for

K0 = Knobs(scale=0)


# -- the same work, two shapes --------------------------------------------------------------------
async def test_the_chain_makes_five_calls_in_the_seeds_order(leakcheck):
    async with before(K0) as system:
        answer = await system.place(4, trace_id="c4")
        spans = [s for s in system.topology.tracer.spans if s.trace_id == "c4"]
        inv = await system.invariants()
    assert answer["status"] == "completed" and answer["label"] == "LBL-order-1"
    assert [s.callee for s in spans if s.caller == "checkout"] == list(CHAIN)
    assert inv["completed"] == 1 and inv["charged, order not completed"] == 0


async def test_the_saga_accepts_at_once_then_runs_the_steps_and_reports_back(leakcheck):
    async with after(K0) as system:
        answer = await system.place(4, trace_id="c4")
        assert answer == {"order_id": "order-1", "status": "accepted",
                          "poll": "/orders/order-1"}
        final, polls = await system.poll("order-1", interval=0.01)
        spans = [s for s in system.topology.tracer.spans if s.trace_id == "c4"]
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
    async with after(K0) as system:
        reply = await system.topology.call("checkout", "GET", "/orders/order-9", raw=True)
    assert reply.status == 404 and "request_id" in reply.json()["error"]


# -- failures: compensation, retries, idempotency -------------------------------------------------
async def test_a_payment_that_fails_for_good_is_compensated_in_reverse_order(leakcheck):
    async with after(Knobs(scale=0, attempts=2, backoff_ms=1)) as system:
        system.topology.service("payment").faults.add(Error(1.0, 503), route="/charges")
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
    async with after(Knobs(scale=0, backoff_ms=40, saga_attempts=10)) as system:
        system.topology.service("shipping").faults.add(Error(1.0, 503), route="/labels", end=0.3)
        await system.place(1)
        await system.wait_done()
        log = await system.orchestrator.log("order-1")
        inv = await system.invariants()
    tries = log[(log.name == "shipping") & (log.status == "started")]
    assert len(tries) > 1
    assert inv["completed"] == 1 and inv["completed, no label"] == 0


async def test_every_saga_completes_or_compensates_and_nobody_pays_for_nothing(leakcheck):
    k = Knobs(scale=0, p=0.25, seed=3)
    res_after, inv_after = await checkout.checkouts("after", k, n=60, concurrency=10)
    res_before, inv_before = await checkout.checkouts("before", k, n=60, concurrency=10)
    assert res_after.df["ok"].all()                              # every checkout accepted
    assert inv_after["completed"] + inv_after["compensated"] == 60
    for key in ("charged, order not completed", "stock held, order not completed",
                "completed, not charged", "completed, no label", "commands applied twice"):
        assert inv_after[key] == 0, key
    assert inv_before["failed"] > 0 and inv_before["charged, order not completed"] > 0
    assert inv_before["commands applied twice"] == 0
    again = await checkout.checkouts("after", k, n=60, concurrency=10)
    assert again[1]["completed"] == inv_after["completed"]       # seeded: a run replays


async def test_a_command_sent_twice_with_one_key_is_applied_once(leakcheck):
    async with before(K0) as system:
        body = {"order_id": "order-7", "amount": 30.0}
        first = await system.topology.call("payment", "POST", "/charges", json=body,
                                           headers={KEY: "order-7:payment"})
        second = await system.topology.call("payment", "POST", "/charges", json=body,
                                            headers={KEY: "order-7:payment"})
        missing = await system.topology.call("payment", "POST", "/charges", json=body, raw=True)
        parts = system.participants
    assert first == second == {"charge_id": "ch-order-7"}
    assert parts.applied["charge", "order-7"] == 1 and parts.replays["charge"] == 1
    assert missing.status == 400 and KEY in missing.json()["error"]


@pytest.mark.parametrize("attempts", [1, 3])
async def test_completion_rates_track_the_product_of_per_step_success(attempts, leakcheck):
    k = Knobs(scale=0, p=0.1, attempts=attempts, backoff_ms=1, seed=4)
    n = 150
    for design in ("before", "after"):
        _, inv = await checkout.checkouts(design, k, n=n, concurrency=10)
        want = ideal(k)[f"success_{design}"]
        assert abs(inv["completed"] / n - want) <= binomial_margin(want, n), (design, inv)


def test_ideal_figures():
    got = ideal(Knobs(p=0.1, attempts=2, saga_attempts=3, workers=10))
    assert got["response_before_ms"] == 530 and got["completion_after_ms"] == 530
    assert got["response_after_ms"] == 0
    assert got["success_before"] == pytest.approx(0.99 ** 5)
    assert got["success_after"] == pytest.approx(0.99 ** 4 * (1 - 0.1 ** 6))
    assert got["throughput_before_rps"] == pytest.approx(10 / 0.53)
    assert ideal(Knobs(scale=0.5))["response_before_ms"] == 265


# -- timing ---------------------------------------------------------------------------------------
async def test_the_client_waits_for_the_chain_before_and_not_after(leakcheck):
    """At the seed's latencies: before, about 530 ms to answer; after, a small fraction of it
    to answer and about 530 ms to complete. Up to 3 attempts on a shared machine."""
    for attempt in range(3):
        res_b, _ = await checkout.checkouts("before", Knobs(), n=3, first=3 * attempt)
        res_a, _ = await checkout.checkouts("after", Knobs(), n=3, first=3 * attempt)
        answer_b, answer_a = median(res_b.latencies), median(res_a.latencies)
        done_a = median(res_a.df["completion_ms"])
        assert answer_b >= 530
        if answer_b / answer_a > 20 and 0.95 < done_a / 530 < 1.4:
            break
    else:
        pytest.fail(f"before {answer_b:.0f} ms, after {answer_a:.1f} ms, done {done_a:.0f} ms")


async def test_a_bounded_pool_caps_the_chain_but_not_the_front_door(leakcheck):
    k = Knobs(workers=4, scale=0.4)
    cap = ideal(k)["throughput_before_rps"]
    res_b, _ = await checkout.checkouts("before", k, n=24, concurrency=8)
    res_a, inv_a = await checkout.checkouts("after", k, n=24, concurrency=8)
    assert res_b.summary()["throughput_rps"] <= 1.1 * cap
    assert res_a.summary()["throughput_rps"] > 3 * res_b.summary()["throughput_rps"]
    assert inv_a["completed"] == 24


# -- scopes and bad input -------------------------------------------------------------------------
async def test_leaving_the_block_on_error_stops_everything_and_deletes_the_databases(leakcheck):
    threads = thread_count()
    for build in checkout.DESIGNS.values():
        system = build(Knobs(scale=0.2))
        with pytest.raises(RuntimeError, match="boom"):
            async with system:
                folder = system.ws.path
                await system.place(0)                 # after: its saga is still running
                raise RuntimeError("boom")
        assert not folder.exists()
        assert all(s.port is None for s in system.topology.services.values())
    await asyncio.sleep(0.05)
    assert thread_count() <= threads


@pytest.mark.parametrize("kw, param", [
    ({"scale": -1}, "scale"), ({"p": 2}, "p"), ({"attempts": 0}, "attempts"),
    ({"attempts": 1.5}, "attempts"), ({"saga_attempts": 0}, "saga_attempts"),
    ({"backoff_ms": 0}, "backoff_ms"), ({"workers": 0}, "workers"),
    ({"partitions": 0}, "partitions"), ({"seed": "1"}, "seed"),
])
def test_knobs_reject_bad_values_naming_the_parameter(kw, param):
    with pytest.raises((ValueError, TypeError)) as e:
        Knobs(**kw)
    assert str(e.value).startswith(param + " "), str(e.value)


async def test_experiments_reject_bad_values_naming_the_parameter():
    cases = [(checkout.checkouts("sideways", K0, n=1), "design"),
             (checkout.checkouts("before", K0, n=0), "n"),
             (checkout.checkouts("before", K0, n=1, concurrency=0), "concurrency")]
    for coro, param in cases:
        with pytest.raises((ValueError, TypeError)) as e:
            await coro
        assert str(e.value).startswith(param + " "), str(e.value)
    with pytest.raises(ValueError, match="^i "):
        request_for(-2)
    with pytest.raises(ValueError, match="^service "):
        K0.latency_ms("cache")
    with pytest.raises(TypeError, match="^k "):
        after(0.5)
