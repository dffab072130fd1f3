"""Lab 4, Synchronous communication everywhere: make checkout answer at once, through an outbox.

The checkout of chapter 4's "before" design (:func:`toylib.chapters.ch04_sync.sync_checkout`) holds the
client while cart, customer, payment, inventory and shipping answer in turn (50 + 30 + 200 +
100 + 150 ms). The reader writes the two handlers of the "after" design's checkout service
(see labs/ch04_sync_lab.ipynb)::

    async def accept(shop, request)        # POST /checkout {"cart_id": 3, "customer_id": 4}
    async def order_status(shop, request)  # GET /orders/{id}

``accept`` stores, in ONE local transaction of ``shop.db``, the request's status
(``shop.statuses.accept()``, which returns the order id), the ``orders`` row and a
``checkouts`` event (``shop.outbox.emit``), and answers 202 with ``{"order_id": ...}``.
Everything else is chapter 4's (:class:`toylib.chapters.ch04_sync.AsyncCheckout`): the relay, the saga
orchestrator that drives the five participants, and the consumer that updates the status.
``order_status`` answers the status (``shop.statuses.get(id)``), or 404 for an unknown id.

``check`` measures, with the seed's delays injected, that the answer comes back well before the
chain would (a ratio with a margin, never an absolute time); polls the reader's status endpoint
until every accepted order is completed or compensated; and kills the checkout's process at
every statement of ``accept`` and right after its commit, then reads the checkout's database:
an order that was stored is never lost (its outbox row survives and is relayed), and an order
the client was told about was stored. The participants' ledgers must agree with the statuses.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
from collections import Counter
from dataclasses import dataclass

from aiohttp import web

from toylib.chapters import ch04_sync as checkout
from toylib.data.bus import EventBus
from toylib.data.db import Database
from toylib.labs.grading import Case, Report, grade
from toylib.data.outbox import Outbox
from toylib.core.services import CallError, Service
from toylib.core.clock import now
from toylib.data.status import StatusStore
from toylib.labs.faults import Crash, mortal_database

LAB = "Lab 4 (synchronous everywhere)"
CHAIN_MS = sum(checkout.CHAIN.values())       # 530 ms: what the client waited for before
MIN_SPEEDUP = 5.0                             # answer at least 5x sooner than the chain
SETTLE_S = 3.0                                # time for every order to reach its final status
STATEMENT_DEATHS = 6
GIVE_UP_AFTER = 10                            # failures of one of chapter 4's consumers


@dataclass
class Shop:
    """What the checkout's handlers can use."""
    db: Database              # the checkout's own database: orders, requests (statuses), outbox
    outbox: Outbox            # the outbox table in that database; a relay publishes it
    statuses: StatusStore     # request statuses in that database (accept, get)
    service: Service          # the checkout service: service.call(...) reaches the others
    bus: EventBus             # the event bus the relay publishes to


def _cases() -> list[Case]:
    cases = [
        Case("one-checkout", 1, 1, {"checkouts": 1}),
        Case("status-of-an-unknown-order", 1, 2, {"checkouts": 1, "unknown": True}),
        Case("answers-before-the-chain", 3, 3, {"checkouts": 3, "scale": 1.0}),
        Case("dies-right-after-commit", 4, 4, {"checkouts": 3, "deaths": {1: "commit"}}),
    ]
    for k in range(1, STATEMENT_DEATHS + 1):
        cases.append(Case(f"dies-at-statement-{k}", 4, 10 + k,
                          {"checkouts": 3, "deaths": {1: k}}))
    cases.append(Case("transient-failures-20", 20, 20,
                      {"checkouts": 20, "clients": 5, "p": 0.2}))
    rng = random.Random(30)
    deaths = {i: rng.choice(["commit", *range(1, STATEMENT_DEATHS + 1)])
              for i in rng.sample(range(30), 4)}
    cases.append(Case("busy-30", 30, 30, {"checkouts": 30, "clients": 10, "p": 0.2,
                                          "deaths": deaths}))
    return cases


CASES = _cases()


class LabCheckout(checkout.AsyncCheckout):
    """Chapter 4's after design with the reader's two handlers in its checkout service, and a
    checkout database whose process the checker can kill."""

    def __init__(self, k: checkout.Knobs, solution: dict, deaths: dict):
        self.solution, self.deaths = solution, deaths
        self.todo: NotImplementedError | None = None
        self.orchestrator_error = self.status_error = ""
        self.errors: Counter = Counter()      # failures of chapter 4's consumers, by kind
        super().__init__(k)

    def nodes(self):
        return [self._lab_checkout() if n.name == "checkout" else n for n in super().nodes()]

    def _lab_checkout(self) -> Service:
        svc = Service("checkout", label="Checkout Service", uses=("checkout_db",))
        c = self

        def shop() -> Shop:
            return Shop(c.db, c.outbox, c.statuses_store, svc, c.bus)

        @svc.post("/checkout")
        async def accept(request):
            death = c.deaths.get(int(request.headers.get("X-Lab-Checkout", "-1")))
            doom = c.db.doom(at=None if death in (None, "commit") else death,
                             after_commit=death == "commit")
            try:
                async with doom:
                    return await c.solution["accept"](shop(), request)
            except Crash as e:
                return web.json_response({"error": str(e)}, status=500)
            except NotImplementedError as e:
                c.todo = c.todo or e
                return web.json_response({"error": "not implemented"}, status=500)

        @svc.get("/orders/{id}")
        async def status(request):
            try:
                return await c.solution["order_status"](shop(), request)
            except NotImplementedError as e:
                c.todo = c.todo or e
                return web.json_response({"error": "not implemented"}, status=500)

        return svc

    async def checkout_database(self):
        # The checkout's database is a mortal one: the checker can kill its process.
        return await mortal_database(self.ws, "checkout_lab", wal=True, synchronous="off")

    async def _on_checkout(self, event) -> None:
        """Chapter 4's, tolerating an event without the trace id it uses for diagrams."""
        try:
            if isinstance(event.value, dict) and "trace_id" not in event.value:
                event = dataclasses.replace(event, value={**event.value, "trace_id": None})
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
async def run_case(solution: dict, case: Case) -> dict:
    """Run one case; raise AssertionError on a broken rule, else return what happened (deaths,
    response times, outcomes): the tests check each case exercises what it says."""
    p = case.params
    # One try per call, so transient failures do compensate some orders; after the pivot the
    # orchestrator tries 12 times, so no order is left stuck (0.2 ** 12: never, in practice).
    k = checkout.Knobs(scale=p.get("scale", 0.0), p=p.get("p", 0.0), attempts=1,
                       saga_attempts=12, backoff_ms=1, seed=case.seed)
    async with LabCheckout(k, solution, p.get("deaths", {})) as system:
        answers = await _place(system, p["checkouts"], p.get("clients", 1))
        if system.todo:
            raise system.todo
        sync = [s for s in system.topology.tracer.spans
                if s.caller == "checkout" and s.callee in checkout.CHAIN]
        assert not sync, (f"the checkout called {sync[0].callee} ({sync[0].method} "
                          f"{sync[0].path}) while the client waited: store the order and its "
                          f"event, and let the saga make the calls")
        accepted = _accepted(answers, p.get("deaths", {}))
        if "scale" in p:
            _check_speed(answers)
        if p.get("unknown"):
            await _check_unknown(system)
        final = await _settle(system, accepted)
        if system.todo:
            raise system.todo
        await _check_database(system, accepted, final)
        inv = await system.invariants()
        deaths = system.db.deaths
    return {"answered": len(answers), "accepted": len(accepted),
            "deaths": deaths,
            "completed": sum(s == "completed" for s in final.values()),
            "compensated": sum(s == "compensated" for s in final.values()),
            "median response ms": statistics.median(a[2] for a in answers),
            "invariants": inv}


async def _place(system: LabCheckout, n: int, clients: int) -> list[tuple]:
    """``n`` checkouts from ``clients`` concurrent clients: (i, status, ms, body) each."""
    queue = list(range(n))
    answers = []

    async def client():
        while queue:
            i = queue.pop(0)
            t0 = now()
            try:
                reply = await system.topology.call(
                    "checkout", "POST", "/checkout", json=checkout.request_for(i), raw=True,
                    headers={"X-Lab-Checkout": str(i)}, timeout=4)
            except CallError as e:
                raise AssertionError(f"checkout {i} got no answer: {e}") from None
            ms = (now() - t0) * 1000
            try:
                body = reply.json()
            except ValueError:
                body = {"error": reply.body.decode(errors="replace")[:200]}
            answers.append((i, reply.status, ms, body))

    await asyncio.gather(*(client() for _ in range(clients)))
    return sorted(answers)


def _accepted(answers: list[tuple], deaths: dict) -> dict:
    """Order id -> checkout number, for every checkout answered 202."""
    accepted = {}
    for i, status, _, body in answers:
        if i in deaths and status == 500 and "died" in str((body or {}).get("error", "")):
            continue                                  # the process died: the client saw it
        assert status == 202, (f"checkout {i} was answered {status}, not 202 Accepted: "
                               f"{(body or {}).get('error', body)}")
        oid = body.get("order_id") if isinstance(body, dict) else None
        assert isinstance(oid, str) and oid, (
            f"checkout {i} was answered 202 with {body!r}: the answer must carry the order's "
            f"id as 'order_id', for the client to poll")
        accepted[oid] = i
    return accepted


def _check_speed(answers: list[tuple]) -> None:
    median = statistics.median(ms for _, _, ms, _ in answers)
    assert median * MIN_SPEEDUP <= CHAIN_MS, (
        f"the checkout answered in {median:.0f} ms (median of {len(answers)}), the chain of "
        f"five calls takes {CHAIN_MS:.0f} ms: it must answer at least {MIN_SPEEDUP:.0f}x sooner, "
        f"as soon as the order and its event are stored, without waiting for the saga")


async def _check_unknown(system: LabCheckout) -> None:
    reply = await system.topology.call("checkout", "GET", "/orders/no-such-order", raw=True)
    assert reply.status == 404, (f"GET /orders/no-such-order answered {reply.status}: an "
                                 f"unknown id must be answered 404 Not Found")


async def _settle(system: LabCheckout, accepted: dict) -> dict:
    """Poll the reader's status endpoint for every accepted order until it is final."""
    final, last = {}, {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S + (1.0 if system.knobs.scale else 0.0)
    while len(final) < len(accepted) and loop.time() < deadline:
        for oid, i in accepted.items():
            if oid in final:
                continue
            reply = await system.topology.call("checkout", "GET", f"/orders/{oid}", raw=True)
            try:
                body = reply.json()
            except ValueError:
                body = None
            last[oid] = (reply.status, body)
            assert reply.status != 404, (
                f"checkout {i} was answered 202 as {oid}, but GET /orders/{oid} answers 404: "
                f"store its status (shop.statuses.accept()) with the order, and answer only "
                f"once that transaction has committed")
            if reply.status == 200 and isinstance(body, dict) and \
                    body.get("status") in ("completed", "compensated", "failed"):
                final[oid] = body["status"]
        for kind, error in (("orchestrator", system.orchestrator_error),
                            ("status", system.status_error)):
            assert system.errors[kind] < GIVE_UP_AFTER, _stuck(kind, error)
        await asyncio.sleep(0.01)
    for oid, i in accepted.items():
        status, body = last.get(oid, (None, None))
        assert oid in final, (
            f"checkout {i} was accepted as {oid}, but after {SETTLE_S:.0f} s GET "
            f"/orders/{oid} still answers {status} {body!r}: it must come to 'completed' "
            f"or 'compensated'")
        assert final[oid] in ("completed", "compensated"), (
            f"{oid} ended {final[oid]!r}: with these faults every order is completed or "
            f"compensated")
    return final


def _stuck(kind: str, error: str) -> str:
    if kind == "orchestrator":
        return (f"the orchestrator cannot start a saga from your event: {error} (the event's "
                f"value must carry order_id, cart_id and customer_id)")
    return (f"the checkout cannot record a saga's outcome: {error} (each order needs its "
            f"status, created with shop.statuses.accept() in the same transaction)")


async def _check_database(system: LabCheckout, accepted: dict, final: dict) -> None:
    """What the checkout's database holds: nothing stored is left behind, nothing promised is
    missing, and the participants' ledgers agree with the statuses."""
    db = system.db
    statuses = dict(await db.fetchall("SELECT request_id, status FROM requests"))
    orders = dict(await db.fetchall("SELECT order_id, status FROM orders"))
    topics = [t for (t,) in await db.fetchall("SELECT DISTINCT topic FROM outbox")]
    assert set(topics) <= {"checkouts"}, (
        f"the outbox holds events for {topics}: the orchestrator reads the 'checkouts' topic")
    for oid in accepted:
        assert oid in statuses, (f"{oid} was accepted but has no status row: record it with "
                                 f"shop.statuses.accept() in the same transaction")
    left = {r: s for r, s in statuses.items() if s not in ("completed", "compensated")}
    assert not left, (
        f"{', '.join(sorted(left))} {'is' if len(left) == 1 else 'are'} in the checkout's "
        f"database ({', '.join(sorted(set(left.values())))}) but never finished: the process "
        f"died after storing the order and before its event was stored (a dual write?)")
    assert set(orders) == set(statuses), (
        f"the orders table and the statuses disagree: orders without a status "
        f"{sorted(set(orders) - set(statuses))[:3]}, statuses without an order "
        f"{sorted(set(statuses) - set(orders))[:3]}; write both, with the same id, in one "
        f"transaction")
    inv = await system.invariants()
    wrong = {k: n for k, n in inv.items() if k not in ("orders", "completed", "compensated",
                                                        "failed") and n}
    assert not wrong, f"the participants' ledgers disagree with the order statuses: {wrong}"


async def _run(solution: dict, case: Case) -> None:
    await run_case(solution, case)


async def check(*, accept, order_status, only: str | None = None,
                stop_after: int | None = None) -> Report:
    """Grade the two handlers: ``await check(accept=..., order_status=...)``."""
    for name, fn in (("accept", accept), ("order_status", order_status)):
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"{name} must be an async function (async def); got {fn!r}")
    solution = {"accept": accept, "order_status": order_status}
    return await grade(LAB, CASES, _run, solution, only=only, stop_after=stop_after)
