"""toylib.data.status: pollable request statuses with a validated state machine."""
import asyncio
import itertools

import pytest

from toylib.data.db import Workspace
from toylib.data.status import InvalidTransition, StatusStore, UnknownRequest

# Written out here, not imported, so a wrong table in the module fails the test.
ALLOWED = {
    ("accepted", "in_progress"), ("accepted", "failed"),
    ("in_progress", "completed"), ("in_progress", "compensated"), ("in_progress", "failed"),
}
STATUSES = ["accepted", "in_progress", "completed", "compensated", "failed"]
PATH_TO = {"accepted": [], "in_progress": ["in_progress"],
           "completed": ["in_progress", "completed"],
           "compensated": ["in_progress", "compensated"], "failed": ["failed"]}


def ticking_clock():
    counter = itertools.count(1)
    return lambda: float(next(counter))


async def store(ws, **kw):
    db = await ws.database("checkout", synchronous="off")
    return db, await StatusStore(db, **kw).setup()


async def test_a_request_is_accepted_then_polled_through_its_transitions():
    async with Workspace() as ws:
        db, statuses = await store(ws, clock=ticking_clock())
        rid = await statuses.accept()
        assert rid == "req-1" and await statuses.accept() == "req-2"
        assert await statuses.status(rid) == "accepted"
        await statuses.set(rid, "in_progress")
        await statuses.set(rid, "completed", detail="shipped")
        poll = await statuses.get(rid)
        assert poll == {"request_id": "req-1", "status": "completed", "terminal": True,
                        "history": [{"status": "accepted", "t": 1.0},
                                    {"status": "in_progress", "t": 3.0},
                                    {"status": "completed", "t": 4.0}]}
        history = await statuses.history()
        assert history[history.request_id == rid].detail.fillna("").tolist() == ["", "", "shipped"]
        assert (await statuses.get("req-2"))["terminal"] is False


@pytest.mark.parametrize("old", STATUSES)
@pytest.mark.parametrize("new", STATUSES)
async def test_only_the_arrows_of_the_state_machine_are_allowed(old, new):
    async with Workspace() as ws:
        db, statuses = await store(ws)
        rid = await statuses.accept("r1")
        for step in PATH_TO[old]:
            await statuses.set(rid, step)
        if (old, new) in ALLOWED:
            await statuses.set(rid, new)
            assert await statuses.status(rid) == new
        else:
            with pytest.raises(InvalidTransition, match="status must be one of"):
                await statuses.set(rid, new)
            assert await statuses.status(rid) == old
            (n,) = await db.fetchone("SELECT COUNT(*) FROM request_history")
            assert n == 1 + len(PATH_TO[old])          # the refused move left no trace


async def test_accept_joins_the_callers_transaction():
    """The request is accepted together with the order, or not at all."""
    async with Workspace() as ws:
        db, statuses = await store(ws)
        await db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        with pytest.raises(RuntimeError):
            async with db.transaction():
                await db.execute("INSERT INTO orders VALUES ('o1')")
                await statuses.accept("o1")
                raise RuntimeError("crash before commit")
        with pytest.raises(UnknownRequest, match="request_id"):
            await statuses.status("o1")
        async with db.transaction():
            await db.execute("INSERT INTO orders VALUES ('o1')")
            await statuses.accept("o1")
        assert await statuses.status("o1") == "accepted"


async def test_concurrent_updates_keep_one_history_per_request():
    async with Workspace() as ws:
        db, statuses = await store(ws)
        ids = [await statuses.accept() for _ in range(20)]

        async def lifecycle(rid, end):
            await statuses.set(rid, "in_progress")
            await asyncio.sleep(0)
            await statuses.set(rid, end)

        await asyncio.gather(*(lifecycle(r, ("completed", "compensated", "failed")[i % 3])
                               for i, r in enumerate(ids)))
        history = await statuses.history()
        assert history.groupby("request_id").size().tolist() == [3] * 20
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def test_bad_input_is_rejected_with_the_parameter_named():
    async with Workspace() as ws:
        db, statuses = await store(ws)
        with pytest.raises(TypeError, match="db"):
            StatusStore("checkout.sqlite")
        with pytest.raises(ValueError, match="prefix"):
            StatusStore(db, prefix="")
        with pytest.raises(TypeError, match="clock"):
            StatusStore(db, clock=0)
        with pytest.raises(ValueError, match="request_id"):
            await statuses.accept("a b")
        rid = await statuses.accept("r1")
        with pytest.raises(ValueError, match="request_id"):
            await statuses.accept("r1")
        with pytest.raises(ValueError, match="status"):
            await statuses.set(rid, "done")
        with pytest.raises(TypeError, match="detail"):
            await statuses.set(rid, "in_progress", detail=5)
        with pytest.raises(UnknownRequest, match="request_id"):
            await statuses.set("r2", "in_progress")
        with pytest.raises(UnknownRequest, match="request_id"):
            await statuses.get("r2")


async def test_a_saga_drives_the_status_a_client_polls():
    from toylib.data.saga import SagaDefinition, SagaOrchestrator, Step
    from toylib.data.status import FROM_SAGA

    async def ok(ctx, key):
        pass

    async def declined(ctx, key):
        raise RuntimeError("card declined")

    async with Workspace() as ws:
        db, statuses = await store(ws)
        polls = []

        async def on_status(saga_id, status):
            if FROM_SAGA.get(status):              # "compensating" is not shown to clients
                await statuses.set(saga_id, FROM_SAGA[status])
            polls.append((await statuses.get(saga_id))["status"])

        definitions = [SagaDefinition("good", [Step("a", ok, ok), Step("pay", ok, pivot=True)]),
                       SagaDefinition("bad", [Step("a", ok, ok),
                                              Step("pay", declined, pivot=True)])]
        async with SagaOrchestrator(db, definitions, on_status=on_status) as orch:
            for name in ("good", "bad"):
                await statuses.accept(name)        # the id the client got with its 202
                await orch.start(name, saga_id=name)
                await orch.wait(name)
        assert polls == ["in_progress", "completed",
                         "in_progress", "in_progress", "compensated"]
        assert (await statuses.get("bad"))["terminal"]
