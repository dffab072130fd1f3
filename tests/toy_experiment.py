"""A chapter-sized experiment built from the core alone, for the resource and memory tests.

The N+1 profile page of chapter 2 (a gateway asking users and posts one call at a time), so
the tests exercise what a chapter does (topology, calls between services, traces, faults)
without depending on a chapter module that its authors are free to reshape. Each service
holds a table (``table_kb`` of data), as a chapter's services hold their users and posts, so
a run that stays reachable after its block is visible in a memory measurement.
"""
from __future__ import annotations

from toylib import Latency, Service, Topology


def profile_topology(*, n_posts: int = 3, n_friends: int = 3, latency_ms: float = 0.0,
                     seed: int = 0, table_kb: int = 256) -> Topology:
    users, posts, gateway = Service("users"), Service("posts"), Service("gateway", "edge")
    table = {"rows": [bytes(1024) for _ in range(table_kb)]}      # the service's data

    @users.get("/users/{id}")
    async def user(request):
        uid = int(request.match_info["id"])
        return {"id": uid, "friends": [uid + 1 + f for f in range(n_friends)],
                "posts": [uid * 100 + p for p in range(n_posts)], "rows": len(table["rows"])}

    @posts.get("/posts/{id}")
    async def post(request):
        return {"id": int(request.match_info["id"]), "rows": len(table["rows"])}

    @gateway.get("/profile/{id}")
    async def profile(request):
        u = await gateway.call("users", "GET", f"/users/{request.match_info['id']}")
        ps = [await gateway.call("posts", "GET", f"/posts/{p}") for p in u["posts"]]
        fs = [await gateway.call("users", "GET", f"/users/{f}") for f in u["friends"]]
        return {"user": u["id"], "posts": len(ps), "friends": len(fs)}

    if latency_ms:
        for svc in (users, posts):
            svc.faults.add(Latency(latency_ms))
    return Topology(gateway, users, posts, name="profile", seed=seed)


async def profile_experiment(seed: int = 0, pages: int = 3, **kw) -> int:
    """Build, serve ``pages`` pages, leave the block; return the number of calls traced."""
    async with profile_topology(seed=seed, **kw) as topo:
        for uid in range(pages):
            page = await topo.call("gateway", "GET", f"/profile/{uid}")
            assert page["user"] == uid
        return len(topo.tracer)
