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

``check`` runs seeded sagas through :class:`~toylib.data.saga.SagaOrchestrator` on real
SQLite files, one per service, then reads the services' databases (never the solution's own
account) and checks every saga, one by one: it ended completed or compensated, and the one it
should; its stock is held exactly when it completed, and stock is conserved overall; its
customer was charged at most once and, if it was undone, refunded exactly what was charged; its
customer got exactly one notification; its compensations took effect in the reverse order of
its steps (an audit table filled by triggers, with one sequence across the databases, records
the order of the effects).

The faults, as a real deployment has them:

* a call that never arrives, or that is applied but whose reply is lost (a timeout), at every
  step and every compensation;
* **real restarts**: the orchestrator dies (after a call took effect, or inside a
  compensation: at any statement of it, or right after any of its commits, i.e. between its
  transactions) and a new one is built from the saga log alone, with a **fresh** solution
  (:func:`boot`: a new instance of a freshly loaded class, with fresh copies of the module-level
  and class-level data its methods read), so progress kept in memory is lost as in a real
  process. Every planned death is proven to have fired; one that did not is a
  :class:`~toylib.labs.faults.GraderError`, never a pass;
* **concurrency**: many sagas at once, on the same products;
* **generated cases**: Hypothesis draws the sagas, their faults and the concurrency from a
  printed seed and shrinks a failure to the smallest case before it is reported.

A failure report shows the smallest failing case, the saga's history (the orchestrator's log
with the fault injected at each attempt, and the effects in the databases in order) with the
expected final state beside the actual one, and the line that replays it.
"""
from __future__ import annotations

import asyncio
import copy
import itertools
import random
import threading
import types
from collections import Counter
from dataclasses import dataclass

from toylib.core import validate as v
from toylib.data.db import Database, Workspace
from toylib.data.saga import (COMPENSATED, COMPLETED, TERMINAL, SagaDefinition,
                              SagaOrchestrator, Step)
from toylib.labs.faults import Crash, GraderError, MortalDatabase, code_names
from toylib.labs.grading import Case, CaseFailed, Report, grade, search

LAB = "Lab 3 (shared database: saga)"
STEPS = ("create_order", "reserve", "charge", "notify")
UNDOABLE = STEPS[:3]
STOCK = {"sku-0": 100, "sku-1": 100, "sku-2": 100}
PRICES = {"sku-0": 10.0, "sku-1": 15.0, "sku-2": 25.0}
MAX_ATTEMPTS = 6               # the orchestrator's tries of a compensation or of notify
CASE_TIMEOUT_S = 20.0          # a case takes a second or two when right; a guard on a hang

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


class AuditedDatabase(MortalDatabase):
    """A connection with ``tick()`` in its SQL (the next number of a shared sequence), whose
    process can be made to die at a chosen statement or commit (:class:`MortalDatabase`)."""

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
AT, AFTER = "dies at statement", "dies after commit"     # + a number: inside the call
STEP_DB = {"create_order": "orders", "reserve": "inventory", "charge": "payment",
           "notify": "orders"}
GENERATED_BUDGET_S = 5.0       # Hypothesis's search and shrink, in a thread
GENERATED_EXAMPLES = 50


def is_death(kind: str) -> bool:
    return kind == DIES or kind.startswith((AT, AFTER))


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


def together_faults(i: int) -> list[tuple]:
    """Sagas that go back together: two in three are declined or lose the payment's reply, so
    their compensations run while the others reserve and charge (one in five loses a reply of
    its own compensation, too)."""
    if i % 3 == 0:
        return []
    out = [("charge", "do", 1, FAILS if i % 2 else LOST)]
    if i % 5 == 1:
        out.append((UNDOABLE[i % 3], "undo", 1, LOST))
    return out


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
        ("restart-after-refund", [("charge", "do", 1, LOST), ("charge", "undo", 1, DIES)]),
    ]
    cases = [Case(name, 1 + len(faults), seed, {"sagas": 1, "faults": faults})
             for seed, (name, faults) in enumerate(single, start=1)]
    for n, seed in ((10, 101), (25, 102), (40, 103)):
        cases.append(Case(f"many-{n}", n, seed, {"sagas": n, "faults": "random"}))
    # every statement and every commit of every step and compensation, one death each
    cases.append(Case("every-boundary", 60, 201, {"faults": "boundaries"}))
    cases.append(Case("concurrent-40", 80, 301, {"sagas": 40, "faults": "together",
                                                 "concurrency": 40}))
    cases.append(Case("generated", 100, 0, {"faults": "generated"}))
    return cases


CASES = _cases()


class _Injected(Exception):
    pass


class CallNeverArrived(_Injected):
    """Injected: the call failed before the service saw it (nothing happened)."""


class ReplyLost(_Injected, TimeoutError):
    """Injected: the service did the work, the reply never came back (a timeout)."""


# -- real restarts: the solution as a fresh process would load it ---------------------------------
def _is_code(value) -> bool:
    return isinstance(value, (types.ModuleType, type, types.FunctionType,
                              types.BuiltinFunctionType, types.MethodType))


def _fresh(value):
    try:
        return copy.deepcopy(value)
    except Exception:             # a lock, a connection: cannot be copied, so it is shared
        return value


def boot(OrderSaga: type, svc: "Services"):
    """A new instance of ``OrderSaga`` as a freshly started process would make it.

    Every class of its MRO (but ``object``) is loaded again: class-level data are fresh copies,
    and its methods are rebuilt to read fresh copies of the module-level data and closure
    variables they use, with every name that meant one of these classes now meaning its fresh
    copy (``super()`` included). So nothing the solution kept in memory survives a restart."""
    if not isinstance(OrderSaga, type):
        raise TypeError(f"OrderSaga must be a class taking the services; got {OrderSaga!r}")
    mro = [k for k in OrderSaga.__mro__ if k is not object]
    mapping: dict[type, type] = {}
    funcs: list[tuple] = []
    for klass in reversed(mro):
        ns = {}
        for name, value in vars(klass).items():
            if name in ("__dict__", "__weakref__"):
                continue
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if isinstance(fn, types.FunctionType):
                funcs.append((klass, name, value, fn))
            elif name.startswith("__") or isinstance(value, (property,
                                                             types.MemberDescriptorType)):
                ns[name] = value
            else:
                ns[name] = _fresh(value)
        try:
            mapping[klass] = type(klass)(klass.__name__,
                                         tuple(mapping.get(b, b) for b in klass.__bases__), ns)
        except TypeError:        # a class that cannot be made again: kept as it is
            mapping[klass] = klass
    fresh_globals: dict[int, dict] = {}

    def remap(value):
        return mapping.get(value, value) if isinstance(value, type) else (
            value if _is_code(value) else _fresh(value))

    for klass, name, value, fn in funcs:
        g = fresh_globals.get(id(fn.__globals__))
        if g is None:
            g = fresh_globals[id(fn.__globals__)] = dict(fn.__globals__)
            used = set()
            for f in (f for *_, f in funcs if f.__globals__ is fn.__globals__):
                used |= code_names(f.__code__)
            for n in used:
                if n in g and not n.startswith("__"):
                    g[n] = remap(g[n])
        cells = []
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:       # an empty cell
                cells.append(cell)
                continue
            cells.append(types.CellType(mapping[klass] if var == "__class__" else
                                        remap(content)))
        rebuilt = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__,
                                     tuple(cells) or None)
        rebuilt.__kwdefaults__ = fn.__kwdefaults__
        rebuilt.__qualname__ = fn.__qualname__
        if isinstance(value, staticmethod):
            rebuilt = staticmethod(rebuilt)
        elif isinstance(value, classmethod):
            rebuilt = classmethod(rebuilt)
        if mapping[klass] is not klass:
            setattr(mapping[klass], name, rebuilt)
    return mapping[OrderSaga](svc)


# -- one run --------------------------------------------------------------------------------------
class _Run:
    def __init__(self, OrderSaga, case: Case, *, profile: dict | None = None):
        self.OrderSaga, self.case = OrderSaga, case
        self.profile = profile or {}
        self.attempts: Counter = Counter()      # (saga, step, phase) -> calls so far
        self.plan: dict[tuple, str] = {}        # (saga, step, phase, attempt) -> kind
        self.fired: Counter = Counter()         # kind -> faults that happened
        self.fired_at: Counter = Counter()      # (step, phase, kind) -> faults that happened
        self.counted: dict[tuple, tuple] = {}   # (step, phase) -> most (statements, commits)
        self.calls: list[tuple] = []            # (saga, step, phase, attempt, fault, outcome)
        self.died = asyncio.Event()
        self.restarts = 0
        self.boots = 0
        self.todo: NotImplementedError | None = None
        self.grader_error: GraderError | None = None
        self.dbs: dict = {}

    def _wrap(self, get_fn, step: str, phase: str):
        async def call(ctx, key):
            saga = ctx["order_id"]
            self.attempts[saga, step, phase] += 1
            attempt = self.attempts[saga, step, phase]
            kind = self.plan.get((saga, step, phase, attempt), "")
            record = [saga, step, phase, attempt, kind or "-", "?"]
            self.calls.append(record)
            if kind == FAILS:
                self._fired(step, phase, kind)
                record[-1] = "failed (injected)"
                if step == "charge" and phase == "do":
                    raise Declined(f"payment declined for {saga}")
                raise CallNeverArrived(f"{step} {phase}: the call never arrived")
            at = int(kind.rsplit(" ", 1)[1]) if kind.startswith(AT) else None
            after = int(kind.rsplit(" ", 1)[1]) if kind.startswith(AFTER) else None
            db = self.dbs[STEP_DB[step]]
            try:
                async with db.doom(at=at, after_commit=after) as plan:
                    result = await get_fn()(ctx, key)
            except Crash:
                self._fired(step, phase, kind)
                record[-1] = f"died {plan.fired}"
                await self._die()
            except NotImplementedError as e:     # the starter: reported as such
                self.todo = self.todo or e
                record[-1] = "not implemented"
                raise
            except BaseException as e:
                record[-1] = f"raised {type(e).__name__}"
                raise
            finally:
                old = self.counted.get((step, phase), (0, 0))
                self.counted[step, phase] = (max(old[0], plan.statements),
                                             max(old[1], plan.commits))
            if at is not None or after is not None:
                self.grader_error = self.grader_error or GraderError(
                    f"the planned death ({kind}) in {step} {phase} of {saga} never fired: the "
                    f"call made {plan.statements} statement(s) and {plan.commits} commit(s)")
                raise self.grader_error
            if kind == LOST:
                self._fired(step, phase, kind)
                record[-1] = "done, reply lost (injected)"
                raise ReplyLost(f"{step} {phase}: done, but the reply was lost")
            if kind == DIES:
                self._fired(step, phase, kind)
                record[-1] = "done, then the orchestrator died"
                await self._die()
            record[-1] = "done"
            return result
        return call

    def _fired(self, step, phase, kind):
        label = AT if kind.startswith(AT) else AFTER if kind.startswith(AFTER) else kind
        self.fired[label] += 1
        self.fired_at[step, phase, label] += 1

    async def _die(self):
        self.died.set()
        await asyncio.Event().wait()     # the orchestrator is gone; only cancel ends it

    def _definition(self, svc: "Services") -> SagaDefinition:
        """The solution's saga, with every call going to the instance booted last."""
        self.boots += 1
        self.current = boot(self.OrderSaga, svc)
        definition = self.current.definition()
        if not isinstance(definition, SagaDefinition):
            raise CaseFailed(f"OrderSaga.definition() must return a "
                             f"toylib.data.saga.SagaDefinition; got {definition!r}")
        names = [s.name for s in definition.steps]
        if tuple(names) != STEPS:
            raise CaseFailed(f"the saga's steps must be {', '.join(STEPS)}, in that order; "
                             f"got {', '.join(names)}")

        def bound(i, attr):
            def get():           # the booted instance's own method, looked up at call time
                step = self.current_definition.steps[i]
                return getattr(step, attr)
            return get
        self.current_definition = definition
        return SagaDefinition(definition.name, [
            Step(s.name, self._wrap(bound(i, "action"), s.name, "do"),
                 None if s.compensation is None else
                 self._wrap(bound(i, "compensation"), s.name, "undo"),
                 pivot=s.pivot, timeout=s.timeout)
            for i, s in enumerate(definition.steps)])

    def _plan_faults(self, n: int) -> None:
        faults = self.case.params["faults"]
        for i in range(n):
            listed = (random_faults(self.case.seed, i) if faults == "random" else
                      together_faults(i) if faults == "together" else
                      self.case.params["per_saga"][i] if faults in ("boundaries", "given")
                      else faults)
            for step, phase, attempt, kind in listed:
                self.plan[f"order-{i + 1}", step, phase, attempt] = kind

    async def run(self) -> dict:
        p = self.case.params
        if p["faults"] == "boundaries":
            p = {**p, **boundary_plan(self.profile)}
            self.case = Case(self.case.name, self.case.size, self.case.seed, p)
        n = p["sagas"]
        self._plan_faults(n)
        tick = itertools.count(1).__next__
        # synchronous="off": no fsync for throwaway files (the orchestrator "dies" as a
        # process, not the machine), so a busy disk does not slow the grading down.
        async with Workspace(prefix="lab3-", synchronous="off") as ws:
            for name in SCHEMAS:
                db = AuditedDatabase(ws.path / f"{name}.sqlite", owner=name, tick=tick,
                                     synchronous="off")
                await db.open()
                ws.databases.append(db)
                await db.executescript(SCHEMAS[name] + "\n" + AUDIT[name])
                self.dbs[name] = db
            await self.dbs["inventory"].executemany("INSERT INTO stock VALUES (?, ?)",
                                                    sorted(STOCK.items()))
            svc = Services(**self.dbs)
            saga_db = await ws.database("saga")
            orders = [order_for(self.case.seed, i) for i in range(n)]
            statuses = await self._drive(saga_db, svc, orders, p.get("concurrency", 1))
            if self.grader_error:            # not the student's failure, and never a pass
                raise self.grader_error
            if self.todo:
                raise self.todo
            await _verify(self, svc, saga_db, orders, statuses)
        return {"sagas": n, "restarts": self.restarts, "boots": self.boots,
                **{k: self.fired[k] for k in (*KINDS, AT, AFTER)},
                "completed": sum(s == COMPLETED for s in statuses.values()),
                "compensated": sum(s == COMPENSATED for s in statuses.values()),
                "where": dict(self.fired_at), "counted": dict(self.counted)}

    async def _drive(self, saga_db, svc, orders: list[dict], concurrency: int) -> dict:
        """Run the sagas, ``concurrency`` at a time, to their ends; each time the orchestrator
        dies, build a new one (and a fresh solution) that resumes from the saga log alone."""
        todo = [o["order_id"] for o in orders]
        ctx = {o["order_id"]: o for o in orders}
        created: list[str] = []
        limit = 10 + 3 * len(orders)         # restarts: more means the saga keeps dying
        for _ in range(limit):
            self.died.clear()
            async with SagaOrchestrator(saga_db, self._definition(svc),
                                        max_attempts=MAX_ATTEMPTS, base_delay=0.0,
                                        max_delay=0.0, seed=self.case.seed,
                                        sleep=_no_sleep) as orch:
                died = asyncio.ensure_future(self.died.wait())
                try:
                    while True:
                        batch = [s for s in created if await orch.status(s) not in TERMINAL]
                        while todo and len(batch) < concurrency:
                            saga_id = todo.pop(0)
                            await orch.start("order", ctx[saga_id], saga_id=saga_id)
                            created.append(saga_id)
                            batch.append(saga_id)
                        if not batch:
                            return {s: await orch.status(s) for s in created}
                        waits = asyncio.ensure_future(
                            asyncio.gather(*(orch.wait(s) for s in batch)))
                        await asyncio.wait({waits, died}, return_when=asyncio.FIRST_COMPLETED)
                        if not waits.done():
                            waits.cancel()
                            await asyncio.gather(waits, return_exceptions=True)
                            break                  # the orchestrator died: restart it
                        waits.result()             # a bug in a step (e.g. a bad return) raises
                finally:
                    if not died.done():
                        died.cancel()
                    await asyncio.gather(died, return_exceptions=True)
            self.restarts += 1                     # leaving the block stopped the orchestrator
        raise CaseFailed(f"the sagas made the orchestrator die {limit} times; the last saga "
                         f"started was {created[-1] if created else None}")


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def boundary_plan(profile: dict) -> dict:
    """One saga per statement and per commit of every step and compensation, dying there.

    A compensation only runs when the saga goes back, so its sagas lose the payment's reply
    (charged, so every compensation has something to undo);
    ``profile`` (from a fault-free run of the same solution) says how many statements and
    commits each call makes, so every planned death can fire."""
    per_saga = []
    for step in STEPS:
        for phase in ("do", "undo") if step in UNDOABLE else ("do",):
            statements, commits = profile.get((step, phase), (0, 0))
            base = [("charge", "do", 1, LOST)] if phase == "undo" else []   # all to undo
            for k in range(1, statements + 1):
                per_saga.append(base + [(step, phase, 1, f"{AT} {k}")])
            for c in range(1, commits + 1):
                per_saga.append(base + [(step, phase, 1, f"{AFTER} {c}")])
    return {"sagas": len(per_saga), "per_saga": [sorted(f) for f in per_saga],
            "faults": "given"}


# -- the invariants, read from the databases ------------------------------------------------------
def _history(run: _Run, oid: str, log: list, audit: list, expected: dict, actual: dict) -> str:
    lines = [f"  the calls the orchestrator made for {oid} (fault injected -> what happened):"]
    for saga, step, phase, attempt, kind, outcome in run.calls:
        if saga == oid:
            lines.append(f"    {step:<13} {phase:<4} attempt {attempt}  {kind:<24} -> {outcome}")
    lines.append("  the saga log: " + " → ".join(f"{r[1]}:{r[2]}:{r[3]}" for r in log
                                                    if r[2] != "saga" and r[3] != "started"))
    lines.append("  effects in the databases, in order: "
                 + (", ".join(what for _, what in audit) or "none"))
    lines.append(f"  {'final state':<22} {'expected':<24} actual")
    for k in expected:
        mark = "" if expected[k] == actual[k] else "   <-- differs"
        lines.append(f"  {k:<22} {str(expected[k]):<24} {actual[k]}{mark}")
    return "\n".join(lines)


async def _verify(run: _Run, svc: Services, saga_db, orders: list[dict], statuses: dict) -> None:
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
    replay = (f"await check(OrderSaga, only='generated', seed={run.case.seed})"
              if run.case.name == "generated" else
              f"await check(OrderSaga, only={run.case.name!r})")

    for order in orders:
        oid, status = order["order_id"], statuses[order["order_id"]]
        mine = [r for r in log if r[0] == oid]
        events = sorted(audit.get(oid, []))
        completed = not failed_for_good(mine)
        expected = {"saga": COMPLETED if completed else COMPENSATED,
                    "order": "confirmed" if completed else "cancelled",
                    "stock held": (order["sku"], order["qty"]) if completed else None,
                    "net charged": order["amount"] if completed else 0.0,
                    "charges": 1 if completed else f"<= 1",
                    "notices": {"confirmed": 1, "failed": 0} if completed
                    else {"confirmed": 0, "failed": 1}}
        actual = {"saga": status, "order": order_status.get(oid),
                  "stock held": held.get(oid), "net charged": round(money[oid, "net"], 6),
                  "charges": money[oid, "charge"],
                  "notices": {k: notes[oid, k] for k in ("confirmed", "failed")}}
        if not completed and actual["order"] is None:
            expected["order"] = None                 # never created: nothing to cancel
        try:
            _check_saga(order, status, mine)
            _check_effects(order, status, order_status.get(oid), notes, held.get(oid), money)
            _check_order_of_effects(oid, status, events)
        except AssertionError as e:
            raise CaseFailed(str(e), detail=_history(run, oid, mine, events, expected, actual),
                             replay=replay) from None

    available = dict(await inv.fetchall("SELECT sku, available FROM stock"))
    for sku, start in STOCK.items():
        reserved = sum(q for s, q in held.values() if s == sku)
        if available[sku] + reserved != start:
            holders = [f"{oid} holds {q}" for oid, (s, q) in sorted(held.items()) if s == sku]
            raise CaseFailed(
                f"stock of {sku} is not conserved: {available[sku]} available + {reserved} "
                f"held by orders = {available[sku] + reserved}, but it started at {start}",
                detail=(f"  {'final state':<28} {'expected':<10} actual\n"
                        f"  {'available + held of ' + sku:<28} {start:<10} "
                        f"{available[sku] + reserved}   <-- differs\n"
                        f"  held by: {', '.join(holders) or 'no order'}"),
                replay=replay)


def failed_for_good(mine: list) -> list[str]:
    """Steps up to the pivot whose last attempt failed. (A failure the orchestrator logged but
    did not act on before it died is retried by the next one, and may then succeed.)"""
    last = {}
    for r in mine:
        if r[2] == "do" and r[3] in ("failed", "succeeded"):
            last[r[1]] = r[3]
    return [s for s in UNDOABLE if last.get(s) == "failed"]


def _check_saga(order, status, mine) -> None:
    oid = order["order_id"]
    failed_forward = failed_for_good(mine)
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




# -- grading --------------------------------------------------------------------------------------
PROFILE_CASE = Case("profile", 2, 0, {"sagas": 2, "faults": "given",
                                      "per_saga": [[], [("charge", "do", 1, LOST)]]})
DEFAULT_PROFILE = {("create_order", "do"): (2, 1), ("reserve", "do"): (3, 1),
                   ("charge", "do"): (2, 1), ("notify", "do"): (2, 1),
                   ("create_order", "undo"): (2, 1), ("reserve", "undo"): (3, 1),
                   ("charge", "undo"): (3, 1)}


async def profile(OrderSaga) -> dict:
    """Statements and commits each step and compensation of the solution makes, from a
    fault-free saga and one whose payment's reply was lost (so every compensation has work)."""
    r = _Run(OrderSaga, PROFILE_CASE)
    try:
        async with asyncio.timeout(CASE_TIMEOUT_S):
            await r.run()
    except Exception:
        pass
    return {**DEFAULT_PROFILE, **{k: c for k, c in r.counted.items() if c[0]}}


def _strategy():
    from hypothesis import strategies as st
    spot = st.one_of(
        st.tuples(st.sampled_from(STEPS), st.just("do"), st.integers(1, 2),
                  st.sampled_from(KINDS)),
        st.tuples(st.sampled_from(UNDOABLE), st.just("undo"), st.integers(1, 2),
                  st.sampled_from(KINDS)),
        st.tuples(st.sampled_from(UNDOABLE), st.just("undo"), st.just(1),
                  st.builds(lambda a, k: f"{a} {k}", st.sampled_from((AT, AFTER)),
                            st.integers(1, 2))))

    def unique(faults):
        seen, out = set(), []
        for f in faults:
            if f[:3] not in seen:
                seen.add(f[:3])
                out.append(f)
        return sorted(out)

    # most sagas go back (their payment fails or loses its reply), so compensations are tried
    payment = st.sampled_from([FAILS, LOST, None]).map(
        lambda k: [] if k is None else [("charge", "do", 1, k)])
    saga = st.tuples(payment, st.lists(spot, max_size=2)).map(lambda t: unique(t[0] + t[1]))
    return st.fixed_dictionaries({"per_saga": st.lists(saga, min_size=1, max_size=6),
                                  "concurrency": st.integers(1, 4)})


def _generated_case(seed: int, drawn: dict) -> Case:
    return Case("generated", len(drawn["per_saga"]), seed,
                {"sagas": len(drawn["per_saga"]), "faults": "given", **drawn})


def _search(OrderSaga, seed: int, examples: int, budget_s: float, stop: threading.Event):
    """The smallest failing generated case within the budget (see grading.search)."""
    def attempt(drawn: dict):
        try:
            asyncio.run(_Run(OrderSaga, _generated_case(seed, drawn)).run())
        except GraderError:
            return None                    # a fault the solution never reached: not a failure
        except Exception as e:
            return e
        return None

    return search(_strategy(), attempt, seed=seed, examples=examples, budget_s=budget_s,
                  stop=stop)


async def _generated(OrderSaga, case: Case) -> dict:
    seed, stop = case.seed, threading.Event()
    try:
        found, error, runs = await asyncio.to_thread(_search, OrderSaga, seed,
                                                     GENERATED_EXAMPLES, GENERATED_BUDGET_S, stop)
    finally:
        stop.set()                          # a cancelled check: the search stops at once
    if found is None:
        return {"generated cases": runs, "seed": seed}
    shown = "; ".join(f"order-{i + 1}: {', '.join(' '.join(map(str, f)) for f in faults) or 'no fault'}"
                      for i, faults in enumerate(found["per_saga"]))
    message = (f"{type(error).__name__}: {error}" if not isinstance(error, AssertionError)
               else str(error))
    if isinstance(error, NotImplementedError):
        message = f"not implemented yet: {error}"
    raise CaseFailed(
        f"a generated case failed (seed {seed}, {runs} cases run); Hypothesis shrank it to "
        f"{len(found['per_saga'])} saga(s), {found['concurrency']} at a time, with the faults "
        f"[{shown}]:\n  {message}", detail=getattr(error, "detail", ""),
        replay=f"await check(OrderSaga, only='generated', seed={seed})")


async def run_case(OrderSaga, case: Case, *, profile_: dict | None = None) -> dict:
    """Run one case; raise AssertionError (CaseFailed) on a broken invariant, GraderError when
    a planned fault did not fire, else return what happened (restarts, faults fired where,
    outcomes): the tests check each case exercises what its name says."""
    if not isinstance(case, Case):
        raise TypeError(f"case must be a Case from CASES; got {case!r}")
    if case.params["faults"] == "generated":
        return await _generated(OrderSaga, case)
    if case.params["faults"] == "boundaries" and profile_ is None:
        profile_ = await profile(OrderSaga)
    return await _Run(OrderSaga, case, profile=profile_).run()


async def check(OrderSaga, *, only: str | None = None, stop_after: int | None = None,
                seed: int | None = None) -> Report:
    """Grade a saga class: ``await check(OrderSaga)``. ``seed`` sets the generated case's
    seed (the report prints the one it used, to replay a failure)."""
    if not isinstance(OrderSaga, type):
        raise TypeError(f"OrderSaga must be a class taking the services; got {OrderSaga!r}")
    v.optional(v.number, "seed", seed, low=0, high=2**32 - 1, integer=True)
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    prof = await profile(OrderSaga)
    cases = [Case(c.name, c.size, seed, c.params) if c.name == "generated" else c
             for c in CASES]

    async def one(solution, case):
        await run_case(solution, case, profile_=prof)

    return await grade(LAB, cases, one, OrderSaga, only=only, stop_after=stop_after,
                       timeout=CASE_TIMEOUT_S,
                       replay="await check(OrderSaga, only={name!r}"
                              + (f", seed={seed})" if only == "generated" else ")"))
