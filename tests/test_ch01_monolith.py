"""Chapter 1's designs: a migration breaks the shared design for real and the owned design not at
all; no order is lost through an outage; availability and latency near the ideal; clean scopes."""
from __future__ import annotations

import asyncio

import pytest

from toylib.testing import binomial_margin, thread_count
from toylib.chapters import ch01_monolith as monolith
from toylib.chapters.ch01_monolith import MIGRATIONS, Knobs, Migration, after, before, ideal, order_for

K0 = Knobs(latency_ms=0)


# -- the schema change ----------------------------------------------------------------------------
@pytest.mark.parametrize("column, broken, errors", [
    ("id", {"order", "pricing", "payment"},
     {"pricing": "no such column: c.id", "payment": "no such column: id"}),
    ("email", {"order", "payment"}, {"payment": "no such column: email"}),
    ("tier", {"order", "pricing"}, {"pricing": "no such column: c.tier"}),
    ("name", set(), {}),
])
async def test_a_migration_breaks_the_shared_design_with_sqlites_own_error(column, broken,
                                                                           errors, leakcheck):
    migration = next(m for m in MIGRATIONS if m.column == column)
    df = await monolith.blast_radius("before", migration)
    assert df["worked before"].all()
    assert set(df.index[df.broken]) == broken
    assert not df.loc["customer", "broken"]          # the owner shipped its code with it
    for service, message in errors.items():
        assert df.loc[service, "how"] == "its own query"
        assert df.loc[service, "error"] == f"HTTP 500: OperationalError: {message}"
    if broken:                                       # the order service fails because they do
        assert df.loc["order", "how"] == "a service it calls failed"
        assert df.loc["order", "error"].startswith("HTTP 502: order -> ")


@pytest.mark.parametrize("migration", MIGRATIONS, ids=str)
async def test_the_same_migration_breaks_nobody_when_services_own_their_data(migration,
                                                                            leakcheck):
    df = await monolith.blast_radius("after", migration)
    assert df["worked before"].all()
    assert not df.broken.any(), df.error.to_dict()


async def test_the_owner_keeps_its_event_contract_through_a_rename(leakcheck):
    async with after(K0) as system:
        await system.migrate(Migration("tier", "loyalty_tier"))
        await system.update_customer(2, "standard")
        await system.relays["customer"].wait_drained()
        await system.replicas["customers"].wait_caught_up()
        seen = await system.db["order"].fetchone("SELECT tier FROM customer_view WHERE id = 2")
        assert seen == ("standard",)
        columns = [r[1] for r in await system.db["customer"].fetchall(
            "PRAGMA table_info(customers)")]
        assert "loyalty_tier" in columns and "tier" not in columns
        with pytest.raises(ValueError, match="migration"):
            await system.migrate(Migration("tier", "level"))      # already renamed


# -- the two designs do the same business ---------------------------------------------------------
async def test_both_designs_price_every_order_the_same_and_keep_their_files(leakcheck):
    answers, folders = {}, {}
    for name, build in monolith.DESIGNS.items():
        async with build(K0) as system:
            answers[name] = [await system.place_order(i) for i in range(12)]
            folders[name] = system.ws.path
            files = system.ws.files()
            if name == "after":
                await system.drain()
                rec = await system.reconcile()
                assert (rec["effect"] == rec["effect expected"]).all()
        assert not folders[name].exists()            # the databases are gone with the scope
        assert files == (["shared.sqlite"] if name == "before" else
                         [f"{s}.sqlite" for s in sorted(monolith.SERVICES)])
    assert [a["total"] for a in answers["before"]] == [a["total"] for a in answers["after"]]
    assert {a["status"] for a in answers["before"]} == {"confirmed"}
    assert {a["status"] for a in answers["after"]} == {"accepted"}


async def test_before_makes_four_synchronous_calls_per_order(leakcheck):
    async with before(K0) as system:
        await system.place_order(3, trace_id="o3")
        spans = [s for s in system.topology.tracer.spans if s.trace_id == "o3"]
    assert [s.callee for s in spans if s.caller == "order"] == list(monolith.DEPENDENCIES)


# -- availability ---------------------------------------------------------------------------------
@pytest.mark.parametrize("service", monolith.DEPENDENCIES)
async def test_one_dependency_down_fails_every_order_before_and_none_after(service, leakcheck):
    b = await monolith.availability("before", K0, n=20, down=service)
    a = await monolith.availability("after", K0, n=20, down=service)
    assert b["answered ok"] == 0.0
    assert a["answered ok"] == 1.0 and a["accepted orders processed everywhere"] == 1.0
    assert a["not processed"] == 0


async def test_availability_tracks_the_product_of_availabilities_and_replays(leakcheck):
    k = Knobs(latency_ms=0, p=0.1, seed=5)
    n = 200
    b = await monolith.availability("before", k, n=n)
    a = await monolith.availability("after", k, n=n)
    want = ideal(k)
    assert want["success_before"] == pytest.approx(0.9 ** 5)
    assert abs(b["answered ok"] - want["success_before"]) <= binomial_margin(
        want["success_before"], n)
    assert abs(a["answered ok"] - want["accept_after"]) <= binomial_margin(want["accept_after"], n)
    assert a["accepted orders processed everywhere"] == 1.0 and a["not processed"] == 0
    assert (await monolith.availability("before", k, n=n))["answered ok"] == b["answered ok"]


# -- the outage -----------------------------------------------------------------------------------
async def test_no_order_is_lost_through_an_outage_and_the_lag_drains(leakcheck):
    k = Knobs(latency_ms=20)
    kw = dict(service="inventory", start_s=0.3, duration_s=0.6, rate=20, seconds=1.5)
    run_after = await monolith.outage_run("after", k, **kw)
    run_before = await monolith.outage_run("before", k, **kw)
    assert run_after.answered_ok == 1.0
    assert run_before.answered_ok < 0.85
    rec = run_after.reconcile
    assert (rec["not processed"] == 0).all() and (rec["orders accepted"] == 30).all()
    assert (rec["effect"] == rec["effect expected"]).all()
    lag = run_after.lag
    mine = lag[lag.group == "inventory"]
    down, up = run_after.window
    assert 0.25 < down < 0.45 and 0.55 < up - down < 0.75
    assert mine[mine.t <= up].lag.max() >= 8             # about 12 arrived while it was down
    assert mine.lag.iloc[-1] == 0 and run_after.drained_s == run_after.drained_s  # not NaN
    others = lag[lag.group != "inventory"]
    assert others.lag.max() <= 3                         # the others kept up throughout


async def test_a_crashed_consumer_resumes_from_its_committed_offset(leakcheck):
    async with after(Knobs(latency_ms=20)) as system:
        for i in range(5):
            await system.place_order(i)
        await system.down("payment")
        for i in range(5, 10):
            await system.place_order(i)
        await system.relays["order"].wait_drained()
        assert system.groups["payment"].lag() >= 5
        await system.up("payment")
        await system.drain()
        rec = await system.reconcile()
    assert (rec["events processed"] == 10).all() and (rec["not processed"] == 0).all()


# -- latency --------------------------------------------------------------------------------------
async def test_accepting_is_about_five_times_faster_than_the_chain(leakcheck):
    k = Knobs(latency_ms=20)
    want = ideal(k)["latency_before_ms"] / ideal(k)["accept_after_ms"]
    assert want == 5
    ratios = []
    for attempt in range(3):
        med = {}
        for name, build in monolith.DESIGNS.items():
            async with build(k) as system:
                r = await monolith.order_latencies(system, 5, first=5 * attempt)
                med[name] = r.latencies.median()
                if name == "after":
                    done = r.df["completion_ms"]
                    assert done.notna().all() and (done > r.df["latency_ms"]).all()
        ratios.append(med["before"] / med["after"])
        if abs(ratios[-1] / want - 1) <= 0.25:
            break
    else:
        pytest.fail(f"before/after ratios {[round(r, 2) for r in ratios]} vs ideal {want}")


def test_ideal_figures():
    got = ideal(Knobs(latency_ms=50, p=0.1))
    assert got["latency_before_ms"] == 250 and got["accept_after_ms"] == 50
    assert got["completion_after_ms"] == 100
    assert got["success_before"] == pytest.approx(0.9 ** 5)
    assert got["accept_after"] == pytest.approx(0.9) and got["processed_after"] == 1.0


# -- scopes ---------------------------------------------------------------------------------------
async def test_leaving_the_block_on_error_stops_everything_and_deletes_the_databases(leakcheck):
    threads = thread_count()
    for build in monolith.DESIGNS.values():
        system = build(K0)
        with pytest.raises(RuntimeError, match="boom"):
            async with system:
                folder = system.ws.path
                await system.place_order(0)
                raise RuntimeError("boom")
        assert not folder.exists() and not system.db
        assert all(s.port is None for s in system.topology.services.values())
    await asyncio.sleep(0.05)
    assert thread_count() <= threads


async def test_a_design_cannot_be_entered_twice(leakcheck):
    system = after(K0)
    async with system:
        with pytest.raises(RuntimeError, match="already running"):
            await system.__aenter__()


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, param", [
    ({"latency_ms": -1}, "latency_ms"), ({"latency_ms": "20"}, "latency_ms"),
    ({"p": 1.5}, "p"), ({"customers": 0}, "customers"), ({"skus": 2.5}, "skus"),
    ({"partitions": 0}, "partitions"), ({"retry_delay_s": -0.1}, "retry_delay_s"),
    ({"seed": 0.5}, "seed"),
])
def test_knobs_reject_bad_values_naming_the_parameter(kw, param):
    with pytest.raises((ValueError, TypeError)) as e:
        Knobs(**kw)
    assert str(e.value).startswith(param + " "), str(e.value)


@pytest.mark.parametrize("kw, param", [
    ({"column": "address", "new": "x"}, "column"),
    ({"column": "id", "new": "bad name"}, "new"),
    ({"column": "id", "new": "email"}, "new"),
    ({"column": "id", "new": "x", "table": "orders"}, "table"),
])
def test_migrations_reject_bad_values_naming_the_parameter(kw, param):
    with pytest.raises(ValueError) as e:
        Migration(**kw)
    assert str(e.value).startswith(param + " "), str(e.value)


async def test_experiments_reject_bad_values_naming_the_parameter():
    cases = [
        (monolith.availability("sideways", K0), "design"),
        (monolith.availability("before", K0, down="order"), "down"),
        (monolith.blast_radius("before", "rename id"), "migration"),
        (monolith.outage_run("after", K0, service="cache"), "service"),
        (monolith.outage_run("after", K0, start_s=3, duration_s=2, seconds=4), "duration_s"),
        (monolith.outage_run("after", K0, rate=0), "rate"),
    ]
    for coro, param in cases:
        with pytest.raises((ValueError, TypeError)) as e:
            await coro
        assert str(e.value).startswith(param + " "), str(e.value)
    with pytest.raises(ValueError, match="^i "):
        order_for(-1, K0)
    with pytest.raises(TypeError, match="^k "):
        before({"latency_ms": 5})
    with pytest.raises(ValueError, match="^service "):
        async with before(K0) as system:
            await system.down("order")


async def test_a_consumer_slower_than_the_arrivals_does_not_drain_but_keeps_its_events(
        leakcheck):
    run = await monolith.outage_run("after", Knobs(latency_ms=50), service="pricing",
                                    start_s=0.2, duration_s=0.2, rate=40, seconds=1.0,
                                    drain_timeout=0.2)
    assert run.drained_s != run.drained_s                 # NaN: never back to zero
    rec = run.reconcile
    assert rec.loc["pricing", "not processed"] > 0
    assert (rec["orders accepted"] == 40).all()
    assert run.answered_ok == 1.0                          # the order service did not care
