"""Lab 3 (ch03_shared_db): two correct sagas, written independently.

The lab notebook shows :class:`RefOrderSaga` inside its hidden solution dropdown and runs it;
the tests grade both. Each compensation is one local transaction in its own service's
database, tolerates "nothing to undo", and is idempotent: it reads what to undo from the
database, never from memory, so a retry or a restarted orchestrator applies it once.
"""
from __future__ import annotations

from toylib.data.saga import SagaDefinition, Step


# -- the reference ----------------------------------------------------------------------------------
class RefOrderSaga:
    def __init__(self, svc):
        self.svc = svc

    async def cancel_order(self, ctx, key):
        db, oid = self.svc.orders, ctx["order_id"]
        async with db.transaction():     # nothing to undo if the order never got created
            await db.execute("UPDATE orders SET status = 'cancelled' "
                             "WHERE order_id = ? AND status = 'pending'", (oid,))
            await db.execute("INSERT INTO notifications (order_id, kind) SELECT ?, 'failed' "
                             "WHERE NOT EXISTS (SELECT 1 FROM notifications "
                             "WHERE order_id = ? AND kind = 'failed')", (oid, oid))

    async def release_stock(self, ctx, key):
        db, oid = self.svc.inventory, ctx["order_id"]
        async with db.transaction():
            row = await db.fetchone("SELECT sku, qty FROM reservations "
                                    "WHERE order_id = ? AND released = 0", (oid,))
            if row is None:              # never reserved, or already given back
                return
            sku, qty = row
            await db.execute("UPDATE stock SET available = available + ? WHERE sku = ?",
                             (qty, sku))
            await db.execute("UPDATE reservations SET released = 1 WHERE order_id = ?", (oid,))

    async def refund(self, ctx, key):
        db, oid = self.svc.payment, ctx["order_id"]
        async with db.transaction():
            charge = await db.fetchone("SELECT amount FROM payments "
                                       "WHERE order_id = ? AND kind = 'charge'", (oid,))
            refunded = await db.fetchone("SELECT 1 FROM payments "
                                         "WHERE order_id = ? AND kind = 'refund'", (oid,))
            if charge and not refunded:  # the charge happened, even if its reply was lost
                await db.execute("INSERT INTO payments (order_id, kind, amount) "
                                 "VALUES (?, 'refund', ?)", (oid, charge[0]))

    def definition(self):
        s = self.svc
        return SagaDefinition("order", [
            Step("create_order", s.create_order, self.cancel_order),
            Step("reserve", s.reserve, self.release_stock),
            Step("charge", s.charge, self.refund, pivot=True),
            Step("notify", s.notify),
        ])


# -- an independent solution: set-based SQL, the state change itself as the guard -----------------
RELEASE = """
UPDATE stock SET available = available + (
    SELECT qty FROM reservations WHERE order_id = :oid AND released = 0)
WHERE sku = (SELECT sku FROM reservations WHERE order_id = :oid AND released = 0)"""

REFUND = """
INSERT INTO payments (order_id, kind, amount)
SELECT order_id, 'refund', SUM(CASE kind WHEN 'charge' THEN amount ELSE -amount END)
FROM payments WHERE order_id = :oid GROUP BY order_id
HAVING SUM(CASE kind WHEN 'charge' THEN amount ELSE -amount END) > 0"""


class AlternativeOrderSaga:
    """Each undo is a statement whose WHERE clause is the "still to undo" test, so running it a
    second time matches nothing; the order's cancellation and its notice share one transaction
    whose notice is keyed on the order, not on whether this call changed the status."""

    def __init__(self, svc):
        self.svc = svc

    async def cancel_order(self, ctx, key):
        p = {"oid": ctx["order_id"]}
        async with self.svc.orders.transaction() as db:
            await db.execute("UPDATE orders SET status = 'cancelled' "
                             "WHERE order_id = :oid AND status <> 'cancelled'", p)
            if not await db.fetchone("SELECT 1 FROM notifications WHERE order_id = :oid", p):
                await db.execute("INSERT INTO notifications (order_id, kind) "
                                 "VALUES (:oid, 'failed')", p)

    async def release_stock(self, ctx, key):
        p = {"oid": ctx["order_id"]}
        async with self.svc.inventory.transaction() as db:
            await db.execute(RELEASE, p)          # matches no row when nothing is held
            await db.execute("UPDATE reservations SET released = 1 "
                             "WHERE order_id = :oid AND released = 0", p)

    async def refund(self, ctx, key):
        async with self.svc.payment.transaction() as db:   # refund what is still charged
            await db.execute(REFUND, {"oid": ctx["order_id"]})

    def definition(self):
        s = self.svc
        steps = [("create_order", s.create_order, self.cancel_order),
                 ("reserve", s.reserve, self.release_stock),
                 ("charge", s.charge, self.refund)]
        return SagaDefinition("order", [Step(name, do, undo, pivot=name == "charge")
                                        for name, do, undo in steps]
                              + [Step("notify", s.notify)])


REFERENCE = RefOrderSaga
ALTERNATIVE = AlternativeOrderSaga
