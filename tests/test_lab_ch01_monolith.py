"""Lab 1 (ch01_monolith): its checker passes the reference solution, rejects known-wrong ones, and its
cases inject the faults their names promise. Each wrong solution is the reference with one
realistic mistake.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest
from aiohttp import web

from conftest import reference
from toylib.labs import ch04_sync as checkout_lab, ch01_monolith as monolith_lab, ch03_shared_db as saga_lab
from toylib.data.saga import SagaDefinition, Step


# -- lab 1: a synchronous call becomes an event ---------------------------------------------------
@pytest.fixture(scope="module")
def lab1():
    ns = reference("ch01_monolith_lab.ipynb", "ref_place_order")
    return {"place_order": ns["ref_place_order"], "charge_once": ns["ref_charge_once"]}


async def test_lab1_reference_passes(lab1, leakcheck):
    report = await monolith_lab.check(**lab1)
    assert report.ok, report.summary()


async def test_lab1_cases_inject_the_faults_they_name(lab1):
    seen = Counter()
    for case in monolith_lab.CASES:
        got = await monolith_lab.run_case(lab1, case)
        name = case.name
        if "relay" in name or name.startswith("everything"):
            assert got["relay crashes"] == 1 and got["events delivered again"] >= 1, (name, got)
        if "consumer-crash" in name or name.startswith("everything"):
            assert got["consumer crashes"] >= 1 and got["events delivered again"] >= 1, (name, got)
        if "order-service-dies" in name or name.startswith("everything"):
            assert got["order deaths"] == 1, (name, got)
        if "payment-dies" in name or name.startswith("everything"):
            assert got["payment deaths"] == 1 and got["events delivered again"] >= 1, (name, got)
        if "payment-down" in name or name.startswith("everything"):
            assert got["answered while payment down"] >= 3, (name, got)
        if name in ("one-order", "two-customers"):
            assert got["events delivered again"] == 0 and got["deliveries"] == case.size
        seen.update(k for k, n in got.items() if n)
    assert {"relay crashes", "consumer crashes", "order deaths", "payment deaths",
            "answered while payment down"} <= set(seen)


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


LAB1_WRONG = {  # mistake -> (which function is replaced, the wrong one, what the report says)
    "still calls payment synchronously": ("place_order", monolith_lab.sync_place_order,
                                          "called payment"),
    "order and event in two transactions": ("place_order", two_transactions, "charged 0 times"),
    "event keyed by order, not customer": ("place_order", keyed_by_order, "in the order"),
    "consumer without deduplication": ("charge_once", charges_every_delivery, "charged 2 times"),
    "event id recorded after the charge": ("charge_once", records_after_the_work,
                                           "charged 2 times"),
    "event id recorded before the charge": ("charge_once", records_before_the_work,
                                            "charged 0 times"),
    "deduplicates on the offset": ("charge_once", dedupes_on_offset, "charged 2 times"),
}


@pytest.mark.parametrize("mistake", list(LAB1_WRONG))
async def test_lab1_rejects_wrong_solution(lab1, mistake):
    part, wrong, why = LAB1_WRONG[mistake]
    report = await monolith_lab.check(**{**lab1, part: wrong}, stop_after=1)
    assert not report.ok, f"the checker accepted a wrong solution: {mistake}"
    assert why in report.first_failure.message, report.summary()


async def test_lab1_starter_fails_with_a_message(leakcheck):
    async def place_order(shop, order):
        raise NotImplementedError("place_order: TODO")

    async def charge_once(db, event):
        raise NotImplementedError("charge_once: TODO")

    report = await monolith_lab.check(place_order=place_order, charge_once=charge_once)
    assert report.passed == 0
    assert report.first_failure.message == "not implemented yet: place_order: TODO"


async def test_lab1_reports_a_consumer_that_always_fails_quickly(lab1):
    """A bug in the consumer is reported after a few redeliveries, not after a timeout, even
    when payment's consumers are crashed and restarted meanwhile (the outage case)."""
    async def broken(db, event):
        raise KeyError("amount")

    t0 = time.perf_counter()
    report = await monolith_lab.check(**{**lab1, "charge_once": broken},
                                      only="payment-down-for-a-while")
    assert time.perf_counter() - t0 < monolith_lab.DRAIN_TIMEOUT_S + 2
    assert "KeyError" in report.first_failure.message, report.summary()


async def test_lab1_replays_one_case_and_checks_its_arguments(lab1):
    report = await monolith_lab.check(**lab1, only="relay-publishes-twice")
    assert [o.case.name for o in report.outcomes] == ["relay-publishes-twice"]
    with pytest.raises(ValueError, match="only"):
        await monolith_lab.check(**lab1, only="no-such-case")
    with pytest.raises(TypeError, match="charge_once"):
        await monolith_lab.check(**{**lab1, "charge_once": lambda db, e: None})


