"""Chapter 2, Chatty APIs: a profile page built with 1 + N + M serial calls, and its fix.

* **Before**: the gateway fetches the user, then each of the user's N posts, then each of the
  M friends, one call after another (the N+1 pattern, twice).
* **After**: a backend for frontend (BFF) with a TTL response cache, in front of a composite
  service that makes three calls in parallel: the user, a batch of posts, a batch of friends.

Both designs serve exactly the same page for the same user (a test checks it), so the only
difference measured is the shape of the calls. The data services answer after ``latency_ms``
(± ``jitter_ms``) and fail with probability ``p`` per call; a batch call costs one round trip,
the same as a single item (an assumption the chapter states: batch size barely matters while
items are small and the database is indexed).
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from toylib.core import validate as v
from toylib.resilience.batcher import Batcher
from toylib.resilience.cache import TTLCache
from toylib.core.faults import Error, Latency
from toylib.core.services import Service, Store, Topology, gather_or_cancel


@dataclass(frozen=True)
class Knobs:
    """The chapter's knobs, validated once."""
    n_posts: int = 10
    n_friends: int = 10
    latency_ms: float = 20.0
    jitter_ms: float = 0.0
    p: float = 0.0
    ttl_s: float = 300.0
    users: int = 1000
    seed: int = 0

    def __post_init__(self):
        v.number("n_posts", self.n_posts, low=0, high=200, integer=True)
        v.number("n_friends", self.n_friends, low=0, high=200, integer=True)
        v.number("latency_ms", self.latency_ms, low=0, high=5000)
        v.number("jitter_ms", self.jitter_ms, low=0, high=self.latency_ms)
        v.probability("p", self.p)
        v.positive("ttl_s", self.ttl_s)
        v.positive("users", self.users, integer=True)
        v.number("seed", self.seed, integer=True)


# -- the data, identical in both designs ------------------------------------------------------
def user_record(uid: int, k: Knobs) -> dict:
    rng = random.Random(uid)
    return {"id": uid, "name": f"user{uid}", "bio": "x" * rng.randint(40, 120),
            "post_ids": [uid * 1000 + j for j in range(k.n_posts)],
            "friend_ids": [(uid * 7919 + 13 * j + 1) % k.users for j in range(k.n_friends)]}


def post_record(pid: int) -> dict:
    rng = random.Random(pid)
    return {"id": pid, "author": pid // 1000, "title": f"post {pid}",
            "body": "lorem ipsum " * rng.randint(5, 20)}


def friend_summary(user: dict) -> dict:
    return {"id": user["id"], "name": user["name"]}


def data_services(k: Knobs) -> tuple[Service, Service]:
    """The user service and the post service, each with single and batch endpoints."""
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


def _inject(k: Knobs, *services: Service) -> None:
    for s in services:
        s.faults.clear()
        if k.latency_ms:
            s.faults.add(Latency(k.latency_ms, k.jitter_ms))
        if k.p:
            s.faults.add(Error(k.p, 503))


# -- before: the chatty gateway ----------------------------------------------------------------
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


def before(k: Knobs | None = None) -> Topology:
    k = k or Knobs()
    users, posts = data_services(k)
    _inject(k, users, posts)
    return Topology(chatty_gateway(), users, posts,
                    Store("user_db", label="User DB"), Store("post_db", label="Post DB"),
                    name="chatty: before", seed=k.seed)


# -- after: BFF + cache + composite with parallel batch calls ----------------------------------
def composite_service(k: Knobs) -> Service:
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
    bff = Service("bff", "edge", label="Backend for Frontend", uses=("cache", "composite"))

    @bff.get("/profile/{id}")
    async def profile(request):
        uid = int(request.match_info["id"])
        page = cache.get(uid)
        if page is None:                                  # a miss: one call does the work
            page = await bff.call("composite", "GET", f"/complete-profile/{uid}")
            cache.put(uid, page)
        return page

    return bff


def after(k: Knobs | None = None, cache: TTLCache | None = None) -> Topology:
    k = k or Knobs()
    cache = cache if cache is not None else TTLCache(k.ttl_s)   # an empty cache is falsy
    users, posts = data_services(k)
    _inject(k, users, posts)
    topo = Topology(bff_service(cache), composite_service(k), users, posts,
                    Store("cache", "edge", label="Response Cache (TTL)"),
                    Store("user_db", label="User DB"), Store("post_db", label="Post DB"),
                    name="chatty: after", seed=k.seed)
    topo.cache = cache
    return topo


# -- the general fix: a DataLoader in the gateway ----------------------------------------------
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


def with_dataloader(k: Knobs | None = None) -> Topology:
    k = k or Knobs()
    users, posts = data_services(k)
    _inject(k, users, posts)
    # The stores too: the services' ``uses`` name them, so the diagram needs them in a plane.
    return Topology(batching_gateway(), users, posts,
                    Store("user_db", label="User DB"), Store("post_db", label="Post DB"),
                    name="chatty: dataloader", seed=k.seed)


# -- the analytic figures the chapter puts beside its measurements ------------------------------
def ideal(k: Knobs) -> dict:
    """Ideal latency (ms) and success probability of one page, from the knobs alone."""
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


def zipf_users(n: int, users: int, s: float, seed: int = 0) -> list[int]:
    """``n`` user ids drawn with Zipf popularity (user 0 the most popular), exponent ``s``."""
    v.positive("n", n, integer=True)
    v.positive("users", users, integer=True)
    v.number("s", s, low=0, high=5)
    weights = zipf_weights(users, s)
    return random.Random(seed).choices(range(users), weights=weights, k=n)


def zipf_weights(users: int, s: float) -> list[float]:
    total = sum(1 / (r ** s) for r in range(1, users + 1))
    return [(1 / (r ** s)) / total for r in range(1, users + 1)]
