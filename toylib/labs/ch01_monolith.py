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

How :func:`check` grades, like Jepsen's and Maelstrom's checkers, against durable state and
history rather than the solution's own account:

* **Real restarts.** Each service runs as :class:`toylib.labs.faults.Process` objects: the order
  service is one process, each of payment's two consumers another. A death ends the process:
  its connection closes (the open transaction rolls back) and its memory goes; the restart is
  a fresh boot of the solution's code (module-level data, closures and instances copied from
  a snapshot taken before the check started) on a fresh connection, recovering from the
  database files alone. The outbox relay and the bus are processes of their own.
* **Faults at every boundary.** A fault-free run first measures what the solution does (its
  statements and commits per order and per event); the cases then kill the order service and
  a payment consumer at *each* of those statements and after *each* commit, the relay between
  publishing and marking a row, a consumer between its work and its offset commit, and take
  payment down for a while. Each planned fault must fire: one that did not is a grader error
  (:class:`toylib.labs.faults.GraderError`), never a pass.
* **Concurrency.** Some cases send orders in concurrent waves while two consumers work on
  different partitions at once, each on its own connection.
* **Per-request cross-checks.** Every client's answer is checked against the databases: the
  id it was told is a row holding *its* order, no two clients were told the same id, every
  row is some client's order, every order charged exactly once with its amount, one
  customer's orders in order. A failure shows the history around the first divergence, what
  was expected beside what the databases hold, and the line that replays it.
* **Generated cases.** Hypothesis generates further cases (orders, customers, concurrency,
  faults) from a printed seed and shrinks a failing one to a smallest case before reporting.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from aiohttp import web

from toylib.core import validate as v
from toylib.core.clock import now
from toylib.core.services import CallError, Service, Topology
from toylib.data.bus import EventBus
from toylib.data.db import Database, Workspace
from toylib.data.outbox import Outbox
from toylib.labs.faults import Crash, GraderError, Process, ProgramImage
from toylib.labs.faults import MortalDatabase, mortal_database  # noqa: F401 (lab 4 imports them here too)
from toylib.labs.grading import Case, CaseFailed, Report, grade, search

LAB = "Lab 1 (distributed monolith)"
TOPIC = "orders"
PARTITIONS = 4
CONSUMERS = 2                  # the payment service's consumer group: two processes
DRAIN_TIMEOUT_S = 5.0          # a correct solution drains in well under a second
CALL_TIMEOUT_S = 5.0           # one order's answer
GIVE_UP_AFTER = 20             # failures of the consumer on one event: a bug, not a fault
CASE_TIMEOUT_S = 25.0          # the generated search runs as one case
MAX_POINTS = 12                # death points per function, spread over its statements
GENERATED_SEED = 20260601
GENERATED_EXAMPLES = 10
GENERATED_BUDGET_S = 15.0      # search and shrink (a safety bound: about 3 s when quiet)
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


def make_order(customer_id: int, sku: str, qty: int) -> dict:
    v.number("customer_id", customer_id, low=1, high=1000, integer=True)
    v.one_of("sku", sku, PRICES)
    v.number("qty", qty, low=1, high=100, integer=True)
    return {"customer_id": customer_id, "sku": sku, "qty": qty, "amount": PRICES[sku] * qty}


def orders_for(seed: int, n: int, customers: int) -> list[dict]:
    """The seeded orders of one case (a few customers, several orders each)."""
    v.number("seed", seed, integer=True)
    v.number("n", n, low=1, high=1000, integer=True)
    v.number("customers", customers, low=1, high=100, integer=True)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sku, qty = rng.choice(sorted(PRICES)), rng.randint(1, 3)
        out.append(make_order(rng.randint(1, customers), sku, qty))
    return out


# -- what the solution does, measured: where its faults go ----------------------------------------
@dataclass(frozen=True)
class Profile:
    """Statements and commits of one fault-free order (``place_order``) and one first
    delivery (``charge_once``): every one of them is a point where a case kills the process."""
    order_statements: int = 4
    order_commits: int = 1
    payment_statements: int = 3
    payment_commits: int = 1

    def __post_init__(self):
        for name in ("order_statements", "order_commits", "payment_statements",
                     "payment_commits"):
            v.number(name, getattr(self, name), low=0, high=10_000, integer=True)

    def points(self, who: str) -> list[tuple]:
        v.one_of("who", who, ("order", "payment"))
        s = getattr(self, f"{who}_statements")
        c = getattr(self, f"{who}_commits")
        stmts = list(range(1, s + 1))
        if len(stmts) > MAX_POINTS:          # spread, keeping the last ones (the riskiest)
            step = len(stmts) / MAX_POINTS
            stmts = sorted({stmts[min(len(stmts) - 1, int(i * step))]
                            for i in range(MAX_POINTS - 3)} | set(stmts[-3:]))
        return [("statement", k) for k in stmts] + [("commit", k)
                                                    for k in range(1, min(c, 4) + 1)]


DEFAULT_PROFILE = Profile()       # the reference solution's


def point_name(point: tuple) -> str:
    kind, k = point
    return f"at-statement-{k}" if kind == "statement" else f"after-commit-{k}"


def _doom_kwargs(point) -> dict:
    if not point:
        return {}
    kind, k = point
    return {"at": k} if kind == "statement" else {"after_commit": k}


# -- the cases ------------------------------------------------------------------------------------
def cases_for(profile: Profile = DEFAULT_PROFILE, seed: int = GENERATED_SEED) -> list[Case]:
    """Every case for a solution with this profile, smallest first; the last one generated."""
    if not isinstance(profile, Profile):
        raise TypeError(f"profile must be a Profile; got {profile!r}")
    twice = [make_order(1, "sku-1", 2), make_order(2, "sku-0", 1), make_order(1, "sku-1", 2),
             make_order(1, "sku-2", 1)]
    c = [Case("one-order", 1, 1, {"orders": 1, "customers": 1}),
         Case("two-customers", 4, 2, {"orders": 4, "customers": 2}),
         Case("same-order-twice", 4, 3, {"orders": 4, "order_list": twice}),
         Case("relay-publishes-twice", 5, 3, {"orders": 5, "customers": 2,
                                               "relay_crash_after": 2}),
         Case("consumer-crash-mid-batch", 6, 4, {"orders": 6, "customers": 2, "pile_up": 6,
                                                  "batch": 4, "consumer_crash_after": 2}),
         Case("concurrent-orders", 12, 5, {"orders": 12, "customers": 3, "concurrency": 6})]
    order_points, payment_points = profile.points("order"), profile.points("payment")
    for j, pt in enumerate(order_points):
        c.append(Case(f"order-service-dies-{point_name(pt)}", 7 + j, 10 + j,
                      {"orders": 3, "customers": 1, "order_dies": (1, pt)}))
    c.append(Case("order-service-dies-with-orders-in-flight", 8, 30,
                  {"orders": 8, "customers": 2, "concurrency": 4,
                   "order_dies": (5, order_points[-1])}))
    for j, pt in enumerate(payment_points):
        c.append(Case(f"payment-dies-{point_name(pt)}", 7 + j, 40 + j,
                      {"orders": 3, "customers": 1, "payment_dies": (2, pt)}))
    c.append(Case("payment-down-for-a-while", 12, 60,
                  {"orders": 12, "customers": 3, "payment_down": (3, 9)}))
    for n, s in ((20, 41), (40, 42)):
        rng = random.Random(s)
        pile = rng.randint(3, 5)
        start = rng.randint(pile + 1, n // 2)
        c.append(Case(f"everything-{n}", n, s, {
            "orders": n, "customers": 3, "pile_up": pile, "batch": 3,
            "concurrency": 1 if n == 20 else 3,
            "consumer_crash_after": rng.randint(2, 4),
            "payment_down": (start, start + n // 3),
            "relay_crash_after": rng.randint(1, n // 2),
            "order_dies": (rng.randrange(n), rng.choice(order_points)),
            "payment_dies": (rng.randint(2, n // 2), rng.choice(payment_points))}))
    c.append(Case("generated", 1000, seed, {"examples": GENERATED_EXAMPLES, "seed": seed}))
    return c


CASES = cases_for()


# -- one run --------------------------------------------------------------------------------------
@dataclass
class Request:
    """One client's order and what it was told: the history the databases are checked against."""
    i: int
    order: dict
    status: int = 0
    body: dict = field(default_factory=dict)
    payment_down: bool = False
    died: bool = False                 # told the order service died (planned, or in flight)

    def told(self) -> str:
        if self.died:
            return f"{self.status}: the order service died"
        return f"{self.status} {self.body.get('order_id', self.body)}"


def _fmt(order: dict) -> str:
    return (f"customer {order['customer_id']}, {order['sku']} x {order['qty']}, "
            f"{order['amount']:g}")


class _Run:
    """One case's system: two services (as processes), two database files, an outbox relay, a
    consumer group of two consumer processes, and the history of every request."""

    def __init__(self, images: dict, case: Case, *, generated: bool = False):
        self.images, self.case, self.p = images, case, case.params
        self.generated = generated
        self.fresh, self.first_seen = 0, set()      # events delivered for the first time
        self.failures: dict[str, int] = {}           # event id -> failures of the consumer
        self.todo: NotImplementedError | None = None
        self.last_error = ""
        self.payment_is_down = self.paused = False
        self.plans: dict = {}                        # ("order", i) / ("payment", n) -> Plan
        self.procs: dict[str, Process] = {}          # consumer id -> its process
        self.dead_procs: list[Process] = []
        self.restarts = {"order": 0, "payment": 0}
        self._bg: set[asyncio.Task] = set()
        self._restart_lock = asyncio.Lock()

    # -- the order service ---------------------------------------------------------------------
    def _topology(self) -> Topology:
        order = Service("order", label="Order Service", uses=("payment",))
        payment = Service("payment", label="Payment Service")
        run = self

        @order.post("/orders")
        async def place(request):
            body, i = await request.json(), int(request.headers["X-Lab-Order"])
            proc, shop = run.order, run.shop
            gen = proc.generation
            dies = run.p.get("order_dies")
            point = dies[1] if dies and dies[0] == i else None
            try:
                async with proc.db.doom(**_doom_kwargs(point)) as plan:
                    run.plans["order", i] = plan
                    answer = await proc.code(shop, body)
            except NotImplementedError as e:     # the starter: reported as such, at once
                run.todo = run.todo or e
                return web.json_response({"error": "not implemented"}, status=500)
            except Exception as e:
                if not isinstance(e, Crash) and proc.generation == gen and proc.alive:
                    raise                        # the solution's own error: a plain 500
                await run._restart_order(gen)
                return web.json_response({"error": "the order service died", "died": True},
                                         status=500)
            return web.json_response(answer, status=202)

        @payment.post("/charges")       # the synchronous API of the "before" design
        async def charge(request):
            b = await request.json()
            await run.payment_api.execute(
                "INSERT INTO charges (order_id, customer_id, amount) VALUES (?, ?, ?)",
                (b["order_id"], b["customer_id"], b["amount"]))
            return {"charged": b["amount"]}

        return Topology(order, payment, name="lab 1", seed=self.case.seed)

    async def _start_order(self) -> None:
        await self.order.start()
        self.shop = Shop(self.order.db, Outbox(self.order.db, source="order", clock=now,
                                               bus=self.bus), self.topo.service("order"))

    async def _restart_order(self, gen: int) -> None:
        """The order service's process died: a new one starts from its database file."""
        async with self._restart_lock:
            if self.order.generation == gen:
                await self.order.kill()
                self.restarts["order"] += 1
                await self._start_order()

    # -- the payment consumers -----------------------------------------------------------------
    async def _consume(self, event) -> None:
        """One delivery to one consumer process: the reader's consumer, maybe dying."""
        member = asyncio.current_task().get_name()
        proc = self.procs.get(member)
        if proc is None:                        # a new consumer: a new process
            proc = self.procs[member] = await Process(
                self.ws, "payment", self.images["charge_once"], synchronous="off").start()
        if event.event_id not in self.first_seen:      # deaths strike new work only
            self.first_seen.add(event.event_id)
            self.fresh += 1
            fresh = self.fresh
        else:
            fresh = None
        dies = self.p.get("payment_dies")
        point = dies[1] if dies and fresh is not None and dies[0] == fresh else None
        try:
            async with proc.db.doom(**_doom_kwargs(point)) as plan:
                if fresh is not None:
                    self.plans["payment", fresh] = plan
                await proc.code(proc.db, event)
        except Crash:
            await self._kill_consumer(member)
            raise
        except NotImplementedError as e:
            self.todo = self.todo or e
            raise
        except Exception as e:
            if not proc.alive:                   # killed meanwhile (payment went down)
                raise
            self.last_error = f"{type(e).__name__}: {e}"
            self.failures[event.event_id] = self.failures.get(event.event_id, 0) + 1
            raise

    async def _kill_consumer(self, member: str) -> None:
        proc = self.procs.pop(member, None)
        if proc is not None:
            await proc.kill()
            self.dead_procs.append(proc)
            self.restarts["payment"] += 1

        async def crash():
            try:
                await self.group.crash(member)
            except ValueError:
                pass                            # already gone
        task = asyncio.ensure_future(crash())
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _supervise(self) -> None:
        """End the processes of consumers that died; start new ones (a process supervisor),
        unless payment is down."""
        group = self.group
        while True:
            for member in [m for m in self.procs if m not in group.members]:
                await self._kill_consumer(member)
            if not self.paused:
                while len(group.consumers) < CONSUMERS:
                    group.add_consumer()
            await asyncio.sleep(0.002)

    # -- the case ------------------------------------------------------------------------------
    async def run(self) -> dict:
        p = self.p
        orders = p.get("order_list") or orders_for(self.case.seed, p["orders"], p["customers"])
        self.history = [Request(i, o) for i, o in enumerate(orders)]
        # synchronous="off": no fsync for throwaway files (the crashes here are of processes,
        # not of the machine), so a busy disk does not slow the grading down.
        async with Workspace(prefix="lab1-", synchronous="off", wal=True) as ws:
            self.ws = ws
            setup = await ws.database("order", owner="setup")
            await setup.executescript(ORDER_SCHEMA)
            await Outbox(setup, source="order").setup()
            self.payment_api = await ws.database("payment", owner="payment")
            await self.payment_api.executescript(PAYMENT_SCHEMA)
            self.bus = EventBus(clock=now)
            self.bus.create_topic(TOPIC, partitions=PARTITIONS)
            relay_db = await ws.database("order", owner="relay")   # the relay: its own process
            relay_outbox = Outbox(relay_db, source="order", clock=now)
            self.order = Process(ws, "order", self.images["place_order"], synchronous="off")
            self.topo = topo = self._topology()
            async with topo:
                await self._start_order()
                relay = relay_outbox.relay(self.bus, interval=0.002)
                self.group = group = self.bus.consumer_group(
                    TOPIC, "payment", self._consume, consumers=0,
                    batch_size=p.get("batch", 1), retry_delay=0.005)
                async with relay, group:
                    supervisor = asyncio.ensure_future(self._supervise())
                    try:
                        await self._place_all(relay)
                        await self._drain(relay)
                    finally:
                        supervisor.cancel()
                        await asyncio.gather(supervisor, *self._bg, return_exceptions=True)
                spans = [s for s in topo.tracer.spans if s.caller == "order"]
            for proc in [self.order, *self.procs.values()]:
                await proc.kill()
            seen = {}
            for d in group.deliveries:
                seen[d["event_id"]] = seen.get(d["event_id"], 0) + 1
            observed = {"order deaths": sum(pl.fired != "" for (who, _), pl in self.plans.items()
                                            if who == "order"),
                        "payment deaths": sum(pl.fired != "" for (who, _), pl in
                                              self.plans.items() if who == "payment"),
                        "order restarts": self.restarts["order"],
                        "consumer processes": len(self.dead_procs),
                        "relay crashes": relay.stats["crashes"],
                        "consumer crashes": group.stats["crashes"],
                        "events delivered again": sum(n > 1 for n in seen.values()),
                        "deliveries": len(group.deliveries),
                        "answered while payment down": sum(r.payment_down
                                                           for r in self.history)}
            reader = {name: await ws.database(name, owner="grader")
                      for name in ("order", "payment")}
            await _verify(reader["order"], reader["payment"], self.history, spans)
        if not self.generated:
            self._check_fired(observed)
        return observed

    def _check_fired(self, observed: dict) -> None:
        """Every planned fault fired, or the case proves nothing: a grader error."""
        p, missed = self.p, []
        for who in ("order", "payment"):
            dies = p.get(f"{who}_dies")
            if dies:
                plan = self.plans.get((who, dies[0]))
                if plan is None or not plan.fired:
                    did = (f"it ran {plan.statements} statement(s) and {plan.commits} commit(s)"
                           if plan is not None else "that work never ran")
                    missed.append(f"{who} death {point_name(dies[1])} on "
                                  f"{'request' if who == 'order' else 'first delivery'} "
                                  f"{dies[0]} ({did})")
        if p.get("relay_crash_after") and not observed["relay crashes"]:
            missed.append(f"relay crash after publish {p['relay_crash_after']}")
        if p.get("consumer_crash_after") and not observed["consumer crashes"]:
            missed.append(f"consumer crash after {p['consumer_crash_after']} events")
        if p.get("payment_down") and not observed["answered while payment down"]:
            missed.append("payment down")
        if missed:
            raise GraderError("grader error, not a pass: the planned fault(s) did not fire: "
                              + "; ".join(missed))

    async def _place_all(self, relay) -> None:
        p = self.p
        down, pile = p.get("payment_down"), p.get("pile_up", 0)
        wave = max(1, p.get("concurrency", 1))
        if "relay_crash_after" in p:
            relay.crash_after_publish(p["relay_crash_after"])
        pending = bool(pile)           # events pile up first, so a crash lands mid-batch
        self.paused = pending
        n = len(self.history)
        try:
            for start in range(0, n, wave):
                idx = range(start, min(n, start + wave))
                if pending and idx[-1] >= pile:
                    pending = False
                    if not self.payment_is_down:
                        await self._start_consumers(relay)
                if down and down[0] in idx and not self.payment_is_down:
                    await self._payment_down()
                if down and down[1] in idx and self.payment_is_down:
                    await self._payment_up()
                await asyncio.gather(*(self._place(i) for i in idx))
            if pending and not self.payment_is_down:
                await self._start_consumers(relay)
        finally:
            if self.payment_is_down:
                await self._payment_up()
            self.paused = False

    async def _start_consumers(self, relay) -> None:
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while await relay.outbox.pending() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.002)
        for _ in range(CONSUMERS - len(self.group.consumers)):
            member = self.group.add_consumer()
            if "consumer_crash_after" in self.p:
                await self.group.crash(member, after_events=self.p["consumer_crash_after"])
        self.paused = False

    async def _payment_down(self) -> None:
        self.payment_is_down = self.paused = True
        await self.topo.service("payment").down()
        for consumer in list(self.group.consumers):
            await self.group.crash(consumer)

    async def _payment_up(self) -> None:
        await self.topo.service("payment").up()
        self.payment_is_down = self.paused = False

    async def _place(self, i: int) -> None:
        if self.todo:
            raise self.todo
        req = self.history[i]
        req.payment_down = self.payment_is_down
        try:
            reply = await self.topo.call("order", "POST", "/orders", json=req.order, raw=True,
                                         headers={"X-Lab-Order": str(i)},
                                         timeout=CALL_TIMEOUT_S)
        except CallError as e:
            raise AssertionError(f"order {i} got no answer from the order service within "
                                 f"{CALL_TIMEOUT_S:.0f} s: {e}") from None
        try:
            body = reply.json()
        except ValueError:
            body = {"error": reply.body.decode(errors="replace")[:200]}
        if not isinstance(body, dict):
            body = {"answer": body}
        req.status, req.body = reply.status, body
        req.died = reply.status == 500 and body.get("died") is True
        if self.todo:
            raise self.todo

    async def _drain(self, relay) -> None:
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
        while self.group.lag() > 0:
            if self.todo:
                raise self.todo
            stuck = [e for e, n in self.failures.items() if n >= GIVE_UP_AFTER]
            assert not stuck and asyncio.get_running_loop().time() < deadline, (
                f"the payment consumer did not get through the {TOPIC!r} topic"
                + (f": it failed {GIVE_UP_AFTER} times on event {stuck[0]}" if stuck
                   else f" within {DRAIN_TIMEOUT_S:.0f} s")
                + (f"; its last error: {self.last_error}" if self.last_error else ""))
            await asyncio.sleep(0.005)


# -- the verdict: durable state against history ---------------------------------------------------
class Divergence(CaseFailed):
    """The databases disagree with what a client was told (or with each other); ``detail``
    is the history around the divergence."""


def _history(history: list[Request], rows: dict, focus: int | None, charged: dict) -> str:
    """The requests around ``focus``: what each sent and was told, what the databases hold."""
    if not history:
        return ""
    centre = focus if focus is not None else 0
    lo, hi = max(0, centre - 2), min(len(history), centre + 3)
    lines = ["History around the divergence (request: sent -> told | the orders table holds "
             "for that id; charges):"]
    for r in history[lo:hi]:
        oid = r.body.get("order_id") if r.status == 202 else None
        held = rows.get(oid)
        holds = ("no such row" if oid is not None and held is None else
                 "-" if oid is None else _fmt(held) + ("" if held == r.order else
                                                       f"  (expected: {_fmt(r.order)})"))
        mark = ">" if r.i == focus else " "
        n = charged.get(oid, 0) if oid else None
        lines.append(f" {mark} #{r.i}: {_fmt(r.order)} -> {r.told()} | {holds}; "
                     f"charged {'-' if n is None else n} time(s)"
                     + ("" if n in (None, 1) else " (expected: 1)"))
    if hi < len(history):
        lines.append(f"   ... {len(history) - hi} more request(s)")
    return "\n".join(lines)


async def _verify(order_db, payment_db, history: list[Request], spans) -> None:
    """Everything is read back from the databases and the trace, never from the solution."""
    sync = [s for s in spans if s.callee == "payment"]
    assert not sync, (f"the order service called payment while the client waited "
                      f"({sync[0].method} {sync[0].path}): publish an event instead")
    raw = await order_db.fetchall("SELECT id, customer_id, sku, qty, amount FROM orders "
                                  "ORDER BY id")
    rows = {f"order-{i}": {"customer_id": c, "sku": s, "qty": q, "amount": a}
            for i, c, s, q, a in raw}
    charges = await payment_db.fetchall(
        "SELECT seq, order_id, customer_id, amount FROM charges ORDER BY seq")
    charged: dict[str, int] = {}
    for _, oid, _, _ in charges:
        charged[oid] = charged.get(oid, 0) + 1

    def fail(message: str, focus: int | None):
        raise Divergence(message, detail=_history(history, rows, focus, charged))

    # 1. what each client was told, against the orders table
    told: dict[str, int] = {}
    for r in history:
        if r.died:
            continue                        # the injected death: the client saw an error
        when = " while payment was down" if r.payment_down else ""
        if r.status != 202:
            fail(f"order {r.i} ({_fmt(r.order)}) was answered {r.status}{when}, not 202: "
                 f"{r.body.get('error', r.body)}"
                 + (". The order service must accept orders without payment"
                    if r.payment_down else ""), r.i)
        oid = r.body.get("order_id")
        if oid not in rows:
            fail(f"order {r.i} was answered 202 with order_id {oid!r}, but the orders table "
                 f"has no such order (ids are 'order-<row id>'); it holds "
                 f"{sorted(rows)[:5]}", r.i)
        if oid in told:
            fail(f"orders {told[oid]} and {r.i} were both told {oid}: every request is a new "
                 f"order with its own id, even when two are alike", r.i)
        told[oid] = r.i
        if rows[oid] != r.order:
            fail(f"order {r.i} was told {oid}, but {oid} in the orders table is "
                 f"{_fmt(rows[oid])}, not this request's order ({_fmt(r.order)})", r.i)
    # 2. every row is some client's order (a died request may or may not have committed)
    died = [r for r in history if r.died]
    for oid, row in rows.items():
        if oid in told:
            continue
        match = next((r for r in died if r.order == row), None)
        if match is None:
            fail(f"the orders table holds {oid} ({_fmt(row)}), which no client placed or "
                 f"was told about", None)
        died.remove(match)
    # 3. every order charged exactly once, with its amount, and nothing else charged
    for _, oid, cid, amount in charges:
        if oid not in rows:
            fail(f"payment charged {oid}, which is not in the orders table (an event was "
                 f"published for an order that was rolled back, or carries a wrong id)",
                 told.get(oid))
        if (cid, amount) != (rows[oid]["customer_id"], rows[oid]["amount"]):
            fail(f"payment charged {oid} {amount} to customer {cid}; the order says "
                 f"{rows[oid]['amount']} to customer {rows[oid]['customer_id']}", told.get(oid))
    for oid in rows:
        n = charged.get(oid, 0)
        if n != 1:
            fail(f"{oid} is in the orders table but was charged {n} times "
                 + ("(lost: its event was never published or never processed)" if n == 0
                    else "(a redelivered event was processed again)"), told.get(oid))
    # 4. one customer's orders charged in the order they were placed
    placed: dict[int, list] = {}
    for oid, row in rows.items():
        placed.setdefault(row["customer_id"], []).append(oid)
    by_customer: dict[int, list] = {}
    for _, oid, cid, _ in charges:
        by_customer.setdefault(cid, []).append(oid)
    for cid, seq in placed.items():
        if by_customer.get(cid) != seq:
            fail(f"customer {cid}'s orders were charged in the order {by_customer.get(cid)}, "
                 f"but placed in the order {seq}: one customer's events must be processed in "
                 f"order (the bus keeps order only within a partition, chosen by the event's "
                 f"key)", told.get(seq[0]))


# -- generated cases ------------------------------------------------------------------------------
def _strategy(profile: Profile):
    from hypothesis import strategies as st

    @st.composite
    def params(draw):
        customers = draw(st.integers(1, 3))
        orders = draw(st.lists(st.builds(make_order, st.integers(1, customers),
                                         st.sampled_from(sorted(PRICES)), st.integers(1, 3)),
                               min_size=1, max_size=10))
        n = len(orders)
        out = {"orders": n, "order_list": orders, "concurrency": draw(st.integers(1, 4))}
        if draw(st.booleans()):
            out["relay_crash_after"] = draw(st.integers(1, n))
        if draw(st.booleans()):
            out["order_dies"] = (draw(st.integers(0, n - 1)),
                                 draw(st.sampled_from(profile.points("order"))))
        if n > 1 and draw(st.booleans()):
            out["payment_dies"] = (draw(st.integers(1, n - 1)),
                                   draw(st.sampled_from(profile.points("payment"))))
        if n > 2 and draw(st.booleans()):
            start = draw(st.integers(0, n - 2))
            out["payment_down"] = (start, draw(st.integers(start + 1, n)))
        if draw(st.booleans()):
            out["pile_up"] = draw(st.integers(1, n))
            out["batch"] = draw(st.integers(1, 4))
            out["consumer_crash_after"] = 1
        return out
    return params()


def _size(params: dict) -> tuple:
    return (params["orders"], sum(k in params for k in ("relay_crash_after", "order_dies",
                                                        "payment_dies", "payment_down",
                                                        "pile_up")))


def _search(images: dict, profile: Profile, seed: int, examples: int, budget_s: float):
    """The smallest failing generated case within the budget (see grading.search); its
    failure is the (message, detail) pair a report shows."""
    def attempt(params: dict):
        case = Case("generated", params["orders"], seed, params)
        try:
            asyncio.run(_Run(images, case, generated=True).run())
        except AssertionError as e:
            return (str(e), getattr(e, "detail", ""))
        except NotImplementedError as e:
            return (f"not implemented yet: {e}", "")
        except Exception as e:
            return (f"{type(e).__name__}: {e}", "")
        return None

    found, failure, runs = search(_strategy(profile), attempt, seed=seed, examples=examples,
                                  budget_s=budget_s)
    return found, failure if failure is not None else ("", ""), runs


async def _generated(images: dict, case: Case, profile: Profile) -> dict:
    seed, examples = case.params["seed"], case.params["examples"]
    found, (message, detail), runs = await asyncio.to_thread(
        _search, images, profile, seed, examples, GENERATED_BUDGET_S)
    if found is None:
        return {"generated cases": runs}
    shown = {k: val for k, val in found.items() if k != "order_list"}
    orders = "; ".join(f"#{i}: {_fmt(o)}" for i, o in enumerate(found["order_list"]))
    try:                                    # replay the smallest here, for a fresh report
        await _Run(images, Case("generated", found["orders"], seed, found),
                   generated=True).run()
    except AssertionError as e:
        message, detail = str(e), getattr(e, "detail", "")
    raise CaseFailed(
        f"a generated case failed (seed {seed}, {runs} cases run); Hypothesis shrank it to "
        f"{shown} with the orders {orders}:\n  {message}", detail=detail,
        replay=f"await check(..., only='generated', seed={seed})")


# -- grading --------------------------------------------------------------------------------------
def _images(solution: dict) -> dict:
    return {k: (f if isinstance(f, ProgramImage) else ProgramImage(f))
            for k, f in solution.items()}


async def profile(solution: dict) -> Profile:
    """What the solution does on fault-free work: its statements and commits per order and
    per first delivery (the reference's profile if the solution fails before it can tell)."""
    images = _images(solution)
    r = _Run(images, Case("profile", 3, 0, {"orders": 3, "customers": 1}), generated=True)
    try:
        async with asyncio.timeout(CASE_TIMEOUT_S):
            await r.run()
    except (AssertionError, NotImplementedError, Exception):
        pass
    order = [pl for (who, _), pl in r.plans.items() if who == "order"]
    payment = [pl for (who, _), pl in r.plans.items() if who == "payment"]
    if not order or not payment:
        return DEFAULT_PROFILE
    d = DEFAULT_PROFILE
    return Profile(max(pl.statements for pl in order) or d.order_statements,
                   max(pl.commits for pl in order),
                   max(pl.statements for pl in payment) or d.payment_statements,
                   max(pl.commits for pl in payment))


async def run_case(solution: dict, case: Case, *, profile_: Profile = DEFAULT_PROFILE) -> dict:
    """Run one case; raise AssertionError if the solution broke an invariant (GraderError if
    a planned fault did not fire), else return what the faults did (deaths, crashes,
    redeliveries, restarts): the tests check that every case exercises what its name says."""
    if not isinstance(case, Case):
        raise TypeError(f"case must be a grading.Case; got {case!r}")
    images = solution.get("_images") or _images(
        {k: solution[k] for k in ("place_order", "charge_once")})
    if case.name == "generated":
        return await _generated(images, case, profile_)
    return await _Run(images, case).run()


async def check(*, place_order, charge_once, only: str | None = None,
                stop_after: int | None = None, seed: int = GENERATED_SEED) -> Report:
    """Grade a solution: ``await check(place_order=..., charge_once=...)``.

    ``only`` replays one case by name; ``stop_after=1`` stops at the smallest failing case;
    ``seed`` seeds the generated cases (the report prints it).
    """
    for name, fn in (("place_order", place_order), ("charge_once", charge_once)):
        v.async_function(name, fn)
    v.number("seed", seed, low=0, high=2**32 - 1, integer=True)
    # The image is taken before anything runs: every process boots from this state.
    images = _images({"place_order": place_order, "charge_once": charge_once})
    prof = await profile(images)
    cases = cases_for(prof, seed)
    if only is not None:
        v.one_of("only", only, [c.name for c in cases])

    async def run(solution, case):
        await run_case(solution, case, profile_=prof)

    return await grade(LAB, cases, run, {"_images": images}, only=only, stop_after=stop_after,
                       timeout=CASE_TIMEOUT_S)
