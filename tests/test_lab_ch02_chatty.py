"""Lab 2 (ch02_chatty): its checker passes two independently written correct solutions, rejects
known-wrong ones of every class it grades (batching, ordering, failures, concurrency, sizes,
changing data, generated cases), and reports the shrunk case, the divergence and the replay.
Each wrong solution is a correct one with one realistic mistake.
"""
from __future__ import annotations

import asyncio

import pytest

from toylib.chapters import ch02_chatty as chatty
from toylib.labs import ch02_chatty as lab
from toylib.labs.solutions import ch02_chatty as solutions

REF = solutions.REFERENCE


@pytest.mark.parametrize("name", ["reference", "alternative"])
async def test_both_correct_solutions_pass(name):
    sol = solutions.REFERENCE if name == "reference" else solutions.ALTERNATIVE
    report = await lab.check(**sol)
    assert report.ok, report.summary()
    assert report.verdict().startswith("done")


# -- known-wrong solutions (the original ones) ------------------------------------------------------
class NoBatchLoader:
    """Wrong: one batch_fn call per load (the N+1 again, hidden in a loader)."""
    def __init__(self, batch_fn):
        self.batch_fn = batch_fn

    def load(self, key):
        async def one():
            return (await self.batch_fn([key]))[0]
        return asyncio.ensure_future(one())


class DropsDuplicates(solutions.Loader):
    """Wrong: the second load of a key in a tick replaces the first waiter's future."""
    def load(self, key):
        self.pending.pop(key, None)
        return super().load(key)


class CachesFailures:
    """Wrong: remembers futures forever, including failed ones."""
    def __init__(self, batch_fn):
        self.batch_fn, self.futures, self.queue = batch_fn, {}, []

    def load(self, key):
        if key in self.futures:
            return self.futures[key]
        loop = asyncio.get_running_loop()
        fut = self.futures[key] = loop.create_future()
        if not self.queue:
            loop.call_soon(lambda: asyncio.ensure_future(self.dispatch()))
        self.queue.append((key, fut))
        return fut

    async def dispatch(self):
        items, self.queue = self.queue, []
        try:
            values = await self.batch_fn([k for k, _ in items])
        except Exception as e:
            for _, f in items:
                f.set_exception(e)
            return
        for (_, f), v in zip(items, values):
            f.set_result(v)


async def sorted_posts_batch(request):
    """Wrong: answers in id order, not in the order asked."""
    ids = sorted(int(i) for i in request.query.get("ids", "").split(",") if i)
    return [chatty.post_record(i) for i in ids]


async def deduped_posts_batch(request):
    """Wrong: drops repeated ids."""
    ids = list(dict.fromkeys(int(i) for i in request.query.get("ids", "").split(",") if i))
    return [chatty.post_record(i) for i in ids]


async def four_request_profile(gateway, uid, Loader):
    await gateway.call("users", "GET", f"/users/{uid}")   # Wrong: an extra request
    return await solutions.profile(gateway, uid, Loader)


# -- new ones, one per class of issue 12 --------------------------------------------------------------
class LosesInFlightLoads(solutions.Loader):
    """Concurrency, wrong: takes the batch only after batch_fn returns, so loads that arrive
    while it is in flight are answered from the wrong batch or never."""
    async def dispatch(self):
        values = await self.batch_fn(list(self.pending))
        for fut, value in zip(self.pending.values(), values):
            fut.done() or fut.set_result(value)
        self.pending, self.scheduled = {}, False


def shared_loader_profile():
    """Concurrency, wrong: one pair of loaders for every request ("make it once")."""
    shared = {}

    async def profile(gateway, uid, Loader):
        if not shared:
            def batch(service, path):
                async def fetch(ids):
                    return await gateway.call(service, "GET", path,
                                              params={"ids": ",".join(map(str, ids))})
                return fetch
            shared["posts"] = Loader(batch("posts", "/posts/batch"))
            shared["users"] = Loader(batch("users", "/users/batch"))
        user = await gateway.call("users", "GET", f"/users/{uid}")
        posts, friends = await asyncio.gather(
            asyncio.gather(*(shared["posts"].load(p) for p in user["post_ids"])),
            asyncio.gather(*(shared["users"].load(f) for f in user["friend_ids"])))
        return {"user": chatty.friend_summary(user), "bio": user["bio"], "posts": list(posts),
                "friends": [chatty.friend_summary(f) for f in friends]}
    return profile


class ChunkingLoader(solutions.Loader):
    """Sizes, wrong: splits a batch into chunks of 100 keys (more calls than ticks)."""
    def __init__(self, batch_fn):
        async def chunked(keys):
            out = []
            for i in range(0, len(keys), 100):
                out += await batch_fn(keys[i:i + 100])
            return out
        super().__init__(chunked)


async def truncating_posts_batch(request):
    """Sizes, wrong: silently answers at most 100 ids."""
    ids = [int(i) for i in request.query.get("ids", "").split(",") if i][:100]
    return [chatty.post_record(i) for i in ids]


def page_cache_profile():
    """Changing data, wrong: caches each user's page forever."""
    pages = {}

    async def profile(gateway, uid, Loader):
        if uid not in pages:
            pages[uid] = await solutions.profile(gateway, uid, Loader)
        return pages[uid]
    return profile


class StaleThirdTick(solutions.Loader):
    """Generated schedules, wrong: once two batches have gone out, answers from the first
    batch's values (a results buffer that is never reset); found only by schedules of three
    ticks or more."""
    def __init__(self, batch_fn):
        self.first, self.calls = [], 0

        async def remember(keys):
            self.calls += 1
            values = await batch_fn(keys)
            self.first = self.first or list(values)
            return values
        super().__init__(remember)

    def load(self, key):
        if self.calls >= 2 and self.first:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(self.first[0])
            return fut
        return super().load(key)


async def over_255_posts_batch(request):
    """Generated sizes, wrong: drops ids whose position is 255 or more, as a fixed buffer would."""
    ids = [int(i) for i in request.query.get("ids", "").split(",") if i]
    return [chatty.post_record(i) for n, i in enumerate(ids) if n < 255]


def wrong_solutions():
    return {
        "loader without batching": {**REF, "Loader": NoBatchLoader},
        "loader dropping a duplicate key's waiter": {**REF, "Loader": DropsDuplicates},
        "loader caching a failed batch": {**REF, "Loader": CachesFailures},
        "batch endpoint in id order": {**REF, "posts_batch": sorted_posts_batch},
        "batch endpoint dropping repeats": {**REF, "posts_batch": deduped_posts_batch},
        "page with a fourth request": {**REF, "profile": four_request_profile},
        "concurrency: loader losing loads made in flight": {**REF, "Loader": LosesInFlightLoads},
        "concurrency: loaders shared between requests": {**REF, "profile": shared_loader_profile()},
        "sizes: loader splitting batches": {**REF, "Loader": ChunkingLoader},
        "sizes: endpoint truncating at 100": {**REF, "posts_batch": truncating_posts_batch},
        "changing data: a page cache that never expires": {**REF, "profile": page_cache_profile()},
        "generated: loader answering a later tick stale": {**REF, "Loader": StaleThirdTick},
        "generated: endpoint dropping ids past 255": {**REF, "posts_batch": over_255_posts_batch},
    }


# The case that must catch each new class (so a class cannot silently stop being graded).
CAUGHT_BY = {
    "concurrency: loader losing loads made in flight": "loader-in-flight",
    "concurrency: loaders shared between requests": "pages-concurrent",
    "sizes: loader splitting batches": f"loader-{lab.BIG}",
    "sizes: endpoint truncating at 100": f"batch-endpoint-{lab.BIG}",
    "changing data: a page cache that never expires": "page-data-changes",
    "generated: loader answering a later tick stale": "generated-loader",
    "generated: endpoint dropping ids past 255": "generated-endpoint",
}


@pytest.mark.parametrize("mistake", list(wrong_solutions()))
async def test_rejects_wrong_solution(mistake):
    sol = wrong_solutions()[mistake]
    report = await lab.check(**sol, stop_after=1)
    assert not report.ok, f"the checker accepted a wrong solution: {mistake}"
    assert report.first_failure.message and report.verdict().startswith("not done")
    if mistake in CAUGHT_BY:
        one = await lab.check(**sol, only=CAUGHT_BY[mistake])
        assert not one.ok, f"{CAUGHT_BY[mistake]} did not catch: {mistake}"


async def test_a_generated_failure_is_shrunk_and_replayable():
    report = await lab.check(**{**REF, "posts_batch": over_255_posts_batch},
                             only="generated-endpoint")
    f = report.first_failure
    shrunk = int(f.message.split("shrunk to ")[1].split(" ids")[0])
    assert 256 <= shrunk <= 300, f.message     # shrunk towards the smallest failing list, 256 ids
    assert "seed" in f.replay and "ids = [" in f.replay
    assert "expected id" in f.detail and "<-- here" in f.detail
    text = report.summary()
    assert "Replay it alone" in text and "generated-endpoint" in text


async def test_a_report_shows_the_divergence_expected_beside_actual():
    report = await lab.check(**{**REF, "profile": page_cache_profile()}, only="page-data-changes")
    f = report.first_failure
    assert "renamed" in f.message and "expected" in f.detail and "actual" in f.detail
    report = await lab.check(**{**REF, "Loader": LosesInFlightLoads}, only="loader-in-flight")
    assert "in flight" in report.first_failure.message
    assert "<-- here" in report.first_failure.detail


async def test_starter_fails_with_a_message():
    async def todo_handler(request):
        raise NotImplementedError("posts_batch: TODO")

    async def todo_profile(gateway, uid, Loader):
        raise NotImplementedError("profile: TODO")

    class TodoLoader:
        def __init__(self, batch_fn):
            pass

        def load(self, key):
            raise NotImplementedError("Loader.load: TODO")

    report = await lab.check(Loader=TodoLoader, posts_batch=todo_handler, profile=todo_profile)
    assert report.passed == 0
    assert "not implemented yet" in report.first_failure.message or "TODO" in report.summary()


async def test_replays_one_case():
    report = await lab.check(**REF, only="page-N3-M5")
    assert [o.case.name for o in report.outcomes] == ["page-N3-M5"]
    with pytest.raises(ValueError, match="only"):
        await lab.check(**REF, only="no-such-case")


@pytest.mark.parametrize("kw, param", [
    ({"posts_batch": lambda r: None}, "posts_batch"),
    ({"profile": None}, "profile"),
    ({"Loader": "Loader"}, "Loader"),
    ({"Loader": lambda f: None}, "Loader"),
])
async def test_rejects_bad_arguments(kw, param):
    with pytest.raises(TypeError, match=param):
        await lab.check(**{**REF, **kw})
    with pytest.raises((TypeError, ValueError), match="stop_after"):
        await lab.check(**REF, stop_after=0)
