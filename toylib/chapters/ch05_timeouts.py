"""Chapter 5, No timeouts: a hung dependency exhausts a worker pool, and the fix.

* **Before**: the product API has a bounded pool of workers (``max_concurrency``, like a
  fixed thread pool) and serves two endpoints: ``/product/{id}`` (calls the healthy catalog)
  and ``/recommendations/{id}`` (calls the recommender). The recommender sometimes accepts a
  request and never answers, and the API calls it with **no timeout**: every hung call keeps a
  worker forever, the pool fills, and the healthy endpoint starves behind it.
* **After**: every remote call has a timeout chosen from the recommender's *measured* latency
  distribution; the edge gives each request a deadline that travels downstream; failed calls
  are retried with capped exponential backoff and jitter, within a per-process retry budget and
  only while the deadline leaves time for another attempt. A request that cannot be served in
  time gets a fast 504 instead of hanging.

Four smaller experiments complete the chapter: how the false-timeout rate depends on the
timeout (:func:`measure_latency`, :func:`false_timeout_rate`), whether any request outlives its
deadline (:func:`deadline_experiment`), retry amplification across layers
(:func:`amplification`), and many clients retrying against a recovering dependency with and
without jitter (:func:`shared_recovery`).
"""
from __future__ import annotations

import asyncio
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, replace
from statistics import NormalDist

import pandas as pd
from aiohttp import web

from toylib.core import validate as v
from toylib.core import deadline as dl
from toylib.core import load
from toylib.core.faults import Error, Hang, Latency
from toylib.resilience.retry import POLICIES, RetryBudget, RetryStats, retry
from toylib.core.services import CallError, Node, Service, Store, Topology, sample_busy
from toylib.core.clock import now

HEALTHY, HUNG = "/product", "/recommendations"     # the two endpoints of the product API


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated once. Times in milliseconds, as the widgets show them."""
    pool: int = 8                  # workers of the product API
    latency_ms: float = 20.0       # the recommender's median latency
    sigma: float = 0.5             # its lognormal shape: the longer the tail, the larger
    hang_p: float = 0.2            # probability that a recommender request never answers
    catalog_ms: float = 20.0       # the healthy catalog's latency
    timeout_ms: float = 100.0      # after: per-attempt timeout of the recommender call
    attempts: int = 3              # after: tries per request, the first included
    policy: str = "full"           # after: backoff jitter policy
    base_ms: float = 20.0          # after: first backoff delay (before jitter)
    cap_ms: float = 200.0          # after: largest backoff delay
    budget_ratio: float | None = 0.3   # after: retries per request allowed (None: no budget)
    budget_burst: float = 5.0      # after: retries a quiet process may save up
    deadline_ms: float | None = 500.0  # after: the edge's budget per request (None: none)
    reply_ms: float = 10.0         # after: time kept back from the deadline to send the answer
    seed: int = 0

    def __post_init__(self):
        v.number("pool", self.pool, low=1, high=1000, integer=True)
        v.number("latency_ms", self.latency_ms, low=0, low_open=True, high=10_000)
        v.number("sigma", self.sigma, low=0, high=3)
        v.probability("hang_p", self.hang_p)
        v.number("catalog_ms", self.catalog_ms, low=0, high=10_000)
        v.number("timeout_ms", self.timeout_ms, low=0, low_open=True, high=60_000)
        v.number("attempts", self.attempts, low=1, high=20, integer=True)
        v.one_of("policy", self.policy, POLICIES)
        v.positive("base_ms", self.base_ms)
        v.number("cap_ms", self.cap_ms, low=self.base_ms)
        v.optional(v.probability, "budget_ratio", self.budget_ratio)
        v.number("budget_burst", self.budget_burst, low=1)
        v.optional(v.positive, "deadline_ms", self.deadline_ms)
        v.number("reply_ms", self.reply_ms, low=0, high=10_000)
        v.number("seed", self.seed, integer=True)


def transient(exc: BaseException) -> bool:
    """May this failure be retried? Timeouts, resets, refusals and 5xx answers: yes.

    Not an explicit "overloaded" answer (the server asked for less traffic), not a spent
    deadline (nobody is waiting any more), not a 4xx (it would fail again the same way).
    """
    if not isinstance(exc, CallError):
        return False
    if exc.kind in ("timeout", "reset", "refused"):
        return True
    return exc.kind == "http" and exc.status is not None and exc.status >= 500


# -- the services, identical in both designs ----------------------------------------------------
def recommender(k: Knobs) -> Service:
    """Answers after a lognormal delay (median ``latency_ms``); hangs with probability hang_p."""
    recs = Service("recs", label="Recommender", uses=("recs_db",))

    @recs.get("/recs/{id}")
    async def get_recs(request):
        uid = int(request.match_info["id"])
        return {"id": uid, "items": [(uid * 31 + j) % 1000 for j in range(5)]}

    if k.latency_ms:
        recs.faults.add(Latency(k.latency_ms, k.sigma * k.latency_ms, "lognormal"))
    if k.hang_p:
        recs.faults.add(Hang(), toxicity=k.hang_p)
    return recs


def catalog(k: Knobs) -> Service:
    cat = Service("catalog", label="Catalog", uses=("catalog_db",))

    @cat.get("/items/{id}")
    async def get_item(request):
        return {"id": int(request.match_info["id"]), "name": f"item {request.match_info['id']}"}

    if k.catalog_ms:
        cat.faults.add(Latency(k.catalog_ms))
    return cat


def _stores() -> list[Node]:
    return [Node("clients", "edge", label="Clients", uses=("api",), shape="client"),
            Store("catalog_db", label="Catalog DB"), Store("recs_db", label="Recs DB")]


# -- before: no timeout anywhere -----------------------------------------------------------------
def naive_api(k: Knobs) -> Service:
    api = Service("api", label=f"Product API ({k.pool} workers)", uses=("catalog", "recs"),
                  max_concurrency=k.pool, when_full="wait")

    @api.get(HEALTHY + "/{id}")
    async def product(request):
        return await api.call("catalog", "GET", f"/items/{request.match_info['id']}")

    @api.get(HUNG + "/{id}")
    async def recommendations(request):
        # No timeout: if the recommender never answers, neither does this worker.
        return await api.call("recs", "GET", f"/recs/{request.match_info['id']}")

    return api


def before(k: Knobs | None = None) -> Topology:
    k = k or Knobs()
    return Topology(naive_api(k), catalog(k), recommender(k), *_stores(),
                    name="no timeouts: before", seed=k.seed)


# -- after: timeouts, deadlines, backoff with jitter, a retry budget ------------------------------
def guarded_api(k: Knobs, stats: RetryStats, budget: RetryBudget | None) -> Service:
    api = Service("api", label=f"Product API ({k.pool} workers)",
                  uses=("catalog", "recs", "timeouts", "budget"),
                  max_concurrency=k.pool, when_full="wait")
    rng = random.Random(k.seed)
    timeout = k.timeout_ms / 1000

    def edge_deadline():
        # The edge starts the clock unless the caller sent a tighter deadline; the calls made
        # for this request get what is left minus reply_ms, the time it takes to answer.
        own = dl.Deadline.after(k.deadline_ms / 1000) if k.deadline_ms else None
        inherited = dl.current()
        at = min((d.at for d in (own, inherited) if d is not None), default=None)
        return (dl.scope(dl.Deadline(at - k.reply_ms / 1000)) if at is not None
                else nullcontext())

    @api.get(HEALTHY + "/{id}")
    async def product(request):
        with edge_deadline():
            return await api.call("catalog", "GET", f"/items/{request.match_info['id']}",
                                  timeout=timeout)

    @api.get(HUNG + "/{id}")
    async def recommendations(request):
        path = f"/recs/{request.match_info['id']}"
        with edge_deadline():
            try:
                return await retry(lambda: api.call("recs", "GET", path, timeout=timeout),
                                   attempts=k.attempts, policy=k.policy, base=k.base_ms / 1000,
                                   cap=k.cap_ms / 1000, budget=budget, retryable=transient,
                                   rng=rng, stats=stats, min_attempt=k.latency_ms / 1000)
            except CallError as e:
                # An answer, fast, that says what happened: the worker is free again.
                return web.json_response({"error": f"recommendations unavailable ({e.kind})"},
                                         status=504)

    return api


def after(k: Knobs | None = None) -> Topology:
    k = k or Knobs()
    stats = RetryStats()
    budget = (RetryBudget(k.budget_ratio, burst=k.budget_burst)
              if k.budget_ratio is not None else None)
    controls = [Node("timeouts", "control", label="Timeouts from measured p99.9 + deadline"),
                Node("budget", "control", label="Retry budget + backoff with jitter")]
    topo = Topology(guarded_api(k, stats, budget), catalog(k), recommender(k), *_stores(),
                    *controls, name="no timeouts: after", seed=k.seed)
    topo.retry_stats, topo.budget = stats, budget
    return topo


# -- experiment 1: the pool fills, the healthy endpoint starves ----------------------------------
async def mixed_load(topo: Topology, *, rate: float = 60.0, seconds: float = 2.5,
                     grace: float = 1.0, sample_every: float = 0.02, label: str = ""):
    """Open-loop load on the API, alternating the healthy and the hung endpoint.

    Requests arrive at ``rate`` per second for ``seconds``; after ``grace`` more seconds every
    request still running is cancelled and counted as hung (``error == "unfinished"``).
    Returns ``(LoadResult, pool)``: the result has an ``endpoint`` column; ``pool`` is a
    DataFrame of the API's busy workers over time.
    """
    v.positive("rate", rate)
    v.positive("seconds", seconds)
    v.non_negative("grace", grace)
    v.positive("sample_every", sample_every)
    n = max(1, round(rate * seconds))
    samples: list = []
    sampler = topo.spawn(sample_busy(topo.service("api"), sample_every, samples, now()))

    async def one(i):
        endpoint = HEALTHY if i % 2 == 0 else HUNG
        await topo.call("api", "GET", f"{endpoint}/{i}", trace_id=f"m{i}")
        return {"endpoint": endpoint}

    try:
        res = await load.open_loop(one, rate=rate, n=n, max_seconds=seconds + grace,
                                   label=label, progress=False)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    # Requests that never finished have no "endpoint" from fn: the index says which it was.
    res.df["endpoint"] = [HEALTHY if i % 2 == 0 else HUNG for i in res.df["i"]]
    return res, pd.DataFrame(samples)


def hang_schedule(k: Knobs, n: int) -> list[int]:
    """Which of the first ``n`` requests of :func:`mixed_load` the recommender will hang.

    Faults are seeded by trace id, not by arrival order, so this is known before the run:
    the same rules, asked about the same trace ids, give the same answers.
    """
    v.non_negative("n", n, integer=True)
    recs = recommender(k)
    recs.faults.reseed(k.seed)
    return [i for i in range(1, n, 2)
            if recs.faults.decide("/recs/{id}", f"/recs/{i}", f"m{i}").hang]


def fill_time(k: Knobs, *, rate: float, seconds: float) -> float | None:
    """When, without timeouts, the pool is full of hung calls: the arrival of the pool-th hang."""
    v.positive("rate", rate)
    hangs = hang_schedule(k, max(1, round(rate * seconds)))
    return hangs[k.pool - 1] / rate if len(hangs) >= k.pool else None


def starvation_summary(res) -> pd.DataFrame:
    """Per endpoint: requests, answered, hung, success, goodput, p50 and worst latency."""
    rows = {}
    for endpoint, d in res.df.groupby("endpoint"):
        ok = d[d["ok"]]
        rows[endpoint] = {
            "requests": len(d), "succeeded": int(d["ok"].sum()),
            "hung": int((d["error"] == "unfinished").sum()),
            "answered": int((d["error"] != "unfinished").sum()),
            "success": float(d["ok"].mean()),
            "goodput_rps": len(ok) / res.elapsed_s,
            "p50_ms": float(ok["latency_ms"].median()) if len(ok) else math.nan,
            "worst_ms": float(d["latency_ms"].max())}
    return pd.DataFrame(rows).T


# -- experiment 2: how long to wait? -------------------------------------------------------------
async def measure_latency(k: Knobs | None = None, *, n: int = 1500, concurrency: int = 20):
    """``n`` calls to a recommender that does not hang, timed as its caller sees them."""
    k = replace(k or Knobs(), hang_p=0.0)
    async with Topology(recommender(k), name="recs alone", seed=k.seed) as topo:
        res = await load.closed_loop(lambda i: topo.call("recs", "GET", f"/recs/{i}"),
                                     n=n, concurrency=concurrency, progress=False,
                                     label="recommender latency")
    return res


def false_timeout_rate(latencies_ms, timeouts_ms) -> pd.Series:
    """The fraction of calls that would have timed out, for each timeout: P(latency > t)."""
    lat = pd.Series(latencies_ms, dtype=float)
    if lat.empty:
        raise ValueError("latencies_ms must not be empty")
    return pd.Series([float((lat > t).mean()) for t in timeouts_ms], index=list(timeouts_ms))


def lognormal_survival(t_ms: float, median_ms: float, sigma: float) -> float:
    """P(latency > t) for a lognormal latency: the analytic false-timeout rate."""
    v.positive("median_ms", median_ms)
    v.positive("sigma", sigma)
    if t_ms <= 0:
        return 1.0
    z = (math.log(t_ms) - math.log(median_ms)) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


def lognormal_quantile(q: float, median_ms: float, sigma: float) -> float:
    """The latency below which a fraction ``q`` of calls finish (analytic)."""
    v.number("q", q, low=0, high=1, low_open=True, high_open=True)
    return median_ms * math.exp(sigma * NormalDist().inv_cdf(q))


def choose_timeout(latencies_ms, false_timeouts: float = 0.001) -> float:
    """The timeout (ms) that ``false_timeouts`` of healthy calls exceed: the p99.9 for 0.1 %."""
    v.number("false_timeouts", false_timeouts, low=0, high=1, low_open=True, high_open=True)
    lat = pd.Series(latencies_ms, dtype=float)
    if lat.empty:
        raise ValueError("latencies_ms must not be empty")
    return float(lat.quantile(1 - false_timeouts))


async def count_timeouts(k: Knobs, timeout_ms: float, *, n: int = 600,
                         concurrency: int = 20) -> float:
    """``n`` calls with ``timeout_ms`` to a recommender that never hangs: the share timed out."""
    v.positive("timeout_ms", timeout_ms)
    k = replace(k, hang_p=0.0)
    async with Topology(recommender(k), name="recs alone", seed=k.seed + 1) as topo:
        res = await load.closed_loop(
            lambda i: topo.call("recs", "GET", f"/recs/{i}", timeout=timeout_ms / 1000),
            n=n, concurrency=concurrency, progress=False)
    return float((res.df["error"] == "timeout").mean())


# -- experiment 3: deadline propagation ----------------------------------------------------------
async def deadline_experiment(k: Knobs, *, deadline_ms: float, propagate: bool,
                              n: int = 40, rate: float = 40.0) -> pd.DataFrame:
    """The client means to wait ``deadline_ms``; does every request (and every call it causes)
    end by then?

    ``propagate=False``: the API has per-attempt timeouts and retries but no deadline; the
    client waits for its answer. ``propagate=True``: the client sends its deadline; the API's
    calls and retries fit inside it. One row per request: ``elapsed_ms`` at the client,
    ``last_end_ms`` (when the last call of its trace ended, from the request's start),
    ``over_ms`` (how far past the deadline that was) and the ``outcome``.
    """
    v.positive("deadline_ms", deadline_ms)
    if not isinstance(propagate, bool):
        raise TypeError(f"propagate must be True or False; got {propagate!r}")
    k = replace(k, deadline_ms=None)        # the API sets no edge deadline of its own here
    budget_s = deadline_ms / 1000
    starts: dict[int, float] = {}

    async def one(i):
        starts[i] = now()
        with dl.scope(dl.Deadline.after(budget_s)) if propagate else nullcontext():
            try:
                await topo.call("api", "GET", f"{HUNG}/{i}", trace_id=f"d{i}")
                return {"outcome": "ok"}
            except CallError as e:
                return {"outcome": f"HTTP {e.status}" if e.kind == "http" else e.kind}

    async with after(k) as topo:
        res = await load.open_loop(one, rate=rate, n=n, max_seconds=n / rate + 5,
                                   progress=False)
        await asyncio.sleep(0.05)       # let anything still running downstream show itself
        still_working = topo.service("api").in_flight + topo.service("recs").in_flight
    spans = topo.tracer.df()
    last_end = spans.groupby("trace_id")["end"].max()        # ms on the tracer's clock
    rows = []
    for r in res.df.itertuples():
        i = int(r.i)
        elapsed = r.end - r.start
        start_ms = (starts[i] - topo.tracer.t0) * 1000
        # The later of: the client's own end, and the end of the last call in its trace.
        end_rel = max(elapsed, float(last_end.get(f"d{i}", -math.inf)) - start_ms)
        outcome = r.outcome if isinstance(getattr(r, "outcome", None), str) else r.error
        rows.append({"trace_id": f"d{i}", "outcome": outcome, "elapsed_ms": elapsed,
                     "last_end_ms": end_rel, "over_ms": end_rel - deadline_ms})
    df = pd.DataFrame(rows)
    df.attrs["still_working_after"] = still_working
    df.attrs["recs_calls"] = int((spans["callee"] == "recs").sum())
    return df


# -- experiment 4: retry amplification -------------------------------------------------------------
def layered(k_layers: int, *, tries: int = 3, retry_at: str = "every",
            budget_ratio: float | None = None, budget_burst: float = 2.0) -> Topology:
    """``k_layers`` services in a chain in front of a database that always fails.

    ``retry_at="every"``: every layer tries ``tries`` times; ``"top"``: only the first layer
    retries, the others try once. With ``budget_ratio``, every layer has its own retry budget.
    Backoff is a millisecond: this experiment counts calls, it does not time them.
    """
    v.number("k_layers", k_layers, low=1, high=6, integer=True)
    v.number("tries", tries, low=1, high=10, integer=True)
    v.one_of("retry_at", retry_at, ("every", "top"))
    v.optional(v.probability, "budget_ratio", budget_ratio)
    names = [f"layer{i}" for i in range(1, k_layers + 1)]
    db = Service("db", "state", label="Database (failing)")

    @db.get("/query")
    async def query(request):
        return {"rows": []}

    db.faults.add(Error(1.0, 503))
    layers = []
    for i, name in enumerate(names):
        nxt = names[i + 1] if i + 1 < len(names) else "db"
        n_tries = tries if (retry_at == "every" or i == 0) else 1
        budget = (RetryBudget(budget_ratio, burst=budget_burst)
                  if budget_ratio is not None else None)
        layers.append(_layer(name, nxt, n_tries, budget, "edge" if i == 0 else "service"))
    topo = Topology(*layers, db, name=f"{k_layers} layers", seed=0)
    topo.layers = names
    return topo


def _layer(name: str, nxt: str, tries: int, budget: RetryBudget | None, plane: str) -> Service:
    svc = Service(name, plane, uses=(nxt,))
    svc.retry_stats, svc.budget = RetryStats(), budget
    path = "/query" if nxt == "db" else "/work"

    @svc.get("/work")
    async def work(request):
        return await retry(lambda: svc.call(nxt, "GET", path), attempts=tries, policy="none",
                           base=0.001, cap=0.001, budget=budget, retryable=transient,
                           stats=svc.retry_stats)
    return svc


async def amplification(k_layers: int, *, requests: int = 5, **kwargs) -> dict:
    """Send ``requests`` client requests, one after another; count what reaches each layer."""
    v.positive("requests", requests, integer=True)
    async with layered(k_layers, **kwargs) as topo:
        for i in range(requests):
            try:
                await topo.call("layer1", "GET", "/work", trace_id=f"a{i}")
            except CallError:
                pass
        spans = topo.tracer.df()
    reached = spans.groupby("callee").size()
    return {"layers": k_layers, "requests": requests,
            "calls reaching the database": int(reached.get("db", 0)),
            "per request": int(reached.get("db", 0)) / requests,
            "calls in all": len(spans)}


def budget_bound(k_layers: int, requests: int, *, tries: int = 3, ratio: float,
                 burst: float) -> int:
    """The most calls a chain with a retry budget at every layer can send to the database.

    A layer receiving A requests makes at most A + min(retries allowed by its budget,
    (tries - 1) * A) attempts, and its budget allows burst + ratio * A retries.
    """
    a = requests
    for _ in range(k_layers):
        a = a + min(math.floor(burst + ratio * a + 1e-9), (tries - 1) * a)
    return a


# -- experiment 5: many clients, one recovering dependency ----------------------------------------
def recovering_dependency(*, capacity: int = 5, service_ms: float = 40.0) -> Service:
    """A dependency that serves ``capacity`` requests at a time and answers 503 to the rest.

    A plain 503 (no overload marker): the AWS simulation's contended resource, where a client
    that collides simply tries again later. Down-time is a fault rule added by the experiment.
    """
    v.positive("capacity", capacity, integer=True)
    v.positive("service_ms", service_ms)
    dep = Service("dep", label=f"Dependency ({capacity} at a time)")
    slots = asyncio.Semaphore(capacity)

    @dep.get("/work")
    async def work(request):
        if slots.locked():
            return web.json_response({"error": "busy, try again"}, status=503)
        async with slots:
            await asyncio.sleep(service_ms / 1000)
        return {"done": True}

    return dep


async def shared_recovery(policy: str, *, clients: int = 40, capacity: int = 5,
                          service_ms: float = 30.0, down_s: float = 0.1, base_ms: float = 20.0,
                          cap_ms: float = 250.0, attempts: int = 15, seed: int = 0,
                          budget_ratio: float | None = None,
                          max_seconds: float = 10.0) -> dict:
    """``clients`` clients call a dependency that is down for ``down_s`` and then serves
    ``capacity`` at a time; each retries with ``policy`` backoff. Counts every call.

    With ``budget_ratio`` the clients share one :class:`RetryBudget` (burst 10), as the
    requests of one calling process would.

    Returns a dict with ``calls`` (reaching the dependency), ``drain_s`` (when the last client
    succeeded), ``gave_up``, and the DataFrames ``arrivals`` (one row per call: t_s, status)
    and ``done`` (one row per client: attempts, t_s, ok).
    """
    v.one_of("policy", policy, POLICIES)
    v.positive("clients", clients, integer=True)
    v.non_negative("down_s", down_s)
    v.optional(v.probability, "budget_ratio", budget_ratio)
    v.positive("max_seconds", max_seconds)
    dep = recovering_dependency(capacity=capacity, service_ms=service_ms)
    budget = RetryBudget(budget_ratio, burst=10) if budget_ratio is not None else None
    finished: list[dict] = []
    async with Topology(dep, name="shared recovery", seed=seed) as topo:
        if down_s:
            dep.faults.add(Error(1.0, 503), end=down_s)
        t0 = now()

        async def client(i):
            rng = random.Random(seed * 100_003 + i)
            local = RetryStats()
            try:
                await retry(lambda: topo.call("dep", "GET", "/work"), attempts=attempts,
                            policy=policy, base=base_ms / 1000, cap=cap_ms / 1000,
                            budget=budget, retryable=transient, rng=rng, stats=local)
                ok = True
            except CallError:
                ok = False
            finished.append({"client": i, "attempts": local.attempts, "t_s": now() - t0,
                             "ok": ok})
            if not ok:
                raise CallError("client", "dep", "/work", "http", 503, "gave up")

        res = await load.closed_loop(client, n=clients, concurrency=clients,
                                     max_seconds=max_seconds, progress=False)
        spans = topo.tracer.df()
    arrivals = pd.DataFrame({"t_s": (spans["start"] - (t0 - topo.tracer.t0) * 1000) / 1000,
                             "status": spans["status"]})
    done = pd.DataFrame(finished)
    ok = done[done["ok"]] if len(done) else done
    return {"policy": policy, "calls": len(spans),
            "drain_s": float(ok["t_s"].max()) if len(ok) else math.nan,
            "succeeded": int(len(ok)), "gave_up": int(clients - len(ok)),
            "unfinished": int((res.df["error"] == "unfinished").sum()),
            "arrivals": arrivals, "done": done}


def lockstep_model(*, clients: int = 40, capacity: int = 5, service_ms: float = 30.0,
                   down_s: float = 0.1, base_ms: float = 20.0, cap_ms: float = 250.0,
                   attempts: int = 15) -> dict:
    """No jitter, idealised: every client's attempts fall on the same instants.

    Attempt j of every client happens at the sum of the first j backoff delays (call times
    ignored). Before ``down_s`` every attempt fails; afterwards each instant serves
    ``capacity`` clients and the rest come back at the next one.
    """
    t, left, calls, j, drain = 0.0, clients, 0, 0, math.nan
    while left and j < attempts:
        calls += left
        if t >= down_s:
            left -= min(capacity, left)
            if not left:
                drain = t + service_ms / 1000
        t += min(cap_ms, base_ms * 2 ** j) / 1000
        j += 1
    return {"calls": calls, "drain_s": drain, "gave_up": left}


def spread_bound(*, clients: int = 40, capacity: int = 5, service_ms: float = 30.0,
                 down_s: float = 0.1) -> float:
    """The earliest every client could be served: perfectly spread after the recovery."""
    return down_s + math.ceil(clients / capacity) * service_ms / 1000


# -- a short run of everything, for the widget panel ---------------------------------------------
async def compare(k: Knobs, *, rate: float = 60.0, seconds: float = 1.5) -> pd.DataFrame:
    """The starvation experiment on both designs; one row per design and endpoint."""
    frames = []
    for name, build in (("before", before), ("after", after)):
        async with build(k) as topo:
            res, _ = await mixed_load(topo, rate=rate, seconds=seconds, grace=0.3, label=name)
        s = starvation_summary(res)
        s.insert(0, "design", name)
        frames.append(s)
    return pd.concat(frames).rename_axis("endpoint").reset_index()
