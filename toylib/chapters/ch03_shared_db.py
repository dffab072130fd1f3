"""Chapter 3, Shared Database: five services on one SQLite file, and one file each.

* **Before** (:class:`SharedDatabase`): the order, inventory, notification, billing and
  analytics services each open their own connection to **one** SQLite file. They integrate
  through the tables: billing reads the order team's ``orders`` table to invoice, notification
  reads it to address an e-mail, analytics aggregates it.
* **After** (:class:`DatabasePerService`): each service owns its own file. The order service
  writes an event to its outbox in the same transaction as the order; a relay publishes it on
  the bus; billing, notification and analytics keep **their own copy** of the few order fields
  they need (an idempotent consumer each). An order is placed by a saga (:meth:`order_saga`)
  with compensation in reverse order when payment fails.

The services' code is the **same** in both designs: billing's ``SELECT customer_id, total FROM
orders`` runs against the order team's table in one design and against billing's own copy in
the other. What differs is only which file each connection opens, and whether the order
service publishes events. So every difference the chapter measures comes from data ownership.

Write transactions can be held open for ``hold_ms`` (:class:`Config`): a local SQLite write
takes microseconds, a real one takes milliseconds (several statements, round trips between
service and database, the commit's fsync), and the time a transaction holds the lock is what
contention is made of.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
from aiohttp import web

from toylib.core import validate as v
from toylib import claims as cl
from toylib.data.bus import EventBus
from toylib.data.db import Database, Workspace
from toylib.present.diagrams import Mermaid, flowchart
from toylib.core.faults import Latency
from toylib.data.outbox import PROCESSED_SCHEMA, Outbox, IdempotentConsumer
from toylib.data.saga import TERMINAL, SagaDefinition, SagaOrchestrator, Step
from toylib.core.services import CallError, Node, Service, Store, Topology
from toylib.core.clock import now

SERVICES = ("orders", "inventory", "notification", "billing", "analytics")
LABELS = {"orders": "Order Service", "inventory": "Inventory Service",
          "notification": "Notification Service", "billing": "Billing Service",
          "analytics": "Analytics Service"}
TOPIC = "orders"
PRICES = {"sku-0": 12.5, "sku-1": 30.0, "sku-2": 7.25, "sku-3": 99.0, "sku-4": 4.0}

# -- each team's own tables (in the shared file they all sit side by side) --------------------
SCHEMA = {
    "orders": """
        CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL,
            customer_email TEXT NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
            total REAL NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL);""",
    "inventory": """
        CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL,
            reserved INTEGER NOT NULL);
        CREATE TABLE reservations (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,
            qty INTEGER NOT NULL, state TEXT NOT NULL);""",
    "notification": """
        CREATE TABLE notifications (key TEXT PRIMARY KEY, order_id TEXT NOT NULL,
            kind TEXT NOT NULL, recipient TEXT NOT NULL, body TEXT NOT NULL,
            sent_at REAL NOT NULL);
        CREATE TABLE preferences (customer_id INTEGER PRIMARY KEY, channel TEXT NOT NULL,
            updated_at REAL NOT NULL);""",
    "billing": """
        CREATE TABLE charges (charge_id INTEGER PRIMARY KEY, order_id TEXT NOT NULL,
            idempotency_key TEXT NOT NULL UNIQUE, amount REAL NOT NULL, state TEXT NOT NULL);
        CREATE TABLE invoices (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL,
            amount REAL NOT NULL);""",
    "analytics": """
        CREATE TABLE rollups (day INTEGER PRIMARY KEY, orders INTEGER NOT NULL,
            revenue REAL NOT NULL);""",
}

# -- after: the copy of the order data each consumer keeps, in its own file --------------------
# Named ``orders`` on purpose: the services' queries are the same text in both designs.
COPIES = {
    "billing": "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL, "
               "total REAL NOT NULL);",
    "notification": "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_email TEXT NOT "
                    "NULL, total REAL NOT NULL);",
    "analytics": "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL, "
                 "total REAL NOT NULL, status TEXT NOT NULL, committed_at REAL, "
                 "visible_at REAL);",
}

# The order team's migration: money as integer cents, in a column whose name says so.
MIGRATION = (
    "ALTER TABLE orders RENAME COLUMN total TO total_cents",
    "UPDATE orders SET total_cents = CAST(ROUND(total_cents * 100) AS INTEGER)",
)

# Analytics' heavy query: revenue of every pair of orders by the same customer (basket
# affinity). A self-join: its cost grows with the square of the orders per customer.
REPORT = ("SELECT a.customer_id, COUNT(*), SUM(a.total * b.total) FROM orders a "
          "JOIN orders b ON a.customer_id = b.customer_id "
          "GROUP BY a.customer_id ORDER BY 3 DESC LIMIT 10")


@dataclass(frozen=True)
class Config:
    """The knobs of both designs, validated once; every error names the parameter."""
    hold_ms: float = 0.0            # a write transaction stays open this long
    order_workers: int = 1          # requests the order service works on at once
    analysts: int = 1               # the analytics service's workers (report queries at once)
    history: int = 0                # past orders in the order table (what reports scan)
    customers: int = 2000
    skus: int = 3
    stock: int = 10_000             # initial units of every sku
    p_decline: float = 0.0          # payment declined (decided per order, seeded)
    p_lost_reply: float = 0.0       # charged, but the reply is lost (504)
    analytics_delay_ms: float = 0.0  # analytics consumer's work per event (its speed)
    relay_interval_ms: float = 5.0
    wal: bool = False
    busy_timeout: float = 5.0
    seed: int = 0

    def __post_init__(self):
        v.number("hold_ms", self.hold_ms, low=0, high=1000)
        v.number("order_workers", self.order_workers, low=1, high=64, integer=True)
        v.number("analysts", self.analysts, low=1, high=16, integer=True)
        v.number("history", self.history, low=0, high=1_000_000, integer=True)
        v.positive("customers", self.customers, integer=True)
        v.number("skus", self.skus, low=1, high=len(PRICES), integer=True)
        v.non_negative("stock", self.stock, integer=True)
        v.probability("p_decline", self.p_decline)
        v.probability("p_lost_reply", self.p_lost_reply)
        if self.p_decline + self.p_lost_reply > 1:
            raise ValueError(f"p_decline + p_lost_reply must be <= 1; got {self.p_decline} + "
                             f"{self.p_lost_reply}")
        v.number("analytics_delay_ms", self.analytics_delay_ms, low=0, high=1000)
        v.number("relay_interval_ms", self.relay_interval_ms, low=0, high=1000, low_open=True)
        if not isinstance(self.wal, bool):
            raise TypeError(f"wal must be True or False; got {self.wal!r}")
        v.non_negative("busy_timeout", self.busy_timeout)
        v.number("seed", self.seed, integer=True)

    @property
    def sku_names(self) -> list[str]:
        return list(PRICES)[:self.skus]


def order_for(i: int, cfg: Config) -> dict:
    """The i-th order of an experiment: the same in both designs and in every replay."""
    rng = random.Random(f"{cfg.seed}:order:{i}")
    customer = rng.randrange(cfg.customers)
    sku, qty = rng.choice(cfg.sku_names), rng.randint(1, 3)
    return {"order_id": f"order-{i}", "customer_id": customer,
            "email": f"customer{customer}@example.com", "sku": sku, "qty": qty,
            "total": round(qty * PRICES[sku], 2)}


def payment_outcome(order_id: str, cfg: Config) -> str:
    """"declined", "lost_reply" or "ok": one seeded draw per order, whatever the timing."""
    u = random.Random(f"{cfg.seed}:{order_id}:payment").random()
    if u < cfg.p_decline:
        return "declined"
    return "lost_reply" if u < cfg.p_decline + cfg.p_lost_reply else "ok"


def order_event(kind: str, order: dict, status: str) -> dict:
    """The order service's public contract. Built from the order, not from its table's columns,
    so the team can change its schema freely as long as this stays the same."""
    return {"type": kind, "order_id": order["order_id"], "status": status,
            "customer_id": order.get("customer_id"), "email": order.get("email"),
            "total": order.get("total"), "committed_at": now()}


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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# -- the five services: one definition, run by both designs ----------------------------------
def order_service(d: Design) -> Service:
    svc = Service("orders", label=LABELS["orders"], uses=d.uses("orders"),
                  max_concurrency=d.cfg.order_workers)

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


def inventory_service(d: Design) -> Service:
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
                    return _error(409, f"out of stock: {r['sku']}")
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


def billing_service(d: Design) -> Service:
    svc = Service("billing", label=LABELS["billing"], uses=d.uses("billing"))

    @svc.post("/charges")
    async def charge(request):
        c = await request.json()
        key = request.headers.get("Idempotency-Key", f"{c['order_id']}:charge")
        outcome = payment_outcome(c["order_id"], d.cfg)
        if outcome == "declined":                    # before any money moves
            return _error(402, "card declined")
        async with d.pool("billing").connection() as db:
            async with db.transaction():
                if not await db.fetchone("SELECT 1 FROM charges WHERE idempotency_key = ?",
                                         (key,)):
                    await db.execute("INSERT INTO charges (order_id, idempotency_key, amount, "
                                     "state) VALUES (?, ?, ?, 'charged')",
                                     (c["order_id"], key, c["amount"]))
                await d.hold()
        if outcome == "lost_reply":                  # the money moved; the caller never hears
            return _error(504, "gateway timeout")
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
                    return _error(404, f"unknown order {order_id}")
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


def notification_service(d: Design) -> Service:
    svc = Service("notification", label=LABELS["notification"], uses=d.uses("notification"))

    @svc.post("/notifications")
    async def send(request):
        n = await request.json()
        async with d.pool("notification").connection() as db:
            async with db.transaction():
                if not await notify(db, n["key"], n["order_id"], n["kind"]):
                    return _error(404, f"unknown order {n['order_id']}")
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


def analytics_service(d: Design) -> Service:
    svc = Service("analytics", label=LABELS["analytics"], uses=d.uses("analytics"),
                  max_concurrency=d.cfg.analysts)

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


# -- the two designs ---------------------------------------------------------------------------
class Design:
    """What both designs share: config, services, pools, lifecycle. ``async with`` runs it.

    Entering opens a temporary :class:`~toylib.data.db.Workspace`, creates the schema, seeds stock
    (and ``history`` past orders), starts the five services; leaving stops everything and
    deletes the files, also on error or cancellation.
    """
    name = "design"
    file_of: dict[str, str] = {}

    def __init__(self, cfg: Config | None = None, **knobs):
        if cfg is not None and not isinstance(cfg, Config):
            raise TypeError(f"cfg must be a shared_db.Config or None; got {cfg!r}")
        known = {f.name for f in fields(Config)}
        unknown = sorted(set(knobs) - known)
        if unknown:
            raise TypeError(f"unknown knob(s) {', '.join(unknown)}; the knobs are "
                            f"{', '.join(sorted(known))}")
        self.cfg = replace(cfg or Config(), **knobs)
        self.order_schema = 1
        self.reports = 0           # heavy reports finished (see _reports)
        self.ws: Workspace | None = None
        self.pools: dict[str, Pool] = {}
        self.topology = Topology(*(build(self) for build in BUILDERS), *self.nodes(),
                                 name=self.name, seed=self.cfg.seed)
        self._stack: AsyncExitStack | None = None

    # -- what the services call ---------------------------------------------------------------
    def pool(self, service: str) -> Pool:
        if service not in self.pools:
            raise RuntimeError(f"{self.name} is not running; use `async with`")
        return self.pools[service]

    def primary(self, service: str) -> Database:
        """The service's first connection (background work and checks use it)."""
        return self.pool(v.one_of("service", service, SERVICES)).dbs[0]

    async def hold(self) -> None:
        if self.cfg.hold_ms:
            await asyncio.sleep(self.cfg.hold_ms / 1000)

    def total_column(self, total: float) -> tuple[str, float]:
        if self.order_schema == 1:
            return "total", total
        return "total_cents", int(round(total * 100))

    async def publish(self, db: Database, event: dict) -> None:
        """Tell the other services (the per-service design); the shared one has no need."""

    async def sync(self, timeout: float = 10.0) -> None:
        """Wait until every event is applied everywhere (nothing to wait for when shared)."""

    # -- calling the services -----------------------------------------------------------------
    async def call(self, service: str, method: str, path: str, **kw):
        """Call a service; raises CallError on an HTTP error (what a saga step wants)."""
        return await self.topology.call(service, method, path, timeout=30, **kw)

    async def request(self, service: str, method: str, path: str, json=None) -> dict:
        """Call a service and describe the outcome, with the database's own error text."""
        try:
            r = await self.topology.call(service, method, path, json=json, raw=True, timeout=30)
        except CallError as e:
            return {"ok": False, "status": e.kind, "error": str(e)}
        error = "" if r.status < 400 else (r.json() or {}).get("error", "")
        return {"ok": r.status < 400, "status": r.status, "error": error}

    # -- lifecycle ------------------------------------------------------------------------------
    def uses(self, service: str) -> tuple[str, ...]:
        raise NotImplementedError

    def nodes(self) -> list[Node]:
        raise NotImplementedError

    async def _open(self, ws: Workspace) -> None:
        # One connection per service, shared by all its workers: SQLite's own advice for a
        # writer, and it keeps a service's writes in one in-process queue. Each analyst gets
        # a connection of its own, so that reports (reads) run side by side.
        for svc in SERVICES:
            n = self.cfg.analysts if svc == "analytics" else 1
            self.pools[svc] = Pool([await ws.database(self.file_of[svc], owner=f"{svc}-{k}")
                                    for k in range(n)])

    async def _schema(self) -> None:
        raise NotImplementedError

    async def _seed(self) -> None:
        inv = self.primary("inventory")
        await inv.executemany("INSERT INTO stock VALUES (?, ?, 0)",
                              [(s, self.cfg.stock) for s in self.cfg.sku_names])
        if self.cfg.history:
            rows = list(history(self.cfg))
            async with self.primary("orders").transaction() as db:
                await db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    async def _start_integration(self, stack: AsyncExitStack) -> None:
        """Start what carries data between services (the bus, in the per-service design)."""

    async def __aenter__(self) -> Design:
        if self._stack is not None:
            raise RuntimeError(f"{self.name} is already running")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self.ws = await stack.enter_async_context(Workspace(
                prefix="toylib-shared-db-", busy_timeout=self.cfg.busy_timeout,
                wal=self.cfg.wal, synchronous="off"))
            await self._open(self.ws)
            await self._schema()
            await self._seed()
            await stack.enter_async_context(self.topology)
            await self._start_integration(stack)
        except BaseException:
            await stack.aclose()
            self.pools.clear()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        try:
            await stack.__aexit__(*exc)
        finally:
            self.pools.clear()
            self.order_schema = 1

    def files(self) -> list[str]:
        return self.ws.files() if self.ws is not None else []

    def diagram(self, **kw) -> Mermaid:
        return flowchart(self.topology, **kw)


def history(cfg: Config):
    """``cfg.history`` past orders, all confirmed: what the analytics report scans."""
    rng = random.Random(f"{cfg.seed}:history")
    for i in range(cfg.history):
        customer, sku = rng.randrange(cfg.customers), rng.choice(cfg.sku_names)
        yield (f"past-{i}", customer, f"customer{customer}@example.com", sku, 1, PRICES[sku],
               "confirmed", 0.0)


class SharedDatabase(Design):
    """Before: one SQLite file, five services, each with its own connection(s) to it."""
    name = "shared database"
    file_of = {svc: "shared" for svc in SERVICES}

    def uses(self, service: str) -> tuple[str, ...]:
        return ("shared_db",)

    def nodes(self) -> list[Node]:
        return [Store("shared_db", label="Shared SQLite file: orders, stock, reservations, "
                                         "charges, invoices, notifications, rollups")]

    async def _schema(self) -> None:
        await self.primary("orders").executescript("".join(SCHEMA.values()))


class DatabasePerService(Design):
    """After: a file per service; order events reach the others through an outbox and a bus."""
    name = "database per service"
    file_of = {svc: svc for svc in SERVICES}
    CONSUMERS = ("billing", "notification", "analytics")

    def __init__(self, cfg: Config | None = None, **knobs):
        super().__init__(cfg, **knobs)
        self.bus: EventBus | None = None
        self.relay = None
        self.groups: dict = {}
        self.consumers: dict[str, IdempotentConsumer] = {}
        self.saga_db: Database | None = None

    def uses(self, service: str) -> tuple[str, ...]:
        return (f"{service}_db",) + (("bus",) if service == "orders" else ())

    def nodes(self) -> list[Node]:
        dbs = [Store(f"{s}_db", label=f"{LABELS[s].split()[0]} DB (own SQLite file)")
               for s in SERVICES]
        bus = Node("bus", "control", "Event bus: topic orders", uses=self.CONSUMERS,
                   shape="queue")
        saga = Node("saga", "control", "Saga orchestrator (own log)",
                    uses=("orders", "inventory", "billing", "notification"))
        return dbs + [bus, saga]

    async def _schema(self) -> None:
        for svc in SERVICES:
            script = SCHEMA[svc] + COPIES.get(svc, "")
            script += PROCESSED_SCHEMA if svc in self.CONSUMERS else ""
            await self.primary(svc).executescript(script)
        await Outbox(self.primary("orders"), source="orders").setup()

    async def _seed(self) -> None:
        await super()._seed()
        if self.cfg.history:       # analytics' copy starts from the same past (a snapshot)
            rows = [(r[0], r[1], r[5], r[6], None, None) for r in history(self.cfg)]
            async with self.primary("analytics").transaction() as db:
                await db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", rows)

    async def publish(self, db: Database, event: dict) -> None:
        """The transactional outbox: the event commits with the order, or neither does."""
        await Outbox(db, source="orders").emit(TOPIC, event["order_id"], event)

    async def _start_integration(self, stack: AsyncExitStack) -> None:
        self.bus = EventBus(clock=now)
        self.bus.create_topic(TOPIC, partitions=4)
        self.saga_db = await self.ws.database("saga", owner="saga")
        self.relay = await stack.enter_async_context(
            Outbox(self.primary("orders"), source="orders").relay(
                self.bus, interval=self.cfg.relay_interval_ms / 1000))
        work = {"billing": copy_for_billing, "notification": notification_reacts,
                "analytics": analytics_projection(self)}
        for svc in self.CONSUMERS:
            consumer = IdempotentConsumer(self.primary(svc), svc, work[svc], clock=now)
            self.consumers[svc] = consumer
            self.groups[svc] = await stack.enter_async_context(
                self.bus.consumer_group(TOPIC, svc, consumer, retry_delay=0.01))

    async def sync(self, timeout: float = 10.0) -> None:
        await self.relay.wait_drained(timeout)
        for group in self.groups.values():
            await group.wait_caught_up(timeout)

    # -- the saga -------------------------------------------------------------------------------
    def order_saga(self) -> SagaDefinition:
        """Create order, reserve inventory, process payment (the pivot), confirm, notify."""
        async def create_order(ctx, key):
            await self.call("orders", "POST", "/orders", json={**ctx, "status": "pending"})

        async def cancel_order(ctx, key):
            await self.call("orders", "POST", f"/orders/{ctx['order_id']}/cancel")

        async def reserve_inventory(ctx, key):
            await self.call("inventory", "POST", "/reservations", json=ctx)

        async def release_inventory(ctx, key):
            await self.call("inventory", "POST", f"/reservations/{ctx['order_id']}/release")

        async def process_payment(ctx, key):
            await self.call("billing", "POST", "/charges", headers={"Idempotency-Key": key},
                            json={"order_id": ctx["order_id"], "amount": ctx["total"]})

        async def refund_payment(ctx, key):   # the pivot failed, yet may have charged (504)
            await self.call("billing", "POST", f"/charges/{ctx['order_id']}/refund")

        async def confirm_order(ctx, key):
            await self.call("orders", "POST", f"/orders/{ctx['order_id']}/confirm")

        async def send_notification(ctx, key):
            await self.call("notification", "POST", "/notifications",
                            json={"key": key, "order_id": ctx["order_id"], "kind": "confirmed"})

        return SagaDefinition("order", [
            Step("create_order", create_order, cancel_order),
            Step("reserve_inventory", reserve_inventory, release_inventory),
            Step("process_payment", process_payment, refund_payment, pivot=True),
            Step("confirm_order", confirm_order),
            Step("send_notification", send_notification),
        ])

    def orchestrator(self, **kw) -> SagaOrchestrator:
        if self.saga_db is None:
            raise RuntimeError(f"{self.name} is not running; use `async with`")
        # Steps after the pivot are retried: send_notification may arrive before the
        # notification service has its copy of the order (404), a second later it has it.
        kw = {"max_attempts": 10, "base_delay": 0.01, "max_delay": 0.5, **kw}
        return SagaOrchestrator(self.saga_db, self.order_saga(), seed=self.cfg.seed, **kw)


# -- the consumers of order events (per-service design) ----------------------------------------
async def copy_for_billing(db: Database, event) -> None:
    e = event.value
    if e["type"] == "OrderPlaced":
        await db.execute("INSERT OR IGNORE INTO orders VALUES (?, ?, ?)",
                         (e["order_id"], e["customer_id"], e["total"]))


async def notification_reacts(db: Database, event) -> None:
    """Keep the recipient and amount of each order; tell the customer when one is cancelled."""
    e = event.value
    if e["type"] == "OrderPlaced":
        await db.execute("INSERT OR IGNORE INTO orders VALUES (?, ?, ?)",
                         (e["order_id"], e["email"], e["total"]))
    elif e["type"] == "OrderCancelled":
        await notify(db, f"{e['order_id']}:failed", e["order_id"], "failed")


def analytics_projection(d: Design):
    """Analytics' read model: one row per order, with when it was committed and became visible."""
    async def work(db: Database, event) -> None:
        if d.cfg.analytics_delay_ms:           # the consumer's own work: its speed
            await asyncio.sleep(d.cfg.analytics_delay_ms / 1000)
        e = event.value
        if e["type"] == "OrderPlaced":
            await db.execute("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?)",
                             (e["order_id"], e["customer_id"], e["total"], e["status"],
                              e["committed_at"], now()))
        else:
            await db.execute("UPDATE orders SET status = ? WHERE order_id = ?",
                             (e["status"], e["order_id"]))
    return work


DESIGNS = {"shared": SharedDatabase, "per service": DatabasePerService}


# -- experiment 1: one team's migration --------------------------------------------------------
async def migration(d: Design, *, rounds: int = 20, migrate_after: int = 10) -> pd.DataFrame:
    """Each round places an order, then every other service does its job with it.

    Before round ``migrate_after`` the order team ships its migration. One row per request:
    round, phase, service, what, ok, status, error (the database's own message).
    """
    v.positive("rounds", rounds, integer=True)
    v.number("migrate_after", migrate_after, low=0, high=rounds, integer=True)
    rows = []

    async def record(r, service, what, outcome):
        rows.append({"round": r, "phase": "after" if r >= migrate_after else "before",
                     "service": service, "what": what, **outcome})

    for r in range(rounds):
        if r == migrate_after:
            await record(r, "orders", "ship the migration",
                         await d.request("orders", "POST", "/migrate"))
        o = order_for(r, d.cfg)
        await record(r, "orders", "place the order",
                     await d.request("orders", "POST", "/orders", o))
        await d.sync()
        oid = o["order_id"]
        await record(r, "inventory", "reserve its stock", await d.request(
            "inventory", "POST", "/reservations", o))
        await record(r, "billing", "invoice it", await d.request(
            "billing", "POST", f"/invoices/{oid}"))
        await record(r, "notification", "e-mail the customer", await d.request(
            "notification", "POST", "/notifications",
            {"key": f"{oid}:placed", "order_id": oid, "kind": "placed"}))
        await record(r, "analytics", "revenue report", await d.request(
            "analytics", "GET", "/revenue"))
    return pd.DataFrame(rows)


def broken(runs: pd.DataFrame) -> pd.DataFrame:
    """Failed requests per service, before and after the migration (the blast radius)."""
    jobs = runs[runs.what != "ship the migration"]
    table = (~jobs.ok).groupby([jobs.service, jobs.phase]).sum().unstack(fill_value=0)
    table = table.reindex(index=list(SERVICES), columns=["before", "after"], fill_value=0)
    table.columns = ["failed before", "failed after"]
    table["requests after"] = jobs[jobs.phase == "after"].groupby("service").size()
    return table.fillna(0).astype(int)


# -- experiment 2: writers contending ----------------------------------------------------------
OWN_WRITE = {   # each service's everyday write, self-contained (no other team's data needed)
    "orders": lambda i, cfg: ("/orders", order_for(i, cfg)),
    "inventory": lambda i, cfg: ("/stock/adjust", {"sku": cfg.sku_names[i % cfg.skus],
                                                   "delta": 1}),
    "billing": lambda i, cfg: ("/charges", {"order_id": f"walk-in-{i}", "amount": 10.0}),
    "notification": lambda i, cfg: ("/preferences", {"customer_id": i % cfg.customers,
                                                     "channel": "email"}),
    "analytics": lambda i, cfg: ("/rollups", {"day": i % 30, "amount": 10.0}),
}


async def _writer(d: Design, service: str, until: float, rows: list, start: int = 0) -> None:
    """One client writing to ``service`` back to back until ``until``.

    A request started before the deadline is finished, never cancelled: the run ends a little
    late instead of leaving a transaction half done.
    """
    i = start
    while now() < until:
        path, body = OWN_WRITE[service](i, d.cfg)
        t0 = now()
        outcome = await d.request(service, "POST", path, body)
        rows.append({"service": service, "start": t0, "end": now(), **outcome})
        i += 1


async def contention(d: Design, *, writers: int, seconds: float = 0.5,
                     analysts: int = 0) -> pd.DataFrame:
    """The first ``writers`` services write back to back for ``seconds`` (one client each),
    while ``analysts`` run the heavy report back to back. One row per write."""
    v.number("writers", writers, low=1, high=len(SERVICES), integer=True)
    v.number("seconds", seconds, low=0.05, high=30)
    v.number("analysts", analysts, low=0, high=d.cfg.analysts, integer=True)
    rows: list = []
    until = now() + seconds
    async with _reports(d, analysts):
        await asyncio.gather(*(_writer(d, svc, until, rows) for svc in SERVICES[:writers]))
    df = pd.DataFrame(rows)
    df["latency_ms"] = (df.end - df.start) * 1000
    df.attrs["elapsed_s"] = df.end.max() - (until - seconds)
    return df


@asynccontextmanager
async def _reports(d: Design, analysts: int):
    """``analysts`` clients asking analytics for the heavy report, back to back, during the
    block; the report in progress at the end is finished (counted in ``d.reports``)."""
    stop = asyncio.Event()
    d.reports = 0

    async def analyst():
        while not stop.is_set():
            await d.call("analytics", "GET", "/report")
            d.reports += 1

    tasks = [asyncio.ensure_future(analyst()) for _ in range(analysts)]
    try:
        yield
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, Exception):
            raise r


def write_summary(df: pd.DataFrame) -> dict:
    """Throughput (ok writes/s), mean/p50/p99 latency, failures, and fairness of one run."""
    ok = df[df.ok]
    per = ok.groupby("service").size()
    return {"writes/s": len(ok) / df.attrs["elapsed_s"], "mean ms": ok.latency_ms.mean(),
            "p50 ms": ok.latency_ms.median(), "p99 ms": ok.latency_ms.quantile(0.99),
            "failed": int((~df.ok).sum()),
            # Jain's fairness index over the writers: 1 = equal shares, 1/n = one takes all
            "fairness": float(per.sum() ** 2 / (len(per) * (per ** 2).sum())) if len(per) else
            float("nan")}


def ideal_contention(writers: int, hold_ms: float) -> dict:
    """One writer at a time (shared) vs one per file (per service), from the hold time alone."""
    v.positive("writers", writers, integer=True)
    v.positive("hold_ms", hold_ms)
    return {"shared": {"writes/s": 1000 / hold_ms, "mean ms": writers * hold_ms},
            "per service": {"writes/s": writers * 1000 / hold_ms, "mean ms": hold_ms}}


# -- experiment 3: a heavy query next to order writes ------------------------------------------
async def noisy_neighbour(d: Design, *, analysts: int, rate: float = 40,
                          seconds: float = 1.0) -> pd.DataFrame:
    """Orders arrive at ``rate`` per second (open loop) while ``analysts`` run the report back
    to back. One row per order: latency counted from when it was due."""
    from toylib.core.load import open_loop
    v.number("rate", rate, low=1, high=500)
    v.number("seconds", seconds, low=0.1, high=30)
    v.number("analysts", analysts, low=0, high=d.cfg.analysts, integer=True)
    await d.call("orders", "POST", "/orders", json=order_for(99_999, d.cfg))   # warm up
    async with _reports(d, analysts):
        r = await open_loop(lambda i: d.call("orders", "POST", "/orders",
                                             json=order_for(100_000 + i, d.cfg)),
                            rate=rate, n=int(rate * seconds), max_seconds=seconds + 30,
                            progress=False)
    r.df.attrs["reports"] = d.reports
    return r.df


# -- experiment 4: more workers for one service ------------------------------------------------
async def scaling(d: Design, *, seconds: float = 0.6, work_ms: float = 20.0,
                  background: bool = True) -> dict:
    """The order service's ``order_workers`` each do ``work_ms`` of work, then a write that
    holds its transaction ``hold_ms``; clients keep every worker busy. With ``background``
    the four other services write too, one client each, with the same work and hold."""
    v.number("seconds", seconds, low=0.05, high=30)
    v.number("work_ms", work_ms, low=0, high=1000)
    for svc in SERVICES:
        d.topology.service(svc).faults.clear()
        if work_ms:
            d.topology.service(svc).faults.add(Latency(work_ms))
    rows: list = []
    until = now() + seconds
    clients = [_writer(d, "orders", until, rows, start=10_000 * k)
               for k in range(d.cfg.order_workers)]
    if background:
        clients += [_writer(d, svc, until, rows) for svc in SERVICES[1:]]
    await asyncio.gather(*clients)
    df = pd.DataFrame(rows)
    elapsed = df.end.max() - (until - seconds)
    ok = df[df.ok]
    return {"order writes/s": int((ok.service == "orders").sum()) / elapsed,
            "other writes/s": int((ok.service != "orders").sum()) / elapsed,
            "failed": int((~df.ok).sum())}


def ideal_scaling(workers: int, *, work_ms: float, hold_ms: float, others: int = 4) -> dict:
    """Writes/s if handing the lock over cost nothing. Per service: the order service is capped
    only by its own file's single writer (1/hold), and each other writer does 1/(work + hold).
    Shared: everyone together is capped by the one writer lock (1/hold)."""
    v.positive("workers", workers, integer=True)
    v.positive("hold_ms", hold_ms)
    v.non_negative("work_ms", work_ms)
    v.non_negative("others", others, integer=True)
    cycle = work_ms + hold_ms
    return {"order, per service": min(workers * 1000 / cycle, 1000 / hold_ms),
            "others, per service": others * 1000 / cycle,
            "everyone, shared": 1000 / hold_ms}


# -- experiment 5: the order saga with compensation --------------------------------------------
async def run_sagas(d: DatabasePerService, *, orders: int = 200, concurrency: int = 20,
                    start: int = 0) -> pd.DataFrame:
    """Place ``orders`` orders, each through the saga, ``concurrency`` at a time; wait until
    every event is applied everywhere. Returns the orchestrator's table of sagas."""
    if not isinstance(d, DatabasePerService):
        raise TypeError(f"d must be a running DatabasePerService; got {d!r}")
    v.number("orders", orders, low=1, high=100_000, integer=True)
    v.number("concurrency", concurrency, low=1, high=500, integer=True)
    gate = asyncio.Semaphore(concurrency)
    async with d.orchestrator() as orch:
        async def one(i):
            async with gate:
                saga_id = await orch.start("order", order_for(i, d.cfg), saga_id=f"order-{i}")
                return await orch.wait(saga_id)
        async with asyncio.TaskGroup() as tg:
            for i in range(start, start + orders):
                tg.create_task(one(i))
        sagas = await orch.sagas()
    await d.sync()
    return sagas


def expected_outcomes(cfg: Config, orders: int, start: int = 0) -> Counter:
    """What the seeded payment draws decide, computed without running anything."""
    return Counter(payment_outcome(f"order-{i}", cfg) for i in range(start, start + orders))


async def invariants(d: DatabasePerService) -> pd.DataFrame:
    """The saga invariants, each read from the databases themselves (not from the
    orchestrator's counters): a row per invariant with ``holds`` and the evidence."""
    orders = dict(await d.primary("orders").fetchall("SELECT order_id, status FROM orders "
                                                     "WHERE order_id LIKE 'order-%'"))
    sagas = Counter(s for (s,) in await d.saga_db.fetchall("SELECT status FROM sagas"))
    status = Counter(orders.values())
    confirmed = {o for o, s in orders.items() if s == "confirmed"}
    cancelled = {o for o, s in orders.items() if s == "cancelled"}
    inv, bill = d.primary("inventory"), d.primary("billing")
    stock = await inv.fetchall("SELECT sku, available, reserved FROM stock ORDER BY sku")
    held = dict(await inv.fetchall("SELECT sku, SUM(qty) FROM reservations "
                                   "WHERE state = 'held' GROUP BY sku"))
    held_for = {o for (o,) in await inv.fetchall(
        "SELECT order_id FROM reservations WHERE state = 'held'")}
    charges = await bill.fetchall(
        "SELECT order_id, COUNT(*), SUM(state = 'charged') FROM charges "
        "WHERE order_id LIKE 'order-%' GROUP BY order_id")
    kept = {o for o, _, c in charges if c}
    refunded = sum(n - c for _, n, c in charges)
    notes = await d.primary("notification").fetchall(
        "SELECT order_id, kind, COUNT(*) FROM notifications GROUP BY order_id, kind")
    told = {k: {o for o, kind, _ in notes if kind == k} for k in ("confirmed", "failed")}
    seen = dict(await d.primary("analytics").fetchall(
        "SELECT status, COUNT(*) FROM orders WHERE order_id LIKE 'order-%' GROUP BY status"))
    ledger = ", ".join(f"{s} {a}+{r}" for s, a, r in stock)
    rows = [
        ("every saga is terminal", set(sagas) <= TERMINAL and sum(sagas.values()) == len(orders),
         ", ".join(f"{n} {s}" for s, n in sorted(sagas.items()))),
        ("no order left pending", set(status) <= {"confirmed", "cancelled"},
         ", ".join(f"{n} {s}" for s, n in sorted(status.items()))),
        ("stock conserved (available + reserved = initial)",
         all(a + r == d.cfg.stock and r == held.get(s, 0) for s, a, r in stock), ledger),
        ("stock held exactly for confirmed orders", held_for == confirmed,
         f"{len(held_for)} reservations held"),
        ("nobody charged twice", all(n <= 1 for _, n, _ in charges),
         f"at most {max((n for _, n, _ in charges), default=0)} charge per order"),
        ("money kept exactly for confirmed orders", kept == confirmed,
         f"{len(kept)} charges kept, {refunded} refunded"),
        ("one notice per order, of the right kind",
         told["confirmed"] == confirmed and told["failed"] == cancelled
         and all(n == 1 for *_, n in notes),
         f"{len(told['confirmed'])} confirmations, {len(told['failed'])} failure notices"),
        ("analytics agrees with the order database", seen == dict(status),
         ", ".join(f"{n} {s}" for s, n in sorted(seen.items()))),
    ]
    return pd.DataFrame(rows, columns=["invariant", "holds", "evidence"]).set_index("invariant")


def saga_diagram(saga: SagaDefinition, *, title: str | None = None) -> Mermaid:
    """The saga drawn from its definition: the steps, the pivot, the compensations in reverse
    order from the failed pivot, and the events analytics and notification react to."""
    lines = []
    if title:
        lines += ["---", f'title: "{title}"', "---"]
    lines += ["flowchart TB", '  subgraph forward["Transaction steps (local, one database each)"]']
    for i, s in enumerate(saga.steps):
        tag = " (pivot)" if s.pivot else (" (retried)" if i > saga.pivot else "")
        lines.append(f'    S{i}["step {i + 1}: {s.name}{tag}"]')
    lines.append("  end")
    lines.append('  subgraph back["Compensation (reverse order)"]')
    lines.append('    FAIL["payment failed or reply lost"]')
    undo = [(i, s) for i, s in enumerate(saga.steps[:saga.pivot + 1]) if s.compensation]
    for i, s in reversed(undo):
        lines.append(f'    C{i}["undo {s.name}: {s.compensation.__name__}"]')
    lines.append('    NOTE["OrderCancelled event: notification sends the failure notice"]')
    lines.append("  end")
    lines.append('  subgraph eventual["Eventual consistency"]')
    lines.append('    EV["order events (outbox, relay, bus)"] --> AN["analytics read model"]')
    lines.append("  end")
    lines += [f"  S{i} --> S{i + 1}" for i in range(len(saga.steps) - 1)]
    lines.append(f"  S{saga.pivot} -. fails .-> FAIL")
    chain = ["FAIL"] + [f"C{i}" for i, _ in reversed(undo)] + ["NOTE"]
    lines += [f"  {a} --> {b}" for a, b in zip(chain, chain[1:])]
    lines += ["  S0 -.-> EV", f"  S{saga.pivot + 1} -.-> EV", f"  C{undo[0][0]} -.-> EV"]
    lines += ["  classDef step fill:#10B981,stroke:#059669,color:#fff",
              "  classDef comp fill:#8B5CF6,stroke:#7C3AED,color:#fff",
              "  classDef ev fill:#F59E0B,stroke:#D97706,color:#fff",
              "  classDef fail fill:#FF6666,stroke:#8B5CF6,color:#fff",
              f"  class {','.join(f'S{i}' for i in range(len(saga.steps)))} step",
              f"  class {','.join(f'C{i}' for i, _ in undo)},NOTE comp",
              "  class EV,AN ev", "  class FAIL fail"]
    return Mermaid("\n".join(lines))


# -- experiment 6: the analytics read model's staleness ----------------------------------------
async def staleness(d: DatabasePerService, *, rate: float = 100, seconds: float = 1.0,
                    start: int = 0) -> pd.DataFrame:
    """Place orders at ``rate`` per second (open loop); once analytics has caught up, return
    per order when it was committed, when analytics could see it, and the difference."""
    from toylib.core.load import open_loop
    if not isinstance(d, DatabasePerService):
        raise TypeError(f"d must be a running DatabasePerService; got {d!r}")
    v.number("rate", rate, low=1, high=1000)
    v.number("seconds", seconds, low=0.1, high=30)
    await open_loop(lambda i: d.call("orders", "POST", "/orders",
                                     json=order_for(start + i, d.cfg)),
                    rate=rate, n=int(rate * seconds), max_seconds=seconds + 30, progress=False)
    await d.sync(timeout=60)
    df = await d.primary("analytics").dataframe(
        "SELECT order_id, committed_at, visible_at FROM orders WHERE visible_at IS NOT NULL "
        "ORDER BY committed_at")
    df["staleness_ms"] = (df.visible_at - df.committed_at) * 1000
    return df


def ideal_staleness(*, rate: float, n: int, delay_ms: float, relay_interval_ms: float,
                    overhead_ms: float = 0.0) -> np.ndarray:
    """Staleness of each of ``n`` orders arriving every 1/rate s at a consumer that takes
    ``delay_ms`` (+ ``overhead_ms`` of bookkeeping) per event, after waiting on average half a
    relay interval: a D/D/1 queue. Below saturation it is flat; above, it grows linearly."""
    v.positive("rate", rate)
    v.positive("n", n, integer=True)
    v.non_negative("delay_ms", delay_ms)
    v.non_negative("relay_interval_ms", relay_interval_ms)
    v.non_negative("overhead_ms", overhead_ms)
    gap, done, out = 1000 / rate, -np.inf, []
    for k in range(n):
        arrival = k * gap + relay_interval_ms / 2
        done = max(arrival, done) + delay_ms + overhead_ms
        out.append(done - k * gap)
    return np.array(out)


# -- the verdicts the chapter's claims table needs ----------------------------------------------
def verdict_if(condition: bool, *, assumed: bool = False) -> str:
    """A verdict for a claim with no number in it ("high" vs "low"): the measured condition
    that would make it true either holds here or not."""
    if not isinstance(condition, (bool, np.bool_)):
        raise TypeError(f"condition must be True or False; got {condition!r}")
    if condition:
        return cl.HOLDS_IF if assumed else cl.HOLDS
    return cl.FAILS


# -- the panel ---------------------------------------------------------------------------------
async def try_it(writers: int = 3, analytics_load: int = 1, p_payment_fail: float = 0.2):
    """A small version of the chapter with your knobs: contention in both designs with
    ``writers`` writing services and ``analytics_load`` report queries running, then 60 order
    sagas with payment failing with probability ``p_payment_fail``."""
    import matplotlib.pyplot as plt
    v.number("writers", writers, low=1, high=len(SERVICES), integer=True)
    v.number("analytics_load", analytics_load, low=0, high=4, integer=True)
    v.probability("p_payment_fail", p_payment_fail)
    cfg = Config(hold_ms=10, history=20_000, analysts=max(1, analytics_load))
    summary = {}
    for name, design in DESIGNS.items():
        async with design(cfg) as d:
            summary[name] = write_summary(await contention(
                d, writers=writers, seconds=0.6, analysts=analytics_load))
    table = pd.DataFrame(summary).T.round(2)
    ideal = ideal_contention(writers, cfg.hold_ms)
    table["ideal writes/s"] = [ideal[n]["writes/s"] for n in table.index]
    async with DatabasePerService(p_decline=p_payment_fail, seed=1) as d:
        await run_sagas(d, orders=60)
        checks = await invariants(d)
    fig, ax = plt.subplots(layout="constrained")
    ax.bar(table.index, table["writes/s"], color=["#FF6666", "#10B981"])
    ax.scatter(table.index, table["ideal writes/s"], color="#374151", marker="_", s=800,
               label="ideal")
    ax.set_ylabel("writes/s (all writers)")
    ax.set_title(f"{writers} writing services, {analytics_load} report(s) running")
    ax.legend()
    return table, fig, checks
