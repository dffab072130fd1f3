"""Chapter 1's two designs as running systems: the services, the consumers, and the lifecycle.

* **Before** (:class:`DistributedMonolith`): one shared SQLite file, four synchronous calls.
* **After** (:class:`OwnedData`): a database per service, an outbox, consumers on a bus.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from contextlib import AsyncExitStack

import pandas as pd
from aiohttp import web

from toylib.chapters.ch01_monolith.knobs import (CHAPTER, CUSTOMER_COLUMNS, DEPENDENCIES, OWNS,
                                                 SERVICES, SHARED_TABLES, STOCK, TABLES,
                                                 TIER_DISCOUNT, Knobs, Migration, as_knobs,
                                                 customer_rows, customer_sql, order_for,
                                                 price_rows, price_total)
from toylib.chapters.design import Design, build
from toylib.core import validate as v
from toylib.core.clock import now
from toylib.core.faults import Error, Latency as Delay
from toylib.core.services import CallError, Node, Service, Store, Topology
from toylib.data.bus import EventBus
from toylib.data.db import Database
from toylib.data.outbox import IdempotentConsumer, Outbox


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
class ShopDesign(Design):
    """What both designs share: knobs, a workspace of SQLite files, a topology, a scope.

    ``async with`` opens the databases, starts the services (and, after, the relays and
    consumers); leaving it stops everything and deletes the databases, even on error.
    """
    chapter = CHAPTER
    databases = True

    def __init__(self, knobs: Knobs | None = None):
        self.k = as_knobs(knobs)
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


class DistributedMonolith(ShopDesign):
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


class OwnedData(ShopDesign):
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
        self.bus = await self.open_bus(stack)
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


def design(name: str, knobs: Knobs | None = None) -> ShopDesign:
    """The design ``name`` ("before" or "after") built from ``knobs`` (not started yet)."""
    return build(DESIGNS, name, as_knobs(knobs))


# -- the analytic figures -------------------------------------------------------------------------
def ideal(k: Knobs) -> dict:
    """What the injected delays and failure probabilities alone would give."""
    k = as_knobs(k, "k")
    d, p, hops = k.latency_ms, k.p, len(SERVICES)
    return {"latency_before_ms": hops * d,          # the order's own work, then 4 calls in turn
            "accept_after_ms": d,                   # the order's own work only
            "completion_after_ms": 2 * d,           # then the 4 consumers, in parallel
            "success_before": (1 - p) ** hops,      # every service must succeed
            "accept_after": 1 - p,                  # only the order service must
            "processed_after": 1.0,                 # consumers retry until they succeed
            # failed orders before / after: 1 - (1-p)^5 over p, about 5 for small p
            "failure_factor": (1 - (1 - p) ** hops) / p if p else float(hops)}
