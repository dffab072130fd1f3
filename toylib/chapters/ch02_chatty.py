"""Chapter 2, Chatty APIs: a profile page built with 1 + N + M serial calls, and its fix.

* **before**: the gateway fetches the user, then each of the user's N posts, then each of the
  M friends, one call after another (the N+1 pattern, twice).
* **after**: a backend for frontend (BFF) with a TTL response cache, in front of a composite
  service that makes three calls in parallel: the user, a batch of posts, a batch of friends.
* **dataloader**: the general fix for N+1: the chatty gateway's loops, unchanged in shape, but
  every load goes through a DataLoader-style batcher.

Every design serves exactly the same page for the same user (a test checks it), so the only
difference measured is the shape of the calls. The data services answer after ``latency_ms``
(± ``jitter_ms``) and fail with probability ``p`` per call; a batch call costs one round trip,
the same as a single item (an assumption the chapter states: batch size barely matters while
items are small and the database is indexed).

The chapter follows :mod:`toylib.chapters.design`: :class:`Knobs` -> a design from
:data:`DESIGNS` (``async with``) -> the experiments (:func:`requests_per_page`, :func:`latency`,
:func:`failure_rate`, :func:`cache_run`) -> :data:`CLAIMS` judged by :func:`findings`.
Verdicts that a busy machine could otherwise flip are built from counts (requests, bytes,
failed pages with seeded faults, cache hits against a virtual clock) or from the medians of
interleaved trials of 20 ms hops.
"""
from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace

import pandas as pd

from toylib.chapters.design import Design, build
from toylib.claims import Claim, Estimate, Finding
from toylib.core import validate as v
from toylib.chapters.design import knobs_or_default, running_design
from toylib.core.clock import FakeClock, now
from toylib.core.faults import Error, Latency
from toylib.core.services import CLIENT, CallError, Service, Store, Topology, gather_or_cancel
from toylib.resilience.batcher import Batcher
from toylib.resilience.cache import TTLCache, ttl_hit_rate

CHAPTER = "ch02_chatty"

# Upper bounds that fit a laptop and a page: a bigger value is refused, naming the parameter.
MAX_ITEMS = 200            # posts or friends per user
MAX_USERS = 100_000        # users in the data set (the Zipf weights are a list of this length)
MAX_LATENCY_MS = 5_000.0
MAX_TTL_S = 86_400.0       # one day
MAX_SEED = 2**32 - 1
MAX_PAGES = 5_000          # pages one experiment may request
MAX_DRAWS = 1_000_000      # user ids zipf_users may draw


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated when built (a bad value names the field and its range)."""
    n_posts: int = 10          # N: posts per user
    n_friends: int = 10        # M: friends per user
    latency_ms: float = 20.0   # injected delay of every data-service call
    jitter_ms: float = 0.0     # ± around latency_ms (at most latency_ms)
    p: float = 0.0             # probability that a data-service call fails (503)
    ttl_s: float = 300.0       # the BFF's cache time to live (the source's 5 minutes)
    users: int = 1000          # user ids 0 .. users - 1
    seed: int = 0              # random seed of the injected faults

    def __post_init__(self):
        v.number("n_posts", self.n_posts, low=0, high=MAX_ITEMS, integer=True)
        v.number("n_friends", self.n_friends, low=0, high=MAX_ITEMS, integer=True)
        v.number("latency_ms", self.latency_ms, low=0, high=MAX_LATENCY_MS)
        v.number("jitter_ms", self.jitter_ms, low=0, high=MAX_LATENCY_MS)
        if self.jitter_ms > self.latency_ms:   # the pair's wrong field is jitter_ms
            raise ValueError(f"jitter_ms must be in [0, latency_ms] = [0, {self.latency_ms}]; "
                             f"got {self.jitter_ms!r}")
        v.probability("p", self.p)
        v.number("ttl_s", self.ttl_s, low=0, high=MAX_TTL_S, low_open=True)
        v.number("users", self.users, low=1, high=MAX_USERS, integer=True)
        v.number("seed", self.seed, low=0, high=MAX_SEED, integer=True)


def as_knobs(knobs) -> Knobs:
    """``knobs`` itself, or the defaults for None; anything else is refused naming ``knobs``."""
    return knobs_or_default(Knobs, knobs)


# -- the data, identical in every design --------------------------------------------------------
MAX_ID = 10**12             # user and post ids


def user_record(uid: int, k: Knobs) -> dict:
    uid = v.number("uid", uid, low=0, high=MAX_ID, integer=True)
    k = as_knobs(k)
    rng = random.Random(uid)
    return {"id": uid, "name": f"user{uid}", "bio": "x" * rng.randint(40, 120),
            "post_ids": [uid * 1000 + j for j in range(k.n_posts)],
            "friend_ids": [(uid * 7919 + 13 * j + 1) % k.users for j in range(k.n_friends)]}


def post_record(pid: int) -> dict:
    pid = v.number("pid", pid, low=0, high=MAX_ID * 1000, integer=True)
    rng = random.Random(pid)
    return {"id": pid, "author": pid // 1000, "title": f"post {pid}",
            "body": "lorem ipsum " * rng.randint(5, 20)}


def friend_summary(user: dict) -> dict:
    if not isinstance(user, dict) or "id" not in user or "name" not in user:
        raise TypeError(f"user must be a user record (a dict with 'id' and 'name'); got {user!r}")
    return {"id": user["id"], "name": user["name"]}


def data_services(k: Knobs) -> tuple[Service, Service]:
    """The user service and the post service, each with single and batch endpoints."""
    k = as_knobs(k)
    users = Service("users", label="User Service", uses=("user_db",))
    posts = Service("posts", label="Post Service", uses=("post_db",))

    @users.get(r"/users/{id:\d+}")
    async def get_user(request):
        return user_record(int(request.match_info["id"]), k)

    @users.get("/friends/batch")
    async def friends_batch(request):
        user = user_record(int(request.query["user_id"]), k)
        limit = int(request.query.get("limit", k.n_friends))
        return [friend_summary(user_record(f, k)) for f in user["friend_ids"][:limit]]

    @users.get("/users/batch")
    async def users_batch(request):
        return [user_record(int(i), k) for i in request.query["ids"].split(",") if i]

    @posts.get(r"/posts/{id:\d+}")
    async def get_post(request):
        return post_record(int(request.match_info["id"]))

    @posts.get("/posts/batch")
    async def posts_batch(request):
        if "ids" in request.query:
            return [post_record(int(i)) for i in request.query["ids"].split(",") if i]
        user = user_record(int(request.query["user_id"]), k)
        limit = int(request.query.get("limit", k.n_posts))
        return [post_record(p) for p in user["post_ids"][:limit]]

    return users, posts


def inject(k: Knobs, *services: Service) -> None:
    """The knobs' delay and failure probability on every call to ``services``."""
    k = as_knobs(k)
    for s in services:
        if not isinstance(s, Service):
            raise TypeError(f"services must be Service objects; got {s!r}")
    for s in services:
        s.faults.clear()
        if k.latency_ms:
            s.faults.add(Latency(k.latency_ms, k.jitter_ms))
        if k.p:
            s.faults.add(Error(k.p, 503))


def stores(*extra: Store) -> tuple[Store, ...]:
    # The services' ``uses`` name the databases, so the diagram needs them in a plane.
    return (*extra, Store("user_db", label="User DB"), Store("post_db", label="Post DB"))


# -- before: the chatty gateway -------------------------------------------------------------------
def chatty_gateway() -> Service:
    gateway = Service("gateway", "edge", label="API Gateway", uses=("users", "posts"))

    @gateway.get("/profile/{id}")
    async def profile(request):
        uid = int(request.match_info["id"])
        user = await gateway.call("users", "GET", f"/users/{uid}")
        posts = []
        for pid in user["post_ids"]:                      # N calls, one after another
            posts.append(await gateway.call("posts", "GET", f"/posts/{pid}"))
        friends = []
        for fid in user["friend_ids"]:                    # M more
            friends.append(friend_summary(await gateway.call("users", "GET", f"/users/{fid}")))
        return {"user": friend_summary(user), "bio": user["bio"], "posts": posts,
                "friends": friends}

    return gateway


# -- after: BFF + cache + composite with parallel batch calls -------------------------------------
def composite_service(k: Knobs) -> Service:
    k = as_knobs(k)
    composite = Service("composite", label="Profile Composite", uses=("users", "posts"))

    @composite.get("/complete-profile/{id}")
    async def complete_profile(request):
        uid = int(request.match_info["id"])
        user, posts, friends = await gather_or_cancel(     # three calls, in parallel
            composite.call("users", "GET", f"/users/{uid}"),
            composite.call("posts", "GET", "/posts/batch",
                           params={"user_id": uid, "limit": k.n_posts}),
            composite.call("users", "GET", "/friends/batch",
                           params={"user_id": uid, "limit": k.n_friends}))
        return {"user": friend_summary(user), "bio": user["bio"], "posts": posts,
                "friends": friends}

    return composite


def bff_service(cache: TTLCache) -> Service:
    if not isinstance(cache, TTLCache):
        raise TypeError(f"cache must be a TTLCache; got {type(cache).__name__}")
    bff = Service("bff", "edge", label="Backend for Frontend", uses=("cache", "composite"))

    @bff.get("/profile/{id}")
    async def profile(request):
        uid = int(request.match_info["id"])
        page = cache.get(uid)
        if page is None:                                  # a miss: one call does the work
            page = await bff.call("composite", "GET", f"/complete-profile/{uid}")
            cache.put(uid, page)                          # a failed call is not cached
        return page

    return bff


# -- the general fix: a DataLoader in the gateway -------------------------------------------------
def batching_gateway() -> Service:
    """The chatty gateway's loops, unchanged in shape, but every load goes through a Batcher."""
    gateway = Service("gateway", "edge", label="API Gateway + DataLoader", uses=("users", "posts"))

    @gateway.get("/profile/{id}")
    async def profile(request):
        uid = int(request.match_info["id"])

        async def fetch_posts(ids):
            return await gateway.call("posts", "GET", "/posts/batch",
                                      params={"ids": ",".join(map(str, ids))})

        async def fetch_users(ids):
            return await gateway.call("users", "GET", "/users/batch",
                                      params={"ids": ",".join(map(str, ids))})

        post_loader, user_loader = Batcher(fetch_posts), Batcher(fetch_users)  # one per request
        user = await user_loader.load(uid)
        # Written as loops over ids, as N+1 code is; the loaders turn each loop into one call,
        # and both batches leave in the same tick.
        posts, friends = await gather_or_cancel(
            asyncio.gather(*(post_loader.load(p) for p in user["post_ids"])),
            asyncio.gather(*(user_loader.load(f) for f in user["friend_ids"])))
        return {"user": friend_summary(user), "bio": user["bio"], "posts": list(posts),
                "friends": [friend_summary(f) for f in friends]}

    return gateway


# -- the designs ----------------------------------------------------------------------------------
class ChattyDesign(Design):
    """A design of this chapter: ``entry`` is the service a client asks for ``/profile/{id}``."""
    chapter = CHAPTER
    entry = "gateway"

    def __init__(self, knobs=None):
        super().__init__(as_knobs(knobs))

    def topology_of(self, edge: Service, *extra) -> Topology:
        users, posts = data_services(self.knobs)
        inject(self.knobs, users, posts)
        return Topology(edge, *extra, users, posts, *stores(*self.extra_stores()),
                        name=f"{CHAPTER}: {self.name}", seed=self.knobs.seed)

    def extra_stores(self) -> tuple[Store, ...]:
        return ()


class Before(ChattyDesign):
    """The chatty gateway: 1 + N + M serial calls per page."""
    name = "before"

    def build(self) -> Topology:
        return self.topology_of(chatty_gateway())

    def diagram(self, **kwargs):
        calls = 1 + self.knobs.n_posts + self.knobs.n_friends
        kwargs.setdefault("problems", {"gateway": f"1 + N + M = {calls} serial calls per page"})
        return super().diagram(**kwargs)


class After(ChattyDesign):
    """BFF with a TTL cache (design state: ``self.cache``) in front of a composite service.

    ``clock`` drives the cache's expiry (default: the real clock); :func:`cache_run` gives it a
    clock that follows the planned arrival times, so the hit rate is a count, not a timing.
    """
    name = "after"
    entry = "bff"

    def __init__(self, knobs=None, *, clock=None):
        k = as_knobs(knobs)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a function returning seconds; got {clock!r}")
        self.cache = TTLCache(k.ttl_s, max_entries=max(10_000, k.users),
                              clock=clock if clock is not None else now)
        super().__init__(k)

    def build(self) -> Topology:
        return self.topology_of(bff_service(self.cache), composite_service(self.knobs))

    def extra_stores(self) -> tuple[Store, ...]:
        return (Store("cache", "edge", label="Response Cache (TTL)"),)


class Dataloader(ChattyDesign):
    """The chatty gateway's code shape with a DataLoader: 1 + 2 calls in two round trips."""
    name = "dataloader"

    def build(self) -> Topology:
        return self.topology_of(batching_gateway())


DESIGNS = {"before": Before, "after": After, "dataloader": Dataloader}


def design(name: str, knobs=None) -> ChattyDesign:
    """A design of this chapter by name (``"before"``, ``"after"``, ``"dataloader"``)."""
    return build(DESIGNS, name, as_knobs(knobs))


# -- probes: they take a running design first -----------------------------------------------------
def _uid(design: ChattyDesign, uid) -> int:
    return v.number("uid", uid, low=0, high=design.knobs.users - 1, integer=True)


def _design(design) -> ChattyDesign:
    return running_design(ChattyDesign, design)


async def get_page(design: ChattyDesign, uid: int, *, trace_id: str | None = None) -> dict:
    """The profile page of ``uid`` from a running design (a ``CallError`` if it failed)."""
    _design(design)
    return await design.call(design.entry, "GET", f"/profile/{_uid(design, uid)}",
                             trace_id=trace_id)


def calls_behind(design: ChattyDesign, trace_id: str) -> Counter:
    """Calls recorded for one page, by caller (the client's own request is ``"client"``)."""
    if not isinstance(design, ChattyDesign):
        raise TypeError(f"design must be a {CHAPTER} design (see DESIGNS); "
                        f"got {type(design).__name__}")
    if not isinstance(trace_id, str) or not trace_id:
        raise TypeError(f"trace_id must be a non-empty string; got {trace_id!r}")
    return Counter(s.caller for s in design.tracer.spans if s.trace_id == trace_id)


# -- the analytic figures the chapter puts beside its measurements --------------------------------
def ideal(knobs=None) -> dict:
    """Ideal latency (ms) and success probability of one page, from the knobs alone."""
    k = as_knobs(knobs)
    calls_before = 1 + k.n_posts + k.n_friends
    # The loaders send no batch for an empty list: with no posts (or friends) one call fewer.
    batches = (k.n_posts > 0) + (k.n_friends > 0)
    return {"calls_before": calls_before, "calls_after": 3, "calls_dataloader": 1 + batches,
            # the user first, then both batches together
            "latency_dataloader_ms": (2 if batches else 1) * k.latency_ms,
            "latency_before_ms": calls_before * k.latency_ms,
            "latency_after_cold_ms": k.latency_ms,     # three calls in parallel: one round trip
            "latency_after_warm_ms": 0.0,
            "success_before": (1 - k.p) ** calls_before,
            "success_after_cold": (1 - k.p) ** 3}


def zipf_weights(users: int, s: float) -> list[float]:
    """Popularity of user ids 0 .. users - 1: user r - 1 in proportion to 1 / r**s."""
    v.number("users", users, low=1, high=MAX_USERS, integer=True)
    v.number("s", s, low=0, high=5)
    raw = [1 / (r ** s) for r in range(1, users + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def zipf_users(n: int, users: int, s: float, seed: int = 0) -> list[int]:
    """``n`` user ids drawn with Zipf popularity (user 0 the most popular), exponent ``s``."""
    v.number("n", n, low=1, high=MAX_DRAWS, integer=True)
    weights = zipf_weights(users, s)
    v.number("seed", seed, low=0, high=MAX_SEED, integer=True)
    return random.Random(seed).choices(range(users), weights=weights, k=n)


def ttl_hit_rate_run(rates, ttl: float, seconds: float) -> float:
    """Expected hit rate of a TTL cache that starts empty, over ``seconds`` of Poisson arrivals.

    :func:`toylib.resilience.cache.ttl_hit_rate` is the steady state; a finite run starting
    empty misses more (every key's first request misses). A key with rate λ: its k-th miss
    (k = 0, 1, ...) comes k windows of ``ttl`` and k + 1 exponential waits after the start, so
    E[misses] = Σ_k P(Poisson(λ (seconds - k ttl)) ≥ k + 1) over k ttl < seconds.
    """
    ttl = v.number("ttl", ttl, low=0, high=MAX_TTL_S, low_open=True)
    seconds = v.number("seconds", seconds, low=0, high=10 * MAX_TTL_S, low_open=True)
    arrivals = misses = 0.0
    for lam in rates:
        v.number("rates", lam, low=0, high=1e9)
        arrivals += lam * seconds
        k = 0
        while k * ttl < seconds:
            misses += _poisson_at_least(lam * (seconds - k * ttl), k + 1)
            k += 1
    if arrivals <= 0:
        raise ValueError("rates must contain at least one positive rate")
    return 1 - misses / arrivals


def _poisson_at_least(mu: float, m: int) -> float:
    """P(Poisson(mu) >= m), summed in log space (mu up to a few thousand)."""
    if mu <= 0:
        return 0.0
    below, term = 0.0, -mu                  # log P(X = 0)
    for j in range(m):
        below += math.exp(term)
        term += math.log(mu) - math.log(j + 1)
    return max(0.0, 1.0 - below)


# -- experiments: each builds its designs and releases them when it returns -----------------------
def _pages(name: str, pages, k: Knobs, high: int = MAX_PAGES) -> int:
    return v.number(name, pages, low=1, high=min(high, k.users), integer=True)


@dataclass
class Requests:
    """One page per design, counted from the trace: the same page, and what each cost."""
    knobs: Knobs
    uid: int
    calls: dict            # design -> calls behind one page (after: cold; "after (warm)" too)
    fanout: int            # the composite's calls on a cold page (the source's "3 requests")
    same_page: bool
    spans: dict            # design -> span DataFrame of its page(s) (after: cold, then warm)

    def wire(self) -> pd.DataFrame:
        """Calls, body bytes and HTTP/1.1 bytes behind one (cold) page, per design."""
        rows = {}
        for name, spans in self.spans.items():
            first = spans[spans.trace_id == spans.trace_id.iloc[0]]
            inner = first[first.caller != CLIENT]
            body = int(inner.resp_bytes.sum() + inner.req_bytes.sum())
            rows["after (cold)" if name == "after" else name] = {
                "calls": len(inner), "body bytes": body, "wire bytes": int(inner.wire_bytes.sum()),
                "header overhead": int(inner.wire_bytes.sum()) - body}
        return pd.DataFrame(rows).T

    @property
    def request_factor(self) -> Estimate:
        return Estimate.exact(self.calls["before"] / self.fanout, unit="x",
                              how="requests counted from the trace")

    @property
    def wire_factor(self) -> Estimate:
        w = self.wire()
        return Estimate.exact(w.loc["before", "wire bytes"] / w.loc["after (cold)", "wire bytes"],
                              unit="x", how="HTTP bytes counted on one page")


async def requests_per_page(knobs=None, *, uid: int = 7) -> Requests:
    """One page of ``uid`` from every design (and a second, cached, from "after")."""
    k = as_knobs(knobs)
    uid = v.number("uid", uid, low=0, high=k.users - 1, integer=True)
    pages, calls, spans, fanout = {}, {}, {}, 0
    for name in DESIGNS:
        async with design(name, k) as d:
            pages[name] = await get_page(d, uid, trace_id="cold")
            calls[name] = sum(n for c, n in calls_behind(d, "cold").items() if c != CLIENT)
            if name == "after":
                fanout = calls_behind(d, "cold")["composite"]
                await get_page(d, uid, trace_id="warm")
                calls["after (warm)"] = sum(n for c, n in calls_behind(d, "warm").items()
                                            if c != CLIENT)
            spans[name] = d.tracer.df()
    same = pages["before"] == pages["after"] == pages["dataloader"]
    return Requests(k, uid, calls, fanout, same, spans)


LATENCY_DESIGNS = ("before", "after (cold)", "after (warm)", "dataloader")


@dataclass
class Latencies:
    """Page times (ms) of interleaved pages, ``trials`` times ``pages`` per design."""
    knobs: Knobs
    times: pd.DataFrame    # trial, design, uid, ms

    def medians(self) -> pd.DataFrame:
        """The median page time of each trial (rows) and design (columns)."""
        return self.times.pivot_table(index="trial", columns="design", values="ms",
                                      aggfunc="median")[list(LATENCY_DESIGNS)]

    def estimate(self, name: str) -> Estimate:
        v.one_of("name", name, LATENCY_DESIGNS)
        return Estimate.trials(self.medians()[name], unit="ms")

    def speedup(self, name: str = "after (cold)") -> Estimate:
        """Before's median page time over ``name``'s, with the spread of the trials."""
        return Estimate.ratio(self.estimate("before"), self.estimate(name))


async def latency(knobs=None, *, pages: int = 8, trials: int = 3) -> Latencies:
    """Page times of every design, interleaved page by page, over ``trials`` trials.

    Every trial asks for new users, so the "after" page is cold; "after (warm)" asks for the
    same user again at once (a cache hit). A verdict uses the median of each trial. No call is
    made to fail here (``knobs.p`` is set to 0): :func:`failure_rate` counts failures.
    """
    k = replace(as_knobs(knobs), p=0.0)
    trials = v.number("trials", trials, low=1, high=20, integer=True)
    pages = _pages("pages", pages, k, high=min(MAX_PAGES, k.users // trials or 1))
    rows = []
    designs = {name: design(name, k) for name in DESIGNS}
    async with designs["before"] as before, designs["after"] as after, \
            designs["dataloader"] as loader:
        for trial in range(trials):
            for i in range(pages):
                uid = trial * pages + i
                for name, d in (("before", before), ("after (cold)", after),
                                ("after (warm)", after), ("dataloader", loader)):
                    t0 = now()
                    await get_page(d, uid)
                    rows.append({"trial": trial, "design": name, "uid": uid,
                                 "ms": (now() - t0) * 1000})
    return Latencies(k, pd.DataFrame(rows))


@dataclass
class Failures:
    """Failed pages per design and per-call failure probability p (seeded: a count)."""
    knobs: Knobs
    pages: int
    table: pd.DataFrame    # p, design, pages, failed, ideal (the analytic failure rate)

    def rate(self, p: float, name: str) -> Estimate:
        row = self.table[(self.table.p == p) & (self.table.design == name)]
        if row.empty:
            raise ValueError(f"p and name must be measured: p in {sorted(set(self.table.p))}, "
                             f"name in {sorted(set(self.table.design))}; got {p!r}, {name!r}")
        return Estimate.proportion(int(row.failed.iloc[0]), int(row.pages.iloc[0]))


async def failure_rate(knobs=None, *, ps=(0.01, 0.02, 0.05, 0.10), pages: int = 300,
                       concurrency: int = 10) -> Failures:
    """Pages that fail when every data-service call fails with probability p.

    Distinct users, so every "after" page is cold (the cache would only flatter it). Each page
    has its own trace id and the faults are seeded on it, so the same knobs fail the same pages
    however the machine schedules them. No delay is injected: it does not change the counts.
    """
    k = as_knobs(knobs)
    ps = tuple(ps) if isinstance(ps, (list, tuple)) else ps
    if not isinstance(ps, tuple) or not 1 <= len(ps) <= 10:
        raise ValueError(f"ps must be a list of 1 to 10 probabilities; got {ps!r}")
    for p in ps:
        v.probability("ps", p)
    pages = _pages("pages", pages, k)
    concurrency = v.number("concurrency", concurrency, low=1, high=50, integer=True)
    rows = []
    for p in ps:
        kp = replace(k, latency_ms=0.0, jitter_ms=0.0, p=p)
        for name, want in (("before", "success_before"), ("after", "success_after_cold")):
            failed = 0
            async with design(name, kp) as d:
                queue = iter(range(pages))

                async def worker():
                    nonlocal failed
                    for uid in queue:
                        try:
                            await get_page(d, uid, trace_id=f"page{uid}")
                        except CallError:
                            failed += 1
                await asyncio.gather(*(worker() for _ in range(concurrency)))
            rows.append({"p": p, "design": name, "pages": pages, "failed": failed,
                         "ideal": 1 - ideal(kp)[want]})
    return Failures(k, pages, pd.DataFrame(rows))


@dataclass
class CacheRun:
    """The "after" design under skewed (Zipf) traffic: hits, misses and failed pages."""
    knobs: Knobs
    rate: float
    seconds: float
    skew: float
    requests: int
    hits: int
    failed: int
    ideal_run: float       # expected hit rate of this run (starting empty), without failures
    ideal_steady: float    # the steady-state hit rate at this traffic

    @property
    def hit_rate(self) -> Estimate:
        return Estimate.proportion(self.hits, self.requests)

    @property
    def failure(self) -> Estimate:
        return Estimate.proportion(self.failed, self.requests)

    def rates(self) -> list[float]:
        """Each user's request rate (1/s)."""
        return [self.rate * w for w in zipf_weights(self.knobs.users, self.skew)]

    def ttl_for(self, target: float) -> float:
        """The TTL (s) at which the steady-state hit rate reaches ``target`` at this traffic
        (``math.inf`` when even a TTL of a day, the longest a cache here keeps, falls short)."""
        v.number("target", target, low=0, high=1, low_open=True, high_open=True)
        rates, lo, hi = self.rates(), 1e-3, MAX_TTL_S
        if ttl_hit_rate(rates, hi) < target:
            return math.inf
        for _ in range(100):                   # bisection: the hit rate grows with the TTL
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if ttl_hit_rate(rates, mid) < target else (lo, mid)
        return hi


async def cache_run(knobs=None, *, rate: float = 1.5, seconds: float = 600.0,
                    skew: float = 1.1, seed: int = 3) -> CacheRun:
    """Requests for Zipf-popular users arriving at ``rate`` per second for ``seconds``.

    The arrivals are a seeded Poisson schedule, and the cache's clock follows that schedule (a
    virtual clock) while the requests themselves run for real, one after another: the hit rate
    is then a count that a busy machine cannot change, and ten minutes of a 5-minute TTL take a
    few seconds. Failed pages (``knobs.p``) are counted too; they are not cached.
    """
    k = as_knobs(knobs)
    rate = v.number("rate", rate, low=0, high=100_000, low_open=True)
    seconds = v.number("seconds", seconds, low=0, high=10 * MAX_TTL_S, low_open=True)
    skew = v.number("skew", skew, low=0, high=5)
    seed = v.number("seed", seed, low=0, high=MAX_SEED, integer=True)
    if rate * seconds > MAX_PAGES:
        raise ValueError(f"rate * seconds must be at most {MAX_PAGES} requests (rate = {rate}, "
                         f"seconds = {seconds}); lower rate or seconds")
    rng, t, times = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds or len(times) >= MAX_PAGES:
            break
        times.append(t)
    who = zipf_users(max(1, len(times)), k.users, skew, seed=seed)
    clock = FakeClock(0.0)
    kz = replace(k, latency_ms=0.0, jitter_ms=0.0)   # time is the virtual clock's here
    failed = 0
    async with After(kz, clock=clock) as d:
        for i, (at, uid) in enumerate(zip(times, who)):
            clock.t = at
            try:
                await get_page(d, uid, trace_id=f"r{i}")
            except CallError:
                failed += 1
        hits = d.cache.hits
    rates = [rate * w for w in zipf_weights(k.users, skew)]
    return CacheRun(k, rate, seconds, skew, len(times), hits, failed,
                    ttl_hit_rate_run(rates, k.ttl_s, seconds), ttl_hit_rate(rates, k.ttl_s))


# -- the source's claims, declared once -----------------------------------------------------------
CLAIM_P = 0.02   # the per-call failure probability at which the failure claim is judged

CLAIMS = (
    Claim(f"{CHAPTER}.requests", "requests per page",
          "Request Count: 1 + N + M (21 requests) vs 3 requests: 7x fewer",
          "calls behind one page, before / the composite's fan-out after", 7.0,
          assumptions="N = M = 10; the source's 3 are the composite's fan-out (a cold page also "
                      "costs 1 BFF -> composite hop; a cached page costs none)", unit="x"),
    Claim(f"{CHAPTER}.latency", "latency",
          "Latency: 500ms+ (serial calls) vs 50ms (parallel + cache): 10x faster",
          "median page time, before / after with a cold cache", 10.0, conditional=True,
          assumptions="N = M = 10 calls of 20 ms each; the data services keep up with the "
                      "parallel calls; pages are cold (a cache hit is faster still)", unit="x"),
    Claim(f"{CHAPTER}.failure", "failure rate",
          "Failure Rate: High (multiplicative risk) vs Low (single composite call): 20x better",
          f"pages that fail at p = {CLAIM_P} per call, before / after with the cache under "
          f"Zipf traffic", 20.0, conditional=True,
          assumptions=f"every call fails independently with p = {CLAIM_P}; cold pages alone give "
                      "about 21/3 = 7x; the rest comes from the cache, so it depends on the "
                      "traffic's skew and the TTL", unit="x"),
    Claim(f"{CHAPTER}.network", "network usage",
          "Network Usage: High overhead per call vs Batched data transfer: 5x efficient",
          "HTTP/1.1 bytes behind one page, before / after (cold)", 5.0,
          assumptions="HTTP/1.1 with JSON posts of about 100-250 bytes: headers are the only "
                      "per-call cost; TCP/IP framing not counted", unit="x"),
    Claim(f"{CHAPTER}.hit_rate", "cache hit rate",
          "Cache Hit Rate: 0% (dynamic assembly) vs 95% (materialized views): Dramatic",
          "share of page requests the BFF answers from its cache", 0.95, tolerance=0.95,
          conditional=True,
          assumptions="Zipf popularity and the request rate shown; the hit rate is a property "
                      "of the traffic and the TTL, not of the design"),
)


def claim(short: str) -> Claim:
    """The claim ``f"{CHAPTER}.{short}"``."""
    ids = {c.id.split(".", 1)[1]: c for c in CLAIMS}
    v.one_of("short", short, sorted(ids))
    return ids[short]


def _factor(num: Estimate, den: Estimate) -> Estimate:
    """``num / den``; when ``den`` may be 0 (no failure seen) the factor has no upper bound."""
    if den.low > 0:
        return Estimate.ratio(num, den)
    value = num.value / den.value if den.value > 0 else num.value / (0.5 / den.n)
    return Estimate(value, num.low / den.high, math.inf, min(num.n, den.n),
                    f"ratio of ({num.how}) to ({den.how}); none failed after", "x")


def findings(*, requests: Requests, latency: Latencies, failures: Failures,
             hits: CacheRun, cached: CacheRun) -> list[Finding]:
    """Every claim of :data:`CLAIMS` judged from the experiments' results.

    ``hits``: a :func:`cache_run` without failures (the hit rate); ``cached``: one with
    ``p = CLAIM_P`` (the failure rate of the "after" design with its cache, under traffic).
    """
    for name, obj, kind in (("requests", requests, Requests), ("latency", latency, Latencies),
                            ("failures", failures, Failures), ("hits", hits, CacheRun),
                            ("cached", cached, CacheRun)):
        if not isinstance(obj, kind):
            raise TypeError(f"{name} must be a {kind.__name__} result; got {type(obj).__name__}")
    if cached.knobs.p != CLAIM_P:
        raise ValueError(f"cached must be a cache_run with knobs.p = {CLAIM_P}; "
                         f"got p = {cached.knobs.p}")
    k = requests.knobs
    ik = ideal(k)
    before_fail = failures.rate(CLAIM_P, "before")
    cold_fail = failures.rate(CLAIM_P, "after")
    # The ideal with the cache: a cached page cannot fail, a missed one fails as a cold page.
    cached_ideal = (1 - (1 - CLAIM_P) ** 3) * (1 - cached.ideal_run)
    failure_ideal = (1 - (1 - CLAIM_P) ** ik["calls_before"]) / cached_ideal
    lk = ideal(latency.knobs)
    wire = requests.wire()
    return [
        claim("requests").judge(requests.request_factor,
                                ideal=ik["calls_before"] / ik["calls_after"],
                                note=f"{requests.calls['before']} vs {requests.fanout} "
                                     f"(+1 BFF hop); {requests.calls['after (warm)']} on a hit"),
        claim("latency").judge(latency.speedup("after (cold)"),
                               ideal=lk["latency_before_ms"] / lk["latency_after_cold_ms"],
                               note=f"before {latency.estimate('before').fmt('.0f')}, after "
                                    f"{latency.estimate('after (cold)').fmt('.0f')} cold, "
                                    f"{latency.estimate('after (warm)').fmt('.1f')} on a hit"),
        claim("failure").judge(_factor(before_fail, cached.failure), ideal=failure_ideal,
                               note=f"before {before_fail.fmt('.3f')}, after "
                                    f"{cold_fail.fmt('.3f')} cold and "
                                    f"{cached.failure.fmt('.3f')} with the cache "
                                    f"({cached.hit_rate.value:.0%} hits)"),
        claim("network").judge(requests.wire_factor,
                               note=f"{wire.loc['before', 'wire bytes']:,} vs "
                                    f"{wire.loc['after (cold)', 'wire bytes']:,} bytes"),
        claim("hit_rate").judge(hits.hit_rate, ideal=hits.ideal_run,
                                note=f"Zipf s = {hits.skew}, {hits.rate:g} requests/s for "
                                     f"{hits.seconds:g} s, TTL {hits.knobs.ttl_s:g} s, "
                                     f"{hits.knobs.users:,} users"),
    ]


# -- the audit: a small, fast run of every experiment behind the claims ---------------------------
AUDIT_KNOBS = Knobs(n_posts=10, n_friends=10, latency_ms=20.0)


@dataclass
class Results:
    """Everything one run of the chapter's experiments measured (what :func:`findings` takes)."""
    requests: Requests
    latency: Latencies
    failures: Failures
    hits: CacheRun
    cached: CacheRun
    extra: dict = field(default_factory=dict)

    def findings(self) -> list[Finding]:
        return findings(requests=self.requests, latency=self.latency, failures=self.failures,
                        hits=self.hits, cached=self.cached)


async def run_all(knobs=None, *, pages: int = 4, trials: int = 3, failure_pages: int = 200,
                  ps=(CLAIM_P,)) -> Results:
    """The experiments behind every claim, at the sizes given (the audit's by default)."""
    k = as_knobs(knobs)
    if not isinstance(ps, (list, tuple)) or CLAIM_P not in ps:
        raise ValueError(f"ps must include CLAIM_P = {CLAIM_P}; got {ps!r}")
    return Results(
        await requests_per_page(k),
        await latency(k, pages=pages, trials=trials),
        await failure_rate(k, ps=ps, pages=failure_pages),
        await cache_run(replace(k, p=0.0)),
        await cache_run(replace(k, p=CLAIM_P)))


async def audit(knobs=None) -> list[Finding]:
    """Every claim judged from a small run (about 15 s): for chapter 7, which lists every claim."""
    return (await run_all(AUDIT_KNOBS if knobs is None else as_knobs(knobs))).findings()


# -- static explorer data: the experiment over a small grid of knobs ------------------------------
SWEEP_DESIGNS = ("before", "after", "dataloader")


async def sweep(*, ns=(0, 2, 5, 10, 20), latencies_ms=(20.0, 50.0), pages: int = 3,
                base=None) -> pd.DataFrame:
    """Each design over a grid of N = M (``ns``) and per-call delay (``latencies_ms``).

    One row per grid point and design: the knobs, the requests behind one page (counted from
    the trace; "after" pages are cold), the median page time of ``pages`` interleaved pages, and
    the ideal time. Built at book-build time so readers of the static site can move the knobs
    without a kernel (about 20 s with the defaults).
    """
    base = as_knobs(base)
    for name, values, high in (("ns", ns, MAX_ITEMS), ("latencies_ms", latencies_ms, 200.0)):
        if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= 8:
            raise ValueError(f"{name} must be a list of 1 to 8 values; got {values!r}")
        for x in values:
            v.number(name, x, low=0, high=high, integer=name == "ns")
    pages = v.number("pages", pages, low=1, high=10, integer=True)
    rows = []
    for lat in latencies_ms:
        for n in ns:
            k = replace(base, n_posts=int(n), n_friends=int(n), latency_ms=float(lat),
                        jitter_ms=0.0, p=0.0)
            ik = ideal(k)
            want = {"before": ik["latency_before_ms"], "after": ik["latency_after_cold_ms"],
                    "dataloader": ik["latency_dataloader_ms"]}
            times: dict[str, list[float]] = {name: [] for name in SWEEP_DESIGNS}
            calls: dict[str, int] = {}
            ds = {name: design(name, k) for name in SWEEP_DESIGNS}
            async with ds["before"], ds["after"], ds["dataloader"]:
                for uid in range(pages):
                    for name in SWEEP_DESIGNS:     # interleaved, page by page
                        t0 = now()
                        await get_page(ds[name], uid, trace_id=f"s{uid}")
                        times[name].append((now() - t0) * 1000)
                        calls[name] = sum(c for who, c in calls_behind(
                            ds[name], f"s{uid}").items() if who != CLIENT)
            for name in SWEEP_DESIGNS:
                rows.append({"n_posts": k.n_posts, "n_friends": k.n_friends,
                             "latency_ms": k.latency_ms, "design": name,
                             "requests": calls[name],
                             "median_ms": float(pd.Series(times[name]).median()),
                             "ideal_ms": want[name], "pages": pages})
    return pd.DataFrame(rows)
