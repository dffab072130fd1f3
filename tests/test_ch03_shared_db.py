"""Chapter 3's designs: the migration really breaks the shared design and not the other; the
saga's invariants hold under faults (and the checker catches states where they do not); the
databases are temporary; bad input is refused with the parameter named; nothing keeps running.

Timing tests compare the two designs with wide margins, never absolute times.
"""
from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from toylib.testing import listening_sockets  # noqa: E402
from toylib import claims  # noqa: E402
from toylib.chapters import ch03_shared_db as sd  # noqa: E402
from toylib.data.bus import Event  # noqa: E402
from toylib.data.saga import TERMINAL  # noqa: E402
from toylib.chapters.ch03_shared_db import Config, DatabasePerService, SharedDatabase  # noqa: E402

DESIGNS = [SharedDatabase, DatabasePerService]


def sqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sqlite-")]


@pytest.fixture
async def nothing_left(leakcheck):
    """After the test: no task, no file descriptor, no SQLite thread, no listening socket."""
    yield
    assert sqlite_threads() == []
    assert listening_sockets() == []


# -- the migration ------------------------------------------------------------------------------
async def test_the_migration_breaks_the_shared_design_with_sqlites_own_error(nothing_left):
    async with SharedDatabase() as d:
        runs = await sd.migration(d, rounds=4, migrate_after=2)
    table = sd.broken(runs)
    assert table["failed before"].sum() == 0
    assert table["failed after"].to_dict() == {"orders": 0, "inventory": 0, "notification": 2,
                                               "billing": 2, "analytics": 2}
    failed = runs[~runs.ok]
    assert set(failed.status) == {500}
    assert set(failed.error) == {"OperationalError: no such column: total"}
    assert runs[runs.what == "ship the migration"].ok.all()


async def test_the_same_migration_breaks_nobody_per_service(nothing_left):
    async with DatabasePerService() as d:
        runs = await sd.migration(d, rounds=4, migrate_after=2)
        order = await d.primary("orders").fetchone(
            "SELECT total_cents FROM orders WHERE order_id = 'order-3'")
        copy = await d.primary("billing").fetchone(
            "SELECT total FROM orders WHERE order_id = 'order-3'")
    assert runs.ok.all(), runs[~runs.ok]
    assert sd.broken(runs)["failed after"].sum() == 0
    # the order team's table now holds cents; the contract (the event) still carries currency
    expected = sd.order_for(3, Config())["total"]
    assert order == (int(round(expected * 100)),) and copy == (expected,)


async def test_before_the_migration_both_designs_answer_the_same(nothing_left):
    answers = {}
    for design in DESIGNS:
        async with design() as d:
            for i in range(3):
                o = sd.order_for(i, d.cfg)
                assert (await d.request("orders", "POST", "/orders", o))["ok"]
                await d.sync()
                assert (await d.request("billing", "POST", f"/invoices/{o['order_id']}"))["ok"]
            invoices = await d.primary("billing").fetchall("SELECT * FROM invoices ORDER BY 1")
            revenue = await d.call("analytics", "GET", "/revenue")
        answers[design.name] = (invoices, revenue)
    assert answers["shared database"] == answers["database per service"]


async def test_one_file_shared_versus_one_file_per_service(nothing_left):
    async with SharedDatabase() as d:
        assert d.files() == ["shared.sqlite"]
        assert d.primary("billing").path == d.primary("orders").path
    async with DatabasePerService() as d:
        assert d.files() == sorted(f"{s}.sqlite" for s in (*sd.SERVICES, "saga"))
        assert len({d.primary(s).path for s in sd.SERVICES}) == len(sd.SERVICES)
        # billing's copy holds only what billing needs
        cols = [r[1] for r in await d.primary("billing").fetchall("PRAGMA table_info(orders)")]
        assert cols == ["order_id", "customer_id", "total"]


# -- the saga -----------------------------------------------------------------------------------
@pytest.mark.parametrize("p_decline, p_lost_reply, seed", [
    (0.0, 0.0, 1), (0.3, 0.1, 2), (0.5, 0.2, 3), (1.0, 0.0, 4), (0.0, 1.0, 5)])
async def test_saga_invariants_hold_with_payment_faults(p_decline, p_lost_reply, seed,
                                                        nothing_left):
    cfg = Config(p_decline=p_decline, p_lost_reply=p_lost_reply, seed=seed)
    async with DatabasePerService(cfg) as d:
        sagas = await sd.run_sagas(d, orders=40, concurrency=10)
        checks = await sd.invariants(d)
    assert checks.holds.all(), checks[~checks.holds]
    assert set(sagas.status) <= TERMINAL
    drawn = sd.expected_outcomes(cfg, 40)
    found = Counter(sagas.status)
    assert found["compensated"] == drawn["declined"] + drawn["lost_reply"]
    assert found["completed"] == drawn["ok"]


async def test_saga_invariants_hold_when_stock_runs_out(nothing_left):
    # 30 orders of 1-3 units for 3 skus with 8 units each: some reservations must fail
    async with DatabasePerService(stock=8, p_decline=0.1, seed=7) as d:
        await sd.run_sagas(d, orders=30, concurrency=10)
        checks = await sd.invariants(d)
        log = await d.orchestrator().log()
    assert checks.holds.all(), checks[~checks.holds]
    out_of_stock = log[(log.name == "reserve_inventory") & (log.phase == "do")
                       & (log.status == "failed")]
    assert len(out_of_stock) > 0
    assert out_of_stock.detail.str.contains("409").all()


async def test_compensation_runs_in_reverse_order_and_refunds_a_lost_reply(nothing_left):
    cfg = Config(p_lost_reply=1.0)
    async with DatabasePerService(cfg) as d:
        await sd.run_sagas(d, orders=1)
        log = await d.orchestrator().log()
        charges = await d.primary("billing").fetchall("SELECT order_id, state FROM charges")
        notices = await d.primary("notification").fetchall(
            "SELECT key, kind FROM notifications")
    undo = log[(log.phase == "undo") & (log.status == "succeeded")].name.tolist()
    assert undo == ["process_payment", "reserve_inventory", "create_order"]
    assert charges == [("order-0", "refunded")]
    assert notices == [("order-0:failed", "failed")]


async def test_a_redelivered_cancellation_sends_no_second_notice(nothing_left):
    async with DatabasePerService(p_decline=1.0) as d:
        await sd.run_sagas(d, orders=1)
        event = next(e for e in d.bus.events(sd.TOPIC) if e.value["type"] == "OrderCancelled")
        again = Event(**{**event.__dict__, "offset": event.offset + 1000})
        assert await d.consumers["notification"](again) is False
        notices = await d.primary("notification").fetchall("SELECT kind FROM notifications")
    assert notices == [("failed",)]


async def test_the_invariant_checker_rejects_broken_states(nothing_left):
    async with DatabasePerService(p_decline=0.3, seed=2) as d:
        await sd.run_sagas(d, orders=20)
        assert (await sd.invariants(d)).holds.all()
        bill, inv, orders = d.primary("billing"), d.primary("inventory"), d.primary("orders")
        (victim,) = await orders.fetchone("SELECT order_id FROM orders WHERE status = "
                                          "'confirmed' LIMIT 1")
        await bill.execute("INSERT INTO charges (order_id, idempotency_key, amount, state) "
                           "VALUES (?, 'retry-with-a-new-key', 1, 'charged')", (victim,))
        await inv.execute("UPDATE stock SET available = available - 1 WHERE sku = 'sku-0'")
        await orders.execute("UPDATE orders SET status = 'pending' WHERE order_id = ?",
                             (victim,))
        checks = await sd.invariants(d)
    failing = set(checks.index[~checks.holds])
    assert {"nobody charged twice", "stock conserved (available + reserved = initial)",
            "no order left pending", "analytics agrees with the order database"} <= failing


def test_payment_outcomes_are_seeded_per_order_and_grow_with_p():
    a, b = Config(p_decline=0.2, seed=1), Config(p_decline=0.4, seed=1)
    ids = [f"order-{i}" for i in range(300)]
    first = [sd.payment_outcome(o, a) for o in ids]
    assert first == [sd.payment_outcome(o, a) for o in ids]          # replayable
    declined_a = {o for o, x in zip(ids, first) if x == "declined"}
    declined_b = {o for o in ids if sd.payment_outcome(o, b) == "declined"}
    assert declined_a < declined_b                                    # monotone in p
    assert 30 <= len(declined_a) <= 90
    assert sd.order_for(5, a) == sd.order_for(5, Config(seed=1))


# -- timing: the two designs side by side, wide margins ----------------------------------------
async def test_the_shared_file_admits_one_writer_at_a_time(nothing_left):
    result = {}
    for design in DESIGNS:
        async with design(hold_ms=20) as d:
            result[design.name] = sd.write_summary(
                await sd.contention(d, writers=4, seconds=0.4))
    shared, per = result["shared database"], result["database per service"]
    assert shared["writes/s"] <= 1000 / 20 * 1.1         # one 20 ms transaction at a time
    assert per["writes/s"] > 2 * shared["writes/s"]
    assert shared["mean ms"] > 2 * per["mean ms"]


async def test_no_busy_timeout_turns_waiting_into_database_is_locked(nothing_left):
    async with SharedDatabase(hold_ms=10, busy_timeout=0) as d:
        df = await sd.contention(d, writers=3, seconds=0.3)
    failed = df[~df.ok]
    assert len(failed) > 0
    assert failed.error.str.contains("database is locked").all()


async def test_a_running_report_blocks_order_commits_only_in_a_shared_journal_file(nothing_left):
    p50 = {}
    for label, design, wal, analysts in (("base", SharedDatabase, False, 0),
                                         ("journal", SharedDatabase, False, 1),
                                         ("per service", DatabasePerService, False, 1)):
        async with design(history=20_000, wal=wal) as d:
            df = await sd.noisy_neighbour(d, analysts=analysts, rate=30, seconds=0.7)
            assert analysts == 0 or df.attrs["reports"] > 0
        assert df.ok.all()
        p50[label] = df.latency_ms.median()
    assert p50["journal"] > 3 * p50["base"]
    assert p50["per service"] < p50["journal"] / 2


async def test_more_order_workers_add_capacity_only_per_service(nothing_left):
    got = {}
    for design in DESIGNS:
        for workers in (1, 4):
            async with design(hold_ms=10, order_workers=workers) as d:
                r = await sd.scaling(d, seconds=0.6, work_ms=40)
            got[design.name, workers] = {**r, "everyone": r["order writes/s"]
                                         + r["other writes/s"]}

    def ratio(name, key):
        return got[name, 4][key] / max(got[name, 1][key], 1e-9)
    assert ratio("database per service", "order writes/s") > 1.8
    assert ratio("database per service", "other writes/s") > 0.7
    # shared: who gets the lock is close to a lottery, but the total cannot grow
    assert ratio("shared database", "everyone") < 1.4


async def test_staleness_grows_when_the_consumer_is_slower_than_the_arrivals(nothing_left):
    p99 = {}
    for delay in (0, 20):
        async with DatabasePerService(analytics_delay_ms=delay) as d:
            df = await sd.staleness(d, rate=100, seconds=0.5)
        assert len(df) == 50 and (df.staleness_ms > 0).all()
        p99[delay] = df.staleness_ms.quantile(0.99)
    assert p99[20] > 3 * p99[0]


# -- the analytic figures -----------------------------------------------------------------------
def test_ideal_figures():
    assert sd.ideal_contention(4, 10) == {"shared": {"writes/s": 100, "mean ms": 40},
                                          "per service": {"writes/s": 400, "mean ms": 10}}
    i = sd.ideal_scaling(8, work_ms=40, hold_ms=10)
    assert i == {"order, per service": 100, "others, per service": 80, "everyone, shared": 100}
    assert sd.ideal_scaling(1, work_ms=40, hold_ms=10)["order, per service"] == 20
    below = sd.ideal_staleness(rate=100, n=50, delay_ms=5, relay_interval_ms=4)
    assert np.allclose(below, 2 + 5)                             # flat below saturation
    above = sd.ideal_staleness(rate=100, n=50, delay_ms=15, relay_interval_ms=0)
    assert np.allclose(np.diff(above), 5)                        # grows 5 ms per event


def test_verdicts():
    assert sd.verdict_if(True) == claims.HOLDS
    assert sd.verdict_if(np.bool_(True), assumed=True) == claims.HOLDS_IF
    assert sd.verdict_if(False, assumed=True) == claims.FAILS


# -- diagrams -----------------------------------------------------------------------------------
def test_diagrams_are_drawn_from_the_designs():
    shared = str(SharedDatabase().diagram(problems={"shared_db": "one writer"}))
    for s in sd.SERVICES:
        assert f"{s} --> shared_db" in shared
    per = str(DatabasePerService().diagram())
    for s in sd.SERVICES:
        assert f"{s} --> {s}_db" in per
    assert "orders --> bus" in per and "bus --> billing" in per
    saga = str(sd.saga_diagram(DatabasePerService().order_saga()))
    assert "FAIL --> C2\n  C2 --> C1\n  C1 --> C0\n  C0 --> NOTE" in saga
    assert "process_payment (pivot)" in saga and "send_notification (retried)" in saga


# -- scope: temporary files, nothing running ----------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
async def test_databases_are_temporary_even_on_error(design, nothing_left):
    async with design() as d:
        folder = d.ws.path
        assert folder.exists()
    assert not folder.exists()
    with pytest.raises(ZeroDivisionError):
        async with design() as d:
            folder = d.ws.path
            await d.call("orders", "POST", "/orders", json=sd.order_for(0, d.cfg))
            1 / 0
    assert not folder.exists()
    assert d.pools == {}


async def test_databases_are_removed_when_an_experiment_is_cancelled(nothing_left):
    box = {}

    async def experiment():
        async with DatabasePerService(hold_ms=10) as d:
            box["folder"] = d.ws.path
            await sd.contention(d, writers=5, seconds=30)

    task = asyncio.create_task(experiment())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not box["folder"].exists()


async def test_a_design_runs_once_at_a_time(nothing_left):
    d = SharedDatabase()
    async with d:
        with pytest.raises(RuntimeError, match="already running"):
            await d.__aenter__()
    with pytest.raises(RuntimeError, match="not running"):
        d.pool("orders")


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("knobs, name", [
    ({"hold_ms": -1}, "hold_ms"), ({"order_workers": 0}, "order_workers"),
    ({"analysts": 0}, "analysts"), ({"history": -5}, "history"), ({"skus": 9}, "skus"),
    ({"p_decline": 1.5}, "p_decline"), ({"p_lost_reply": -0.1}, "p_lost_reply"),
    ({"p_decline": 0.7, "p_lost_reply": 0.5}, "p_decline + p_lost_reply"),
    ({"analytics_delay_ms": -1}, "analytics_delay_ms"), ({"wal": "yes"}, "wal"),
    ({"relay_interval_ms": 0}, "relay_interval_ms"), ({"seed": 1.5}, "seed"),
])
def test_bad_knobs_are_refused_with_their_name(knobs, name):
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        Config(**knobs)
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        DatabasePerService(**knobs)


def test_unknown_knobs_and_bad_configs_are_refused():
    with pytest.raises(TypeError, match="unknown knob.*writers"):
        SharedDatabase(writers=3)
    with pytest.raises(TypeError, match="cfg must"):
        SharedDatabase({"hold_ms": 1})


async def test_bad_experiment_arguments_are_refused_with_their_name(nothing_left):
    async with SharedDatabase() as d:
        with pytest.raises(ValueError, match="writers"):
            await sd.contention(d, writers=0)
        with pytest.raises(ValueError, match="writers"):
            await sd.contention(d, writers=6)
        with pytest.raises(ValueError, match="analysts"):
            await sd.contention(d, writers=1, analysts=2)     # more than the design has
        with pytest.raises(ValueError, match="rounds"):
            await sd.migration(d, rounds=0)
        with pytest.raises(ValueError, match="migrate_after"):
            await sd.migration(d, rounds=3, migrate_after=4)
        with pytest.raises(ValueError, match="rate"):
            await sd.noisy_neighbour(d, analysts=0, rate=0)
        with pytest.raises(ValueError, match="service"):
            d.primary("payments")
        with pytest.raises(TypeError, match="DatabasePerService"):
            await sd.run_sagas(d)
        with pytest.raises(TypeError, match="DatabasePerService"):
            await sd.staleness(d)
    with pytest.raises(ValueError, match="writers"):
        await sd.try_it(writers=9)
    with pytest.raises(ValueError, match="p_payment_fail"):
        await sd.try_it(p_payment_fail=2)
    with pytest.raises(ValueError, match="writers"):
        sd.ideal_contention(0, 10)
    with pytest.raises(ValueError, match="hold_ms"):
        sd.ideal_scaling(1, work_ms=10, hold_ms=0)
    with pytest.raises(TypeError, match="condition"):
        sd.verdict_if("yes")


async def test_the_panel_function_returns_a_table_a_figure_and_the_invariants(nothing_left):
    import matplotlib.pyplot as plt
    table, fig, checks = await sd.try_it(writers=2, analytics_load=1, p_payment_fail=0.5)
    plt.close(fig)
    assert list(table.index) == ["shared", "per service"]
    assert {"writes/s", "ideal writes/s", "fairness"} <= set(table.columns)
    assert checks.holds.all()
