"""Appendix: from toy to production. The same designs on PostgreSQL, NATS JetStream and OS
processes, measured beside the toy in the same run.

Experiments (each runs the *same* design code on both backends, interleaved per repeat):

* :func:`pipeline`: chapters 1 and 4's event-driven order flow: the order and its outbox row
  in one local transaction (*accepted*), the relay publishes it, billing's idempotent consumer
  charges it (*completed*). Latency to accept, to complete, and throughput;
* :func:`outage`: billing fails for ``outage_s`` while orders keep coming: lag grows during
  the outage and drains after it, on both buses;
* :func:`contention`: chapter 3's shared database: ``writers`` services update *their own*
  rows of one shared database, each holding its transaction ``hold_ms``. SQLite's single
  write lock queues them (≈ writers × hold); PostgreSQL's row locks do not (≈ hold) until they
  update the *same* row;
* :func:`crash <toylib.prod.crash.crash_test>`: ``kill -9`` of billing and the orchestrator.

Without the services (a reader's laptop, Binder) :func:`run` returns the results stored by the
last run that had them (:data:`LAST_RUN`, refreshed only by ``run(store=True)``), labelled as
such; :func:`sentences` writes every comparing sentence from the numbers.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from toylib.core import validate as v

CHAPTER = "ch08_production"
LAST_RUN = Path(__file__).resolve().parents[2] / "chapters" / "ch08_production_last_run.json"
BACKEND_NAMES = {"toy": "toy (SQLite + in-process bus)",
                 "prod": "production (PostgreSQL + NATS JetStream)"}


@dataclass(frozen=True)
class Knobs:
    orders: int = 60          # orders through the pipeline, per backend and repeat
    repeats: int = 2          # interleaved repeats (toy, prod, toy, prod, ...)
    outage_s: float = 1.5     # billing down for this long
    writers: int = 4          # services sharing one database in the contention experiment
    hold_ms: float = 40.0     # each writer's transaction holds its locks this long
    rounds: int = 3           # transactions per writer
    crash_orders: int = 24
    crash_sagas: int = 10

    def __post_init__(self):
        v.number("orders", self.orders, low=5, high=10_000, integer=True)
        v.number("repeats", self.repeats, low=1, high=20, integer=True)
        v.number("outage_s", self.outage_s, low=0.2, high=30)
        v.number("writers", self.writers, low=2, high=32, integer=True)
        v.number("hold_ms", self.hold_ms, low=5, high=1000)
        v.number("rounds", self.rounds, low=1, high=50, integer=True)
        v.number("crash_orders", self.crash_orders, low=4, high=1000, integer=True)
        v.number("crash_sagas", self.crash_sagas, low=2, high=200, integer=True)


def needed() -> list[str]:
    """The services this appendix needs that are not listening here (empty: all there)."""
    from toylib.prod.services import missing
    return missing("postgres", "nats")


async def _order_flow(ws, bus):
    """Chapter 1/4's order flow on one backend: (outbox, billing consumer, completion times)."""
    from toylib.data.outbox import IdempotentConsumer, Outbox
    orders, billing = await ws.database("orders"), await ws.database("billing")
    await orders.executescript("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)")
    await billing.executescript("CREATE TABLE charges (order_id TEXT, total INTEGER)")
    outbox = await Outbox(orders, bus=bus).setup()
    done: dict[str, float] = {}

    async def charge(db, event):
        await db.execute("INSERT INTO charges VALUES (?, ?)",
                         (event.value["id"], event.value["total"]))
    consumer = await IdempotentConsumer(billing, "billing", charge).setup()

    async def handle(event):
        await consumer(event)
        done.setdefault(event.key, time.perf_counter())
    return outbox, handle, done, billing


async def pipeline(backend: str, orders: int = 60) -> dict:
    """Accept and complete latency (ms) and end-to-end throughput (orders/s) of one backend."""
    from toylib.prod.stack import stack
    v.number("orders", orders, low=1, high=10_000, integer=True)
    async with stack(backend) as (ws, bus):
        bus.create_topic("orders", partitions=2)
        outbox, handle, done, billing = await _order_flow(ws, bus)
        sent, accept = {}, []
        async with outbox.relay(bus, interval=0.002) as relay, \
                bus.consumer_group("orders", "billing", handle) as g:
            t_start = time.perf_counter()
            for i in range(orders):
                t0 = sent[f"o{i}"] = time.perf_counter()
                await outbox.write("INSERT INTO orders VALUES (?, ?)", (f"o{i}", i),
                                   topic="orders", key=f"o{i}", value={"id": f"o{i}", "total": i})
                accept.append(time.perf_counter() - t0)
            await relay.wait_drained(timeout=60)
            await g.wait_caught_up(timeout=60)
            elapsed = time.perf_counter() - t_start
        (charged,) = await billing.fetchone("SELECT COUNT(*) FROM charges")
    return dict(accept_ms=1000 * statistics.median(accept),
                complete_ms=1000 * statistics.median(done[k] - sent[k] for k in sent),
                throughput=orders / elapsed, charged=charged, orders=orders)


async def outage(backend: str, outage_s: float = 1.5, orders: int = 20) -> dict:
    """Billing down for ``outage_s``; ``orders`` arrive early in it. Peak lag, and the
    time from the end of the outage until the backlog is drained."""
    from toylib.prod.stack import lag, stack
    v.number("outage_s", outage_s, low=0.05, high=30)
    v.number("orders", orders, low=1, high=10_000, integer=True)
    async with stack(backend) as (ws, bus):
        bus.create_topic("orders", partitions=2)
        outbox, handle, done, billing = await _order_flow(ws, bus)
        down = {"until": 0.0}

        async def flaky(event):
            if time.perf_counter() < down["until"]:
                raise ConnectionError("billing is down")
            await handle(event)
        samples = []
        async with outbox.relay(bus, interval=0.002) as relay, \
                bus.consumer_group("orders", "billing", flaky, retry_delay=0.02) as g:
            down["until"] = time.perf_counter() + outage_s
            for i in range(orders):
                await outbox.write("INSERT INTO orders VALUES (?, ?)", (f"o{i}", i),
                                   topic="orders", key=f"o{i}", value={"id": f"o{i}", "total": i})
                await asyncio.sleep(outage_s / (4 * orders))
                if time.perf_counter() < down["until"]:
                    samples.append(await lag(g))
            late = time.perf_counter() > down["until"]   # accepting outlasted the outage
            await relay.wait_drained(timeout=60)
            while time.perf_counter() < down["until"]:
                samples.append(await lag(g))
                await asyncio.sleep(0.02)
            await g.wait_caught_up(timeout=60)
            drain = time.perf_counter() - down["until"]
        (charged,) = await billing.fetchone("SELECT COUNT(*) FROM charges")
    return dict(peak_lag=max(samples, default=0), drain_s=drain, charged=charged,
                orders=orders, late=int(late))


async def contention(backend: str, *, writers: int = 4, hold_ms: float = 40, rounds: int = 3,
                     same_row: bool = False) -> dict:
    """``writers`` connections to ONE shared database, each updating its own row (or all the
    same row) in ``rounds`` transactions that hold their locks ``hold_ms``: elapsed time
    against the two ideals, serial (writers × rounds × hold) and parallel (rounds × hold)."""
    from toylib.prod.stack import stack
    v.number("writers", writers, low=1, high=32, integer=True)
    v.number("hold_ms", hold_ms, low=1, high=1000)
    v.number("rounds", rounds, low=1, high=50, integer=True)
    async with stack(backend) as (ws, _):
        dbs = [await ws.database("shared", owner=f"service{w}") for w in range(writers)]
        await dbs[0].executescript("CREATE TABLE accounts (id INTEGER PRIMARY KEY, n INTEGER)")
        await dbs[0].executemany("INSERT INTO accounts VALUES (?, 0)",
                                 [(w,) for w in range(writers)])

        async def writer(w, db):
            for _ in range(rounds):
                async with db.transaction():
                    await db.execute("UPDATE accounts SET n = n + 1 WHERE id = ?",
                                     (0 if same_row else w,))
                    await asyncio.sleep(hold_ms / 1000)
        t0 = time.perf_counter()
        await asyncio.gather(*(writer(w, db) for w, db in enumerate(dbs)))
        elapsed = time.perf_counter() - t0
        (total,) = await dbs[0].fetchone("SELECT SUM(n) FROM accounts")
        locked = sum(db.stats["locked"] for db in dbs)
    return dict(elapsed_ms=1000 * elapsed, serial_ms=writers * rounds * hold_ms,
                parallel_ms=rounds * hold_ms, updates=total, locked=locked)


def on_postgres(design_class):
    """Chapter 1's design class, unchanged, with its databases on PostgreSQL: the one method
    a design needs to switch is :meth:`Design.workspace`. (Its bus stays the toy's: switching
    it needs a hook in the design, see the appendix's notes.)"""
    from toylib.prod.postgres import PgWorkspace

    class OnPostgres(design_class):
        def workspace(self):
            return PgWorkspace(prefix="ch01")
    OnPostgres.__name__ = OnPostgres.__qualname__ = f"{design_class.__name__}OnPostgres"
    return OnPostgres


async def chapter1(backend: str, orders: int = 8) -> dict:
    """Chapter 1's own designs and probe (``order_latencies``) on SQLite or PostgreSQL:
    median answer latency of both designs and completion latency of the event-driven one."""
    from toylib.chapters import ch01_monolith as ch01
    from toylib.prod.stack import BACKENDS
    v.one_of("backend", backend, BACKENDS)
    v.number("orders", orders, low=1, high=1000, integer=True)
    out = {}
    for label, cls in (("before", ch01.DistributedMonolith), ("after", ch01.OwnedData)):
        design = (cls if backend == "toy" else on_postgres(cls))(ch01.Knobs())
        async with design:
            df = (await ch01.order_latencies(design, orders)).df
        out[f"{label}_answer_ms"] = float(df["latency_ms"].median())
        if "completion_ms" in df:
            out[f"{label}_complete_ms"] = float(df["completion_ms"].median())
    return out


async def measure(knobs: Knobs = Knobs()) -> dict:
    """Every experiment on both backends (interleaved), and the crash test. Needs the services."""
    from toylib.prod.crash import crash_test
    if not isinstance(knobs, Knobs):
        raise TypeError(f"knobs must be a Knobs; got {knobs!r}")
    absent = needed()
    if absent:
        raise RuntimeError(f"the production backends need {' and '.join(absent)}")
    runs = {b: {"pipeline": [], "outage": [], "contention": [], "same_row": [], "chapter1": []}
            for b in ("toy", "prod")}
    for _ in range(knobs.repeats):
        for b in ("toy", "prod"):
            runs[b]["chapter1"].append(await chapter1(b))
            runs[b]["pipeline"].append(await pipeline(b, knobs.orders))
            runs[b]["contention"].append(await contention(
                b, writers=knobs.writers, hold_ms=knobs.hold_ms, rounds=knobs.rounds))
            runs[b]["same_row"].append(await contention(
                b, writers=knobs.writers, hold_ms=knobs.hold_ms, rounds=knobs.rounds,
                same_row=True))
    for b in ("toy", "prod"):
        runs[b]["outage"].append(await outage(b, knobs.outage_s))
    crash = await crash_test(orders=knobs.crash_orders, sagas=knobs.crash_sagas)
    crash.pop("accept_s")
    crash.pop("pids")
    return dict(knobs=asdict(knobs), measured_at=time.strftime("%Y-%m-%d %H:%M UTC",
                                                               time.gmtime()),
                backends={b: {k: _median_of(rs) for k, rs in r.items()}
                          for b, r in runs.items()},
                crash=crash)


def _median_of(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


async def run(knobs: Knobs = Knobs(), *, store: bool = False) -> dict:
    """Measure now if the services are here, else load the last run stored in the repository.

    The result's ``live`` says which: a page must label stored numbers as such. The stored run
    is part of the course (readers without the services see it), so only a person refreshes it,
    on purpose: ``await run(store=True)`` on a machine with the services, then commit the file.
    Running the appendix (the book build, the tests) never rewrites it.
    """
    absent = needed()
    if not absent:
        result = dict(await measure(knobs), live=True, missing=[])
        if store:
            LAST_RUN.write_text(json.dumps({k: x for k, x in result.items()
                                            if k not in ("live", "missing")}, indent=1) + "\n")
        return result
    if not LAST_RUN.exists():
        return dict(live=False, missing=absent, backends=None, crash=None)
    return dict(json.loads(LAST_RUN.read_text()), live=False, missing=absent)


def table(result: dict):
    """The side-by-side table (rows: measures; columns: backends)."""
    import pandas as pd
    b = result["backends"]
    rows = [("accept latency, median (ms)", "pipeline", "accept_ms"),
            ("complete latency, median (ms)", "pipeline", "complete_ms"),
            ("throughput (orders/s)", "pipeline", "throughput"),
            ("peak lag during the outage (events)", "outage", "peak_lag"),
            ("drain after the outage (s)", "outage", "drain_s"),
            ("shared database, own rows (ms)", "contention", "elapsed_ms"),
            ("shared database, same row (ms)", "same_row", "elapsed_ms"),
            ("chapter 1 before: answer (ms)", "chapter1", "before_answer_ms"),
            ("chapter 1 after: answer (ms)", "chapter1", "after_answer_ms"),
            ("chapter 1 after: complete (ms)", "chapter1", "after_complete_ms")]
    rows = [r for r in rows if r[1] in b["toy"]]     # a stored run may predate a measure
    return pd.DataFrame({BACKEND_NAMES[k]: [round(b[k][e][m], 2) for _, e, m in rows]
                         for k in ("toy", "prod")}, index=[r[0] for r in rows])


def _times(a: float, b: float) -> str:
    """'3.2 times' / 'about as'-style ratio of a to b."""
    r = a / b if b > 0 else float("inf")
    if 0.8 <= r <= 1.25:
        return "about the same as"
    return f"{r:.1f} times" + (" longer than" if r > 1 else " as long as")


def sentences(result: dict) -> list[str]:
    """Every comparing sentence of the page, generated from ``result``."""
    if not result.get("backends"):
        return [f"This appendix needs {' and '.join(result['missing'])}; no stored run to show."]
    t, p, k = result["backends"]["toy"], result["backends"]["prod"], result["knobs"]
    out = []
    if not result["live"]:
        out.append(f"These are the stored results of the last run that had the services "
                   f"({result['measured_at']}); this machine lacks "
                   f"{' and '.join(result['missing'])}.")
    tp, pp = t["pipeline"], p["pipeline"]
    out.append(f"Accepting an order (the order row and its outbox row in one transaction) took "
               f"{pp['accept_ms']:.2f} ms on PostgreSQL, {_times(pp['accept_ms'], tp['accept_ms'])}"
               f" the {tp['accept_ms']:.2f} ms of SQLite (PostgreSQL pays a round trip per "
               f"statement; SQLite, in its default journal mode, syncs a journal file per "
               f"commit).")
    out.append(f"Completing it (relay, broker, idempotent charge) in a burst of "
               f"{pp['orders']:.0f} orders took {pp['complete_ms']:.1f} ms "
               f"on JetStream against {tp['complete_ms']:.1f} ms in process; end to end the "
               f"production stack moved {pp['throughput']:.0f} orders/s, the toy "
               f"{tp['throughput']:.0f} orders/s (one order in flight per partition on both).")
    to, po = t["outage"], p["outage"]
    out.append(f"During a {k['outage_s']:.1f} s billing outage the lag peaked at "
               f"{po['peak_lag']:.0f} events on JetStream and {to['peak_lag']:.0f} on the toy, "
               f"and the backlog drained {po['drain_s']:.2f} s and {to['drain_s']:.2f} s "
               f"after billing came back"
               + (" (on this busy machine some orders were still being accepted when billing "
                  "came back)" if po["late"] or to["late"] else "") + ": the broker "
               f"holds the backlog as the toy does, and nothing was lost "
               f"({po['charged']:.0f} and {to['charged']:.0f} of {po['orders']:.0f} charged).")
    tc, pc = t["contention"], p["contention"]
    ts, ps = t["same_row"], p["same_row"]
    if tc["elapsed_ms"] >= 1.5 * pc["elapsed_ms"] and ps["elapsed_ms"] >= 1.5 * pc["elapsed_ms"]:
        out.append(f"Chapter 3's picture changes: {k['writers']} services writing their own rows "
                   f"of one shared SQLite database took {tc['elapsed_ms']:.0f} ms (serial ideal "
                   f"{tc['serial_ms']:.0f} ms: one write lock for the whole file), but only "
                   f"{pc['elapsed_ms']:.0f} ms on a shared PostgreSQL database (parallel ideal "
                   f"{pc['parallel_ms']:.0f} ms: row locks). On PostgreSQL the shared database "
                   f"queues writers only when they touch the same rows ({ps['elapsed_ms']:.0f} ms "
                   f"for one shared row): the coupling of a shared schema remains, the lock "
                   f"contention becomes a property of the data, not of the file.")
    else:
        out.append(f"The contention difference was not shown by this run (shared SQLite "
                   f"{tc['elapsed_ms']:.0f} ms, PostgreSQL own rows {pc['elapsed_ms']:.0f} ms, "
                   f"same row {ps['elapsed_ms']:.0f} ms).")
    if "chapter1" in t:
        t1, p1 = t["chapter1"], p["chapter1"]
        out.append(f"Chapter 1's own designs, unchanged but for their databases (PostgreSQL "
                   f"schemas instead of SQLite files; the bus stays the toy's), answered an "
                   f"order in {p1['before_answer_ms']:.0f} ms (before, shared database) and "
                   f"{p1['after_answer_ms']:.0f} ms (after, database per service) against "
                   f"{t1['before_answer_ms']:.0f} ms and {t1['after_answer_ms']:.0f} ms on "
                   f"SQLite: the injected service latencies dominate both, so chapter 1's "
                   f"comparison " + ("holds on PostgreSQL too." if
                                     (p1["before_answer_ms"] > p1["after_answer_ms"]) ==
                                     (t1["before_answer_ms"] > t1["after_answer_ms"])
                                     else "comes out differently here: not shown by this run."))
    c = result["crash"]
    ok = c["lost"] == 0 and c["charged_twice"] == 0 and c["sagas_wrong"] == 0
    if c["at_kill"]["sagas_unfinished"] == 0 or c["at_kill"]["billing_charged"] >= c["orders"]:
        out.append("Crash test: a kill landed after the work it was meant to interrupt, so "
                   "the crash is not shown by this run.")
    out.append(f"Crash test: billing and the orchestrator were each killed with kill -9 mid-run "
               f"({c['at_kill']['billing_charged']} of {c['orders']} orders charged, "
               f"{c['at_kill']['sagas_unfinished']} of {c['sagas']} sagas unfinished at the "
               f"kills) and restarted from their databases; "
               + (f"afterwards all {c['charged']} orders were charged exactly once and every "
                  f"saga ended completed ({c['completed']}) or compensated ({c['compensated']}) "
                  f"with each command applied once ({c['commands_applied']} applied, "
                  f"{c['command_attempts']} sent)." if ok else
                  f"something went wrong: {c['lost']} lost, {c['charged_twice']} charged twice, "
                  f"{c['sagas_wrong']} sagas with the wrong commands."))
    return out
