"""toylib.data.outbox: the event commits with the business row; duplicates are absorbed."""
import asyncio
import sqlite3
from types import SimpleNamespace

import pytest

from toylib.data.bus import EventBus
from toylib.data.db import Workspace
from toylib.data.outbox import IdempotentConsumer, Outbox


def no_tasks_left():
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def order_service(ws):
    db = await ws.database("orders", synchronous="off")
    await db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)")
    return db, await Outbox(db).setup()


async def counts(db):
    (orders,) = await db.fetchone("SELECT COUNT(*) FROM orders")
    (events,) = await db.fetchone("SELECT COUNT(*) FROM outbox")
    return orders, events


async def test_business_row_and_event_row_commit_together_or_not_at_all():
    async with Workspace() as ws:
        db, outbox = await order_service(ws)
        async with db.transaction():
            await db.execute("INSERT INTO orders VALUES ('o1', 30)")
            event_id = await outbox.emit("orders", "o1", {"type": "OrderCreated", "id": "o1"})
        assert event_id == "orders:1"
        assert await counts(db) == (1, 1)

        with pytest.raises(RuntimeError, match="crash"):      # failure after both writes
            async with db.transaction():
                await db.execute("INSERT INTO orders VALUES ('o2', 10)")
                await outbox.emit("orders", "o2", {"type": "OrderCreated", "id": "o2"})
                raise RuntimeError("crash before commit")
        assert await counts(db) == (1, 1)                      # neither row

        with pytest.raises(sqlite3.IntegrityError):            # the business write fails
            async with db.transaction():
                await outbox.emit("orders", "o1", {"type": "OrderCreated", "id": "o1"})
                await db.execute("INSERT INTO orders VALUES ('o1', 99)")
        assert await counts(db) == (1, 1)

        assert await outbox.write("INSERT INTO orders VALUES (?, ?)", ("o3", 5),
                                  topic="orders", key="o3", value={"id": "o3"}) == "orders:2"
        with pytest.raises(sqlite3.IntegrityError):
            await outbox.write("INSERT INTO orders VALUES (?, ?)", ("o3", 5),
                               topic="orders", key="o3", value={"id": "o3"})
        assert await counts(db) == (2, 2)
        assert await outbox.pending() == 2
        rows = await outbox.rows()
        assert list(rows.event_id) == ["orders:1", "orders:2"]


async def test_emit_outside_a_transaction_is_refused():
    async with Workspace() as ws:
        db, outbox = await order_service(ws)
        with pytest.raises(RuntimeError, match="transaction"):
            await outbox.emit("orders", "o1", {"id": "o1"})
        assert await counts(db) == (0, 0)


async def test_relay_publishes_in_order_and_marks_rows_published():
    bus = EventBus()
    bus.create_topic("orders", partitions=2)
    async with Workspace() as ws:
        db, outbox = await order_service(ws)
        for i in range(10):
            await outbox.write("INSERT INTO orders VALUES (?, ?)", (f"o{i}", i),
                               topic="orders", key=f"o{i % 3}", value={"i": i})
        async with outbox.relay(bus, interval=0.001, batch_size=4) as relay:
            await relay.wait_drained()
        assert await outbox.pending() == 0
        assert relay.stats == {"published": 10, "crashes": 0}
        events = bus.events("orders")
        assert sorted(e.event_id for e in events) == sorted(f"orders:{i}" for i in range(1, 11))
        for key in ("o0", "o1", "o2"):
            mine = [e.value["i"] for e in events if e.key == key]
            assert mine == sorted(mine)
    assert no_tasks_left()


async def test_relay_crash_after_publish_before_mark_duplicates_and_consumer_absorbs_it(
        leakcheck):
    bus = EventBus()
    bus.create_topic("orders", partitions=2)
    async with Workspace() as ws:
        db, outbox = await order_service(ws)
        billing = await ws.database("billing", synchronous="off")
        await billing.execute("CREATE TABLE invoices (order_id TEXT, total INTEGER)")

        async def invoice(db, event):
            await db.execute("INSERT INTO invoices VALUES (?, ?)",
                             (event.value["id"], event.value["total"]))

        consumer = await IdempotentConsumer(billing, "billing", invoice).setup()
        for i in range(6):
            await outbox.write("INSERT INTO orders VALUES (?, ?)", (f"o{i}", 10 * i),
                               topic="orders", key=f"o{i}", value={"id": f"o{i}",
                                                                   "total": 10 * i})
        async with bus.consumer_group("orders", "billing", consumer) as group, \
                outbox.relay(bus, interval=0.001) as relay:
            relay.crash_after_publish(3)            # the 3rd row is published, not marked
            await relay.wait_drained()
            await group.wait_caught_up()
        assert relay.stats["crashes"] == 1
        ids = [e.event_id for e in bus.events("orders")]
        assert len(ids) == 7 and len(set(ids)) == 6  # one duplicate on the bus
        assert ids.count("orders:3") == 2
        assert consumer.stats == {"processed": 6, "duplicates": 1}
        rows = await billing.fetchall(
            "SELECT order_id, COUNT(*) FROM invoices GROUP BY order_id ORDER BY order_id")
        assert rows == [(f"o{i}", 1) for i in range(6)]   # one invoice per order
        (n,) = await billing.fetchone("SELECT COUNT(*) FROM processed_events")
        assert n == 6
    assert no_tasks_left()


async def test_idempotent_consumer_records_the_id_only_if_the_work_committed():
    async with Workspace() as ws:
        db = await ws.database("billing", synchronous="off")
        await db.execute("CREATE TABLE effects (event_id TEXT)")
        fail = True

        async def work(db, event):
            await db.execute("INSERT INTO effects VALUES (?)", (event.event_id,))
            if fail:
                raise ConnectionError("downstream down after the local write")

        consumer = await IdempotentConsumer(db, "billing", work).setup()
        event = SimpleNamespace(event_id="e1")
        with pytest.raises(ConnectionError):
            await consumer(event)
        assert await db.fetchall("SELECT * FROM effects") == []
        assert await db.fetchall("SELECT * FROM processed_events") == []
        fail = False
        assert await consumer(event) is True
        assert await consumer(event) is False
        assert await db.fetchall("SELECT * FROM effects") == [("e1",)]
        # another consumer name on the same database has its own record of what it did
        other = await IdempotentConsumer(db, "analytics", work).setup()
        assert await other(event) is True


async def test_a_relay_that_cannot_publish_reports_it(leakcheck):
    bus = EventBus()                                  # no "orders" topic on this bus
    with pytest.raises(ValueError, match="topic"):
        async with Workspace() as ws:
            db, outbox = await order_service(ws)
            await outbox.write("INSERT INTO orders VALUES ('o1', 1)", (), topic="orders",
                               key="o1", value={})
            async with outbox.relay(bus, interval=0.001) as relay:
                await relay.wait_drained(timeout=1)
    assert no_tasks_left()


async def test_leaving_the_relay_block_on_error_stops_it(leakcheck):
    bus = EventBus()
    bus.create_topic("orders")
    with pytest.raises(KeyError):
        async with Workspace() as ws:
            db, outbox = await order_service(ws)
            async with outbox.relay(bus, interval=0.001):
                await asyncio.sleep(0.005)
                raise KeyError("experiment failed")
    assert no_tasks_left()


async def test_bad_input_is_rejected_with_the_parameter_named():
    bus = EventBus()
    bus.create_topic("orders")

    async def work(db, event):
        pass

    def sync_work(db, event):
        pass

    async with Workspace() as ws:
        db, outbox = await order_service(ws)
        with pytest.raises(TypeError, match="db"):
            Outbox("orders.sqlite")
        with pytest.raises(ValueError, match="source"):
            Outbox(db, source="a:b")
        with pytest.raises(TypeError, match="clock"):
            Outbox(db, clock=5)
        async with db.transaction():
            with pytest.raises(ValueError, match="topic"):
                await outbox.emit("", "k", {})
            with pytest.raises(ValueError, match="key"):
                await outbox.emit("orders", "", {})
            with pytest.raises(TypeError, match="value"):
                await outbox.emit("orders", "k", {"when": object()})
        for kwargs, param in [(dict(interval=0), "interval"), (dict(batch_size=0), "batch_size"),
                              (dict(restart_delay=-1), "restart_delay")]:
            with pytest.raises(ValueError, match=param):
                outbox.relay(bus, **kwargs)
        with pytest.raises(TypeError, match="bus"):
            outbox.relay("bus")
        with pytest.raises(ValueError, match="n must"):
            outbox.relay(bus).crash_after_publish(0)
        with pytest.raises(ValueError, match="consumer"):
            IdempotentConsumer(db, "", work)
        with pytest.raises(TypeError, match="work"):
            IdempotentConsumer(db, "billing", sync_work)
        consumer = await IdempotentConsumer(db, "billing", work).setup()
        with pytest.raises(ValueError, match="event_id"):
            await consumer(SimpleNamespace(id="e1"))
        relay = outbox.relay(bus)
        with pytest.raises(ValueError, match="timeout"):
            await relay.wait_drained(timeout=-1)
