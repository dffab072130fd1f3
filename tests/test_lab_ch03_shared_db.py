"""Lab 3 (ch03_shared_db): its checker passes the reference solution, rejects known-wrong ones, and its
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


# -- lab 3: compensations of a saga ---------------------------------------------------------------
@pytest.fixture(scope="module")
def RefOrderSaga():
    return reference("ch03_shared_db_lab.ipynb", "RefOrderSaga")["RefOrderSaga"]


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


