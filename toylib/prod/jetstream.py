"""The event bus on a real broker: NATS JetStream, with the toy :class:`EventBus`'s semantics.

Why JetStream and not Redis Streams? Both store a log and track a consumer group's
acknowledgements, but only JetStream *enforces* the two guarantees the course teaches on the
server: with ``max_ack_pending=1`` a consumer is handed the next message of a partition only
after the previous one was acknowledged, so **per-key order holds across consumers, crashes
and redeliveries**, and an unacknowledged message is **redelivered by the server** when its
``ack_wait`` runs out (the consumer died: Kafka's ``session.timeout.ms``). With Redis Streams a
client must do both: ``XAUTOCLAIM`` to take over a dead consumer's pending entries, and its own
partition assignment to keep order, since another consumer in the group reads past a pending
entry. The toy teaches the broker's guarantees, so the broker should keep them.

The mapping (Kafka's words on the left, as in the chapters):

* a **topic** with P partitions = P streams ``<ns>_<topic>_<p>`` (file storage); the stream
  sequence of a message is its partition **offset** + 1; a key's partition is the toy's
  stable :func:`~toylib.data.bus.partition_for`, so a key lands in the same partition on both;
* a **consumer group** = one durable pull consumer named after the group on each partition's
  stream (explicit acks, ``max_ack_pending=1``); its **committed offset** is the consumer's
  ack floor, kept by the server, so it outlives every consumer process;
* ``commit="after"``: handle, then ``ack`` (**at-least-once**: a death before the ack means a
  redelivery after ``ack_wait``); a failing handler ``nak``s with ``retry_delay`` and the
  partition waits behind it, as in the toy; ``commit="before"``: ack, then handle
  (**at-most-once**: a failure is lost, ``stats["lost"]``).

Where JetStream differs from the toy: the relay's duplicate publishes are *not* deduplicated
here (no ``Nats-Msg-Id`` header: the consumers must be idempotent, which is the lesson), and
a dead consumer's partitions resume after ``ack_wait``, not at once (the toy moves them at
once). ``async with JetStreamBus() as bus`` owns the connection and deletes the streams it
created; a process that attaches to another's streams (``namespace=``) deletes nothing.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import suppress

from toylib.core import validate as v
from toylib.data.bus import COMMIT_MODES, MAX_CONSUMERS, Event, EventBus, partition_for

FETCH_WAIT = 1.0          # s a pull request waits at the server for a message


class JetStreamBus(EventBus):
    """Topics as JetStream streams; ``publish`` is what the outbox relay calls, unchanged."""

    def __init__(self, *, url: str | None = None, namespace: str | None = None,
                 ack_wait: float = 1.0, clock=time.monotonic):
        super().__init__(clock=clock)
        from toylib.prod.services import nats_url
        self.url = url if url is not None else nats_url()
        if not isinstance(self.url, str) or not self.url.startswith("nats://"):
            raise ValueError(f"url must be a nats:// URL; got {url!r}")
        self.owner = namespace is None
        self.namespace = v.name("namespace", namespace or f"toylib_{uuid.uuid4().hex[:10]}")
        self.ack_wait = v.number("ack_wait", ack_wait, low=0.05, high=600)
        self.nc = None
        self.js = None
        self._ready: set[str] = set()

    async def __aenter__(self) -> JetStreamBus:
        import nats
        self.nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=2,
                                     allow_reconnect=False)
        self.js = self.nc.jetstream(timeout=10)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.nc is None:
            return
        try:
            if self.owner:
                for topic in self._ready:
                    for p in range(self.partitions(topic)):
                        with suppress(Exception):
                            await self.js.delete_stream(self.stream(topic, p))
        finally:
            nc, self.nc, self.js = self.nc, None, None
            await nc.drain() if nc.is_connected else await nc.close()

    # -- topics ------------------------------------------------------------------------------
    def stream(self, topic: str, partition: int) -> str:
        return f"{self.namespace}_{topic}_{partition}"

    def subject(self, topic: str, partition: int) -> str:
        return f"{self.namespace}.{topic}.{partition}"

    def _js(self):
        if self.js is None:
            raise RuntimeError("the bus is not connected; use `async with JetStreamBus() as bus`")
        return self.js

    async def ensure_topic(self, topic: str) -> None:
        """Create the topic's streams on the server (once; ``create_topic`` only records it)."""
        from nats.js.api import StorageType, StreamConfig
        if topic in self._ready:
            return
        js = self._js()
        for p in range(self.partitions(topic)):
            await js.add_stream(StreamConfig(name=self.stream(topic, p),
                                             subjects=[self.subject(topic, p)],
                                             storage=StorageType.FILE))
        self._ready.add(topic)

    async def publish(self, topic: str, key: str, value=None, *,
                      event_id: str | None = None) -> Event:
        """Append to the key's partition stream; returns when the server has stored it."""
        p = partition_for(key, self.partitions(topic))
        if event_id is not None and (not isinstance(event_id, str) or not event_id):
            raise ValueError(f"event_id must be a non-empty string or None; got {event_id!r}")
        await self.ensure_topic(topic)
        ack = await self._js().publish(
            self.subject(topic, p), json.dumps(value).encode(), stream=self.stream(topic, p),
            headers={"toylib-key": key, **({"toylib-event-id": event_id} if event_id else {})})
        offset = ack.seq - 1
        return Event(topic, p, offset, key, value, event_id or f"{topic}-{p}-{offset}",
                     self.clock() - self.t0)

    # -- offsets and lag (from the server, so async) ----------------------------------------
    async def end_offsets_async(self, topic: str) -> list[int]:
        await self.ensure_topic(topic)
        return [(await self._js().stream_info(self.stream(topic, p))).state.last_seq
                for p in range(self.partitions(topic))]

    async def committed_async(self, group: str, topic: str) -> list[int]:
        """The group's committed offset per partition: the consumer's ack floor."""
        v.name("group", group)
        await self.ensure_topic(topic)
        out = []
        for p in range(self.partitions(topic)):
            try:
                info = await self._js().consumer_info(self.stream(topic, p), group)
                out.append(info.ack_floor.stream_seq)
            except Exception:          # the group never consumed this partition
                out.append(0)
        return out

    async def total_lag_async(self, group: str, topic: str) -> int:
        ends, done = await self.end_offsets_async(topic), await self.committed_async(group, topic)
        return sum(e - c for e, c in zip(ends, done))

    def _server_side(self, what: str):
        raise NotImplementedError(f"{what} lives on the server for a JetStreamBus; await "
                                  f"{what}_async(...) instead")

    def end_offsets(self, topic):
        self._server_side("end_offsets")

    def committed(self, group, topic):
        self._server_side("committed")

    def total_lag(self, group, topic):
        self._server_side("total_lag")

    def events(self, topic, partition=None):
        self._server_side("events")

    def consumer_group(self, topic: str, group: str, handler, *, consumers: int = 1,
                       commit: str = "after", batch_size: int = 1,
                       retry_delay: float = 0.05) -> JetStreamGroup:
        return JetStreamGroup(self, topic, group, handler, consumers=consumers, commit=commit,
                              batch_size=batch_size, retry_delay=retry_delay)


class _Crash(BaseException):
    """A consumer dies: no ack, no goodbye (BaseException: the handler's except misses it)."""


class JetStreamGroup:
    """A consumer group on JetStream; ``async with`` owns its consumer tasks.

    Each consumer pulls from every partition; the server hands a partition's next message to
    one of them only after the previous one is acknowledged (``max_ack_pending=1``).
    """

    def __init__(self, bus: JetStreamBus, topic: str, group: str, handler, *,
                 consumers: int = 1, commit: str = "after", batch_size: int = 1,
                 retry_delay: float = 0.05):
        if not isinstance(bus, JetStreamBus):
            raise TypeError(f"bus must be a JetStreamBus; got {bus!r}")
        bus._log(topic)
        self.bus, self.topic, self.name = bus, topic, v.name("group", group)
        v.async_function("handler", handler)
        self.handler = handler
        self.initial_consumers = v.non_negative("consumers", consumers, integer=True,
                                                high=MAX_CONSUMERS)
        self.commit = v.one_of("commit", commit, COMMIT_MODES)
        v.number("batch_size", batch_size, low=1, high=1, integer=True)  # one in flight
        self.retry_delay = v.seconds("retry_delay", retry_delay, zero=True)
        self.deliveries: list[dict] = []
        self.stats = {"delivered": 0, "failed": 0, "lost": 0, "crashes": 0, "redelivered": 0}
        self.members: dict[str, list[asyncio.Task]] = {}
        self._countdown: dict[str, int] = {}
        self._dead: list[asyncio.Task] = []
        self._n = 0

    async def __aenter__(self) -> JetStreamGroup:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        await self.bus.ensure_topic(self.topic)
        for p in range(self.bus.partitions(self.topic)):
            await self.bus._js().add_consumer(self.bus.stream(self.topic, p), ConsumerConfig(
                durable_name=self.name, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL, max_ack_pending=1,
                ack_wait=self.bus.ack_wait, max_deliver=-1))
        for _ in range(self.initial_consumers):
            await self.add_consumer()
        return self

    async def __aexit__(self, *exc) -> None:
        tasks = [t for ts in self.members.values() for t in ts] + self._dead
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.members.clear()
        self._dead.clear()

    async def add_consumer(self) -> str:
        if len(self.members) >= MAX_CONSUMERS:
            raise RuntimeError(f"consumers must be at most {MAX_CONSUMERS} per group")
        member = f"{self.name}-{self._n}"
        self._n += 1
        subs = [await self.bus._js().pull_subscribe_bind(
                    durable=self.name, stream=self.bus.stream(self.topic, p))
                for p in range(self.bus.partitions(self.topic))]
        self.members[member] = [asyncio.create_task(self._pull(member, sub), name=member)
                                for sub in subs]
        return member

    async def crash(self, consumer: str, after_events: int = 0) -> None:
        """Kill ``consumer`` now (``after_events=0``) or right after its handler finishes
        ``after_events`` more events, before their ack; the server redelivers after
        ``ack_wait``."""
        v.one_of("consumer", consumer, self.members)
        n = v.non_negative("after_events", after_events, integer=True, high=v.MAX_ITEMS)
        if n:
            self._countdown[consumer] = n
            return
        await self._kill(consumer)

    async def _kill(self, consumer: str) -> None:
        await asyncio.gather(*self._die(consumer), return_exceptions=True)

    def _die(self, consumer: str) -> list[asyncio.Task]:
        """Cancel the consumer's other pulls at once (no ack from any of them)."""
        me = asyncio.current_task()
        others = [t for t in self.members.pop(consumer, []) if t is not me]
        for t in others:
            t.cancel()
        self._dead.extend(others)          # awaited when the group's block ends
        self.stats["crashes"] += 1
        return others

    async def _pull(self, member: str, sub) -> None:
        import nats.errors
        try:
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=FETCH_WAIT)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    await self._deliver(member, msg)
        finally:
            with suppress(Exception):
                await asyncio.shield(sub.unsubscribe())

    async def _deliver(self, member: str, msg) -> None:
        md = msg.metadata
        headers = msg.headers or {}
        offset = md.sequence.stream - 1
        event = Event(self.topic, int(msg.subject.rsplit(".", 1)[1]), offset,
                      headers.get("toylib-key", ""), json.loads(msg.data),
                      headers.get("toylib-event-id") or
                      f"{self.topic}-{msg.subject.rsplit('.', 1)[1]}-{offset}",
                      self.bus.clock() - self.bus.t0)
        row = dict(t=event.timestamp, consumer=member, partition=event.partition,
                   offset=offset, key=event.key, event_id=event.event_id, outcome="ok",
                   delivery=md.num_delivered)
        self.deliveries.append(row)
        if md.num_delivered > 1:
            self.stats["redelivered"] += 1
        if self.commit == "before":
            await msg.ack_sync()
        try:
            await self.handler(event)
        except Exception as e:
            row["outcome"] = f"error: {type(e).__name__}"
            self.stats["failed"] += 1
            if self.commit == "before":
                self.stats["lost"] += 1
            else:
                await msg.nak(delay=self.retry_delay)
            return
        self.stats["delivered"] += 1
        if member in self._countdown:
            self._countdown[member] -= 1
            if self._countdown[member] == 0:
                del self._countdown[member]
                self._die(member)
                raise asyncio.CancelledError      # this task dies before its ack
        if self.commit == "after":
            await msg.ack_sync()

    def lag(self):
        raise NotImplementedError("await lag_async() on a JetStream group")

    async def lag_async(self) -> int:
        return await self.bus.total_lag_async(self.name, self.topic)

    async def wait_caught_up(self, timeout: float = 5.0) -> None:
        """Wait until every published event is acknowledged (lag 0), or raise TimeoutError."""
        v.seconds("timeout", timeout)
        async with asyncio.timeout(timeout):
            while await self.lag_async() > 0:
                await asyncio.sleep(0.02)

    def deliveries_frame(self):
        import pandas as pd
        return pd.DataFrame(self.deliveries, columns=["t", "consumer", "partition", "offset",
                                                      "key", "event_id", "outcome", "delivery"])
