"""Chapter 4, Synchronous communication everywhere: a checkout that holds the client for five
services, and one that answers at once.

* **Before** (:class:`SyncCheckout`): the checkout calls cart (50 ms), customer (30 ms),
  payment (200 ms), inventory (100 ms) and shipping (150 ms) one after another, as the seed
  draws it, and answers when the last one has. The client waits 530 ms, and the order succeeds
  only if all five calls do. Nothing undoes a charge when a later call fails.
* **After** (:class:`AsyncCheckout`): the checkout stores the order, its status and an outbox
  event in one local transaction and answers ``202 Accepted`` with an id to poll. A relay
  publishes the event; the saga orchestrator (:mod:`toylib.data.saga`) drives cart, customer,
  inventory, payment and shipping with a retry handler (:mod:`toylib.resilience.retry`, and the saga's
  own retries after the pivot) and a compensation handler (refund, release, in reverse
  order); each saga status goes back to the checkout as an event, which updates the status
  the client polls.

Every participant honours an idempotency key, the same on every try, so a retried command is
applied once. The participants keep their ledgers in memory: this chapter is about who waits
for whom, not about storage (chapter 1 gives every service its own database).
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pandas as pd
from aiohttp import web

from toylib.core import validate as v
from toylib.core import load
from toylib.resilience import retry
from toylib.core import trace as tr
from toylib.data.bus import EventBus
from toylib.data.db import Database
from toylib.chapters.design import Experiment
from toylib.core.faults import Error, Latency
from toylib.data.outbox import IdempotentConsumer, Outbox
from toylib.data.saga import TERMINAL as SAGA_TERMINAL
from toylib.data.saga import SagaDefinition, SagaOrchestrator, Step
from toylib.core.services import CallError, Node, Service, Store, Topology
from toylib.core.clock import now
from toylib.data.status import FROM_SAGA, TERMINAL, StatusStore, UnknownRequest

CHAIN = {"cart": 50.0, "customer": 30.0, "payment": 200.0, "inventory": 100.0,
         "shipping": 150.0}                      # the seed's chain: order and latency (ms)
KEY = "Idempotency-Key"
ORDERS = ("CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, cart_id INTEGER, "
          "customer_id INTEGER, status TEXT NOT NULL, created_at REAL NOT NULL);")


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated once."""
    scale: float = 1.0          # multiplies the seed's latencies (0: no injected delay)
    p: float = 0.0              # each call to a participant fails (503) with probability p
    attempts: int = 1           # tries per call, the first included (1: no retry)
    saga_attempts: int = 5      # after the pivot, the orchestrator's tries of a step
    backoff_ms: float = 20.0    # base of the full-jitter backoff between tries
    workers: int | None = None  # the checkout's pool of workers (None: unbounded)
    partitions: int = 4
    seed: int = 0

    def __post_init__(self):
        v.number("scale", self.scale, low=0, high=10)
        v.probability("p", self.p)
        v.number("attempts", self.attempts, low=1, high=10, integer=True)
        v.number("saga_attempts", self.saga_attempts, low=1, high=20, integer=True)
        v.number("backoff_ms", self.backoff_ms, low=0, low_open=True, high=10_000)
        v.optional(v.positive, "workers", self.workers, integer=True)
        v.number("partitions", self.partitions, low=1, high=64, integer=True)
        v.number("seed", self.seed, integer=True)

    def latency_ms(self, service: str) -> float:
        return CHAIN[v.one_of("service", service, CHAIN)] * self.scale


def request_for(i: int) -> dict:
    """Checkout ``i``'s body: the same cart and customer in both designs."""
    v.non_negative("i", i, integer=True)
    return {"cart_id": i, "customer_id": 1 + i % 50}


async def call(caller: Service, target: str, method: str, path: str, k: Knobs, *,
               key: str | None = None, json=None):
    """One remote call, tried up to ``k.attempts`` times with full-jitter backoff.

    The idempotency key is the same on every try, so a participant applies a command once
    even if an earlier try did reach it. The jitter is seeded by the key: a run replays.
    """
    rng = random.Random(f"{k.seed}|{caller.name}|{target}|{key or path}")
    headers = {KEY: key} if key else None
    return await retry.retry(
        lambda: caller.call(target, method, path, json=json, headers=headers),
        attempts=k.attempts, policy="full", base=k.backoff_ms / 1000, cap=1.0,
        retry_on=(CallError,), rng=rng)


# -- the five participants, the same in both designs ----------------------------------------------
class Participants:
    """Cart, customer, payment, inventory and shipping, and what they did (for the invariants).

    A command (charge, refund, reserve, release, label) carries an idempotency key; a
    participant that has seen the key answers what it answered the first time.
    """

    def __init__(self, k: Knobs):
        self.k = k
        self.charged: dict[str, float] = {}
        self.refunded: set[str] = set()
        self.reserved: dict[str, list] = {}
        self.released: set[str] = set()
        self.labels: dict[str, str] = {}
        self.applied: Counter = Counter()     # (command, order id) -> times applied
        self.replays: Counter = Counter()     # command -> answers replayed for a known key
        self._replies: dict[str, dict] = {}
        self.services = self._build()

    async def _once(self, request, command: str, apply) -> dict:
        key = request.headers.get(KEY)
        if not key:
            return web.json_response({"error": f"{KEY} header required"}, status=400)
        if key in self._replies:
            self.replays[command] += 1
            return self._replies[key]
        body = await request.json()
        self.applied[command, body["order_id"]] += 1
        self._replies[key] = reply = apply(body)
        return reply

    def _build(self) -> list[Service]:
        cart, customer, payment, inventory, shipping = (
            Service(name, label=f"{name.title()} Service") for name in CHAIN)

        @cart.get(r"/carts/{id:\d+}")
        async def get_cart(request):
            cid = int(request.match_info["id"])
            return {"cart_id": cid, "items": [{"sku": f"sku-{cid % 7}", "qty": 1 + cid % 2}],
                    "amount": 20.0 + 10 * (cid % 5)}

        @customer.get(r"/customers/{id:\d+}")
        async def get_customer(request):
            cid = int(request.match_info["id"])
            return {"id": cid, "address": f"{cid} Main Street"}

        @payment.post("/charges")
        async def charge(request):
            def apply(b):
                self.charged[b["order_id"]] = b["amount"]
                return {"charge_id": f"ch-{b['order_id']}"}
            return await self._once(request, "charge", apply)

        @payment.post("/refunds")
        async def refund(request):          # tolerates "nothing to undo"
            def apply(b):
                done = b["order_id"] in self.charged and b["order_id"] not in self.refunded
                if done:
                    self.refunded.add(b["order_id"])
                return {"refunded": done}
            return await self._once(request, "refund", apply)

        @inventory.post("/reservations")
        async def reserve(request):
            def apply(b):
                self.reserved[b["order_id"]] = b["items"]
                return {"reservation_id": f"rs-{b['order_id']}"}
            return await self._once(request, "reserve", apply)

        @inventory.post("/releases")
        async def release(request):
            def apply(b):
                done = b["order_id"] in self.reserved and b["order_id"] not in self.released
                if done:
                    self.released.add(b["order_id"])
                return {"released": done}
            return await self._once(request, "release", apply)

        @shipping.post("/labels")
        async def label(request):
            def apply(b):
                self.labels[b["order_id"]] = f"LBL-{b['order_id']}"
                return {"label": self.labels[b["order_id"]]}
            return await self._once(request, "label", apply)

        services = [cart, customer, payment, inventory, shipping]
        for s in services:
            if self.k.scale:
                s.faults.add(Latency(self.k.latency_ms(s.name)))
            if self.k.p:
                s.faults.add(Error(self.k.p, 503))
        return services

    def invariants(self, status: dict) -> dict:
        """Given each order's final status, what the participants' ledgers say."""
        kept = {o for o in self.charged if o not in self.refunded}
        held = {o for o in self.reserved if o not in self.released}
        return {
            "charged, order not completed": sum(status.get(o) != "completed" for o in kept),
            "stock held, order not completed": sum(status.get(o) != "completed" for o in held),
            "completed, not charged": sum(s == "completed" and o not in kept
                                          for o, s in status.items()),
            "completed, no label": sum(s == "completed" and o not in self.labels
                                       for o, s in status.items()),
            "commands applied twice": sum(n > 1 for n in self.applied.values()),
        }


# -- both designs: a workspace, a topology, a scope -----------------------------------------------
class _Design(Experiment):
    prefix = "checkout"

    def __init__(self, k: Knobs | None = None):
        if k is not None and not isinstance(k, Knobs):
            raise TypeError(f"k must be a checkout.Knobs or None; got {k!r}")
        self.k = k or Knobs()
        self.participants = Participants(self.k)
        self.db: Database | None = None
        super().__init__(Topology(*self._nodes(), name=f"checkout: {self.design}",
                                  seed=self.k.seed))

    def _nodes(self) -> list[Node]:
        raise NotImplementedError

    async def _on_workspace(self) -> None:
        self.db = await self.ws.database("checkout")
        await self.db.executescript(ORDERS)

    async def place(self, i: int, *, trace_id: str | None = None) -> dict:
        """Send checkout ``i`` (see :func:`request_for`); the checkout's answer."""
        return await self.topology.call("checkout", "POST", "/checkout", json=request_for(i),
                                        trace_id=trace_id)

    async def wait_done(self, timeout: float = 30.0) -> None:
        """Wait until every order has its final status (before: as soon as it answered)."""

    async def statuses(self) -> dict:
        return dict(await self.db.fetchall("SELECT order_id, status FROM orders"))

    async def invariants(self) -> dict:
        status = await self.statuses()
        counts = Counter(status.values())
        return {"orders": len(status), **{s: counts.get(s, 0) for s in
                                          ("completed", "compensated", "failed")},
                **self.participants.invariants(status)}


class SyncCheckout(_Design):
    """Before: the checkout answers when all five services have."""
    design = "before"

    def _nodes(self) -> list[Node]:
        return [Node("client", "edge", label="Client", uses=("checkout",), shape="client"),
                sync_checkout(self), *self.participants.services,
                Store("checkout_db", label="Checkout DB")]


def sync_checkout(c: SyncCheckout) -> Service:
    checkout = Service("checkout", label="Checkout Service", uses=(*CHAIN, "checkout_db"),
                       max_concurrency=c.k.workers)

    @checkout.post("/checkout")
    async def handle(request):
        b, k = await request.json(), c.k
        async with c.db.transaction():
            (n,) = await c.db.fetchone("SELECT COUNT(*) FROM orders")
            order_id = f"order-{n + 1}"
            await c.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'pending', ?)",
                               (order_id, b["cart_id"], b["customer_id"], now()))
        try:                            # five calls, each waiting for the one before
            cart = await call(checkout, "cart", "GET", f"/carts/{b['cart_id']}", k)
            who = await call(checkout, "customer", "GET", f"/customers/{b['customer_id']}", k)
            await call(checkout, "payment", "POST", "/charges", k, key=f"{order_id}:payment",
                       json={"order_id": order_id, "amount": cart["amount"]})
            await call(checkout, "inventory", "POST", "/reservations", k,
                       key=f"{order_id}:inventory",
                       json={"order_id": order_id, "items": cart["items"]})
            label = await call(checkout, "shipping", "POST", "/labels", k,
                               key=f"{order_id}:shipping",
                               json={"order_id": order_id, "address": who["address"]})
        except CallError:               # nothing undoes what the earlier calls did
            await c.db.execute("UPDATE orders SET status = 'failed' WHERE order_id = ?",
                               (order_id,))
            raise
        await c.db.execute("UPDATE orders SET status = 'completed' WHERE order_id = ?",
                           (order_id,))
        return web.json_response({"order_id": order_id, "status": "completed",
                                  "label": label["label"]}, status=201)

    return checkout


# -- after: accept, then a saga -------------------------------------------------------------------
def accepting_checkout(c: AsyncCheckout) -> Service:
    """Store the order, its status and its event in one transaction; answer 202 at once."""
    checkout = Service("checkout", label="Checkout Service", uses=("checkout_db",),
                       max_concurrency=c.k.workers)

    @checkout.post("/checkout")
    async def accept(request):
        b, ctx = await request.json(), tr.current.get()
        async with c.db.transaction():              # all three commit, or none does
            order_id = await c.statuses_store.accept()
            await c.db.execute("INSERT INTO orders VALUES (?, ?, ?, 'accepted', ?)",
                               (order_id, b["cart_id"], b["customer_id"], now()))
            await c.outbox.emit("checkouts", order_id, {
                **b, "order_id": order_id, "trace_id": ctx[0] if ctx else None})
        return web.json_response({"order_id": order_id, "status": "accepted",
                                  "poll": f"/orders/{order_id}"}, status=202)

    @checkout.get("/orders/{id}")
    async def poll(request):
        try:
            return await c.statuses_store.get(request.match_info["id"])
        except UnknownRequest as e:
            return web.json_response({"error": str(e)}, status=404)

    return checkout


def checkout_saga(c: AsyncCheckout) -> SagaDefinition:
    """Reads first, then the compensatable reservation, the payment as the pivot, and the
    shipping label, which after the pivot is retried until it succeeds."""
    orch, k = c.topology.service("orchestrator"), c.k

    async def load_cart(ctx, key):
        cart = await call(orch, "cart", "GET", f"/carts/{ctx['cart_id']}", k, key=key)
        return {"amount": cart["amount"], "items": cart["items"]}

    async def load_customer(ctx, key):
        who = await call(orch, "customer", "GET", f"/customers/{ctx['customer_id']}", k, key=key)
        return {"address": who["address"]}

    async def reserve(ctx, key):
        await call(orch, "inventory", "POST", "/reservations", k, key=key,
                   json={"order_id": ctx["order_id"], "items": ctx["items"]})

    async def release(ctx, key):
        await call(orch, "inventory", "POST", "/releases", k, key=key,
                   json={"order_id": ctx["order_id"]})

    async def charge(ctx, key):
        await call(orch, "payment", "POST", "/charges", k, key=key,
                   json={"order_id": ctx["order_id"], "amount": ctx["amount"]})

    async def refund(ctx, key):          # also when the charge failed: it may have happened
        await call(orch, "payment", "POST", "/refunds", k, key=key,
                   json={"order_id": ctx["order_id"]})

    async def ship(ctx, key):
        r = await call(orch, "shipping", "POST", "/labels", k, key=key,
                       json={"order_id": ctx["order_id"], "address": ctx["address"]})
        return {"label": r["label"]}

    async def nothing_to_undo(ctx, key):
        return None

    return SagaDefinition("checkout", [
        Step("cart", load_cart, nothing_to_undo), Step("customer", load_customer, nothing_to_undo),
        Step("inventory", reserve, release), Step("payment", charge, refund, pivot=True),
        Step("shipping", ship)])


class AsyncCheckout(_Design):
    """After: accept at once; a saga orchestrator finishes the work and reports back."""
    design = "after"

    def __init__(self, k: Knobs | None = None):
        super().__init__(k)
        self.bus: EventBus | None = None
        self.outbox: Outbox | None = None
        self.statuses_store: StatusStore | None = None
        self.orchestrator: SagaOrchestrator | None = None
        self._open_spans: dict[str, tuple] = {}

    def _nodes(self) -> list[Node]:
        orch = Service("orchestrator", "control", label="Saga Orchestrator",
                       uses=(*CHAIN, "saga_log", "retry", "compensation", "status_events"))
        return [Node("client", "edge", label="Client (polls its order)", uses=("checkout",),
                     shape="client"),
                accepting_checkout(self), orch, *self.participants.services,
                Store("checkout_db", label="Checkout DB: order + outbox + status",
                      uses=("checkout_events",)),
                Node("checkout_events", "state", label="checkouts topic", shape="queue",
                     uses=("orchestrator",)),
                Node("status_events", "state", label="checkout-status topic", shape="queue",
                     uses=("checkout",)),
                Store("saga_log", label="Saga log"),
                Node("retry", "control", label="Retry handler: backoff + idempotency key"),
                Node("compensation", "control", label="Compensation handler: reverse order")]

    async def _open(self) -> None:
        self.statuses_store = await StatusStore(self.db, prefix="order", clock=now).setup()
        self.outbox = await Outbox(self.db, source="checkout", clock=now).setup()
        self._saga_db = await self.ws.database("saga")

    async def _start(self, stack: AsyncExitStack) -> None:
        k = self.k
        self.bus = EventBus(clock=now)
        self.bus.create_topic("checkouts", partitions=k.partitions)
        self.bus.create_topic("checkout-status", partitions=k.partitions)
        await stack.enter_async_context(self.outbox.relay(self.bus, interval=0.005))
        self.orchestrator = await stack.enter_async_context(SagaOrchestrator(
            self._saga_db, checkout_saga(self), max_attempts=k.saga_attempts,
            base_delay=k.backoff_ms / 1000, max_delay=1.0, seed=k.seed, clock=now,
            on_status=self._on_status))
        status = await IdempotentConsumer(self.db, "checkout-status", self._status_changed,
                                          clock=now).setup()
        await stack.enter_async_context(self.bus.consumer_group(
            "checkout-status", "checkout", status, retry_delay=0.01))
        await stack.enter_async_context(self.bus.consumer_group(
            "checkouts", "orchestrator", self._on_checkout, retry_delay=0.01))

    async def _on_checkout(self, event) -> None:
        """Start the order's saga (idempotent on its id, so a redelivery is harmless).

        The saga's calls join the checkout's trace under one span standing for the event, so
        the sequence diagram shows the whole order: from the event's delivery to the saga's
        end (the time to completion, less the relay's short wait)."""
        e = event.value
        span_id = self.topology.tracer.new_span_id()
        self._open_spans.setdefault(e["order_id"], (e["trace_id"], span_id, now()))
        token = tr.current.set((e["trace_id"], span_id) if e["trace_id"] else None)
        try:
            await self.orchestrator.start("checkout", {k: e[k] for k in
                                                       ("order_id", "cart_id", "customer_id")},
                                          saga_id=e["order_id"])
        finally:
            tr.current.reset(token)

    async def _on_status(self, saga_id: str, status: str) -> None:
        await self.bus.publish("checkout-status", saga_id, {"order_id": saga_id,
                                                            "saga_status": status})
        span = self._open_spans.pop(saga_id, None) if status in SAGA_TERMINAL else None
        if span and span[0]:
            trace_id, span_id, t_delivered = span
            self.topology.tracer.record(tr.Span(
                trace_id, span_id, None, "checkout", "orchestrator", "EVENT", "checkouts",
                "checkouts", t_delivered, now(), status, 0, 0, 0))

    async def _status_changed(self, db: Database, event) -> None:
        """The checkout's side: what the client will see when it polls."""
        order_id, new = event.value["order_id"], FROM_SAGA.get(event.value["saga_status"])
        if new is None or await self.statuses_store.status(order_id) == new:
            return                      # "compensating" is not shown; a repeat changes nothing
        await self.statuses_store.set(order_id, new)
        await db.execute("UPDATE orders SET status = ? WHERE order_id = ?", (new, order_id))

    async def wait_done(self, timeout: float = 30.0) -> None:
        v.positive("timeout", timeout)
        terminal = tuple(TERMINAL)
        async with asyncio.timeout(timeout):
            while (await self.db.fetchone(
                    f"SELECT COUNT(*) FROM requests WHERE status NOT IN "
                    f"({', '.join('?' * len(terminal))})", terminal))[0]:
                await asyncio.sleep(0.01)

    async def poll(self, order_id: str, *, interval: float = 0.02,
                   timeout: float = 10.0) -> tuple[dict, int]:
        """What a client does: GET the status until it is final; (last answer, polls)."""
        v.positive("interval", interval)
        polls = 0
        async with asyncio.timeout(timeout):
            while True:
                polls += 1
                answer = await self.topology.call("checkout", "GET", f"/orders/{order_id}")
                if answer["terminal"]:
                    return answer, polls
                await asyncio.sleep(interval)

    async def done_at(self) -> pd.Series:
        """When each order reached its final status (seconds on toylib.core.clock.now)."""
        hist = await self.statuses_store.history()
        final = hist[hist.status.isin(TERMINAL)]
        return final.groupby("request_id")["t"].max()


def before(k: Knobs | None = None) -> SyncCheckout:
    return SyncCheckout(k)


def after(k: Knobs | None = None) -> AsyncCheckout:
    return AsyncCheckout(k)


DESIGNS = {"before": before, "after": after}


# -- the analytic figures -------------------------------------------------------------------------
def ideal(k: Knobs) -> dict:
    """What the injected delays and failure probabilities alone would give."""
    chain = sum(k.latency_ms(s) for s in CHAIN)
    p, a, m = k.p, k.attempts, k.saga_attempts
    return {"response_before_ms": chain,             # the client waits for all five
            "response_after_ms": 0.0,                # one local transaction, no injected delay
            "completion_after_ms": chain,            # the saga still calls all five in turn
            "success_before": (1 - p ** a) ** len(CHAIN),
            # four steps up to the pivot get `a` tries; shipping gets `a` tries `m` times
            "success_after": (1 - p ** a) ** (len(CHAIN) - 1) * (1 - p ** (a * m)),
            "accepted_after": 1.0,
            "throughput_before_rps": (k.workers / (chain / 1000)
                                      if k.workers and chain else float("nan"))}


# -- the chapter's experiments --------------------------------------------------------------------
def _design(design: str):
    return DESIGNS[v.one_of("design", design, DESIGNS)]


async def _run(system: _Design, n: int, concurrency: int, first: int) -> load.LoadResult:
    async def one(i):
        t_sent = now()
        answer = await system.place(first + i, trace_id=f"checkout-{first + i}")
        return {"order_id": answer["order_id"], "t_sent": t_sent}

    if concurrency == 1:
        return await load.sequential(one, n=n, progress=False, label=system.design)
    return await load.closed_loop(one, n=n, concurrency=concurrency, progress=False,
                                  label=system.design)


async def checkouts(design: str, k: Knobs, *, n: int, concurrency: int = 1,
                    first: int = 0) -> tuple[load.LoadResult, dict]:
    """``n`` checkouts (``concurrency`` clients), then the outcome of every order.

    The load's ``latency_ms`` is the response time; ``completion_ms`` is the time until the
    order's final status (before: the response; after: the status the client would poll).
    Returns the load result and the invariants (:meth:`Participants.invariants`), with
    ``elapsed_s``, the time until the last order was final.
    """
    build = _design(design)
    v.positive("n", n, integer=True)
    v.positive("concurrency", concurrency, integer=True)
    v.non_negative("first", first, integer=True)
    async with build(k) as system:
        t0 = now()
        res = await _run(system, n, concurrency, first)
        await system.wait_done()
        df = res.df
        if isinstance(system, AsyncCheckout):
            done = await system.done_at()
            df["completion_ms"] = (df["order_id"].map(done) - df["t_sent"]) * 1000
            last = float(done.max()) if len(done) else now()
        else:
            df["completion_ms"] = df["latency_ms"].where(df["ok"])
            last = now()
        inv = await system.invariants()
    inv["elapsed_s"] = last - t0
    return res, inv
