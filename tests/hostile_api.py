"""The hostile-input census: toylib's public entry points fed wrong arguments.

Every entry point of the core, data and resilience layers (and the claims and present entry
points) is called with one parameter replaced by a wrong type, NaN, an infinity, a negative,
zero, a huge value or an unknown name, the others kept valid. Each call ends one of four ways:

* ``clear``: a ValueError or TypeError (or a toylib exception) whose message names the
  parameter: what a reader needs to fix the call;
* ``unclear``: any other exception (AttributeError, KeyError, OverflowError, MemoryError...)
  or a message that does not name the parameter;
* ``silent``: the call returned as if the argument were fine;
* ``hang``: no answer within ``TIMEOUT_S`` (checked for async calls by the event loop and for
  code that never yields by an interval timer).

``tests/test_hostile_api.py`` runs the same cases (and hypothesis-drawn ones) as a test. Run the
census on its own (each entry point in a subprocess with a memory limit, so a case that
allocates without bound fails fast instead of filling the machine)::

    python tests/hostile_api.py               # counts per layer, then every case not clear
    python tests/hostile_api.py --json        # the same as JSON
    python tests/hostile_api.py --in-process  # faster, one process (fine once nothing hangs)

Against another tree (e.g. the code before a change): ``PYTHONPATH=<tree> python ...``.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable

TIMEOUT_S = 3.0
DAY = 24 * 3600.0
BIG = 10 ** 7           # a size above this is refused by every bounded parameter


# -- what a valid argument is, per kind of parameter ------------------------------------------
def _real(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, Real):
        return False
    if isinstance(x, Integral):
        return True
    return math.isfinite(x)


def _integer(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, Integral):
        return True
    return _real(x) and float(x).is_integer()


def _name(x) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 100 and all(c.isalnum() or c in "_-" for c in x)


def seconds(zero=False, hi=DAY):
    return lambda x: _real(x) and (x >= 0 if zero else x > 0) and x <= hi


def number(lo=None, hi=None, lo_open=False):
    return lambda x: _real(x) and (lo is None or (x > lo if lo_open else x >= lo)) and \
        (hi is None or x <= hi)


def count(lo=1, hi=BIG):
    return lambda x: _integer(x) and lo <= x and (hi is None or x <= hi)


def _not_nan(x) -> bool:
    """A number, infinities included (a claimed or measured figure may be infinite)."""
    return isinstance(x, Real) and not isinstance(x, bool) and not (
        isinstance(x, float) and math.isnan(x))


def one_of(*allowed):
    return lambda x: isinstance(x, (str, int, float)) and not isinstance(x, bool) and \
        x in allowed


def optional(valid):
    return lambda x: x is None or valid(x)


NAME = _name


def _printable(x, limit=1000) -> bool:
    return isinstance(x, str) and 0 < len(x) <= limit and \
        all(ord(c) >= 0x20 and ord(c) != 0x7F for c in x)


def _hashable(x) -> bool:
    try:
        hash(x)
        return True
    except TypeError:
        return False


def _query(x) -> bool:
    return isinstance(x, dict) and all(
        isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
        for k, v in x.items())


def _headers(x) -> bool:
    return isinstance(x, dict) and all(_printable(k, 200) and _printable(v)
                                       for k, v in x.items())
PROB = number(0, 1)
SEED = count(-(2 ** 63), 2 ** 64 - 1)
BOOL = (lambda x: isinstance(x, bool))
STR = (lambda x: isinstance(x, str))
ANY = (lambda x: True)


class Opaque:
    """An object no parameter accepts."""

    def __repr__(self) -> str:
        return "Opaque()"


# Wrong arguments tried for every parameter (those valid for it are skipped).
BAD = [None, True, "x", "nosuch", "", [], {}, Opaque(), float("nan"), float("inf"),
       float("-inf"), -1, -0.5, 0, 0.5, 10 ** 12, -(10 ** 12), 1e300, 10 ** 400]


# -- entry points -----------------------------------------------------------------------------
@dataclass
class Entry:
    """One entry point: ``call(**kwargs)`` (sync or async) with valid ``base`` arguments and a
    validity predicate per parameter under test."""
    label: str
    layer: str
    call: Callable
    base: dict
    params: dict
    owned: bool = True          # False: a layer this census reports on but does not fix
    aliases: dict = field(default_factory=dict)   # param -> another name an error may use

    def cases(self, bad=BAD):
        for param, valid in self.params.items():
            for x in bad:
                if not valid(x):
                    yield param, x


ENTRIES: list[Entry] = []


def entry(label: str, layer: str, base: dict, /, owned: bool = True, aliases=None, **params):
    def register(fn):
        ENTRIES.append(Entry(label, layer, fn, base, params, owned, aliases or {}))
        return fn
    return register


# core.services ----------------------------------------------------------------------------
def _services():
    from toylib import Service, Store, Topology
    from toylib.core import services

    async def work(request):
        return {"ok": True}

    def two():
        a, b = Service("a"), Service("b")
        a.get("/y")(work)
        b.get("/y")(work)
        return a, b

    entry("Service", "core", dict(name="s", plane="service", label=None, uses=(),
                                  max_concurrency=None, when_full="wait", pool_size=10),
          name=NAME, plane=one_of("edge", "service", "state", "control"),
          label=optional(lambda x: isinstance(x, str) and len(x) <= 200),
          uses=lambda x: isinstance(x, (list, tuple, set, frozenset, dict))
          and all(map(_name, x)),
          max_concurrency=optional(count(hi=10_000)), when_full=one_of("wait", "reject"),
          pool_size=count(hi=10_000))(lambda **kw: Service(**kw))
    entry("Store", "core", dict(name="db", plane="state"), name=NAME,
          plane=one_of("edge", "service", "state", "control"))(lambda **kw: Store(**kw))
    entry("Service.route", "core", dict(method="GET", path="/y"),
          method=one_of("GET", "POST", "PUT", "DELETE", "PATCH"),
          path=lambda x: isinstance(x, str) and x.startswith("/"))(
        lambda **kw: Service("s").route(kw["method"], kw["path"]))
    entry("Topology", "core", dict(name="t", seed=0),
          name=lambda x: isinstance(x, str) and 0 < len(x) <= 200, seed=SEED)(
        lambda **kw: Topology(name=kw["name"], seed=kw["seed"]))

    @entry("Topology.call", "core",
           dict(target="a", method="GET", path="/y", caller="client", json=None, params=None,
                timeout=5, connect_timeout=None, trace_id=None, headers=None, raw=False),
           target=one_of("a", "b"), method=one_of("GET", "POST", "PUT", "DELETE", "PATCH"),
           path=lambda x: isinstance(x, str) and x.startswith("/") and not x.startswith("//")
           and not any(c in x for c in "\\#\r\n") and len(x) < 4096,
           caller=one_of("client", "a", "b"), json=_real_or_json,
           params=optional(_query),
           timeout=optional(seconds()), connect_timeout=optional(seconds()),
           trace_id=optional(lambda x: _printable(x, 200)), headers=optional(_headers),
           raw=BOOL)
    async def topo_call(**kw):
        async with Topology(*two()) as topo:
            args = dict(kw)
            return await topo.call(args.pop("target"), args.pop("method"), args.pop("path"),
                                   **args)

    @entry("Topology.service", "core", dict(name="a"), name=one_of("a", "b"))
    def topo_service(**kw):
        return Topology(*two()).service(kw["name"])

    @entry("Topology[name]", "core", dict(name="a"), name=one_of("a", "b"))
    def topo_getitem(**kw):
        return Topology(*two())[kw["name"]]

    @entry("Topology.spawn", "core", dict(coro=None), coro=lambda x: inspect.iscoroutine(x))
    async def topo_spawn(**kw):
        async with Topology(*two()) as topo:
            return topo.spawn(kw["coro"])

    @entry("sample_busy", "core", dict(every=0.01, rows=[], t0=0.0),
           every=seconds(), rows=lambda x: isinstance(x, list), t0=_real)
    async def sample_busy(**kw):
        svc = Service("s")
        task = asyncio.ensure_future(services.sample_busy(svc, kw["every"], kw["rows"],
                                                          kw["t0"]))
        try:
            await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()

    @entry("gather_or_cancel", "core", dict(aws=None), aws=inspect.isawaitable)
    async def gather(**kw):
        return await services.gather_or_cancel(kw["aws"])


def _real_or_json(x) -> bool:
    try:
        json.dumps(x, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


# core.faults, trace, deadline, clock, calibrate -----------------------------------------------
def _core_small():
    from toylib.core import calibrate, deadline, faults, trace
    from toylib.core.clock import FakeClock

    ms = number(0, DAY * 1000)
    entry("faults.Latency", "core", dict(ms=20, jitter_ms=0, distribution="uniform"),
          ms=ms, jitter_ms=number(0, 20), distribution=one_of(*faults.DISTRIBUTIONS))(
        lambda **kw: faults.Latency(**kw))
    entry("faults.SlowDown", "core", dict(ms_per_s=1, start_ms=0, max_ms=100),
          ms_per_s=ms, start_ms=ms, max_ms=number(0, DAY * 1000, lo_open=True))(
        lambda **kw: faults.SlowDown(**kw))
    entry("faults.Error", "core", dict(p=1.0, status=503), p=PROB,
          status=lambda x: _integer(x) and 400 <= x <= 599)(lambda **kw: faults.Error(**kw))
    entry("faults.Faults", "core", dict(service="s", seed=0), service=NAME, seed=SEED)(
        lambda **kw: faults.Faults(**kw))
    entry("Faults.add", "core", dict(toxic=faults.Hang(), route=None, toxicity=1.0, start=0.0,
                                     end=None),
          toxic=lambda x: isinstance(x, faults.TOXICS),
          route=optional(lambda x: isinstance(x, str) and x.startswith("/")), toxicity=PROB,
          start=seconds(zero=True), end=optional(seconds()))(
        lambda **kw: faults.Faults("s").add(kw.pop("toxic"), **kw))
    entry("Faults.reseed", "core", dict(seed=1), seed=SEED)(
        lambda **kw: faults.Faults("s").reseed(kw["seed"]))
    entry("Faults.remove", "core", dict(rule=None), rule=lambda x: False)(
        lambda **kw: faults.Faults("s").remove(kw["rule"]))
    entry("trace.Tracer", "core", dict(clock=None), clock=callable)(
        lambda **kw: trace.Tracer(kw["clock"]).df())
    entry("Tracer.df", "core", dict(spans=None), spans=optional(
        lambda x: isinstance(x, list) and not x))(lambda **kw: trace.Tracer().df(kw["spans"]))
    entry("deadline.Deadline", "core", dict(at=1.0), at=number(-1e15, 1e15))(
        lambda **kw: deadline.Deadline(kw["at"]).remaining())
    entry("Deadline.after", "core", dict(seconds=1.0), seconds=seconds())(
        lambda **kw: deadline.Deadline.after(kw["seconds"]))
    entry("Deadline.from_header", "core", dict(value="10"), aliases={"value": deadline.HEADER},
          value=lambda x: isinstance(x, str) and _parses(x, 0, DAY * 1000))(
        lambda **kw: deadline.Deadline.from_header(kw["value"]))

    @entry("deadline.scope", "core", dict(deadline=None), deadline=lambda x: x is None)
    def scope(**kw):
        with deadline.scope(kw["deadline"]):
            return deadline.current()

    entry("FakeClock", "core", dict(t=0.0), t=number(-1e15, 1e15))(
        lambda **kw: FakeClock(kw["t"]))
    entry("FakeClock.advance", "core", dict(seconds=1.0), seconds=number(0, 1e15))(
        lambda **kw: FakeClock().advance(kw["seconds"]))
    entry("calibrate.loop_lag", "core", dict(seconds=0.02, interval=0.005),
          seconds=number(0.01, 30), interval=number(0.0005, 0.02))(
        lambda **kw: calibrate.loop_lag(**kw))
    @entry("calibrate.lag_during", "core", dict(seconds=0.02), seconds=number(0.01, 3600))
    async def lag_during(**kw):
        async with calibrate.lag_during(kw["seconds"]) as beside:
            pass
        return beside.lag

    entry("calibrate.Stalls", "core", dict(p=0.05, ms=40.0, every_s=0.01, seed=0),
          p=PROB, ms=number(0, 1000), every_s=number(0.001, 10), seed=SEED)(
        lambda **kw: calibrate.Stalls(**kw))


def _parses(s: str, lo: float, hi: float) -> bool:
    try:
        x = float(s)
    except ValueError:
        return False
    return math.isfinite(x) and lo <= x <= hi


# core.load ---------------------------------------------------------------------------------
async def _ok(i):
    return None


def _load():
    from toylib.core import load

    common = dict(n=count(hi=10 ** 6), max_seconds=seconds(), label=STR,
                  progress=optional(BOOL), fn=lambda x: x is _ok)
    base = dict(fn=_ok, n=3, max_seconds=0.5, label="", progress=False)
    entry("load.sequential", "core", base, **common)(lambda **kw: load.sequential(**kw))
    entry("load.closed_loop", "core", {**base, "concurrency": 2},
          concurrency=count(hi=10_000), **common)(lambda **kw: load.closed_loop(**kw))
    entry("load.open_loop", "core", {**base, "rate": 100, "arrivals": "uniform", "seed": 0},
          rate=number(0, 1e5, lo_open=True), arrivals=one_of("uniform", "poisson"), seed=SEED,
          **common)(lambda **kw: load.open_loop(**kw))

    @entry("LoadResult.summary", "core", dict(percentiles=(50,)),
           percentiles=lambda x: isinstance(x, (list, tuple)) and x and all(
               number(0, 100)(p) for p in x))
    async def summary(**kw):
        res = await load.sequential(_ok, n=2, max_seconds=1)
        return res.summary(kw["percentiles"])

    entry("load.summarize", "core", dict(results=None), results=lambda x: False)(
        lambda **kw: load.summarize(kw["results"]))


# data ---------------------------------------------------------------------------------------
async def _handler(event):
    return None


async def _work(db, event):
    return None


async def _step(ctx, key):
    return None


def _zero() -> float:
    return 0.0


_DEFAULT = Opaque()     # "use the entry's own valid value" (never one of the BAD values)


def _data():
    from toylib.data import bus as busmod
    from toylib.data import saga as sagamod
    from toylib.data.bus import EventBus
    from toylib.data.db import Database, Workspace
    from toylib.data.outbox import IdempotentConsumer, Outbox
    from toylib.data.status import StatusStore

    def bus_with(topic="t", partitions=2):
        bus = EventBus()
        bus.create_topic(topic, partitions=partitions)
        return bus

    entry("EventBus", "data", dict(clock=None), clock=callable)(
        lambda **kw: EventBus(clock=kw["clock"]))
    entry("EventBus.create_topic", "data", dict(topic="t", partitions=2), topic=NAME,
          partitions=count(hi=BIG))(lambda **kw: EventBus().create_topic(**kw))
    entry("partition_for", "data", dict(key="k", partitions=2),
          key=lambda x: isinstance(x, str) and 0 < len(x) <= 1000, partitions=count())(
        lambda **kw: busmod.partition_for(**kw))
    entry("EventBus.publish", "data", dict(topic="t", key="k", value=None, event_id=None),
          topic=one_of("t"), key=lambda x: isinstance(x, str) and 0 < len(x) <= 1000,
          value=ANY, event_id=optional(lambda x: isinstance(x, str) and x))(
        lambda **kw: bus_with().publish(**kw))
    entry("EventBus.events", "data", dict(topic="t", partition=None), topic=one_of("t"),
          partition=optional(count(0, 1)))(lambda **kw: bus_with().events(**kw))
    entry("EventBus.partitions", "data", dict(topic="t"), topic=one_of("t"))(
        lambda **kw: bus_with().partitions(kw["topic"]))
    entry("EventBus.committed", "data", dict(group="g", topic="t"), group=NAME,
          topic=one_of("t"))(lambda **kw: bus_with().committed(**kw))
    entry("EventBus.total_lag", "data", dict(group="g", topic="t"), group=NAME,
          topic=one_of("t"))(lambda **kw: bus_with().total_lag(**kw))
    entry("EventBus.lag", "data", dict(group=None), group=lambda x: x is None)(
        lambda **kw: bus_with().lag(kw["group"]))

    @entry("EventBus.lag_monitor", "data", dict(interval=0.01), interval=seconds())
    async def lag_monitor(**kw):
        async with bus_with().lag_monitor(kw["interval"]):
            await asyncio.sleep(0.02)

    @entry("EventBus.consumer_group", "data",
           dict(topic="t", group="g", handler=_handler, consumers=1, commit="after",
                batch_size=1, retry_delay=0.05),
           topic=one_of("t"), group=NAME, handler=lambda x: x is _handler,
           consumers=count(0, 1000), commit=one_of("after", "before"), batch_size=count(),
           retry_delay=seconds(zero=True))
    async def consumer_group(**kw):
        bus = bus_with()
        async with bus.consumer_group(kw.pop("topic"), kw.pop("group"), kw.pop("handler"),
                                      **kw):
            await asyncio.sleep(0)

    @entry("ConsumerGroup.wait_caught_up", "data", dict(timeout=1.0), timeout=seconds())
    async def caught_up(**kw):
        bus = bus_with()
        async with bus.consumer_group("t", "g", _handler) as g:
            await g.wait_caught_up(kw["timeout"])

    @entry("ConsumerGroup.crash", "data", dict(consumer="g-0", after_events=1),
           consumer=one_of("g-0"), after_events=count(0))
    async def crash(**kw):
        bus = bus_with()
        async with bus.consumer_group("t", "g", _handler) as g:
            await g.crash(kw["consumer"], kw["after_events"])

    @entry("ConsumerGroup.stop_consumer", "data", dict(consumer="g-0"), consumer=one_of("g-0"))
    async def stop_consumer(**kw):
        bus = bus_with()
        async with bus.consumer_group("t", "g", _handler) as g:
            await g.stop_consumer(kw["consumer"])

    tmp = Path(tempfile.gettempdir())
    entry("Database", "data", dict(path=":memory:", owner="o", busy_timeout=1.0, wal=False,
                                   synchronous="normal"),
          path=lambda x: isinstance(x, (str, Path)) and x != "", owner=NAME,
          busy_timeout=seconds(zero=True, hi=3600), wal=BOOL,
          synchronous=one_of("off", "normal", "full"))(lambda **kw: Database(**kw))
    entry("Workspace", "data", dict(prefix="toylib-", busy_timeout=1.0, wal=False,
                                    synchronous="normal"),
          prefix=lambda x: _name(x), busy_timeout=seconds(zero=True, hi=3600), wal=BOOL,
          synchronous=one_of("off", "normal", "full"))(lambda **kw: Workspace(**kw))

    @entry("Workspace.database", "data", dict(name="d", owner=None, busy_timeout=None,
                                              wal=None, synchronous=None),
           name=NAME, owner=optional(NAME), busy_timeout=optional(seconds(zero=True, hi=3600)),
           wal=optional(BOOL), synchronous=optional(one_of("off", "normal", "full")))
    async def ws_database(**kw):
        async with Workspace() as ws:
            await ws.database(kw.pop("name"), **kw)

    @entry("Database.fetchall", "data", dict(sql="SELECT 1", params=()),
           params=lambda x: isinstance(x, (tuple, list, dict)))
    async def db_execute(**kw):
        async with Database(":memory:") as db:
            return await db.fetchall(kw["sql"], kw["params"])

    @entry("Outbox", "data", dict(source="o", clock=_zero), source=optional(NAME),
           clock=callable)
    async def outbox_new(**kw):
        async with Database(":memory:") as db:
            Outbox(db, source=kw["source"], clock=kw["clock"])

    @entry("Outbox.emit", "data", dict(topic="t", key="k", value={}),
           topic=one_of("t"), key=lambda x: isinstance(x, str) and 0 < len(x) <= 1000,
           value=_real_or_json)
    async def outbox_emit(**kw):
        async with Database(":memory:") as db:
            outbox = await Outbox(db).setup()
            outbox.relay(bus_with())
            async with db.transaction():
                await outbox.emit(**kw)

    @entry("Outbox.relay", "data", dict(interval=0.01, batch_size=10, restart_delay=0.0),
           interval=seconds(), batch_size=count(), restart_delay=seconds(zero=True))
    async def outbox_relay(**kw):
        async with Database(":memory:") as db:
            outbox = await Outbox(db).setup()
            async with outbox.relay(bus_with(), **kw) as relay:
                await relay.wait_drained(1)

    @entry("Relay.wait_drained", "data", dict(timeout=1.0), timeout=seconds())
    async def wait_drained(**kw):
        async with Database(":memory:") as db:
            outbox = await Outbox(db).setup()
            async with outbox.relay(bus_with()) as relay:
                await relay.wait_drained(kw["timeout"])

    @entry("Relay.crash_after_publish", "data", dict(n=1), n=count())
    async def crash_after(**kw):
        async with Database(":memory:") as db:
            Outbox(db).relay(bus_with()).crash_after_publish(kw["n"])

    @entry("IdempotentConsumer", "data", dict(consumer="c", work=_work),
           consumer=NAME, work=lambda x: x is _work)
    async def idem(**kw):
        async with Database(":memory:") as db:
            IdempotentConsumer(db, kw["consumer"], kw["work"])

    entry("saga.Step", "data", dict(name="s", action=_step, compensation=None, pivot=False,
                                    timeout=None),
          name=NAME, action=lambda x: x is _step, compensation=lambda x: x is None or x is _step,
          pivot=BOOL, timeout=optional(seconds()))(lambda **kw: sagamod.Step(**kw))
    entry("saga.SagaDefinition", "data", dict(name="d", steps=_DEFAULT),
          name=NAME, steps=lambda x: False)(
        lambda **kw: sagamod.SagaDefinition(kw["name"], kw["steps"] if kw["steps"] is not _DEFAULT
                                            else [sagamod.Step("s", _step, pivot=True)]))
    entry("saga.idempotency_key", "data", dict(saga_id="s", step="x", phase="do"),
          saga_id=NAME, step=NAME, phase=one_of("do", "undo"))(
        lambda **kw: sagamod.idempotency_key(**kw))
    entry("saga.backoff_delay", "data", dict(attempt=1, rng=random.Random(0), base=0.1, cap=1.0),
          attempt=count(hi=1000), rng=lambda x: isinstance(x, random.Random),
          base=seconds(zero=True), cap=number(0.1, DAY))(
        lambda **kw: sagamod.backoff_delay(kw.pop("attempt"), kw.pop("rng"), **kw))

    def definition():
        return sagamod.SagaDefinition("d", [sagamod.Step("s", _step, pivot=True)])

    @entry("SagaOrchestrator", "data", dict(max_attempts=3, base_delay=0.01, max_delay=1.0,
                                            seed=0),
           max_attempts=count(hi=1000), base_delay=seconds(zero=True),
           max_delay=number(0.01, DAY), seed=SEED)
    async def orchestrator(**kw):
        async with Database(":memory:") as db:
            sagamod.SagaOrchestrator(db, definition(), **kw)

    @entry("SagaOrchestrator.start", "data", dict(definition="d", context=None, saga_id=None),
           definition=one_of("d"), context=optional(lambda x: isinstance(x, dict)
                                                    and _real_or_json(x)),
           saga_id=optional(NAME))
    async def saga_start(**kw):
        async with Database(":memory:") as db:
            async with sagamod.SagaOrchestrator(db, definition()) as orch:
                sid = await orch.start(kw.pop("definition"), kw.pop("context"), **kw)
                await orch.wait(sid, 2)

    @entry("SagaOrchestrator.wait", "data", dict(saga_id="d-1", timeout=1.0),
           saga_id=one_of("d-1"), timeout=optional(seconds()))
    async def saga_wait(**kw):
        async with Database(":memory:") as db:
            async with sagamod.SagaOrchestrator(db, definition()) as orch:
                await orch.start("d")
                return await orch.wait(kw["saga_id"], kw["timeout"])

    @entry("StatusStore.set", "data", dict(request_id="req-1", status="in_progress",
                                           detail=None),
           request_id=one_of("req-1"), status=one_of("in_progress", "failed"),
           detail=optional(STR))
    async def status_set(**kw):
        async with Database(":memory:") as db:
            store = await StatusStore(db).setup()
            await store.accept()
            await store.set(**kw)

    @entry("StatusStore.accept", "data", dict(request_id=None), request_id=optional(NAME))
    async def status_accept(**kw):
        async with Database(":memory:") as db:
            store = await StatusStore(db).setup()
            await store.accept(kw["request_id"])

    @entry("StatusStore.get", "data", dict(request_id="req-1"), request_id=one_of("req-1"))
    async def status_get(**kw):
        async with Database(":memory:") as db:
            store = await StatusStore(db).setup()
            await store.accept()
            return await store.get(kw["request_id"])

    entry("StatusStore", "data", dict(prefix="req"), prefix=NAME)(
        lambda **kw: _status_store(**kw))
    _ = tmp


async def _status_store(**kw):
    from toylib.data.db import Database
    from toylib.data.status import StatusStore
    async with Database(":memory:") as db:
        StatusStore(db, prefix=kw["prefix"])


# resilience ---------------------------------------------------------------------------------
async def _fn():
    return 1


async def _probe():
    return True


async def _batch(keys):
    return list(keys)


def _resilience():
    from toylib.resilience import breaker, bulkhead, cache, fallback, health, ratelimit, retry
    from toylib.resilience.batcher import Batcher

    pct = number(0, 100, lo_open=True)
    entry("CircuitBreaker", "resilience",
          dict(name="b", failure_rate_threshold=50.0, slow_call_rate_threshold=100.0,
               slow_call_duration=1.0, window_type="count", window_size=10, minimum_calls=5,
               wait_in_open=1.0, permitted_in_half_open=2),
          name=NAME, failure_rate_threshold=pct, slow_call_rate_threshold=pct,
          slow_call_duration=optional(number(0)), window_type=one_of("count", "time"),
          window_size=count(), minimum_calls=count(), wait_in_open=seconds(),
          permitted_in_half_open=count())(lambda **kw: breaker.CircuitBreaker(kw.pop("name"),
                                                                              **kw))
    entry("CircuitBreaker.consecutive", "resilience", dict(name="b", fail_max=3,
                                                           reset_timeout=1.0),
          name=NAME, fail_max=count(), reset_timeout=seconds())(
        lambda **kw: breaker.CircuitBreaker.consecutive(kw.pop("name"), **kw))
    entry("CircuitBreaker.on_success", "resilience", dict(duration=0.1), duration=number(0))(
        lambda **kw: breaker.CircuitBreaker("b").on_success(kw["duration"]))
    entry("CircuitBreaker.on_error", "resilience", dict(duration=0.1, exc=ValueError()),
          duration=number(0), exc=lambda x: isinstance(x, BaseException))(
        lambda **kw: breaker.CircuitBreaker("b").on_error(kw["duration"], kw["exc"]))
    entry("CircuitBreaker.add_listener", "resilience", dict(callback=print), callback=callable)(
        lambda **kw: breaker.CircuitBreaker("b").add_listener(kw["callback"]))
    entry("CircuitBreaker.call", "resilience", dict(fn=_fn), fn=callable)(
        lambda **kw: breaker.CircuitBreaker("b").call(kw["fn"]))
    entry("Bulkhead", "resilience", dict(name="b", max_concurrent=2), name=NAME,
          max_concurrent=count(hi=10_000))(lambda **kw: bulkhead.Bulkhead(**kw))
    entry("Bulkhead.call", "resilience", dict(fn=_fn), fn=callable)(
        lambda **kw: bulkhead.Bulkhead("b").call(kw["fn"]))
    entry("TTLCache", "resilience", dict(ttl=1.0, max_entries=10), ttl=seconds(),
          max_entries=count())(lambda **kw: cache.TTLCache(kw.pop("ttl"), **kw))
    entry("ttl_hit_rate", "resilience", dict(rates=[1.0], ttl=1.0),
          rates=lambda x: isinstance(x, list) and x and all(number(0, 1e5)(r) for r in x)
          and sum(x) > 0, ttl=seconds())(lambda **kw: cache.ttl_hit_rate(**kw))
    entry("FallbackCache", "resilience", dict(max_age=None), max_age=optional(seconds()))(
        lambda **kw: fallback.FallbackCache(**kw))
    entry("FallbackCache.call", "resilience", dict(key="k", fn=_fn),
          key=_hashable, fn=callable)(
        lambda **kw: fallback.FallbackCache().call(kw["key"], kw["fn"]))
    entry("HealthChecker", "resilience",
          dict(targets={"a": _probe}, interval=1.0, timeout=1.0, healthy_threshold=1,
               unhealthy_threshold=3, start_healthy=True),
          targets=lambda x: isinstance(x, dict) and x and all(map(_name, x))
          and all(map(callable, x.values())),
          interval=seconds(), timeout=optional(seconds()), healthy_threshold=count(hi=1000),
          unhealthy_threshold=count(hi=1000), start_healthy=BOOL)(
        lambda **kw: health.HealthChecker(kw.pop("targets"), **kw))
    entry("HealthChecker.is_healthy", "resilience", dict(target="a"), target=one_of("a"))(
        lambda **kw: health.HealthChecker({"a": _probe}).is_healthy(kw["target"]))
    entry("RateLimiter", "resilience", dict(rate=10.0, burst=1.0),
          rate=number(0, 1e5, lo_open=True), burst=number(1, BIG))(
        lambda **kw: ratelimit.RateLimiter(**kw))
    entry("RateLimiter.try_acquire", "resilience", dict(tokens=1.0),
          tokens=number(0, 5, lo_open=True))(
        lambda **kw: ratelimit.RateLimiter(10, burst=5).try_acquire(kw["tokens"]))
    entry("backoff_delays", "resilience", dict(policy="full", base=0.1, cap=1.0, attempts=3,
                                               rng=random.Random(0)),
          policy=one_of(*retry.POLICIES), base=number(0, 1.0, lo_open=True),
          cap=number(0.1, DAY), attempts=count(0, 10 ** 6),
          rng=lambda x: isinstance(x, random.Random))(lambda **kw: retry.backoff_delays(**kw))
    entry("RetryBudget", "resilience", dict(ratio=0.1, burst=10.0, initial=None, per_second=0.0),
          ratio=PROB, burst=number(1, BIG), initial=optional(number(0, 10)),
          per_second=number(0, 1e5))(lambda **kw: retry.RetryBudget(**kw))
    entry("retry", "resilience",
          dict(fn=_fn, attempts=3, policy="full", base=0.01, cap=0.1, budget=None,
               retry_on=(Exception,), retryable=None, idempotent=True, rng=random.Random(0),
               stats=None, min_attempt=0.0),
          fn=lambda x: x is _fn, attempts=count(hi=1000), policy=one_of(*retry.POLICIES),
          base=number(0, 0.1, lo_open=True), cap=number(0.01, DAY),
          budget=lambda x: x is None or isinstance(x, retry.RetryBudget),
          retry_on=lambda x: x == (Exception,) or (isinstance(x, type)
                                                   and issubclass(x, BaseException)),
          retryable=optional(callable), idempotent=BOOL,
          rng=lambda x: isinstance(x, random.Random), stats=lambda x: x is None,
          min_attempt=seconds(zero=True))(lambda **kw: retry.retry(**kw))
    entry("Batcher", "resilience", dict(batch_fn=_batch, max_batch=10, cache=True),
          batch_fn=lambda x: x is _batch, max_batch=count(), cache=BOOL)(
        lambda **kw: Batcher(**kw))

    @entry("Batcher.load_many", "resilience", dict(keys=[1]),
           keys=lambda x: isinstance(x, (list, tuple, dict)) or (isinstance(x, str) and False))
    async def load_many(**kw):
        return await Batcher(_batch).load_many(kw["keys"])


# claims and present: entry points of layers this census reports on ---------------------------
DEFAULT = object()     # "use a real topology" (None is one of the hostile values)


def _claims_present():
    from toylib import claims
    from toylib.present import diagrams, plots, show, widgets

    est = claims.Estimate.exact(1.0)
    entry("Estimate.exact", "claims", dict(value=1.0, n=1), owned=False, value=_not_nan,
          n=count(hi=None))(lambda **kw: claims.Estimate.exact(**kw))
    entry("Estimate.proportion", "claims", dict(k=1, n=2, confidence=0.95), owned=False,
          k=count(0, 2), n=count(2, None), confidence=number(0.5, 0.999))(
        lambda **kw: claims.Estimate.proportion(**kw))
    entry("Estimate.trials", "claims", dict(values=[1.0]), owned=False,
          values=lambda x: isinstance(x, list) and x and all(map(_real, x)))(
        lambda **kw: claims.Estimate.trials(**kw))
    entry("wilson", "claims", dict(k=1, n=2, confidence=0.95), owned=False, k=count(0, 2),
          n=count(2, None), confidence=number(0.5, 0.999))(lambda **kw: claims.wilson(**kw))
    entry("Claim", "claims", dict(id="ch.x", aspect="a", source_says="s", quantity="q",
                                  claimed=2.0, tolerance=0.8), owned=False,
          id=lambda x: isinstance(x, str) and "." in x, claimed=_not_nan,
          tolerance=number(0, 1, lo_open=True))(lambda **kw: claims.Claim(**kw))
    entry("Claim.judge", "claims", dict(measured=est, ideal=None), owned=False,
          measured=lambda x: isinstance(x, claims.Estimate), ideal=optional(_not_nan))(
        lambda **kw: claims.Claim("ch.x", "a", "s", "q", 2.0).judge(
            kw["measured"], ideal=kw["ideal"]))
    entry("claims.table", "claims", dict(findings=None), owned=False,
          findings=lambda x: False)(lambda **kw: claims.table(kw["findings"]))
    entry("diagrams.flowchart", "present", dict(topology=DEFAULT, direction="LR"), owned=False,
          topology=lambda x: False, direction=one_of("LR", "TB", "RL", "BT"))(
        lambda **kw: diagrams.flowchart(_topology() if kw["topology"] is DEFAULT
                                        else kw["topology"], direction=kw["direction"]))
    entry("diagrams.sequence", "present", dict(spans=_spans(), collapse=4), owned=False,
          spans=lambda x: False, collapse=count(1, 1000))(
        lambda **kw: diagrams.sequence(kw["spans"], collapse=kw["collapse"]))
    entry("plots.percentiles", "present", dict(results={"a": [1.0, 2.0]}, ps=(50,)),
          owned=False,
          results=lambda x: False,
          ps=lambda x: isinstance(x, (list, tuple)) and all(number(0, 100)(p) for p in x))(
        lambda **kw: plots.percentiles(kw["results"], ps=kw["ps"]))
    entry("plots.measured_vs_ideal", "present", dict(x=[1, 2], measured={"a": [1.0, 2.0]}),
          owned=False, x=lambda x: isinstance(x, list) and len(x) == 2,
          measured=lambda x: False)(
        lambda **kw: plots.measured_vs_ideal(kw["x"], kw["measured"]))
    entry("widgets.panel", "present", dict(run=None), owned=False, run=lambda x: False)(
        lambda **kw: widgets.panel(kw["run"]))
    entry("show.source", "present", dict(objs=None), owned=False, objs=lambda x: False)(
        lambda **kw: show.source(kw["objs"]))
    entry("show.machine_check", "present", dict(seconds=0.02), owned=False,
          seconds=number(0.01, 30))(lambda **kw: show.machine_check(kw["seconds"]))


def _spans():
    from toylib.core.trace import Span, Tracer
    tracer = Tracer(clock=lambda: 0.0)
    tracer.record(Span("t1", 1, None, "client", "a", "GET", "/y", "/y", 0.0, 0.02, 200, 0, 2, 100))
    return tracer.df()


def _topology():
    from toylib import Service, Topology
    return Topology(Service("a"))


def load_entries() -> list[Entry]:
    """Every entry point (built once; each builder imports what it tests)."""
    if not ENTRIES:
        for build in (_services, _core_small, _load, _data, _resilience, _claims_present):
            try:
                build()
            except Exception as e:          # an API this tree does not have (an older one)
                print(f"skipped {build.__name__}: {type(e).__name__}: {e}", file=sys.stderr)
    return ENTRIES


# -- running one case -------------------------------------------------------------------------
class _Hang(BaseException):
    """Raised by the interval timer when a call never yields to the event loop."""


@dataclass
class Outcome:
    entry: str
    layer: str
    param: str
    value: str
    outcome: str            # clear | unclear | silent | hang
    detail: str = ""
    owned: bool = True


def _classify(names, error: BaseException) -> str:
    known = isinstance(error, (ValueError, TypeError)) or \
        type(error).__module__.startswith("toylib")
    deep = isinstance(error, (AttributeError, KeyError, IndexError, ZeroDivisionError,
                              OverflowError, MemoryError, RecursionError)) and \
        not type(error).__module__.startswith("toylib")
    return "clear" if known and not deep and any(names_the(n, str(error)) for n in names) \
        else "unclear"


def names_the(param: str, message: str) -> bool:
    """True if ``message`` names ``param`` as a word ("n must be", not the n in "an")."""
    return re.search(rf"(?<![\w.]){re.escape(param)}(?!\w)", message) is not None


def _short(x) -> str:
    r = repr(x) if not (isinstance(x, int) and abs(x) > 10 ** 30) else "10**400"
    return r if len(r) <= 60 else r[:57] + "..."


async def _run(e: Entry, kwargs: dict):
    result = e.call(**kwargs)
    if inspect.isawaitable(result):
        result = await asyncio.wait_for(result, TIMEOUT_S)
    return result


@contextmanager
def memory_cap(extra_mb: int = 2000):
    """Cap this process's address space at its current size plus ``extra_mb`` for the block,
    so a case that allocates without bound (a missing size limit) raises MemoryError here
    instead of taking the machine's memory from everything else running on it."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = size + extra_mb * 2 ** 20
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        if soft != resource.RLIM_INFINITY:
            cap = min(cap, soft)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_case(e: Entry, param: str, value) -> Outcome:
    """Call ``e`` with ``param=value`` (the rest valid) on a fresh event loop; classify."""
    kwargs = {**e.base, param: value}
    # a fresh copy of mutable defaults, so one case never sees another's state
    kwargs = {k: (list(v) if isinstance(v, list) and k != param else v)
              for k, v in kwargs.items()}

    def alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S + 1.0)
    outcome, detail = "silent", ""
    try:
        with warnings.catch_warnings(), memory_cap():
            warnings.simplefilter("ignore")
            asyncio.run(_run(e, kwargs))
    except (_Hang, asyncio.TimeoutError):
        outcome, detail = "hang", f"no answer within {TIMEOUT_S} s"
    except BaseException as err:     # noqa: B902 -- classifying every way a call can end
        if isinstance(err, KeyboardInterrupt):
            raise
        outcome = _classify((param, e.aliases.get(param, param)), err)
        detail = f"{type(err).__name__}: {str(err)[:160]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(e.label, e.layer, param, _short(value), outcome, detail, e.owned)


def census(entries=None, bad=BAD) -> list[Outcome]:
    return [run_case(e, p, x) for e in (entries or load_entries()) for p, x in e.cases(bad)]


def counts(outcomes: list[Outcome]) -> dict:
    """``{layer: {clear: n, unclear: n, silent: n, hang: n}}`` plus a ``total`` row."""
    table: dict[str, Counter] = {}
    for o in outcomes:
        table.setdefault(o.layer, Counter())[o.outcome] += 1
        table.setdefault("total", Counter())[o.outcome] += 1
    kinds = ("clear", "unclear", "silent", "hang")
    return {layer: {k: c[k] for k in kinds} for layer, c in table.items()}


def _limit_memory() -> None:
    """A case that allocates without bound fails fast (MemoryError) instead of filling the
    machine: the address space of a census process is capped (``HOSTILE_MEMORY_MB``)."""
    try:
        import resource
        limit = int(os.environ.get("HOSTILE_MEMORY_MB", "3000")) * 2 ** 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def _entry_in_subprocess(i: int, start: int, n_cases: int) -> tuple[list, str | None]:
    """Run entry ``i``'s cases from ``start`` in a fresh process, one JSON line per case.

    Returns the outcomes it reported and, if the process died or stopped answering before
    the last case, how: "died" or "timeout" (the case after the last reported one caused it).
    """
    import subprocess
    cmd = [sys.executable, __file__, "--entry", str(i), "--from", str(start)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    got: list[Outcome] = []
    how = None
    try:
        while start + len(got) < n_cases:
            # the first line also waits for the process to start (slow on a busy machine)
            line = _readline(proc, 4 * TIMEOUT_S + (120 if not got else 30))
            if line is None:
                how = "timeout"
                break
            if not line:
                how = "died"
                break
            got.append(Outcome(**json.loads(line)))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return got, how


def _readline(proc, timeout: float):
    """The next line of ``proc``'s output; "" at its end; None if none came within timeout."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return None
        return proc.stdout.readline()
    finally:
        sel.close()


def isolated_census() -> list[Outcome]:
    """The census with each entry point in its own process, so one case that exhausts memory
    or wedges the event loop cannot change the outcome of the next: when a process dies (e.g.
    out of memory: unclear) or stops answering (a hang), the case it was on is recorded so
    and a new process goes on from the next case."""
    outcomes: list[Outcome] = []
    for i, e in enumerate(load_entries()):
        cases = list(e.cases())
        start = 0
        while start < len(cases):
            got, how = _entry_in_subprocess(i, start, len(cases))
            outcomes += got
            start += len(got)
            if how is not None and start < len(cases):
                param, value = cases[start]
                outcomes.append(Outcome(e.label, e.layer, param, _short(value),
                                        "hang" if how == "timeout" else "unclear",
                                        "the process " + ("did not answer" if how == "timeout"
                                                          else "died (e.g. out of memory)"),
                                        e.owned))
                start += 1
    return outcomes


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _limit_memory()
    if "--entry" in argv:          # one entry point's cases from --from on, a JSON line each
        e = load_entries()[int(argv[argv.index("--entry") + 1])]
        start = int(argv[argv.index("--from") + 1]) if "--from" in argv else 0
        for p, x in list(e.cases())[start:]:
            print(json.dumps(run_case(e, p, x).__dict__), flush=True)
        return 0
    outcomes = census() if "--in-process" in argv else isolated_census()
    if "--json" in argv:
        print(json.dumps({"counts": counts(outcomes),
                          "cases": [o.__dict__ for o in outcomes if o.outcome != "clear"]},
                         indent=1))
        return 0
    print(f"{'layer':<12}{'clear':>8}{'unclear':>9}{'silent':>8}{'hang':>6}")
    for layer, c in counts(outcomes).items():
        print(f"{layer:<12}{c['clear']:>8}{c['unclear']:>9}{c['silent']:>8}{c['hang']:>6}")
    for o in outcomes:
        if o.outcome != "clear":
            print(f"{o.outcome:8} {o.layer:10} {o.entry}({o.param}={o.value}) {o.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
