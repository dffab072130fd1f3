"""Lab 2, Chatty APIs: make a profile page cost at most 3 requests, with the same data.

The reader writes three things (see labs/ch02_chatty_lab.ipynb):

* ``Loader(batch_fn)``: a DataLoader. ``await loader.load(key)`` returns the value for ``key``;
  every ``load`` made in the same event-loop tick becomes ONE ``await batch_fn(keys)`` call,
  keys without duplicates; ``batch_fn`` returns values in key order. A failed batch fails every
  waiter and is not remembered (the next ``load`` of those keys tries again).
* ``posts_batch(request)``: the handler of ``GET /posts/batch?ids=3,1,2`` on the post service,
  returning the posts in the order of ``ids`` (use ``chatty.post_record(id)``).
* ``profile(gateway, uid, Loader)``: builds the same page as the chatty gateway
  (:func:`toylib.chapters.ch02_chatty.chatty_gateway`) with at most 3 requests, calling the user service's
  ``/users/{id}`` and ``/users/batch?ids=...`` and the post service's ``/posts/batch?ids=...``
  through ``gateway.call``.

``check`` counts requests from the topology's trace, not from the solution, and compares pages
with the ones the chatty design serves.
"""
from __future__ import annotations

import asyncio
import random

from toylib.chapters import ch02_chatty as chatty
from toylib.labs.grading import Case, Report, grade
from toylib.core.services import Service, Topology

LAB = "Lab 2 (chatty APIs)"
MAX_REQUESTS = 3


def _cases() -> list[Case]:
    cases = []
    for size, seed in [(1, 1), (3, 2), (8, 3), (20, 4)]:
        cases.append(Case(f"loader-{size}", size, seed, {"part": "loader", "keys": size}))
    cases.append(Case("loader-failure", 2, 5, {"part": "loader-failure"}))
    for size, seed in [(1, 6), (5, 7), (12, 8)]:
        cases.append(Case(f"batch-endpoint-{size}", size, seed, {"part": "endpoint", "ids": size}))
    for n, m, seed in [(0, 0, 9), (1, 1, 10), (3, 5, 11), (10, 10, 12), (25, 15, 13)]:
        cases.append(Case(f"page-N{n}-M{m}", n + m + 1, seed,
                          {"part": "page", "n_posts": n, "n_friends": m}))
    return cases


CASES = _cases()


async def _loader_case(Loader, case: Case) -> None:
    rng = random.Random(case.seed)
    calls: list[list] = []

    async def batch_fn(keys):
        calls.append(list(keys))
        await asyncio.sleep(0.001)
        return [f"value-{k}" for k in keys]

    loader = Loader(batch_fn)
    keys = [rng.randint(0, max(1, case.params["keys"] // 2)) for _ in range(case.params["keys"])]
    values = await asyncio.gather(*(loader.load(k) for k in keys))
    assert list(values) == [f"value-{k}" for k in keys], (
        f"load(k) must return the value batch_fn gave for k: keys {keys} gave {list(values)}")
    assert len(calls) == 1, (f"{len(keys)} loads in one tick must make 1 batch call; "
                             f"made {len(calls)}: {calls}")
    assert sorted(calls[0]) == sorted(set(keys)) and len(calls[0]) == len(set(keys)), (
        f"the batch must hold each requested key once: asked {keys}, batch_fn got {calls[0]}")


async def _loader_failure_case(Loader, case: Case) -> None:
    attempts = []

    async def flaky(keys):
        attempts.append(list(keys))
        if len(attempts) == 1:
            raise RuntimeError("backend down")
        return [k * 10 for k in keys]

    loader = Loader(flaky)
    results = await asyncio.gather(loader.load(1), loader.load(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), (
        f"when batch_fn raises, every waiter must get its error; got {results}")
    again = await asyncio.gather(loader.load(1), loader.load(2))
    assert list(again) == [10, 20] and len(attempts) == 2, (
        "a failed batch must not be remembered: loading the same keys again must call "
        f"batch_fn again (calls: {attempts}, results: {list(again)})")


def _lab_topology(k: chatty.Knobs, posts_batch, profile, Loader) -> Topology:
    users, _ = chatty.data_services(k)     # /users/{id}, /users/batch, /friends/batch
    posts = Service("posts", label="Post Service")

    @posts.get(r"/posts/{id:\d+}")
    async def get_post(request):
        return chatty.post_record(int(request.match_info["id"]))

    posts.get("/posts/batch")(posts_batch)          # the reader's handler
    gateway = Service("gateway", "edge", uses=("users", "posts"))

    @gateway.get("/profile/{id}")
    async def page(request):
        return await profile(gateway, int(request.match_info["id"]), Loader)

    return Topology(gateway, users, posts, seed=k.seed)


async def _endpoint_case(posts_batch, case: Case) -> None:
    rng = random.Random(case.seed)
    ids = [rng.randrange(1, 10**6) for _ in range(case.params["ids"])]
    ids += ids[:1]                                  # a duplicate id: answered twice, in place
    k = chatty.Knobs(latency_ms=0)

    async def unused(*a):
        raise AssertionError("not used by this case")
    async with _lab_topology(k, posts_batch, unused, None) as topo:
        got = await topo.call("posts", "GET", "/posts/batch",
                              params={"ids": ",".join(map(str, ids))})
    want = [chatty.post_record(i) for i in ids]
    assert got == want, (f"GET /posts/batch?ids={','.join(map(str, ids))} must return the "
                         f"posts in the order of ids; first difference at position "
                         f"{next((i for i, (a, b) in enumerate(zip(got or [], want)) if a != b), len(got or []))}")


async def _page_case(solution: dict, case: Case) -> None:
    k = chatty.Knobs(n_posts=case.params["n_posts"], n_friends=case.params["n_friends"],
                     latency_ms=2, seed=case.seed)
    uid = random.Random(case.seed).randrange(k.users)
    async with chatty.design("before", k) as ref:
        want = await chatty.get_page(ref, uid)
    async with _lab_topology(k, solution["posts_batch"], solution["profile"],
                             solution["Loader"]) as topo:
        got = await topo.call("gateway", "GET", f"/profile/{uid}")
        spans = topo.tracer.df()
    inner = spans[spans.caller != "client"]
    assert got == want, (f"the page for user {uid} differs from the chatty gateway's "
                         f"(keys {sorted(want)}); compare posts and friends in order")
    assert len(inner) <= MAX_REQUESTS, (
        f"the page took {len(inner)} requests; at most {MAX_REQUESTS} are allowed: "
        f"{inner.groupby(['callee', 'route']).size().to_dict()}")


async def _run(solution: dict, case: Case) -> None:
    part = case.params["part"]
    if part == "loader":
        await _loader_case(solution["Loader"], case)
    elif part == "loader-failure":
        await _loader_failure_case(solution["Loader"], case)
    elif part == "endpoint":
        await _endpoint_case(solution["posts_batch"], case)
    else:
        await _page_case(solution, case)


async def check(*, Loader, posts_batch, profile, only: str | None = None,
                stop_after: int | None = None) -> Report:
    """Grade a solution: ``await check(Loader=..., posts_batch=..., profile=...)``.

    ``only`` replays one case by name; ``stop_after=1`` stops at the smallest failing case.
    """
    if not callable(Loader):
        raise TypeError(f"Loader must be a class taking batch_fn; got {Loader!r}")
    for name, fn in (("posts_batch", posts_batch), ("profile", profile)):
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"{name} must be an async function; got {fn!r}")
    solution = {"Loader": Loader, "posts_batch": posts_batch, "profile": profile}
    return await grade(LAB, CASES, _run, solution, only=only, stop_after=stop_after)
