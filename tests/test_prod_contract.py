"""One contract, two backends: the toy (SQLite + in-process bus) and production (PostgreSQL +
NATS JetStream) must keep the same invariants: per-key order, at-least-once delivery with
redelivery after a consumer dies, retries of a failing handler, the outbox relay's duplicates
absorbed by the idempotent consumer, and sagas that end completed or compensated with every
command applied once, across an orchestrator stopped mid-run.

The production half is skipped, with the reason, where the services are not listening.
"""
from __future__ import annotations

import asyncio

import pytest

from toylib.data.outbox import IdempotentConsumer, Outbox
from toylib.data.saga import COMPENSATED, COMPLETED, SagaDefinition, SagaOrchestrator, Step
from toylib.prod import services
from toylib.prod.stack import BACKENDS, stack

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "prod":
        absent = services.missing("postgres", "nats")
        if absent:
            pytest.skip(f"production backend needs {' and '.join(absent)} (not listening; "
                        f"compose.yaml starts them)")
    return request.param


def in_order(seq) -> bool:
    """Non-decreasing: a redelivery repeats an event, it never goes back past a later one."""
    return all(a <= b for a, b in zip(seq, seq[1:]))


async def test_per_key_order_and_redelivery_after_a_consumer_dies(backend, leakcheck):
    async with stack(backend) as (_, bus):
        bus.create_topic("orders", partitions=4)
        seen: dict[str, list[int]] = {}

        async def handle(event):
            seen.setdefault(event.key, []).append(event.value["n"])
            await asyncio.sleep(0.001)

        async with bus.consumer_group("orders", "billing", handle, consumers=2) as g:
            first = next(iter(g.members))
            await g.crash(first, after_events=3)
            for n in range(40):
                await bus.publish("orders", key=f"k{n % 8}", value={"n": n})
            await g.wait_caught_up(timeout=30)
        delivered = {n for ns in seen.values() for n in ns}
        assert delivered == set(range(40)), "at-least-once: nothing is lost"
        assert all(in_order(ns) for ns in seen.values()), f"per-key order broken: {seen}"
        assert sum(map(len, seen.values())) > 40, "the crash before the commit redelivers"
        assert g.stats["crashes"] == 1


async def test_a_failing_handler_is_retried_and_its_partition_waits(backend):
    async with stack(backend) as (_, bus):
        bus.create_topic("orders", partitions=2)
        seen, failures = [], {"left": 3}

        async def handle(event):
            if event.value["n"] == 5 and failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("billing is down")
            seen.append((event.key, event.value["n"]))

        async with bus.consumer_group("orders", "billing", handle, retry_delay=0.02) as g:
            for n in range(12):
                await bus.publish("orders", key=f"k{n % 2}", value={"n": n})
            await g.wait_caught_up(timeout=30)
        assert sorted(n for _, n in seen) == list(range(12))
        assert g.stats["failed"] == 3
        for key in ("k0", "k1"):
            assert in_order([n for k, n in seen if k == key])


async def test_outbox_duplicates_are_absorbed_by_the_idempotent_consumer(backend, leakcheck):
    async with stack(backend) as (ws, bus):
        bus.create_topic("orders", partitions=2)
        orders = await ws.database("orders")
        billing = await ws.database("billing")
        await orders.executescript("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)")
        await billing.executescript("CREATE TABLE charges (order_id TEXT, total INTEGER)")
        outbox = await Outbox(orders, bus=bus).setup()

        async def charge(db, event):
            await db.execute("INSERT INTO charges VALUES (?, ?)",
                             (event.value["id"], event.value["total"]))
        consumer = await IdempotentConsumer(billing, "billing", charge).setup()
        relay = outbox.relay(bus, interval=0.01)
        relay.crash_after_publish(5)              # row 5 is published twice
        async with relay, bus.consumer_group("orders", "billing", consumer,
                                             consumers=2) as g:
            await g.crash(next(iter(g.members)), after_events=4)
            for i in range(20):
                await outbox.write("INSERT INTO orders VALUES (?, ?)", (f"o{i}", i),
                                   topic="orders", key=f"o{i}", value={"id": f"o{i}", "total": i})
            await relay.wait_drained(timeout=30)
            await g.wait_caught_up(timeout=30)
        rows = await billing.fetchall("SELECT order_id, total FROM charges ORDER BY total")
        assert rows == [(f"o{i}", i) for i in range(20)], "every order charged exactly once"
        assert relay.stats["crashes"] == 1 and relay.stats["published"] == 21
        assert consumer.stats["duplicates"] >= 1
        assert await outbox.pending() == 0


async def test_sagas_end_completed_or_compensated_and_apply_each_command_once(backend):
    async with stack(backend) as (ws, _):
        db = await ws.database("orchestrator")
        ledger = await ws.database("participants")
        await ledger.executescript("CREATE TABLE ledger (key TEXT PRIMARY KEY, saga TEXT, "
                                   "step TEXT)")
        calls = {"n": 0}

        def participant(step, fail_for=()):
            async def command(ctx, key):
                calls["n"] += 1
                await asyncio.sleep(0.005)
                await ledger.execute("INSERT OR IGNORE INTO ledger VALUES (?, ?, ?)",
                                     (key, ctx["id"], step))   # honours the idempotency key
                if ctx["id"] in fail_for:
                    raise RuntimeError(f"{step} refused {ctx['id']}")
            return command

        declined = {"s3", "s7"}
        saga = SagaDefinition("order", [
            Step("reserve", participant("reserve"), participant("release")),
            Step("charge", participant("charge", declined), participant("refund"), pivot=True),
            Step("ship", participant("ship"))])

        def orchestrator():
            return SagaOrchestrator(db, saga, base_delay=0.001, max_delay=0.01, seed=1)

        async with orchestrator() as o:
            for i in range(10):
                await o.start("order", {"id": f"s{i}"}, saga_id=f"s{i}")
            await asyncio.sleep(0.03)              # stopped mid-run: the log says where
        async with orchestrator() as o:            # resumes from the database only
            await o.wait_all(timeout=30)
            status = {f"s{i}": await o.status(f"s{i}") for i in range(10)}
        assert {s for s in status.values()} <= {COMPLETED, COMPENSATED}
        assert {s for s, st in status.items() if st == COMPENSATED} == declined
        rows = await ledger.fetchall("SELECT saga, step FROM ledger")
        steps = {}
        for s, step in rows:
            steps.setdefault(s, []).append(step)
        for s, st in status.items():
            want = ["reserve", "charge", "ship"] if st == COMPLETED else \
                ["reserve", "charge", "refund", "release"]
            assert sorted(steps[s]) == sorted(want), (s, st, steps[s])
        assert calls["n"] >= len(rows)
