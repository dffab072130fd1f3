"""Labs 1, 3 and 4 (events, sagas, outbox): each checker passes its reference solution, rejects
known-wrong ones, and its cases really inject the faults their names promise.

The reference solutions are taken from the lab notebooks' hidden solution blocks (see
``reference`` in test_labs.py). Each wrong solution is the reference with one realistic mistake;
the checker must reject it at its smallest failing case (``stop_after=1``), for the right reason.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest
from aiohttp import web

from test_labs import reference
from toylib.labs import checkout_lab, monolith_lab, saga_lab
from toylib.saga import SagaDefinition, Step


# -- lab 1: a synchronous call becomes an event ---------------------------------------------------
@pytest.fixture(scope="module")
def lab1():
    ns = reference("01_distributed_monolith_lab.ipynb", "ref_place_order")
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


# -- lab 3: compensations of a saga ---------------------------------------------------------------
@pytest.fixture(scope="module")
def RefOrderSaga():
    return reference("03_shared_database_lab.ipynb", "RefOrderSaga")["RefOrderSaga"]


async def test_lab3_reference_passes(RefOrderSaga, leakcheck):
    report = await saga_lab.check(RefOrderSaga)
    assert report.ok, report.summary()


async def test_lab3_cases_inject_faults_at_every_step_and_compensation(RefOrderSaga):
    where, totals = Counter(), Counter()
    for case in saga_lab.CASES:
        got = await saga_lab.run_case(RefOrderSaga, case)
        where.update(got["where"])
        totals.update({k: got[k] for k in ("restarts", "completed", "compensated",
                                           *saga_lab.KINDS)})
        if case.params["faults"] != "random":     # a scenario: exactly its faults fired
            planned = Counter(kind for *_, kind in case.params["faults"])
            assert {k: got[k] for k in saga_lab.KINDS if got[k]} == dict(planned), (case, got)
            assert got["restarts"] == planned[saga_lab.DIES]
            failed_forward = any(s in saga_lab.UNDOABLE and ph == "do" and k != saga_lab.DIES
                                 for s, ph, _, k in case.params["faults"])
            assert got["compensated" if failed_forward else "completed"] == 1, (case, got)
    for step in saga_lab.STEPS:                        # every step fails somewhere...
        assert any(where[step, "do", k] for k in saga_lab.KINDS), step
    for step in saga_lab.UNDOABLE:                     # ...and every compensation, every way
        for kind in saga_lab.KINDS:
            assert where[step, "undo", kind], (step, kind, dict(where))
    assert totals["restarts"] >= 5 and totals["completed"] >= 10 and totals["compensated"] >= 10


def wrong_sagas(Ref):
    class CompensationsOnTheWrongSteps(Ref):
        """Each compensation attached to the other step: the order is cancelled (and the
        customer told) before the stock goes back."""
        def definition(self):
            s = self.svc
            return SagaDefinition("order", [
                Step("create_order", s.create_order, self.release_stock),
                Step("reserve", s.reserve, self.cancel_order),
                Step("charge", s.charge, self.refund, pivot=True),
                Step("notify", s.notify)])

    class UndoesEverythingInForwardOrder(Ref):
        """On a failed payment, undoes everything at once, in the order the steps ran."""
        async def refund(self, ctx, key):
            await self.cancel_order(ctx, key)
            await self.release_stock(ctx, key)
            await super().refund(ctx, key)

    class ReleasesTwice(Ref):
        """Gives the stock back every time it is called (ignores `released`)."""
        async def release_stock(self, ctx, key):
            db = self.svc.inventory
            async with db.transaction():
                row = await db.fetchone("SELECT sku, qty FROM reservations WHERE order_id = ?",
                                        (ctx["order_id"],))
                if row:
                    await db.execute("UPDATE stock SET available = available + ? WHERE sku = ?",
                                     (row[1], row[0]))
                    await db.execute("UPDATE reservations SET released = 1 WHERE order_id = ?",
                                     (ctx["order_id"],))

    class ReleasesWhatWasNeverReserved(Ref):
        """Gives back ctx's quantity without looking for a reservation."""
        async def release_stock(self, ctx, key):
            db = self.svc.inventory
            async with db.transaction():
                await db.execute("UPDATE stock SET available = available + ? WHERE sku = ?",
                                 (ctx["qty"], ctx["sku"]))
                await db.execute("UPDATE reservations SET released = 1 WHERE order_id = ?",
                                 (ctx["order_id"],))

    class ForgetsToRelease(Ref):
        async def release_stock(self, ctx, key):
            return None

    class CompensatesAfterThePivot(Ref):
        """The pivot moved to notify: a notification failure refunds a paid order."""
        def definition(self):
            s = self.svc
            return SagaDefinition("order", [
                Step("create_order", s.create_order, self.cancel_order),
                Step("reserve", s.reserve, self.release_stock),
                Step("charge", s.charge, self.refund),
                Step("notify", s.notify, pivot=True)])

    class PivotWithoutCompensation(Ref):
        """Assumes a failed payment call charged nothing: no refund."""
        def definition(self):
            s = self.svc
            return SagaDefinition("order", [
                Step("create_order", s.create_order, self.cancel_order),
                Step("reserve", s.reserve, self.release_stock),
                Step("charge", s.charge, pivot=True),
                Step("notify", s.notify)])

    class NotifiesEveryTime(Ref):
        """Inserts the failure notice on every call."""
        async def cancel_order(self, ctx, key):
            db = self.svc.orders
            async with db.transaction():
                await db.execute("UPDATE orders SET status = 'cancelled' WHERE order_id = ? "
                                 "AND status = 'pending'", (ctx["order_id"],))
                await db.execute("INSERT INTO notifications (order_id, kind) "
                                 "VALUES (?, 'failed')", (ctx["order_id"],))

    class CancelNeedsAnOrder(Ref):
        """Raises when there is no order to cancel (nothing to undo is an error)."""
        async def cancel_order(self, ctx, key):
            if not await self.svc.orders.fetchone("SELECT 1 FROM orders WHERE order_id = ?",
                                                  (ctx["order_id"],)):
                raise LookupError(f"no order {ctx['order_id']}")
            await super().cancel_order(ctx, key)

    class RefundsEveryTime(Ref):
        """Refunds whenever a charge exists, even if it was refunded already."""
        async def refund(self, ctx, key):
            db = self.svc.payment
            row = await db.fetchone("SELECT amount FROM payments WHERE order_id = ? AND "
                                    "kind = 'charge'", (ctx["order_id"],))
            if row:
                await db.execute("INSERT INTO payments (order_id, kind, amount) "
                                 "VALUES (?, 'refund', ?)", (ctx["order_id"], row[0]))

    return {c.__name__: c for c in (
        CompensationsOnTheWrongSteps, UndoesEverythingInForwardOrder, ReleasesTwice,
        ReleasesWhatWasNeverReserved, ForgetsToRelease, CompensatesAfterThePivot,
        PivotWithoutCompensation, NotifiesEveryTime, CancelNeedsAnOrder, RefundsEveryTime)}


LAB3_WRONG = {  # mistake -> what the smallest failing case says
    "CompensationsOnTheWrongSteps": "told once that the order failed",
    "UndoesEverythingInForwardOrder": "reverse order",
    "ReleasesTwice": "not conserved",
    "ReleasesWhatWasNeverReserved": "not conserved",
    "ForgetsToRelease": "is still held",
    "CompensatesAfterThePivot": "must complete",
    "PivotWithoutCompensation": "still out of",
    "NotifiesEveryTime": "2 failure notice(s)",
    "CancelNeedsAnOrder": "compensation_failed",
    "RefundsEveryTime": "refunded 2 times",
}


@pytest.mark.parametrize("mistake", list(LAB3_WRONG))
async def test_lab3_rejects_wrong_saga(RefOrderSaga, mistake):
    report = await saga_lab.check(wrong_sagas(RefOrderSaga)[mistake], stop_after=1)
    assert not report.ok, f"the checker accepted a wrong saga: {mistake}"
    assert LAB3_WRONG[mistake] in report.first_failure.message, report.summary()


async def test_lab3_wrong_order_is_caught_by_the_audit_when_effects_are_right(RefOrderSaga):
    """With compensations on the wrong steps every effect is eventually right after a failed
    payment; only the order of the effects, from the audit trail, gives it away."""
    report = await saga_lab.check(wrong_sagas(RefOrderSaga)["CompensationsOnTheWrongSteps"],
                                  only="payment-declined")
    assert "reverse order" in report.first_failure.message, report.summary()


async def test_lab3_starter_fails_with_a_message(RefOrderSaga, leakcheck):
    class Starter(RefOrderSaga):
        async def cancel_order(self, ctx, key):
            raise NotImplementedError("cancel_order: TODO")

        async def release_stock(self, ctx, key):
            raise NotImplementedError("release_stock: TODO")

        async def refund(self, ctx, key):
            raise NotImplementedError("refund: TODO")

    report = await saga_lab.check(Starter)
    assert not report.ok
    assert report.first_failure.message.startswith("not implemented yet")
    # Only the sagas with nothing to undo pass.
    assert {o.case.name for o in report.outcomes if o.passed} == {
        "happy-path", "notify-fails-twice", "restart-after-charge"}


async def test_lab3_checks_the_shape_of_the_saga(RefOrderSaga):
    class Reordered(RefOrderSaga):
        def definition(self):
            d = super().definition()
            return SagaDefinition("order", [d.steps[1], d.steps[0], *d.steps[2:]])

    report = await saga_lab.check(Reordered, only="happy-path")
    assert "must be create_order, reserve, charge, notify" in report.first_failure.message
    with pytest.raises(TypeError, match="OrderSaga"):
        await saga_lab.check(RefOrderSaga(None))


# -- lab 4: answer at once through an outbox ------------------------------------------------------
@pytest.fixture(scope="module")
def lab4():
    ns = reference("04_sync_everywhere_lab.ipynb", "ref_accept")
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
