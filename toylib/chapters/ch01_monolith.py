"""Chapter 1, Distributed monolith: five services that cannot live apart, and their separation.

* **Before** (:class:`DistributedMonolith`): the order service calls customer, pricing,
  inventory and payment one after another, and all five read and write **one** SQLite file,
  each through its own connection, as five processes would. Pricing and payment also read the
  customer team's table directly, because it is right there.
* **After** (:class:`OwnedData`): each service owns its own SQLite file. The order service
  decides with local copies of the customer and price data (fed by the ``customers`` and
  ``prices`` topics), writes the order and an ``OrderPlaced`` event in one local transaction
  (the transactional outbox) and answers at once. Inventory, payment, customer and pricing
  each read the ``orders`` topic in their own consumer group, through an idempotent consumer.

Every service's own work costs ``latency_ms`` in both designs (per request before; per request
for the order service and per event for the others after) and fails with probability ``p``.
The module follows the chapter contract of :mod:`toylib.chapters.design`: :class:`Knobs`, the
designs in ``DESIGNS`` (built with :func:`design`, run with ``async with``), probes that take a
running design first (:func:`order_latencies`, :func:`take_orders`, :func:`migration_probe`,
:func:`outage_probe`), the chapter's experiments, which take knobs and build and release both
designs themselves (:func:`latency`, :func:`availability`, :func:`degradation`,
:func:`blast_radius`, :func:`outage`), the source article's claims declared once
(:data:`CLAIMS`), judged by :func:`findings`, and :func:`audit`, a small run of everything
behind them. :func:`sweep` runs the outage over a small grid of knobs for the static site.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from contextlib import AsyncExitStack, nullcontext
from dataclasses import dataclass, field, replace

import pandas as pd
from aiohttp import web

from toylib.core import validate as v
from toylib.core import load
from toylib.core.calibrate import stalls_from_env
from toylib.data.bus import EventBus
from toylib.data.db import Database
from toylib.chapters.design import Design, build
from toylib.claims import Claim, Estimate, Finding
from toylib.core.faults import Error, Latency as Delay
from toylib.data.outbox import IdempotentConsumer, Outbox
from toylib.core.services import CallError, Node, Service, Store, Topology
from toylib.core.clock import now

CHAPTER = "ch01_monolith"
DEPENDENCIES = ("customer", "pricing", "inventory", "payment")   # the order service's, in order
SERVICES = ("order",) + DEPENDENCIES
TIER_DISCOUNT = {"standard": 0.0, "silver": 0.05, "gold": 0.10}
CUSTOMER_COLUMNS = ("id", "name", "email", "tier")
STOCK = 1_000_000                                               # per sku: never the bottleneck

TABLES = {
    "customers": "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "email TEXT NOT NULL, tier TEXT NOT NULL, "
                 "orders_placed INTEGER NOT NULL DEFAULT 0);",
    "prices": "CREATE TABLE prices (sku TEXT PRIMARY KEY, price REAL NOT NULL, "
              "sold INTEGER NOT NULL DEFAULT 0);",
    "stock": "CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL);",
    "payments": "CREATE TABLE payments (id INTEGER PRIMARY KEY, order_ref TEXT NOT NULL, "
                "customer_id INTEGER NOT NULL, amount REAL NOT NULL, receipt_to TEXT);",
    "orders": "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, "
              "sku TEXT NOT NULL, qty INTEGER NOT NULL, total REAL, status TEXT NOT NULL, "
              "event_id TEXT, created_at REAL NOT NULL);",
    "customer_view": "CREATE TABLE customer_view (id INTEGER PRIMARY KEY, name TEXT, "
                     "email TEXT, tier TEXT);",
    "price_view": "CREATE TABLE price_view (sku TEXT PRIMARY KEY, price REAL);",
}
# Before: one file holds every team's tables. After: each service's file holds its own.
SHARED_TABLES = ("customers", "prices", "stock", "payments", "orders")
OWNS = {"order": ("orders", "customer_view", "price_view"), "customer": ("customers",),
        "pricing": ("prices",), "inventory": ("stock",), "payment": ("payments",)}


MAX_P = 0.5                  # above it a consumer retries most events several times over
MAX_ORDERS = 5_000           # per run of an experiment: minutes at most, on a laptop


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated once (a bad value raises, naming the field and range)."""
    latency_ms: float = 50.0     # each service's own work, per request or per event
    p: float = 0.0               # probability that one piece of a service's work fails
    customers: int = 20
    skus: int = 5
    partitions: int = 4          # of each topic (after)
    retry_delay_s: float = 0.02  # a consumer's pause before retrying an event that failed
    seed: int = 0

    def __post_init__(self):
        v.number("latency_ms", self.latency_ms, low=0, high=2000)
        v.number("p", self.p, low=0, high=MAX_P)
        v.number("customers", self.customers, low=1, high=10_000, integer=True)
        v.number("skus", self.skus, low=1, high=1000, integer=True)
        v.number("partitions", self.partitions, low=1, high=64, integer=True)
        v.number("retry_delay_s", self.retry_delay_s, low=0, high=5)
        v.number("seed", self.seed, low=0, high=2**32 - 1, integer=True)


def _knobs(knobs, param: str = "knobs") -> Knobs:
    """``knobs`` itself, or the defaults for None; anything else is refused."""
    if knobs is None:
        return Knobs()
    if not isinstance(knobs, Knobs):
        raise TypeError(f"{param} must be a {CHAPTER}.Knobs (or None for the defaults); "
                        f"got {knobs!r}")
    return knobs


@dataclass(frozen=True)
class Migration:
    """One team renames a column of its table, and ships its own code with the change."""
    column: str
    new: str
    table: str = "customers"
    owner: str = "customer"

    def __post_init__(self):
        v.one_of("column", self.column, CUSTOMER_COLUMNS)
        v.name("new", self.new)
        if self.new in CUSTOMER_COLUMNS + ("orders_placed",):
            raise ValueError(f"new must be a column name not already in {self.table}; "
                             f"got {self.new!r}")
        v.one_of("table", self.table, ("customers",))
        v.one_of("owner", self.owner, ("customer",))

    @property
    def sql(self) -> str:
        return f"ALTER TABLE {self.table} RENAME COLUMN {self.column} TO {self.new}"

    def __str__(self) -> str:
        return f"{self.table}.{self.column} -> {self.new}"


MIGRATIONS = (Migration("email", "contact_email"), Migration("tier", "loyalty_tier"),
              Migration("id", "customer_id"), Migration("name", "full_name"))


# -- the data, identical in both designs ----------------------------------------------------------
def customer_rows(k: Knobs) -> list[tuple]:
    k = _knobs(k, "k")
    tiers = list(TIER_DISCOUNT)
    return [(c, f"customer {c}", f"c{c}@example.com", tiers[c % len(tiers)])
            for c in range(1, k.customers + 1)]


def price_rows(k: Knobs) -> list[tuple]:
    k = _knobs(k, "k")
    return [(f"sku-{j}", 10.0 + 5 * j) for j in range(k.skus)]


def order_for(i: int, k: Knobs) -> dict:
    """Request ``i``'s order: the same customer, sku and quantity in both designs."""
    v.number("i", i, low=0, high=10**9, integer=True)
    k = _knobs(k, "k")
    return {"customer_id": 1 + (7 * i) % k.customers, "sku": f"sku-{i % k.skus}",
            "qty": 1 + i % 3}


def price_total(price: float, qty: int, tier: str) -> float:
    v.number("price", price, low=0, high=1e9)
    v.number("qty", qty, low=1, high=10**6, integer=True)
    v.one_of("tier", tier, TIER_DISCOUNT)
    return round(price * qty * (1 - TIER_DISCOUNT[tier]), 2)


def customer_sql(columns: dict) -> dict:
    """The customer team's statements, written against its *current* column names.

    The team that migrates its table ships new code with the migration: here, a new column
    map. Every other team's SQL is fixed text, written when that team last deployed. The
    aliases keep what the team publishes (its API answers and its events) unchanged.
    """
    if not isinstance(columns, dict) or set(columns) != set(CUSTOMER_COLUMNS):
        raise ValueError(f"columns must map each of {list(CUSTOMER_COLUMNS)} to its current "
                         f"name; got {columns!r}")
    for col, name in columns.items():
        v.name(f"columns[{col!r}]", name)
    c = columns
    return {
        "get": f"SELECT {c['id']} AS id, {c['name']} AS name, {c['email']} AS email, "
               f"{c['tier']} AS tier FROM customers WHERE {c['id']} = ?",
        "count_order": f"UPDATE customers SET orders_placed = orders_placed + 1 "
                       f"WHERE {c['id']} = ?",
        "set_tier": f"UPDATE customers SET {c['tier']} = ? WHERE {c['id']} = ?",
    }


def _customer(row) -> dict:
    return dict(zip(CUSTOMER_COLUMNS, row))


def _not_found(what: str):
    return web.json_response({"error": f"unknown {what}"}, status=404)


# -- before: one database, synchronous calls ------------------------------------------------------
def shared_db_services(m: DistributedMonolith) -> list[Service]:
    """Customer, pricing, inventory and payment, each on its own connection to the ONE file."""
    customer, pricing, inventory, payment = (
        Service(name, label=f"{name.title()} Service", uses=("shared_db",))
        for name in DEPENDENCIES)

    @customer.post(r"/customers/{id:\d+}/orders")
    async def validate_and_count(request):          # is it a customer? count the order (loyalty)
        db, sql, cid = m.db["customer"], customer_sql(m.columns), int(request.match_info["id"])
        async with db.transaction():
            row = await db.fetchone(sql["get"], (cid,))
            if row is None:
                return _not_found(f"customer {cid}")
            await db.execute(sql["count_order"], (cid,))
        return _customer(row)

    @pricing.post("/quote")
    async def quote(request):                       # the tier discount: read the customers table
        b, db = await request.json(), m.db["pricing"]
        async with db.transaction():
            row = await db.fetchone("SELECT p.price, c.tier FROM prices p JOIN customers c "
                                    "ON c.id = ? WHERE p.sku = ?", (b["customer_id"], b["sku"]))
            if row is None:
                return _not_found("customer or sku")
            await db.execute("UPDATE prices SET sold = sold + ? WHERE sku = ?",
                             (b["qty"], b["sku"]))
        return {"total": price_total(row[0], b["qty"], row[1])}

    @inventory.post("/reserve")
    async def reserve(request):
        b = await request.json()
        if not await m.db["inventory"].execute(
                "UPDATE stock SET available = available - ? WHERE sku = ? AND available >= ?",
                (b["qty"], b["sku"], b["qty"])):
            return web.json_response({"error": "out of stock"}, status=409)
        return {"reserved": b["qty"]}

    @payment.post("/charge")
    async def charge(request):                      # the receipt address: read customers too
        b, db = await request.json(), m.db["payment"]
        async with db.transaction():
            row = await db.fetchone("SELECT email FROM customers WHERE id = ?",
                                    (b["customer_id"],))
            await db.execute("INSERT INTO payments (order_ref, customer_id, amount, receipt_to) "
                             "VALUES (?, ?, ?, ?)", (b["order_ref"], b["customer_id"],
                                                     b["amount"], row[0] if row else None))
        return {"charged": b["amount"]}

    return [customer, pricing, inventory, payment]


def sync_order_service(m: DistributedMonolith) -> Service:
    """The order service: four synchronous calls, one after another, then the order row."""
    order = Service("order", label="Order Service", uses=DEPENDENCIES + ("shared_db",))

    @order.post("/orders")
    async def place(request):
        b, db = await request.json(), m.db["order"]
        async with db.transaction():
            await db.execute("INSERT INTO orders (customer_id, sku, qty, status, created_at) "
                             "VALUES (?, ?, ?, 'pending', ?)",
                             (b["customer_id"], b["sku"], b["qty"], now()))
            (oid,) = await db.fetchone("SELECT last_insert_rowid()")
        try:                                        # every service must answer, in turn
            await order.call("customer", "POST", f"/customers/{b['customer_id']}/orders")
            quote = await order.call("pricing", "POST", "/quote", json=b)
            await order.call("inventory", "POST", "/reserve", json=b)
            await order.call("payment", "POST", "/charge", json={
                "order_ref": f"order-{oid}", "customer_id": b["customer_id"],
                "amount": quote["total"]})
        except CallError:
            await db.execute("UPDATE orders SET status = 'failed' WHERE id = ?", (oid,))
            raise                                   # answered as 502: the whole order fails
        await db.execute("UPDATE orders SET status = 'confirmed', total = ? WHERE id = ?",
                         (quote["total"], oid))
        return {"order_id": f"order-{oid}", "status": "confirmed", "total": quote["total"]}

    return order


# -- after: a database per service, events between them -------------------------------------------
def owned_data_services(o: OwnedData) -> list[Service]:
    """The order service accepts an order from its own data; the customer service's API."""
    order = Service("order", label="Order Service", uses=("order_db",))
    customer = Service("customer", label="Customer Service", uses=("customer_db",))
    others = [Service(name, label=f"{name.title()} Service", uses=(f"{name}_db",))
              for name in ("pricing", "inventory", "payment")]

    @order.post("/orders")
    async def place(request):
        b, db = await request.json(), o.db["order"]
        async with db.transaction():                # the order and its event: both or neither
            cust = await db.fetchone("SELECT email, tier FROM customer_view WHERE id = ?",
                                     (b["customer_id"],))
            price = await db.fetchone("SELECT price FROM price_view WHERE sku = ?", (b["sku"],))
            if cust is None or price is None:
                return _not_found("customer or sku")
            total = price_total(price[0], b["qty"], cust[1])
            await db.execute("INSERT INTO orders (customer_id, sku, qty, total, status, "
                             "created_at) VALUES (?, ?, ?, ?, 'accepted', ?)",
                             (b["customer_id"], b["sku"], b["qty"], total, now()))
            (oid,) = await db.fetchone("SELECT last_insert_rowid()")
            event_id = await o.outbox["order"].emit("orders", f"customer-{b['customer_id']}", {
                "order_id": f"order-{oid}", **b, "total": total, "receipt_to": cust[0]})
            await db.execute("UPDATE orders SET event_id = ? WHERE id = ?", (event_id, oid))
        return web.json_response({"order_id": f"order-{oid}", "status": "accepted",
                                  "total": total}, status=202)

    @customer.get(r"/customers/{id:\d+}")
    async def get_customer(request):
        cid = int(request.match_info["id"])
        row = await o.db["customer"].fetchone(customer_sql(o.columns)["get"], (cid,))
        return _customer(row) if row else _not_found(f"customer {cid}")

    return [order, customer, *others]


class OutOfStock(Exception):
    pass


def order_consumers(o: OwnedData) -> dict:
    """What each service does with an ``OrderPlaced`` event, in its own database only."""
    async def inventory(db: Database, event):
        e = event.value
        if not await db.execute("UPDATE stock SET available = available - ? "
                                "WHERE sku = ? AND available >= ?",
                                (e["qty"], e["sku"], e["qty"])):
            raise OutOfStock(e["sku"])

    async def payment(db: Database, event):
        e = event.value
        await db.execute("INSERT INTO payments (order_ref, customer_id, amount, receipt_to) "
                         "VALUES (?, ?, ?, ?)", (e["order_id"], e["customer_id"], e["total"],
                                                 e["receipt_to"]))

    async def customer(db: Database, event):
        await db.execute(customer_sql(o.columns)["count_order"], (event.value["customer_id"],))

    async def pricing(db: Database, event):
        await db.execute("UPDATE prices SET sold = sold + ? WHERE sku = ?",
                         (event.value["qty"], event.value["sku"]))

    return {"customer": customer, "pricing": pricing, "inventory": inventory,
            "payment": payment}


def replica_consumers() -> dict:
    """The order service's copies of the customer and price data it decides with."""
    async def customer_changed(db: Database, event):
        c = event.value                             # the customer team's published contract
        await db.execute("INSERT INTO customer_view (id, name, email, tier) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                         "email = excluded.email, tier = excluded.tier",
                         (c["id"], c["name"], c["email"], c["tier"]))

    async def price_changed(db: Database, event):
        await db.execute("INSERT INTO price_view (sku, price) VALUES (?, ?) ON CONFLICT (sku) "
                         "DO UPDATE SET price = excluded.price",
                         (event.value["sku"], event.value["price"]))

    return {"customers": customer_changed, "prices": price_changed}


class TransientFailure(Exception):
    """A consumer's injected failure (probability ``p``): the bus retries the event."""


# -- the two designs as running systems -----------------------------------------------------------
class _Shop(Design):
    """What both designs share: knobs, a workspace of SQLite files, a topology, a scope.

    ``async with`` opens the databases, starts the services (and, after, the relays and
    consumers); leaving it stops everything and deletes the databases, even on error.
    """
    chapter = CHAPTER
    databases = True

    def __init__(self, knobs: Knobs | None = None):
        self.k = _knobs(knobs)
        self.columns = {c: c for c in CUSTOMER_COLUMNS}   # the customer team's current names
        self.db: dict[str, Database] = {}
        super().__init__(self.k)

    def build(self) -> Topology:
        topology = Topology(*self.nodes(), name=f"{CHAPTER}: {self.name}", seed=self.k.seed)
        for svc in topology.services.values():
            if self.k.latency_ms:
                svc.faults.add(Delay(self.k.latency_ms))
            if self.k.p:
                svc.faults.add(Error(self.k.p, 503))
        return topology

    def nodes(self) -> list[Node]:
        raise NotImplementedError

    def forget(self) -> None:
        self.db.clear()                      # closed, with their folder, by the workspace
        self.columns = {c: c for c in CUSTOMER_COLUMNS}

    async def _load_data(self, db: Database, tables) -> None:
        await db.executescript("\n".join(TABLES[t] for t in tables))
        async with db.transaction():
            if "customers" in tables:
                await db.executemany("INSERT INTO customers (id, name, email, tier) "
                                     "VALUES (?, ?, ?, ?)", customer_rows(self.k))
            if "prices" in tables:
                await db.executemany("INSERT INTO prices (sku, price) VALUES (?, ?)",
                                     price_rows(self.k))
            if "stock" in tables:
                await db.executemany("INSERT INTO stock VALUES (?, ?)",
                                     [(sku, STOCK) for sku, _ in price_rows(self.k)])

    # -- what an experiment does ------------------------------------------------------------------
    async def place_order(self, i: int, *, trace_id: str | None = None) -> dict:
        """Send request ``i`` (see :func:`order_for`) to the order service; its answer."""
        self.require_running()
        if trace_id is not None and (not isinstance(trace_id, str) or not trace_id
                                     or len(trace_id) > 200):
            raise TypeError(f"trace_id must be None or a non-empty string of at most 200 "
                            f"characters; got {trace_id!r:.80}")
        return await self.topology.call("order", "POST", "/orders", json=order_for(i, self.k),
                                        trace_id=trace_id)

    async def migrate(self, migration: Migration) -> None:
        """Run the owner's migration on the owner's connection and deploy the owner's code."""
        if not isinstance(migration, Migration):
            raise TypeError(f"migration must be a {CHAPTER}.Migration; got {migration!r}")
        self.require_running()
        if self.columns[migration.column] != migration.column:
            raise ValueError(f"migration must rename a column not renamed yet; "
                             f"{migration.column!r} is now {self.columns[migration.column]!r}")
        await self.db[migration.owner].execute(migration.sql)
        self.columns[migration.column] = migration.new

    async def down(self, service: str) -> None:
        self.require_running()
        await self.topology.service(v.one_of("service", service, DEPENDENCIES)).down()

    async def up(self, service: str) -> None:
        await self.topology.service(v.one_of("service", service, DEPENDENCIES)).up()

    async def outage(self, service: str, start_s: float, duration_s: float) -> tuple:
        """Take ``service`` down ``start_s`` from now for ``duration_s``; (t_down, t_up)."""
        v.one_of("service", service, DEPENDENCIES)
        v.number("start_s", start_s, low=0, high=60)
        v.number("duration_s", duration_s, low=0, high=60, low_open=True)
        await asyncio.sleep(start_s)
        t_down = now()
        await self.down(service)
        await asyncio.sleep(duration_s)
        t_up = now()
        await self.up(service)
        return t_down, t_up

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every accepted order has been processed everywhere (after only)."""
        v.number("timeout", timeout, low=0, high=600, low_open=True)

    def _check_customer(self, customer_id: int, tier: str) -> None:
        self.require_running()
        v.number("customer_id", customer_id, low=1, high=self.k.customers, integer=True)
        v.one_of("tier", tier, TIER_DISCOUNT)


class DistributedMonolith(_Shop):
    """Before: one shared SQLite file, four synchronous calls per order."""
    name = "before"

    def nodes(self) -> list[Node]:
        return [Node("client", "edge", label="Client", uses=("order",), shape="client"),
                sync_order_service(self), *shared_db_services(self),
                Store("shared_db", label="Shared Database (one SQLite file)")]

    async def open_databases(self) -> None:
        for name in SERVICES:                        # five connections, one file
            self.db[name] = await self.ws.database("shared", owner=name)
        await self._load_data(self.db["order"], SHARED_TABLES)

    async def update_customer(self, customer_id: int, tier: str) -> None:
        self._check_customer(customer_id, tier)
        await self.db["customer"].execute(customer_sql(self.columns)["set_tier"],
                                          (tier, customer_id))

    async def probe(self) -> dict:
        """Ask each service to do its part of one order, directly: None if it worked, else
        the error it answered with (its own, or the one it got from a service it called)."""
        self.require_running()
        o = order_for(0, self.k)
        calls = {"customer": ("POST", f"/customers/{o['customer_id']}/orders", None),
                 "pricing": ("POST", "/quote", o),
                 "inventory": ("POST", "/reserve", o),
                 "payment": ("POST", "/charge", {"order_ref": "probe", "amount": 1.0,
                                                 "customer_id": o["customer_id"]}),
                 "order": ("POST", "/orders", o)}
        result = {}
        for service, (method, path, body) in calls.items():
            reply = await self.topology.call(service, method, path, json=body, raw=True)
            result[service] = None if reply.status < 400 else \
                f"HTTP {reply.status}: {(reply.json() or {}).get('error', '')}"
        return result


class OwnedData(_Shop):
    """After: a database per service; the order service answers once its own transaction
    commits, and the others catch up through the event bus."""
    name = "after"

    def __init__(self, knobs: Knobs | None = None):
        super().__init__(knobs)
        self.bus: EventBus | None = None
        self.outbox: dict[str, Outbox] = {}
        self.relays: dict = {}
        self.groups: dict = {}              # service -> its consumer group on "orders"
        self.consumers: dict[str, IdempotentConsumer] = {}
        self.replicas: dict = {}            # topic -> the order service's group on it
        self.attempts: Counter = Counter()  # (service, event id) -> deliveries
        self.failures: Counter = Counter()  # service -> injected failures
        self.last_error: dict[str, str] = {}

    def nodes(self) -> list[Node]:
        topics = [Node("orders_topic", "control", label="orders topic", shape="queue",
                       uses=DEPENDENCIES),
                  Node("customers_topic", "control", label="customers topic", shape="queue",
                       uses=("order",)),
                  Node("prices_topic", "control", label="prices topic", shape="queue",
                       uses=("order",))]
        relay = {"order": "orders_topic", "customer": "customers_topic", "pricing": "prices_topic"}
        stores = [Store(f"{s}_db", label=f"{s.title()} DB",
                        uses=(relay[s],) if s in relay else ()) for s in SERVICES]
        return [Node("client", "edge", label="Client", uses=("order",), shape="client"),
                *owned_data_services(self), *stores, *topics]

    async def open_databases(self) -> None:
        self.attempts.clear()
        self.failures.clear()
        self.last_error.clear()
        for name in SERVICES:                        # five files, one owner each
            self.db[name] = await self.ws.database(name)
            await self._load_data(self.db[name], OWNS[name])
        for name in ("order", "customer", "pricing"):
            self.outbox[name] = await Outbox(self.db[name], source=name, clock=now).setup()
        # The customer and pricing teams publish their data once, as events: the order
        # service's copies are built from these, never from their tables.
        async with self.db["customer"].transaction():
            for cid, *_ in customer_rows(self.k):
                await self._publish_customer(cid)
        async with self.db["pricing"].transaction():
            for sku, price in price_rows(self.k):
                await self.outbox["pricing"].emit("prices", sku, {"sku": sku, "price": price})

    async def _publish_customer(self, cid: int) -> None:
        row = await self.db["customer"].fetchone(customer_sql(self.columns)["get"], (cid,))
        await self.outbox["customer"].emit("customers", f"customer-{cid}", _customer(row))

    def forget(self) -> None:
        super().forget()
        self.outbox.clear()
        self.consumers.clear()

    async def start_beside(self, stack: AsyncExitStack) -> None:
        k = self.k
        self.bus = EventBus(clock=now)
        for topic in ("orders", "customers", "prices"):
            self.bus.create_topic(topic, partitions=k.partitions)
        for name, interval in (("order", 0.01), ("customer", 0.05), ("pricing", 0.05)):
            self.relays[name] = await stack.enter_async_context(
                self.outbox[name].relay(self.bus, interval=interval))
        for topic, work in replica_consumers().items():
            consumer = await IdempotentConsumer(self.db["order"], f"order-{topic}", work,
                                                clock=now).setup()
            self.replicas[topic] = await stack.enter_async_context(
                self.bus.consumer_group(topic, "order", consumer, retry_delay=k.retry_delay_s))
        for name, work in order_consumers(self).items():
            consumer = await IdempotentConsumer(self.db[name], name, work, clock=now).setup()
            self.consumers[name] = consumer
            self.groups[name] = await stack.enter_async_context(self.bus.consumer_group(
                "orders", name, self._handler(name, consumer), retry_delay=k.retry_delay_s))
        for name in ("customer", "pricing"):
            await self.relays[name].wait_drained()
        for group in self.replicas.values():
            await group.wait_caught_up()

    def _handler(self, service: str, consumer: IdempotentConsumer):
        """The service at work on one event: ``latency_ms`` of work, a failure with
        probability ``p`` (seeded by event and attempt, so a run replays), then the
        idempotent consumer (the work and the event id in one local transaction)."""
        k = self.k

        async def handle(event):
            self.attempts[service, event.event_id] += 1
            attempt = self.attempts[service, event.event_id]
            if k.latency_ms:
                await asyncio.sleep(k.latency_ms / 1000)
            if k.p and random.Random(f"{k.seed}|{service}|{event.event_id}|{attempt}"
                                     ).random() < k.p:
                self.failures[service] += 1
                raise TransientFailure(f"{service} failed on {event.event_id} (try {attempt})")
            try:
                await consumer(event)
            except Exception as e:
                self.last_error[service] = f"{type(e).__name__}: {e}"
                raise
        return handle

    async def update_customer(self, customer_id: int, tier: str) -> None:
        """The customer team changes a customer and publishes it, in one transaction."""
        self._check_customer(customer_id, tier)
        async with self.db["customer"].transaction():
            await self.db["customer"].execute(customer_sql(self.columns)["set_tier"],
                                              (tier, customer_id))
            await self._publish_customer(customer_id)

    async def down(self, service: str) -> None:
        """The service stops: its HTTP server, and its consumer (a crash: no goodbye)."""
        await super().down(service)
        group = self.groups[service]
        for consumer in list(group.consumers):
            await group.crash(consumer)

    async def up(self, service: str) -> None:
        await super().up(service)
        if not self.groups[service].consumers:
            self.groups[service].add_consumer()   # resumes at the group's committed offset

    async def drain(self, timeout: float = 10.0) -> None:
        v.number("timeout", timeout, low=0, high=600, low_open=True)
        self.require_running()
        await self.relays["order"].wait_drained(timeout)
        for group in self.groups.values():
            await group.wait_caught_up(timeout)

    async def probe(self, timeout: float = 2.0) -> dict:
        """One order end to end, and one customer change: None per service that did its
        part, else what went wrong."""
        result = {s: None for s in SERVICES}
        reply = await self.topology.call("customer", "GET", "/customers/1", raw=True)
        if reply.status >= 400:
            result["customer"] = f"HTTP {reply.status}: {(reply.json() or {}).get('error')}"
        await self.update_customer(1, "gold")       # must reach the order service's copy
        reply = await self.topology.call("order", "POST", "/orders", json=order_for(0, self.k),
                                         raw=True)
        if reply.status >= 400:
            result["order"] = f"HTTP {reply.status}: {(reply.json() or {}).get('error')}"
        await self.relays["customer"].wait_drained(timeout)
        await self.relays["order"].wait_drained(timeout)
        for name, group in [*self.groups.items(), ("order", self.replicas["customers"])]:
            try:
                await group.wait_caught_up(timeout)
            except TimeoutError:
                result[name] = f"stuck: {self.last_error.get(name, 'events not processed')}"
        seen = await self.db["order"].fetchone("SELECT tier FROM customer_view WHERE id = 1")
        if result["order"] is None and seen != ("gold",):
            result["order"] = f"its copy of customer 1 says {seen}, not 'gold'"
        return result

    async def reconcile(self) -> pd.DataFrame:
        """No order lost? Per consumer: the orders the order service accepted, the events the
        consumer processed, and its business effect, all read from the databases."""
        (n, units, amount) = await self.db["order"].fetchone(
            "SELECT COUNT(*), COALESCE(SUM(qty), 0), COALESCE(SUM(total), 0) FROM orders")
        effects = {
            "customer": ("SELECT COALESCE(SUM(orders_placed), 0) FROM customers", n),
            "pricing": ("SELECT COALESCE(SUM(sold), 0) FROM prices", units),
            "inventory": (f"SELECT {STOCK} * COUNT(*) - SUM(available) FROM stock", units),
            "payment": ("SELECT COALESCE(ROUND(SUM(amount), 2), 0) FROM payments",
                        round(amount, 2)),
        }
        rows = []
        for name, (sql, expected) in effects.items():
            db = self.db[name]
            (processed,) = await db.fetchone(
                "SELECT COUNT(*) FROM processed_events WHERE consumer = ?", (name,))
            (effect,) = await db.fetchone(sql)
            rows.append({"service": name, "orders accepted": n, "events processed": processed,
                         "not processed": n - processed, "effect": effect,
                         "effect expected": expected,
                         "duplicates dropped": self.consumers[name].stats["duplicates"]})
        return pd.DataFrame(rows).set_index("service")

    async def completion(self) -> pd.DataFrame:
        """Per order: when it was accepted and when each consumer had processed it (seconds
        on :func:`toylib.core.clock.now`); ``done_at`` is the last of them."""
        df = await self.db["order"].dataframe(
            "SELECT 'order-' || id AS order_id, event_id, created_at FROM orders ORDER BY id")
        for name in DEPENDENCIES:
            done = await self.db[name].dataframe(
                "SELECT event_id, processed_at AS done FROM processed_events WHERE consumer = ?",
                (name,))
            df = df.merge(done.rename(columns={"done": f"{name}_at"}), on="event_id", how="left")
        df["done_at"] = df[[f"{n}_at" for n in DEPENDENCIES]].max(axis=1, skipna=False)
        return df


DESIGNS = {"before": DistributedMonolith, "after": OwnedData}


def design(name: str, knobs: Knobs | None = None) -> _Shop:
    """The design ``name`` ("before" or "after") built from ``knobs`` (not started yet)."""
    return build(DESIGNS, name, _knobs(knobs))


# -- the analytic figures -------------------------------------------------------------------------
def ideal(k: Knobs) -> dict:
    """What the injected delays and failure probabilities alone would give."""
    k = _knobs(k, "k")
    d, p, hops = k.latency_ms, k.p, len(SERVICES)
    return {"latency_before_ms": hops * d,          # the order's own work, then 4 calls in turn
            "accept_after_ms": d,                   # the order's own work only
            "completion_after_ms": 2 * d,           # then the 4 consumers, in parallel
            "success_before": (1 - p) ** hops,      # every service must succeed
            "accept_after": 1 - p,                  # only the order service must
            "processed_after": 1.0,                 # consumers retry until they succeed
            # failed orders before / after: 1 - (1-p)^5 over p, about 5 for small p
            "failure_factor": (1 - (1 - p) ** hops) / p if p else float(hops)}


# -- probes: each takes a running design first ----------------------------------------------------
def _running(system) -> _Shop:
    if not isinstance(system, _Shop):
        raise TypeError(f"system must be a running {CHAPTER} design (from design(...)); "
                        f"got {system!r}")
    system.require_running()
    return system


async def order_latencies(system: _Shop, n: int, *, first: int = 0,
                          label: str = "") -> load.LoadResult:
    """``n`` orders one after another. The result's ``latency_ms`` is the time to the answer;
    after, ``completion_ms`` adds the time until every consumer had processed the order."""
    _running(system)
    v.number("n", n, low=1, high=MAX_ORDERS, integer=True)
    v.number("first", first, low=0, high=10**9, integer=True)
    if not isinstance(label, str) or len(label) > 200:
        raise TypeError(f"label must be a string of at most 200 characters; got {label!r:.80}")

    async def one(i):
        t_sent = now()
        answer = await system.place_order(first + i)
        return {"order_id": answer["order_id"], "t_sent": t_sent}

    result = await load.sequential(one, n=n, label=label or system.name, progress=False)
    if isinstance(system, OwnedData):
        await system.drain()
        done = (await system.completion()).set_index("order_id")["done_at"]
        df = result.df
        df["completion_ms"] = (df["order_id"].map(done) - df["t_sent"]) * 1000
    return result


async def take_orders(system: _Shop, n: int, *, down: str | None = None,
                      concurrency: int = 10) -> dict:
    """``n`` orders from ``concurrency`` clients, with ``down`` (a dependency) down throughout.
    Before: the orders confirmed. After: the orders accepted, and (after the service is back)
    the accepted orders processed by every consumer, read from their databases."""
    _running(system)
    v.number("n", n, low=1, high=MAX_ORDERS, integer=True)
    v.number("concurrency", concurrency, low=1, high=100, integer=True)
    if down is not None:
        v.one_of("down", down, DEPENDENCIES)
    if down:
        await system.down(down)
    res = await load.closed_loop(
        lambda i: system.place_order(i, trace_id=f"order-{i}"), n=n,
        concurrency=concurrency, progress=False, label=system.name)
    ok = int(res.df["ok"].sum())
    out = {"design": system.name, "down": down or "", "p": system.k.p, "orders": n,
           "ok": ok, "answered ok": ok / n}
    if isinstance(system, OwnedData):
        if down:
            await system.up(down)
        await system.drain()
        rec = await system.reconcile()
        accepted = int(rec["orders accepted"].iloc[0])
        out["accepted orders processed everywhere"] = (
            float(rec["events processed"].min()) / accepted if accepted else float("nan"))
        out["not processed"] = int(rec["not processed"].max())
    return out


async def migration_probe(system: _Shop, migration: Migration) -> pd.DataFrame:
    """Probe every service, run the customer team's ``migration``, probe again.

    One row per service: the error after the migration (None if it still works), whether it
    broke, and how: its *own* query failed with SQLite's error, or a service it calls did.
    """
    _running(system)
    if not isinstance(migration, Migration):
        raise TypeError(f"migration must be a {CHAPTER}.Migration; got {migration!r}")
    healthy = await system.probe()
    await system.migrate(migration)
    broken = await system.probe()
    rows = []
    for service in SERVICES:
        err = broken[service]
        rows.append({"service": service, "worked before": healthy[service] is None,
                     "broken": healthy[service] is None and err is not None,
                     "how": "" if err is None else
                     ("a service it calls failed" if err.startswith("HTTP 502")
                      else "its own query"),
                     "error": err or ""})
    return pd.DataFrame(rows).set_index("service")


@dataclass
class OutageRun:
    """One design through one outage; every time in seconds since the load started."""
    design: str
    service: str
    load: load.LoadResult
    window: tuple                     # (down, up)
    lag: pd.DataFrame | None = None   # after: t, group, lag (events waiting, all partitions)
    drained_s: float | None = None    # after: from the service's return to its lag at 0
    reconcile: pd.DataFrame | None = None

    @property
    def answered_ok(self) -> float:
        return float(self.load.df["ok"].mean())

    @property
    def ok(self) -> int:
        return int(self.load.df["ok"].sum())

    @property
    def peak_lag(self) -> int | None:
        if self.lag is None:
            return None
        mine = self.lag[self.lag.group == self.service].lag
        return int(mine.max()) if len(mine) else 0


def _outage_args(service, start_s, duration_s, rate, seconds, drain_timeout) -> None:
    v.one_of("service", service, DEPENDENCIES)
    v.number("rate", rate, low=0, high=200, low_open=True)
    v.number("seconds", seconds, low=0.5, high=30)
    v.number("start_s", start_s, low=0, high=30)
    v.number("duration_s", duration_s, low=0, high=30, low_open=True)
    v.number("drain_timeout", drain_timeout, low=0, high=120, low_open=True)
    if start_s + duration_s > seconds:
        raise ValueError(f"duration_s must end the outage within the run: start_s + duration_s "
                         f"<= seconds ({seconds}); got {duration_s!r}")


async def outage_probe(system: _Shop, *, service: str = "payment", start_s: float = 1.0,
                       duration_s: float = 1.5, rate: float = 20.0, seconds: float = 4.0,
                       drain_timeout: float = 20.0) -> OutageRun:
    """Orders arrive at ``rate`` per second for ``seconds`` (open loop); ``service`` is down
    from ``start_s`` for ``duration_s``. After, the run then waits up to ``drain_timeout``
    seconds for the consumers to catch up: a consumer slower than the arrivals never does,
    and its ``drained_s`` is NaN (its events are still queued, not lost)."""
    _running(system)
    _outage_args(service, start_s, duration_s, rate, seconds, drain_timeout)
    owned = isinstance(system, OwnedData)
    monitor = system.bus.lag_monitor(0.02) if owned else nullcontext()
    async with monitor:
        t0 = now()
        outage_task = system.topology.spawn(system.outage(service, start_s, duration_s))
        res = await load.open_loop(lambda i: system.place_order(i), rate=rate,
                                   n=max(1, round(rate * seconds)), max_seconds=seconds + 5,
                                   progress=False, label=system.name)
        t_down, t_up = await outage_task
        try:
            await system.drain(drain_timeout)
        except TimeoutError:
            pass                         # reported below: drained_s is NaN
    run = OutageRun(system.name, service, res, (t_down - t0, t_up - t0))
    if owned:
        hist = system.bus.lag_history()
        hist = hist[hist.topic == "orders"]
        lag = hist.groupby(["t", "group"], as_index=False)["lag"].sum()
        lag["t"] = lag["t"] + system.bus.t0 - t0
        run.lag = lag
        mine = lag[(lag.group == service) & (lag.t >= run.window[1]) & (lag.lag == 0)]
        run.drained_s = float(mine.t.min() - run.window[1]) if len(mine) else float("nan")
        run.reconcile = await system.reconcile()
    return run


# -- the chapter's experiments: knobs in, both designs built, run and released --------------------
@dataclass
class Latency:
    """Order latency over ``trials`` trials of ``orders`` orders per design.

    In each trial both designs run side by side and take their orders alternately (one before,
    one after, ...), so a burst of load on the machine slows both alike; the factor is measured
    per trial (before's median over after's) and repeated: :meth:`factor` is the median of the
    trials' factors with their spread, which a busy machine barely moves (each of before's five
    hops pays the same scheduling delay as after's one)."""
    knobs: Knobs
    orders: int
    runs: dict                        # design -> [LoadResult per trial]

    def series(self) -> dict[str, list[pd.Series]]:
        """Per trial: before's time to answer, after's time to accept and to complete (ms)."""
        return {"before: answered": [r.latencies for r in self.runs["before"]],
                "after: accepted": [r.latencies for r in self.runs["after"]],
                "after: completed": [r.df["completion_ms"] for r in self.runs["after"]]}

    def ideal_ms(self) -> dict[str, float]:
        i = ideal(self.knobs)
        return {"before: answered": i["latency_before_ms"],
                "after: accepted": i["accept_after_ms"],
                "after: completed": i["completion_after_ms"]}

    def medians(self) -> dict[str, Estimate]:
        """Per series: the median of the per-trial medians, with the trials' spread."""
        return {name: Estimate.trials([float(s.median()) for s in trials], unit="ms")
                for name, trials in self.series().items()}

    def factor(self, of: str = "after: accepted") -> Estimate:
        """before's median latency over ``of``'s, per trial: the median factor and the
        lowest and highest of the trials."""
        v.one_of("of", of, ("after: accepted", "after: completed"))
        s = self.series()
        return Estimate.trials([float(b.median()) / float(a.median())
                                for b, a in zip(s["before: answered"], s[of])], unit="x")


def _joined(results: list) -> load.LoadResult:
    df = pd.concat([r.df for r in results], ignore_index=True)
    return load.LoadResult(df, results[0].mode, sum(r.elapsed_s for r in results),
                           results[0].label)


async def latency(knobs: Knobs | None = None, *, orders: int = 5, trials: int = 3) -> Latency:
    """``trials`` trials; in each, both designs run and take ``orders`` orders alternately
    (the after design's completion measured from its consumers' databases)."""
    k = _knobs(knobs)
    v.number("orders", orders, low=1, high=1000, integer=True)
    v.number("trials", trials, low=1, high=20, integer=True)
    runs = {"before": [], "after": []}
    for t in range(trials):
        got = {"before": [], "after": []}
        async with design("before", k) as b, design("after", k) as a:
            for j in range(orders):
                for system in (b, a):
                    got[system.name].append(await order_latencies(system, 1,
                                                                  first=t * orders + j))
        for name, results in got.items():
            runs[name].append(_joined(results))
    return Latency(k, orders, runs)


@dataclass
class Availability:
    """``orders`` orders per design with ``down`` down (or each service failing with ``p``)."""
    knobs: Knobs
    down: str
    rows: dict                        # design -> what take_orders returned

    def failures(self, name: str) -> Estimate:
        """The share of orders that failed in design ``name``, with its Wilson interval."""
        r = self.rows[v.one_of("name", name, DESIGNS)]
        return Estimate.proportion(r["orders"] - r["ok"], r["orders"])

    def df(self) -> pd.DataFrame:
        i = ideal(self.knobs)
        ideal_ok = {"before": 0.0 if self.down else i["success_before"],
                    "after": i["accept_after"]}
        return pd.DataFrame([{**r, "ideal": ideal_ok[d]} for d, r in self.rows.items()])


async def availability(knobs: Knobs | None = None, *, n: int = 200, down: str | None = None,
                       concurrency: int = 10) -> Availability:
    """Both designs take ``n`` orders, with ``down`` down throughout (or, with ``down=None``,
    each service failing with the knobs' ``p``)."""
    k = _knobs(knobs)
    v.number("n", n, low=1, high=MAX_ORDERS, integer=True)
    v.number("concurrency", concurrency, low=1, high=100, integer=True)
    if down is not None:
        v.one_of("down", down, DEPENDENCIES)
    rows = {}
    for name in ("before", "after"):
        async with design(name, k) as system:
            rows[name] = await take_orders(system, n, down=down, concurrency=concurrency)
    return Availability(k, down or "", rows)


async def degradation(knobs: Knobs | None = None, *, n: int = 40) -> list[Availability]:
    """:func:`availability` with each dependency down in turn (``n`` orders per design)."""
    k = _knobs(knobs)
    v.number("n", n, low=1, high=MAX_ORDERS // len(DEPENDENCIES), integer=True)
    return [await availability(k, n=n, down=service) for service in DEPENDENCIES]


@dataclass
class BlastRadius:
    """One migration, run in each design: per design, one row per service."""
    migration: Migration
    frames: dict                      # design -> DataFrame (see migration_probe)

    def broken(self, name: str) -> list[str]:
        df = self.frames[v.one_of("name", name, DESIGNS)]
        return list(df.index[df.broken])


async def blast_radius(knobs: Knobs | None = None, migration: Migration = MIGRATIONS[2]
                       ) -> BlastRadius:
    """The customer team's ``migration``, in the before design and then in the after design."""
    k = _knobs(knobs)
    if not isinstance(migration, Migration):
        raise TypeError(f"migration must be a {CHAPTER}.Migration; got {migration!r}")
    frames = {}
    for name in ("before", "after"):
        async with design(name, k) as system:
            frames[name] = await migration_probe(system, migration)
    return BlastRadius(migration, frames)


@dataclass
class Outage:
    """One outage, run in each design (before first)."""
    knobs: Knobs
    runs: dict                        # design -> OutageRun

    @property
    def before(self) -> OutageRun:
        return self.runs["before"]

    @property
    def after(self) -> OutageRun:
        return self.runs["after"]


async def outage(knobs: Knobs | None = None, *, service: str = "payment", start_s: float = 1.0,
                 duration_s: float = 1.5, rate: float = 20.0, seconds: float = 4.0,
                 drain_timeout: float = 20.0) -> Outage:
    """:func:`outage_probe` in the before design, then in the after design."""
    k = _knobs(knobs)
    kw = dict(service=service, start_s=start_s, duration_s=duration_s, rate=rate,
              seconds=seconds, drain_timeout=drain_timeout)
    _outage_args(**kw)
    runs = {}
    for name in ("before", "after"):
        async with design(name, k) as system:
            runs[name] = await outage_probe(system, **kw)
    return Outage(k, runs)


# -- the source article's claims, declared once ---------------------------------------------------
CLAIMS = (
    Claim(f"{CHAPTER}.latency", "latency",
          "Latency: 200ms+ (sync chain) vs 50ms (async processing)",
          "order latency before / time to accept an order after, per trial of orders taken "
          "alternately (median and spread of the trials)",
          claimed=200 / 50, at_least=True, tolerance=0.8, unit="x", conditional=True,
          assumptions="each service's own work costs the same; after answers when the order is "
                      "accepted, not when every consumer has processed it"),
    Claim(f"{CHAPTER}.degradation", "availability",
          "Availability: Single point of failure vs Graceful degradation",
          "share of orders accepted after while one dependency is down (each in turn)",
          claimed=1.0, at_least=True, tolerance=0.95,
          assumptions="the order service itself is up; a down service's work waits in its "
                      "queue and is done once it is back"),
    Claim(f"{CHAPTER}.availability_10x", "availability (summary table)",
          "Distributed Monolith: Single point of failure -> Event-driven services: "
          "10x availability",
          "failed orders before / failed orders after, every service failing with probability p",
          claimed=10.0, at_least=True, tolerance=0.8, unit="x",
          assumptions="failures independent, the same p for every service: the factor is "
                      "(1-(1-p)^5)/p, about the number of services an order waits for (5 here); "
                      "unbounded against a full outage"),
    Claim(f"{CHAPTER}.deployment", "deployment",
          "Deployment: All services together vs Independent deployments",
          "share of the other services still working after one team's schema migration, "
          "after (every column of the customers table renamed in turn)",
          claimed=1.0, at_least=True, tolerance=0.99,
          assumptions="the owner ships its code with the migration and keeps its event contract"),
)
CLAIM = {c.id.split(".", 1)[1]: c for c in CLAIMS}


def findings(latency: Latency, degraded: list[Availability], flaky: Availability,
             radius: list[BlastRadius]) -> list[Finding]:
    """Judge every claim in :data:`CLAIMS` from the experiments' results (same order)."""
    if not isinstance(latency, Latency):
        raise TypeError(f"latency must be a {CHAPTER}.Latency (from latency(...)); "
                        f"got {latency!r}")
    degraded, radius = list(degraded), list(radius)
    if not degraded or not all(isinstance(a, Availability) and a.down for a in degraded):
        raise TypeError("degraded must be a non-empty list of Availability results with a "
                        "service down (from degradation(...))")
    if not isinstance(flaky, Availability) or flaky.down or not flaky.knobs.p:
        raise ValueError("flaky must be an Availability result with no service down and "
                         "p > 0 (from availability(Knobs(p=...)))")
    if not radius or not all(isinstance(r, BlastRadius) for r in radius):
        raise TypeError("radius must be a non-empty list of BlastRadius results "
                        "(from blast_radius(...))")
    out = []
    # latency: a factor of two medians over repeated trials
    m = latency.medians()
    done = m["after: completed"]
    out.append(CLAIM["latency"].judge(
        latency.factor(), ideal=ideal(latency.knobs)["latency_before_ms"]
        / ideal(latency.knobs)["accept_after_ms"],
        note=f"before {m['before: answered'].fmt('.0f')}, after accepted in "
             f"{m['after: accepted'].fmt('.0f')}, completed in {done.fmt('.0f')}"))
    # degradation: a proportion of orders accepted after, over every dependency down
    k_after = sum(a.rows["after"]["ok"] for a in degraded)
    n_after = sum(a.rows["after"]["orders"] for a in degraded)
    k_before = sum(a.rows["before"]["ok"] for a in degraded)
    n_before = sum(a.rows["before"]["orders"] for a in degraded)
    lost = sum(a.rows["after"]["not processed"] for a in degraded)
    out.append(CLAIM["degradation"].judge(
        Estimate.proportion(k_after, n_after), ideal=1.0,
        note=f"before: {k_before} of {n_before} orders confirmed; after: {lost} accepted "
             f"orders never processed"))
    # 10x: the ratio of two failure proportions
    fb, fa = flaky.failures("before"), flaky.failures("after")
    if fa.low <= 0:
        raise ValueError("flaky must have at least one failed order after: run it with more "
                         "orders or a larger p")
    out.append(CLAIM["availability_10x"].judge(
        Estimate.ratio(fb, fa), ideal=ideal(flaky.knobs)["failure_factor"],
        note=f"p = {flaky.knobs.p:g}; failed orders: before {fb.fmt('.1%')}, after "
             f"{fa.fmt('.1%')}"))
    # deployment: exact counts of services broken by each migration
    others = len(SERVICES) - 1
    kept = sum(others - len(r.broken("after")) for r in radius)
    broke_before = sum(len(r.broken("before")) for r in radius)
    total = others * len(radius)
    out.append(CLAIM["deployment"].judge(
        Estimate.exact(kept / total, n=total), ideal=1.0,
        note=f"{len(radius)} migration(s): after, {total - kept} of {total} other services "
             f"broke; before, {broke_before} of {total}"))
    return out


# -- the audit: a small, fast run of everything behind the claims ---------------------------------
AUDIT_KNOBS = Knobs(latency_ms=100, p=0.1, seed=1)   # 100 ms of work: far above a busy loop's lag
AUDIT_SIZES = {"latency_orders": 5, "latency_trials": 3, "orders_down": 25, "orders_flaky": 300}


async def audit(knobs: Knobs | None = None) -> list[Finding]:
    """Every claim judged from a small run (about 15 s on a quiet 2-core machine): latency
    with ``knobs.latency_ms`` and no failures, availability with no delay and ``knobs.p``
    (which must be above 0), the migrations with neither."""
    k = AUDIT_KNOBS if knobs is None else _knobs(knobs)
    if not k.p:
        raise ValueError(f"knobs.p must be in (0, {MAX_P}] for the audit: the availability "
                         f"factor needs failures to count; got {k.p!r}")
    s = AUDIT_SIZES
    stalls = stalls_from_env()          # the stress check's event-loop stalls, if asked for
    try:
        lat = await latency(replace(k, p=0.0), orders=s["latency_orders"],
                            trials=s["latency_trials"])
        quiet = replace(k, latency_ms=0.0, p=0.0)
        degraded = await degradation(quiet, n=s["orders_down"])
        flaky = await availability(replace(k, latency_ms=0.0), n=s["orders_flaky"])
        radius = [await blast_radius(quiet, m) for m in MIGRATIONS]
    finally:
        if stalls is not None:
            await stalls.stop()
    return findings(lat, degraded, flaky, radius)


def outage_figure(runs, bin_s: float = 0.25):
    """Top: orders answered OK per ``bin_s`` in each design. Bottom: the after design's lag
    per consumer group. The outage window is shaded in both. ``runs``: an :class:`Outage`
    (or a dict of :class:`OutageRun` by design)."""
    import matplotlib.pyplot as plt
    if isinstance(runs, Outage):
        runs = runs.runs
    if not isinstance(runs, dict) or not runs or not all(
            isinstance(r, OutageRun) for r in runs.values()):
        raise TypeError(f"runs must be an Outage (from outage(...)); got {runs!r}")
    v.number("bin_s", bin_s, low=0.01, high=10)
    from toylib.present import plots

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7.5, 5), layout="constrained")
    window = next(iter(runs.values())).window
    for ax in (top, bottom):
        ax.axvspan(*window, color=plots.BEFORE, alpha=0.12, label="service down")
    for name, run in runs.items():
        df = run.load.df
        t = df["due"] / 1000
        bins = (t // bin_s) * bin_s
        ok = df[df["ok"]].groupby(bins[df["ok"]]).size().reindex(
            sorted(bins.unique()), fill_value=0)
        x = list(ok.index) + [ok.index[-1] + bin_s]          # the last bin drawn to its end
        y = list(ok.values / bin_s) + [ok.values[-1] / bin_s]
        top.step(x, y, where="post", label=f"{name}: answered OK",
                 color=plots.BEFORE if name == "before" else plots.AFTER)
    top.set_ylabel("orders OK per second\n(by arrival time)")
    top.set_title(f"{next(iter(runs.values())).service} down: what the clients see")
    top.legend(fontsize=8, loc="lower left")
    after = runs.get("after")
    if after is not None and after.lag is not None:
        for j, (group, g) in enumerate(after.lag.groupby("group")):
            bottom.plot(g.t, g.lag, label=group, color=plots.PALETTE[(j + 2) % len(plots.PALETTE)]
                        if group != after.service else plots.BEFORE, lw=2 if
                        group == after.service else 1)
        bottom.set_ylabel("events waiting (lag)")
        bottom.set_title("after: queue lag per consumer group")
        bottom.legend(fontsize=8, ncol=3)
    bottom.set_xlabel("seconds since the first order")
    return fig


# -- the static site's explorer: the outage over a small grid of knobs ----------------------------
# Outages of 1 s or more: a busy machine can delay an order by a few hundred ms on its way to
# payment, which would make a shorter outage miss the orders due during it.
SWEEP_GRID = {"latency_ms": (10.0, 25.0), "duration_s": (1.0, 1.5, 2.0)}
SWEEP_RUN = {"service": "payment", "start_s": 0.3, "rate": 20.0, "tail_s": 0.7,
             "drain_timeout": 3.0}


async def sweep(latency_ms=SWEEP_GRID["latency_ms"], duration_s=SWEEP_GRID["duration_s"]
                ) -> pd.DataFrame:
    """:func:`outage` over a grid of each service's work (``latency_ms``) and the outage's
    length (``duration_s``): one row per grid point and design, with the knobs, the measured
    results and their ideals (about 35 s for the default 2 x 3 grid on a quiet machine). For the static site,
    where readers move these knobs without a kernel."""
    grid = {}
    for name, values in (("latency_ms", latency_ms), ("duration_s", duration_s)):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise TypeError(f"{name} must be a list of numbers; got {values!r}")
        values = list(values)
        if not 1 <= len(values) <= 6:
            raise ValueError(f"{name} must hold 1 to 6 values; got {len(values)}")
        grid[name] = values
    for x in grid["latency_ms"]:
        v.number("latency_ms", x, low=0, high=100)
    for x in grid["duration_s"]:
        v.number("duration_s", x, low=0.1, high=3)
    s = SWEEP_RUN
    rows = []
    for lat in grid["latency_ms"]:
        for dur in grid["duration_s"]:
            seconds = s["start_s"] + dur + s["tail_s"]
            res = await outage(Knobs(latency_ms=lat), service=s["service"], start_s=s["start_s"],
                               duration_s=dur, rate=s["rate"], seconds=seconds,
                               drain_timeout=s["drain_timeout"])
            capacity = 1000 / lat if lat else float("inf")
            backlog = s["rate"] * dur
            for name, run in res.runs.items():
                owned = name == "after"
                rows.append({
                    "design": name, "latency_ms": lat, "duration_s": dur, "rate": s["rate"],
                    "service": s["service"], "orders": len(run.load.df), "answered_ok": run.ok,
                    "share_ok": run.answered_ok,
                    "ideal_share_ok": 1.0 if owned else 1 - dur / seconds,
                    "peak_lag": run.peak_lag if owned else None,
                    "ideal_peak_lag": backlog if owned else None,
                    "drained_s": run.drained_s if owned else None,
                    "ideal_drained_s": (backlog / (capacity - s["rate"])
                                        if owned and capacity > s["rate"] else None),
                    "not_processed": (int(run.reconcile["not processed"].max())
                                      if owned else None)})
    return pd.DataFrame(rows)
