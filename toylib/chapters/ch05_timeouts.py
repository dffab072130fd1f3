"""Chapter 5, No timeouts: a hung dependency exhausts a worker pool, and the fix.

* **Before** (:class:`Before`): the product API has a bounded pool of workers (``pool``, like
  a fixed thread pool) and serves two endpoints: ``/product/{id}`` (calls the healthy catalog)
  and ``/recommendations/{id}`` (calls the recommender). The recommender sometimes accepts a
  request and never answers, and the API calls it with **no timeout**: every hung call keeps a
  worker forever, the pool fills, and the healthy endpoint starves behind it.
* **After** (:class:`After`): every remote call has a timeout chosen from the recommender's
  *measured* latency distribution; the edge gives each request a deadline **from the moment it
  arrives** (waiting for a worker counts too, as a gRPC server drops a request whose deadline
  passed in its queue); failed calls are retried with capped exponential backoff and jitter,
  within a per-process retry budget and only while the deadline leaves time for another
  attempt. A request that cannot be served in time gets a fast 504 instead of hanging.

Experiments (each builds the designs it compares and releases them): :func:`starvation` (the
same open-loop load on both designs, interleaved), :func:`latency` and :func:`count_timeouts`
(how the false-timeout rate depends on the timeout), :func:`deadlines` (does any request
outlive its deadline?), :func:`retry_amplification` (3 tries at each of k layers) and
:func:`recovery` (many clients retrying against a recovering dependency, with and without
jitter). :data:`CLAIMS` holds the source article's claims; :func:`findings` judges them from a
:class:`Starvation` result; :func:`audit` is the small run chapter 7 and the claims page use.
"""
from __future__ import annotations

import asyncio
import math
import random
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np
import pandas as pd
from aiohttp import web

from toylib.chapters.design import Design, build
from toylib.claims import Claim, Estimate, Finding
from toylib.core import deadline as dl
from toylib.core import load
from toylib.core import validate as v
from toylib.chapters.design import knobs_or_default
from toylib.core.calibrate import BUSY_PAUSE_S, BUSY_RERUNS, LoopLag, lag_during, loop_lag
from toylib.core.clock import now
from toylib.core.faults import Error, Hang, Latency
from toylib.core.services import CallError, Node, Service, Store, Topology
from toylib.resilience.retry import POLICIES, RetryBudget, RetryStats, retry

CHAPTER = "ch05_timeouts"
HEALTHY, HUNG = "/product", "/recommendations"     # the two endpoints of the product API

# Upper bounds that fit a laptop: a reader who types 10**12 gets an error, not a frozen kernel.
MAX_MS = 60_000.0            # any duration knob, in milliseconds
MAX_RATE = 1_000.0           # requests per second (one event loop serves about 3,000 hops/s)
MAX_SECONDS = 60.0           # any run's length
MAX_REQUESTS = 20_000        # requests in one run (one event loop serves ~3,000 hops/s)
MAX_CLIENTS = 1_000


def _ms(name: str, value, *, low=0.0, low_open=True, high=MAX_MS):
    return v.number(name, value, low=low, low_open=low_open, high=high)


def _backoff_ms(base_ms, cap_ms, *, base_name="base_ms", cap_name="cap_ms") -> None:
    """Each field in its own range first, then the pair: the message names the field to fix."""
    _ms(base_name, base_ms)
    _ms(cap_name, cap_ms)
    if cap_ms < base_ms:
        raise ValueError(f"{cap_name} must be >= {base_name} ({base_ms!r}) and <= {MAX_MS:g}; "
                         f"got {cap_name}={cap_ms!r}")


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
        v.number("pool", self.pool, low=1, high=256, integer=True)
        _ms("latency_ms", self.latency_ms, high=10_000)
        v.number("sigma", self.sigma, low=0, high=3)
        v.probability("hang_p", self.hang_p)
        _ms("catalog_ms", self.catalog_ms, low_open=False, high=10_000)
        _ms("timeout_ms", self.timeout_ms)
        v.number("attempts", self.attempts, low=1, high=20, integer=True)
        v.one_of("policy", self.policy, POLICIES)
        _backoff_ms(self.base_ms, self.cap_ms)
        v.optional(v.probability, "budget_ratio", self.budget_ratio)
        v.number("budget_burst", self.budget_burst, low=1, high=1000)
        v.optional(_ms, "deadline_ms", self.deadline_ms)
        _ms("reply_ms", self.reply_ms, low_open=False, high=10_000)
        if self.deadline_ms is not None and self.reply_ms >= self.deadline_ms:
            raise ValueError(f"reply_ms must be < deadline_ms ({self.deadline_ms!r}): the time "
                             f"kept back to answer comes out of the deadline; got "
                             f"reply_ms={self.reply_ms!r}")
        v.number("seed", self.seed, low=0, high=2**32, integer=True)


def _knobs(knobs) -> Knobs:
    return knobs_or_default(Knobs, knobs)


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
    k = _knobs(k)
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
    k = _knobs(k)
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


class Before(Design):
    """No timeout anywhere: a hung recommender call holds an API worker for good."""
    chapter, name = CHAPTER, "before"

    def build(self) -> Topology:
        k = self.knobs
        self.api = naive_api(k)
        return Topology(self.api, catalog(k), recommender(k), *_stores(),
                        name="no timeouts: before", seed=k.seed)

    def busy_workers(self) -> int:
        """The API's workers busy now (a request holds one from start to answer)."""
        return self.api.in_flight


# -- after: timeouts, deadlines, backoff with jitter, a retry budget ------------------------------
class Workers:
    """A fixed pool of ``size`` workers whose queue is bounded by the request's deadline.

    A request waits for a worker only while its deadline leaves time; then it is answered
    504 at once (the server never starts work nobody waits for). ``busy`` counts the workers
    in use, as :attr:`Service.in_flight` does for the design without timeouts.
    """

    def __init__(self, size: int):
        self.size = v.number("size", size, low=1, high=256, integer=True)
        self.busy = 0
        self.turned_away = 0
        self._slots = asyncio.Semaphore(size)

    @asynccontextmanager
    async def slot(self):
        d = dl.current()
        try:
            if d is None:
                await self._slots.acquire()
            else:
                async with asyncio.timeout(max(0.0, d.remaining())):
                    await self._slots.acquire()
        except TimeoutError:
            self.turned_away += 1
            raise CallError("api", "api", "worker pool", "deadline",
                            detail="no worker free before the deadline") from None
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            self._slots.release()


def guarded_api(k: Knobs, workers: Workers, stats: RetryStats,
                budget: RetryBudget | None) -> Service:
    api = Service("api", label=f"Product API ({k.pool} workers)",
                  uses=("catalog", "recs", "timeouts", "budget"))
    rng = random.Random(k.seed)
    timeout = k.timeout_ms / 1000

    def edge_deadline():
        # The edge starts the clock when the request arrives, unless the caller sent a tighter
        # deadline; the calls made for this request get what is left minus reply_ms, the time
        # it takes to answer.
        own = dl.Deadline.after(k.deadline_ms / 1000) if k.deadline_ms else None
        inherited = dl.current()
        at = min((d.at for d in (own, inherited) if d is not None), default=None)
        return (dl.scope(dl.Deadline(at - k.reply_ms / 1000)) if at is not None
                else nullcontext())

    def unavailable(what: str, e: CallError):
        # An answer, fast, that says what happened: the worker (if it had one) is free again.
        return web.json_response({"error": f"{what} unavailable ({e.kind})"}, status=504)

    @api.get(HEALTHY + "/{id}")
    async def product(request):
        with edge_deadline():
            try:
                async with workers.slot():
                    return await api.call("catalog", "GET",
                                          f"/items/{request.match_info['id']}", timeout=timeout)
            except CallError as e:
                return unavailable("product", e)

    @api.get(HUNG + "/{id}")
    async def recommendations(request):
        path = f"/recs/{request.match_info['id']}"
        with edge_deadline():
            try:
                async with workers.slot():
                    return await retry(lambda: api.call("recs", "GET", path, timeout=timeout),
                                       attempts=k.attempts, policy=k.policy,
                                       base=k.base_ms / 1000, cap=k.cap_ms / 1000,
                                       budget=budget, retryable=transient, rng=rng,
                                       stats=stats, min_attempt=k.latency_ms / 1000)
            except CallError as e:
                return unavailable("recommendations", e)

    return api


class After(Design):
    """Timeouts from the measured tail, a deadline from arrival, backoff with jitter, a budget.

    The retry counters (:attr:`retry_stats`) and the per-process :attr:`budget` are this
    design's state: they live as long as the design and are read from it.
    """
    chapter, name = CHAPTER, "after"

    def build(self) -> Topology:
        k = self.knobs
        self.retry_stats = RetryStats()
        self.budget = (RetryBudget(k.budget_ratio, burst=k.budget_burst)
                       if k.budget_ratio is not None else None)
        self.workers = Workers(k.pool)
        controls = [Node("timeouts", "control", label="Timeouts from measured p99.9 + deadline"),
                    Node("budget", "control", label="Retry budget + backoff with jitter")]
        return Topology(guarded_api(k, self.workers, self.retry_stats, self.budget),
                        catalog(k), recommender(k), *_stores(), *controls,
                        name="no timeouts: after", seed=k.seed)

    def busy_workers(self) -> int:
        return self.workers.busy


DESIGNS = {"before": Before, "after": After}


def design(name: str, knobs: Knobs | None = None) -> Design:
    """The chapter's design ``name`` ("before" or "after"), built from ``knobs``."""
    return build(DESIGNS, name, _knobs(knobs))


def _running(d) -> Design:
    if not isinstance(d, (Before, After)):
        raise TypeError(f"design must be a {CHAPTER} design (design('before'|'after', knobs)); "
                        f"got {type(d).__name__}")
    d.require_running()
    return d


# -- probe: the same open-loop load on a running design -----------------------------------------
def _check_load(rate, seconds) -> int:
    v.number("rate", rate, low=0, low_open=True, high=MAX_RATE)
    v.number("seconds", seconds, low=0, low_open=True, high=MAX_SECONDS)
    n = max(1, round(rate * seconds))
    if n > MAX_REQUESTS:
        raise ValueError(f"rate * seconds must be at most {MAX_REQUESTS} requests; got {n}")
    return n


async def mixed_load(design, *, rate: float = 60.0, seconds: float = 2.5,
                     grace: float = 1.0, sample_every: float = 0.02, label: str = ""):
    """Open-loop load on the running ``design``'s API, alternating the healthy and the hung
    endpoint.

    Requests arrive at ``rate`` per second for ``seconds``; after ``grace`` more seconds every
    request still running is cancelled and counted as hung (``error == "unfinished"``).
    Returns ``(LoadResult, pool)``: the result has an ``endpoint`` column; ``pool`` is a
    DataFrame of the API's busy workers over time.
    """
    d = _running(design)
    n = _check_load(rate, seconds)
    v.number("grace", grace, low=0, high=MAX_SECONDS)
    v.number("sample_every", sample_every, low=0.001, high=10)
    samples: list = []
    t0 = now()

    async def sample():
        while True:
            samples.append({"t_s": now() - t0, "busy": d.busy_workers()})
            await asyncio.sleep(sample_every)

    sampler = d.topology.spawn(sample())

    async def one(i):
        endpoint = HEALTHY if i % 2 == 0 else HUNG
        await d.call("api", "GET", f"{endpoint}/{i}", trace_id=f"m{i}")

    try:
        res = await load.open_loop(one, rate=rate, n=n, max_seconds=seconds + grace,
                                   label=label, progress=False)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    res.df["endpoint"] = [HEALTHY if i % 2 == 0 else HUNG for i in res.df["i"]]
    return res, pd.DataFrame(samples, columns=["t_s", "busy"])


def hang_schedule(k: Knobs, n: int) -> list[int]:
    """Which of the first ``n`` requests of :func:`mixed_load` the recommender will hang.

    Faults are seeded by trace id, not by arrival order, so this is known before the run:
    the same rules, asked about the same trace ids, give the same answers.
    """
    k = _knobs(k)
    v.number("n", n, low=0, high=MAX_REQUESTS, integer=True)
    recs = recommender(k)
    recs.faults.reseed(k.seed)
    return [i for i in range(1, n, 2)
            if recs.faults.decide("/recs/{id}", f"/recs/{i}", f"m{i}").hang]


def fill_time(k: Knobs, *, rate: float, seconds: float) -> float | None:
    """When, without timeouts, the pool is full of hung calls: the arrival of the pool-th hang."""
    k = _knobs(k)
    n = _check_load(rate, seconds)
    hangs = hang_schedule(k, n)
    return hangs[k.pool - 1] / rate if len(hangs) >= k.pool else None


def starvation_summary(res) -> pd.DataFrame:
    """Per endpoint: requests, answered, hung, success, goodput, p50 and worst latency."""
    if not isinstance(res, load.LoadResult):
        raise TypeError(f"res must be the LoadResult of mixed_load; got {type(res).__name__}")
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


# -- experiment 1: the pool fills, the healthy endpoint starves ----------------------------------
@dataclass
class Starvation:
    """What :func:`starvation` measured: per design, one load result and pool trace per rep,
    and the event loop's lag measured beside each run (``lags``)."""
    knobs: Knobs
    rate: float
    seconds: float
    grace: float
    lag: LoopLag
    runs: dict = field(default_factory=lambda: {"before": [], "after": []})
    pools: dict = field(default_factory=lambda: {"before": [], "after": []})
    lags: dict = field(default_factory=lambda: {"before": [], "after": []})
    rerun: int = 0                                  # "after" runs rerun: too busy to time
    fills: list = field(default_factory=list)       # predicted pool-full instant per rep (s)
    retry_stats: RetryStats | None = None           # the last "after" run's
    budget_tokens: float | None = None
    spans: pd.DataFrame | None = None               # the last "after" run's trace

    @property
    def reps(self) -> int:
        return len(self.fills)

    def per_run(self) -> pd.DataFrame:
        return pd.concat([starvation_summary(r).assign(design=name, rep=i)
                          for name, rs in self.runs.items() for i, r in enumerate(rs)])

    def table(self) -> pd.DataFrame:
        """Medians over the reps, per design and endpoint, with the ideal success."""
        per = self.per_run().rename_axis("endpoint")
        t = per.groupby(["design", "endpoint"]).median(numeric_only=True).drop(columns="rep")
        t.loc[("before", HEALTHY), "ideal success"] = float(np.median(self.ideal_success()))
        t.loc[("after", HEALTHY), "ideal success"] = 1.0
        return t

    def ideal_success(self) -> list[float]:
        """Per rep, the share of /product requests due before the pool fills (no timeouts)."""
        n = max(1, round(self.rate * self.seconds))
        healthy = range(0, n, 2)
        return [sum(1 for i in healthy if fill is None or i / self.rate < fill) / len(healthy)
                for fill in self.fills]

    def hung(self, name: str) -> tuple[int, int]:
        """(requests cut off unanswered, requests), over every rep of design ``name``."""
        v.one_of("name", name, DESIGNS)
        dfs = [r.df for r in self.runs[name]]
        return (sum(int((d["error"] == "unfinished").sum()) for d in dfs),
                sum(len(d) for d in dfs))

    def starved_after_fill(self) -> tuple[int, int]:
        """Without timeouts: (unanswered, due) /product requests due after the pool was full."""
        k = n = 0
        for res, fill in zip(self.runs["before"], self.fills):
            if fill is None:
                continue
            d = res.df[(res.df["endpoint"] == HEALTHY) & (res.df["due"] > fill * 1000)]
            n += len(d)
            k += int((d["error"] == "unfinished").sum())
        return k, n

    def peak_busy(self, name: str) -> int:
        return int(max(p["busy"].max() for p in self.pools[name]))

    # A request of the fixed design is answered by its deadline when the machine keeps up; the
    # run cuts it off ``grace`` after the last arrival. The difference is the slack a busy
    # machine may eat before an answer is counted as hung: a stall of the event loop (its
    # worst lateness, measured beside the run) of half of it spoils the run's count.
    @property
    def slack_ms(self) -> float:
        """How long past its deadline the last request of the fixed design may be answered
        before the run cuts it off."""
        return self.grace * 1000 - (self.knobs.deadline_ms or 0)

    @property
    def busy_limit_ms(self) -> float:
        return max(0.0, self.slack_ms / 2)

    def worst_lag(self, name: str = "after") -> LoopLag | None:
        """The worst lag (by its maximum) measured beside the kept runs of design ``name``."""
        v.one_of("name", name, DESIGNS)
        return max(self.lags[name], key=lambda x: x.max_ms, default=None)

    def stalled(self, lag: LoopLag) -> bool:
        """Did the event loop, beside a run of the fixed design, stall long enough to turn a
        timely answer into a "hung" one?"""
        return lag.max_ms > self.busy_limit_ms

    @property
    def too_busy(self) -> bool:
        """True when the loop :meth:`stalled` beside a kept run of the fixed design. (Without
        timeouts, hung calls hang for good however busy the machine is, so that design's count
        needs no such check.)"""
        worst = self.worst_lag("after")
        return worst is not None and self.stalled(worst)

    @property
    def busy_note(self) -> str:
        """How busy the machine was beside the runs with timeouts, in words."""
        worst = self.worst_lag("after")
        if worst is None:
            return "no run with timeouts"
        s = (f"the event loop stalled up to {worst.max_ms:.0f} ms beside the runs with timeouts "
             f"(counts trusted below {self.busy_limit_ms:.0f} ms, half the {self.slack_ms:.0f} "
             f"ms between the deadline and the cut-off)")
        if self.rerun:
            s += f"; {self.rerun} run(s) rerun: the machine was too busy to time them"
        return s


async def calibrate() -> LoopLag:
    """The event loop's lag now (see :mod:`toylib.core.calibrate`)."""
    return await loop_lag(0.25)


async def starvation(knobs: Knobs | None = None, *, rate: float = 80.0, seconds: float = 2.5,
                     reps: int = 2, grace: float | None = None,
                     reruns: int = BUSY_RERUNS) -> Starvation:
    """The same open-loop load on both designs, ``reps`` times, interleaved, seeds
    ``knobs.seed + rep``. ``grace`` (after the last arrival, before unanswered requests are cut
    off and counted as hung) defaults to twice the deadline, and at least a second plus ten
    times the event loop's p99 lag measured first.

    The loop's lag is measured beside every run. A run of the fixed design beside which the
    loop stalled for half the slack between deadline and cut-off (:attr:`Starvation.too_busy`)
    is run again, same seed, after a pause, up to ``reruns`` times in all: a burst of load
    costs seconds, not the count. Whether to rerun is decided from the lag alone, never from
    the count being measured."""
    k = _knobs(knobs)
    _check_load(rate, seconds)
    v.number("reps", reps, low=1, high=20, integer=True)
    v.number("reruns", reruns, low=0, high=10, integer=True)
    lag = await calibrate()
    if grace is None:
        grace = max(1.0 + 10 * lag.p99_ms / 1000, 2 * (k.deadline_ms or 0) / 1000)
    v.number("grace", grace, low=0, high=MAX_SECONDS)
    out = Starvation(k, rate, seconds, grace, lag)
    for rep in range(reps):
        kr = replace(k, seed=k.seed + rep)
        out.fills.append(fill_time(kr, rate=rate, seconds=seconds))
        order = ("before", "after") if rep % 2 == 0 else ("after", "before")
        for name in order:
            while True:
                async with design(name, kr) as d:
                    async with lag_during(seconds + grace) as beside:
                        res, pool = await mixed_load(d, rate=rate, seconds=seconds,
                                                     grace=grace, label=name)
                    if name == "after":
                        stats, spans = d.retry_stats, d.tracer.df()
                        tokens = d.budget.tokens if d.budget is not None else None
                if name == "before" or out.rerun >= reruns or not out.stalled(beside.lag):
                    break
                out.rerun += 1
                await asyncio.sleep(BUSY_PAUSE_S)
            if name == "after":
                out.retry_stats, out.spans, out.budget_tokens = stats, spans, tokens
            out.runs[name].append(res)
            out.pools[name].append(pool)
            out.lags[name].append(beside.lag)
    return out


# -- experiment 2: how long to wait? -------------------------------------------------------------
async def latency(knobs: Knobs | None = None, *, n: int = 1500, concurrency: int = 20):
    """``n`` calls to a recommender that does not hang, timed as its caller sees them."""
    k = replace(_knobs(knobs), hang_p=0.0)
    v.number("n", n, low=1, high=MAX_REQUESTS, integer=True)
    v.number("concurrency", concurrency, low=1, high=MAX_CLIENTS, integer=True)
    async with Topology(recommender(k), name="recs alone", seed=k.seed) as topo:
        res = await load.closed_loop(lambda i: topo.call("recs", "GET", f"/recs/{i}"),
                                     n=n, concurrency=concurrency, progress=False,
                                     label="recommender latency", max_seconds=MAX_SECONDS)
    return res


def _latencies(name: str, latencies_ms) -> pd.Series:
    try:
        lat = pd.Series(latencies_ms, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a list of numbers (ms); got {latencies_ms!r:.80}") \
            from None
    if lat.empty:
        raise ValueError(f"{name} must not be empty")
    if not np.isfinite(lat).all() or (lat < 0).any():
        raise ValueError(f"{name} must hold finite numbers >= 0 (ms)")
    return lat


def false_timeout_rate(latencies_ms, timeouts_ms) -> pd.Series:
    """The fraction of calls that would have timed out, for each timeout: P(latency > t)."""
    lat = _latencies("latencies_ms", latencies_ms)
    ts = list(timeouts_ms)
    for t in ts:
        v.number("timeouts_ms", t, low=0, high=MAX_MS)
    return pd.Series([float((lat > t).mean()) for t in ts], index=ts, dtype=float)


def lognormal_survival(t_ms: float, median_ms: float, sigma: float) -> float:
    """P(latency > t) for a lognormal latency: the analytic false-timeout rate."""
    v.number("t_ms", t_ms, high=MAX_MS)
    _ms("median_ms", median_ms)
    v.number("sigma", sigma, low=0, low_open=True, high=3)
    if t_ms <= 0:
        return 1.0
    z = (math.log(t_ms) - math.log(median_ms)) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


def lognormal_quantile(q: float, median_ms: float, sigma: float) -> float:
    """The latency below which a fraction ``q`` of calls finish (analytic)."""
    v.number("q", q, low=0, high=1, low_open=True, high_open=True)
    _ms("median_ms", median_ms)
    v.number("sigma", sigma, low=0, high=3)
    return median_ms * math.exp(sigma * NormalDist().inv_cdf(q))


def choose_timeout(latencies_ms, false_timeouts: float = 0.001) -> float:
    """The timeout (ms) that ``false_timeouts`` of healthy calls exceed: the p99.9 for 0.1 %."""
    v.number("false_timeouts", false_timeouts, low=0, high=1, low_open=True, high_open=True)
    lat = _latencies("latencies_ms", latencies_ms)
    return float(lat.quantile(1 - false_timeouts))


async def count_timeouts(k: Knobs, timeout_ms: float, *, n: int = 600,
                         concurrency: int = 20) -> float:
    """``n`` calls with ``timeout_ms`` to a recommender that never hangs: the share timed out."""
    k = replace(_knobs(k), hang_p=0.0)
    _ms("timeout_ms", timeout_ms)
    v.number("n", n, low=1, high=MAX_REQUESTS, integer=True)
    v.number("concurrency", concurrency, low=1, high=MAX_CLIENTS, integer=True)
    async with Topology(recommender(k), name="recs alone", seed=k.seed + 1) as topo:
        res = await load.closed_loop(
            lambda i: topo.call("recs", "GET", f"/recs/{i}", timeout=timeout_ms / 1000),
            n=n, concurrency=concurrency, progress=False, max_seconds=MAX_SECONDS)
    return float((res.df["error"] == "timeout").mean())


# -- experiment 3: deadline propagation ----------------------------------------------------------
async def _deadline_run(k: Knobs, *, deadline_ms: float, propagate: bool, n: int,
                        rate: float) -> pd.DataFrame:
    budget_s = deadline_ms / 1000
    starts: dict[int, float] = {}
    async with design("after", k) as d:
        async def one(i):
            starts[i] = now()
            with dl.scope(dl.Deadline.after(budget_s)) if propagate else nullcontext():
                try:
                    await d.call("api", "GET", f"{HUNG}/{i}", trace_id=f"d{i}")
                    return {"outcome": "ok"}
                except CallError as e:
                    return {"outcome": f"HTTP {e.status}" if e.kind == "http" else e.kind}

        res = await load.open_loop(one, rate=rate, n=n, max_seconds=n / rate + 5,
                                   progress=False)
        await asyncio.sleep(0.05)       # let anything still running downstream show itself
        still_working = d.busy_workers() + d.service("recs").in_flight
        spans, t0 = d.tracer.df(), d.tracer.t0
    last_end = spans.groupby("trace_id")["end"].max()        # ms on the tracer's clock
    rows = []
    for r in res.df.itertuples():
        i = int(r.i)
        elapsed = r.end - r.start
        start_ms = (starts[i] - t0) * 1000
        # The later of: the client's own end, and the end of the last call in its trace.
        end_rel = max(elapsed, float(last_end.get(f"d{i}", -math.inf)) - start_ms)
        outcome = r.outcome if isinstance(getattr(r, "outcome", None), str) else r.error
        rows.append({"trace_id": f"d{i}", "outcome": outcome, "elapsed_ms": elapsed,
                     "last_end_ms": end_rel, "over_ms": end_rel - deadline_ms})
    df = pd.DataFrame(rows)
    df.attrs["still_working_after"] = still_working
    df.attrs["recs_calls"] = int((spans["callee"] == "recs").sum())
    return df


@dataclass
class Deadlines:
    """What :func:`deadlines` measured: one frame per variant (a row per request)."""
    deadline_ms: float
    lag: LoopLag
    runs: dict           # "per-call timeouts only" / "deadline propagated" -> DataFrame
    lag_during: LoopLag | None = None    # the worst lag measured beside the runs

    @property
    def busy(self) -> bool:
        """Was the machine too busy to time the runs (before or during them)? Then how late a
        request ended says more about the machine than about the design."""
        return self.worst_lag.busy

    @property
    def worst_lag(self) -> LoopLag:
        """The worse of the lag measured before the runs and beside them."""
        return max((x for x in (self.lag, self.lag_during) if x is not None),
                   key=lambda x: x.p99_ms)

    @property
    def margin_ms(self) -> float:
        """How far past its deadline a request may end and still count as in time: the
        scheduling of one event loop, from the lag measured in the same run."""
        return max(50.0, 5 * self.lag.p99_ms)

    def table(self) -> pd.DataFrame:
        m = self.margin_ms
        return pd.DataFrame.from_dict(orient="index", data={name: {
            "requests": len(d),
            "answered by the service": int(d.outcome.isin(["ok", "HTTP 504"]).sum()),
            "cut off by the client's deadline": int((d.outcome == "deadline").sum()),
            f"over the deadline by > {m:.0f} ms": int((d.over_ms > m).sum()),
            "latest end past the deadline (ms)": max(0.0, float(d.over_ms.max())),
            "calls to the recommender": d.attrs["recs_calls"],
            "still working afterwards": d.attrs["still_working_after"]}
            for name, d in self.runs.items()})

    def late(self, name: str) -> int:
        return int((self.runs[name].over_ms > self.margin_ms).sum())


async def deadlines(knobs: Knobs | None = None, *, deadline_ms: float = 250.0, n: int = 40,
                    rate: float = 40.0) -> Deadlines:
    """The client means to wait ``deadline_ms``; does every request (and every call it causes)
    end by then? Both variants run the fixed design with no edge deadline of its own:
    "per-call timeouts only" (the client waits for its answer) and "deadline propagated" (the
    client sends its deadline; the API's calls and retries fit inside it). Each frame has one
    row per request: ``elapsed_ms`` at the client, ``last_end_ms`` (when the last call of its
    trace ended, from the request's start), ``over_ms`` and the ``outcome``."""
    k = replace(_knobs(knobs), deadline_ms=None)     # the API sets no edge deadline here
    _ms("deadline_ms", deadline_ms)
    v.number("n", n, low=1, high=10_000, integer=True)
    v.number("rate", rate, low=0, low_open=True, high=MAX_RATE)
    if n / rate > MAX_SECONDS:
        raise ValueError(f"n / rate must be at most {MAX_SECONDS:g} s; got {n / rate:g}")
    lag = await calibrate()
    runs, during = {}, []
    for name, propagate in (("per-call timeouts only", False), ("deadline propagated", True)):
        async with lag_during(n / rate + deadline_ms / 1000) as beside:
            runs[name] = await _deadline_run(k, deadline_ms=deadline_ms, propagate=propagate,
                                             n=n, rate=rate)
        during.append(beside.lag)
    return Deadlines(deadline_ms, lag, runs, max(during, key=lambda x: x.p99_ms))


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
    v.number("budget_burst", budget_burst, low=1, high=1000)
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
    return Topology(*layers, db, name=f"{k_layers} layers", seed=0)


def _layer(name: str, nxt: str, tries: int, budget: RetryBudget | None, plane: str) -> Service:
    svc = Service(name, plane, uses=(nxt,))
    path = "/query" if nxt == "db" else "/work"

    @svc.get("/work")
    async def work(request):
        return await retry(lambda: svc.call(nxt, "GET", path), attempts=tries, policy="none",
                           base=0.001, cap=0.001, budget=budget, retryable=transient)
    return svc


async def amplification(k_layers: int, *, requests: int = 5, **kwargs) -> dict:
    """Send ``requests`` client requests, one after another; count what reaches each layer."""
    v.number("requests", requests, low=1, high=1000, integer=True)
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
    v.number("k_layers", k_layers, low=1, high=6, integer=True)
    v.number("requests", requests, low=1, high=1000, integer=True)
    v.number("tries", tries, low=1, high=10, integer=True)
    v.probability("ratio", ratio)
    v.number("burst", burst, low=1, high=1000)
    a = requests
    for _ in range(k_layers):
        a = a + min(math.floor(burst + ratio * a + 1e-9), (tries - 1) * a)
    return a


async def retry_amplification(knobs: Knobs | None = None, *, layers=(1, 2, 3, 4),
                              requests: int = 10, ratio: float = 0.1,
                              burst: float = 2.0) -> pd.DataFrame:
    """Chains of each depth in ``layers``: calls reaching the failing database for ``requests``
    client requests, with ``knobs.attempts`` tries at every layer, with a retry budget at every
    layer, and with the tries at the top only. Counts, exactly reproducible."""
    tries = _knobs(knobs).attempts
    if tries > 10:
        raise ValueError(f"knobs.attempts must be at most 10 for this experiment; got {tries}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers must name at least one depth")
    for k_layers in layers:
        v.number("layers", k_layers, low=1, high=6, integer=True)
    budget_bound(1, requests, tries=tries, ratio=ratio, burst=burst)    # checks them all
    rows = []
    for k_layers in layers:
        every = await amplification(k_layers, requests=requests, tries=tries)
        budgeted = await amplification(k_layers, requests=requests, tries=tries,
                                       budget_ratio=ratio, budget_burst=burst)
        top = await amplification(k_layers, requests=requests, tries=tries, retry_at="top")
        rows.append({"layers k": k_layers, f"ideal {tries}^k x R": tries ** k_layers * requests,
                     f"{tries} tries at every layer": every["calls reaching the database"],
                     "with a retry budget at every layer": budgeted["calls reaching the database"],
                     "budget's bound": budget_bound(k_layers, requests, tries=tries,
                                                    ratio=ratio, burst=burst),
                     f"{tries} tries at the top only": top["calls reaching the database"]})
    return pd.DataFrame(rows).set_index("layers k")


# -- experiment 5: many clients, one recovering dependency ----------------------------------------
def recovering_dependency(*, capacity: int = 5, service_ms: float = 40.0) -> Service:
    """A dependency that serves ``capacity`` requests at a time and answers 503 to the rest.

    A plain 503 (no overload marker): the AWS simulation's contended resource, where a client
    that collides simply tries again later. Down-time is a fault rule added by the experiment.
    """
    v.number("capacity", capacity, low=1, high=MAX_CLIENTS, integer=True)
    _ms("service_ms", service_ms, high=10_000)
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


def _check_recovery(clients, capacity, service_ms, down_s, base_ms, cap_ms, attempts) -> None:
    v.number("clients", clients, low=1, high=MAX_CLIENTS, integer=True)
    v.number("capacity", capacity, low=1, high=MAX_CLIENTS, integer=True)
    _ms("service_ms", service_ms, high=10_000)
    v.number("down_s", down_s, low=0, high=MAX_SECONDS)
    _backoff_ms(base_ms, cap_ms)
    v.number("attempts", attempts, low=1, high=50, integer=True)


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
    _check_recovery(clients, capacity, service_ms, down_s, base_ms, cap_ms, attempts)
    v.number("seed", seed, low=0, high=2**32, integer=True)
    v.optional(v.probability, "budget_ratio", budget_ratio)
    v.number("max_seconds", max_seconds, low=0, low_open=True, high=MAX_SECONDS)
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
    done = pd.DataFrame(finished, columns=["client", "attempts", "t_s", "ok"])
    ok = done[done["ok"].astype(bool)]
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
    _check_recovery(clients, capacity, service_ms, down_s, base_ms, cap_ms, attempts)
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
    _check_recovery(clients, capacity, service_ms, down_s, 1.0, 1.0, 1)
    return down_s + math.ceil(clients / capacity) * service_ms / 1000


@dataclass
class Recovery:
    """What :func:`recovery` measured: per policy, one :func:`shared_recovery` dict per trial."""
    trials: dict             # policy -> [dict, ...]
    lockstep: dict
    spread_s: float
    clients: int

    def first(self, policy: str) -> dict:
        return self.trials[policy][0]

    def calls(self, policy: str) -> Estimate:
        return Estimate.trials([r["calls"] for r in self.trials[policy]], unit="calls")

    def drain(self, policy: str) -> Estimate | None:
        """Time until the last client was served, over the trials that served them all."""
        done = [r["drain_s"] for r in self.trials[policy] if not math.isnan(r["drain_s"])]
        return Estimate.trials(done, unit="s") if done else None

    def table(self) -> pd.DataFrame:
        rows = {}
        for p in self.trials:
            c, d = self.calls(p), self.drain(p)
            rows[f"{p} jitter"] = {"calls (median)": c.value, "calls (min-max)":
                                   f"{c.low:.0f}-{c.high:.0f}",
                                   "time to drain (s, median)": d.value if d else math.nan,
                                   "clients served (median)": float(np.median(
                                       [r["succeeded"] for r in self.trials[p]]))}
        rows["none (lockstep ideal)"] = {"calls (median)": self.lockstep["calls"],
                                         "calls (min-max)": "",
                                         "time to drain (s, median)": self.lockstep["drain_s"],
                                         "clients served (median)":
                                             self.clients - self.lockstep["gave_up"]}
        rows["perfectly spread (bound)"] = {"calls (median)": self.clients,
                                            "calls (min-max)": "",
                                            "time to drain (s, median)": self.spread_s,
                                            "clients served (median)": self.clients}
        return pd.DataFrame.from_dict(rows, orient="index")


async def recovery(knobs: Knobs | None = None, *, policies=("none", "full"), trials: int = 3,
                   **kwargs) -> Recovery:
    """:func:`shared_recovery` for each policy, ``trials`` times, interleaved (trial t uses
    seed ``knobs.seed + t``), with the lockstep model and the perfectly spread bound."""
    k = _knobs(knobs)
    policies = list(policies)
    for p in policies:
        v.one_of("policies", p, POLICIES)
    v.number("trials", trials, low=1, high=20, integer=True)
    out = {p: [] for p in policies}
    for t in range(trials):
        for p in (policies if t % 2 == 0 else policies[::-1]):
            out[p].append(await shared_recovery(p, seed=k.seed + t, **kwargs))
    model = {name: kwargs[name] for name in ("clients", "capacity", "service_ms", "down_s",
                                             "base_ms", "cap_ms", "attempts") if name in kwargs}
    spread = {name: model[name] for name in ("clients", "capacity", "service_ms", "down_s")
              if name in model}
    return Recovery(out, lockstep_model(**model), spread_bound(**spread),
                    kwargs.get("clients", 40))


# -- a short run of everything, for the widget panel ---------------------------------------------
async def compare(k: Knobs | None = None, *, rate: float = 60.0,
                  seconds: float = 1.5) -> pd.DataFrame:
    """The starvation experiment on both designs, once; one row per design and endpoint.
    Requests still unanswered twice the deadline (or a second) after the last arrival count
    as hung."""
    k = _knobs(k)
    _check_load(rate, seconds)
    grace = 2 * k.deadline_ms / 1000 if k.deadline_ms else 1.0
    frames = []
    for name in DESIGNS:
        async with design(name, k) as d:
            res, _ = await mixed_load(d, rate=rate, seconds=seconds, grace=grace, label=name)
        s = starvation_summary(res)
        s.insert(0, "design", name)
        frames.append(s)
    return pd.concat(frames).rename_axis("endpoint").reset_index()


# -- the source article's claims, declared once -------------------------------------------------
CLAIMS = (
    Claim(f"{CHAPTER}.exhaustion", "impact: resource exhaustion",
          "No Timeouts: Resource exhaustion",
          "without timeouts, share of /product requests (which need only the healthy catalog) "
          "left unanswered once the hung calls hold every worker", 1.0, at_least=True,
          tolerance=0.9,
          assumptions="a bounded worker pool that waits when full; an unbounded server runs "
                      "out of memory or sockets instead, later", unit=""),
    Claim(f"{CHAPTER}.no_hanging", "proper timeouts: no hanging requests",
          "Proper timeouts: No hanging requests",
          "with timeouts, a deadline from arrival and bounded retries, share of all requests "
          "answered (a success or a fast 504) before the run cut them off", 1.0, at_least=True,
          tolerance=0.99,
          assumptions="a timeout near the dependency's measured p99.9, one deadline per request "
                      "that also bounds the wait for a worker; 'no hanging' is not 'no "
                      "failing': hung calls become fast 504s", conditional=True, unit=""),
)


def findings(result: Starvation) -> list[Finding]:
    """Judge :data:`CLAIMS` from a :func:`starvation` result."""
    if not isinstance(result, Starvation):
        raise TypeError(f"result must be the Starvation result of {CHAPTER}.starvation; "
                        f"got {type(result).__name__}")
    starved, due = result.starved_after_fill()
    if due == 0:
        raise ValueError("result must come from a run long enough for the pool to fill "
                         "(no rep had pool hung calls before its last /product request)")
    hung, total = result.hung("after")
    hung_before, total_before = result.hung("before")
    exhaustion, no_hanging = CLAIMS
    answered = Estimate.proportion(total - hung, total)
    if hung and result.too_busy:
        # A stalled loop can turn a timely answer into a "hung" one, never the reverse: a
        # count of zero stands, a count above zero from such a run decides nothing.
        answered = answered.too_busy(0.0, 1.0)
    return [
        exhaustion.judge(
            Estimate.proportion(starved, due), ideal=1.0,
            note=f"{due} /product requests due after the pool filled "
                 f"(peak {result.peak_busy('before')} of {result.knobs.pool} workers busy)"),
        no_hanging.judge(
            answered, ideal=1.0,
            note=f"hung: {hung_before} of {total_before} without timeouts, {hung} of {total} "
                 f"with them, over {result.reps} runs; a request counts as hung when unanswered "
                 f"{result.grace:.1f} s after the last arrival; {result.busy_note}"),
    ]


AUDIT_KNOBS = Knobs()
AUDIT_LOAD = {"rate": 80.0, "seconds": 2.5, "reps": 2}


async def audit(knobs: Knobs | None = None) -> list[Finding]:
    """A small run of the experiment behind every claim (about 15 s), judged."""
    k = _knobs(knobs if knobs is not None else AUDIT_KNOBS)
    return findings(await starvation(k, **AUDIT_LOAD))


# -- the static explorer's data: the experiment over a small grid of knobs ------------------------
SWEEP_GRID = {"timeout_ms": (25.0, 50.0, 100.0, 200.0), "hang_p": (0.1, 0.2, 0.4)}
SWEEP_LOAD = {"rate": 60.0, "seconds": 1.5}


async def sweep(knobs: Knobs | None = None, *, grid: dict | None = None,
                rate: float = SWEEP_LOAD["rate"],
                seconds: float = SWEEP_LOAD["seconds"]) -> pd.DataFrame:
    """Experiment 1 over a grid of ``timeout_ms`` x ``hang_p`` (at most 24 points): one row per
    grid point and design, with the knob values and what was measured (requests, hung,
    /product success, recommendations answered in time or with a fast 504, worst latency).
    The design without timeouts does not use ``timeout_ms``: it runs once per ``hang_p`` and
    its row is repeated for each timeout (``shared_run`` says so). About 20 s in all."""
    k = _knobs(knobs)
    grid = dict(SWEEP_GRID if grid is None else grid)
    if set(grid) != {"timeout_ms", "hang_p"}:
        raise ValueError(f"grid must have the keys 'timeout_ms' and 'hang_p'; got {sorted(grid)}")
    timeouts_ms, hang_ps = list(grid["timeout_ms"]), list(grid["hang_p"])
    if not timeouts_ms or not hang_ps or len(timeouts_ms) * len(hang_ps) > 24:
        raise ValueError(f"grid must have 1 to 24 points; got {len(timeouts_ms)} x "
                         f"{len(hang_ps)}")
    for t in timeouts_ms:
        _ms("timeout_ms", t)
    for p in hang_ps:
        v.probability("hang_p", p)
    _check_load(rate, seconds)
    grace = 2 * k.deadline_ms / 1000 if k.deadline_ms else 1.0
    rows = []

    def row(name, kp, res, shared):
        s = starvation_summary(res)
        hung = int(s["hung"].sum())
        return {"timeout_ms": kp.timeout_ms, "hang_p": kp.hang_p, "design": name,
                "requests": int(s["requests"].sum()), "hung": hung,
                "hung_share": hung / int(s["requests"].sum()),
                "product_success": float(s.loc[HEALTHY, "success"]),
                "recommendations_success": float(s.loc[HUNG, "success"]),
                "product_worst_ms": float(s.loc[HEALTHY, "worst_ms"]),
                "shared_run": shared}

    for hang_p in hang_ps:
        kh = replace(k, hang_p=hang_p)
        async with design("before", kh) as d:
            before, _ = await mixed_load(d, rate=rate, seconds=seconds, grace=grace,
                                         label="before")
        for timeout_ms in timeouts_ms:
            kt = replace(kh, timeout_ms=timeout_ms)
            rows.append(row("before", kt, before, len(timeouts_ms) > 1))
            async with design("after", kt) as d:
                after, _ = await mixed_load(d, rate=rate, seconds=seconds, grace=grace,
                                            label="after")
            rows.append(row("after", kt, after, False))
    return pd.DataFrame(rows)
