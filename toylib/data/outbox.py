"""Transactional outbox, its relay, and the idempotent consumer at the other end.

The problem: a service must change its own data *and* tell the others (publish an event).
Doing both as two steps loses one of them on a crash in between (the "dual write"). The
outbox writes the event as a row of the service's own database in the *same local
transaction* as the business change: both commit or neither does. A **relay** then reads
unpublished rows, publishes them to the bus and marks them published. A crash between
"publish" and "mark" makes the relay publish that row again after it restarts, so the relay
gives at-least-once delivery, and consumers must be **idempotent**: an
:class:`IdempotentConsumer` records each event id in a ``processed_events`` table in the same
transaction as its work, so a duplicate changes nothing.

Production: the relay is a poller like this one or change data capture (Debezium reading the
database log); the dedupe table is the same idea as here.
"""
from __future__ import annotations

import asyncio
import json
import time
import weakref
from contextlib import suppress

from toylib.core import validate as v
from toylib.data.bus import EventBus
from toylib.data.db import Database

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,          -- JSON
    created_at   REAL NOT NULL,
    published_at REAL                    -- NULL until the relay has published it
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (published_at, seq);
"""

# The bus each database's outbox rows go to, learnt from ``Outbox(bus=...)`` or from a relay
# (weak: it never keeps a closed experiment's database or bus alive). ``emit`` checks topics
# against it, so a misspelt topic fails the writer's transaction instead of stalling the relay.
_BUS_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

PROCESSED_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
"""


class Outbox:
    """The outbox table of one service's database.

    ``source`` prefixes event ids (``orders:1``, ``orders:2``…): deterministic, so a replayed
    experiment shows the same ids. ``bus`` (or the first relay made for this database) is
    where the rows will be published: from then on :meth:`emit` refuses a topic that bus
    does not have, inside the caller's transaction, so nothing is stored for it.
    """

    def __init__(self, db: Database, *, source: str | None = None, clock=time.time,
                 bus: EventBus | None = None):
        if not isinstance(db, Database):
            raise TypeError(f"db must be a toylib.data.db.Database; got {db!r}")
        if bus is not None and not isinstance(bus, EventBus):
            raise TypeError(f"bus must be an EventBus or None; got {bus!r}")
        self.db = db
        if bus is not None:
            _BUS_OF[db] = bus
        self.source = v.name("source", source if source is not None else db.owner)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock

    async def setup(self) -> Outbox:
        await self.db.executescript(OUTBOX_SCHEMA)
        return self

    async def emit(self, topic: str, key: str, value) -> str:
        """Add an event row; call it inside ``db.transaction()`` with the business change.

        Refuses to run outside a transaction: an event committed on its own is exactly the
        dual write the outbox exists to avoid. Returns the event id.
        """
        v.name("topic", topic)
        if not isinstance(key, str) or not key or len(key) > 1000:
            raise ValueError(f"key must be a non-empty string of at most 1000 characters; "
                             f"got {key!r:.80}")
        try:
            payload = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"value must be JSON-serialisable; got {value!r} ({e})") from None
        if not self.db.in_transaction:
            raise RuntimeError("emit() must run inside `async with db.transaction():` so the "
                               "event commits together with the business change")
        bus = _BUS_OF.get(self.db)
        if bus is not None and not bus.has_topic(topic):
            # Raised inside the caller's transaction: it rolls back, so neither the business
            # change nor a row the relay could never publish is stored.
            raise ValueError(f"topic must be a topic of the bus this outbox publishes to "
                             f"({', '.join(map(repr, bus.topics)) or 'none yet'}); got {topic!r}")
        (seq,) = await self.db.fetchone("SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox")
        event_id = f"{self.source}:{seq}"
        await self.db.execute(
            "INSERT INTO outbox (seq, event_id, topic, key, value, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)", (seq, event_id, topic, key, payload, self.clock()))
        return event_id

    async def write(self, sql: str, params, *, topic: str, key: str, value) -> str:
        """The whole pattern in one call: one business statement + its event, one transaction."""
        async with self.db.transaction():
            await self.db.execute(sql, params)
            return await self.emit(topic, key, value)

    async def pending(self) -> int:
        """Rows not yet marked published."""
        (n,) = await self.db.fetchone("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        return n

    async def rows(self):
        """The outbox table as a DataFrame."""
        return await self.db.dataframe("SELECT * FROM outbox ORDER BY seq")

    def relay(self, bus: EventBus, *, interval: float = 0.01, batch_size: int = 100,
              restart_delay: float = 0.0) -> Relay:
        return Relay(self, bus, interval=interval, batch_size=batch_size,
                     restart_delay=restart_delay)


class RelayCrashed(Exception):
    """Injected: the relay process died after publishing, before marking the row."""


class Relay:
    """Polls the outbox every ``interval`` s and publishes unpublished rows in order.

    Per row: publish, then mark published. ``crash_after_publish(n)`` arms a crash right after
    the next ``n``-th publish (before its mark); the relay then restarts after
    ``restart_delay`` with no memory (its only state is the table) and publishes that row
    again. ``async with`` owns the relay task.
    """

    def __init__(self, outbox: Outbox, bus: EventBus, *, interval: float = 0.01,
                 batch_size: int = 100, restart_delay: float = 0.0):
        if not isinstance(outbox, Outbox):
            raise TypeError(f"outbox must be an Outbox; got {outbox!r}")
        if not isinstance(bus, EventBus):
            raise TypeError(f"bus must be an EventBus; got {bus!r}")
        self.outbox, self.bus = outbox, bus
        self.interval = v.seconds("interval", interval)
        self.batch_size = v.positive("batch_size", batch_size, integer=True, high=100_000)
        self.restart_delay = v.seconds("restart_delay", restart_delay, zero=True)
        _BUS_OF[outbox.db] = bus
        self.stats = {"published": 0, "crashes": 0}
        self._crash_countdown: int | None = None
        self._task: asyncio.Task | None = None
        self._bug: BaseException | None = None

    def crash_after_publish(self, n: int = 1) -> None:
        self._crash_countdown = v.positive("n", n, integer=True, high=v.MAX_ITEMS)

    async def __aenter__(self) -> Relay:
        self._task = asyncio.create_task(self._supervise(), name="outbox-relay")
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._bug is not None and exc is None:
            raise self._bug

    async def _supervise(self) -> None:
        """Run the relay; when it crashes, start it again (what a process supervisor does)."""
        try:
            while True:
                try:
                    await self._relay_forever()
                except RelayCrashed:
                    self.stats["crashes"] += 1
                    await asyncio.sleep(self.restart_delay)
        except Exception as e:     # e.g. a row for a topic the bus does not have
            self._bug = e

    async def _relay_forever(self) -> None:
        while True:
            if await self.relay_once() == 0:
                await asyncio.sleep(self.interval)

    async def relay_once(self) -> int:
        """One pass over up to ``batch_size`` unpublished rows; returns how many it handled."""
        db = self.outbox.db
        rows = await db.fetchall(
            "SELECT seq, event_id, topic, key, value FROM outbox WHERE published_at IS NULL "
            "ORDER BY seq LIMIT ?", (self.batch_size,))
        for seq, event_id, topic, key, value in rows:
            await self.bus.publish(topic, key, json.loads(value), event_id=event_id)
            self.stats["published"] += 1
            if self._crash_countdown is not None:
                self._crash_countdown -= 1
                if self._crash_countdown == 0:
                    self._crash_countdown = None
                    raise RelayCrashed(event_id)
            await db.execute("UPDATE outbox SET published_at = ? WHERE seq = ?",
                             (self.outbox.clock(), seq))
        return len(rows)

    async def wait_drained(self, timeout: float = 5.0) -> None:
        """Wait until every outbox row is marked published, or raise TimeoutError."""
        v.seconds("timeout", timeout)
        async with asyncio.timeout(timeout):
            while await self.outbox.pending() > 0:
                if self._bug is not None:
                    raise self._bug
                await asyncio.sleep(self.interval)


class IdempotentConsumer:
    """A bus handler that runs ``work(db, event)`` at most once per event id.

    The check, the work and the ``processed_events`` insert share one local transaction: if
    the work fails, the id is not recorded and a redelivery retries it; if it succeeded, a
    redelivery finds the id and does nothing. (Recording the id in a separate step would
    reopen the window this closes.)
    """

    def __init__(self, db: Database, consumer: str, work, *, clock=time.time):
        if not isinstance(db, Database):
            raise TypeError(f"db must be a toylib.data.db.Database; got {db!r}")
        self.db = db
        self.consumer = v.name("consumer", consumer)
        v.async_function("work", work)
        self.work = work
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock
        self.stats = {"processed": 0, "duplicates": 0}

    async def setup(self) -> IdempotentConsumer:
        await self.db.executescript(PROCESSED_SCHEMA)
        return self

    async def __call__(self, event) -> bool:
        """Handle ``event`` (anything with a string ``event_id``); False if it was a duplicate."""
        event_id = getattr(event, "event_id", None)
        if not isinstance(event_id, str) or not event_id:
            raise ValueError(f"event must have a non-empty string event_id; got {event!r}")
        async with self.db.transaction():
            seen = await self.db.fetchone(
                "SELECT 1 FROM processed_events WHERE consumer = ? AND event_id = ?",
                (self.consumer, event_id))
            if seen:
                self.stats["duplicates"] += 1
                return False
            await self.work(self.db, event)
            await self.db.execute(
                "INSERT INTO processed_events (consumer, event_id, processed_at) "
                "VALUES (?, ?, ?)", (self.consumer, event_id, self.clock()))
        self.stats["processed"] += 1
        return True
