"""Lab 1, Distributed monolith: turn a synchronous call into an event.

The order service of chapter 1's "before" design charges the customer by calling the payment
service while the client waits (:func:`sync_place_order`): payment down means no orders. The
reader writes two things (see labs/ch01_monolith_lab.ipynb):

* ``place_order(shop, order)``: the order service's work for ``POST /orders``. In ONE local
  transaction of ``shop.db`` it inserts the order row and emits an ``orders`` event through
  ``shop.outbox``; it returns ``{"order_id": "order-<row id>", "status": "accepted"}`` (the
  service answers 202). It never calls payment.
* ``charge_once(db, event)``: the payment service's consumer of the ``orders`` topic, given the
  payment service's own database. It inserts one row in ``charges`` per order, however many
  times the event is delivered, and records what it has processed in the same transaction.
  One customer's orders must be charged in the order they were placed (the event's key).

``check`` runs both on a toy system (two SQLite files, an outbox relay, a Kafka-like bus with a
consumer group of two) with faults where they matter: the relay publishing a row twice, a
consumer crashing in the middle of a batch, either service dying at any statement of its work
or right after a commit, and the payment service down for a while. It never asks the solution
what it did: it reads the two databases and the topology's trace.
"""
from __future__ import annotations

import asyncio
import contextvars
import random
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from toylib.data.bus import EventBus
from toylib.data.db import Database, Workspace
from toylib.labs.faults import Crash, MortalDatabase, mortal_database  # noqa: F401 (lab notebooks use Crash)
from toylib.labs.grading import Case, Report, grade
from toylib.data.outbox import Outbox
from toylib.core.services import CallError, Service, Topology
from toylib.core.clock import now

LAB = "Lab 1 (distributed monolith)"
TOPIC = "orders"
PARTITIONS = 4
CONSUMERS = 2                  # the payment service's consumer group
DRAIN_TIMEOUT_S = 2.0
GIVE_UP_AFTER = 20             # failures of the consumer on one event: a bug, not a fault
PRICES = {"sku-0": 10.0, "sku-1": 15.0, "sku-2": 25.0}

ORDER_SCHEMA = """
CREATE TABLE orders (
    id          INTEGER PRIMARY KEY,        -- the order id is 'order-<id>'
    customer_id INTEGER NOT NULL,
    sku         TEXT NOT NULL,
    qty         INTEGER NOT NULL,
    amount      REAL NOT NULL,
    status      TEXT NOT NULL,
    created_at  REAL NOT NULL
);
"""
PAYMENT_SCHEMA = """
CREATE TABLE charges (
    seq         INTEGER PRIMARY KEY,        -- the order in which charges were made
    order_id    TEXT NOT NULL,
    customer_id INTEGER NOT NULL,
    amount      REAL NOT NULL
);
CREATE TABLE processed (
    event_id    TEXT PRIMARY KEY            -- events whose work is done
);
"""


@dataclass
class Shop:
    """What the order service's code can use: its own database, its outbox (in that same
    database), and the service itself (``await shop.service.call("payment", ...)``)."""
    db: Database
    outbox: Outbox
    service: Service


# -- the "before": what the reader replaces ------------------------------------------------------
async def sync_place_order(shop: Shop, order: dict) -> dict:
    """Chapter 1's before: the order waits for payment, and fails when payment does."""
    async with shop.db.transaction():
        await shop.db.execute("INSERT INTO orders (customer_id, sku, qty, amount, status, "
                              "created_at) VALUES (?, ?, ?, ?, 'pending', ?)",
                              (order["customer_id"], order["sku"], order["qty"],
                               order["amount"], now()))
        (oid,) = await shop.db.fetchone("SELECT last_insert_rowid()")
    await shop.service.call("payment", "POST", "/charges", json={   # the synchronous call
        "order_id": f"order-{oid}", "customer_id": order["customer_id"],
        "amount": order["amount"]})
    await shop.db.execute("UPDATE orders SET status = 'confirmed' WHERE id = ?", (oid,))
    return {"order_id": f"order-{oid}", "status": "confirmed"}


def orders_for(seed: int, n: int, customers: int) -> list[dict]:
    """The seeded orders of one case (a few customers, several orders each)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sku, qty = rng.choice(sorted(PRICES)), rng.randint(1, 3)
        out.append({"customer_id": rng.randint(1, customers), "sku": sku, "qty": qty,
                    "amount": PRICES[sku] * qty})
    return out


# -- the cases ------------------------------------------------------------------------------------
def _cases() -> list[Case]:
    c = [Case("one-order", 1, 1, {"orders": 1, "customers": 1}),
         Case("two-customers", 4, 2, {"orders": 4, "customers": 2}),
         Case("relay-publishes-twice", 5, 3, {"orders": 5, "customers": 2,
                                               "relay_crash_after": 2}),
         Case("consumer-crash-mid-batch", 6, 4, {"orders": 6, "customers": 2, "pile_up": 6,
                                                  "batch": 4, "consumer_crash_after": 2})]
    for k in (1, 2, 3, 4):
        c.append(Case(f"order-service-dies-at-statement-{k}", 6 + k, 10 + k,
                      {"orders": 3, "customers": 1, "order_dies": (1, k)}))
    c.append(Case("order-service-dies-after-commit", 11, 15,
                  {"orders": 3, "customers": 1, "order_dies": (1, "commit")}))
    for k in (1, 2, 3):
        c.append(Case(f"payment-dies-at-statement-{k}", 6 + k, 20 + k,
                      {"orders": 3, "customers": 1, "payment_dies": (2, k)}))
    c.append(Case("payment-dies-after-commit", 10, 24,
                  {"orders": 3, "customers": 1, "payment_dies": (2, "commit")}))
    c.append(Case("payment-down-for-a-while", 12, 30,
                  {"orders": 12, "customers": 3, "payment_down": (3, 9)}))
    for n, seed in ((20, 41), (40, 42)):
        rng = random.Random(seed)
        pile = rng.randint(3, 5)
        start = rng.randint(pile + 1, n // 2)
        c.append(Case(f"everything-{n}", n, seed, {
            "orders": n, "customers": 3, "pile_up": pile, "batch": 3,
            "consumer_crash_after": rng.randint(2, 4),
            "payment_down": (start, start + n // 3),
            "relay_crash_after": rng.randint(1, n // 2),
            "order_dies": (rng.randrange(n), rng.choice([1, 2, 3, 4, "commit"])),
            "payment_dies": (rng.randint(2, n // 2), rng.choice([1, 2, 3, "commit"]))}))
    return c


CASES = _cases()


# -- one run --------------------------------------------------------------------------------------
class _Run:
    """One case's system: two services, two databases, an outbox relay, a consumer group."""

    def __init__(self, solution: dict, case: Case):
        self.solution, self.case, self.p = solution, case, case.params
        self.fresh, self.first_seen = 0, set()     # events delivered for the first time
        self.failures: dict[str, int] = {}          # event id -> failures of the consumer
        self.todo: NotImplementedError | None = None
        self.last_error = ""
        self.payment_is_down = self.paused = False

    def _topology(self) -> Topology:
        order = Service("order", label="Order Service", uses=("payment",))
        payment = Service("payment", label="Payment Service")
        run = self

        @order.post("/orders")
        async def place(request):
            body, i = await request.json(), int(request.headers["X-Lab-Order"])
            dies = run.p.get("order_dies")
            doom = run.order_db.doom(
                at=dies[1] if dies and dies[0] == i and dies[1] != "commit" else None,
                after_commit=bool(dies and dies[0] == i and dies[1] == "commit"))
            try:
                async with doom:
                    answer = await run.solution["place_order"](run.shop, body)
            except Crash as e:
                return web.json_response({"error": str(e)}, status=500)
            except NotImplementedError as e:     # the starter: reported as such, at once
                run.todo = run.todo or e
                return web.json_response({"error": "not implemented"}, status=500)
            return web.json_response(answer, status=202)

        @payment.post("/charges")       # the synchronous API of the "before" design
        async def charge(request):
            b = await request.json()
            await run.payment_db.execute(
                "INSERT INTO charges (order_id, customer_id, amount) VALUES (?, ?, ?)",
                (b["order_id"], b["customer_id"], b["amount"]))
            return {"charged": b["amount"]}

        return Topology(order, payment, name="lab 1", seed=self.case.seed)

    async def _consume(self, event) -> None:
        """The payment service at work on one delivery: the reader's consumer, maybe dying."""
        if event.event_id not in self.first_seen:      # deaths strike new work only
            self.first_seen.add(event.event_id)
            self.fresh += 1
            fresh = self.fresh
        else:
            fresh = None
        dies = self.p.get("payment_dies")
        mine = bool(dies) and dies[0] == fresh
        try:
            async with self.payment_db.doom(at=dies[1] if mine and dies[1] != "commit" else None,
                                            after_commit=mine and dies[1] == "commit"):
                await self.solution["charge_once"](self.payment_db, event)
        except Crash:
            raise
        except NotImplementedError as e:
            self.todo = self.todo or e
            raise
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"
            self.failures[event.event_id] = self.failures.get(event.event_id, 0) + 1
            raise

    async def _supervise(self, group) -> None:
        """Restart crashed consumers (what a process supervisor does), unless payment is down."""
        while True:
            if not self.paused:
                while len(group.consumers) < CONSUMERS:
                    group.add_consumer()
            await asyncio.sleep(0.002)

    async def run(self) -> dict:
        p = self.p
        orders = orders_for(self.case.seed, p["orders"], p["customers"])
        # synchronous="off": no fsync for throwaway files (the crashes here are of processes,
        # not of the machine), so a busy disk does not slow the grading down.
        async with Workspace(prefix="lab1-", synchronous="off") as ws:
            self.order_db = await mortal_database(ws, "order", synchronous="off")
            self.payment_db = await mortal_database(ws, "payment", synchronous="off")
            await self.order_db.executescript(ORDER_SCHEMA)
            await self.payment_db.executescript(PAYMENT_SCHEMA)
            outbox = await Outbox(self.order_db, source="order", clock=now).setup()
            bus = EventBus(clock=now)
            bus.create_topic(TOPIC, partitions=PARTITIONS)
            topo = self._topology()
            async with topo:
                self.shop = Shop(self.order_db, outbox, topo.service("order"))
                relay = outbox.relay(bus, interval=0.002)
                group = bus.consumer_group(TOPIC, "payment", self._consume, consumers=0,
                                           batch_size=p.get("batch", 1), retry_delay=0.005)
                async with relay, group:
                    supervisor = asyncio.ensure_future(self._supervise(group))
                    try:
                        answers = await self._place_all(topo, relay, group, orders)
                        await self._drain(relay, group)
                    finally:
                        supervisor.cancel()
                        await asyncio.gather(supervisor, return_exceptions=True)
                spans = [s for s in topo.tracer.spans if s.caller == "order"]
            seen = {}
            for d in group.deliveries:
                seen[d["event_id"]] = seen.get(d["event_id"], 0) + 1
            observed = {"order deaths": self.order_db.deaths,
                        "payment deaths": self.payment_db.deaths,
                        "relay crashes": relay.stats["crashes"],
                        "consumer crashes": group.stats["crashes"],
                        "events delivered again": sum(n > 1 for n in seen.values()),
                        "deliveries": len(group.deliveries),
                        "answered while payment down": sum(a[3] for a in answers)}
            await _verify(self.order_db, self.payment_db, orders, answers, spans)
        return observed

    async def _place_all(self, topo, relay, group, orders) -> list:
        p = self.p
        down, pile = p.get("payment_down"), p.get("pile_up", 0)
        if "relay_crash_after" in p:
            relay.crash_after_publish(p["relay_crash_after"])
        self.paused = bool(pile)      # events pile up first, so a crash lands mid-batch
        answers = []
        try:
            for i in range(len(orders)):
                if pile and i == pile:
                    await self._start_consumers(relay, group)
                if down and i == down[0]:
                    await self._payment_down(topo, group)
                if down and i == down[1]:
                    await self._payment_up(topo)
                answers.append(await self._place(topo, orders, i))
            if pile >= len(orders):
                await self._start_consumers(relay, group)
            return answers
        finally:
            if self.payment_is_down:
                await self._payment_up(topo)
            self.paused = False

    async def _start_consumers(self, relay, group) -> None:
        while await relay.outbox.pending():
            await asyncio.sleep(0.002)
        for _ in range(CONSUMERS):
            member = group.add_consumer()
            if "consumer_crash_after" in self.p:
                await group.crash(member, after_events=self.p["consumer_crash_after"])
        self.paused = False

    async def _payment_down(self, topo, group) -> None:
        self.payment_is_down = self.paused = True
        await topo.service("payment").down()
        for consumer in list(group.consumers):
            await group.crash(consumer)

    async def _payment_up(self, topo) -> None:
        await topo.service("payment").up()
        self.payment_is_down = self.paused = False

    async def _place(self, topo, orders, i) -> tuple:
        if self.todo:
            raise self.todo
        try:
            reply = await topo.call("order", "POST", "/orders", json=orders[i], raw=True,
                                    headers={"X-Lab-Order": str(i)}, timeout=3)
        except CallError as e:
            raise AssertionError(f"order {i} got no answer from the order service: {e}") \
                from None
        try:
            body = reply.json()
        except ValueError:
            body = {"error": reply.body.decode(errors="replace")[:200]}
        if not isinstance(body, dict):
            body = {"answer": body}
        if self.todo:
            raise self.todo
        return (i, reply.status, body, self.payment_is_down)

    async def _drain(self, relay, group) -> None:
        try:
            await relay.wait_drained(DRAIN_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError("the outbox relay did not publish every row within "
                                 f"{DRAIN_TIMEOUT_S:.0f} s") from None
        except Exception as e:
            raise AssertionError(f"the outbox relay could not publish an event: "
                                 f"{type(e).__name__}: {e} (publish to the {TOPIC!r} topic)") \
                from None
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while group.lag() > 0:
            if self.todo:
                raise self.todo
            stuck = [e for e, n in self.failures.items() if n >= GIVE_UP_AFTER]
            assert not stuck and asyncio.get_running_loop().time() < deadline, (
                f"the payment consumer did not get through the {TOPIC!r} topic"
                + (f": it failed {GIVE_UP_AFTER} times on event {stuck[0]}" if stuck
                   else f" within {DRAIN_TIMEOUT_S:.0f} s")
                + (f"; its last error: {self.last_error}" if self.last_error else ""))
            await asyncio.sleep(0.005)


async def _verify(order_db, payment_db, orders, answers, spans) -> None:
    """Everything is read back from the databases and the trace, never from the solution."""
    sync = [s for s in spans if s.callee == "payment"]
    assert not sync, (f"the order service called payment while the client waited "
                      f"({sync[0].method} {sync[0].path}): publish an event instead")
    rows = await order_db.fetchall("SELECT id, customer_id, amount FROM orders ORDER BY id")
    stored = {f"order-{i}": (c, a) for i, c, a in rows}
    for i, status, body, payment_down in answers:
        if status == 500 and body and "died" in str(body.get("error", "")):
            continue                        # the injected death: the client saw an error
        when = " while payment was down" if payment_down else ""
        assert status == 202, (
            f"order {i} ({orders[i]}) was answered {status}{when}, not 202: "
            f"{(body or {}).get('error', body)}"
            + (". The order service must accept orders without payment" if payment_down
               else ""))
        oid = (body or {}).get("order_id")
        assert oid in stored, (f"order {i} was answered 202 with order_id {oid!r}, but the "
                               f"orders table has no such order (ids are 'order-<row id>'); "
                               f"it holds {sorted(stored)[:5]}")
    charges = await payment_db.fetchall(
        "SELECT seq, order_id, customer_id, amount FROM charges ORDER BY seq")
    times: dict[str, int] = {}
    for _, oid, cid, amount in charges:
        times[oid] = times.get(oid, 0) + 1
        assert oid in stored, (f"payment charged {oid}, which is not in the orders table "
                               f"(an event was published for an order that was rolled back)")
        assert (cid, amount) == stored[oid], (
            f"payment charged {oid} {amount} to customer {cid}; the order says "
            f"{stored[oid][1]} to customer {stored[oid][0]}")
    for oid in stored:
        n = times.get(oid, 0)
        assert n == 1, (f"{oid} is in the orders table but was charged {n} times "
                        + ("(lost: its event was never published or never processed)" if n == 0
                           else "(a redelivered event was processed again)"))
    placed: dict[int, list] = {}
    for oid, (cid, _) in stored.items():
        placed.setdefault(cid, []).append(oid)
    charged: dict[int, list] = {}
    for _, oid, cid, _ in charges:
        charged.setdefault(cid, []).append(oid)
    for cid, seq in placed.items():
        assert charged.get(cid) == seq, (
            f"customer {cid}'s orders were charged in the order {charged.get(cid)}, but placed "
            f"in the order {seq}: one customer's events must be processed in order (the bus "
            f"keeps order only within a partition, chosen by the event's key)")


async def run_case(solution: dict, case: Case) -> dict:
    """Run one case; raise AssertionError if the solution broke an invariant, else return
    what the faults did (deaths, crashes, redeliveries): the tests check that every case
    exercises what its name says."""
    return await _Run(solution, case).run()


async def _run(solution: dict, case: Case) -> None:
    await run_case(solution, case)


async def check(*, place_order, charge_once, only: str | None = None,
                stop_after: int | None = None) -> Report:
    """Grade a solution: ``await check(place_order=..., charge_once=...)``.

    ``only`` replays one case by name; ``stop_after=1`` stops at the smallest failing case.
    """
    for name, fn in (("place_order", place_order), ("charge_once", charge_once)):
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"{name} must be an async function (async def); got {fn!r}")
    solution = {"place_order": place_order, "charge_once": charge_once}
    return await grade(LAB, CASES, _run, solution, only=only, stop_after=stop_after)
