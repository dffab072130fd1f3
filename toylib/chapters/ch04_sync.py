"""Chapter 4, Synchronous communication everywhere: a checkout that holds the client for five
services, and one that answers at once.

* **Before** (:class:`SyncCheckout`): the checkout calls cart (50 ms), customer (30 ms),
  payment (200 ms), inventory (100 ms) and shipping (150 ms) one after another, as the source
  article draws it, and answers when the last one has. The client waits 530 ms, and the order
  succeeds only if all five calls do. Nothing undoes a charge when a later call fails.
* **After** (:class:`AsyncCheckout`): the checkout stores the order, its status and an outbox
  event in one local transaction and answers ``202 Accepted`` with an id to poll. A relay
  publishes the event; the saga orchestrator (:mod:`toylib.data.saga`) drives cart, customer,
  inventory, payment and shipping with a retry handler (:mod:`toylib.resilience.retry`, and
  the saga's own retries after the pivot) and a compensation handler (refund, release, in
  reverse order); each saga status goes back to the checkout as an event, which updates the
  status the client polls.

Every participant honours an idempotency key, the same on every try, so a retried command is
applied once. The participants keep their ledgers in memory: this chapter is about who waits
for whom, not about storage (chapter 1 gives every service its own database).

The chapter follows :mod:`toylib.chapters.design`: :class:`Knobs` -> a :class:`Checkout`
design (``async with``) -> the experiments :func:`response_times`, :func:`success_rates` and
:func:`throughput` (each builds, interleaves and releases both designs) -> :data:`CLAIMS`
judged by :func:`findings`; :func:`audit` is the small run behind every claim, and
:func:`sweep` the grid the static site lets a reader explore.
"""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field, replace

import pandas as pd
from aiohttp import web

from toylib.chapters.design import Design, build
from toylib.claims import Claim, Estimate, Finding
from toylib.core import load
from toylib.core import trace as tr
from toylib.core import validate as v
from toylib.core.calibrate import LoopLag
from toylib.core.clock import now
from toylib.core.faults import Error, Latency
from toylib.core.services import CallError, Node, Service, Store, Topology
from toylib.data.bus import EventBus
from toylib.data.db import Database
from toylib.data.outbox import IdempotentConsumer, Outbox
from toylib.data.saga import TERMINAL as SAGA_TERMINAL
from toylib.data.saga import SagaDefinition, SagaOrchestrator, Step
from toylib.data.status import FROM_SAGA, TERMINAL, StatusStore, UnknownRequest
from toylib.resilience import retry

CHAPTER = "ch04_sync"
CHAIN = {"cart": 50.0, "customer": 30.0, "payment": 200.0, "inventory": 100.0,
         "shipping": 150.0}                      # the source's chain: order and latency (ms)
KEY = "Idempotency-Key"
RELAY_INTERVAL_S = 0.005       # the outbox relay polls this often: a small part of the response
ORDERS = ("CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, cart_id INTEGER, "
          "customer_id INTEGER, status TEXT NOT NULL, created_at REAL NOT NULL);")

# Upper bounds that fit a laptop: a reader's typo (10**9 checkouts) is refused, not run.
MAX_ORDERS = 5_000
MAX_CLIENTS = 500
MAX_TRIALS = 50
MAX_INDEX = 10**9
MAX_WAIT_S = 600.0


@dataclass(frozen=True)
class Knobs:
    """Everything a reader may turn in this chapter, validated once when built."""
    scale: float = 1.0          # multiplies the source's latencies (0: no injected delay)
    p: float = 0.0              # each call to a participant fails (503) with probability p
    attempts: int = 1           # tries per call, the first included (1: no retry)
    saga_attempts: int = 5      # after the pivot, the orchestrator's tries of a step
    backoff_ms: float = 20.0    # base of the full-jitter backoff between tries
    workers: int | None = None  # the checkout's pool of workers (None: unbounded)
    partitions: int = 4         # of the two topics between the checkout and the orchestrator
    seed: int = 0               # faults and jitter are drawn from it: a run replays

    def __post_init__(self):
        v.number("scale", self.scale, low=0, high=10)
        v.probability("p", self.p)
        v.number("attempts", self.attempts, low=1, high=10, integer=True)
        v.number("saga_attempts", self.saga_attempts, low=1, high=20, integer=True)
        v.number("backoff_ms", self.backoff_ms, low=0, low_open=True, high=10_000)
        v.optional(v.number, "workers", self.workers, low=1, high=1_000, integer=True)
        v.number("partitions", self.partitions, low=1, high=64, integer=True)
        v.number("seed", self.seed, low=0, high=2**32 - 1, integer=True)

    def latency_ms(self, service: str) -> float:
        return CHAIN[v.one_of("service", service, CHAIN)] * self.scale


def knobs_or_default(knobs, default: Knobs | None = None) -> Knobs:
    """``knobs`` if it is this chapter's :class:`Knobs`, ``default`` (or ``Knobs()``) if None."""
    if knobs is None:
        return default if default is not None else Knobs()
    if not isinstance(knobs, Knobs):
        raise TypeError(f"knobs must be a {CHAPTER}.Knobs or None; got {knobs!r}")
    return knobs


def request_for(i: int) -> dict:
    """Checkout ``i``'s body: the same cart and customer in both designs."""
    v.number("i", i, low=0, high=MAX_INDEX, integer=True)
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
        self.k = knobs_or_default(k)
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
        if not isinstance(status, dict):
            raise TypeError(f"status must be a dict of order id -> status; got {status!r}")
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


# -- both designs: the checkout's database, the participants, a scope -----------------------------
class Checkout(Design):
    """What both designs share: the participants, the checkout's database and its orders."""
    chapter = CHAPTER
    databases = True

    def __init__(self, knobs: Knobs | None = None):
        knobs = knobs_or_default(knobs)
        self.participants = Participants(knobs)
        self.db: Database | None = None
        super().__init__(knobs)

    async def open_databases(self) -> None:
        self.db = await self.checkout_database()
        await self.db.executescript(ORDERS)

    async def checkout_database(self) -> Database:
        """The checkout's own database in the workspace (a lab swaps in a mortal one)."""
        return await self.ws.database("checkout")

    def forget(self) -> None:
        self.db = None

    async def place(self, i: int, *, trace_id: str | None = None) -> dict:
        """Send checkout ``i`` (see :func:`request_for`); the checkout's answer."""
        self.require_running()
        return await self.call("checkout", "POST", "/checkout", json=request_for(i),
                               trace_id=trace_id)

    async def wait_done(self, timeout: float = 30.0) -> None:
        """Wait until every order has its final status (before: as soon as it answered)."""
        v.number("timeout", timeout, low=0, low_open=True, high=MAX_WAIT_S)
        self.require_running()

    async def statuses(self) -> dict:
        self.require_running()
        return dict(await self.db.fetchall("SELECT order_id, status FROM orders"))

    async def invariants(self) -> dict:
        status = await self.statuses()
        counts = Counter(status.values())
        return {"orders": len(status), **{s: counts.get(s, 0) for s in
                                          ("completed", "compensated", "failed")},
                **self.participants.invariants(status)}


class SyncCheckout(Checkout):
    """Before: the checkout answers when all five services have."""
    name = "before"

    def build(self) -> Topology:
        return Topology(
            Node("client", "edge", label="Client", uses=("checkout",), shape="client"),
            sync_checkout(self), *self.participants.services,
            Store("checkout_db", label="Checkout DB"),
            name=f"{CHAPTER}: {self.name}", seed=self.knobs.seed)


def sync_checkout(c: SyncCheckout) -> Service:
    checkout = Service("checkout", label="Checkout Service", uses=(*CHAIN, "checkout_db"),
                       max_concurrency=c.knobs.workers)

    @checkout.post("/checkout")
    async def handle(request):
        b, k = await request.json(), c.knobs
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
                       max_concurrency=c.knobs.workers)

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
        except (UnknownRequest, ValueError) as e:
            return web.json_response({"error": str(e)}, status=404)

    return checkout


def checkout_saga(c: AsyncCheckout) -> SagaDefinition:
    """Reads first, then the compensatable reservation, the payment as the pivot, and the
    shipping label, which after the pivot is retried until it succeeds."""
    orch, k = c.topology.service("orchestrator"), c.knobs

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


class AsyncCheckout(Checkout):
    """After: accept at once; a saga orchestrator finishes the work and reports back.

    What runs beside the services (the bus, the relay, the orchestrator, the status consumer)
    lives on the design, never on its topology, and is dropped when the block ends.
    """
    name = "after"

    def __init__(self, knobs: Knobs | None = None):
        self.bus: EventBus | None = None
        self.outbox: Outbox | None = None
        self.statuses_store: StatusStore | None = None
        self.orchestrator: SagaOrchestrator | None = None
        self.saga_db: Database | None = None
        self._open_spans: dict[str, tuple] = {}
        super().__init__(knobs)

    def nodes(self) -> list[Node]:
        """The topology's nodes (a lab may swap the checkout service for the reader's)."""
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

    def build(self) -> Topology:
        return Topology(*self.nodes(), name=f"{CHAPTER}: {self.name}", seed=self.knobs.seed)

    async def open_databases(self) -> None:
        await super().open_databases()
        self.statuses_store = await StatusStore(self.db, prefix="order", clock=now).setup()
        self.outbox = await Outbox(self.db, source="checkout", clock=now).setup()
        self.saga_db = await self.ws.database("saga")

    async def start_beside(self, stack: AsyncExitStack) -> None:
        k = self.knobs
        self.bus = await self.open_bus(stack)
        self.bus.create_topic("checkouts", partitions=k.partitions)
        self.bus.create_topic("checkout-status", partitions=k.partitions)
        await stack.enter_async_context(self.outbox.relay(self.bus, interval=RELAY_INTERVAL_S))
        self.orchestrator = await stack.enter_async_context(SagaOrchestrator(
            self.saga_db, checkout_saga(self), max_attempts=k.saga_attempts,
            base_delay=k.backoff_ms / 1000, max_delay=1.0, seed=k.seed, clock=now,
            on_status=self._on_status))
        status = await IdempotentConsumer(self.db, "checkout-status", self._status_changed,
                                          clock=now).setup()
        await stack.enter_async_context(self.bus.consumer_group(
            "checkout-status", "checkout", status, retry_delay=0.01))
        await stack.enter_async_context(self.bus.consumer_group(
            "checkouts", "orchestrator", self._on_checkout, retry_delay=0.01))

    def forget(self) -> None:
        super().forget()
        self.bus = self.outbox = self.statuses_store = self.orchestrator = self.saga_db = None
        self._open_spans.clear()

    async def _on_checkout(self, event) -> None:
        """Start the order's saga (idempotent on its id, so a redelivery is harmless).

        The saga's calls join the checkout's trace under one span standing for the event, so
        the sequence diagram shows the whole order: from the event's delivery to the saga's
        end (the time to completion, less the relay's short wait)."""
        e = event.value
        span_id = self.topology.tracer.new_span_id()
        self._open_spans.setdefault(e["order_id"], (e.get("trace_id"), span_id, now()))
        token = tr.current.set((e["trace_id"], span_id) if e.get("trace_id") else None)
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
        """Wait until every order is final; raise TimeoutError after ``timeout`` seconds in
        which no order finished (a busy machine is slow, not stuck), or after MAX_WAIT_S."""
        await super().wait_done(timeout)
        terminal = tuple(TERMINAL)
        loop = asyncio.get_running_loop()
        last, idle_until = None, loop.time() + timeout
        async with asyncio.timeout(MAX_WAIT_S):
            while True:
                (left,) = await self.db.fetchone(
                    f"SELECT COUNT(*) FROM requests WHERE status NOT IN "
                    f"({', '.join('?' * len(terminal))})", terminal)
                if not left:
                    return
                if left != last:
                    last, idle_until = left, loop.time() + timeout
                elif loop.time() > idle_until:
                    raise TimeoutError(f"{left} order(s) made no progress for {timeout:g} s")
                await asyncio.sleep(0.01)

    async def poll(self, order_id: str, *, interval: float = 0.02,
                   timeout: float = 10.0) -> tuple[dict, int]:
        """What a client does: GET the status until it is final; (last answer, polls)."""
        v.name("order_id", order_id)
        v.number("interval", interval, low=0.001, high=10)
        v.number("timeout", timeout, low=0, low_open=True, high=MAX_WAIT_S)
        self.require_running()
        polls = 0
        async with asyncio.timeout(timeout):
            while True:
                polls += 1
                answer = await self.call("checkout", "GET", f"/orders/{order_id}")
                if answer["terminal"]:
                    return answer, polls
                await asyncio.sleep(interval)

    async def done_at(self) -> pd.Series:
        """When each order reached its final status (seconds on toylib.core.clock.now)."""
        self.require_running()
        hist = await self.statuses_store.history()
        final = hist[hist.status.isin(TERMINAL)]
        return final.groupby("request_id")["t"].max()


DESIGNS = {"before": SyncCheckout, "after": AsyncCheckout}


def design(name: str, knobs: Knobs | None = None) -> Checkout:
    """The design called ``name`` ("before" or "after"), built from ``knobs``."""
    return build(DESIGNS, name, knobs_or_default(knobs))


# -- the analytic figures -------------------------------------------------------------------------
def ideal(knobs: Knobs | None = None) -> dict:
    """What the injected delays and failure probabilities alone would give."""
    k = knobs_or_default(knobs)
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


# -- a probe: checkouts against one running design ------------------------------------------------
@dataclass
class Orders:
    """``n`` checkouts against one design: the load (``latency_ms`` is the response time,
    ``completion_ms`` the time until the order's final status) and the durable outcome (the
    orders' statuses and the participants' ledgers, :meth:`Checkout.invariants`)."""
    design: str
    load: load.LoadResult
    outcome: dict
    elapsed_s: float

    @property
    def df(self) -> pd.DataFrame:
        return self.load.df

    @property
    def n(self) -> int:
        return len(self.load.df)


def _count(name: str, value, high: int) -> int:
    return v.number(name, value, low=1, high=high, integer=True)


def _check_orders(n, concurrency, first) -> None:
    _count("n", n, MAX_ORDERS)
    _count("concurrency", concurrency, MAX_CLIENTS)
    v.number("first", first, low=0, high=MAX_INDEX - n, integer=True)


async def place_orders(system: Checkout, n: int, *, concurrency: int = 1,
                       first: int = 0) -> Orders:
    """``n`` checkouts from ``concurrency`` clients into the running ``system``, then the
    outcome of every order once all are final (before: at once; after: when its saga ends)."""
    if not isinstance(system, Checkout):
        raise TypeError(f"system must be a running {CHAPTER} design; got {system!r}")
    _check_orders(n, concurrency, first)
    system.require_running()

    async def one(i):
        t_sent = now()
        answer = await system.place(first + i, trace_id=f"checkout-{first + i}")
        return {"order_id": answer["order_id"], "t_sent": t_sent}

    t0 = now()
    if concurrency == 1:
        res = await load.sequential(one, n=n, progress=False, label=system.name)
    else:
        res = await load.closed_loop(one, n=n, concurrency=concurrency, progress=False,
                                     label=system.name)
    await system.wait_done()
    df = res.df
    if isinstance(system, AsyncCheckout):
        done = await system.done_at()
        df["completion_ms"] = (df["order_id"].map(done) - df["t_sent"]) * 1000
        last = float(done.max()) if len(done) else now()
    else:
        df["completion_ms"] = df["latency_ms"].where(df["ok"])
        last = now()
    return Orders(system.name, res, await system.invariants(), last - t0)


async def checkouts(name: str, knobs: Knobs | None = None, *, n: int, concurrency: int = 1,
                    first: int = 0) -> Orders:
    """Build the design ``name``, run :func:`place_orders` in it, and release it."""
    system = design(name, knobs)
    _check_orders(n, concurrency, first)
    async with system:
        return await place_orders(system, n, concurrency=concurrency, first=first)


# -- experiment 1: response time and time to completion -------------------------------------------
SERIES = ("before: response", "after: response", "after: completion")
AFTER_PER_BEFORE = 2           # after checkouts per before checkout in a timing trial
ACCEPT_ROUND_TRIPS = 8         # the accept's database round trips: BEGIN, 3 for the status,
                               # the order, 2 for the outbox event, COMMIT


@dataclass
class Timing:
    """Trials of the same load on both designs, interleaved (before, after, before, ...)."""
    knobs: Knobs
    n: int                                        # checkouts per trial, before
    clients: int
    runs: dict = field(default_factory=dict)      # design -> [Orders, one per trial]
    n_after: int = 0                              # checkouts per trial, after (0: n)
    round_trips_ms: list = field(default_factory=list)   # per after trial: see round_trip_ms

    def _series(self, name: str) -> list[pd.Series]:
        v.one_of("name", name, SERIES)
        design_, what = name.split(": ")
        if what == "response":
            return [o.load.latencies for o in self.runs[design_]]
        return [o.df["completion_ms"].dropna() for o in self.runs[design_]]

    def trial_medians(self) -> pd.DataFrame:
        """One row per trial, one column per series: each trial's median (ms)."""
        return pd.DataFrame({s: [float(x.median()) for x in self._series(s)] for s in SERIES})

    def latencies(self) -> dict[str, pd.Series]:
        """Every request of every trial, pooled per series (for percentile plots)."""
        return {s: pd.concat(self._series(s), ignore_index=True) for s in SERIES}

    @property
    def round_trip_ms(self) -> float:
        """The median over trials of a trivial statement's time on the checkout's database,
        timed during each after trial (worker-thread hand-offs: what a busy machine slows)."""
        return float(pd.Series(self.round_trips_ms).median()) if self.round_trips_ms else 0.0

    def estimate(self, name: str, lag: LoopLag | None = None) -> Estimate:
        """The median over trials of each trial's median, with the trials' min-max as the
        spread, widened by what this machine's load can add to it:

        * the after design's answer is :data:`ACCEPT_ROUND_TRIPS` database round trips; a
          machine whose round trip took ``round_trip_ms`` in this run may have added that much
          to each, so the spread reaches that far down (a quiet machine: about 1-2 ms; under
          load, enough that a slow answer is "not shown" rather than "does not hold");
        * on a machine too busy to time 20 ms hops (``lag.busy``), the spread reaches up by
          the event loop's p99 lag: any time measured there may be late by that much."""
        medians = self.trial_medians()[name]
        e = Estimate.trials(medians, unit="ms")
        if name == "after: response" and len(self.round_trips_ms) == len(medians):
            # each trial less what its own round trips, timed during it, may have added
            low = min(m - ACCEPT_ROUND_TRIPS * rt for m, rt in zip(medians, self.round_trips_ms))
            e = replace(e, low=max(0.0, min(e.low, low)),
                        how=e.how + f", less {ACCEPT_ROUND_TRIPS} database round trips")
        if lag is None or not lag.busy:
            return e
        return replace(e, high=e.high + lag.p99_ms, how=e.how + " + event-loop lag p99")

    def ideal_ms(self) -> dict:
        i = ideal(self.knobs)
        return {"before: response": i["response_before_ms"],
                "after: response": i["response_after_ms"],
                "after: completion": i["completion_after_ms"]}

    def table(self) -> pd.DataFrame:
        med, pooled = self.trial_medians(), self.latencies()
        return pd.DataFrame({"median of trials (ms)": med.median(), "lowest trial (ms)": med.min(),
                             "highest trial (ms)": med.max(),
                             "p90, all requests (ms)": {s: x.quantile(0.9)
                                                        for s, x in pooled.items()},
                             "ideal (ms)": self.ideal_ms()})


async def response_times(knobs: Knobs | None = None, *, n: int = 6, clients: int = 1,
                         trials: int = 3, n_after: int | None = None) -> Timing:
    """``trials`` times: ``n`` checkouts from ``clients`` clients on the before design, then
    ``n_after`` (default ``AFTER_PER_BEFORE * n``) on the after design (fresh designs each
    trial, so no trial warms the next).

    One client by default: the response time of one user, as the source's figures are, not
    the queueing of many clients at one database connection (experiment 3 is about that).
    The after design's checkouts take milliseconds, so a trial takes more of them: its median
    then spans a longer stretch of time, and one burst of load on the machine cannot move it
    as far (a before checkout takes the whole chain, so its trial is long already)."""
    k = knobs_or_default(knobs)
    _count("n", n, 1_000)
    _count("clients", clients, MAX_CLIENTS)
    _count("trials", trials, MAX_TRIALS)
    n_after = AFTER_PER_BEFORE * n if n_after is None else _count("n_after", n_after, 1_000)
    out = Timing(k, n, clients, {d: [] for d in DESIGNS}, n_after)
    for t in range(trials):
        for name, count in (("before", n), ("after", n_after)):
            async with design(name, k) as system:
                # A client in steady state holds a keep-alive connection: open it first, so
                # the first checkout of a trial does not also time a TCP handshake.
                await system.call("checkout", "GET", "/health")
                probe = None
                if name == "after":   # a second connection to the same file, its own thread
                    probe = await system.ws.database("checkout", owner="probe")
                async with _sampling(probe) as samples:
                    out.runs[name].append(await place_orders(
                        system, count, concurrency=clients, first=t * max(n, n_after)))
                if probe is not None:
                    out.round_trips_ms.append(float(pd.Series(samples).median())
                                              if samples else await round_trip_ms(probe))
    return out


@asynccontextmanager
async def _sampling(db: Database | None, every_s: float = 0.01):
    """Time a trivial statement on ``db`` every ``every_s`` while the block runs (a
    calibration taken during the measurement, not before it); yields the list of times."""
    samples: list[float] = []

    async def sample():
        while True:
            t0 = now()
            await db.fetchone("SELECT 1")
            samples.append((now() - t0) * 1000)
            await asyncio.sleep(every_s)

    task = asyncio.create_task(sample()) if db is not None else None
    try:
        yield samples
    finally:
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


async def round_trip_ms(db: Database, n: int = 10) -> float:
    """The median time of ``n`` trivial statements on ``db`` (a calibration, in this run)."""
    if not isinstance(db, Database):
        raise TypeError(f"db must be a toylib.data.db.Database; got {db!r}")
    _count("n", n, 1_000)
    times = []
    for _ in range(n):
        t0 = now()
        await db.fetchone("SELECT 1")
        times.append((now() - t0) * 1000)
    return float(pd.Series(times).median())


# -- experiment 2: success under transient failures, with and without retries ---------------------
@dataclass
class Success:
    """Checkouts completed per failure probability, tries per call and design (counts)."""
    knobs: Knobs
    n: int
    rows: pd.DataFrame           # p, tries per call, design, n, completed, ideal, answered, ...

    def row(self, p: float, attempts: int, design_: str) -> pd.Series:
        r = self.rows[(self.rows.p == p) & (self.rows["tries per call"] == attempts)
                      & (self.rows.design == design_)]
        if r.empty:
            raise ValueError(f"(p, attempts, design) must be a run of this experiment; got "
                             f"{(p, attempts, design_)!r}; runs: "
                             f"{list(self.rows[['p', 'tries per call', 'design']].itertuples(index=False, name=None))}")
        return r.iloc[0]

    def estimate(self, p: float, attempts: int, design_: str) -> Estimate:
        """The share of checkouts completed, with its Wilson interval."""
        r = self.row(p, attempts, design_)
        return Estimate.proportion(int(r["completed"]), int(r["n"]))

    def __add__(self, other: "Success") -> "Success":
        """Two runs' rows together (the audit runs only the pairs its claims need)."""
        if not isinstance(other, Success) or other.n != self.n:
            raise TypeError(f"other must be a Success of the same n ({self.n}); got {other!r}")
        return Success(self.knobs, self.n, pd.concat([self.rows, other.rows],
                                                     ignore_index=True))

    def shares(self) -> pd.DataFrame:
        """Completed share beside the ideal, per p and tries, for both designs."""
        df = self.rows.assign(completed=self.rows.completed / self.rows.n)
        return df.pivot(index=["p", "tries per call"], columns="design",
                        values=["completed", "ideal", "answered"])


SUCCESS_KNOBS = Knobs(scale=0, backoff_ms=1, seed=2)   # latency does not change these shares


async def success_rates(knobs: Knobs | None = None, *, ps=(0.05, 0.1, 0.2), attempts=(1, 3),
                        n: int = 100, clients: int = 10, designs=tuple(DESIGNS)) -> Success:
    """``n`` checkouts on each of ``designs`` for every failure probability in ``ps`` and
    every number of tries per call in ``attempts`` (the knobs' own ``p`` and ``attempts``
    are replaced). Seeded faults: with one try per call the counts replay exactly."""
    k = knobs_or_default(knobs, SUCCESS_KNOBS)
    ps = _grid("ps", ps, lambda name, x: v.probability(name, x))
    attempts = _grid("attempts", attempts,
                     lambda name, x: v.number(name, x, low=1, high=10, integer=True))
    designs = _grid("designs", designs, lambda name, x: v.one_of(name, x, DESIGNS))
    _count("n", n, MAX_ORDERS)
    _count("clients", clients, MAX_CLIENTS)
    rows = []
    for p in ps:
        for a in attempts:
            kp = replace(k, p=p, attempts=a)
            for name in designs:
                o = await checkouts(name, kp, n=n, concurrency=clients)
                rows.append({"p": p, "tries per call": a, "design": name, "n": n,
                             "answered": float(o.df["ok"].mean()),
                             "ideal": ideal(kp)[f"success_{name}"], **o.outcome})
    return Success(k, n, pd.DataFrame(rows))


def _grid(name: str, values, check, most: int = 10) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of values; got {values!r}")
    values = tuple(values)
    if not 1 <= len(values) <= most:
        raise ValueError(f"{name} must be a list of 1 to {most} values; got {len(values)}")
    return tuple(check(name, x) for x in values)


# -- experiment 3: throughput with a bounded pool of workers --------------------------------------
THROUGHPUT_KNOBS = Knobs(workers=20)


async def throughput(knobs: Knobs | None = None, *, n: int = 80, clients: int = 40) -> pd.DataFrame:
    """``n`` checkouts from ``clients`` clients on each design, whose checkout has
    ``knobs.workers`` workers: answered and completed per second, and the medians."""
    k = knobs_or_default(knobs, THROUGHPUT_KNOBS)
    if k.workers is None:
        raise ValueError("knobs.workers must be set (a bounded pool of workers) for this "
                         "experiment; got None")
    _count("n", n, MAX_ORDERS)
    _count("clients", clients, MAX_CLIENTS)
    rows = {}
    for name in DESIGNS:
        o = await checkouts(name, k, n=n, concurrency=clients)
        rows[name] = {"answered per second": o.load.summary()["throughput_rps"],
                      "completed per second": o.outcome["completed"] / o.elapsed_s,
                      "response p50 (ms)": o.load.summary()["p50_ms"],
                      "completion p50 (ms)": float(o.df["completion_ms"].median()),
                      "completed": o.outcome["completed"]}
    return pd.DataFrame(rows).T


# -- the source's claims, declared once -----------------------------------------------------------
CLAIM_P = 0.05                 # the failure probability per call at which the claims are judged
CLAIM_TRIES = 3                # tries per call for the availability claim
CLAIMS = (
    Claim(f"{CHAPTER}.chain", "time to answer, before",
          "Total: 530ms (cart 50, customer 30, payment 200, inventory 100, shipping 150 ms, "
          "one after another)",
          "median over trials of each trial's median response time of the chained checkout",
          claimed=sum(CHAIN.values()), at_least=True, tolerance=0.95, unit="ms",
          assumptions="the source's delays injected in each participant; the client waits for "
                      "their sum, plus well under a millisecond per hop"),
    Claim(f"{CHAPTER}.immediate", "time to answer, after", "Immediate Response - 10ms",
          "median over trials of each trial's median response time of the accepting checkout",
          claimed=10.0, at_least=False, tolerance=0.8, unit="ms",
          assumptions="'10 ms' is the time to accept (one local SQLite transaction and one "
                      "hop); the order is completed no sooner than before"),
    Claim(f"{CHAPTER}.multiplication", "failure multiplication",
          "Synchronous Chain - All Must Succeed; 530ms + failure multiplication",
          f"share of chained checkouts completed when every call fails with p = {CLAIM_P}, "
          f"one try per call (claimed: the product of five successes)",
          claimed=(1 - CLAIM_P) ** len(CHAIN), at_least=False, tolerance=0.9,
          assumptions="independent, transient failures; no retries"),
    Claim(f"{CHAPTER}.availability", "availability (impact table)",
          "Sync Everywhere -> Async messaging: 99.9% availability",
          f"share of checkouts the saga completed when every call fails with p = {CLAIM_P}, "
          f"{CLAIM_TRIES} tries per call",
          claimed=0.999, at_least=True, tolerance=0.999, conditional=True,
          assumptions=f"transient, independent failures that {CLAIM_TRIES} tries per call "
                      f"overcome; accepting needs only the checkout and its database"),
)


def findings(timing: Timing, success: Success, lag: LoopLag | None = None) -> list[Finding]:
    """Every claim of :data:`CLAIMS` judged from these runs (one finding each, same order)."""
    if not isinstance(timing, Timing):
        raise TypeError(f"timing must be the result of response_times(); got {timing!r}")
    if not isinstance(success, Success):
        raise TypeError(f"success must be the result of success_rates(); got {success!r}")
    if lag is not None and not isinstance(lag, LoopLag):
        raise TypeError(f"lag must be a LoopLag (machine_check) or None; got {lag!r}")
    chain, immediate, mult, avail = CLAIMS
    ideal_ms, med = timing.ideal_ms(), timing.trial_medians().median()
    done = med["after: completion"]
    chain1 = success.row(CLAIM_P, 1, "before")
    saga = success.row(CLAIM_P, CLAIM_TRIES, "after")
    return [
        chain.judge(timing.estimate("before: response", lag),
                    ideal=ideal_ms["before: response"],
                    note=f"{timing.n} checkouts per trial from "
                         f"{'one client' if timing.clients == 1 else f'{timing.clients} clients'}"),
        immediate.judge(timing.estimate("after: response", lag),
                        ideal=ideal_ms["after: response"],
                        note=f"{timing.n_after or timing.n} checkouts per trial; one "
                             f"database round trip took {timing.round_trip_ms:.2f} ms here; "
                             f"the order completed {done:.0f} ms after it was sent "
                             f"(median; ideal {ideal_ms['after: completion']:.0f} ms)"),
        mult.judge(success.estimate(CLAIM_P, 1, "before"), ideal=float(chain1["ideal"]),
                   note=f"{int(chain1['charged, order not completed'])} customers charged for "
                        f"an order that failed"),
        avail.judge(success.estimate(CLAIM_P, CLAIM_TRIES, "after"), ideal=float(saga["ideal"]),
                    note=f"every checkout accepted: {saga['answered']:.0%}; the rest "
                         f"compensated: {int(saga['compensated'])}"),
    ]


AUDIT_KNOBS = Knobs()
AUDIT_ORDERS = 200             # checkouts per failure run: enough to decide "all must succeed"


async def audit(knobs: Knobs | None = None) -> list[Finding]:
    """A small run of the experiments behind every claim (for chapter 7, which lists every claim)."""
    k = knobs_or_default(knobs, AUDIT_KNOBS)
    timing = await response_times(k, n=3, clients=1, trials=3)
    kp = replace(SUCCESS_KNOBS, seed=k.seed)
    success = (await success_rates(kp, ps=(CLAIM_P,), attempts=(1,), designs=("before",),
                                   n=AUDIT_ORDERS)
               + await success_rates(kp, ps=(CLAIM_P,), attempts=(CLAIM_TRIES,),
                                     designs=("after",), n=AUDIT_ORDERS))
    return findings(timing, success)


# -- the static site's explorer -------------------------------------------------------------------
SWEEP_PS = (0.0, 0.1, 0.2, 0.3)
SWEEP_ATTEMPTS = (1, 3)
SWEEP_ORDERS = 40


async def sweep(knobs: Knobs | None = None, *, ps=SWEEP_PS, attempts=SWEEP_ATTEMPTS,
                n: int = SWEEP_ORDERS) -> pd.DataFrame:
    """Experiment 2 (the panel's) over a grid of the failure probability ``p`` and the tries
    per call: one row per grid point and design, with the knobs and the measured counts, for
    the static site to let a reader move the knobs without a kernel (measured at build time)."""
    res = await success_rates(knobs_or_default(knobs, SUCCESS_KNOBS), ps=ps, attempts=attempts,
                              n=n)
    df = res.rows.rename(columns={"tries per call": "attempts"})
    df["completed share"] = df["completed"] / df["n"]
    return df[["p", "attempts", "design", "n", "completed", "completed share", "ideal",
               "compensated", "failed", "charged, order not completed",
               "stock held, order not completed", "answered"]].reset_index(drop=True)
