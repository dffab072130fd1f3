"""Lab 1 (ch01_monolith): its checker passes two independently written correct solutions,
rejects known-wrong ones (at least one per class of mistake a real system punishes: memory
that survives a restart, concurrency, faults between statements, answers that disagree with
the database, bugs only generated cases find), and its cases inject the faults their names
promise. Each wrong solution is a correct one with one realistic mistake.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import pytest

from toylib.labs import ch01_monolith as lab
from toylib.labs.faults import Crash, GraderError, Process, ProgramImage
from toylib.labs.grading import Case
from toylib.labs.solutions import ch01_monolith as solutions

REFERENCE, ALTERNATIVE = solutions.REFERENCE, solutions.ALTERNATIVE


# -- the correct solutions pass -------------------------------------------------------------------
@pytest.mark.parametrize("solution", [REFERENCE, ALTERNATIVE], ids=["reference", "alternative"])
async def test_correct_solutions_pass_every_case(solution, leakcheck):
    report = await lab.check(**solution)
    assert report.ok, report.summary()
    assert report.passed >= 18


async def test_the_faults_follow_what_the_solution_does():
    ref = await lab.profile(REFERENCE)
    alt = await lab.profile(ALTERNATIVE)
    assert ref == lab.DEFAULT_PROFILE                      # 4 statements, 1 commit; 3 and 1
    assert (alt.order_statements, alt.payment_statements) == (3, 2)
    names = {c.name for c in lab.cases_for(alt)}
    assert "order-service-dies-at-statement-3" in names
    assert "order-service-dies-at-statement-4" not in names
    assert "payment-dies-after-commit-1" in names


async def test_lab1_cases_inject_the_faults_they_name():
    seen = Counter()
    for case in lab.CASES:
        if case.name == "generated":
            continue
        got = await lab.run_case(REFERENCE, case)
        name = case.name
        if "relay" in name or name.startswith("everything"):
            assert got["relay crashes"] == 1 and got["events delivered again"] >= 1, (name, got)
        if "consumer-crash" in name or name.startswith("everything"):
            assert got["consumer crashes"] >= 1 and got["events delivered again"] >= 1, (name, got)
        if "order-service-dies" in name or name.startswith("everything"):
            assert got["order deaths"] == 1 and got["order restarts"] >= 1, (name, got)
        if "payment-dies" in name or name.startswith("everything"):
            assert got["payment deaths"] == 1 and got["events delivered again"] >= 1, (name, got)
            assert got["consumer processes"] >= 1, (name, got)   # a new process took over
        if "payment-down" in name or name.startswith("everything"):
            assert got["answered while payment down"] >= 3, (name, got)
        if name in ("one-order", "two-customers", "same-order-twice"):
            assert got["events delivered again"] == 0 and got["deliveries"] == case.size
        seen.update(k for k, n in got.items() if n)
    assert {"relay crashes", "consumer crashes", "order deaths", "payment deaths",
            "order restarts", "answered while payment down"} <= set(seen)


async def test_the_generated_case_runs_its_examples_on_a_correct_solution(leakcheck):
    case = next(c for c in lab.CASES if c.name == "generated")
    got = await lab.run_case(REFERENCE, case)
    assert got["generated cases"] == lab.GENERATED_EXAMPLES


async def test_a_planned_fault_that_does_not_fire_is_a_grader_error(leakcheck):
    case = Case("order-service-dies-at-statement-9", 3, 1,
                {"orders": 3, "customers": 1, "order_dies": (1, ("statement", 9))})
    with pytest.raises(GraderError, match="did not fire.*statement-9.*4 statement"):
        await lab.run_case(REFERENCE, case)
    report = await lab.grade(lab.LAB, [case], lambda s, c: lab.run_case(s, c), REFERENCE)
    assert not report.ok and "GraderError" in report.first_failure.message


# -- the known-wrong solutions fail ---------------------------------------------------------------
def _insert_order(shop, order):
    return shop.db.execute(
        "INSERT INTO orders (customer_id, sku, qty, amount, status, created_at) "
        "VALUES (?, ?, ?, ?, 'accepted', ?)",
        (order["customer_id"], order["sku"], order["qty"], order["amount"], time.time()))


async def two_transactions(shop, order):
    """Wrong: the order and its event in two transactions (a dual write in one database)."""
    async with shop.db.transaction():
        await _insert_order(shop, order)
        (row_id,) = await shop.db.fetchone("SELECT last_insert_rowid()")
    async with shop.db.transaction():
        await shop.outbox.emit("orders", f"customer-{order['customer_id']}",
                               {"order_id": f"order-{row_id}", **order})
    return {"order_id": f"order-{row_id}", "status": "accepted"}


async def keyed_by_order(shop, order):
    """Wrong: the event's key is the order id, so one customer's orders spread over
    partitions and may be charged out of order."""
    async with shop.db.transaction():
        await _insert_order(shop, order)
        (row_id,) = await shop.db.fetchone("SELECT last_insert_rowid()")
        await shop.outbox.emit("orders", f"order-{row_id}",
                               {"order_id": f"order-{row_id}", **order})
    return {"order_id": f"order-{row_id}", "status": "accepted"}


async def _charge(db, event):
    e = event.value
    await db.execute("INSERT INTO charges (order_id, customer_id, amount) VALUES (?, ?, ?)",
                     (e["order_id"], e["customer_id"], e["amount"]))


async def charges_every_delivery(db, event):
    """Wrong: no deduplication at all."""
    await _charge(db, event)


async def records_after_the_work(db, event):
    """Wrong: the charge and the record of the event id in two transactions."""
    if await db.fetchone("SELECT 1 FROM processed WHERE event_id = ?", (event.event_id,)):
        return
    await _charge(db, event)
    await db.execute("INSERT INTO processed (event_id) VALUES (?)", (event.event_id,))


async def records_before_the_work(db, event):
    """Wrong: records the event id first, then charges (at-most-once: a crash loses it)."""
    async with db.transaction():
        if await db.fetchone("SELECT 1 FROM processed WHERE event_id = ?", (event.event_id,)):
            return
        await db.execute("INSERT INTO processed (event_id) VALUES (?)", (event.event_id,))
    await _charge(db, event)


async def dedupes_on_offset(db, event):
    """Wrong: deduplicates on (partition, offset), which a republished event does not keep."""
    where = f"{event.partition}:{event.offset}"
    async with db.transaction():
        if await db.fetchone("SELECT 1 FROM processed WHERE event_id = ?", (where,)):
            return
        await _charge(db, event)
        await db.execute("INSERT INTO processed (event_id) VALUES (?)", (where,))


# Real restarts: what a crash must take with it.
async def remembers_on_the_connection(db, event):
    """Wrong (memory): the events done are kept on the connection object, not in a table."""
    done = db.__dict__.setdefault("done_events", set())
    if event.event_id in done:
        return
    async with db.transaction():
        await _charge(db, event)
    done.add(event.event_id)


CHARGED: dict = {}       # (database file, event id) -> True: a process's memory


async def remembers_in_a_dict(db, event):
    """Wrong (memory): a module-level dict of the events done, per database file."""
    key = (str(db.path), event.event_id)
    if CHARGED.get(key):
        return
    async with db.transaction():
        await _charge(db, event)
    CHARGED[key] = True


NEXT_ID: dict = {}       # database file -> the next order id: a process's memory


async def counts_ids_in_memory(shop, order):
    """Wrong (memory): order ids handed out by a counter in memory, not by the database."""
    oid = NEXT_ID.get(str(shop.db.path), 0) + 1
    async with shop.db.transaction():
        await shop.db.execute(
            "INSERT INTO orders (id, customer_id, sku, qty, amount, status, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'accepted', ?)",
            (oid, order["customer_id"], order["sku"], order["qty"], order["amount"],
             time.time()))
        await shop.outbox.emit("orders", f"customer-{order['customer_id']}",
                               {"order_id": f"order-{oid}", **order})
    NEXT_ID[str(shop.db.path)] = oid
    return {"order_id": f"order-{oid}", "status": "accepted"}


# Concurrency: a read, then a write, with other requests in between.
async def id_from_a_count(shop, order):
    """Wrong (concurrency): the id is read as COUNT(*) + 1 before the transaction, so two
    concurrent orders are told, and publish, the same id."""
    (n,) = await shop.db.fetchone("SELECT COUNT(*) FROM orders")
    order_id = f"order-{n + 1}"
    async with shop.db.transaction():
        await _insert_order(shop, order)
        await shop.outbox.emit("orders", f"customer-{order['customer_id']}",
                               {"order_id": order_id, **order})
    return {"order_id": order_id, "status": "accepted"}


# Faults at every boundary: its mistake sits past the statements a fixed plan would reach.
async def logs_then_charges_in_two_statements(db, event):
    """Wrong (boundaries): three lookups first, then the charge and the record as two separate
    autocommitted statements (no transaction, so no commit to die after)."""
    await db.fetchone("SELECT COUNT(*) FROM charges")
    await db.fetchone("SELECT COUNT(*) FROM processed")
    if await db.fetchone("SELECT 1 FROM processed WHERE event_id = ?", (event.event_id,)):
        return
    await _charge(db, event)
    await db.execute("INSERT INTO processed (event_id) VALUES (?)", (event.event_id,))


# What each client was told, against the database.
async def dedupes_identical_orders(shop, order):
    """Wrong (per request): a second identical order is answered with the first one's id
    instead of being placed (every order in the table is still charged once)."""
    async with shop.db.transaction():
        same = await shop.db.fetchone(
            "SELECT id FROM orders WHERE customer_id = ? AND sku = ? AND qty = ?",
            (order["customer_id"], order["sku"], order["qty"]))
        if same:
            return {"order_id": f"order-{same[0]}", "status": "accepted"}
        await _insert_order(shop, order)
        (row_id,) = await shop.db.fetchone("SELECT last_insert_rowid()")
        await shop.outbox.emit("orders", f"customer-{order['customer_id']}",
                               {"order_id": f"order-{row_id}", **order})
    return {"order_id": f"order-{row_id}", "status": "accepted"}


LAB1_WRONG = {  # mistake -> (which function is replaced, the wrong one, what the report says)
    "still calls payment synchronously": ("place_order", lab.sync_place_order,
                                          "called payment"),
    "order and event in two transactions": ("place_order", two_transactions, "charged 0 times"),
    "event keyed by order, not customer": ("place_order", keyed_by_order, "in the order"),
    "consumer without deduplication": ("charge_once", charges_every_delivery, "charged 2 times"),
    "event id recorded after the charge": ("charge_once", records_after_the_work,
                                           "charged 2 times"),
    "event id recorded before the charge": ("charge_once", records_before_the_work,
                                            "charged 0 times"),
    "deduplicates on the offset": ("charge_once", dedupes_on_offset, "charged 2 times"),
    # the classes of issue 12, one new mistake (at least) each
    "restarts: dedup kept on the connection": ("charge_once", remembers_on_the_connection,
                                               "processed again"),
    "restarts: dedup kept in a module dict": ("charge_once", remembers_in_a_dict,
                                              "processed again"),
    "restarts: ids counted in memory": ("place_order", counts_ids_in_memory, "answered 500"),
    "concurrency: id read from a count": ("place_order", id_from_a_count, "both told"),
    "boundaries: charge and record in two statements": (
        "charge_once", logs_then_charges_in_two_statements, "charged 2 times"),
    "per request: identical orders merged": ("place_order", dedupes_identical_orders,
                                             "both told"),
}


@pytest.mark.parametrize("mistake", list(LAB1_WRONG))
async def test_lab1_rejects_wrong_solution(mistake):
    part, wrong, why = LAB1_WRONG[mistake]
    CHARGED.clear()
    NEXT_ID.clear()
    report = await lab.check(**{**REFERENCE, part: wrong}, stop_after=1)
    assert not report.ok, f"the checker accepted a wrong solution: {mistake}"
    f = report.first_failure
    assert why in f.message, report.summary()
    assert f.case.name != "generated", report.summary()     # a fixed case catches it first
    summary = report.summary()
    assert "not done" in summary and "Replay it alone" in summary


async def test_the_new_mistakes_are_plausible_they_pass_the_fault_free_cases():
    """Each is right on the happy path: only the restarts, the concurrency, the boundary or
    the per-request check catches it."""
    for part, wrong in (("charge_once", remembers_on_the_connection),
                        ("charge_once", remembers_in_a_dict),
                        ("place_order", counts_ids_in_memory),
                        ("place_order", id_from_a_count),
                        ("charge_once", logs_then_charges_in_two_statements),
                        ("place_order", dedupes_identical_orders)):
        CHARGED.clear()
        NEXT_ID.clear()
        for case in lab.CASES:
            if case.name in ("one-order", "two-customers"):
                await lab.run_case({**REFERENCE, part: wrong}, case)


async def test_a_failure_shows_the_history_around_it_and_the_replay():
    report = await lab.check(**{**REFERENCE, "place_order": dedupes_identical_orders},
                             only="same-order-twice")
    f = report.first_failure
    assert "History around the divergence" in f.detail
    assert "> #2:" in f.detail and "-> 202 order-1" in f.detail      # the request that diverged
    assert "Replay it alone: await check(..., only='same-order-twice')" in report.summary()


async def dedupes_on_content(db, event):
    """Wrong (found by generated cases): a customer is never charged the same amount twice."""
    e = event.value
    async with db.transaction():
        if await db.fetchone("SELECT 1 FROM charges WHERE customer_id = ? AND amount = ?",
                             (e["customer_id"], e["amount"])):
            return
        await _charge(db, event)


async def test_generated_cases_find_and_shrink_a_failure():
    t0 = time.perf_counter()
    report = await lab.check(**{**REFERENCE, "charge_once": dedupes_on_content},
                             only="generated")
    assert time.perf_counter() - t0 < 20
    f = report.first_failure
    assert f is not None and f.case.name == "generated", report.summary()
    assert f"seed {lab.GENERATED_SEED}" in f.message and "shrank it to" in f.message
    assert "charged 0 times" in f.message
    shrunk = f.message.split("with the orders ", 1)[1].split(":\n", 1)[0]
    assert shrunk.count("#") == 2, f.message            # two alike orders: the smallest case
    assert f"only='generated', seed={lab.GENERATED_SEED}" in report.summary()


# -- the report, the starter, the arguments -------------------------------------------------------
async def test_lab1_starter_fails_with_a_message(leakcheck):
    async def place_order(shop, order):
        raise NotImplementedError("place_order: TODO")

    async def charge_once(db, event):
        raise NotImplementedError("charge_once: TODO")

    report = await lab.check(place_order=place_order, charge_once=charge_once)
    assert report.passed == 0
    assert report.first_failure.message == "not implemented yet: place_order: TODO"


async def test_lab1_reports_a_consumer_that_always_fails_quickly():
    """A bug in the consumer is reported after a few redeliveries, not after a timeout, even
    when payment's consumers are crashed and restarted meanwhile (the outage case)."""
    async def broken(db, event):
        raise KeyError("amount")

    t0 = time.perf_counter()
    report = await lab.check(**{**REFERENCE, "charge_once": broken},
                             only="payment-down-for-a-while")
    assert time.perf_counter() - t0 < lab.DRAIN_TIMEOUT_S + 2
    assert "KeyError" in report.first_failure.message, report.summary()


async def test_lab1_replays_one_case_and_checks_its_arguments():
    report = await lab.check(**REFERENCE, only="relay-publishes-twice")
    assert [o.case.name for o in report.outcomes] == ["relay-publishes-twice"]
    with pytest.raises(ValueError, match="^only "):
        await lab.check(**REFERENCE, only="no-such-case")
    with pytest.raises(TypeError, match="^charge_once "):
        await lab.check(**{**REFERENCE, "charge_once": lambda db, e: None})
    for bad in (-1, 1.5, math.nan, math.inf, 2**40, "1"):
        with pytest.raises((TypeError, ValueError), match="^seed "):
            await lab.check(**REFERENCE, seed=bad)
    for bad in (0, -1, math.nan):
        with pytest.raises((TypeError, ValueError), match="^stop_after "):
            await lab.check(**REFERENCE, stop_after=bad)
    with pytest.raises(TypeError, match="^case "):
        await lab.run_case(REFERENCE, "one-order")
    with pytest.raises(TypeError, match="^profile "):
        lab.cases_for("fast")
    for kw, param in (({"customer_id": 0}, "customer_id"), ({"sku": "sku-9"}, "sku"),
                      ({"qty": math.inf}, "qty")):
        with pytest.raises((TypeError, ValueError), match=f"^{param} "):
            lab.make_order(**{"customer_id": 1, "sku": "sku-0", "qty": 1, **kw})


# -- the restart primitive ------------------------------------------------------------------------
SEEN: set = set()


def _remember(x):
    SEEN.add(x)
    return len(SEEN)


async def _counts(x):
    return _remember(x)


class _Counter:
    def __init__(self):
        self.seen = set()

    async def __call__(self, x):
        self.seen.add(x)
        return len(self.seen)


def _closure():
    seen = set()

    async def count(x):
        seen.add(x)
        return len(seen)
    return count


@pytest.mark.parametrize("fn", [_counts, _Counter(), _closure(), _Counter().__call__],
                         ids=["module data via a helper", "instance", "closure", "method"])
async def test_a_boot_starts_with_nothing_in_memory(fn):
    image = ProgramImage(fn)
    first = image.boot()
    assert [await first(1), await first(2)] == [1, 2]
    again = image.boot()
    assert await again(3) == 1                   # the new process remembers nothing
    assert SEEN == set()                         # and the original was never touched
    with pytest.raises(TypeError, match="^fn "):
        ProgramImage(lambda x: x)


async def test_a_killed_process_loses_its_transaction_and_a_restart_reads_the_file(tmp_path,
                                                                                  leakcheck):
    from toylib.data.db import Workspace
    async with Workspace(prefix="lab1-test-", wal=True) as ws:
        proc = await Process(ws, "payment", ProgramImage(_counts)).start()
        await proc.db.executescript("CREATE TABLE t (x INTEGER);")
        await proc.db.execute("INSERT INTO t VALUES (1)")

        async def open_transaction():
            async with proc.db.transaction():
                await proc.db.execute("INSERT INTO t VALUES (2)")
                await asyncio.sleep(10)
        task = asyncio.ensure_future(open_transaction())
        await asyncio.sleep(0.05)
        await proc.kill()
        with pytest.raises((Crash, RuntimeError, asyncio.CancelledError)):
            task.cancel()
            await task
        with pytest.raises(Crash, match="dead"):
            await proc.db.execute("SELECT 1")
        await proc.start()
        assert proc.generation == 2 and proc.deaths == 1
        assert await proc.db.fetchall("SELECT x FROM t") == [(1,)]
        await proc.kill()


@pytest.mark.parametrize("field", ["order_statements", "order_commits", "payment_statements",
                                   "payment_commits"])
@pytest.mark.parametrize("bad", [-1, math.nan, math.inf, 10**9, "3", 2.5], ids=repr)
def test_a_profile_refuses_hostile_counts(field, bad):
    with pytest.raises((ValueError, TypeError), match=f"^{field} "):
        lab.Profile(**{field: bad})


async def test_the_fault_primitives_refuse_hostile_arguments(leakcheck):
    from toylib.data.db import Workspace
    for bad in (0, -1, math.nan, math.inf, "1"):
        with pytest.raises((ValueError, TypeError), match="^at "):
            async with Workspace(prefix="lab1-test-") as ws:
                db = await lab.mortal_database(ws, "x")
                async with db.doom(at=bad):
                    pass
    with pytest.raises(TypeError, match="^ws "):
        await lab.mortal_database("folder", "x")
    with pytest.raises(TypeError, match="^ws "):
        Process(None, "x", ProgramImage(_counts))
    async with Workspace(prefix="lab1-test-") as ws:
        with pytest.raises(ValueError, match="^name "):
            Process(ws, "../x", ProgramImage(_counts))
        with pytest.raises(TypeError, match="^image "):
            Process(ws, "x", _counts)
