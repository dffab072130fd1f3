"""An in-process event bus with Kafka's model, small enough to read in one sitting.

* A **topic** is split into **partitions**; each partition is an append-only log where every
  event gets the next **offset**. The partition is a stable hash of the event's key (CRC-32
  here, murmur2 in Kafka), so one key always lands in one partition and its events keep their
  order. There is no order *across* partitions.
* A **consumer group** reads a topic; within the group each partition has exactly one
  consumer. When consumers join or leave, partitions are re-assigned (a *rebalance*); a
  partition moves only after its old owner has let it go, so two consumers of one group never
  work on the same partition at once.
* The group's progress is its **committed offset** per partition, stored in the bus (like
  Kafka's ``__consumer_offsets``), so it outlives the consumers. ``commit="after"`` commits
  after the handler finished a batch: a crash before the commit makes the bus deliver those
  events again (**at-least-once**, so handlers must be idempotent). ``commit="before"``
  commits first: a crash loses the rest of the batch (**at-most-once**).
* **Lag** = log end offset − committed offset, per group and partition. ``lag_monitor``
  samples it over time; ``lag_history()`` is the DataFrame a chapter plots.

Handler failure policy (``commit="after"``): if the handler raises, the events of the batch
that succeeded are committed, the failed one is not, and the consumer pauses ``retry_delay``
seconds and tries it again, forever. Everything behind it waits (the later events of that
partition, to keep their order, and the consumer's other partitions, as in a simple poll loop):
that is how a downstream outage turns into lag that drains once the dependency is back. With
``commit="before"`` a failed event is already committed, so it is lost (``stats["lost"]``).

Usage::

    bus = EventBus(); bus.create_topic("orders", partitions=4)
    async with bus.lag_monitor(), bus.consumer_group("orders", "billing", handle) as g:
        await bus.publish("orders", key="order-7", value={"total": 30}); await g.wait_caught_up()

What the toy leaves out: brokers, replication and acks; session timeouts (a crashed consumer's
partitions move at once, Kafka waits ``session.timeout.ms``); generation fencing of zombie
commits (not needed: the hand-off is strict); dead-letter topics; ``auto.offset.reset`` (a new
group always starts at offset 0, the earliest).
"""
from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from toylib.core import validate as v

COMMIT_MODES = ("after", "before")
MAX_PARTITIONS = v.MAX_PARTITIONS   # per topic: Kafka's own guidance is thousands per broker
MAX_CONSUMERS = 1000                # per group: one asyncio task each
MAX_BATCH = 100_000                 # events fetched at once
MAX_KEY = 1000                      # characters of an event key


@dataclass(frozen=True)
class Event:
    """One record in a partition log. ``event_id`` survives redelivery (dedupe on it)."""
    topic: str
    partition: int
    offset: int
    key: str
    value: Any
    event_id: str
    timestamp: float


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key``: a stable hash, the same in every process and every run.

    (Python's ``hash()`` of a str changes between runs, so it would not do.)
    """
    _key(key)
    v.positive("partitions", partitions, integer=True, high=MAX_PARTITIONS)
    return zlib.crc32(key.encode()) % partitions


def _key(key) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
        raise ValueError(f"key must be a non-empty string of at most {MAX_KEY} characters; "
                         f"got {shown}")
    return key


class EventBus:
    """Topics, partition logs, committed offsets and lag samples, all in one process."""

    def __init__(self, *, clock=time.monotonic):
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self.t0 = clock()
        self._logs: dict[str, list[list[Event]]] = {}
        self._committed: dict[tuple[str, str, int], int] = {}   # (group, topic, partition)
        self._groups: dict[tuple[str, str], ConsumerGroup] = {}  # running (group, topic)
        self._known_groups: dict[tuple[str, str], None] = {}     # ever seen, in order
        self._lag_rows: list[dict] = []

    # -- topics and producing ----------------------------------------------------------------
    def create_topic(self, topic: str, partitions: int = 1) -> None:
        v.name("topic", topic)
        v.positive("partitions", partitions, integer=True, high=MAX_PARTITIONS)
        if topic in self._logs:
            raise ValueError(f"topic must be a new topic name; {topic!r} already exists")
        self._logs[topic] = [[] for _ in range(int(partitions))]

    @property
    def topics(self) -> list[str]:
        return list(self._logs)

    def partitions(self, topic: str) -> int:
        return len(self._log(topic))

    def has_topic(self, topic) -> bool:
        """True if ``topic`` was created on this bus."""
        return isinstance(topic, str) and topic in self._logs

    def _log(self, topic: str) -> list[list[Event]]:
        if not self.has_topic(topic):
            known = ", ".join(map(repr, self._logs)) or "none yet (call create_topic)"
            raise ValueError(f"topic must be an existing topic ({known}); got {topic!r}")
        return self._logs[topic]

    async def publish(self, topic: str, key: str, value: Any = None, *,
                      event_id: str | None = None) -> Event:
        """Append an event to its key's partition and wake that topic's consumers.

        The id defaults to ``<topic>-<partition>-<offset>`` (deterministic). Pass
        ``event_id`` to republish the *same* event (an outbox relay retrying): it gets a new
        offset but keeps its id, so idempotent consumers can drop it.
        """
        log = self._log(topic)
        p = partition_for(_key(key), len(log))
        if event_id is not None and (not isinstance(event_id, str) or not event_id):
            raise ValueError(f"event_id must be a non-empty string or None; got {event_id!r}")
        offset = len(log[p])
        event = Event(topic, p, offset, key, value, event_id or f"{topic}-{p}-{offset}",
                      self.clock() - self.t0)
        log[p].append(event)
        for (_, t), group in self._groups.items():
            if t == topic:
                group._wake_all()
        return event

    def events(self, topic: str, partition: int | None = None) -> list[Event]:
        """The log (one partition, or all of them partition by partition)."""
        log = self._log(topic)
        if partition is None:
            return [e for part in log for e in part]
        v.number("partition", partition, low=0, high=len(log) - 1, integer=True)
        return list(log[partition])

    def end_offsets(self, topic: str) -> list[int]:
        return [len(part) for part in self._log(topic)]

    # -- consumer groups ---------------------------------------------------------------------
    def consumer_group(self, topic: str, group: str, handler, *, consumers: int = 1,
                       commit: str = "after", batch_size: int = 1,
                       retry_delay: float = 0.05) -> ConsumerGroup:
        """A group of ``consumers`` reading ``topic``; start it with ``async with``."""
        return ConsumerGroup(self, topic, group, handler, consumers=consumers, commit=commit,
                             batch_size=batch_size, retry_delay=retry_delay)

    def committed(self, group: str, topic: str) -> list[int]:
        """The group's committed offset per partition (0 for a partition never committed)."""
        v.name("group", group)
        n = len(self._log(topic))
        return [self._committed.get((group, topic, p), 0) for p in range(n)]

    def _commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        key = (group, topic, partition)
        self._committed[key] = max(self._committed.get(key, 0), offset)

    # -- lag ---------------------------------------------------------------------------------
    def lag(self, group: str | None = None):
        """Current lag per (group, topic, partition) as a DataFrame."""
        import pandas as pd
        v.optional(v.name, "group", group)
        return pd.DataFrame(self._lag_snapshot(group),
                            columns=["t", "group", "topic", "partition", "end_offset",
                                     "committed", "lag"])

    def total_lag(self, group: str, topic: str) -> int:
        v.name("group", group)
        ends, done = self.end_offsets(topic), self.committed(group, topic)
        return sum(e - c for e, c in zip(ends, done))

    def _lag_snapshot(self, group: str | None = None) -> list[dict]:
        if group is not None:
            v.one_of("group", group, sorted({g for g, _ in self._known_groups}))
        t = self.clock() - self.t0
        rows = []
        for g, topic in self._known_groups:
            if group is not None and g != group:
                continue
            for p, (end, done) in enumerate(zip(self.end_offsets(topic),
                                                self.committed(g, topic))):
                rows.append(dict(t=t, group=g, topic=topic, partition=p, end_offset=end,
                                 committed=done, lag=end - done))
        return rows

    def sample_lag(self) -> None:
        """Record one lag sample of every group (``lag_monitor`` calls this periodically)."""
        self._lag_rows.extend(self._lag_snapshot())

    def lag_history(self):
        """Every recorded sample: columns t, group, topic, partition, end_offset, committed,
        lag. Total lag of a group over time: ``df.groupby(["t", "group"]).lag.sum()``."""
        import pandas as pd
        return pd.DataFrame(self._lag_rows, columns=["t", "group", "topic", "partition",
                                                     "end_offset", "committed", "lag"])

    @asynccontextmanager
    async def lag_monitor(self, interval: float = 0.01):
        """Sample lag every ``interval`` seconds while the block runs (once more at the end)."""
        v.number("interval", interval, low=0.0005, high=v.MAX_SECONDS)

        async def sample_forever():
            while True:
                self.sample_lag()
                await asyncio.sleep(interval)

        task = asyncio.create_task(sample_forever(), name="lag-monitor")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.sample_lag()


class ConsumerCrashed(Exception):
    """Raised inside a consumer to simulate a crash: no commit, no goodbye."""


@dataclass
class _Member:
    """One consumer of a group: its task and the partitions it currently owns."""
    id: str
    task: asyncio.Task | None = None
    owned: set[int] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    crash_countdown: int | None = None   # crash after this many more handled events


class ConsumerGroup:
    """Consumers of one topic sharing its partitions; ``async with`` owns their tasks.

    Leaving the block (normally, on error, on cancellation) cancels every consumer task and
    waits for it: nothing keeps running. What was processed but not committed is redelivered
    to whoever consumes the group next.
    """

    def __init__(self, bus: EventBus, topic: str, group: str, handler, *, consumers: int = 1,
                 commit: str = "after", batch_size: int = 1, retry_delay: float = 0.05):
        if not isinstance(bus, EventBus):
            raise TypeError(f"bus must be an EventBus; got {bus!r}")
        bus._log(topic)
        v.name("group", group)
        v.async_function("handler", handler)
        self.bus, self.topic, self.name, self.handler = bus, topic, group, handler
        self.initial_consumers = v.non_negative("consumers", consumers, integer=True,
                                                high=MAX_CONSUMERS)
        self.commit = v.one_of("commit", commit, COMMIT_MODES)
        self.batch_size = v.positive("batch_size", batch_size, integer=True, high=MAX_BATCH)
        self.retry_delay = v.seconds("retry_delay", retry_delay, zero=True)
        self.members: dict[str, _Member] = {}      # in join order: the assignment's order
        self.owner: dict[int, str | None] = {p: None for p in range(bus.partitions(topic))}
        self.deliveries: list[dict] = []
        self.stats = {"delivered": 0, "failed": 0, "lost": 0, "crashes": 0, "rebalances": 0}
        self._ids = itertools.count()
        self._progress = asyncio.Event()
        self._running = False
        self._bug: BaseException | None = None

    # -- scope -------------------------------------------------------------------------------
    async def __aenter__(self) -> ConsumerGroup:
        key = (self.name, self.topic)
        if key in self.bus._groups:
            raise RuntimeError(f"group {self.name!r} is already consuming {self.topic!r}")
        self.bus._groups[key] = self
        self.bus._known_groups[key] = None
        self._running = True
        for _ in range(self.initial_consumers):
            self.add_consumer()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._running = False
        tasks = [m.task for m in self.members.values() if m.task is not None]
        for task in tasks:
            task.cancel()
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.members.clear()
            self.owner = {p: None for p in self.owner}
            self.bus._groups.pop((self.name, self.topic), None)
        if self._bug is not None and exc is None:
            raise self._bug

    # -- membership --------------------------------------------------------------------------
    def add_consumer(self) -> str:
        """Start one more consumer; partitions are rebalanced. Returns its id."""
        if not self._running:
            raise RuntimeError("add_consumer needs a running group (inside `async with`)")
        if len(self.members) >= MAX_CONSUMERS:
            raise RuntimeError(f"consumers must be at most {MAX_CONSUMERS} per group; the group "
                               f"{self.name!r} already has {len(self.members)}")
        member = _Member(f"{self.name}-{next(self._ids)}")
        self.members[member.id] = member
        member.task = asyncio.create_task(self._run_member(member), name=member.id)
        self._rebalance()
        return member.id

    async def stop_consumer(self, consumer: str) -> None:
        """Graceful leave: finish the current batch, commit, release partitions, exit."""
        member = self._member(consumer)
        member.stopping = True
        member.wake.set()
        await asyncio.gather(member.task, return_exceptions=True)

    async def crash(self, consumer: str, after_events: int = 0) -> None:
        """Crash ``consumer`` now, or right after its handler finishes ``after_events`` more
        events, before the commit. No commit, no goodbye; its partitions move at once.

        ``after_events=0`` kills its task wherever it is (mid-handler: the handler's own
        transaction rolls back) and returns once it is gone; otherwise this only arms the
        crash and returns.
        """
        member = self._member(consumer)
        v.non_negative("after_events", after_events, integer=True, high=v.MAX_ITEMS)
        if after_events == 0:
            member.crash_countdown = 0    # _run_member: a cancel with countdown 0 is a crash
            member.task.cancel()
            await asyncio.gather(member.task, return_exceptions=True)
        else:
            member.crash_countdown = int(after_events)

    @property
    def consumers(self) -> list[str]:
        return list(self.members)

    def assignment(self) -> dict[str, list[int]]:
        """Partitions each consumer owns right now (exactly one owner per owned partition)."""
        return {m.id: sorted(m.owned) for m in self.members.values()}

    def _member(self, consumer: str) -> _Member:
        if not isinstance(consumer, str) or consumer not in self.members:
            raise ValueError(f"consumer must be one of the group's running consumers "
                             f"{list(self.members)}; got {consumer!r}")
        return self.members[consumer]

    def _target(self, partition: int) -> str | None:
        """Round-robin assignment over the members in join order (Kafka's RoundRobinAssignor;
        production prefers cooperative-sticky, which moves fewer partitions)."""
        alive = [m for m in self.members.values() if not m.stopping]
        return alive[partition % len(alive)].id if alive else None

    def _rebalance(self) -> None:
        self.stats["rebalances"] += 1
        self._wake_all()

    def _leave(self, member: _Member) -> None:
        for p in member.owned:
            self.owner[p] = None
        member.owned.clear()
        self.members.pop(member.id, None)
        if self._running:
            self._rebalance()

    def _wake_all(self) -> None:
        for m in self.members.values():
            m.wake.set()

    # -- the consumer loop -------------------------------------------------------------------
    async def _run_member(self, member: _Member) -> None:
        try:
            while not member.stopping:
                member.wake.clear()
                self._sync_ownership(member)
                worked = False
                for p in sorted(member.owned):
                    if member.stopping or self._target(p) != member.id:
                        break
                    worked |= await self._poll(member, p)
                if not worked:
                    await member.wake.wait()
        except ConsumerCrashed:
            self.stats["crashes"] += 1
        except asyncio.CancelledError:
            if member.crash_countdown == 0 and self._running:
                self.stats["crashes"] += 1     # crash(after_events=0): swallow our own cancel
            else:
                raise
        except Exception as e:                # a bug in the bus, not in the handler
            self._bug = e
        finally:
            self._leave(member)

    def _sync_ownership(self, member: _Member) -> None:
        """Give back partitions that moved away; take assigned ones once they are free."""
        for p in list(member.owned):
            if self._target(p) != member.id:
                member.owned.discard(p)
                self.owner[p] = None
                self._wake_all()                # the new owner may be waiting for it
        for p in self.owner:
            if self._target(p) == member.id and self.owner[p] is None:
                self.owner[p] = member.id
                member.owned.add(p)

    async def _poll(self, member: _Member, p: int) -> bool:
        """Fetch one batch from partition ``p`` at the committed offset and process it.

        Returns True if there was anything to do.
        """
        start = self.bus.committed(self.name, self.topic)[p]
        batch = self.bus._log(self.topic)[p][start:start + self.batch_size]
        if not batch:
            return False
        if self.commit == "before":          # at-most-once: commit, then process
            self._commit(p, start + len(batch))
            for event in batch:
                if not await self._handle(member, event):
                    self.stats["lost"] += 1
                self._maybe_crash(member)
            return True
        done = start                          # at-least-once: process, then commit
        for event in batch:
            if not await self._handle(member, event):
                self._commit(p, done)
                await self._pause(member)
                return True
            done = event.offset + 1
            self._maybe_crash(member)         # a crash here skips the commit below
        self._commit(p, done)
        return True

    async def _handle(self, member: _Member, event: Event) -> bool:
        row = dict(t=self.bus.clock() - self.bus.t0, consumer=member.id,
                   partition=event.partition, offset=event.offset, key=event.key,
                   event_id=event.event_id, outcome="ok")
        self.deliveries.append(row)
        try:
            await self.handler(event)
        except Exception as e:                # the handler's failure: retry policy applies
            row["outcome"] = f"error: {type(e).__name__}"
            self.stats["failed"] += 1
            return False
        self.stats["delivered"] += 1
        return True

    def _maybe_crash(self, member: _Member) -> None:
        if member.crash_countdown:
            member.crash_countdown -= 1
            if member.crash_countdown == 0:
                member.crash_countdown = None
                raise ConsumerCrashed(member.id)

    async def _pause(self, member: _Member) -> None:
        """Wait ``retry_delay`` before retrying; a stop or rebalance cuts the wait short."""
        member.wake.clear()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the wait ends (CPython gh-86296), and crash() would then wait forever.
        try:
            async with asyncio.timeout(self.retry_delay):
                await member.wake.wait()
        except TimeoutError:
            pass

    def _commit(self, p: int, offset: int) -> None:
        self.bus._commit(self.name, self.topic, p, offset)
        self._progress.set()

    # -- observing ---------------------------------------------------------------------------
    def lag(self) -> int:
        """Total lag of the group over all partitions."""
        return self.bus.total_lag(self.name, self.topic)

    async def wait_caught_up(self, timeout: float = 5.0) -> None:
        """Wait until every published event is committed (lag 0), or raise TimeoutError."""
        v.seconds("timeout", timeout)
        async with asyncio.timeout(timeout):
            while self.lag() > 0:
                self._progress.clear()
                await self._progress.wait()

    def deliveries_frame(self):
        """Every delivery attempt: t, consumer, partition, offset, key, event_id, outcome."""
        import pandas as pd
        return pd.DataFrame(self.deliveries, columns=["t", "consumer", "partition", "offset",
                                                      "key", "event_id", "outcome"])
