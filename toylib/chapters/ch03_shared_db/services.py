"""The five services, written once and run unchanged by both designs.

Each service is a small aiohttp application; each route does its work in a local SQLite
transaction on a connection from its service's :class:`Pool`. Billing's ``SELECT customer_id,
total FROM orders`` runs against the order team's table in the shared design and against
billing's own copy per service: which file a connection opens is the only difference, so every
difference the chapter measures comes from data ownership.

The services reach their design through a few methods (``pool``, ``hold``, ``publish``,
``total_column``, ``uses``) and ``knobs``; see :mod:`~toylib.chapters.ch03_shared_db.designs`.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from aiohttp import web

from toylib.chapters.ch03_shared_db.knobs import LABELS, order_event, payment_outcome
from toylib.chapters.ch03_shared_db.schema import MIGRATION, REPORT
from toylib.core.clock import now
from toylib.core.services import Service
from toylib.data.db import Database


class Pool:
    """A service's connections, one per worker: ``async with pool.connection() as db``."""

    def __init__(self, dbs: list[Database]):
        self.dbs = list(dbs)
        self._free: asyncio.Queue = asyncio.Queue()
        for db in self.dbs:
            self._free.put_nowait(db)

    @asynccontextmanager
    async def connection(self):
        db = await self._free.get()
        try:
            yield db
        finally:
            self._free.put_nowait(db)


def error_reply(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def order_service(d) -> Service:
    svc = Service("orders", label=LABELS["orders"], uses=d.uses("orders"),
                  max_concurrency=d.knobs.order_workers)

    @svc.post("/orders")
    async def place(request):
        o = await request.json()
        column, total = d.total_column(o["total"])        # changes with the migration
        async with d.pool("orders").connection() as db:
            async with db.transaction():
                created = await db.execute(
                    f"INSERT OR IGNORE INTO orders (order_id, customer_id, customer_email, sku, "
                    f"qty, {column}, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (o["order_id"], o["customer_id"], o["email"], o["sku"], o["qty"], total,
                     o.get("status", "placed"), now()))
                if created:
                    await d.publish(db, order_event("OrderPlaced", o, o.get("status", "placed")))
                await d.hold()
        return {"order_id": o["order_id"], "created": bool(created)}

    async def move(order_id: str, new: str, kind: str) -> dict:
        async with d.pool("orders").connection() as db:
            async with db.transaction():     # only a pending order moves: idempotent
                changed = await db.execute("UPDATE orders SET status = ? WHERE order_id = ? "
                                           "AND status = 'pending'", (new, order_id))
                if changed:
                    await d.publish(db, order_event(kind, {"order_id": order_id}, new))
        return {"order_id": order_id, "status": new, "changed": bool(changed)}

    @svc.post("/orders/{order_id}/cancel")
    async def cancel(request):
        return await move(request.match_info["order_id"], "cancelled", "OrderCancelled")

    @svc.post("/orders/{order_id}/confirm")
    async def confirm(request):
        return await move(request.match_info["order_id"], "confirmed", "OrderConfirmed")

    @svc.post("/migrate")
    async def migrate(request):
        """The order team ships its migration and, with it, the code that uses it."""
        async with d.pool("orders").connection() as db:
            async with db.transaction():
                for statement in MIGRATION:
                    await db.execute(statement)
        d.order_schema = 2
        return {"schema": d.order_schema}

    return svc


def inventory_service(d) -> Service:
    svc = Service("inventory", label=LABELS["inventory"], uses=d.uses("inventory"))

    @svc.post("/reservations")
    async def reserve(request):
        r = await request.json()
        async with d.pool("inventory").connection() as db:
            async with db.transaction():
                old = await db.fetchone("SELECT state FROM reservations WHERE order_id = ?",
                                        (r["order_id"],))
                if old is not None:                  # a retry: already done
                    return {"order_id": r["order_id"], "state": old[0]}
                (available,) = await db.fetchone("SELECT available FROM stock WHERE sku = ?",
                                                 (r["sku"],))
                if available < r["qty"]:
                    return error_reply(409, f"out of stock: {r['sku']}")
                await db.execute("UPDATE stock SET available = available - ?, "
                                 "reserved = reserved + ? WHERE sku = ?",
                                 (r["qty"], r["qty"], r["sku"]))
                await db.execute("INSERT INTO reservations VALUES (?, ?, ?, 'held')",
                                 (r["order_id"], r["sku"], r["qty"]))
                await d.hold()
        return {"order_id": r["order_id"], "state": "held"}

    @svc.post("/reservations/{order_id}/release")
    async def release(request):
        order_id = request.match_info["order_id"]
        async with d.pool("inventory").connection() as db:
            async with db.transaction():
                row = await db.fetchone("SELECT sku, qty FROM reservations WHERE order_id = ? "
                                        "AND state = 'held'", (order_id,))
                if row is not None:                  # else nothing to undo
                    await db.execute("UPDATE stock SET available = available + ?, "
                                     "reserved = reserved - ? WHERE sku = ?",
                                     (row[1], row[1], row[0]))
                    await db.execute("UPDATE reservations SET state = 'released' "
                                     "WHERE order_id = ?", (order_id,))
        return {"order_id": order_id, "released": row is not None}

    @svc.post("/stock/adjust")
    async def adjust(request):
        a = await request.json()
        async with d.pool("inventory").connection() as db:
            async with db.transaction():
                await db.execute("UPDATE stock SET available = available + ? WHERE sku = ?",
                                 (a["delta"], a["sku"]))
                await d.hold()
        return {"sku": a["sku"]}

    return svc


def billing_service(d) -> Service:
    svc = Service("billing", label=LABELS["billing"], uses=d.uses("billing"))

    @svc.post("/charges")
    async def charge(request):
        c = await request.json()
        key = request.headers.get("Idempotency-Key", f"{c['order_id']}:charge")
        outcome = payment_outcome(c["order_id"], d.knobs)
        if outcome == "declined":                    # before any money moves
            return error_reply(402, "card declined")
        async with d.pool("billing").connection() as db:
            async with db.transaction():
                if not await db.fetchone("SELECT 1 FROM charges WHERE idempotency_key = ?",
                                         (key,)):
                    await db.execute("INSERT INTO charges (order_id, idempotency_key, amount, "
                                     "state) VALUES (?, ?, ?, 'charged')",
                                     (c["order_id"], key, c["amount"]))
                await d.hold()
        if outcome == "lost_reply":                  # the money moved; the caller never hears
            return error_reply(504, "gateway timeout")
        return {"order_id": c["order_id"], "charged": c["amount"]}

    @svc.post("/charges/{order_id}/refund")
    async def refund(request):
        order_id = request.match_info["order_id"]
        async with d.pool("billing").connection() as db:
            async with db.transaction():             # nothing charged: nothing to undo
                n = await db.execute("UPDATE charges SET state = 'refunded' WHERE order_id = ? "
                                     "AND state = 'charged'", (order_id,))
        return {"order_id": order_id, "refunded": n}

    @svc.post("/invoices/{order_id}")
    async def invoice(request):
        order_id = request.match_info["order_id"]
        async with d.pool("billing").connection() as db:
            async with db.transaction():
                row = await db.fetchone("SELECT customer_id, total FROM orders "
                                        "WHERE order_id = ?", (order_id,))
                if row is None:
                    return error_reply(404, f"unknown order {order_id}")
                await db.execute("INSERT OR IGNORE INTO invoices VALUES (?, ?, ?)",
                                 (order_id, *row))
        return {"order_id": order_id, "amount": row[1]}

    return svc


async def notify(db: Database, key: str, order_id: str, kind: str) -> bool:
    """Compose and record one notification, once per key. False if the order is unknown."""
    row = await db.fetchone("SELECT customer_email, total FROM orders WHERE order_id = ?",
                            (order_id,))
    if row is None:
        return False
    email, total = row
    await db.execute("INSERT OR IGNORE INTO notifications VALUES (?, ?, ?, ?, ?, ?)",
                     (key, order_id, kind, email, f"Order {order_id} ({total:.2f}): {kind}",
                      now()))
    return True


def notification_service(d) -> Service:
    svc = Service("notification", label=LABELS["notification"], uses=d.uses("notification"))

    @svc.post("/notifications")
    async def send(request):
        n = await request.json()
        async with d.pool("notification").connection() as db:
            async with db.transaction():
                if not await notify(db, n["key"], n["order_id"], n["kind"]):
                    return error_reply(404, f"unknown order {n['order_id']}")
                await d.hold()
        return {"key": n["key"]}

    @svc.post("/preferences")
    async def preference(request):
        p = await request.json()
        async with d.pool("notification").connection() as db:
            async with db.transaction():
                await db.execute("INSERT INTO preferences VALUES (?, ?, ?) ON CONFLICT "
                                 "(customer_id) DO UPDATE SET channel = excluded.channel, "
                                 "updated_at = excluded.updated_at",
                                 (p["customer_id"], p["channel"], now()))
                await d.hold()
        return {"customer_id": p["customer_id"]}

    return svc


def analytics_service(d) -> Service:
    svc = Service("analytics", label=LABELS["analytics"], uses=d.uses("analytics"),
                  max_concurrency=d.knobs.analysts)

    @svc.get("/revenue")
    async def revenue(request):
        async with d.pool("analytics").connection() as db:
            rows = await db.fetchall("SELECT status, COUNT(*), ROUND(SUM(total), 2) "
                                     "FROM orders GROUP BY status ORDER BY status")
        return [{"status": s, "orders": n, "revenue": r} for s, n, r in rows]

    @svc.get("/report")
    async def report(request):
        async with d.pool("analytics").connection() as db:
            rows = await db.fetchall(REPORT)
        return {"rows": len(rows)}

    @svc.post("/rollups")
    async def rollup(request):
        r = await request.json()
        async with d.pool("analytics").connection() as db:
            async with db.transaction():
                await db.execute("INSERT INTO rollups VALUES (?, 1, ?) ON CONFLICT (day) DO "
                                 "UPDATE SET orders = orders + 1, "
                                 "revenue = revenue + excluded.revenue", (r["day"], r["amount"]))
                await d.hold()
        return {"day": r["day"]}

    return svc


BUILDERS = (order_service, inventory_service, notification_service, billing_service,
            analytics_service)
