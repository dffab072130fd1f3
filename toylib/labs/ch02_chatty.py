"""Lab 2, Chatty APIs: make a profile page cost at most 3 requests, with the same data.

The reader writes three things (see labs/ch02_chatty_lab.ipynb):

* ``Loader(batch_fn)``: a DataLoader. ``await loader.load(key)`` returns the value for ``key``;
  every ``load`` made in the same event-loop tick becomes ONE ``await batch_fn(keys)`` call,
  keys without duplicates; ``batch_fn`` returns values in key order. A failed batch fails every
  waiter and is not remembered (the next ``load`` of those keys tries again).
* ``posts_batch(request)``: the handler of ``GET /posts/batch?ids=3,1,2`` on the post service,
  returning the posts in the order of ``ids`` (use ``chatty.post_record(id)``).
* ``profile(gateway, uid, Loader)``: builds the same page as the chatty gateway
  (:func:`toylib.chapters.ch02_chatty.chatty_gateway`) with at most 3 requests, calling the
  user service's ``/users/{id}`` and ``/users/batch?ids=...`` and the post service's
  ``/posts/batch?ids=...`` through ``gateway.call``.

``check`` grades from what the services recorded, never from the solution's own account: it
counts requests per page from the topology's trace, compares every page with the one computed
from the data (and, for unchanged data, the one the chatty design serves), and tries the
classes of input a real deployment has:

* **concurrency**: loads arriving while a batch is in flight, and concurrent pages on one
  gateway (each page's requests must be its own: a loader shared between requests mixes them);
* **sizes** from 0 to well past a page's usual size (a loader that splits or an endpoint that
  truncates fails);
* **data that changes between requests** (a user renamed: a cache that never expires fails);
* **generated cases**: Hypothesis draws load schedules and id lists from a printed seed and
  shrinks a failure to the smallest example before it is reported.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
import hypothesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from toylib.chapters import ch02_chatty as chatty
from toylib.core.services import CLIENT, Service, Topology
from toylib.labs.grading import Case, CaseFailed, Report, TooBusy, grade, shrink, window

LAB = "Lab 2 (chatty APIs)"
MAX_REQUESTS = 3
BIG = 300                  # keys or ids in the big cases: past any batch size a solution might pick
GENERATED_BUDGET_S = 4.0   # time a generated case may spend searching and shrinking
CHECK_TIMEOUT_S = 15.0     # per case (the generated ones need the most)
LOST_AFTER_S = 3.0         # a load still unanswered this long after its tick was lost


def _cases() -> list[Case]:
    cases = []
    for size, seed in [(1, 1), (3, 2), (8, 3), (20, 4)]:
        cases.append(Case(f"loader-{size}", size, seed, {"part": "loader", "keys": size}))
    cases.append(Case("loader-failure", 2, 5, {"part": "loader-failure"}))
    cases.append(Case("loader-in-flight", 6, 14, {"part": "loader-in-flight"}))
    cases.append(Case(f"loader-{BIG}", BIG, 15, {"part": "loader", "keys": BIG, "distinct": True}))
    for size, seed in [(0, 16), (1, 6), (5, 7), (12, 8), (BIG, 17)]:
        cases.append(Case(f"batch-endpoint-{size}", size, seed, {"part": "endpoint", "ids": size}))
    for n, m, seed in [(0, 0, 9), (1, 1, 10), (3, 5, 11), (10, 10, 12), (25, 15, 13),
                       (200, 200, 18)]:
        cases.append(Case(f"page-N{n}-M{m}", n + m + 1, seed,
                          {"part": "page", "n_posts": n, "n_friends": m}))
    cases.append(Case("pages-concurrent", 60, 19, {"part": "concurrent", "pages": 8}))
    cases.append(Case("page-data-changes", 40, 20, {"part": "changes"}))
    cases.append(Case("generated-loader", 500, 21, {"part": "generated-loader"}))
    cases.append(Case("generated-endpoint", 501, 22, {"part": "generated-endpoint"}))
    return cases


CASES = _cases()


# -- the loader ----------------------------------------------------------------------------------
async def _loader_run(Loader, ticks: list[list[int]], flight_s: float = 0.01,
                      lost_after_s: float = LOST_AFTER_S) -> dict:
    """Load ``ticks[0]`` in one tick, then ``ticks[1]`` while that batch is in flight, ...

    Returns the history: every load (tick, key, expected, actual) and every batch call."""
    calls: list[list] = []

    async def batch_fn(keys):
        calls.append(list(keys))
        await asyncio.sleep(flight_s)          # in flight while the next tick loads
        return [f"value-{k}" for k in keys]

    loader = Loader(batch_fn)
    loads = []
    for t, keys in enumerate(ticks):
        loads += [(t, k, loader.load(k)) for k in keys]
        await asyncio.sleep(flight_s / 4)      # the next tick, while the batch is in flight
    futs = [f for _, _, f in loads]
    if futs:      # generous: a busy machine must not make a correct loader look like a loser
        await asyncio.wait(futs, timeout=lost_after_s + flight_s * len(ticks))
    rows = []
    for t, k, f in loads:
        got = ("(never answered)" if not f.done() else
               f"error {type(f.exception()).__name__}" if f.exception() else f.result())
        rows.append({"tick": t, "load": k, "expected": f"value-{k}", "actual": got})
    return {"rows": rows, "calls": calls}


def _loader_problem(ticks: list[list[int]], run: dict) -> tuple[str, int] | None:
    """What is wrong with a loader's history (message, row to mark), or None."""
    rows, calls = run["rows"], run["calls"]
    for i, r in enumerate(rows):
        if r["actual"] != r["expected"]:
            how = ("was never answered: a load made while a batch was in flight was lost"
                   if r["actual"] == "(never answered)" else f"gave {r['actual']!r}")
            return f"load({r['load']}) in tick {r['tick']} {how}", i
    busy_ticks = sum(1 for keys in ticks if keys)
    if len(calls) > busy_ticks:
        return (f"{busy_ticks} tick(s) of loads made {len(calls)} batch calls: every tick's "
                f"loads must go in ONE call (sizes {[len(c) for c in calls]})"), len(rows) - 1
    for c in calls:
        if len(c) != len(set(c)):
            return f"a batch call repeated a key: {sorted(c)[:12]}...", len(rows) - 1
    return None


def _loader_report(ticks, run, problem) -> CaseFailed:
    message, at = problem
    rows = run["rows"] or [{"tick": "-", "load": "-", "expected": "-", "actual": "-"}]
    calls = "\n".join(f"  batch call {i + 1}: {len(c)} key(s) {c[:10]}{' ...' if len(c) > 10 else ''}"
                      for i, c in enumerate(run["calls"])) or "  (no batch call)"
    detail = (f"loads per tick: {[len(t) for t in ticks]}\n"
              f"{window(rows, min(at, len(rows) - 1))}\nbatch calls made:\n{calls}")
    return CaseFailed(message, detail=detail)


async def _loader_case(Loader, case: Case) -> None:
    rng = random.Random(case.seed)
    n = case.params["keys"]
    keys = (rng.sample(range(10 * n), n) if case.params.get("distinct")
            else [rng.randint(0, max(1, n // 2)) for _ in range(n)])
    ticks = [keys]
    run = await _loader_run(Loader, ticks)
    problem = _loader_problem(ticks, run)
    if problem:
        raise _loader_report(ticks, run, problem)


async def _loader_in_flight_case(Loader, case: Case) -> None:
    ticks = [[1, 2, 3], [4, 5, 1], [6]]        # tick 2 and 3 arrive while tick 1 is in flight
    run = await _loader_run(Loader, ticks, flight_s=0.05)
    problem = _loader_problem(ticks, run)
    if problem:
        raise _loader_report(ticks, run, problem)


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


# -- the services the solution runs in -----------------------------------------------------------
class Data:
    """The users the lab's user service serves; ``renamed`` changes a user between requests."""

    def __init__(self, k: chatty.Knobs):
        self.k = k
        self.renamed: dict[int, str] = {}

    def user(self, uid: int) -> dict:
        u = chatty.user_record(uid, self.k)
        if uid in self.renamed:
            u["name"] = self.renamed[uid]
        return u

    def page(self, uid: int) -> dict:
        """The page the chatty gateway would serve for ``uid`` from this data."""
        u = self.user(uid)
        return {"user": chatty.friend_summary(u), "bio": u["bio"],
                "posts": [chatty.post_record(p) for p in u["post_ids"]],
                "friends": [chatty.friend_summary(self.user(f)) for f in u["friend_ids"]]}


def _lab_topology(data: Data, posts_batch, profile, Loader) -> Topology:
    users = Service("users", label="User Service")

    @users.get(r"/users/{id:\d+}")
    async def get_user(request):
        return data.user(int(request.match_info["id"]))

    @users.get("/users/batch")
    async def users_batch(request):
        return [data.user(int(i)) for i in request.query["ids"].split(",") if i]

    posts = Service("posts", label="Post Service")

    @posts.get(r"/posts/{id:\d+}")
    async def get_post(request):
        return chatty.post_record(int(request.match_info["id"]))

    posts.get("/posts/batch")(posts_batch)          # the reader's handler
    gateway = Service("gateway", "edge", uses=("users", "posts"))

    @gateway.get("/profile/{id}")
    async def page(request):
        return await profile(gateway, int(request.match_info["id"]), Loader)

    return Topology(gateway, users, posts, seed=data.k.seed)


def _first_difference(want, got, path="page") -> tuple[str, object, object] | None:
    if isinstance(want, dict) and isinstance(got, dict):
        for key in list(want) + [k for k in got if k not in want]:
            if key not in got or key not in want:
                return f"{path}[{key!r}]", want.get(key, "(missing)"), got.get(key, "(missing)")
            d = _first_difference(want[key], got[key], f"{path}[{key!r}]")
            if d:
                return d
        return None
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got)):
            d = _first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        if len(want) != len(got):
            return f"len({path})", len(want), len(got)
        return None
    return None if want == got else (path, want, got)


def _page_failure(uid: int, want: dict, got, why: str = "") -> CaseFailed:
    d = _first_difference(want, got) if isinstance(got, dict) else ("page", "a dict", got)
    where, a, b = d
    short = lambda x: (s := repr(x)) if len(s := repr(x)) <= 70 else s[:67] + "..."
    rows = [{"field": where, "expected": short(a), "actual": short(b)}]
    return CaseFailed(f"the page for user {uid} differs from the expected page{why}: first at "
                      f"{where}", detail=window(rows, 0))


def _check_requests(spans, trace_id: str, uid: int) -> None:
    mine = spans[(spans.trace_id == trace_id) & (spans.caller != CLIENT)]
    if len(mine) > MAX_REQUESTS:
        rows = [{"request": i + 1, "callee": r.callee, "route": r.route,
                 "allowed": "yes" if i < MAX_REQUESTS else "NO"}
                for i, r in enumerate(mine.itertuples())]
        raise CaseFailed(f"the page for user {uid} took {len(mine)} requests; at most "
                         f"{MAX_REQUESTS} are allowed", detail=window(rows, MAX_REQUESTS, after=3))


async def _get_page(topo, uid, trace_id):
    return await topo.call("gateway", "GET", f"/profile/{uid}", trace_id=trace_id)


async def _page_case(solution: dict, case: Case) -> None:
    k = chatty.Knobs(n_posts=case.params["n_posts"], n_friends=case.params["n_friends"],
                     latency_ms=2, seed=case.seed)
    uid = random.Random(case.seed).randrange(k.users)
    data = Data(k)
    if k.n_posts + k.n_friends <= 50:       # the chatty design agrees with the data (the big
        async with chatty.design("before", k) as ref:      # page would take 401 serial calls)
            assert await chatty.get_page(ref, uid) == data.page(uid), "grader error: data differs"
    async with _lab_topology(data, solution["posts_batch"], solution["profile"],
                             solution["Loader"]) as topo:
        got = await _get_page(topo, uid, "page")
        spans = topo.tracer.df()
    if got != data.page(uid):
        raise _page_failure(uid, data.page(uid), got)
    _check_requests(spans, "page", uid)


async def _concurrent_case(solution: dict, case: Case) -> None:
    """Several pages at once on one gateway: each right, each with its own requests."""
    k = chatty.Knobs(n_posts=4, n_friends=4, latency_ms=5, seed=case.seed)
    uids = random.Random(case.seed).sample(range(k.users), case.params["pages"])
    data = Data(k)
    async with _lab_topology(data, solution["posts_batch"], solution["profile"],
                             solution["Loader"]) as topo:
        got = await asyncio.gather(*(_get_page(topo, u, f"page{u}") for u in uids))
        spans = topo.tracer.df()
    for u, page in zip(uids, got):
        if page != data.page(u):
            raise _page_failure(u, data.page(u), page, f" when {len(uids)} pages ran at once")
        _check_requests(spans, f"page{u}", u)
        mine = spans[(spans.trace_id == f"page{u}") & (spans.caller != CLIENT)]
        routes = sorted(set(mine.route))
        if routes != ["/posts/batch", "/users/batch", "/users/{id}"]:
            rows = [{"page": f"user {x}", "requests under its trace": ", ".join(
                sorted(spans[(spans.trace_id == f"page{x}") & (spans.caller != CLIENT)].route))}
                for x in uids]
            raise CaseFailed(
                f"the page for user {u} did not make its own requests when {len(uids)} pages ran "
                f"at once (routes under its trace: {routes}): a loader shared between requests "
                f"mixes one page's keys into another's request; make the loaders per page",
                detail=window(rows, uids.index(u)))


async def _changes_case(solution: dict, case: Case) -> None:
    """A user's friends are renamed between two requests: the second page must show it."""
    k = chatty.Knobs(n_posts=2, n_friends=3, latency_ms=2, seed=case.seed)
    uid = random.Random(case.seed).randrange(k.users)
    data = Data(k)
    async with _lab_topology(data, solution["posts_batch"], solution["profile"],
                             solution["Loader"]) as topo:
        first = await _get_page(topo, uid, "first")
        if first != data.page(uid):
            raise _page_failure(uid, data.page(uid), first)
        for f in [uid] + chatty.user_record(uid, k)["friend_ids"]:
            data.renamed[f] = f"renamed{f}"
        second = await _get_page(topo, uid, "second")
    if second != data.page(uid):
        raise _page_failure(uid, data.page(uid), second,
                            " after the user and their friends were renamed (a cache that "
                            "never expires serves the old names)")


async def _endpoint_run(posts_batch, ids: list[int]) -> tuple[list, list]:
    data = Data(chatty.Knobs(latency_ms=0))

    async def unused(*a):
        raise AssertionError("not used by this case")
    async with _lab_topology(data, posts_batch, unused, None) as topo:
        got = await topo.call("posts", "GET", "/posts/batch",
                              params={"ids": ",".join(map(str, ids))})
    return [chatty.post_record(i) for i in ids], got


def _endpoint_failure(ids, want, got) -> CaseFailed | None:
    if got == want:
        return None
    got = got if isinstance(got, list) else []
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    rows = [{"position": i, "id asked": ids[i] if i < len(ids) else "-",
             "expected id": want[i]["id"] if i < len(want) else "(none)",
             "actual id": got[i].get("id") if i < len(got) and isinstance(got[i], dict)
             else "(none)"} for i in range(max(len(want), len(got)))]
    return CaseFailed(f"GET /posts/batch with {len(ids)} ids must return {len(want)} posts in the "
                      f"order of ids (a repeated id answered again); it returned {len(got)}, "
                      f"first difference at position {at}",
                      detail=window(rows or [{"position": "-"}], min(at, max(0, len(rows) - 1))))


async def _endpoint_case(posts_batch, case: Case) -> None:
    rng = random.Random(case.seed)
    ids = [rng.randrange(1, 10**6) for _ in range(case.params["ids"])]
    ids += ids[:1]                                  # a duplicate id: answered twice, in place
    want, got = await _endpoint_run(posts_batch, ids)
    problem = _endpoint_failure(ids, want, got)
    if problem:
        raise problem


# -- generated cases: Hypothesis draws, runs and shrinks -------------------------------------------
def _search(strategy, fails, seed: int, max_examples: int, simpler=None):
    """A failing example, generated by Hypothesis from ``seed`` and shrunk, or None.

    Hypothesis draws up to ``max_examples`` examples (its generation phase, from the seed);
    the first that fails is shrunk by :func:`toylib.labs.grading.shrink` (delta debugging over
    its steps, ``simpler`` for each step). Runs in a worker thread (each example runs its own
    event loop) and is bounded in time: past GENERATED_BUDGET_S no example counts as failing,
    so generation and shrinking stop, and the smallest failure found so far is returned.
    """
    end = time.monotonic() + GENERATED_BUDGET_S
    found: list = []
    tried = [0]

    def in_time(example) -> bool:
        return time.monotonic() < end and bool(fails(example))

    # Failures are recorded, never raised to Hypothesis: it only draws the examples.
    @hypothesis.seed(seed)
    @settings(max_examples=max_examples, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def explore(example):
        if not found and time.monotonic() < end:
            tried[0] += 1
            if fails(example):
                found.append(example)
    explore()
    if not found:
        # A search the budget cut short proves nothing: the case is not graded, never passed.
        return None if tried[0] >= max_examples else TOO_BUSY
    found = found[0]
    end = max(end, time.monotonic() + 1.0)       # the shrink has at least a second
    return shrink(found, in_time, simpler=simpler, max_tries=2000)


async def _in_thread(fn, *args):
    """``fn(*args)`` in a daemon thread; a cancelled check does not wait for the thread, which
    stops by itself soon after GENERATED_BUDGET_S. A thread that has not answered well after
    the budget means the machine is too busy to grade the case (not graded, never failed)."""
    try:
        async with asyncio.timeout(GENERATED_BUDGET_S + 6.0):
            return await _thread_result(fn, *args)
    except TimeoutError:
        raise TooBusy("the generated examples did not finish in time") from None


async def _thread_result(fn, *args):
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def run():
        try:
            result = fn(*args)
        except BaseException as e:     # handed to the waiting check, if it still waits
            _answer(loop, fut, lambda err=e: fut.set_exception(err))   # e is unbound after except
        else:
            _answer(loop, fut, lambda: fut.set_result(result))
    threading.Thread(target=run, name="lab2-hypothesis", daemon=True).start()
    return await fut


TOO_BUSY = object()     # _search ran out of time before trying every example


class _Slow(Exception):
    """An example ran out of time: the machine may be busy, so it does not count as failing."""


def _answer(loop, fut, set_it) -> None:
    try:
        loop.call_soon_threadsafe(lambda: fut.done() or set_it())
    except RuntimeError:           # the check's loop has closed: nobody waits any more
        pass


def _run_in_new_loop(coro_fn, *args):
    async def bounded():
        try:
            async with asyncio.timeout(LOST_AFTER_S + 2.0):
                return await coro_fn(*args)
        except TimeoutError:
            raise _Slow from None
    return asyncio.run(bounded())


def _simpler_tick(keys: list) -> list:
    """Smaller versions of one tick's loads, for the shrinker."""
    out = [keys[: len(keys) // 2], keys[1:]] if keys else []
    return [k for k in out if k != keys]


async def _generated_loader_case(Loader, case: Case) -> None:
    # up to 8 ticks: a batch is in flight for 4 ticks, so later ticks see earlier batches answered
    ticks_strategy = st.lists(st.lists(st.integers(0, 400), max_size=BIG), min_size=1, max_size=8)

    def fails_once(ticks) -> bool:
        try:
            run = _run_in_new_loop(_loader_run, Loader, ticks, 0.004, 1.0)   # replayed with 3 s
        except _Slow:
            return False
        except Exception:
            return True
        return _loader_problem(ticks, run) is not None

    def fails(ticks) -> bool:
        # A schedule counts as failing only if it fails twice: the shrinker then stops at a
        # case that replays, not at one on the edge of a timing window.
        return fails_once(ticks) and fails_once(ticks)

    ticks = await _in_thread(_search, ticks_strategy, fails, case.seed, 25, _simpler_tick)
    if ticks is TOO_BUSY:
        raise TooBusy("the generated schedules could not all run within the time budget")
    if ticks is None:
        return
    for _ in range(3):                                 # replayed here: the report's history
        run = await _loader_run(Loader, ticks, 0.004)
        problem = _loader_problem(ticks, run)
        if problem is not None:
            break
    else:
        raise TooBusy("a generated schedule failed twice but passed three times when replayed")
    err = _loader_report(ticks, run, problem)
    raise CaseFailed(f"{err} (generated by Hypothesis with seed {case.seed}, shrunk to "
                     f"loads per tick {[len(t) for t in ticks]})", detail=err.detail,
                     replay=f"await check(..., only='generated-loader')  # Hypothesis seed "
                            f"{case.seed}; ticks = {ticks!r}")


async def _handler_run(posts_batch, ids: list[int]):
    request = make_mocked_request("GET", "/posts/batch?" + urlencode(
        {"ids": ",".join(map(str, ids))}))
    got = await posts_batch(request)
    if isinstance(got, web.Response):
        got = json.loads(got.text)
    return got


async def _generated_endpoint_case(posts_batch, case: Case) -> None:
    # The size first (0 .. BIG, so big lists are as likely as small ones), then the ids; a
    # third of them asked twice.
    ids_strategy = st.integers(0, BIG).flatmap(
        lambda n: st.lists(st.integers(1, 10**6), min_size=n, max_size=n)).map(
        lambda xs: xs + xs[: len(xs) // 3])

    def fails(ids) -> bool:     # the handler alone, on a real aiohttp request: fast
        try:
            got = _run_in_new_loop(_handler_run, posts_batch, ids)
        except _Slow:
            return False
        except Exception:
            return True
        return got != [chatty.post_record(i) for i in ids]

    ids = await _in_thread(_search, ids_strategy, fails, case.seed, 30)
    if ids is TOO_BUSY:
        raise TooBusy("the generated id lists could not all run within the time budget")
    if ids is None:
        return
    want, got = await _endpoint_run(posts_batch, ids)     # replayed here for the report
    err = _endpoint_failure(ids, want, got)
    if err is None:
        raise TooBusy("a generated id list failed once but passed when replayed")
    raise CaseFailed(f"{err} (generated by Hypothesis with seed {case.seed}, "
                     f"shrunk to {len(ids)} ids)", detail=err.detail,
                     replay=f"await check(..., only='generated-endpoint')  # Hypothesis seed "
                            f"{case.seed}; ids = {ids!r}")


async def _run(solution: dict, case: Case) -> None:
    part = case.params["part"]
    if part == "loader":
        await _loader_case(solution["Loader"], case)
    elif part == "loader-failure":
        await _loader_failure_case(solution["Loader"], case)
    elif part == "loader-in-flight":
        await _loader_in_flight_case(solution["Loader"], case)
    elif part == "endpoint":
        await _endpoint_case(solution["posts_batch"], case)
    elif part == "concurrent":
        await _concurrent_case(solution, case)
    elif part == "changes":
        await _changes_case(solution, case)
    elif part == "generated-loader":
        await _generated_loader_case(solution["Loader"], case)
    elif part == "generated-endpoint":
        await _generated_endpoint_case(solution["posts_batch"], case)
    else:
        await _page_case(solution, case)


async def check(*, Loader, posts_batch, profile, only: str | None = None,
                stop_after: int | None = None) -> Report:
    """Grade a solution: ``await check(Loader=..., posts_batch=..., profile=...)``.

    ``only`` replays one case by name; ``stop_after=1`` stops at the smallest failing case.
    """
    if not isinstance(Loader, type):
        raise TypeError(f"Loader must be a class taking batch_fn; got {Loader!r}")
    for name, fn in (("posts_batch", posts_batch), ("profile", profile)):
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"{name} must be an async function; got {fn!r}")
    solution = {"Loader": Loader, "posts_batch": posts_batch, "profile": profile}
    return await grade(LAB, CASES, _run, solution, only=only, stop_after=stop_after,
                       timeout=CHECK_TIMEOUT_S)
