"""The two designs: five services on one SQLite file (before), and a file each (after).

* **before** (:class:`SharedDatabase`): the order, inventory, notification, billing and
  analytics services each open their own connection to **one** SQLite file. They integrate
  through the tables: billing reads the order team's ``orders`` table to invoice, notification
  reads it to address an e-mail, analytics aggregates it.
* **after** (:class:`DatabasePerService`): each service owns its own file. The order service
  writes an event to its outbox in the same transaction as the order; a relay publishes it on
  the bus; billing, notification and analytics keep **their own copy** of the few order fields
  they need (an idempotent consumer each). An order is placed by a saga
  (:meth:`DatabasePerService.order_saga`) with compensation in reverse order when payment fails.

Both follow :class:`toylib.chapters.design.Design`: built from :class:`Knobs`, run with
``async with`` (a temporary workspace of SQLite files, the five services, and per service the
relay and consumers beside them), drawn with ``.diagram()``.
"""
from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from toylib.chapters.ch03_shared_db.knobs import (CHAPTER, LABELS, SERVICES, TOPIC, Knobs,
                                                  knobs_or_default)
from toylib.chapters.ch03_shared_db.schema import COPIES, SCHEMA, history
from toylib.chapters.ch03_shared_db.services import BUILDERS, Pool, notify
from toylib.chapters.design import Design, build
from toylib.core import validate as v
from toylib.core.clock import now
from toylib.core.services import CallError, Node, Store, Topology
from toylib.data.bus import EventBus
from toylib.data.db import Database, Workspace
from toylib.data.outbox import PROCESSED_SCHEMA, IdempotentConsumer, Outbox
from toylib.data.saga import SagaDefinition, SagaOrchestrator, Step

CALL_TIMEOUT_S = 30.0     # a guard only: every call here ends in milliseconds when all is well


class ShopDesign(Design):
    """What both designs share: the five services, their connection pools, the seeded data.

    Entering opens a temporary workspace, creates the schema, seeds stock (and ``history``
    past orders), starts the five services; leaving stops everything and deletes the files,
    also on error or cancellation.
    """
    chapter = CHAPTER
    databases = True
    title = ""
    file_of: dict[str, str] = {}

    def __init__(self, knobs: Knobs | None = None):
        self.pools: dict[str, Pool] = {}
        self.order_schema = 1          # 2 once the order team has shipped its migration
        super().__init__(knobs_or_default(knobs))

    def build(self) -> Topology:
        return Topology(*(make(self) for make in BUILDERS), *self.nodes(),
                        name=self.title, seed=self.knobs.seed)

    def workspace(self) -> Workspace:
        # synchronous="off": no fsync for throwaway files, so a busy disk does not time us
        return Workspace(prefix=f"{CHAPTER}-{self.name}-", busy_timeout=self.knobs.busy_timeout,
                         wal=self.knobs.wal, synchronous="off")

    # -- what the services call ---------------------------------------------------------------
    def pool(self, service: str) -> Pool:
        if service not in self.pools:
            v.one_of("service", service, SERVICES)
            raise RuntimeError(f"the {self.name} design is not running: use it inside "
                               f"`async with`")
        return self.pools[service]

    def primary(self, service: str) -> Database:
        """The service's first connection (background work and checks use it)."""
        return self.pool(v.one_of("service", service, SERVICES)).dbs[0]

    async def hold(self) -> None:
        if self.knobs.hold_ms:
            await asyncio.sleep(self.knobs.hold_ms / 1000)

    def total_column(self, total: float) -> tuple[str, float]:
        if self.order_schema == 1:
            return "total", total
        return "total_cents", int(round(total * 100))

    async def publish(self, db: Database, event: dict) -> None:
        """Tell the other services (the per-service design); the shared one has no need."""

    async def sync(self, timeout: float = 10.0) -> None:
        """Wait until every event is applied everywhere (nothing to wait for when shared)."""
        v.number("timeout", timeout, low=0.01, high=600)

    def uses(self, service: str) -> tuple[str, ...]:
        raise NotImplementedError

    def nodes(self) -> list[Node]:
        raise NotImplementedError

    # -- calling the services -----------------------------------------------------------------
    async def call(self, target: str, method: str, path: str, **kwargs):
        """Call a service; raises CallError on an HTTP error (what a saga step wants)."""
        self.require_running()
        return await self.topology.call(target, method, path,
                                        **{"timeout": CALL_TIMEOUT_S, **kwargs})

    async def request(self, service: str, method: str, path: str, json=None) -> dict:
        """Call a service and describe the outcome, with the database's own error text."""
        self.require_running()
        try:
            r = await self.topology.call(service, method, path, json=json, raw=True,
                                         timeout=CALL_TIMEOUT_S)
        except CallError as e:
            return {"ok": False, "status": e.kind, "error": str(e)}
        error = "" if r.status < 400 else (r.json() or {}).get("error", "")
        return {"ok": r.status < 400, "status": r.status, "error": error}

    # -- the lifecycle hooks ------------------------------------------------------------------
    async def open_databases(self) -> None:
        # One connection per service, shared by all its workers: SQLite's own advice for a
        # writer, and it keeps a service's writes in one in-process queue. Each analyst gets
        # a connection of its own, so that reports (reads) run side by side.
        for svc in SERVICES:
            n = self.knobs.analysts if svc == "analytics" else 1
            self.pools[svc] = Pool([await self.ws.database(self.file_of[svc],
                                                           owner=f"{svc}-{k}")
                                    for k in range(n)])
        await self.create_schema()
        await self.seed_data()

    async def create_schema(self) -> None:
        raise NotImplementedError

    async def seed_data(self) -> None:
        inv = self.primary("inventory")
        await inv.executemany("INSERT INTO stock VALUES (?, ?, 0)",
                              [(s, self.knobs.stock) for s in self.knobs.sku_names])
        if self.knobs.history:
            async with self.primary("orders").transaction() as db:
                await db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     history(self.knobs))

    def forget(self) -> None:
        self.pools.clear()
        self.order_schema = 1

    def files(self) -> list[str]:
        return self.ws.files() if self.ws is not None else []

    def sharing(self) -> dict[str, list[str]]:
        """Which teams' services open each database file (read from the open connections)."""
        self.require_running()
        teams: dict[str, set] = {}
        for db in self.ws.databases:
            teams.setdefault(db.path.name, set()).add(db.owner.split("-")[0])
        return {f: sorted(t) for f, t in sorted(teams.items())}


class SharedDatabase(ShopDesign):
    """Before: one SQLite file, five services, each with its own connection(s) to it."""
    name = "before"
    title = "shared database"
    file_of = {svc: "shared" for svc in SERVICES}

    def uses(self, service: str) -> tuple[str, ...]:
        return ("shared_db",)

    def nodes(self) -> list[Node]:
        return [Store("shared_db", label="Shared SQLite file: orders, stock, reservations, "
                                         "charges, invoices, notifications, rollups")]

    async def create_schema(self) -> None:
        await self.primary("orders").executescript("".join(SCHEMA.values()))


class DatabasePerService(ShopDesign):
    """After: a file per service; order events reach the others through an outbox and a bus."""
    name = "after"
    title = "database per service"
    file_of = {svc: svc for svc in SERVICES}
    CONSUMERS = ("billing", "notification", "analytics")

    def __init__(self, knobs: Knobs | None = None):
        self.bus: EventBus | None = None
        self.relay = None
        self.groups: dict = {}
        self.consumers: dict[str, IdempotentConsumer] = {}
        self.saga_db: Database | None = None
        super().__init__(knobs)

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

    async def create_schema(self) -> None:
        for svc in SERVICES:
            script = SCHEMA[svc] + COPIES.get(svc, "")
            script += PROCESSED_SCHEMA if svc in self.CONSUMERS else ""
            await self.primary(svc).executescript(script)
        await Outbox(self.primary("orders"), source="orders").setup()

    async def seed_data(self) -> None:
        await super().seed_data()
        if self.knobs.history:     # analytics' copy starts from the same past (a snapshot)
            rows = [(r[0], r[1], r[5], r[6], None, None) for r in history(self.knobs)]
            async with self.primary("analytics").transaction() as db:
                await db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", rows)

    async def publish(self, db: Database, event: dict) -> None:
        """The transactional outbox: the event commits with the order, or neither does."""
        await Outbox(db, source="orders").emit(TOPIC, event["order_id"], event)

    async def start_beside(self, stack: AsyncExitStack) -> None:
        self.bus = await self.open_bus(stack)
        self.bus.create_topic(TOPIC, partitions=4)
        self.saga_db = await self.ws.database("saga", owner="saga")
        self.relay = await stack.enter_async_context(
            Outbox(self.primary("orders"), source="orders").relay(
                self.bus, interval=self.knobs.relay_interval_ms / 1000))
        work = {"billing": copy_for_billing, "notification": notification_reacts,
                "analytics": analytics_projection(self)}
        for svc in self.CONSUMERS:
            consumer = IdempotentConsumer(self.primary(svc), svc, work[svc], clock=now)
            self.consumers[svc] = consumer
            self.groups[svc] = await stack.enter_async_context(
                self.bus.consumer_group(TOPIC, svc, consumer, retry_delay=0.01))

    def forget(self) -> None:
        super().forget()
        self.bus, self.relay, self.saga_db = None, None, None
        self.groups, self.consumers = {}, {}

    async def sync(self, timeout: float = 10.0) -> None:
        v.number("timeout", timeout, low=0.01, high=600)
        self.require_running()
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
            raise RuntimeError(f"the {self.name} design is not running: use it inside "
                               f"`async with`")
        # Steps after the pivot are retried: send_notification may arrive before the
        # notification service has its copy of the order (404), a moment later it has it.
        # Enough attempts for a busy machine, where the copy can take seconds (bounded: ~20 s).
        kw = {"max_attempts": 40, "base_delay": 0.01, "max_delay": 0.5, **kw}
        return SagaOrchestrator(self.saga_db, self.order_saga(), seed=self.knobs.seed, **kw)


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


def analytics_projection(d: ShopDesign):
    """Analytics' read model: one row per order, with when it was committed and became visible."""
    async def work(db: Database, event) -> None:
        if d.knobs.analytics_delay_ms:           # the consumer's own work: its speed
            await asyncio.sleep(d.knobs.analytics_delay_ms / 1000)
        e = event.value
        if e["type"] == "OrderPlaced":
            await db.execute("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?)",
                             (e["order_id"], e["customer_id"], e["total"], e["status"],
                              e["committed_at"], now()))
        else:
            await db.execute("UPDATE orders SET status = ? WHERE order_id = ?",
                             (e["status"], e["order_id"]))
    return work


DESIGNS = {"before": SharedDatabase, "after": DatabasePerService}


def design(name: str, knobs: Knobs | None = None) -> ShopDesign:
    """``design("before")`` (one shared file) or ``design("after")`` (a file per service)."""
    return build(DESIGNS, name, knobs_or_default(knobs))


def require_running(d, kind=ShopDesign) -> None:
    """``d`` must be a running design of this chapter (of ``kind``), else a clear error."""
    if not isinstance(d, kind):
        raise TypeError(f"design must be a running {kind.__name__} of {CHAPTER}; got {d!r}")
    d.require_running()
