"""The crash test on the real stack: ``kill -9`` a consumer and the orchestrator mid-run,
restart them, and read from the databases that nothing was lost or done twice.

Orders go in over HTTP to the ``orders`` process (outbox → JetStream), the ``billing``
process charges each one through its idempotent consumer, and the ``orchestrator`` process
drives order sagas whose commands land in the participants' schema. Midway, billing is
SIGKILLed while it works inside a transaction, and the orchestrator while every saga is
between steps; both are restarted with nothing but their durable state. The verdict is read
from PostgreSQL only: charges per order, saga statuses, commands applied per idempotency key.
"""
from __future__ import annotations

import asyncio
import time

from toylib.core import validate as v

POLL = 0.01     # s between looks at the databases


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(POLL)


async def crash_test(*, orders: int = 30, sagas: int = 12, declined: int = 2,
                     work_ms: float = 30, step_ms: float = 100, timeout: float = 60) -> dict:
    """Run the experiment; return counts read from the databases (see the module docstring)."""
    import aiohttp

    from toylib.data.saga import SagaOrchestrator
    from toylib.prod.jetstream import JetStreamBus
    from toylib.prod.postgres import PgWorkspace
    from toylib.prod.processes import Processes
    from toylib.prod.worker import TABLES, order_saga
    orders = v.number("orders", orders, low=4, high=10_000, integer=True)
    sagas = v.number("sagas", sagas, low=2, high=1000, integer=True)
    declined = v.number("declined", declined, low=0, high=sagas, integer=True)
    work_ms = v.number("work_ms", work_ms, low=1, high=1000)
    step_ms = v.number("step_ms", step_ms, low=1, high=1000)
    timeout = v.number("timeout", timeout, low=1, high=600)
    saga_ids = [f"s{i}" for i in range(sagas)]
    declined_ids = saga_ids[1::max(1, sagas // max(declined, 1))][:declined]

    async with PgWorkspace(prefix="crash") as ws, JetStreamBus(ack_wait=0.5) as bus, \
            Processes() as procs, aiohttp.ClientSession() as http:
        db = {s: await ws.database(s) for s in ("orders", "billing", "orchestrator",
                                                  "participants")}
        for s, script in TABLES.items():
            await db[s].executescript(script)
        bus.create_topic("orders", partitions=2)
        await bus.ensure_topic("orders")
        orch = SagaOrchestrator(db["orchestrator"], order_saga(db["participants"]))
        for sid in saga_ids:
            await orch.create("order", {"id": sid}, saga_id=sid)
        cfg = dict(dsn=ws.dsn, schemas=ws.schemas, nats=bus.url, namespace=bus.namespace,
                   partitions=2, ack_wait=0.5, work_ms=work_ms, step_ms=step_ms,
                   declined=declined_ids)
        # started together: each spends seconds importing, in parallel on a busy machine
        await asyncio.gather(*(procs.start(role, role, cfg) for role in ("orders", "billing")))

        async def count(service, sql):
            return (await db[service].fetchone(sql))[0]

        async def unfinished():
            return await count("orchestrator", "SELECT COUNT(*) FROM sagas WHERE status IN "
                                               "('running', 'compensating')")
        accept = []
        at_kill = {}
        for i in range(orders):
            t0 = time.perf_counter()
            async with http.post(f"http://127.0.0.1:{procs.procs['orders'].port}/orders",
                                 json={"id": f"o{i}", "total": i}) as r:
                if r.status != 201:
                    raise RuntimeError(f"orders answered {r.status}: {await r.text()}")
            accept.append(time.perf_counter() - t0)
            if i == orders // 3:
                await _until(lambda: _ge(count("billing", "SELECT COUNT(*) FROM charges"), 3),
                             timeout, "billing's first charges")
                await procs.kill("billing")
                at_kill["billing_charged"] = await count("billing",
                                                         "SELECT COUNT(*) FROM charges")
        # The orchestrator starts now, so its sagas are surely running when it is killed:
        # as soon as every saga's first command has landed (each step takes step_ms).
        await procs.start("orchestrator", "orchestrator", cfg)
        await _until(lambda: _ge(count("participants", "SELECT COUNT(*) FROM ledger"), sagas),
                     timeout, "the sagas' first steps")
        at_kill["sagas_unfinished"] = await unfinished()
        await procs.kill("orchestrator")
        at_kill["commands_applied"] = await count("participants", "SELECT COUNT(*) FROM ledger")
        await asyncio.gather(procs.restart("billing"), procs.restart("orchestrator"))
        await _until(lambda: _ge(count("billing", "SELECT COUNT(*) FROM processed_events"),
                                 orders), timeout, "every order charged")
        await _until(lambda: _eq(unfinished(), 0), timeout, "every saga finished")

        charges = await db["billing"].fetchall("SELECT order_id, COUNT(*) FROM charges "
                                               "GROUP BY order_id")
        status = dict(await db["orchestrator"].fetchall("SELECT saga_id, status FROM sagas"))
        ledger = await db["participants"].fetchall("SELECT saga, step FROM ledger")
        steps: dict[str, set] = {}
        for sid, step in ledger:
            steps.setdefault(sid, set()).add(step)
        want = {"completed": {"reserve", "charge", "ship"},
                "compensated": {"reserve", "charge", "refund", "release"}}
        return dict(
            orders=orders, charged=len(charges),
            charged_twice=sum(1 for _, n in charges if n > 1),
            lost=orders - len(charges),
            sagas=sagas, declined=len(declined_ids),
            completed=sum(1 for s in status.values() if s == "completed"),
            compensated=sum(1 for s in status.values() if s == "compensated"),
            sagas_wrong=sum(1 for sid, s in status.items() if steps.get(sid) != want.get(s)),
            compensated_as_declined=sorted(s for s, st in status.items()
                                           if st == "compensated") == sorted(declined_ids),
            commands_applied=len(ledger),
            command_attempts=await count("participants", "SELECT COUNT(*) FROM calls"),
            kills={n: p.kills for n, p in procs.procs.items()},
            starts={n: p.starts for n, p in procs.procs.items()},
            pids=[p.pid for p in procs.procs.values()],
            at_kill=at_kill, accept_s=accept)


async def _ge(awaitable, n) -> bool:
    return await awaitable >= n


async def _eq(awaitable, n) -> bool:
    return await awaitable == n
