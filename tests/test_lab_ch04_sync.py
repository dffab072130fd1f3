"""Lab 4 (ch04_sync): its checker passes the reference solution, rejects known-wrong ones, and its
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


# -- lab 4: answer at once through an outbox ------------------------------------------------------
@pytest.fixture(scope="module")
def lab4():
    ns = reference("ch04_sync_lab.ipynb", "ref_accept")
    return {"accept": ns["ref_accept"], "order_status": ns["ref_order_status"]}


async def test_lab4_reference_passes(lab4, leakcheck):
    report = await checkout_lab.check(**lab4)
    assert report.ok, report.summary()


async def test_lab4_cases_inject_what_they_name(lab4):
    for case in checkout_lab.CASES:
        got = await checkout_lab.run_case(lab4, case)
        deaths = case.params.get("deaths", {})
        assert got["deaths"] == len(deaths), (case.name, got)
        # every order the client was told about, or that was stored before a death, finished
        assert got["completed"] + got["compensated"] >= got["accepted"]
        if case.params.get("p"):
            assert got["compensated"] >= 1 and got["completed"] >= 1, (case.name, got)
        if case.params.get("scale"):       # the seed's delays: the saga itself takes 530 ms
            assert got["median response ms"] * checkout_lab.MIN_SPEEDUP < \
                checkout_lab.CHAIN_MS, got


async def _store(shop, body) -> str:
    order_id = await shop.statuses.accept()
    await shop.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'accepted', ?)",
                          (order_id, body["cart_id"], body["customer_id"], time.time()))
    return order_id


def _accepted(order_id):
    return web.json_response({"order_id": order_id, "status": "accepted"}, status=202)


def wrong_accepts(ref_accept):
    async def calls_the_chain_first(shop, request):
        """The old handler's calls kept before the new code."""
        body = await request.json()
        await shop.service.call("cart", "GET", f"/carts/{body['cart_id']}")
        await shop.service.call("customer", "GET", f"/customers/{body['customer_id']}")
        return await ref_accept(shop, request)

    async def waits_for_the_saga(shop, request):
        """Stores correctly, then holds the client until the order is final."""
        answer = await ref_accept(shop, request)
        order_id = json.loads(answer.body)["order_id"]
        while await shop.statuses.status(order_id) not in ("completed", "compensated",
                                                           "failed"):
            await asyncio.sleep(0.01)
        return answer

    async def two_transactions(shop, request):
        body = await request.json()
        async with shop.db.transaction():
            order_id = await _store(shop, body)
        async with shop.db.transaction():
            await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
        return _accepted(order_id)

    async def publishes_directly(shop, request):
        """No outbox: publishes to the bus after the commit (the dual write)."""
        body = await request.json()
        async with shop.db.transaction():
            order_id = await _store(shop, body)
        await shop.bus.publish("checkouts", order_id, {**body, "order_id": order_id})
        return _accepted(order_id)

    background = set()

    async def answers_before_storing(shop, request):
        """Answers 202 at once and stores the order in a background task."""
        body = await request.json()
        order_id = f"order-{uuid.uuid4().hex[:8]}"

        async def store():
            try:
                async with shop.db.transaction():
                    await shop.statuses.accept(order_id)
                    await shop.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'accepted', ?)",
                                          (order_id, body["cart_id"], body["customer_id"],
                                           time.time()))
                    await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
            except Exception:
                pass                          # a fire-and-forget task: nobody hears it die
        task = asyncio.ensure_future(store())
        background.add(task)
        task.add_done_callback(background.discard)
        return _accepted(order_id)

    async def no_status(shop, request):
        """Writes the order and its event, but no status for the order."""
        body = await request.json()
        async with shop.db.transaction():
            (n,) = await shop.db.fetchone("SELECT COUNT(*) FROM orders")
            order_id = f"order-{n + 1}"
            await shop.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'accepted', ?)",
                                  (order_id, body["cart_id"], body["customer_id"], time.time()))
            await shop.outbox.emit("checkouts", order_id, {**body, "order_id": order_id})
        return _accepted(order_id)

    return {f.__name__: f for f in (calls_the_chain_first, waits_for_the_saga,
                                    two_transactions, publishes_directly,
                                    answers_before_storing, no_status)}


async def status_without_404(shop, request):
    """Wrong: an unknown id raises, and the service answers 500."""
    return await shop.statuses.get(request.match_info["id"])


async def status_from_the_orders_table(shop, request):
    """Wrong: reads the orders table and answers 200 'unknown' for an unknown id."""
    row = await shop.db.fetchone("SELECT status FROM orders WHERE order_id = ?",
                                 (request.match_info["id"],))
    return {"status": row[0] if row else "unknown"}


LAB4_WRONG = {  # mistake -> what the smallest failing case says
    "calls_the_chain_first": "while the client waited",
    "waits_for_the_saga": "5x sooner",
    "two_transactions": "never finished",
    "publishes_directly": "never finished",
    "answers_before_storing": "answers 404",
    "no_status": "shop.statuses.accept()",
    "status_without_404": "must be answered 404",
    "status_from_the_orders_table": "must be answered 404",
}


@pytest.mark.parametrize("mistake", list(LAB4_WRONG))
async def test_lab4_rejects_wrong_handlers(lab4, mistake):
    if mistake.startswith("status_"):
        wrong = {**lab4, "order_status": globals()[mistake]}
    else:
        wrong = {**lab4, "accept": wrong_accepts(lab4["accept"])[mistake]}
    report = await checkout_lab.check(**wrong, stop_after=1)
    assert not report.ok, f"the checker accepted a wrong solution: {mistake}"
    assert LAB4_WRONG[mistake] in report.first_failure.message, report.summary()


async def test_lab4_starter_fails_with_a_message(leakcheck):
    async def accept(shop, request):
        raise NotImplementedError("accept: TODO")

    async def order_status(shop, request):
        raise NotImplementedError("order_status: TODO")

    report = await checkout_lab.check(accept=accept, order_status=order_status)
    assert report.passed == 0
    assert report.first_failure.message == "not implemented yet: accept: TODO"


async def test_lab4_replays_one_case_and_checks_its_arguments(lab4):
    report = await checkout_lab.check(**lab4, only="dies-right-after-commit")
    assert [o.case.name for o in report.outcomes] == ["dies-right-after-commit"]
    with pytest.raises(TypeError, match="order_status"):
        await checkout_lab.check(**{**lab4, "order_status": lambda shop, request: None})
