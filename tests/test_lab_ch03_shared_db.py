"""Lab 3 (ch03_shared_db): its checker passes two independently written correct sagas, rejects
known-wrong ones (one realistic mistake each, at least one per class of fault the grader
injects: real restarts, deaths between transactions, concurrency, per-saga durable state,
generated cases), and its cases inject the faults their names promise.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import pytest
from aiohttp import web

from toylib.labs import ch03_shared_db as saga_lab
from toylib.labs.faults import GraderError
from toylib.labs.grading import Case
from toylib.labs.solutions.ch03_shared_db import AlternativeOrderSaga
from toylib.labs.solutions.ch03_shared_db import RefOrderSaga as Reference
from toylib.data.saga import SagaDefinition, Step


# -- lab 3: compensations of a saga ---------------------------------------------------------------
@pytest.fixture(scope="module")
def RefOrderSaga():
    return Reference


@pytest.mark.parametrize("solution", [Reference, AlternativeOrderSaga])
async def test_lab3_correct_solutions_pass(solution, leakcheck):
    report = await saga_lab.check(solution, seed=7)
    assert report.ok, report.summary()
    assert report.verdict() == f"done: cases passed: {len(saga_lab.CASES)} of {len(saga_lab.CASES)}"


async def test_lab3_cases_inject_faults_at_every_step_and_compensation(RefOrderSaga):
    where, totals = Counter(), Counter()
    prof = await saga_lab.profile(RefOrderSaga)
    for case in saga_lab.CASES:
        if case.params["faults"] in ("generated", "boundaries", "together"):
            continue
        got = await saga_lab.run_case(RefOrderSaga, case, profile_=prof)
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


async def test_lab3_starter_fails_with_a_message(RefOrderSaga):
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
    assert report.verdict().startswith("not done: cases passed: 3 of ")


async def test_lab3_checks_the_shape_of_the_saga(RefOrderSaga):
    class Reordered(RefOrderSaga):
        def definition(self):
            d = super().definition()
            return SagaDefinition("order", [d.steps[1], d.steps[0], *d.steps[2:]])

    report = await saga_lab.check(Reordered, only="happy-path")
    assert "must be create_order, reserve, charge, notify" in report.first_failure.message
    with pytest.raises(TypeError, match="OrderSaga"):
        await saga_lab.check(RefOrderSaga(None))




# -- the classes of fault the grader injects, each with a wrong saga only it catches -------------
REFUNDED_BY_THIS_PROCESS: set = set()        # module-level memory: lost on a real restart


def new_wrong_sagas(Ref):
    class RemembersRefundsInMemory(Ref):
        """Keeps 'already refunded' on the instance instead of reading the payments table:
        right while one orchestrator lives, wrong after a restart."""
        def __init__(self, svc):
            super().__init__(svc)
            self.refunded = set()

        async def refund(self, ctx, key):
            if ctx["order_id"] in self.refunded:
                return
            db = self.svc.payment
            async with db.transaction():
                row = await db.fetchone("SELECT amount FROM payments WHERE order_id = ? AND "
                                        "kind = 'charge'", (ctx["order_id"],))
                if row:
                    await db.execute("INSERT INTO payments (order_id, kind, amount) "
                                     "VALUES (?, 'refund', ?)", (ctx["order_id"], row[0]))
            self.refunded.add(ctx["order_id"])

    class RemembersRefundsOnTheClass(RemembersRefundsInMemory):
        """The same memory kept on the class, so a new instance in the same process sees it."""
        refunded_ever: set = set()

        def __init__(self, svc):
            Ref.__init__(self, svc)
            self.refunded = RemembersRefundsOnTheClass.refunded_ever

    class RemembersRefundsInTheModule(RemembersRefundsInMemory):
        """The same memory kept in a module-level set."""
        def __init__(self, svc):
            Ref.__init__(self, svc)
            self.refunded = REFUNDED_BY_THIS_PROCESS

    class NotifiesOnlyIfItCancelled(Ref):
        """Cancels in one transaction and, only if that changed the order, sends the notice in
        a second: a death between the two loses the notice for good."""
        async def cancel_order(self, ctx, key):
            db, oid = self.svc.orders, ctx["order_id"]
            async with db.transaction():
                changed = await db.execute("UPDATE orders SET status = 'cancelled' "
                                           "WHERE order_id = ? AND status = 'pending'", (oid,))
            if changed:
                async with db.transaction():
                    await db.execute("INSERT INTO notifications (order_id, kind) "
                                     "VALUES (?, 'failed')", (oid,))

    class ReadsStockOutsideTheTransaction(Ref):
        """Reads the stock level, then writes back level + qty in a later transaction: another
        saga's reservation in between is lost (only sagas running at once show it)."""
        async def release_stock(self, ctx, key):
            db, oid = self.svc.inventory, ctx["order_id"]
            row = await db.fetchone("SELECT r.sku, r.qty, s.available FROM reservations r "
                                    "JOIN stock s USING (sku) WHERE order_id = ? AND "
                                    "released = 0", (oid,))
            if row is None:
                return
            sku, qty, available = row
            await asyncio.sleep(0.02)               # a call to the warehouse between read and write
            async with db.transaction():
                await db.execute("UPDATE stock SET available = ? WHERE sku = ?",
                                 (available + qty, sku))
                await db.execute("UPDATE reservations SET released = 1 WHERE order_id = ?",
                                 (oid,))

    class ReleasesByProductNotByOrder(Ref):
        """Gives back the oldest held reservation of the same product, not this order's: the
        stock adds up, but the wrong order lost its goods (only a per-saga check sees it)."""
        async def release_stock(self, ctx, key):
            db = self.svc.inventory
            async with db.transaction():
                if not await db.fetchone("SELECT 1 FROM reservations WHERE order_id = ? AND "
                                         "released = 0", (ctx["order_id"],)):
                    return
                oid, qty = await db.fetchone(
                    "SELECT order_id, qty FROM reservations WHERE sku = ? AND released = 0 "
                    "ORDER BY rowid LIMIT 1", (ctx["sku"],))
                await db.execute("UPDATE stock SET available = available + ? WHERE sku = ?",
                                 (qty, ctx["sku"]))
                await db.execute("UPDATE reservations SET released = 1 WHERE order_id = ?",
                                 (oid,))

    class GivesBackOneUnit(Ref):
        """Gives back one unit whatever the order held."""
        async def release_stock(self, ctx, key):
            db, oid = self.svc.inventory, ctx["order_id"]
            async with db.transaction():
                row = await db.fetchone("SELECT sku FROM reservations WHERE order_id = ? "
                                        "AND released = 0", (oid,))
                if row:
                    await db.execute("UPDATE stock SET available = available + 1 "
                                     "WHERE sku = ?", row)
                    await db.execute("UPDATE reservations SET released = 1 "
                                     "WHERE order_id = ?", (oid,))

    return {c.__name__: c for c in (
        RemembersRefundsInMemory, RemembersRefundsOnTheClass, RemembersRefundsInTheModule,
        NotifiesOnlyIfItCancelled, ReadsStockOutsideTheTransaction, ReleasesByProductNotByOrder,
        GivesBackOneUnit)}


NEW_WRONG = {  # mistake -> (the case that catches it, what its report says)
    "RemembersRefundsInMemory": ("restart-after-refund", "refunded 2 times"),
    "RemembersRefundsOnTheClass": ("restart-after-refund", "refunded 2 times"),
    "RemembersRefundsInTheModule": ("restart-after-refund", "refunded 2 times"),
    "NotifiesOnlyIfItCancelled": ("every-boundary", "0 failure notice(s)"),
    "ReadsStockOutsideTheTransaction": ("concurrent-40", "not conserved"),
    "ReleasesByProductNotByOrder": ("many-25", "no longer held"),
    "GivesBackOneUnit": ("generated", "not conserved"),
}


@pytest.mark.parametrize("mistake", list(NEW_WRONG))
async def test_lab3_rejects_each_class_of_mistake(RefOrderSaga, mistake):
    wrong = new_wrong_sagas(RefOrderSaga)[mistake]
    case, says = NEW_WRONG[mistake]
    report = await saga_lab.check(wrong, only=case, seed=11)
    assert not report.ok, f"the {case} case accepted a wrong saga: {mistake}"
    f = report.first_failure
    assert says in f.message, report.summary()
    assert report.verdict() == "not done: cases passed: 0 of 1"
    assert f.replay.startswith("await check(OrderSaga, only=")
    if case != "generated":
        assert "final state" in f.detail and "<-- differs" in f.detail, f.detail


async def test_lab3_the_old_grader_would_not_catch_memory_kept_on_a_reused_instance(RefOrderSaga):
    """Within one orchestrator's life the in-memory saga is right: only a restart with a fresh
    instance shows the mistake."""
    wrong = new_wrong_sagas(RefOrderSaga)["RemembersRefundsInMemory"]
    report = await saga_lab.check(wrong, only="refund-reply-lost")
    assert report.ok, report.summary()


async def test_lab3_a_report_shows_the_history_expected_beside_actual_and_the_replay(RefOrderSaga):
    wrong = new_wrong_sagas(RefOrderSaga)["RemembersRefundsInMemory"]
    report = await saga_lab.check(wrong, only="restart-after-refund")
    text = report.summary()
    assert "charge        undo attempt 1  orchestrator dies after" in text
    assert "net charged" in text and "<-- differs" in text
    assert "Replay it alone: await check(OrderSaga, only='restart-after-refund')" in text


async def test_lab3_generated_cases_are_shrunk_and_print_their_seed(RefOrderSaga):
    wrong = new_wrong_sagas(RefOrderSaga)["GivesBackOneUnit"]
    report = await saga_lab.check(wrong, only="generated", seed=5)
    f = report.first_failure
    assert "seed 5" in f.message and "Hypothesis shrank it to 1 saga(s)" in f.message, f.message
    assert f.replay == "await check(OrderSaga, only='generated', seed=5)"


async def test_lab3_every_boundary_fires_every_planned_death(RefOrderSaga):
    prof = await saga_lab.profile(RefOrderSaga)
    case = next(c for c in saga_lab.CASES if c.name == "every-boundary")
    got = await saga_lab.run_case(RefOrderSaga, case, profile_=prof)
    planned = sum(s + c for s, c in prof.values())
    assert got["sagas"] == planned and got[saga_lab.AT] + got[saga_lab.AFTER] == planned
    assert got["restarts"] == planned and got["boots"] == planned + 1
    for step in saga_lab.UNDOABLE:                 # inside every compensation, both ways
        assert got["where"][step, "undo", saga_lab.AT] and got["where"][step, "undo", saga_lab.AFTER]


async def test_lab3_a_planned_death_that_never_fires_is_a_grader_error(RefOrderSaga):
    case = Case("x", 1, 1, {"sagas": 1, "faults": [("charge", "do", 1, saga_lab.FAILS),
                                                   ("reserve", "undo", 1, "dies at statement 99")]})
    with pytest.raises(GraderError, match="never fired"):
        await saga_lab.run_case(RefOrderSaga, case)


async def test_lab3_many_sagas_run_at_once_and_restart_together(RefOrderSaga):
    case = next(c for c in saga_lab.CASES if c.name == "concurrent-40")
    got = await saga_lab.run_case(RefOrderSaga, case)
    assert got["sagas"] == 40 and got["completed"] == 14 and got["compensated"] == 26


def test_lab3_boot_loads_the_class_afresh():
    class Saga:
        seen: list = []

        def __init__(self, svc):
            self.svc = svc

        def remember(self):
            Saga.seen.append(1)
            REFUNDED_BY_THIS_PROCESS.add(1)
            return len(Saga.seen), len(REFUNDED_BY_THIS_PROCESS), type(self).seen is Saga.seen

    class Child(Saga):
        def remember(self):
            return super().remember()

    a, b = saga_lab.boot(Child, "svc"), saga_lab.boot(Child, "svc")
    assert a.remember() == (1, 1, True) and a.remember() == (2, 1, True)
    assert b.remember() == (1, 1, True)                # a fresh process: nothing kept
    assert Saga.seen == [] and REFUNDED_BY_THIS_PROCESS == set() and b.svc == "svc"
    assert type(a).__name__ == "Child" and a.remember.__qualname__.endswith("Child.remember")


def test_lab3_check_refuses_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        asyncio.run(saga_lab.check(Reference, seed=-1))
    with pytest.raises(ValueError, match="only"):
        asyncio.run(saga_lab.check(Reference, only="no-such-case"))


def test_lab3_helpers_refuse_bad_arguments():
    with pytest.raises(TypeError, match="OrderSaga"):
        saga_lab.boot("RefOrderSaga", None)
    with pytest.raises(TypeError, match="case"):
        asyncio.run(saga_lab.run_case(Reference, "happy-path"))
    with pytest.raises(ValueError, match="stop_after"):
        asyncio.run(saga_lab.check(Reference, stop_after=0))
