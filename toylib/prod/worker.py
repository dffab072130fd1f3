"""One service in its own OS process: ``python -m toylib.prod.worker '<json config>'``.

Roles (the event-driven designs of chapters 1 and 4 on the production backends):

* ``orders``: ``POST /orders {"id", "total"}`` writes the order and its outbox row in one
  PostgreSQL transaction (schema ``orders``) and answers 201: *accepted*. A relay in the same
  process publishes the outbox to JetStream topic ``orders``.
* ``billing``: consumes ``orders`` as group ``billing`` through an idempotent consumer; the
  charge and the processed-event id commit together (schema ``billing``). ``work_ms`` is the
  time spent inside that transaction, the window a ``kill -9`` lands in.
* ``orchestrator``: a saga orchestrator (schema ``orchestrator``) that, on start, resumes every
  unfinished saga from its log; the participants' commands land in schema ``participants``,
  each applied once per idempotency key, each attempt counted.

Every worker serves ``GET /health`` on 127.0.0.1 (ephemeral port, printed as ``READY <port>``),
stops on SIGTERM, and exits when its parent's pipe (stdin) closes, so none outlives its scope.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import AsyncExitStack

from aiohttp import web

from toylib.data.outbox import IdempotentConsumer, Outbox
from toylib.data.saga import SagaDefinition, SagaOrchestrator, Step
from toylib.prod.postgres import PgDatabase

TABLES = {
    "orders": "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL);",
    "billing": "CREATE TABLE IF NOT EXISTS charges (order_id TEXT NOT NULL, "
               "total INTEGER NOT NULL);",
    "participants": "CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, saga TEXT, "
                    "step TEXT); CREATE TABLE IF NOT EXISTS calls (saga TEXT, step TEXT);",
}


def order_saga(ledger: PgDatabase, *, step_ms: float = 20, declined=()) -> SagaDefinition:
    """reserve (undo: release) → charge (pivot; undo: refund) → ship. Charges of the sagas in
    ``declined`` fail, so those sagas end compensated."""
    declined = frozenset(declined)

    def participant(step, fails=False):
        async def command(ctx, key):
            await ledger.execute("INSERT INTO calls VALUES (?, ?)", (ctx["id"], step))
            await asyncio.sleep(step_ms / 1000)
            await ledger.execute("INSERT OR IGNORE INTO ledger VALUES (?, ?, ?)",
                                 (key, ctx["id"], step))   # the idempotency key, honoured
            if fails and ctx["id"] in declined:
                raise RuntimeError(f"{step} declined for {ctx['id']}")
        return command

    return SagaDefinition("order", [
        Step("reserve", participant("reserve"), participant("release")),
        Step("charge", participant("charge", fails=True), participant("refund"), pivot=True),
        Step("ship", participant("ship"))])


async def open_db(cfg: dict, service: str, stack: AsyncExitStack) -> PgDatabase:
    db = PgDatabase(cfg["dsn"], cfg["schemas"][service], owner=service)
    await stack.enter_async_context(db)
    if service in TABLES:
        await db.executescript(TABLES[service])
    return db


async def attach_bus(cfg: dict, stack: AsyncExitStack):
    from toylib.prod.jetstream import JetStreamBus
    bus = JetStreamBus(url=cfg["nats"], namespace=cfg["namespace"],
                       ack_wait=cfg.get("ack_wait", 1.0))
    bus.create_topic("orders", partitions=cfg.get("partitions", 2))
    await stack.enter_async_context(bus)
    return bus


async def run_orders(cfg, stack, app):
    db = await open_db(cfg, "orders", stack)
    bus = await attach_bus(cfg, stack)
    outbox = await Outbox(db, bus=bus).setup()
    await stack.enter_async_context(outbox.relay(bus, interval=0.005))

    async def accept(request):
        body = await request.json()
        await outbox.write("INSERT INTO orders VALUES (?, ?)", (body["id"], body["total"]),
                           topic="orders", key=body["id"], value=body)
        return web.json_response({"accepted": body["id"]}, status=201)
    app.router.add_post("/orders", accept)


async def run_billing(cfg, stack, app):
    db = await open_db(cfg, "billing", stack)
    bus = await attach_bus(cfg, stack)

    async def charge(db, event):
        await asyncio.sleep(cfg.get("work_ms", 20) / 1000)   # inside the transaction
        await db.execute("INSERT INTO charges VALUES (?, ?)",
                         (event.value["id"], event.value["total"]))
    consumer = await IdempotentConsumer(db, "billing", charge).setup()
    await stack.enter_async_context(bus.consumer_group("orders", "billing", consumer))


async def run_orchestrator(cfg, stack, app):
    db = await open_db(cfg, "orchestrator", stack)
    ledger = await open_db(cfg, "participants", stack)
    saga = order_saga(ledger, step_ms=cfg.get("step_ms", 20), declined=cfg.get("declined", ()))
    await stack.enter_async_context(SagaOrchestrator(db, saga, base_delay=0.005,
                                                     max_delay=0.05, seed=1))


ROLE = {"orders": run_orders, "billing": run_billing, "orchestrator": run_orchestrator}


async def main(cfg: dict) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    app = web.Application()
    app.router.add_get("/health", lambda r: web.json_response({"service": cfg["name"]}))
    async with AsyncExitStack() as stack:
        await ROLE[cfg["role"]](cfg, stack, app)
        runner = web.AppRunner(app)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"READY {port}", flush=True)
        # The parent holds our stdin: EOF means it is gone, so we go too (no orphans).
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        stack.callback(transport.close)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reader.read())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
