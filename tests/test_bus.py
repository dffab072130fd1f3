"""toylib.data.bus: Kafka's model in-process: partitions by key, consumer groups, offsets, lag."""
import asyncio
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from toylib.data.bus import EventBus, partition_for
from toylib.data.db import Workspace
from toylib.data.outbox import IdempotentConsumer


def no_tasks_left():
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


async def until(condition, timeout=5.0):
    """Wait for ``condition()`` without betting on how fast this machine is."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def publish_numbered(bus, topic, n, keys=8, start=0):
    """Events {"key", "i"} with i increasing, so per-key order can be checked."""
    for i in range(start, start + n):
        key = f"k{i % keys}"
        await bus.publish(topic, key, {"key": key, "i": i})


def per_key(values):
    out = defaultdict(list)
    for v in values:
        out[v["key"]].append(v["i"])
    return out


def first_deliveries_in_order(seen: list[int]) -> bool:
    """At-least-once order: dropping repeats, the sequence is increasing, and every
    redelivery goes back to an event that had already been seen (no skipping ahead)."""
    firsts, done = [], set()
    for i in seen:
        if i not in done:
            firsts.append(i)
            done.add(i)
    return firsts == sorted(firsts)


async def test_a_key_always_maps_to_one_partition_and_keeps_its_order_in_every_group():
    bus = EventBus()
    bus.create_topic("orders", partitions=4)
    got = defaultdict(list)

    def handler_for(group):
        async def handle(event):
            got[group].append(event.value)
            await asyncio.sleep(0)
        return handle

    async with bus.consumer_group("orders", "billing", handler_for("billing"), consumers=3,
                                  batch_size=4) as billing, \
            bus.consumer_group("orders", "shipping", handler_for("shipping")) as shipping:
        await publish_numbered(bus, "orders", 200, keys=10)
        await billing.wait_caught_up()
        await shipping.wait_caught_up()
    assert no_tasks_left()

    by_key_partition = defaultdict(set)
    for e in bus.events("orders"):
        by_key_partition[e.key].add(e.partition)
    assert all(len(ps) == 1 for ps in by_key_partition.values())
    assert len({p for ps in by_key_partition.values() for p in ps}) > 1   # really spread
    expected = per_key({"key": f"k{i % 10}", "i": i} for i in range(200))
    for group in ("billing", "shipping"):
        assert per_key(got[group]) == expected      # every event once, in key order


def test_partition_of_a_key_is_the_same_in_another_process():
    keys = [f"order-{i}" for i in range(20)]
    here = [partition_for(k, 7) for k in keys]
    code = ("from toylib.data.bus import partition_for;"
            f"print([partition_for(k, 7) for k in {keys!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert out.stdout.strip() == str(here)


async def test_one_consumer_per_partition_through_joins_and_leaves():
    bus = EventBus()
    bus.create_topic("orders", partitions=4)
    in_flight = defaultdict(int)
    worst = 0
    seen = []

    async def handle(event):
        nonlocal worst
        in_flight[event.partition] += 1
        worst = max(worst, in_flight[event.partition])
        await asyncio.sleep(0.0004 * (1 + (7 * event.offset + event.partition) % 5))  # uneven
        seen.append(event.value)
        in_flight[event.partition] -= 1

    def check_assignment(group):
        owned = [p for ps in group.assignment().values() for p in ps]
        assert len(owned) == len(set(owned))                    # never two owners

    async with bus.consumer_group("orders", "billing", handle, consumers=1) as group:
        await publish_numbered(bus, "orders", 300, keys=12)
        for k in range(8):             # the membership rotates: 1 → 2 → 1 consumers…
            await asyncio.sleep(0.0007 * (k + 1))
            group.add_consumer()
            check_assignment(group)
            await asyncio.sleep(0.0011 * (k + 1))
            check_assignment(group)
            await group.stop_consumer(group.consumers[0])   # …its partitions move
            check_assignment(group)
        group.add_consumer()
        await group.wait_caught_up()
        check_assignment(group)
        assert sorted(p for ps in group.assignment().values() for p in ps) == [0, 1, 2, 3]
        assert len(group.consumers) == 2
        assert len({d["consumer"] for d in group.deliveries}) >= 8   # they all worked
    assert worst == 1
    assert group.stats["rebalances"] >= 18
    for key, order in per_key(seen).items():
        assert first_deliveries_in_order(order), key
    assert {v["i"] for v in seen} == set(range(300))
    assert no_tasks_left()


async def test_rebalance_splits_partitions_when_a_consumer_joins_and_merges_when_it_leaves():
    bus = EventBus()
    bus.create_topic("orders", partitions=4)

    async def handle(event):
        pass

    async with bus.consumer_group("orders", "g", handle, consumers=1) as group:
        await asyncio.sleep(0)
        (first,) = group.consumers
        assert group.assignment() == {first: [0, 1, 2, 3]}
        second = group.add_consumer()
        await asyncio.sleep(0.01)
        assert group.assignment() == {first: [0, 2], second: [1, 3]}
        await group.stop_consumer(first)
        await asyncio.sleep(0.01)
        assert group.assignment() == {second: [0, 1, 2, 3]}


async def effects_db(ws):
    db = await ws.database("billing", synchronous="off")
    await db.execute("CREATE TABLE effects (event_id TEXT, key TEXT, i INTEGER)")

    async def work(db, event):
        await db.execute("INSERT INTO effects VALUES (?, ?, ?)",
                         (event.event_id, event.key, event.value["i"]))
    return db, work


async def test_crash_mid_batch_redelivers_and_the_idempotent_consumer_absorbs_duplicates(leakcheck):
    bus = EventBus()
    bus.create_topic("orders", partitions=2)
    async with Workspace() as ws:
        db, work = await effects_db(ws)
        consumer = await IdempotentConsumer(db, "billing", work).setup()
        async with bus.consumer_group("orders", "billing", consumer, consumers=2,
                                      batch_size=5) as group:
            victim = group.consumers[0]
            await group.crash(victim, after_events=3)      # 3 handled, none of them committed
            await publish_numbered(bus, "orders", 60, keys=6)
            await until(lambda: group.stats["crashes"] == 1)
            assert victim not in group.consumers
            group.add_consumer()                     # "the orchestrator restarts it"
            await group.wait_caught_up()
        rows = await db.fetchall("SELECT event_id, COUNT(*) FROM effects GROUP BY event_id")
        assert len(rows) == 60                       # nothing lost
        assert all(n == 1 for _, n in rows)          # exactly one effect per event
        assert consumer.stats["duplicates"] >= 3     # the redeliveries really happened
        deliveries = defaultdict(int)
        for d in group.deliveries:
            deliveries[d["event_id"]] += 1
        assert sum(n - 1 for n in deliveries.values()) >= 3
        order = per_key([{"key": k, "i": i} for _, k, i in
                         await db.fetchall("SELECT event_id, key, i FROM effects ORDER BY rowid")])
        assert all(o == sorted(o) for o in order.values())
    assert no_tasks_left()


async def test_without_idempotency_the_same_crash_applies_an_event_twice():
    """The contrast: at-least-once really does redeliver, so the dedupe above is needed."""
    bus = EventBus()
    bus.create_topic("orders", partitions=1)
    async with Workspace() as ws:
        db, work = await effects_db(ws)

        async def naive(event):
            await work(db, event)

        async with bus.consumer_group("orders", "billing", naive, batch_size=5) as group:
            await group.crash(group.consumers[0], after_events=3)
            await publish_numbered(bus, "orders", 10)
            await until(lambda: group.stats["crashes"] == 1)
            group.add_consumer()
            await group.wait_caught_up()
        (n,) = await db.fetchone("SELECT COUNT(*) FROM effects")
        assert n == 13


async def test_crash_now_in_the_middle_of_a_handler_rolls_back_and_redelivers():
    bus = EventBus()
    bus.create_topic("orders", partitions=1)
    async with Workspace() as ws:
        db, work = await effects_db(ws)
        entered = asyncio.Event()

        async def slow_work(db, event):
            await work(db, event)
            entered.set()
            await asyncio.sleep(3600 if event.offset == 0 and not crashed else 0)

        crashed = False
        consumer = await IdempotentConsumer(db, "billing", slow_work).setup()
        async with bus.consumer_group("orders", "billing", consumer) as group:
            await publish_numbered(bus, "orders", 3)
            await entered.wait()
            crashed = True
            await group.crash(group.consumers[0])          # killed inside its transaction
            await asyncio.sleep(0)
            assert group.consumers == [] and group.lag() == 3
            group.add_consumer()
            await group.wait_caught_up()
        rows = await db.fetchall("SELECT i FROM effects ORDER BY rowid")
        assert rows == [(0,), (1,), (2,)]
        assert consumer.stats["duplicates"] == 0     # the first try left no trace
    assert no_tasks_left()


async def test_at_most_once_loses_the_rest_of_the_batch_on_a_crash():
    results = {}
    for mode in ("before", "after"):
        bus = EventBus()
        bus.create_topic("orders", partitions=1)
        handled = []

        async def handle(event):
            handled.append(event.value["i"])

        async with bus.consumer_group("orders", "g", handle, commit=mode,
                                      batch_size=5) as group:
            await group.crash(group.consumers[0], after_events=2)
            await publish_numbered(bus, "orders", 10)
            await until(lambda: group.stats["crashes"] == 1)
            group.add_consumer()
            await group.wait_caught_up()
        results[mode] = handled
        assert group.lag() == 0                      # both modes look "done"
    assert set(results["before"]) == set(range(10)) - {2, 3, 4}  # lost, silently
    assert set(results["after"]) == set(range(10))   # at-least-once: none lost
    assert len(results["after"]) == 12               # …with 2 duplicates
    assert no_tasks_left()


async def test_lag_rises_while_the_consumer_is_stopped_and_drains_after(leakcheck):
    bus = EventBus()
    bus.create_topic("orders", partitions=3)
    got = []

    async def handle(event):
        got.append(event.value["i"])

    async with bus.lag_monitor(interval=0.002), \
            bus.consumer_group("orders", "billing", handle) as group:
        await publish_numbered(bus, "orders", 10)
        await group.wait_caught_up()
        await group.stop_consumer(group.consumers[0])
        t_stop = bus.clock() - bus.t0
        for i in range(30):                               # the outage
            await publish_numbered(bus, "orders", 1, start=10 + i)
            await asyncio.sleep(0.001)
        assert group.lag() == 30
        assert bus.lag("billing").lag.sum() == 30
        bus.sample_lag()                                  # one sample exactly at the peak
        t_restart = bus.clock() - bus.t0
        group.add_consumer()
        await group.wait_caught_up()
        await asyncio.sleep(0.005)
    total = bus.lag_history().groupby("t").lag.sum()
    outage = total[(total.index > t_stop) & (total.index <= t_restart)]
    assert len(outage) >= 5 and outage.is_monotonic_increasing and outage.iloc[-1] >= 25
    assert total.max() == 30 and total.iloc[-1] == 0
    assert sorted(got) == list(range(40))
    assert set(bus.lag_history().columns) >= {"t", "group", "topic", "partition", "end_offset",
                                    "committed", "lag"}
    assert no_tasks_left()


async def test_downstream_outage_makes_lag_that_drains_with_no_event_lost():
    bus = EventBus()
    bus.create_topic("orders", partitions=2)
    down = True
    got = []

    async def handle(event):
        if down:
            raise ConnectionError("payment service unavailable")
        got.append(event.value)

    async with bus.lag_monitor(interval=0.002), \
            bus.consumer_group("orders", "billing", handle, retry_delay=0.003) as group:
        await publish_numbered(bus, "orders", 20, keys=4)
        await asyncio.sleep(0.03)
        assert group.lag() == 20 and group.stats["failed"] >= 2
        down = False
        await group.wait_caught_up()
    assert [v["i"] for v in got if v["key"] == "k1"] == [1, 5, 9, 13, 17]
    assert sorted(v["i"] for v in got) == list(range(20))
    lag = bus.lag_history().groupby("t").lag.sum()
    assert lag.max() == 20 and lag.iloc[-1] == 0
    assert no_tasks_left()


async def test_leaving_the_block_on_error_or_cancellation_stops_every_consumer(leakcheck):
    bus = EventBus()
    bus.create_topic("orders", partitions=2)

    async def handle(event):
        await asyncio.sleep(3600)

    with pytest.raises(KeyError):
        async with bus.lag_monitor(), bus.consumer_group("orders", "g", handle,
                                                         consumers=2) as group:
            await bus.publish("orders", "a", 1)
            await asyncio.sleep(0.01)
            raise KeyError("experiment failed")
    assert no_tasks_left()
    assert group.consumers == []

    started = asyncio.Event()

    async def experiment():
        async with bus.consumer_group("orders", "g", handle, consumers=2):
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(experiment())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert no_tasks_left()
    assert bus.committed("g", "orders") == [0, 0]   # the unfinished event is still there


async def test_committed_offsets_outlive_the_group_and_a_new_group_starts_at_zero():
    bus = EventBus()
    bus.create_topic("orders", partitions=1)
    got = []

    async def handle(event):
        got.append((event.offset, event.value))

    for i in range(3):
        await bus.publish("orders", "a", i)
    async with bus.consumer_group("orders", "g", handle) as group:
        await group.wait_caught_up()
    await bus.publish("orders", "a", 3)
    async with bus.consumer_group("orders", "g", handle) as group:
        await group.wait_caught_up()
    assert got == [(0, 0), (1, 1), (2, 2), (3, 3)]
    async with bus.consumer_group("orders", "other", handle) as other:
        await other.wait_caught_up()
    assert len(got) == 8


async def test_bad_input_is_rejected_with_the_parameter_named():
    bus = EventBus()
    with pytest.raises(ValueError, match="topic"):
        bus.create_topic("", 1)
    for bad in (0, -1, 1.5):
        with pytest.raises((TypeError, ValueError), match="partitions"):
            bus.create_topic("t", bad)
    bus.create_topic("orders", 2)
    with pytest.raises(ValueError, match="topic"):
        bus.create_topic("orders", 2)
    with pytest.raises(ValueError, match="topic"):
        await bus.publish("nope", "k", 1)
    for key in ("", None, 3):
        with pytest.raises(ValueError, match="key"):
            await bus.publish("orders", key, 1)
    with pytest.raises(ValueError, match="event_id"):
        await bus.publish("orders", "k", 1, event_id="")
    with pytest.raises(ValueError, match="partition"):
        bus.events("orders", partition=2)
    with pytest.raises(ValueError, match="group"):
        bus.lag("unknown")
    with pytest.raises(ValueError, match="partitions"):
        partition_for("k", 0)

    async def handle(event):
        pass

    def sync_handler(event):
        pass

    bad_groups = [
        (dict(topic="nope"), "topic"),
        (dict(group="a b"), "group"),
        (dict(handler=sync_handler), "handler"),
        (dict(consumers=-1), "consumers"),
        (dict(commit="sometimes"), "commit"),
        (dict(batch_size=0), "batch_size"),
        (dict(retry_delay=-0.1), "retry_delay"),
    ]
    for change, param in bad_groups:
        kwargs = dict(topic="orders", group="g", handler=handle) | change
        with pytest.raises((TypeError, ValueError), match=param):
            bus.consumer_group(**kwargs)
    with pytest.raises(ValueError, match="interval"):
        async with bus.lag_monitor(interval=0):
            pass
    async with bus.consumer_group("orders", "g", handle) as group:
        with pytest.raises(ValueError, match="consumer"):
            await group.crash("g-99")
        with pytest.raises((TypeError, ValueError), match="after_events"):
            await group.crash(group.consumers[0], after_events=-1)
        with pytest.raises(ValueError, match="timeout"):
            await group.wait_caught_up(timeout=0)
        with pytest.raises(RuntimeError, match="already consuming"):
            async with bus.consumer_group("orders", "g", handle):
                pass
    with pytest.raises(RuntimeError, match="running group"):
        group.add_consumer()
    assert no_tasks_left()
