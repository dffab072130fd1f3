"""Lab 2 (ch02_chatty): its checker passes the reference solution, rejects known-wrong ones, and its
cases inject the faults their names promise. Each wrong solution is the reference with one
realistic mistake.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest

from toylib.core.clock import FakeClock

from toylib.chapters import ch02_chatty as chatty
from toylib.labs import ch02_chatty as chatty_lab

ROOT = Path(__file__).resolve().parent.parent


from conftest import reference

# -- lab 2 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab2():
    ns = reference("ch02_chatty_lab.ipynb", "RefLoader")
    return {"Loader": ns["RefLoader"], "posts_batch": ns["ref_posts_batch"],
            "profile": ns["ref_profile"]}


async def test_lab2_reference_passes(lab2):
    report = await chatty_lab.check(**lab2)
    assert report.ok, report.summary()


class NoBatchLoader:
    """Wrong: one batch_fn call per load (the N+1 again, hidden in a loader)."""
    def __init__(self, batch_fn):
        self.batch_fn = batch_fn

    def load(self, key):
        async def one():
            return (await self.batch_fn([key]))[0]
        return asyncio.ensure_future(one())


def dropping_loader(Ref):
    class DropsDuplicates(Ref):
        """Wrong: the second load of a key in a tick gets a future nobody resolves... or a
        fresh future that replaces the first, so the first waiter is dropped."""
        def load(self, key):
            self.pending.pop(key, None)
            return super().load(key)
    return DropsDuplicates


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


def four_request_profile(ref_profile):
    async def profile(gateway, uid, Loader):
        await gateway.call("users", "GET", f"/users/{uid}")   # Wrong: an extra request
        return await ref_profile(gateway, uid, Loader)
    return profile


def wrong_solutions(lab2):
    return {
        "loader without batching": {**lab2, "Loader": NoBatchLoader},
        "loader dropping a duplicate key's waiter": {**lab2, "Loader": dropping_loader(lab2["Loader"])},
        "loader caching a failed batch": {**lab2, "Loader": CachesFailures},
        "batch endpoint in id order": {**lab2, "posts_batch": sorted_posts_batch},
        "batch endpoint dropping repeats": {**lab2, "posts_batch": deduped_posts_batch},
        "page with a fourth request": {**lab2, "profile": four_request_profile(lab2["profile"])},
    }


@pytest.mark.parametrize("mistake", ["loader without batching",
                                     "loader dropping a duplicate key's waiter",
                                     "loader caching a failed batch",
                                     "batch endpoint in id order",
                                     "batch endpoint dropping repeats",
                                     "page with a fourth request"])
async def test_lab2_rejects_wrong_solution(lab2, mistake):
    report = await chatty_lab.check(**wrong_solutions(lab2)[mistake], stop_after=1)
    assert not report.ok, f"the checker accepted a wrong solution: {mistake}"
    assert report.first_failure.message      # and says why


async def test_lab2_starter_fails_with_a_message():
    async def todo_handler(request):
        raise NotImplementedError("posts_batch: TODO")

    async def todo_profile(gateway, uid, Loader):
        raise NotImplementedError("profile: TODO")

    class TodoLoader:
        def __init__(self, batch_fn):
            pass

        def load(self, key):
            raise NotImplementedError("Loader.load: TODO")

    report = await chatty_lab.check(Loader=TodoLoader, posts_batch=todo_handler,
                                    profile=todo_profile)
    assert report.passed == 0
    assert "not implemented yet" in report.first_failure.message or "TODO" in report.summary()


async def test_lab2_replays_one_case(lab2):
    report = await chatty_lab.check(**lab2, only="page-N3-M5")
    assert [o.case.name for o in report.outcomes] == ["page-N3-M5"]
    with pytest.raises(ValueError, match="only"):
        await chatty_lab.check(**lab2, only="no-such-case")


async def test_lab2_rejects_bad_arguments(lab2):
    with pytest.raises(TypeError, match="posts_batch"):
        await chatty_lab.check(**{**lab2, "posts_batch": lambda r: None})


