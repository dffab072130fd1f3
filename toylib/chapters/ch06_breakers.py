"""Chapter 6, No circuit breakers: one slow failure becomes everyone's failure, and the fix.

* **Before** (:class:`Before`): the order service has a bounded pool of workers and three
  endpoints: ``/checkout`` (user, then inventory, then payment), ``/stock`` (inventory only)
  and ``/profile`` (user only). During an outage the payment service *fails slowly*: it
  answers 503 after ``outage_delay_ms``, and the order service waits for it with no timeout.
  Every checkout holds a worker for that long, the pool fills, requests queue for a worker,
  and ``/stock`` and ``/profile`` miss the users' patience too, although inventory and user
  are fine.
* **After** (:class:`After`): a circuit breaker per dependency
  (:class:`toylib.resilience.breaker.CircuitBreaker`, failure- and slow-call-rate thresholds
  over a sliding window), short timeouts, a fallback cache for the reads, rate limiting at the
  edge and a health checker that watches every dependency. Once the payment breaker opens,
  checkouts fail in a millisecond and the workers stay free.

The chapter follows :mod:`toylib.chapters.design`: :class:`Knobs` -> ``DESIGNS`` ->
experiments (:func:`outage`, :func:`fallback`; :func:`run_outage` runs one *running* design
through an outage) -> :data:`CLAIMS` judged by :func:`findings`; :func:`audit` is the small run
chapter 7 uses, :func:`sweep` the grid the static site shows.

The users are patient, as the source's "long timeouts, 30 s+" are: the load generator waits for
every answer, so no request is abandoned and no work is cancelled, exactly like a server whose
worker threads cannot be interrupted. A request *succeeds* when it is answered 2xx within
``patience_ms``; a slower answer comes too late for a user who has left.

Why the verdicts survive a busy machine: the cascade is decided by counts (how many requests
arrive before the pool is full of blocked checkouts, which depends on the schedule, not on the
CPU); every injected delay is 20 ms or more and every time that decides is many times the
event loop's lateness on a loaded laptop (a 200 ms call timeout against 20 ms calls, a second
of patience against 1.5 s of blocking); the load is light (45 requests/s, about a tenth of a
core); rates are judged with Wilson intervals over the pooled repetitions and the other claims
are exact counts. And every run watches the event loop's lateness: when it exceeds a quarter
of the call timeout or the patience (:func:`lag_limit_ms`), the machine, not the design,
decided the timings: :func:`outage` runs such a repetition again after a pause (a burst of
load usually ends within seconds), and when its reruns are used up :func:`findings` widens
those figures so their verdicts say "not shown by this run" instead of flipping.
"""
from __future__ import annotations

import asyncio
import math
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from aiohttp import web

from toylib.chapters.design import Design, build
from toylib.claims import Claim, Estimate, Finding
from toylib.core import load
from toylib.chapters.design import running_design
from toylib.core import validate as v
from toylib.core.calibrate import BUSY_PAUSE_S, BUSY_RERUNS, LoopLag, loop_lag, stalls_from_env
from toylib.core.clock import FakeClock, now
from toylib.core.faults import Error, Latency
from toylib.core.services import CallError, Node, Service, Store, Topology
from toylib.resilience.breaker import CallNotPermitted, CircuitBreaker
from toylib.resilience.fallback import FallbackCache
from toylib.resilience.health import HealthChecker
from toylib.resilience.ratelimit import RateLimiter

CHAPTER = "ch06_breakers"
DEPENDENCIES = ("payment", "inventory", "user")
ENDPOINTS = ("/checkout", "/stock", "/profile")       # request i goes to ENDPOINTS[i % 3]
UNAFFECTED = ("/stock", "/profile")                   # they never touch payment
KEYS = 20                                             # distinct users and products
MAX_REQUESTS = 20_000                                 # rate * run_s: a laptop's worth


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated once. Times of the schedule in seconds, others in ms."""
    pool: int = 6                  # workers of the order service
    latency_ms: float = 20.0       # every dependency's normal latency
    outage_start: float = 1.0      # seconds after the run starts
    outage_end: float = 3.0
    outage_delay_ms: float = 1500.0    # during the outage payment answers 503 after this
    rate: float = 45.0             # requests per second, a third to each endpoint
    run_s: float = 4.5             # how long requests keep arriving
    patience_ms: float = 1000.0    # an answer later than this counts as a failure
    grace_s: float = 2.0           # after the last arrival, how long answers are waited for
    call_timeout_ms: float = 200.0     # after: timeout of each call to a dependency
    failure_threshold: float = 50.0    # after: % of failed calls in the window that opens
    slow_call_ms: float = 150.0        # after: a call slower than this is "slow"
    slow_threshold: float = 100.0      # after: % of slow calls in the window that opens
    window: int = 10                   # after: the breaker's sliding window, in calls
    minimum_calls: int = 5             # after: no verdict on fewer calls than this
    wait_in_open: float = 1.0          # after: seconds open before trial calls
    half_open_calls: int = 3           # after: trial calls in half-open
    rate_limit: float = 150.0          # after: requests per second admitted at the edge
    burst: float = 30.0                # after: short-term excess admitted at the edge
    health_interval: float = 0.25      # after: seconds between health probes
    seed: int = 0

    def __post_init__(self):
        v.number("pool", self.pool, low=1, high=200, integer=True)
        v.number("latency_ms", self.latency_ms, low=0, high=2000)
        v.number("outage_start", self.outage_start, low=0, high=60)
        v.number("outage_end", self.outage_end, low=self.outage_start, low_open=True, high=60)
        v.number("outage_delay_ms", self.outage_delay_ms, low=0, high=30_000)
        v.number("rate", self.rate, low=0, low_open=True, high=1000)
        v.number("run_s", self.run_s, low=0, low_open=True, high=60)
        v.number("patience_ms", self.patience_ms, low=0, low_open=True, high=60_000)
        v.number("grace_s", self.grace_s, low=0, high=60)
        v.number("call_timeout_ms", self.call_timeout_ms, low=0, low_open=True, high=60_000)
        v.number("failure_threshold", self.failure_threshold, low=0, low_open=True, high=100)
        v.number("slow_call_ms", self.slow_call_ms, low=0, high=60_000)
        v.number("slow_threshold", self.slow_threshold, low=0, low_open=True, high=100)
        v.number("window", self.window, low=1, high=10_000, integer=True)
        v.number("minimum_calls", self.minimum_calls, low=1, high=10_000, integer=True)
        v.number("wait_in_open", self.wait_in_open, low=0, low_open=True, high=600)
        v.number("half_open_calls", self.half_open_calls, low=1, high=1000, integer=True)
        v.number("rate_limit", self.rate_limit, low=0, low_open=True, high=100_000)
        v.number("burst", self.burst, low=1, high=100_000)
        v.number("health_interval", self.health_interval, low=0.01, high=60)
        v.number("seed", self.seed, low=0, high=2**32 - 1, integer=True)
        # Pairs of fields: the message names the one that breaks the pair.
        if self.outage_end > self.run_s:
            raise ValueError(f"outage_end must be <= run_s ({self.run_s}): the outage ends "
                             f"while requests still arrive; got {self.outage_end!r}")
        if self.rate * self.run_s > MAX_REQUESTS:
            raise ValueError(f"rate must be <= {MAX_REQUESTS / self.run_s:g} for run_s = "
                             f"{self.run_s} (at most {MAX_REQUESTS:,} requests a run); "
                             f"got {self.rate!r}")


def knobs_or_default(knobs) -> Knobs:
    """``knobs``, or the chapter's defaults for None; anything else is refused."""
    if knobs is None or isinstance(knobs, Knobs):
        return knobs or Knobs()
    raise TypeError(f"knobs must be a {CHAPTER}.Knobs or None (the defaults); "
                    f"got {type(knobs).__name__}")


# -- the dependencies, identical in both designs ------------------------------------------------
def dependencies(k: Knobs) -> list[Service]:
    k = knobs_or_default(k)
    payment = Service("payment", label="Payment Service", uses=("payment_db",))
    inventory = Service("inventory", label="Inventory Service", uses=("inventory_db",))
    user = Service("user", label="User Service", uses=("user_db",))

    @payment.post("/pay/{order}")
    async def pay(request):
        return {"order": request.match_info["order"], "paid": True}

    @inventory.get("/stock/{sku}")
    async def stock(request):
        sku = int(request.match_info["sku"])
        return {"sku": sku, "in_stock": 100 + sku}

    @inventory.post("/reserve/{sku}")
    async def reserve(request):
        return {"sku": int(request.match_info["sku"]), "reserved": 1}

    @user.get("/users/{id}")
    async def get_user(request):
        uid = int(request.match_info["id"])
        return {"id": uid, "name": f"user{uid}"}

    for s in (payment, inventory, user):
        s.faults.clock = now        # one clock for faults, load, breakers and health checks
        if k.latency_ms:
            s.faults.add(Latency(k.latency_ms))
    return [payment, inventory, user]


def stores() -> list[Node]:
    return [Store("payment_db", label="Payment DB"), Store("inventory_db", label="Inventory DB"),
            Store("user_db", label="User DB")]


def clients(entry: str) -> Node:
    v.one_of("entry", entry, ("orders", "gateway"))
    return Node("clients", "edge", label="Clients", uses=(entry,), shape="client")


# -- before: no breaker, no timeout ---------------------------------------------------------------
def naive_orders(k: Knobs) -> Service:
    k = knobs_or_default(k)
    orders = Service("orders", label=f"Order Service ({k.pool} workers)", uses=DEPENDENCIES,
                     max_concurrency=k.pool, when_full="wait")

    @orders.post("/checkout/{id}")
    async def checkout(request):
        i = int(request.match_info["id"])
        user = await orders.call("user", "GET", f"/users/{i % KEYS}")
        await orders.call("inventory", "POST", f"/reserve/{i % KEYS}")
        paid = await orders.call("payment", "POST", f"/pay/{i}")   # waits as long as it takes
        return {"order": i, "user": user["name"], "paid": paid["paid"]}

    @orders.get("/stock/{sku}")
    async def stock(request):
        return await orders.call("inventory", "GET", f"/stock/{request.match_info['sku']}")

    @orders.get("/profile/{id}")
    async def profile(request):
        return await orders.call("user", "GET", f"/users/{request.match_info['id']}")

    return orders


# -- after: breakers, fallback cache, edge rate limiting, health checks ---------------------------
def breakers(k: Knobs) -> dict[str, CircuitBreaker]:
    """One breaker per dependency, so that payment's trouble cannot open the others."""
    k = knobs_or_default(k)
    return {d: CircuitBreaker(d, failure_rate_threshold=k.failure_threshold,
                              slow_call_rate_threshold=k.slow_threshold,
                              slow_call_duration=k.slow_call_ms / 1000, window_type="count",
                              window_size=k.window, minimum_calls=k.minimum_calls,
                              wait_in_open=k.wait_in_open,
                              permitted_in_half_open=k.half_open_calls, clock=now)
            for d in DEPENDENCIES}


def protected_orders(k: Knobs, cbs: dict[str, CircuitBreaker], cache: FallbackCache) -> Service:
    k = knobs_or_default(k)
    if not isinstance(cbs, dict) or sorted(cbs) != sorted(DEPENDENCIES) \
            or not all(isinstance(cb, CircuitBreaker) for cb in cbs.values()):
        raise TypeError(f"cbs must map each of {DEPENDENCIES} to a CircuitBreaker (breakers(k))")
    if not isinstance(cache, FallbackCache):
        raise TypeError(f"cache must be a FallbackCache; got {type(cache).__name__}")
    orders = Service("orders", label=f"Order Service ({k.pool} workers)",
                     uses=tuple(f"{d}_cb" for d in DEPENDENCIES),
                     max_concurrency=k.pool, when_full="wait")
    timeout = k.call_timeout_ms / 1000

    async def call(dep, method, path):
        # The breaker decides whether to try at all; the timeout bounds a try it allows.
        return await cbs[dep].call(orders.call, dep, method, path, timeout=timeout)

    async def read(dep, path):
        """A read may be answered from the fallback cache (marked stale) when it fails."""
        answer = await cache.call((dep, path), call, dep, "GET", path)
        return {**answer.value, "stale": answer.stale}

    @orders.post("/checkout/{id}")
    async def checkout(request):
        i = int(request.match_info["id"])
        try:
            user = await read("user", f"/users/{i % KEYS}")
            await call("inventory", "POST", f"/reserve/{i % KEYS}")   # writes: no fallback
            paid = await call("payment", "POST", f"/pay/{i}")
        except (CallNotPermitted, CallError) as e:
            return unavailable("checkout", e)
        return {"order": i, "user": user["name"], "paid": paid["paid"]}

    @orders.get("/stock/{sku}")
    async def stock(request):
        try:
            return await read("inventory", f"/stock/{request.match_info['sku']}")
        except (CallNotPermitted, CallError) as e:     # nothing cached for this product yet
            return unavailable("stock", e)

    @orders.get("/profile/{id}")
    async def profile(request):
        try:
            return await read("user", f"/users/{request.match_info['id']}")
        except (CallNotPermitted, CallError) as e:
            return unavailable("profile", e)

    return orders


def unavailable(what: str, e: Exception) -> web.Response:
    """Fail fast and say why: nothing was done, and the worker is free at once."""
    v.name("what", what)
    if not isinstance(e, (CallNotPermitted, CallError)):
        raise TypeError(f"e must be a CallNotPermitted or a CallError; got {type(e).__name__}")
    why = "circuit open" if isinstance(e, CallNotPermitted) else e.kind
    return web.json_response({"error": f"{what} unavailable ({why})"}, status=503)


def edge_gateway(k: Knobs, limiter: RateLimiter) -> Service:
    if not isinstance(limiter, RateLimiter):
        raise TypeError(f"limiter must be a RateLimiter; got {type(limiter).__name__}")
    gw = Service("gateway", "edge", label="Load balancer + rate limiting", uses=("orders",))
    timeout = 5.0      # a load balancer's generous timeout: never the one that acts here

    async def forward(request):
        if not limiter.try_acquire():
            # Turned away at the door costs a comparison, not a worker of the order service.
            return web.json_response({"error": "rate limited"}, status=429,
                                     headers={"X-Toy-Overloaded": "1"})
        reply = await gw.call("orders", request.method, request.path, timeout=timeout, raw=True)
        return web.Response(body=reply.body, status=reply.status,
                            content_type="application/json")

    gw.post("/checkout/{id}")(forward)
    gw.get("/stock/{sku}")(forward)
    gw.get("/profile/{id}")(forward)
    return gw


# -- the designs -----------------------------------------------------------------------------
class Breakers(Design):
    """What both designs have: an entry point, and (empty in the before design) the breakers,
    edge limiter, fallback cache and health checker, kept on the design, not the topology."""
    chapter = CHAPTER
    entry = ""

    def __init__(self, knobs: Knobs | None = None):
        self.breakers: dict[str, CircuitBreaker] = {}
        self.limiter: RateLimiter | None = None
        self.fallback: FallbackCache | None = None
        self.health: HealthChecker | None = None
        super().__init__(knobs_or_default(knobs))


class Before(Breakers):
    """No breaker, no timeout: the order service waits for payment as long as payment takes."""
    name = "before"
    entry = "orders"

    def build(self) -> Topology:
        k = self.knobs
        return Topology(clients(self.entry), naive_orders(k), *dependencies(k), *stores(),
                        name="no circuit breakers: before", seed=k.seed)


class After(Breakers):
    """A breaker per dependency, short timeouts, a fallback cache for reads, rate limiting at
    the edge and a health checker beside the services."""
    name = "after"
    entry = "gateway"

    def build(self) -> Topology:
        k = self.knobs
        self.breakers = breakers(k)
        self.fallback = FallbackCache(clock=now)
        self.limiter = RateLimiter(k.rate_limit, k.burst, clock=now)
        cb_nodes = [Node(f"{d}_cb", label=f"{d.capitalize()} Circuit Breaker",
                         uses=(d,) if d == "payment" else (d, "fallback")) for d in DEPENDENCIES]
        control = [Node("monitor", "control", label="Circuit Monitor (breaker events)",
                        uses=tuple(f"{d}_cb" for d in DEPENDENCIES)),
                   Node("health", "control", label="Health Checker", uses=DEPENDENCIES)]
        return Topology(clients(self.entry), edge_gateway(k, self.limiter),
                        protected_orders(k, self.breakers, self.fallback), *cb_nodes,
                        *dependencies(k), Store("fallback", label="Fallback Cache"), *stores(),
                        *control, name="no circuit breakers: after", seed=k.seed)

    async def start_beside(self, stack: AsyncExitStack) -> None:
        self.health = await stack.enter_async_context(health_checker(self))


DESIGNS = {"before": Before, "after": After}


def design(name: str, knobs: Knobs | None = None) -> Breakers:
    """The design ``name`` ("before" or "after") built from ``knobs`` (defaults if None)."""
    return build(DESIGNS, name, knobs_or_default(knobs))


def health_checker(d: Breakers) -> HealthChecker:
    """Probe every dependency's /health; two failures in a row mark it down, one success up."""
    if not isinstance(d, Breakers):
        raise TypeError(f"d must be a {CHAPTER} design; got {type(d).__name__}")
    k, topo = d.knobs, d.topology

    def probe(dep):
        return lambda: topo.call(dep, "GET", "/health", timeout=k.call_timeout_ms / 1000)
    return HealthChecker({dep: probe(dep) for dep in DEPENDENCIES}, interval=k.health_interval,
                         timeout=k.call_timeout_ms / 1000 + 0.05, unhealthy_threshold=2,
                         healthy_threshold=1, clock=now)


def require_design(d) -> Breakers:
    return running_design(Breakers, d)


# -- probes: one running design ----------------------------------------------------------------
async def request(d: Breakers, i: int) -> dict:
    """Send request ``i`` to the running design: ``ENDPOINTS[i % 3]``, as a user would."""
    require_design(d)
    v.number("i", i, low=0, high=10**9, integer=True)
    endpoint = ENDPOINTS[i % 3]
    method = "POST" if endpoint == "/checkout" else "GET"
    key = i if endpoint == "/checkout" else i % KEYS
    reply = await d.call(d.entry, method, f"{endpoint}/{key}", trace_id=f"o{i}")
    return {"stale": bool(reply.get("stale", False)) if isinstance(reply, dict) else False}


@dataclass
class Outage:
    """One design through one outage. Every time is in seconds since the run started."""
    design: str
    knobs: Knobs
    target: str
    timeline: pd.DataFrame              # one row per request: t_s, endpoint, ok, latency_ms, ...
    target_calls: pd.DataFrame          # calls from the order service to the failing service
    breaker_events: pd.DataFrame        # t_s, breaker, kind, state, from_state
    health_events: pd.DataFrame         # t_s, target, healthy
    busy: pd.DataFrame                  # t_s, busy workers of the order service
    counts: dict = field(default_factory=dict)
    lag_ms: float = 0.0                 # the event loop's lateness during the run (90th pct)

    def transitions(self, breaker: str | None = None) -> list[str]:
        """The breaker's states in order, starting closed: e.g. closed, open, half_open, ..."""
        breaker = breaker or self.target
        ev = self.breaker_events
        if ev.empty:
            return ["closed"]
        ev = ev[(ev["breaker"] == breaker) & (ev["kind"] == "state_transition")]
        return ["closed"] + list(ev["state"])

    def open_during_outage(self, breaker: str | None = None) -> bool:
        """Was the breaker open at some moment of the outage: already open when it began, or
        opened during it? (On a busy machine, calls slowed by the machine can open it a little
        before the outage; it is still open, or opens again, while the outage lasts.)"""
        breaker = breaker or self.target
        k, ev = self.knobs, self.breaker_events
        if ev.empty:
            return False
        ev = ev[(ev["breaker"] == breaker) & (ev["kind"] == "state_transition")]
        before = ev[ev["t_s"] < k.outage_start]
        if len(before) and before["state"].iloc[-1] == "open":
            return True
        during = ev[(ev["t_s"] >= k.outage_start) & (ev["t_s"] < k.outage_end)]
        return bool((during["state"] == "open").any())

    @property
    def peak_busy(self) -> int:
        return int(self.busy["busy"].max()) if len(self.busy) else 0

    def never_answered_after_end(self) -> list[str]:
        """Endpoints with no 2xx answer (however late) to any request arriving after the
        outage's end: what a crashed server would show."""
        t = self.timeline
        after_end = t[t["t_s"] >= self.knobs.outage_end]
        return [ep for ep in ENDPOINTS
                if not after_end.loc[after_end["endpoint"] == ep, "answered"].any()]


async def run_outage(d: Breakers, *, target: str = "payment") -> Outage:
    """Run the running design ``d`` through an outage of ``target``.

    Requests arrive at ``rate`` per second for ``run_s`` seconds, in turn to /checkout,
    /stock and /profile (open loop: the users do not slow down because the site does). From
    ``outage_start`` to ``outage_end`` the target answers 503 after ``outage_delay_ms``.
    Answers are awaited ``grace_s`` after the last arrival; requests unanswered then are
    cancelled and count as failures.
    """
    require_design(d)
    v.one_of("target", target, DEPENDENCIES)
    k, topo = d.knobs, d.topology
    busy: list = []
    t0 = now()
    failing = topo.service(target)
    rules = [failing.faults.add(Latency(k.outage_delay_ms, distribution="fixed"),
                                start=k.outage_start, end=k.outage_end),
             failing.faults.add(Error(1.0, 503), start=k.outage_start, end=k.outage_end)]
    lateness: list = []
    sampler = topo.spawn(_watch(topo.service("orders"), busy, lateness, t0))
    try:
        res = await load.open_loop(
            lambda i: request(d, i), rate=k.rate, n=max(1, round(k.rate * k.run_s)),
            max_seconds=k.run_s + k.grace_s, progress=False, label=d.name)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        for r in rules:           # the design can be run through another outage
            failing.faults.remove(r)
    return _result(d, target, res, t0, busy, lateness)


async def _watch(svc: Service, busy: list, lateness: list, t0: float, every: float = 0.02):
    """Every ``every`` s: the service's busy workers, and how late the event loop woke this
    task (the machine's busyness during the run, which decides whether timings can be
    trusted). Bounded by the run: the design's topology cancels it at the latest."""
    while len(busy) < 100_000:
        busy.append({"t_s": now() - t0, "busy": svc.in_flight})
        t = now()
        await asyncio.sleep(every)
        lateness.append(max(0.0, (now() - t - every) * 1000))


def _result(d: Breakers, target: str, res, t0: float, busy: list, lateness: list) -> Outage:
    k = d.knobs
    df = res.df.copy()
    # load's times are ms since its own start, a few microseconds after t0: close enough.
    df["t_s"] = df["due"] / 1000
    df["endpoint"] = [ENDPOINTS[int(i) % 3] for i in df["i"]]
    if "stale" not in df:
        df["stale"] = False
    df["stale"] = df["stale"].fillna(False).astype(bool)
    df["in_outage"] = (df["t_s"] >= k.outage_start) & (df["t_s"] < k.outage_end)
    df["answered"] = df["ok"]
    df["ok"] = df["answered"] & (df["latency_ms"] <= k.patience_ms)
    df.loc[df["answered"] & ~df["ok"], "error"] = "too late"
    timeline = df[["i", "t_s", "endpoint", "ok", "answered", "latency_ms", "error", "stale",
                   "in_outage"]]

    spans = d.tracer.df()
    shift = t0 - d.tracer.t0
    calls = spans[(spans["callee"] == target) & (spans["caller"] == "orders")].copy()
    calls["t_s"] = calls["start"] / 1000 - shift
    target_calls = calls[["t_s", "duration_ms", "status"]].reset_index(drop=True)

    ev_rows = [{"t_s": e.time - t0, "breaker": e.breaker, "kind": e.kind, "state": e.state,
                "from_state": e.from_state} for cb in d.breakers.values() for e in cb.events]
    breaker_events = pd.DataFrame(ev_rows, columns=["t_s", "breaker", "kind", "state",
                                                    "from_state"])
    h_rows = [{"t_s": e.time - t0, "target": e.target, "healthy": e.healthy}
              for e in (d.health.events if d.health is not None else [])]
    health_events = pd.DataFrame(h_rows, columns=["t_s", "target", "healthy"])
    during = target_calls[(target_calls["t_s"] >= k.outage_start)
                          & (target_calls["t_s"] < k.outage_end)]
    counts = {"calls to the failing service during the outage": len(during),
              "calls to the failing service in all": len(target_calls),
              # what the calls cost the caller: seconds its workers spent waiting on them
              "seconds spent waiting on the failing service during the outage":
                  float(during["duration_ms"].sum()) / 1000}
    if d.limiter is not None:
        counts["admitted at the edge"] = d.limiter.admitted
        counts["rate limited at the edge"] = d.limiter.rejected
    if d.fallback is not None:
        counts["stale answers from the fallback cache"] = d.fallback.stale
    # The 90th percentile: a sustained overload (the harness cannot keep up), not one burst.
    lag = float(np.percentile(lateness, 90)) if lateness else 0.0
    return Outage(d.name, k, target, timeline, target_calls, breaker_events, health_events,
                  pd.DataFrame(busy, columns=["t_s", "busy"]), counts, lag)


# -- experiments: they build and release the designs themselves -------------------------------
@dataclass
class Outages:
    """Experiment 1's result: each design through the same outage, ``reps`` times, in turn.

    ``lag`` is the event loop's lateness measured just before the runs (how busy the machine
    was); ``runs["before"][r]`` and ``runs["after"][r]`` ran one after the other."""
    knobs: Knobs
    target: str
    runs: dict[str, list[Outage]]
    lag: LoopLag
    rerun: int = 0          # repetitions run again because the machine was too busy to time them

    @property
    def reps(self) -> int:
        return len(self.runs["before"])

    @property
    def lag_ms(self) -> float:
        """The worst event-loop lateness (90th percentile of 20 ms sleeps) of any run."""
        return max(o.lag_ms for runs in self.runs.values() for o in runs)

    @property
    def healthy_p50_ms(self) -> float:
        """The slowest median, over the runs with breakers, of the unaffected endpoints'
        requests during the outage: each is one ``latency_ms`` hop when the machine keeps up,
        so the excess is the machine's own share (a calibration in the same run)."""
        p50s = [during_outage(o)["p50_ms"] for o in self.runs.get("after", ())]
        p50s = [x for x in p50s if x == x]      # NaN: no such request in a run
        return max(p50s) if p50s else math.nan

    @property
    def too_busy(self) -> bool:
        """True when the machine was too busy during a run to trust its timings: the event
        loop woke up late, or healthy calls took several times their injected delay (a burst
        of load can do the second between two samples of the first)."""
        return (self.lag_ms > lag_limit_ms(self.knobs)
                or self.healthy_p50_ms > healthy_limit_ms(self.knobs))

    @property
    def busy_note(self) -> str:
        """How busy the machine was, in words (for the findings' notes)."""
        k = self.knobs
        s = (f"event-loop lag p90 {self.lag_ms:.0f} ms during the runs (timings trusted "
             f"below {lag_limit_ms(k):g} ms)")
        if self.healthy_p50_ms > healthy_limit_ms(k):
            s += (f"; healthy calls took {self.healthy_p50_ms:.0f} ms (median) for a "
                  f"{k.latency_ms:g} ms delay")
        if self.rerun:
            s += (f"; {self.rerun} repetition(s) run again: the machine was too busy to time "
                  f"them")
        return s

    def first(self, name: str) -> Outage:
        v.one_of("name", name, DESIGNS)
        return self.runs[name][0]

    def summary(self) -> pd.DataFrame:
        """The chapter's table: one row per design, the median over the repetitions."""
        per_run = pd.concat([summary(o) for name in DESIGNS for o in self.runs[name]])
        return per_run.groupby(level=0).median().loc[list(DESIGNS)]

    def unaffected(self, name: str) -> tuple[int, int]:
        """(succeeded, requests) of /stock and /profile during the outage, over every run."""
        v.one_of("name", name, DESIGNS)
        ds = [during_outage(o) for o in self.runs[name]]
        return sum(d["succeeded"] for d in ds), sum(d["requests"] for d in ds)


async def outage(knobs: Knobs | None = None, *, target: str = "payment", reps: int = 1,
                 reruns: int = BUSY_RERUNS) -> Outages:
    """Experiment 1: both designs through the same outage of ``target``, ``reps`` times each,
    interleaved (before, after, before, after, ...), each repetition with its own seed.

    A repetition the machine was too busy to time (:attr:`Outages.too_busy` of its two runs)
    is run again, same seed, after a pause, up to ``reruns`` times in all: a burst of load on
    a laptop costs a few seconds rather than the verdict. Whether to rerun is decided from
    the event loop's lateness and the *healthy* calls' times only, never from the outcome
    being measured; when the reruns are used up the last runs are kept and their verdicts
    say "not shown by this run"."""
    k = knobs_or_default(knobs)
    v.one_of("target", target, DEPENDENCIES)
    v.number("reps", reps, low=1, high=10, integer=True)
    v.number("reruns", reruns, low=0, high=10, integer=True)
    stalls = stalls_from_env()          # the course's stress check only (TOYLIB_STALLS)
    try:
        lag = await loop_lag(0.2)
        runs: dict[str, list[Outage]] = {name: [] for name in DESIGNS}
        rerun = 0
        for rep in range(reps):
            kr = replace(k, seed=(k.seed + rep) % 2**32)
            while True:
                pair = {}
                for name in DESIGNS:
                    async with design(name, kr) as d:
                        pair[name] = await run_outage(d, target=target)
                if rerun >= reruns or not Outages(k, target, {n: [o] for n, o in pair.items()},
                                                  lag).too_busy:
                    break
                rerun += 1
                await asyncio.sleep(BUSY_PAUSE_S)
            for name, o in pair.items():
                runs[name].append(o)
    finally:
        if stalls is not None:
            await stalls.stop()
    return Outages(k, target, runs, lag, rerun)


async def fallback(knobs: Knobs | None = None, *, target: str = "inventory") -> Outage:
    """Experiment 2: the after design through a slow outage of ``target`` (a read path), so
    that reads are served stale from the fallback cache while writes fail fast."""
    k = knobs_or_default(knobs)
    v.one_of("target", target, DEPENDENCIES)
    stalls = stalls_from_env()
    try:
        async with design("after", k) as d:
            return await run_outage(d, target=target)
    finally:
        if stalls is not None:
            await stalls.stop()


HEALTHY_SLOWDOWN = 3      # healthy calls slower than this x their delay (+10 ms): too busy


def healthy_limit_ms(k: Knobs) -> float:
    """The median of healthy calls above which the machine, not the design, set the pace."""
    return HEALTHY_SLOWDOWN * knobs_or_default(k).latency_ms + 10


def lag_limit_ms(k: Knobs) -> float:
    """The event-loop lateness above which a run's timings cannot be trusted: a quarter of the
    shortest time that decides a request's fate (the call timeout or the users' patience)."""
    k = knobs_or_default(k)
    return min(k.call_timeout_ms, k.patience_ms) / 4


def by_endpoint(o: Outage) -> pd.DataFrame:
    """Each endpoint's requests during the outage: success, stale answers, latency."""
    if not isinstance(o, Outage):
        raise TypeError(f"o must be an Outage; got {type(o).__name__}")
    return pd.DataFrame.from_dict({ep: during_outage(o, (ep,)) for ep in ENDPOINTS},
                                  orient="index")


# -- reading the results ---------------------------------------------------------------------
def _endpoints(endpoints) -> list[str]:
    if isinstance(endpoints, str) or not all(ep in ENDPOINTS for ep in endpoints) \
            or not endpoints:
        raise ValueError(f"endpoints must be a non-empty tuple of {', '.join(ENDPOINTS)}; "
                         f"got {endpoints!r}")
    return list(endpoints)


def _outage(o) -> Outage:
    if not isinstance(o, Outage):
        raise TypeError(f"o must be an Outage (from run_outage, outage or fallback); "
                        f"got {type(o).__name__}")
    return o


def during_outage(o: Outage, endpoints=UNAFFECTED) -> dict:
    """Success and latency of ``endpoints``' requests that arrived during the outage."""
    t = _outage(o).timeline
    d = t[t["in_outage"] & t["endpoint"].isin(_endpoints(endpoints))]
    ok = d[d["ok"]]
    return {"requests": len(d), "succeeded": int(d["ok"].sum()),
            "success": float(d["ok"].mean()) if len(d) else math.nan,
            "p50_ms": float(d["latency_ms"].median()) if len(d) else math.nan,
            "p99_ms": float(np.percentile(d["latency_ms"], 99)) if len(d) else math.nan,
            "p99_ok_ms": float(np.percentile(ok["latency_ms"], 99)) if len(ok) else math.nan,
            "stale": int(ok["stale"].sum())}


def success_by_bin(o: Outage, endpoints, bin_s: float = 0.1) -> pd.Series:
    """Share of ``endpoints``' requests that succeeded, by arrival time in bins of ``bin_s``."""
    v.number("bin_s", bin_s, low=0.01, high=60)
    t = _outage(o).timeline
    d = t[t["endpoint"].isin(_endpoints(endpoints))]
    bins = (d["t_s"] // bin_s) * bin_s
    return d.groupby(bins.round(6))["ok"].mean()


def recovery_time(o: Outage, endpoints, *, bin_s: float = 0.1, threshold: float = 0.9) -> float:
    """Seconds from the outage's end until ``endpoints`` succeed again, for good.

    The end of the last bin (of requests arriving after the outage's end) whose success rate
    is below ``threshold``, minus the outage's end; 0 when no bin after the end falls below.
    """
    v.probability("threshold", threshold)
    s = success_by_bin(o, endpoints, bin_s)
    end = o.knobs.outage_end
    bad = s[(s.index >= end - 1e-9) & (s < threshold)]
    if bad.empty:
        return 0.0
    return float(bad.index.max() + bin_s - end)


def summary(*outages: Outage) -> pd.DataFrame:
    """One row per run: what the chapter's table shows."""
    if not outages:
        raise ValueError("summary needs at least one Outage")
    rows = []
    for o in map(_outage, outages):
        un, pay = during_outage(o, UNAFFECTED), during_outage(o, ("/checkout",))
        rows.append({
            "unaffected success during outage": un["success"],
            "unaffected p50 (ms)": un["p50_ms"], "unaffected p99 (ms)": un["p99_ms"],
            "checkout p99 (ms)": pay["p99_ms"],
            f"calls reaching {o.target} during outage":
                o.counts["calls to the failing service during the outage"],
            f"seconds waiting on {o.target} during outage":
                o.counts["seconds spent waiting on the failing service during the outage"],
            "unaffected recovery (s)": recovery_time(o, UNAFFECTED),
            "checkout recovery (s)": recovery_time(o, ("/checkout",)),
            "peak busy workers": o.peak_busy})
    return pd.DataFrame(rows, index=[o.design for o in outages])


def cascade_ideal(k: Knobs) -> float | None:
    """The share of /stock and /profile requests of the outage that a queueing model says
    must fail without breakers, or None where the model does not apply.

    Checkouts arrive every ``3 / rate`` s, and from the outage's start each holds a worker for
    ``outage_delay_ms`` (plus two healthy calls), so the pool is full of blocked checkouts
    ``(pool - 1) * 3 / rate`` s into the outage. A request that arrives later waits for one of
    them to finish, longer than the users' patience when the delay exceeds patience plus the
    fill time; only the requests that arrived before the pool filled succeed.
    """
    k = knobs_or_default(k)
    length = k.outage_end - k.outage_start
    fill = (k.pool - 1) * 3 / k.rate
    hold = (k.outage_delay_ms + 2 * k.latency_ms) / 1000
    if hold - fill <= k.patience_ms / 1000 or fill >= length:
        return None
    return 1 - fill / length


# resilience4j's CircuitBreakerConfig defaults, for the knobs this chapter shrinks to fit a few
# seconds of experiment: knob -> (resilience4j's setting, its default, how to read the knob).
RESILIENCE4J_DEFAULTS = {
    "failure_threshold": ("failureRateThreshold", "50 %", "{:g} %"),
    "slow_threshold": ("slowCallRateThreshold", "100 %", "{:g} %"),
    "slow_call_ms": ("slowCallDurationThreshold", "60 s", "{:g} ms"),
    "window": ("slidingWindowSize (count-based)", "100 calls", "{:d} calls"),
    "minimum_calls": ("minimumNumberOfCalls", "100 calls", "{:d} calls"),
    "wait_in_open": ("waitDurationInOpenState", "60 s", "{:g} s"),
    "half_open_calls": ("permittedNumberOfCallsInHalfOpenState", "10 calls", "{:d} calls"),
}


def breaker_settings(k: Knobs | None = None) -> pd.DataFrame:
    """The breaker's settings in this chapter beside resilience4j's defaults, and which differ."""
    k = knobs_or_default(k)
    rows = []
    for knob, (setting, default, fmt) in RESILIENCE4J_DEFAULTS.items():
        here = fmt.format(getattr(k, knob))
        rows.append({"resilience4j setting": setting, "default": default, "here": here,
                     "knob": knob, "differs": here != default})
    return pd.DataFrame(rows).set_index("resilience4j setting")

# -- the breaker's rules, on a script -------------------------------------------------------------
def replay(script, **breaker_kwargs) -> pd.DataFrame:
    """Feed a scripted list of ``(t, outcome)`` to a breaker on a fake clock.

    ``outcome`` is "ok", "fail" or "slow" (a success slower than ``slow_call_duration``).
    One row per call: t, its outcome, the state that admitted or refused it, whether it was
    let through, the state after it. The breaker's own rules decide; nothing here depends on
    timing, so the table is the same on every machine.
    """
    script = list(script)
    if not 1 <= len(script) <= 10_000:
        raise ValueError(f"script must hold 1 to 10,000 (t, outcome) pairs; got {len(script)}")
    clock = FakeClock()
    cb = CircuitBreaker("scripted", clock=clock, **breaker_kwargs)
    slow = (cb.slow_call_duration or 0) + 1.0
    rows = []
    for step in script:
        if not isinstance(step, tuple) or len(step) != 2:
            raise TypeError(f"script must hold (t, outcome) pairs; got {step!r}")
        t, outcome = step
        v.one_of("outcome", outcome, ("ok", "fail", "slow"))
        clock.t = v.number("t", t, low=clock.t, high=10**6)
        allowed = cb.try_acquire()          # may move open -> half_open first (lazily)
        asked = cb.state
        if allowed:
            if outcome == "fail":
                cb.on_error(0.01, RuntimeError("injected"))
            else:
                cb.on_success(slow if outcome == "slow" else 0.01)
        rows.append({"t": t, "outcome": outcome if allowed else "-", "state asked": asked,
                     "let through": allowed, "state after": cb.state})
    return pd.DataFrame(rows)


# -- the picture -----------------------------------------------------------------------------
STATE_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


def state_steps(o: Outage, breaker: str) -> tuple[list, list]:
    """(times, levels) of a breaker's state over the run, for a step plot; closed = 0."""
    ev = _outage(o).breaker_events
    v.one_of("breaker", breaker, DEPENDENCIES)
    ev = ev[(ev["breaker"] == breaker) & (ev["kind"] == "state_transition")]
    end = max([float(o.timeline["t_s"].max())] + list(ev["t_s"])) + 0.2
    ts = [0.0] + list(ev["t_s"]) + [end]
    levels = [0] + [STATE_LEVEL[s] for s in ev["state"]]
    return ts, levels + levels[-1:]


def timeline_figure(*outages: Outage, bin_s: float = 0.1):
    """Success and latency of the unaffected endpoints, calls reaching the failing service,
    and (for a design with breakers) the breakers' states, against the shaded outage."""
    import matplotlib.pyplot as plt

    from toylib.present import plots
    if not outages:
        raise ValueError("timeline_figure needs at least one Outage")
    for o in outages:
        _outage(o)
    k = outages[0].knobs
    with_breakers = [o for o in outages if not o.breaker_events.empty]
    rows = 3 + bool(with_breakers)
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.3 * rows), sharex=True, layout="constrained")
    colors = {"before": plots.BEFORE, "after": plots.AFTER}
    for o in outages:
        c = colors.get(o.design, plots.PALETTE[2])
        s = success_by_bin(o, UNAFFECTED, bin_s)
        axes[0].step(s.index, s.values, where="post", color=c, label=o.design)
        d = o.timeline[o.timeline["endpoint"].isin(list(UNAFFECTED))]
        axes[1].scatter(d["t_s"], d["latency_ms"], s=6, color=c, label=o.design)
        calls = o.target_calls.groupby((o.target_calls["t_s"] // bin_s) * bin_s).size()
        last = max(k.run_s, float(o.target_calls["t_s"].max()) if len(o.target_calls) else 0)
        calls = calls.reindex(np.round(np.arange(0, last + bin_s, bin_s), 6), fill_value=0)
        axes[2].step(calls.index, calls.values, where="post", color=c, label=o.design)
    axes[1].axhline(k.patience_ms, color=plots.IDEAL, ls="--", lw=1, label="users' patience")
    axes[0].set_ylabel("success\n(/stock, /profile)")
    axes[0].set_ylim(-0.05, 1.05)
    axes[1].set_ylabel("latency (ms)\n(/stock, /profile)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel(f"calls reaching\n{outages[0].target} per {bin_s:g} s")
    for o in with_breakers:
        for name in o.breaker_events["breaker"].unique():
            ts, levels = state_steps(o, name)
            axes[3].step(ts, levels, where="post", lw=2 if name == o.target else 1,
                         alpha=1 if name == o.target else 0.5, label=f"{name} breaker")
        for e in o.health_events.itertuples():
            if e.target == o.target:
                axes[3].axvline(e.t_s, color=plots.IDEAL, ls=":", lw=1)
                axes[3].annotate(f"health: {'up' if e.healthy else 'down'}", (e.t_s, 1.5),
                                 fontsize=7, rotation=90, ha="right", va="center")
        axes[3].set_yticks(list(STATE_LEVEL.values()), list(STATE_LEVEL))
        axes[3].set_ylabel(f"breaker state\n({o.design})")
    for ax in axes:
        ax.axvspan(k.outage_start, k.outage_end, color=plots.BEFORE, alpha=0.12,
                   label=f"{outages[0].target} outage")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("time since the run started (s); requests by arrival time")
    axes[-1].set_xlim(left=0)
    axes[0].set_title(f"An outage of {outages[0].target} from {k.outage_start:g} s to "
                      f"{k.outage_end:g} s")
    return fig


# -- the source's claims, declared once ---------------------------------------------------------
_BOUNDED_POOL = ("one bounded pool of workers serves every endpoint, calls have no timeout, and "
                 "payment fails slowly (its error comes later than users wait)")
CLAIMS = (
    Claim(f"{CHAPTER}.outages", "system-wide outages",
          "No protection against cascading failures leads to system-wide outages.",
          "share of /stock and /profile requests (their own services healthy) that failed "
          "during the payment outage, without breakers",
          1.0, at_least=True, tolerance=0.5, conditional=True,
          assumptions=_BOUNDED_POOL + "; holds when the interval shows at least half failed"),
    Claim(f"{CHAPTER}.blocked", "threads blocked waiting",
          "Payment Service Down → Threads Blocked Waiting",
          "share of the order service's workers busy at the peak of the outage, "
          "without breakers",
          1.0, at_least=True, tolerance=1.0, assumptions=_BOUNDED_POOL),
    Claim(f"{CHAPTER}.crash", "memory exhaustion, system crash",
          "Threads Blocked Waiting → Memory Exhaustion → System Crash",
          "endpoints (of 3) that never answered again after the outage ended, without breakers",
          3.0, at_least=True, tolerance=1 / 3, unit="endpoints",
          assumptions="a bounded pool queues work instead of starting a thread per request, so "
                      "memory stays bounded; a thread-per-request server can run out of it"),
    Claim(f"{CHAPTER}.graceful", "graceful degradation",
          "No Circuit Breakers: System-wide outages → Circuit protection: Graceful degradation",
          "share of /stock and /profile requests that succeeded during the payment outage, "
          "with a breaker per dependency",
          1.0, at_least=True, tolerance=0.9,
          assumptions="a breaker and a short timeout per dependency, a fallback cache for reads; "
                      "checkouts still fail while payment is down (contained, not hidden)"),
)


def findings(runs: Outages) -> list[Finding]:
    """Judge every claim in :data:`CLAIMS` from Experiment 1's runs (all repetitions pooled).

    Proportions get Wilson intervals, peaks and endpoints are exact counts. When the machine
    was too busy during a run (:attr:`Outages.too_busy`), the figures that timing decides are
    widened to everything they could be, so their verdict is "not shown by this run" instead
    of a verdict the machine, not the design, produced.
    """
    if not isinstance(runs, Outages):
        raise TypeError(f"runs must be the Outages of outage(...); got {type(runs).__name__}")
    k, claims = runs.knobs, {c.id.split(".", 1)[1]: c for c in CLAIMS}
    ok_b, n_b = runs.unaffected("before")
    ok_a, n_a = runs.unaffected("after")
    peaks = [o.peak_busy for o in runs.runs["before"]]
    crashed = max(len(o.never_answered_after_end()) for o in runs.runs["before"])
    lag = runs.busy_note

    def timed(e: Estimate, low: float, high: float) -> Estimate:
        if not runs.too_busy:
            return e
        return e.too_busy(low, high)
    return [
        claims["outages"].judge(timed(Estimate.proportion(n_b - ok_b, n_b), 0, 1),
                                ideal=cascade_ideal(k),
                                note=f"{n_b - ok_b} of {n_b} failed over {runs.reps} run(s); "
                                     f"{lag}"),
        claims["blocked"].judge(Estimate.exact(min(peaks) / k.pool, n=runs.reps), ideal=1.0,
                                note=f"peak {min(peaks)} of {k.pool} workers busy (lowest of "
                                     f"{runs.reps} run(s))"),
        claims["crash"].judge(timed(Estimate.exact(crashed, n=runs.reps, unit="endpoints"),
                                    0, len(ENDPOINTS)), ideal=0.0,
                              note="every endpoint answered again after the outage" if not
                              crashed else f"{crashed} endpoint(s) never answered again"),
        claims["graceful"].judge(timed(Estimate.proportion(ok_a, n_a), 0, 1), ideal=1.0,
                                 note=f"{ok_a} of {n_a} succeeded over {runs.reps} run(s); "
                                      f"{lag}"),
    ]


# A short outage for the audit: payment fails slowly for 1.4 s (answering after 1 s) while
# users wait 0.5 s, so a request queued behind the blocked checkouts misses its user's
# patience by a clear margin; the breaker waits 0.5 s in open, so it closes again within the
# second of requests after the outage; 1.5 s of grace lets the queue behind the last blocked
# checkouts drain, so "answered again" is not cut short. Two repetitions pool about 85
# requests of the unaffected endpoints per design.
AUDIT_KNOBS = Knobs(run_s=2.8, outage_start=0.4, outage_end=1.8, outage_delay_ms=1000,
                    patience_ms=500, grace_s=1.5, wait_in_open=0.5)
AUDIT_REPS = 2


async def audit(knobs: Knobs | None = None) -> list[Finding]:
    """A small run of Experiment 1 (about 15 s) judged against every claim."""
    return findings(await outage(AUDIT_KNOBS if knobs is None else knobs, reps=AUDIT_REPS))


# -- the static site's explorer ----------------------------------------------------------------
SWEEP_POOLS = (3, 6, 12)
SWEEP_WAITS = (0.25, 1.0)


async def sweep(knobs: Knobs | None = None) -> pd.DataFrame:
    """Experiment 1 over a grid of the order service's pool size and the breaker's wait in
    open: one row per grid point and design, with the knobs and what was measured (about
    35 s), for the static site's controls. The before design has no breaker, so it runs once
    per pool size and its row is repeated for each wait (``measured_with_wait`` says which
    wait its run had)."""
    base = replace(AUDIT_KNOBS, run_s=2.4, outage_end=1.6) if knobs is None \
        else knobs_or_default(knobs)
    rows = []
    for pool in SWEEP_POOLS:
        before = None
        for wait in SWEEP_WAITS:
            k = replace(base, pool=pool, wait_in_open=wait)
            for name in DESIGNS:
                if name == "before" and before is not None:
                    rows.append({**before, "wait_in_open": wait})
                    continue
                async with design(name, k) as d:
                    o = await run_outage(d)
                row = _sweep_row(o)
                rows.append(row)
                if name == "before":
                    before = row
    return pd.DataFrame(rows)


def _sweep_row(o: Outage) -> dict:
    un, pay = during_outage(o), during_outage(o, ("/checkout",))
    return {"design": o.design, "pool": o.knobs.pool, "wait_in_open": o.knobs.wait_in_open,
            "measured_with_wait": o.knobs.wait_in_open,
            "unaffected requests": un["requests"], "unaffected succeeded": un["succeeded"],
            "unaffected success": un["success"], "unaffected p50 (ms)": un["p50_ms"],
            "checkout p99 (ms)": pay["p99_ms"],
            "calls reaching payment during outage":
                o.counts["calls to the failing service during the outage"],
            "seconds waiting on payment during outage":
                o.counts["seconds spent waiting on the failing service during the outage"],
            "unaffected recovery (s)": recovery_time(o, UNAFFECTED),
            "checkout recovery (s)": recovery_time(o, ("/checkout",)),
            "peak busy workers": o.peak_busy,
            "payment breaker states": " ".join(o.transitions("payment")),
            "event-loop lag p90 (ms)": o.lag_ms}
