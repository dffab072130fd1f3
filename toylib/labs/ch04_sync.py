"""Lab 4, Synchronous communication everywhere: make checkout answer at once, through an outbox.

The checkout of chapter 4's "before" design (:func:`toylib.chapters.ch04_sync.sync_checkout`)
holds the client while cart, customer, payment, inventory and shipping answer in turn. The
reader writes the two handlers of the "after" design's checkout service (see
labs/ch04_sync_lab.ipynb)::

    async def accept(shop, request)        # POST /checkout {"cart_id": 3, "customer_id": 4}
    async def order_status(shop, request)  # GET /orders/{id}

``accept`` stores, in ONE local transaction of ``shop.db``, the request's status
(``shop.statuses.accept()``, which returns the order id), the ``orders`` row and a
``checkouts`` event (``shop.outbox.emit``), and answers 202 with ``{"order_id": ...}``.
Everything else is chapter 4's (:class:`toylib.chapters.ch04_sync.AsyncCheckout`): the relay,
the saga orchestrator that drives the five participants, and the consumer that updates the
status. ``order_status`` answers the status (``shop.statuses.get(id)``), or 404.

How it grades, like Jepsen: from the databases and the recorded history, under real faults.

* **Real restarts.** The reader's handlers run in checkout *processes*
  (:class:`toylib.labs.faults.Process`): a fresh boot of the code (nothing kept in Python memory
  survives) with its own connection to the checkout's database file. A death kills the
  process (its open transaction rolls back) and starts a new one, which must serve every
  order from the database alone. The relay and the status consumer are sidecars with their
  own connections, as a change-data-capture relay is.
* **Faults at every boundary.** The grader first profiles the reader's ``accept`` (statements
  and commits of one checkout), then kills the process at every statement and right after
  every commit; each planned death must fire (one that does not is a
  :class:`~toylib.labs.faults.GraderError`, never a pass).
* **Concurrency and several instances.** Checkouts arrive from concurrent clients, and in some
  cases at two checkout instances sharing one database.
* **Client-visible state cross-checked against durable state, per request.** Every 202 must
  carry the id of *this* request's order (the row with this request's cart); every order the
  client was told about is stored; every stored order finishes; the status endpoint of every
  instance agrees with the database at the end; the participants' ledgers agree too.
* **Generated cases.** Hypothesis draws sizes, clients, instances, failure rates, deaths and
  restarts from a printed seed, and shrinks a failing case to the smallest before reporting.

A report shows the smallest failing case, the history around the divergence (what the client
was told beside what the database holds) and the one line that replays it.
"""
from __future__ import annotations

import asyncio
import random
import statistics
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from toylib.chapters import ch04_sync as ch
from toylib.core import validate as v
from toylib.core.calibrate import loop_lag
from toylib.core.clock import now
from toylib.core.services import CallError, Service
from toylib.data.bus import EventBus
from toylib.data.db import Database
from toylib.data.outbox import Outbox
from toylib.data.status import TERMINAL, StatusStore
from toylib.labs.faults import Crash, GraderError, Plan, ProgramImage, Process
from toylib.labs.grading import Case, CaseFailed, Report, TooBusy, grade, search, window

LAB = "Lab 4 (ch04_sync)"
CHAIN_MS = sum(ch.CHAIN.values())        # what the client waited for before
MIN_SPEEDUP = 5.0                        # answer at least 5x sooner than the chain
SETTLE_S = 3.0                           # time for every order to reach its final status
GIVE_UP_AFTER = 10                       # failures of one of chapter 4's consumers
CHECKOUT_DB = "checkout_lab"
HEADER = "X-Lab-Checkout"                # which checkout of the case a request is
FINAL = ("completed", "compensated")     # with these faults, every order ends one of these
GENERATED_SEED = 4
GENERATED_EXAMPLES = 6
GENERATED_BUDGET_S = 8.0                 # Hypothesis starts no example after this...
EXAMPLE_TIMEOUT_S = 8.0                  # ...and each example ends within this
DEFAULT_POINTS = (6, 1)                  # the reference's statements and commits per checkout


@dataclass
class Shop:
    """What the checkout's handlers can use (one per checkout process)."""
    db: Database              # this process's connection to the checkout's database
    outbox: Outbox            # the outbox table in that database; a relay publishes it
    statuses: StatusStore     # request statuses in that database (accept, get)
    service: Service          # the checkout service: service.call(...) reaches the others
    bus: EventBus             # the event bus the relay publishes to


def _cases() -> list[Case]:
    return [
        Case("one-checkout", 1, 1, {"checkouts": 1}),
        Case("status-of-an-unknown-order", 1, 2, {"checkouts": 1, "unknown": True}),
        Case("answers-before-the-chain", 3, 3, {"checkouts": 3, "scale": 1.0}, timing=True),
        Case("dies-at-every-statement", 4, 4, {"deaths": "statements"}),
        Case("dies-after-every-commit", 4, 5, {"deaths": "commits"}),
        Case("restarts-then-serves-from-the-database", 5, 6,
             {"checkouts": 5, "restart_after": 3}),
        Case("concurrent-checkouts", 12, 7, {"checkouts": 12, "clients": 6}),
        Case("two-instances-one-database", 12, 8,
             {"checkouts": 12, "clients": 4, "instances": 2}),
        Case("transient-failures-20", 20, 20, {"checkouts": 20, "clients": 5, "p": 0.2}),
        Case("busy-30", 30, 30, {"checkouts": 30, "clients": 6, "instances": 2, "p": 0.2,
                                 "deaths": "random"}),
        Case("generated", 1000, GENERATED_SEED,
             {"examples": GENERATED_EXAMPLES, "seed": GENERATED_SEED}),
    ]


CASES = _cases()


# -- the system under test ------------------------------------------------------------------------
class LabCheckout(ch.AsyncCheckout):
    """Chapter 4's after design with the reader's two handlers in ``instances`` checkout
    processes sharing the checkout's database file, which the grader kills and restarts."""

    def __init__(self, knobs: ch.Knobs, images: dict, *, instances: int = 1,
                 deaths: dict | None = None):
        self.images, self.instances = images, instances
        self.deaths = deaths or {}               # checkout i -> ("statement" | "commit", k)
        self.procs: list[Process] = []
        self.shops: list[Shop] = []
        self.locks: list[asyncio.Lock] = []
        self.plans: dict[int, Plan] = {}         # checkout i -> what its accept did
        self.todo: NotImplementedError | None = None
        self.orchestrator_error = self.status_error = ""
        self.errors: Counter = Counter()         # failures of chapter 4's consumers, by kind
        self.restarts = 0
        super().__init__(knobs)

    @staticmethod
    def instance_name(j: int) -> str:
        return "checkout" if j == 0 else f"checkout-{j + 1}"

    def nodes(self):
        out = []
        for n in super().nodes():
            out += ([self._instance(j) for j in range(self.instances)]
                    if n.name == "checkout" else [n])
        return out

    def _instance(self, j: int) -> Service:
        svc = Service(self.instance_name(j), label="Checkout Service", uses=("checkout_db",))
        c = self

        @svc.post("/checkout")
        async def accept(request):
            i = int(request.headers.get(HEADER, "-1"))
            kind, k = c.deaths.get(i, (None, None))
            async with c.locks[j]:                # a restart under way finishes first
                proc = c.procs[j]
                db, code, shop = proc.db, proc.code, c.shops[j]
            try:
                async with proc.db.doom(at=k if kind == "statement" else None,
                                        after_commit=k if kind == "commit" else None) as plan:
                    c.plans[i] = plan
                    return await code["accept"](shop, request)
            except NotImplementedError as e:
                c.todo = c.todo or e
                return web.json_response({"error": "not implemented"}, status=500)
            except Exception as e:
                if not isinstance(e, Crash) and not db.dead:
                    raise                         # the reader's bug: a 500 with its cause
                await c.died(j, db)               # kill -9, then a fresh process
                return web.json_response({"error": f"the checkout process died: {e}"},
                                         status=500)

        @svc.get("/orders/{id}")
        async def status(request):
            try:
                return await c.procs[j].code["order_status"](c.shops[j], request)
            except NotImplementedError as e:
                c.todo = c.todo or e
                return web.json_response({"error": "not implemented"}, status=500)

        return svc

    async def checkout_database(self):
        # The sidecars' connection (relay, status consumer); each process opens its own.
        return await self.ws.database(CHECKOUT_DB, owner="checkout_sidecar")

    async def start_beside(self, stack) -> None:
        await super().start_beside(stack)
        for j in range(self.instances):
            self.procs.append(Process(self.ws, CHECKOUT_DB, self.images, wal=True))
            self.shops.append(None)
            self.locks.append(asyncio.Lock())
            await self._boot(j)

    async def _boot(self, j: int) -> None:
        proc = self.procs[j]
        await proc.start()
        statuses = await StatusStore(proc.db, prefix="order", clock=now).setup()
        outbox = await Outbox(proc.db, source="checkout", clock=now).setup()
        self.shops[j] = Shop(proc.db, outbox, statuses,
                             self.topology.service(self.instance_name(j)), self.bus)

    async def restart(self, j: int) -> None:
        """kill -9 the checkout process ``j`` and start a fresh one from the files alone."""
        async with self.locks[j]:
            await self._restart(j)

    async def _restart(self, j: int) -> None:
        await self.procs[j].kill()
        self.restarts += 1
        await self._boot(j)

    async def died(self, j: int, db) -> None:
        """The process whose connection is ``db`` died: restart it, once (requests that were
        running in it die with it and must not restart its successor)."""
        async with self.locks[j]:
            if self.procs[j].db is db:
                await self._restart(j)

    def forget(self) -> None:
        super().forget()
        self.procs, self.shops, self.locks = [], [], []

    async def _on_checkout(self, event) -> None:
        """Chapter 4's, tolerating an event without the trace id it uses for diagrams."""
        try:
            await super()._on_checkout(event)
        except Exception as e:
            self.orchestrator_error = f"{type(e).__name__}: {e}"
            self.errors["orchestrator"] += 1
            raise

    async def _status_changed(self, db, event) -> None:
        """Chapter 4's: the saga's outcome becomes the status the client polls."""
        try:
            await super()._status_changed(db, event)
        except Exception as e:
            self.status_error = f"{type(e).__name__}: {e}"
            self.errors["status"] += 1
            raise


# -- one run --------------------------------------------------------------------------------------
@dataclass
class Told:
    """What one checkout's client was told."""
    i: int
    instance: str
    status: int
    ms: float
    body: dict

    @property
    def order_id(self):
        return self.body.get("order_id") if isinstance(self.body, dict) else None


def _deaths_for(spec, n: int, points: tuple, rng: random.Random) -> dict:
    """Checkout index -> planned death: at every statement, after every commit, or random."""
    statements, commits = points
    if spec == "statements":
        return {i: ("statement", i + 1) for i in range(statements)}
    if spec == "commits":
        return {i: ("commit", i + 1) for i in range(commits)}
    if spec == "random":
        every = [("statement", k) for k in range(1, statements + 1)] + \
                [("commit", k) for k in range(1, commits + 1)]
        return {i: rng.choice(every) for i in rng.sample(range(n), min(4, n))}
    return dict(spec or {})


async def run_case(solution: dict, case: Case, *, points: tuple = DEFAULT_POINTS) -> dict:
    """Run one case; raise AssertionError on a broken rule (GraderError if a planned death did
    not fire), else return what happened: the tests check each case exercises its name."""
    if not isinstance(case, Case):
        raise TypeError(f"case must be a Case; got {case!r}")
    _images(solution)
    p = case.params
    if "examples" in p:
        return await _generated(solution, case, points)
    images = _images(solution)
    rng = random.Random(case.seed)
    deaths = _deaths_for(p.get("deaths"), p.get("checkouts", 0), points, rng)
    n = max(p.get("checkouts", 1), max(deaths, default=-1) + 2)
    # One try per call, so transient failures do compensate some orders; after the pivot the
    # orchestrator tries 12 times, so no order is left stuck (0.2 ** 12: never, in practice).
    k = ch.Knobs(scale=p.get("scale", 0.0), p=p.get("p", 0.0), attempts=1,
                 saga_attempts=12, backoff_ms=1, seed=case.seed)
    async with LabCheckout(k, images, instances=p.get("instances", 1), deaths=deaths) as system:
        told = await _place(system, range(min(n, p.get("restart_after", n))),
                            p.get("clients", 1))
        if "restart_after" in p:                  # kill -9 between requests, then go on
            for j in range(system.instances):
                await system.restart(j)
            told += await _place(system, range(p["restart_after"], n), p.get("clients", 1))
        if system.todo:
            raise system.todo
        _check_no_chain(system)
        _check_deaths(system, deaths, told)
        if p.get("scale"):
            await _check_speed(told)
        if p.get("unknown"):
            await _check_unknown(system)
        accepted = await _check_told(system, told)
        final = await _settle(system, accepted)
        if system.todo:
            raise system.todo
        await _check_database(system, told, accepted, final)
        inv = await system.invariants()
        fired = sum(bool(pl.fired) for pl in system.plans.values())
        plans = {i: (pl.statements, pl.commits) for i, pl in system.plans.items()}
    return {"answered": len(told), "accepted": len(accepted), "deaths": fired,
            "restarts": system.restarts, "instances": system.instances,
            "completed": sum(s == "completed" for s in final.values()),
            "compensated": sum(s == "compensated" for s in final.values()),
            "median response ms": statistics.median(t.ms for t in told),
            "plans": plans, "invariants": inv}


def _images(solution: dict) -> dict:
    """The solution's handlers as program images, refusing anything else by name."""
    if not isinstance(solution, dict) or set(solution) != {"accept", "order_status"}:
        raise TypeError(f"solution must be a dict with the keys 'accept' and 'order_status'; "
                        f"got {solution!r}")
    return {name: (f if isinstance(f, ProgramImage) else ProgramImage(f))
            for name, f in solution.items()}


async def _place(system: LabCheckout, indices, clients: int) -> list[Told]:
    """Checkouts ``indices`` from ``clients`` concurrent clients, round-robin over instances."""
    queue = list(indices)
    told: list[Told] = []

    async def client():
        while queue:
            i = queue.pop(0)
            target = system.instance_name(i % system.instances)
            t0 = now()
            try:
                reply = await system.call(target, "POST", "/checkout", json=ch.request_for(i),
                                          raw=True, headers={HEADER: str(i)}, timeout=4)
            except CallError as e:
                raise AssertionError(f"checkout {i} got no answer from {target}: {e}") from None
            try:
                body = reply.json()
            except ValueError:
                body = {"error": reply.body.decode(errors="replace")[:200]}
            told.append(Told(i, target, reply.status, (now() - t0) * 1000, body))

    await asyncio.gather(*(client() for _ in range(clients)))
    return sorted(told, key=lambda t: t.i)


def _check_no_chain(system: LabCheckout) -> None:
    names = {system.instance_name(j) for j in range(system.instances)}
    sync = [s for s in system.tracer.spans if s.caller in names and s.callee in ch.CHAIN]
    assert not sync, (f"the checkout called {sync[0].callee} ({sync[0].method} {sync[0].path}) "
                      f"while the client waited: store the order and its event, and let the "
                      f"saga make the calls")


def _check_deaths(system: LabCheckout, deaths: dict, told: list[Told]) -> None:
    """Every planned death fired, unless another death killed that request's process first
    (concurrent requests die with their process)."""
    killed = {t.i for t in told if _died(t)}
    for i, (kind, k) in sorted(deaths.items()):
        plan = system.plans.get(i)
        if plan is not None and not plan.fired and i in killed:
            continue                              # preempted by a real death of its process
        if plan is None or not plan.fired:
            did = f"{plan.statements} statement(s), {plan.commits} commit(s)" if plan else \
                "never ran"
            raise GraderError(f"the planned death of checkout {i} ({kind} {k}) did not fire: "
                              f"its accept {did}; the grader planned it from a profile of "
                              f"your accept, which must do the same work for every checkout")


async def _check_speed(told: list[Told]) -> None:
    """A ratio with a wide margin; if it fails on a busy machine, the case is not graded (and
    a timing case runs twice before it fails), so a slow moment never fails a correct answer."""
    median = statistics.median(t.ms for t in told)
    if median * MIN_SPEEDUP > CHAIN_MS:
        lag = await loop_lag(0.2)
        if lag.busy and (median - lag.max_ms) * MIN_SPEEDUP <= CHAIN_MS:
            raise TooBusy(str(lag))             # the event loop's lag alone could explain it
    assert median * MIN_SPEEDUP <= CHAIN_MS, (
        f"the checkout answered in {median:.0f} ms (median of {len(told)}), the chain of five "
        f"calls takes {CHAIN_MS:.0f} ms: it must answer at least {MIN_SPEEDUP:.0f}x sooner, as "
        f"soon as the order and its event are stored, without waiting for the saga")


async def _check_unknown(system: LabCheckout) -> None:
    reply = await system.call("checkout", "GET", "/orders/no-such-order", raw=True)
    assert reply.status == 404, (f"GET /orders/no-such-order answered {reply.status}: an "
                                 f"unknown id must be answered 404 Not Found")


def _died(t: Told) -> bool:
    """The grader's own answer for a request whose process died under it."""
    return t.status == 500 and "checkout process died" in str((t.body or {}).get("error", ""))


def _row(t: Told, stored: dict) -> dict:
    want = ch.request_for(t.i)["cart_id"]
    row = stored.get(t.order_id)
    return {"checkout": t.i, "instance": t.instance,
            "client was told": f"{t.status} {t.order_id or (t.body or {}).get('error', '')}"[:60],
            "expected": f"202 + the id of the order with cart {want}",
            "database holds": (f"{t.order_id}: cart {row[0]}, {row[1]}" if row else
                               "no such order")}


def _history_failure(message: str, told: list[Told], stored: dict, at: int) -> CaseFailed:
    rows = [_row(t, stored) for t in told]
    return CaseFailed(message, detail=window(rows, at, before=6, after=2))


async def _check_told(system: LabCheckout, told: list[Told]) -> dict:
    """Per request: a 202 carries the id of this request's stored order; any other answer is
    the grader's own 'process died'. Returns order id -> checkout index."""
    stored = {oid: (cart, status) for oid, cart, status in await system.db.fetchall(
        "SELECT order_id, cart_id, status FROM orders")}
    accepted: dict[str, int] = {}
    for at, t in enumerate(told):
        if t.status != 202:
            if _died(t):
                continue                            # the process died: the client saw it
            raise _history_failure(
                f"checkout {t.i} was answered {t.status}, not 202 Accepted: "
                f"{(t.body or {}).get('error', t.body)}", told, stored, at)
        oid = t.order_id
        if not isinstance(oid, str) or not oid:
            raise _history_failure(
                f"checkout {t.i} was answered 202 with {t.body!r}: the answer must carry the "
                f"order's id as 'order_id', for the client to poll", told, stored, at)
        if oid in accepted:
            raise _history_failure(
                f"checkouts {accepted[oid]} and {t.i} were both answered with {oid}: each order "
                f"needs its own id (an id read from a count, or kept in memory, repeats under "
                f"concurrency, across instances and after a restart)", told, stored, at)
        if oid in stored and stored[oid][0] != ch.request_for(t.i)["cart_id"]:
            raise _history_failure(
                f"checkout {t.i} was answered with {oid}, but that is another request's order "
                f"(cart {stored[oid][0]}): answer the id of the order this request stored",
                told, stored, at)
        accepted[oid] = t.i
    return accepted


async def _settle(system: LabCheckout, accepted: dict) -> dict:
    """Poll the reader's status endpoints (every instance in turn) until every accepted order
    is final; order id -> the final status the client saw."""
    final, last = {}, {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S + (1.0 if system.knobs.scale else 0.0)
    turn, seen = 0, 0
    while len(final) < len(accepted) and loop.time() < deadline:
        if len(final) > seen:       # progress: a busy machine is slow, not stuck
            seen, deadline = len(final), loop.time() + SETTLE_S
        for oid, i in accepted.items():
            if oid in final:
                continue
            target = system.instance_name(turn % system.instances)
            turn += 1
            reply = await system.call(target, "GET", f"/orders/{oid}", raw=True)
            try:
                body = reply.json()
            except ValueError:
                body = None
            last[oid] = (reply.status, body)
            assert reply.status != 404, (
                f"checkout {i} was answered 202 as {oid}, but GET /orders/{oid} on {target} "
                f"answers 404: store its status (shop.statuses.accept()) with the order, answer "
                f"only once that transaction has committed, and answer from the database (a "
                f"restarted or second instance knows only what the database holds)")
            if reply.status == 200 and isinstance(body, dict) and body.get("status") in TERMINAL:
                final[oid] = body["status"]
        for kind, error in (("orchestrator", system.orchestrator_error),
                            ("status", system.status_error)):
            assert system.errors[kind] < GIVE_UP_AFTER, _stuck(kind, error)
        await asyncio.sleep(0.01)
    for oid, i in accepted.items():
        status, body = last.get(oid, (None, None))
        assert oid in final, (
            f"checkout {i} was accepted as {oid}, but after {SETTLE_S:.0f} s in which no "
            f"order finished, GET /orders/{oid} still answers {status} {body!r}: it must come to 'completed' or "
            f"'compensated'")
    return final


def _stuck(kind: str, error: str) -> str:
    if kind == "orchestrator":
        return (f"the orchestrator cannot start a saga from your event: {error} (the event's "
                f"value must carry order_id, cart_id and customer_id)")
    return (f"the checkout cannot record a saga's outcome: {error} (each order needs its "
            f"status, created with shop.statuses.accept() in the same transaction)")


async def _check_database(system: LabCheckout, told: list[Told], accepted: dict,
                          final: dict) -> None:
    """What the checkout's database holds: nothing stored is left behind, nothing promised is
    missing, every instance's status endpoint agrees with it, and the participants' ledgers
    agree with the statuses."""
    db = system.db
    try:                                  # what the client saw may run ahead of the database
        await system.wait_done(SETTLE_S)
    except TimeoutError:
        pass                              # some order never finishes: said below, by name
    statuses = dict(await db.fetchall("SELECT request_id, status FROM requests"))
    orders = dict(await db.fetchall("SELECT order_id, status FROM orders"))
    topics = [t for (t,) in await db.fetchall("SELECT DISTINCT topic FROM outbox")]
    assert set(topics) <= {"checkouts"}, (
        f"the outbox holds events for {topics}: the orchestrator reads the 'checkouts' topic")
    for oid, i in accepted.items():
        assert oid in statuses, (f"checkout {i} was accepted as {oid}, which has no status row: "
                                 f"record it with shop.statuses.accept() in the same transaction")
    left = {r: s for r, s in statuses.items() if s not in FINAL}
    assert not left, (
        f"{', '.join(sorted(left))} {'is' if len(left) == 1 else 'are'} in the checkout's "
        f"database ({', '.join(sorted(set(left.values())))}) but never finished: the process "
        f"died after storing the order and before its event was stored (a dual write?)")
    assert set(orders) == set(statuses), (
        f"the orders table and the statuses disagree: orders without a status "
        f"{sorted(set(orders) - set(statuses))[:3]}, statuses without an order "
        f"{sorted(set(statuses) - set(orders))[:3]}; write both, with the same id, in one "
        f"transaction")
    rows = []
    for oid in sorted(statuses):
        for j in range(system.instances):
            target = system.instance_name(j)
            reply = await system.call(target, "GET", f"/orders/{oid}", raw=True)
            body = reply.json() if reply.status == 200 else None
            seen = body.get("status") if isinstance(body, dict) else f"HTTP {reply.status}"
            rows.append({"order": oid, "instance": target, "database says": statuses[oid],
                         "status endpoint says": seen})
            if seen != statuses[oid]:
                raise CaseFailed(
                    f"GET /orders/{oid} on {target} says {seen!r} while the checkout's "
                    f"database says {statuses[oid]!r}: the status endpoint must answer what the "
                    f"database holds", detail=window(rows, len(rows) - 1))
    inv = await system.invariants()
    wrong = {k: n for k, n in inv.items() if k not in ("orders", "completed", "compensated",
                                                        "failed") and n}
    assert not wrong, f"the participants' ledgers disagree with the order statuses: {wrong}"


# -- generated cases ------------------------------------------------------------------------------
def _strategy(points: tuple):
    from hypothesis import strategies as st
    every = [("statement", k) for k in range(1, points[0] + 1)] + \
            [("commit", k) for k in range(1, points[1] + 1)]

    @st.composite
    def params(draw):
        n = draw(st.integers(1, 8))
        out = {"checkouts": n, "clients": draw(st.integers(1, 3)),
               "instances": draw(st.integers(1, 2)), "p": draw(st.sampled_from([0.0, 0.2]))}
        deaths = draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(every),
                                      max_size=2))
        if deaths:
            out["deaths"] = deaths
        if n > 1 and draw(st.booleans()):
            out["restart_after"] = draw(st.integers(1, n - 1))
        return out
    return params()


async def _bounded(coro, seconds: float):
    async with asyncio.timeout(seconds):
        return await coro


def _search(images: dict, points: tuple, seed: int, examples: int, budget_s: float):
    """The smallest failing generated case within the budget (see grading.search)."""
    def attempt(params: dict):
        case = Case("generated", params["checkouts"], seed, params)
        try:
            asyncio.run(_bounded(run_case(images, case, points=points), EXAMPLE_TIMEOUT_S))
        except TimeoutError:
            return AssertionError(f"did not finish within {EXAMPLE_TIMEOUT_S:.0f} s (a hang, "
                                  f"or a loop that never ends?)")
        except Exception as e:              # AssertionError, NotImplementedError, a crash
            return e
        return None

    return search(_strategy(points), attempt, seed=seed, examples=examples, budget_s=budget_s)


async def _generated(solution: dict, case: Case, points: tuple) -> dict:
    seed, examples = case.params["seed"], case.params["examples"]
    found, error, runs = await asyncio.to_thread(
        _search, _images(solution), points, seed, examples, GENERATED_BUDGET_S)
    if found is None:
        return {"generated cases": runs}
    message = (f"not implemented yet: {error}" if isinstance(error, NotImplementedError)
               else str(error) if isinstance(error, AssertionError)
               else f"{type(error).__name__}: {error}")
    raise CaseFailed(
        f"a generated case failed (seed {seed}, {runs} cases run); Hypothesis shrank it to "
        f"{found}:\n  {message}", detail=getattr(error, "detail", ""),
        replay=f"await check(..., only='generated', seed={seed})")


# -- grading --------------------------------------------------------------------------------------
async def profile(solution: dict) -> tuple[int, int]:
    """Statements and commits of one fault-free checkout of the reader's ``accept`` (the
    reference's if the solution fails before it can tell): where the deaths are planned."""
    _images(solution)
    try:
        async with asyncio.timeout(5):
            got = await run_case(solution, Case("profile", 1, 0, {"checkouts": 2}))
        counts = list(got["plans"].values())
        statements, commits = max(s for s, _ in counts), max(c for _, c in counts)
        return (statements, commits) if statements and commits else DEFAULT_POINTS
    except Exception:
        return DEFAULT_POINTS


async def check(*, accept, order_status, only: str | None = None,
                stop_after: int | None = None, seed: int = GENERATED_SEED) -> Report:
    """Grade the two handlers: ``await check(accept=..., order_status=...)``. ``only`` replays
    one case by name; ``seed`` seeds the generated cases (the report prints it)."""
    v.async_function("accept", accept)
    v.async_function("order_status", order_status)
    if only is not None:
        v.one_of("only", only, [c.name for c in CASES])
    v.optional(v.number, "stop_after", stop_after, low=1, high=len(CASES), integer=True)
    v.number("seed", seed, low=0, high=2**32 - 1, integer=True)
    solution = {"accept": accept, "order_status": order_status}
    points = await profile(solution)
    cases = [Case(c.name, c.size, seed, {**c.params, "seed": seed}, c.timing)
             if c.name == "generated" else c for c in CASES]

    async def run(sol, case):
        await run_case(sol, case, points=points)

    return await grade(LAB, cases, run, solution, only=only, stop_after=stop_after,
                       timeout=GENERATED_BUDGET_S + EXAMPLE_TIMEOUT_S + 5,
                       replay="await check(..., only={name!r})")
