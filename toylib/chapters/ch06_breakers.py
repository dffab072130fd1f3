"""Chapter 6, No circuit breakers: one slow failure becomes everyone's failure, and the fix.

* **Before**: the order service has a bounded pool of workers and three endpoints:
  ``/checkout`` (user, then inventory, then payment), ``/stock`` (inventory only) and
  ``/profile`` (user only). During an outage the payment service *fails slowly*: it answers
  503 after ``outage_delay_ms``, and the order service waits for it with no timeout. Every
  checkout holds a worker for that long, the pool fills, requests queue for a worker, and
  ``/stock`` and ``/profile`` miss the users' patience too, although inventory and user are
  fine.
* **After**: a circuit breaker per dependency (:class:`toylib.resilience.breaker.CircuitBreaker`, failure-
  and slow-call-rate thresholds over a sliding window), short timeouts, a fallback cache for
  the reads, rate limiting at the edge and a health checker that watches every dependency.
  Once the payment breaker opens, checkouts fail in a millisecond and the workers stay free.

:func:`outage` runs one design through an outage with a start and an end and returns an
:class:`Outage`: a timeline (one row per request), the calls that reached the failing service,
the breaker and health events, and the pool's busy workers, all in seconds since the start.

The users are patient, as the seed's "long timeouts, 30 s+" are: the load generator waits for
every answer, so no request is abandoned and no work is cancelled, exactly like a server whose
worker threads cannot be interrupted. A request *succeeds* when it is answered 2xx within
``patience_ms``; a slower answer comes too late for a user who has left.
"""
from __future__ import annotations

import asyncio
import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from aiohttp import web

from toylib.core import validate as v
from toylib.core import load
from toylib.resilience.breaker import CallNotPermitted, CircuitBreaker
from toylib.resilience.fallback import FallbackCache
from toylib.core.faults import Error, Latency
from toylib.resilience.health import HealthChecker
from toylib.resilience.ratelimit import RateLimiter
from toylib.core.services import CallError, Node, Service, Store, Topology, sample_busy
from toylib.core.clock import now

DEPENDENCIES = ("payment", "inventory", "user")
ENDPOINTS = ("/checkout", "/stock", "/profile")       # request i goes to ENDPOINTS[i % 3]
UNAFFECTED = ("/stock", "/profile")                   # they never touch payment
KEYS = 20                                             # distinct users and products


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated once. Times of the schedule in seconds, others in ms."""
    pool: int = 12                 # workers of the order service
    latency_ms: float = 20.0       # every dependency's normal latency
    outage_start: float = 1.0      # seconds after the run starts
    outage_end: float = 3.0
    outage_delay_ms: float = 1500.0    # during the outage payment answers 503 after this
    rate: float = 90.0             # requests per second, a third to each endpoint
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
    health_interval: float = 0.1       # after: seconds between health probes
    seed: int = 0

    def __post_init__(self):
        v.number("pool", self.pool, low=1, high=1000, integer=True)
        v.number("latency_ms", self.latency_ms, low=0, high=5000)
        v.non_negative("outage_start", self.outage_start)
        v.number("outage_end", self.outage_end, low=self.outage_start, low_open=True)
        v.non_negative("outage_delay_ms", self.outage_delay_ms)
        v.number("rate", self.rate, low=0, low_open=True, high=1000)
        v.number("run_s", self.run_s, low=0, low_open=True, high=60)
        v.positive("patience_ms", self.patience_ms)
        v.non_negative("grace_s", self.grace_s)
        v.positive("call_timeout_ms", self.call_timeout_ms)
        v.number("failure_threshold", self.failure_threshold, low=0, low_open=True, high=100)
        v.non_negative("slow_call_ms", self.slow_call_ms)
        v.number("slow_threshold", self.slow_threshold, low=0, low_open=True, high=100)
        v.number("window", self.window, low=1, high=10_000, integer=True)
        v.number("minimum_calls", self.minimum_calls, low=1, integer=True)
        v.positive("wait_in_open", self.wait_in_open)
        v.positive("half_open_calls", self.half_open_calls, integer=True)
        v.positive("rate_limit", self.rate_limit)
        v.number("burst", self.burst, low=1)
        v.positive("health_interval", self.health_interval)
        v.number("seed", self.seed, integer=True)


# -- the dependencies, identical in both designs ------------------------------------------------
def dependencies(k: Knobs) -> list[Service]:
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


def _stores() -> list[Node]:
    return [Store("payment_db", label="Payment DB"), Store("inventory_db", label="Inventory DB"),
            Store("user_db", label="User DB")]


def _client(entry: str) -> Node:
    return Node("clients", "edge", label="Clients", uses=(entry,), shape="client")


# -- before: no breaker, no timeout ---------------------------------------------------------------
def naive_orders(k: Knobs) -> Service:
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


def before(k: Knobs | None = None) -> Topology:
    k = k or Knobs()
    topo = Topology(_client("orders"), naive_orders(k), *dependencies(k), *_stores(),
                    name="no circuit breakers: before", seed=k.seed)
    topo.entry, topo.breakers, topo.limiter, topo.fallback = "orders", {}, None, None
    return topo


# -- after: breakers, fallback cache, edge rate limiting, health checks ---------------------------
def breakers(k: Knobs) -> dict[str, CircuitBreaker]:
    """One breaker per dependency, so that payment's trouble cannot open the others."""
    return {d: CircuitBreaker(d, failure_rate_threshold=k.failure_threshold,
                              slow_call_rate_threshold=k.slow_threshold,
                              slow_call_duration=k.slow_call_ms / 1000, window_type="count",
                              window_size=k.window, minimum_calls=k.minimum_calls,
                              wait_in_open=k.wait_in_open,
                              permitted_in_half_open=k.half_open_calls, clock=now)
            for d in DEPENDENCIES}


def protected_orders(k: Knobs, cbs: dict[str, CircuitBreaker], cache: FallbackCache) -> Service:
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
    why = "circuit open" if isinstance(e, CallNotPermitted) else e.kind
    return web.json_response({"error": f"{what} unavailable ({why})"}, status=503)


def edge_gateway(k: Knobs, limiter: RateLimiter) -> Service:
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


def after(k: Knobs | None = None) -> Topology:
    k = k or Knobs()
    cbs = breakers(k)
    cache = FallbackCache(clock=now)
    limiter = RateLimiter(k.rate_limit, k.burst, clock=now)
    cb_nodes = [Node(f"{d}_cb", label=f"{d.capitalize()} Circuit Breaker",
                     uses=(d,) if d == "payment" else (d, "fallback")) for d in DEPENDENCIES]
    control = [Node("monitor", "control", label="Circuit Monitor (breaker events)",
                    uses=tuple(f"{d}_cb" for d in DEPENDENCIES)),
               Node("health", "control", label="Health Checker", uses=DEPENDENCIES)]
    topo = Topology(_client("gateway"), edge_gateway(k, limiter), protected_orders(k, cbs, cache),
                    *cb_nodes, *dependencies(k), Store("fallback", label="Fallback Cache"),
                    *_stores(), *control, name="no circuit breakers: after", seed=k.seed)
    topo.entry, topo.breakers, topo.limiter, topo.fallback = "gateway", cbs, limiter, cache
    return topo


def health_checker(topo: Topology, k: Knobs) -> HealthChecker:
    """Probe every dependency's /health; two failures in a row mark it down, one success up."""
    def probe(dep):
        return lambda: topo.call(dep, "GET", "/health", timeout=k.call_timeout_ms / 1000)
    return HealthChecker({d: probe(d) for d in DEPENDENCIES}, interval=k.health_interval,
                         timeout=k.call_timeout_ms / 1000 + 0.05, unhealthy_threshold=2,
                         healthy_threshold=1, clock=now)


# -- the experiment --------------------------------------------------------------------------------
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

    def transitions(self, breaker: str | None = None) -> list[str]:
        """The breaker's states in order, starting closed: e.g. closed, open, half_open, ..."""
        breaker = breaker or self.target
        ev = self.breaker_events
        if ev.empty:
            return ["closed"]
        ev = ev[(ev["breaker"] == breaker) & (ev["kind"] == "state_transition")]
        return ["closed"] + list(ev["state"])


async def outage(design: str, k: Knobs | None = None, *, target: str = "payment") -> Outage:
    """Run ``design`` ("before" or "after") through an outage of ``target``.

    Requests arrive at ``k.rate`` per second for ``k.run_s`` seconds, in turn to /checkout,
    /stock and /profile (open loop: the users do not slow down because the site does). From
    ``outage_start`` to ``outage_end`` the target answers 503 after ``outage_delay_ms``.
    Answers are awaited ``grace_s`` after the last arrival; requests unanswered then are
    cancelled and count as failures.
    """
    v.one_of("design", design, ("before", "after"))
    v.one_of("target", target, DEPENDENCIES)
    k = k or Knobs()
    if k.outage_end > k.run_s:
        raise ValueError(f"outage_end must be <= run_s ({k.run_s}); got {k.outage_end!r}")
    topo = (before if design == "before" else after)(k)
    busy: list = []
    health = None
    async with topo:
        if design == "after":
            health = health_checker(topo, k)
        async with (health if health is not None else nullcontext()):
            t0 = now()
            failing = topo.service(target)
            failing.faults.add(Latency(k.outage_delay_ms, distribution="fixed"),
                               start=k.outage_start, end=k.outage_end)
            failing.faults.add(Error(1.0, 503), start=k.outage_start, end=k.outage_end)
            sampler = topo.spawn(sample_busy(topo.service("orders"), 0.02, busy, t0))
            res = await load.open_loop(
                lambda i: _request(topo, i, k), rate=k.rate, n=max(1, round(k.rate * k.run_s)),
                max_seconds=k.run_s + k.grace_s, progress=False,
                label=design)
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        spans = topo.tracer.df()
        tracer_t0 = topo.tracer.t0
    return _result(design, k, target, res, spans, tracer_t0, t0, topo, health, busy)


async def _request(topo: Topology, i: int, k: Knobs) -> dict:
    endpoint = ENDPOINTS[i % 3]
    method = "POST" if endpoint == "/checkout" else "GET"
    key = i if endpoint == "/checkout" else i % KEYS
    reply = await topo.call(topo.entry, method, f"{endpoint}/{key}", trace_id=f"o{i}")
    return {"stale": bool(reply.get("stale", False)) if isinstance(reply, dict) else False}


def _result(design, k, target, res, spans, tracer_t0, t0, topo, health, busy) -> Outage:
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

    shift = t0 - tracer_t0
    calls = spans[(spans["callee"] == target) & (spans["caller"] == "orders")].copy()
    calls["t_s"] = calls["start"] / 1000 - shift
    target_calls = calls[["t_s", "duration_ms", "status"]].reset_index(drop=True)

    ev_rows = [{"t_s": e.time - t0, "breaker": e.breaker, "kind": e.kind, "state": e.state,
                "from_state": e.from_state} for cb in topo.breakers.values() for e in cb.events]
    breaker_events = pd.DataFrame(ev_rows, columns=["t_s", "breaker", "kind", "state",
                                                    "from_state"])
    h_rows = [{"t_s": e.time - t0, "target": e.target, "healthy": e.healthy}
              for e in (health.events if health is not None else [])]
    health_events = pd.DataFrame(h_rows, columns=["t_s", "target", "healthy"])
    during = target_calls[(target_calls["t_s"] >= k.outage_start)
                          & (target_calls["t_s"] < k.outage_end)]
    counts = {"calls to the failing service during the outage": len(during),
              "calls to the failing service in all": len(target_calls)}
    if topo.limiter is not None:
        counts["admitted at the edge"] = topo.limiter.admitted
        counts["rate limited at the edge"] = topo.limiter.rejected
    if topo.fallback is not None:
        counts["stale answers from the fallback cache"] = topo.fallback.stale
    return Outage(design, k, target, timeline, target_calls, breaker_events, health_events,
                  pd.DataFrame(busy, columns=["t_s", "busy"]), counts)


# -- reading the results ---------------------------------------------------------------------
def during_outage(o: Outage, endpoints=UNAFFECTED) -> dict:
    """Success and latency of ``endpoints``' requests that arrived during the outage."""
    d = o.timeline[o.timeline["in_outage"] & o.timeline["endpoint"].isin(list(endpoints))]
    ok = d[d["ok"]]
    return {"requests": len(d), "succeeded": int(d["ok"].sum()),
            "success": float(d["ok"].mean()) if len(d) else math.nan,
            "p50_ms": float(d["latency_ms"].median()) if len(d) else math.nan,
            "p99_ms": float(np.percentile(d["latency_ms"], 99)) if len(d) else math.nan,
            "p99_ok_ms": float(np.percentile(ok["latency_ms"], 99)) if len(ok) else math.nan,
            "stale": int(ok["stale"].sum())}


def success_by_bin(o: Outage, endpoints, bin_s: float = 0.1) -> pd.Series:
    """Share of ``endpoints``' requests that succeeded, by arrival time in bins of ``bin_s``."""
    v.positive("bin_s", bin_s)
    d = o.timeline[o.timeline["endpoint"].isin(list(endpoints))]
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
    """The chapter's table: one row per design."""
    rows = {}
    for o in outages:
        un, pay = during_outage(o, UNAFFECTED), during_outage(o, ("/checkout",))
        rows[o.design] = {
            "unaffected success during outage": un["success"],
            "unaffected p50 (ms)": un["p50_ms"], "unaffected p99 (ms)": un["p99_ms"],
            "checkout p99 (ms)": pay["p99_ms"],
            f"calls reaching {o.target} during outage":
                o.counts["calls to the failing service during the outage"],
            "unaffected recovery (s)": recovery_time(o, UNAFFECTED),
            "checkout recovery (s)": recovery_time(o, ("/checkout",)),
            "peak busy workers": int(o.busy["busy"].max()) if len(o.busy) else 0}
    return pd.DataFrame(rows).T


# -- the breaker's rules, on a script -------------------------------------------------------------
def replay(script, **breaker_kwargs) -> pd.DataFrame:
    """Feed a scripted list of ``(t, outcome)`` to a breaker on a fake clock.

    ``outcome`` is "ok", "fail" or "slow" (a success slower than ``slow_call_duration``).
    One row per call: t, its outcome, the state that admitted or refused it, whether it was
    let through, the state after it. The breaker's own rules decide; nothing here depends on
    timing, so the table is the same on every machine.
    """
    clock = _ScriptClock()
    cb = CircuitBreaker("scripted", clock=clock, **breaker_kwargs)
    slow = (cb.slow_call_duration or 0) + 1.0
    rows = []
    for t, outcome in script:
        v.one_of("outcome", outcome, ("ok", "fail", "slow"))
        clock.t = v.number("t", t, low=clock.t)
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


class _ScriptClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# -- the picture -----------------------------------------------------------------------------
STATE_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


def state_steps(o: Outage, breaker: str) -> tuple[list, list]:
    """(times, levels) of a breaker's state over the run, for a step plot; closed = 0."""
    ev = o.breaker_events
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
