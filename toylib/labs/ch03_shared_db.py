"""Lab 3, Shared database: from one transaction on a shared database to a saga with compensations.

With one shared database, "create the order, reserve the stock, charge the customer" was one
transaction: a failure rolled everything back. With a database per service there is no such
transaction; the order becomes a saga of local transactions (:mod:`toylib.data.saga`), and every step
before the pivot needs a compensation that undoes it semantically. The reader writes a class
(see labs/ch03_shared_db_lab.ipynb)::

    class OrderSaga:
        def __init__(self, svc): ...                  # svc: the services (see Services)
        async def cancel_order(self, ctx, key): ...   # undo create_order, tell the customer
        async def release_stock(self, ctx, key): ...  # undo reserve
        async def refund(self, ctx, key): ...         # undo charge (the pivot)
        def definition(self) -> SagaDefinition: ...   # create_order, reserve, charge, notify

``check`` runs many seeded sagas through :class:`~toylib.data.saga.SagaOrchestrator` with faults at
every step and in every compensation (the call never arrives; the call is applied but its reply
is lost; the orchestrator dies right after a call and restarts from its log), then reads the
services' databases: every saga is completed or compensated, and the one it should be; stock is
conserved; nobody is charged for an order that was undone, or refunded twice; each customer gets
exactly one notification; compensations run in the reverse order of the steps (an audit table
filled by triggers, with one sequence across the databases, records the order of the effects).
"""
from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from dataclasses import dataclass

from toylib.data.db import Database, Workspace
from toylib.labs.grading import Case, Report, grade
from toylib.data.saga import COMPENSATED, COMPLETED, SagaDefinition, SagaOrchestrator, Step

LAB = "Lab 3 (shared database: saga)"
STEPS = ("create_order", "reserve", "charge", "notify")
UNDOABLE = STEPS[:3]
STOCK = {"sku-0": 100, "sku-1": 100, "sku-2": 100}
PRICES = {"sku-0": 10.0, "sku-1": 15.0, "sku-2": 25.0}
MAX_ATTEMPTS = 6               # the orchestrator's tries of a compensation or of notify
MAX_RESTARTS = 10              # per saga: more means the saga keeps killing the orchestrator

SCHEMAS = {
    "orders": """
CREATE TABLE orders (
    order_id    TEXT PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    sku         TEXT NOT NULL,
    qty         INTEGER NOT NULL,
    amount      REAL NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled'))
);
CREATE TABLE notifications (
    seq         INTEGER PRIMARY KEY,
    order_id    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('confirmed', 'failed'))
);""",
    "inventory": """
CREATE TABLE stock (
    sku         TEXT PRIMARY KEY,
    available   INTEGER NOT NULL CHECK (available >= 0)
);
CREATE TABLE reservations (
    order_id    TEXT PRIMARY KEY,
    sku         TEXT NOT NULL,
    qty         INTEGER NOT NULL,
    released    INTEGER NOT NULL DEFAULT 0      -- 1 once the stock went back
);""",
    "payment": """
CREATE TABLE payments (
    seq         INTEGER PRIMARY KEY,
    order_id    TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('charge', 'refund')),
    amount      REAL NOT NULL
);""",
}

# The checker's audit trail: triggers record every effect with one sequence number shared by
# the three databases (a Python function registered on each connection), in the same local
# transaction as the effect, so a rolled-back effect leaves no trace.
AUDIT = {
    "orders": """
CREATE TABLE audit (tick INTEGER NOT NULL, what TEXT NOT NULL, order_id TEXT NOT NULL);
CREATE TRIGGER audit_create AFTER INSERT ON orders
BEGIN INSERT INTO audit VALUES (tick(), 'create the order', NEW.order_id); END;
CREATE TRIGGER audit_cancel AFTER UPDATE OF status ON orders
WHEN NEW.status = 'cancelled' AND OLD.status <> 'cancelled'
BEGIN INSERT INTO audit VALUES (tick(), 'cancel the order', NEW.order_id); END;
CREATE TRIGGER audit_confirm AFTER UPDATE OF status ON orders
WHEN NEW.status = 'confirmed' AND OLD.status <> 'confirmed'
BEGIN INSERT INTO audit VALUES (tick(), 'confirm the order', NEW.order_id); END;
CREATE TRIGGER audit_delete AFTER DELETE ON orders
BEGIN INSERT INTO audit VALUES (tick(), 'cancel the order', OLD.order_id); END;
CREATE TRIGGER audit_notify AFTER INSERT ON notifications
BEGIN INSERT INTO audit VALUES (tick(), 'notify ' || NEW.kind, NEW.order_id); END;""",
    "inventory": """
CREATE TABLE audit (tick INTEGER NOT NULL, what TEXT NOT NULL, order_id TEXT NOT NULL);
CREATE TRIGGER audit_reserve AFTER INSERT ON reservations
BEGIN INSERT INTO audit VALUES (tick(), 'reserve the stock', NEW.order_id); END;
CREATE TRIGGER audit_release AFTER UPDATE OF released ON reservations
WHEN NEW.released <> 0 AND OLD.released = 0
BEGIN INSERT INTO audit VALUES (tick(), 'release the stock', NEW.order_id); END;
CREATE TRIGGER audit_unreserve AFTER DELETE ON reservations WHEN OLD.released = 0
BEGIN INSERT INTO audit VALUES (tick(), 'release the stock', OLD.order_id); END;""",
    "payment": """
CREATE TABLE audit (tick INTEGER NOT NULL, what TEXT NOT NULL, order_id TEXT NOT NULL);
CREATE TRIGGER audit_payment AFTER INSERT ON payments
BEGIN INSERT INTO audit VALUES (tick(), NEW.kind, NEW.order_id); END;
CREATE TRIGGER audit_uncharge AFTER DELETE ON payments WHEN OLD.kind = 'charge'
BEGIN INSERT INTO audit VALUES (tick(), 'refund', OLD.order_id); END;""",
}
FORWARD = ("create the order", "reserve the stock", "charge", "confirm the order")
BACKWARD = ("refund", "release the stock", "cancel the order")   # the reverse order


class AuditedDatabase(Database):
    """A connection with ``tick()`` in its SQL: the next number of a shared sequence."""

    def __init__(self, *args, tick, **kwargs):
        super().__init__(*args, **kwargs)
        self._tick = tick

    def _connect(self):
        conn = super()._connect()
        conn.create_function("tick", 0, self._tick)
        return conn


class Declined(Exception):
    """The payment service said no."""


class OutOfStock(Exception):
    pass


@dataclass
class Services:
    """The three services of the saga, each with its own database, and their forward steps.

    The steps are given: each is one local transaction in its service's database, and each
    is idempotent on the order id, so a command sent twice (a retry, a restart) applies once.
    """
    orders: Database          # orders, notifications
    inventory: Database       # stock, reservations
    payment: Database         # payments (charges and refunds)

    async def create_order(self, ctx, key):
        async with self.orders.transaction():
            if not await self.orders.fetchone("SELECT 1 FROM orders WHERE order_id = ?",
                                              (ctx["order_id"],)):
                await self.orders.execute(
                    "INSERT INTO orders VALUES (?, ?, ?, ?, ?, 'pending')",
                    (ctx["order_id"], ctx["customer_id"], ctx["sku"], ctx["qty"], ctx["amount"]))

    async def reserve(self, ctx, key):
        db = self.inventory
        async with db.transaction():
            if await db.fetchone("SELECT 1 FROM reservations WHERE order_id = ?",
                                 (ctx["order_id"],)):
                return                                   # sent again: already reserved
            if not await db.execute("UPDATE stock SET available = available - ? "
                                    "WHERE sku = ? AND available >= ?",
                                    (ctx["qty"], ctx["sku"], ctx["qty"])):
                raise OutOfStock(ctx["sku"])
            await db.execute("INSERT INTO reservations (order_id, sku, qty) VALUES (?, ?, ?)",
                             (ctx["order_id"], ctx["sku"], ctx["qty"]))

    async def charge(self, ctx, key):
        db = self.payment
        async with db.transaction():
            if not await db.fetchone("SELECT 1 FROM payments WHERE order_id = ? AND "
                                     "kind = 'charge'", (ctx["order_id"],)):
                await db.execute("INSERT INTO payments (order_id, kind, amount) "
                                 "VALUES (?, 'charge', ?)", (ctx["order_id"], ctx["amount"]))

    async def notify(self, ctx, key):
        """Confirm the order and tell the customer, once."""
        db = self.orders
        async with db.transaction():
            await db.execute("UPDATE orders SET status = 'confirmed' WHERE order_id = ? "
                             "AND status = 'pending'", (ctx["order_id"],))
            await db.execute("INSERT INTO notifications (order_id, kind) SELECT ?, 'confirmed' "
                             "WHERE NOT EXISTS (SELECT 1 FROM notifications WHERE order_id = ? "
                             "AND kind = 'confirmed')", (ctx["order_id"], ctx["order_id"]))


def order_for(seed: int, i: int) -> dict:
    rng = random.Random(f"{seed}:{i}")
    sku, qty = rng.choice(sorted(PRICES)), rng.randint(1, 3)
    return {"order_id": f"order-{i + 1}", "customer_id": rng.randint(1, 20), "sku": sku,
            "qty": qty, "amount": PRICES[sku] * qty}


# -- faults ---------------------------------------------------------------------------------------
FAILS, LOST, DIES = "fails", "reply lost", "orchestrator dies after"
KINDS = (FAILS, LOST, DIES)


def random_faults(seed: int, i: int) -> list[tuple]:
    """Saga ``i``'s faults: (step, phase, attempt, kind), one per (step, phase, attempt)."""
    rng = random.Random(f"faults:{seed}:{i}")
    plan: dict[tuple, str] = {}
    if rng.random() < 0.5:                                   # a step up to the pivot fails
        step = rng.choice(["create_order", "reserve", "charge", "charge"])
        plan[step, "do", 1] = rng.choice([FAILS, LOST])
    if rng.random() < 0.3:                                   # notify fails, is retried
        for attempt in range(1, rng.randint(1, 2) + 1):
            plan["notify", "do", attempt] = rng.choice([FAILS, LOST])
    for step in UNDOABLE:                                    # a compensation goes wrong
        if rng.random() < 0.3:
            plan[step, "undo", 1] = rng.choice(KINDS)
    if rng.random() < 0.3:                                   # a restart on the way forward
        plan.setdefault((rng.choice(STEPS), "do", rng.randint(1, 2)), DIES)
    return [(s, ph, a, k) for (s, ph, a), k in sorted(plan.items())]


def _cases() -> list[Case]:
    single = [  # name, faults of the one saga
        ("happy-path", []),
        ("payment-declined", [("charge", "do", 1, FAILS)]),
        ("payment-reply-lost", [("charge", "do", 1, LOST)]),
        ("create-order-fails", [("create_order", "do", 1, FAILS)]),
        ("create-order-reply-lost", [("create_order", "do", 1, LOST)]),
        ("reserve-fails", [("reserve", "do", 1, FAILS)]),
        ("reserve-reply-lost", [("reserve", "do", 1, LOST)]),
        ("notify-fails-twice", [("notify", "do", 1, FAILS), ("notify", "do", 2, LOST)]),
        ("restart-after-charge", [("charge", "do", 1, DIES)]),
        ("release-reply-lost", [("charge", "do", 1, FAILS), ("reserve", "undo", 1, LOST)]),
        ("cancel-reply-lost", [("charge", "do", 1, FAILS), ("create_order", "undo", 1, LOST)]),
        ("refund-reply-lost", [("charge", "do", 1, LOST), ("charge", "undo", 1, LOST)]),
        ("release-fails-once", [("reserve", "do", 1, LOST), ("reserve", "undo", 1, FAILS)]),
        ("restart-mid-compensation", [("charge", "do", 1, FAILS),
                                      ("reserve", "undo", 1, DIES)]),
    ]
    cases = [Case(name, 1 + len(faults), seed, {"sagas": 1, "faults": faults})
             for seed, (name, faults) in enumerate(single, start=1)]
    for n, seed in ((10, 101), (25, 102), (40, 103)):
        cases.append(Case(f"many-{n}", n, seed, {"sagas": n, "faults": "random"}))
    return cases


CASES = _cases()


class _Injected(Exception):
    pass


class CallNeverArrived(_Injected):
    """Injected: the call failed before the service saw it (nothing happened)."""


class ReplyLost(_Injected, TimeoutError):
    """Injected: the service did the work, the reply never came back (a timeout)."""


# -- one run --------------------------------------------------------------------------------------
class _Run:
    def __init__(self, OrderSaga, case: Case):
        self.OrderSaga, self.case = OrderSaga, case
        self.attempts: Counter = Counter()      # (saga, step, phase) -> calls so far
        self.plan: dict[tuple, str] = {}        # (saga, step, phase, attempt) -> kind
        self.fired: Counter = Counter()         # kind -> faults that happened
        self.fired_at: Counter = Counter()      # (step, phase, kind) -> faults that happened
        self.died = asyncio.Event()
        self.restarts = 0
        self.todo: NotImplementedError | None = None

    def _wrap(self, fn, step: str, phase: str):
        async def call(ctx, key):
            saga = ctx["order_id"]
            self.attempts[saga, step, phase] += 1
            kind = self.plan.get((saga, step, phase, self.attempts[saga, step, phase]))
            if kind:
                self.fired_at[step, phase, kind] += 1
            if kind == FAILS:
                self.fired[kind] += 1
                if step == "charge" and phase == "do":
                    raise Declined(f"payment declined for {saga}")
                raise CallNeverArrived(f"{step} {phase}: the call never arrived")
            try:
                result = await fn(ctx, key)
            except NotImplementedError as e:     # the starter: reported as such
                self.todo = self.todo or e
                raise
            if kind == LOST:
                self.fired[kind] += 1
                raise ReplyLost(f"{step} {phase}: done, but the reply was lost")
            if kind == DIES:
                self.fired[kind] += 1
                self.died.set()
                await asyncio.Event().wait()     # the orchestrator is gone; only cancel ends it
            return result
        return call

    def _definition(self, svc: Services) -> SagaDefinition:
        saga = self.OrderSaga(svc)
        definition = saga.definition()
        assert isinstance(definition, SagaDefinition), (
            f"OrderSaga.definition() must return a toylib.data.saga.SagaDefinition; got "
            f"{definition!r}")
        names = [s.name for s in definition.steps]
        assert tuple(names) == STEPS, (f"the saga's steps must be {', '.join(STEPS)}, in that "
                                       f"order; got {', '.join(names)}")
        return SagaDefinition(definition.name, [
            Step(s.name, self._wrap(s.action, s.name, "do"),
                 None if s.compensation is None else self._wrap(s.compensation, s.name, "undo"),
                 pivot=s.pivot, timeout=s.timeout)
            for s in definition.steps])

    async def run(self) -> dict:
        n = self.case.params["sagas"]
        for i in range(n):
            faults = self.case.params["faults"]
            if faults == "random":
                faults = random_faults(self.case.seed, i)
            for step, phase, attempt, kind in faults:
                self.plan[f"order-{i + 1}", step, phase, attempt] = kind
        tick = itertools.count(1).__next__
        # synchronous="off": no fsync for throwaway files (the orchestrator "dies" as a
        # process, not the machine), so a busy disk does not slow the grading down.
        async with Workspace(prefix="lab3-", synchronous="off") as ws:
            dbs = {}
            for name in SCHEMAS:
                db = AuditedDatabase(ws.path / f"{name}.sqlite", owner=name, tick=tick,
                                     synchronous="off")
                await db.open()
                ws.databases.append(db)
                await db.executescript(SCHEMAS[name] + "\n" + AUDIT[name])
                dbs[name] = db
            await dbs["inventory"].executemany("INSERT INTO stock VALUES (?, ?)",
                                               sorted(STOCK.items()))
            svc = Services(**dbs)
            definition = self._definition(svc)
            saga_db = await ws.database("saga")
            statuses = {}
            for i in range(n):
                order = order_for(self.case.seed, i)
                statuses[order["order_id"]] = await self._drive(saga_db, definition, order)
                if self.todo:
                    raise self.todo
            orders = [order_for(self.case.seed, i) for i in range(n)]
            await _verify(svc, saga_db, orders, statuses)
        return {"sagas": n, "restarts": self.restarts, **{k: self.fired[k] for k in KINDS},
                "completed": sum(s == COMPLETED for s in statuses.values()),
                "compensated": sum(s == COMPENSATED for s in statuses.values()),
                "where": dict(self.fired_at)}

    async def _drive(self, saga_db, definition, order) -> str:
        """Run one saga to its end, restarting the orchestrator each time it 'dies'."""
        saga_id, started = order["order_id"], False
        for _ in range(MAX_RESTARTS):
            self.died.clear()
            async with SagaOrchestrator(saga_db, definition, max_attempts=MAX_ATTEMPTS,
                                        base_delay=0.0, max_delay=0.0, seed=self.case.seed,
                                        sleep=_no_sleep) as orch:
                if not started:
                    await orch.start("order", order, saga_id=saga_id)
                    started = True
                finished = asyncio.ensure_future(orch.wait(saga_id))
                died = asyncio.ensure_future(self.died.wait())
                try:
                    await asyncio.wait({finished, died}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (finished, died):
                        if not task.done():
                            task.cancel()
                    await asyncio.gather(finished, died, return_exceptions=True)
                if not self.died.is_set():
                    finished.result()             # a bug in a step (e.g. a bad return) raises
                    return await orch.status(saga_id)
            self.restarts += 1                    # leaving the block stopped the orchestrator
        raise AssertionError(f"saga {saga_id} made the orchestrator die {MAX_RESTARTS} times")


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


# -- the invariants, read from the databases ------------------------------------------------------
async def _verify(svc: Services, saga_db, orders: list[dict], statuses: dict) -> None:
    o, inv, pay = svc.orders, svc.inventory, svc.payment
    order_status = dict(await o.fetchall("SELECT order_id, status FROM orders"))
    notes = Counter(await o.fetchall("SELECT order_id, kind FROM notifications"))
    held = {oid: (sku, qty) for oid, sku, qty in await inv.fetchall(
        "SELECT order_id, sku, qty FROM reservations WHERE released = 0")}
    money = Counter()
    for oid, kind, amount in await pay.fetchall("SELECT order_id, kind, amount FROM payments"):
        money[oid, kind] += 1
        money[oid, "net"] += amount if kind == "charge" else -amount
    audit: dict[str, list] = {}
    for db in (o, inv, pay):
        for t, what, oid in await db.fetchall("SELECT tick, what, order_id FROM audit"):
            audit.setdefault(oid, []).append((t, what))
    log = await saga_db.fetchall("SELECT saga_id, name, phase, status, detail FROM saga_log "
                                 "ORDER BY seq")

    for order in orders:
        oid, status = order["order_id"], statuses[order["order_id"]]
        mine = [r for r in log if r[0] == oid]
        failed_forward = [r[1] for r in mine if r[2] == "do" and r[3] == "failed"
                          and r[1] in UNDOABLE]
        if status not in (COMPLETED, COMPENSATED):
            last = next((r for r in reversed(mine) if r[3] == "failed"), None)
            raise AssertionError(
                f"saga {oid} ended {status!r}, not completed or compensated"
                + (f": {last[1]} ({last[2]}) kept failing, last with {last[4]}" if last else ""))
        if failed_forward:
            assert status == COMPENSATED, (
                f"saga {oid}: {failed_forward[0]} failed (up to the payment, the pivot, the "
                f"saga can still go back), so it must be compensated; it {status}")
        else:
            retried = sorted({r[1] for r in mine if r[2] == "do" and r[3] == "failed"})
            assert status == COMPLETED, (
                f"saga {oid}: nothing failed up to the payment"
                + (f" (only {', '.join(retried)} failed, after the pivot)" if retried else "")
                + f", so it must complete: steps after the pivot are retried, never "
                f"compensated; it was {status}")
        _check_effects(order, status, order_status.get(oid), notes, held.get(oid), money)
        _check_order_of_effects(oid, status, sorted(audit.get(oid, [])))

    available = dict(await inv.fetchall("SELECT sku, available FROM stock"))
    for sku, start in STOCK.items():
        reserved = sum(q for s, q in held.values() if s == sku)
        assert available[sku] + reserved == start, (
            f"stock of {sku} is not conserved: {available[sku]} available + {reserved} held "
            f"by orders = {available[sku] + reserved}, but it started at {start}")


def _check_effects(order, status, order_status, notes, held, money) -> None:
    oid = order["order_id"]
    charged, refunded, net = money[oid, "charge"], money[oid, "refund"], money[oid, "net"]
    told = {k: notes[oid, k] for k in ("confirmed", "failed")}
    if status == COMPLETED:
        assert order_status == "confirmed", (f"saga {oid} completed but its order is "
                                             f"{order_status!r}")
        assert held == (order["sku"], order["qty"]), (
            f"saga {oid} completed but its stock is no longer held ({held}): a compensation "
            f"ran for a step that did not need undoing")
        assert charged == 1 and refunded == 0, (
            f"saga {oid} completed: the customer must be charged once and not refunded; "
            f"charged {charged} time(s), refunded {refunded} time(s)")
        assert told == {"confirmed": 1, "failed": 0}, (
            f"saga {oid} completed: its customer must get one confirmation and no failure "
            f"notice; got {told}")
        return
    assert order_status in (None, "cancelled"), (
        f"saga {oid} was compensated but its order is still {order_status!r}: cancel_order "
        f"must cancel it")
    assert held is None, (
        f"saga {oid} was compensated but its reservation of {held[1]} x {held[0]} is still "
        f"held: release_stock must give it back")
    assert refunded <= charged, (
        f"saga {oid} was compensated: the customer was charged {charged} time(s) and refunded "
        f"{refunded} times: a refund must not be paid twice (or without a charge)")
    assert abs(net) < 1e-9, (
        f"saga {oid} was compensated but the customer is still out of {net:.2f}: refund must "
        f"give back a charge that happened (even one whose reply was lost)")
    assert told == {"confirmed": 0, "failed": 1}, (
        f"saga {oid} was compensated: its customer must be told once that the order failed; "
        f"got {told['failed']} failure notice(s) and {told['confirmed']} confirmation(s)")


def _check_order_of_effects(oid, status, events: list[tuple]) -> None:
    first: dict[str, int] = {}
    for t, what in events:
        first.setdefault("cancel the order" if what == "notify failed" else what, t)
    done = [w for w in FORWARD if w in first]
    assert done == sorted(done, key=first.get), (
        f"saga {oid}: the steps took effect in the order {', '.join(sorted(done, key=first.get))}"
        f"; they must run create_order, reserve, charge, notify")
    if status != COMPENSATED:
        return
    undone = [w for w in BACKWARD if w in first]
    happened = sorted(undone, key=first.get)
    assert happened == undone, (
        f"saga {oid} was compensated in the order {', '.join(happened)}; compensations must "
        f"undo the steps in reverse order: {', '.join(BACKWARD)}")
    last_forward = max((first[w] for w in done), default=0)
    early = [w for w in undone if first[w] < last_forward]
    assert not early, (f"saga {oid}: '{early[0]}' took effect before the saga's last forward "
                       f"step; compensations come after the step that failed")


async def run_case(OrderSaga, case: Case) -> dict:
    """Run one case; raise AssertionError on a broken invariant, else return what happened
    (restarts, faults fired, outcomes): the tests check each case exercises what it says."""
    return await _Run(OrderSaga, case).run()


async def _run(OrderSaga, case: Case) -> None:
    await run_case(OrderSaga, case)


async def check(OrderSaga, *, only: str | None = None, stop_after: int | None = None) -> Report:
    """Grade a saga class: ``await check(OrderSaga)``."""
    if not isinstance(OrderSaga, type):
        raise TypeError(f"OrderSaga must be a class taking the services; got {OrderSaga!r}")
    return await grade(LAB, CASES, _run, OrderSaga, only=only, stop_after=stop_after)
