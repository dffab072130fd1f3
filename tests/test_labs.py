"""Every lab checker passes its reference solution and rejects known-wrong ones.

The reference solutions are taken from the lab notebooks themselves (the cells inside the
hidden solution block), so the solution a reader can reveal is the one proven here. Each wrong
solution is the reference with one realistic mistake.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest

from toylib import chatty
from toylib.labs import chatty_lab

ROOT = Path(__file__).resolve().parent.parent


def reference(notebook: str, marker: str) -> dict:
    """Execute the code cells between the solution markers of a lab notebook; return names."""
    nb = nbformat.read(ROOT / "labs" / notebook, as_version=4)
    namespace: dict = {"asyncio": asyncio, "chatty": chatty}
    inside = False
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "{solution-start}" in cell.source:
            inside = True
        elif cell.cell_type == "markdown" and "{solution-end}" in cell.source:
            inside = False
        elif inside and cell.cell_type == "code":
            exec(compile(cell.source, f"{notebook}:solution", "exec"), namespace)
    assert marker in namespace, f"{notebook} has no reference {marker} in its solution block"
    return namespace


# -- lab 2 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab2():
    ns = reference("02_chatty_apis_lab.ipynb", "RefLoader")
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


# -- lab 6 --------------------------------------------------------------------------------------
from collections import Counter  # noqa: E402

from toylib.labs import breaker_lab  # noqa: E402


@pytest.fixture(scope="module")
def ref_breaker():
    return reference("06_no_circuit_breakers_lab.ipynb", "RefBreaker")["RefBreaker"]


async def test_lab6_reference_passes(ref_breaker):
    report = await breaker_lab.check(ref_breaker)
    assert report.ok, report.summary()


def test_lab6_traces_reach_every_state_and_rule():
    """The traces are only worth something if they drive the model through every rule."""
    seen, transitions = Counter(), Counter()
    for case in breaker_lab.CASES:
        clock = breaker_lab.FakeClock()
        oracle = breaker_lab._oracle(case.params["config"], clock)
        wait, permits = case.params["config"][3], case.params["config"][4]
        for kind, arg in breaker_lab.trace(case.seed, case.size, wait, permits):
            if kind == "advance":
                clock.t += arg
                continue
            for ok in (arg,) if kind == "call" else arg:
                if oracle.try_acquire():
                    breaker_lab._record(oracle, ok)
                seen[oracle.state] += 1
        transitions.update((e.from_state, e.state) for e in oracle.events
                           if e.kind == "state_transition")
    assert set(seen) == {"closed", "open", "half_open"}
    for t in [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
              ("half_open", "closed")]:
        assert transitions[t] >= 3, (t, transitions)


def wrong_breakers(Ref):
    class LeaksWhileOpen(Ref):
        """Lets one call in ten through while open."""
        n = 0

        def try_acquire(self):
            ok = super().try_acquire()
            self.n += 1
            return ok or (self.state == "open" and self.n % 10 == 0)

    class StrictThreshold(Ref):
        """Opens only when the rate is strictly above the threshold."""
        def _rate(self, outcomes):
            rate = super()._rate(outcomes)
            return rate - 1e-9 if rate == self.threshold else rate

    class ReopensOnFirstFailure(Ref):
        """pybreaker's rule in a resilience4j breaker: one half-open failure reopens."""
        def on_result(self, ok):
            if self.state == "half_open" and not ok:
                self._open()
                return
            super().on_result(ok)

    class EagerHalfOpen(Ref):
        """Leaves open as soon as the wait is over, even without a call (and on the dot)."""
        @property
        def state(self):
            if self._state == "open" and self.clock() >= self.opened_at + self.wait:
                self._half_open()
            return self._state

        @state.setter
        def state(self, value):
            self._state = value

    class NoMinimum(Ref):
        """Trips on the first failure, ignoring the minimum number of calls."""
        def __init__(self, **kw):
            super().__init__(**kw)
            self.minimum = 1

    class UnlimitedTrials(Ref):
        """Admits every call in half-open."""
        def try_acquire(self):
            ok = super().try_acquire()
            return ok or self.state == "half_open"

    class KeepsWindowOnClose(Ref):
        """Closes without forgetting the failures that opened it."""
        def _close(self):
            old = getattr(self, "window", None)
            super()._close()
            if old:
                self.window.extend(old)

    return {c.__name__: c for c in (LeaksWhileOpen, StrictThreshold, ReopensOnFirstFailure,
                                   EagerHalfOpen, NoMinimum, UnlimitedTrials, KeepsWindowOnClose)}


@pytest.mark.parametrize("mistake", ["LeaksWhileOpen", "StrictThreshold",
                                     "ReopensOnFirstFailure", "EagerHalfOpen", "NoMinimum",
                                     "UnlimitedTrials", "KeepsWindowOnClose"])
async def test_lab6_rejects_wrong_breaker(ref_breaker, mistake):
    report = await breaker_lab.check(wrong_breakers(ref_breaker)[mistake], stop_after=1)
    assert not report.ok, f"the checker accepted a wrong breaker: {mistake}"
    assert "the model says" in report.first_failure.message


async def test_lab6_bad_argument():
    with pytest.raises(TypeError, match="Breaker"):
        await breaker_lab.check(lambda **kw: None)
