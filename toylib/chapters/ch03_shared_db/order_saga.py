"""The price of the fix: the order as a saga, and its invariants read from five databases.

With one database, placing an order could be one ACID transaction. Per service it becomes a
saga (:meth:`DatabasePerService.order_saga`) with compensations in reverse order. Whether it
worked is decided by counts read from the services' own files, never by timing.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from toylib.chapters.ch03_shared_db.designs import DatabasePerService, require_running
from toylib.chapters.ch03_shared_db.knobs import knobs_or_default, order_for, payment_outcome
from toylib.core import validate as v
from toylib.data.saga import TERMINAL, SagaDefinition
from toylib.present.diagrams import Mermaid

MAX_ORDERS = 10_000


async def run_sagas(d: DatabasePerService, *, orders: int = 200, concurrency: int = 20,
                    start: int = 0) -> pd.DataFrame:
    """Probe of a running per-service design: place ``orders`` orders, each through the saga,
    ``concurrency`` at a time; wait until every event is applied everywhere. Returns the
    orchestrator's table of sagas."""
    require_running(d, DatabasePerService)
    v.number("orders", orders, low=1, high=MAX_ORDERS, integer=True)
    v.number("concurrency", concurrency, low=1, high=500, integer=True)
    v.number("start", start, low=0, high=10**8, integer=True)
    gate = asyncio.Semaphore(concurrency)
    async with d.orchestrator() as orch:
        async def one(i):
            async with gate:
                saga_id = await orch.start("order", order_for(i, d.knobs), saga_id=f"order-{i}")
                return await orch.wait(saga_id, timeout=120)
        async with asyncio.TaskGroup() as tg:
            for i in range(start, start + orders):
                tg.create_task(one(i))
        sagas = await orch.sagas()
    await d.sync()
    return sagas


def expected_outcomes(knobs, orders: int, start: int = 0) -> Counter:
    """What the seeded payment draws decide, computed without running anything."""
    knobs = knobs_or_default(knobs)
    v.number("orders", orders, low=1, high=MAX_ORDERS, integer=True)
    v.number("start", start, low=0, high=10**8, integer=True)
    return Counter(payment_outcome(f"order-{i}", knobs) for i in range(start, start + orders))


async def invariants(d: DatabasePerService) -> pd.DataFrame:
    """The saga invariants, each read from the databases themselves (not from the
    orchestrator's counters): a row per invariant with ``holds`` and the evidence."""
    require_running(d, DatabasePerService)
    orders = dict(await d.primary("orders").fetchall("SELECT order_id, status FROM orders "
                                                     "WHERE order_id LIKE 'order-%'"))
    sagas = Counter(s for (s,) in await d.saga_db.fetchall("SELECT status FROM sagas"))
    status = Counter(orders.values())
    confirmed = {o for o, s in orders.items() if s == "confirmed"}
    cancelled = {o for o, s in orders.items() if s == "cancelled"}
    inv, bill = d.primary("inventory"), d.primary("billing")
    stock = await inv.fetchall("SELECT sku, available, reserved FROM stock ORDER BY sku")
    held = dict(await inv.fetchall("SELECT sku, SUM(qty) FROM reservations "
                                   "WHERE state = 'held' GROUP BY sku"))
    held_for = {o for (o,) in await inv.fetchall(
        "SELECT order_id FROM reservations WHERE state = 'held'")}
    charges = await bill.fetchall(
        "SELECT order_id, COUNT(*), SUM(state = 'charged') FROM charges "
        "WHERE order_id LIKE 'order-%' GROUP BY order_id")
    kept = {o for o, _, c in charges if c}
    refunded = sum(n - c for _, n, c in charges)
    notes = await d.primary("notification").fetchall(
        "SELECT order_id, kind, COUNT(*) FROM notifications GROUP BY order_id, kind")
    told = {k: {o for o, kind, _ in notes if kind == k} for k in ("confirmed", "failed")}
    seen = dict(await d.primary("analytics").fetchall(
        "SELECT status, COUNT(*) FROM orders WHERE order_id LIKE 'order-%' GROUP BY status"))
    ledger = ", ".join(f"{s} {a}+{r}" for s, a, r in stock)
    rows = [
        ("every saga is terminal", set(sagas) <= TERMINAL and sum(sagas.values()) == len(orders),
         ", ".join(f"{n} {s}" for s, n in sorted(sagas.items()))),
        ("no order left pending", set(status) <= {"confirmed", "cancelled"},
         ", ".join(f"{n} {s}" for s, n in sorted(status.items()))),
        ("stock conserved (available + reserved = initial)",
         all(a + r == d.knobs.stock and r == held.get(s, 0) for s, a, r in stock), ledger),
        ("stock held exactly for confirmed orders", held_for == confirmed,
         f"{len(held_for)} reservations held"),
        ("nobody charged twice", all(n <= 1 for _, n, _ in charges),
         f"at most {max((n for _, n, _ in charges), default=0)} charge per order"),
        ("money kept exactly for confirmed orders", kept == confirmed,
         f"{len(kept)} charges kept, {refunded} refunded"),
        ("one notice per order, of the right kind",
         told["confirmed"] == confirmed and told["failed"] == cancelled
         and all(n == 1 for *_, n in notes),
         f"{len(told['confirmed'])} confirmations, {len(told['failed'])} failure notices"),
        ("analytics agrees with the order database", seen == dict(status),
         ", ".join(f"{n} {s}" for s, n in sorted(seen.items()))),
    ]
    return pd.DataFrame(rows, columns=["invariant", "holds", "evidence"]).set_index("invariant")


def saga_diagram(saga: SagaDefinition, *, title: str | None = None) -> Mermaid:
    """The saga drawn from its definition: the steps, the pivot, the compensations in reverse
    order from the failed pivot, and the events analytics and notification react to."""
    if not isinstance(saga, SagaDefinition) or saga.pivot is None:
        raise TypeError(f"saga must be a SagaDefinition with a pivot; got {saga!r}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None; got {title!r}")
    lines = []
    if title:
        lines += ["---", f'title: "{title}"', "---"]
    lines += ["flowchart TB", '  subgraph forward["Transaction steps (local, one database each)"]']
    for i, s in enumerate(saga.steps):
        tag = " (pivot)" if s.pivot else (" (retried)" if i > saga.pivot else "")
        lines.append(f'    S{i}["step {i + 1}: {s.name}{tag}"]')
    lines.append("  end")
    lines.append('  subgraph back["Compensation (reverse order)"]')
    lines.append('    FAIL["payment failed or reply lost"]')
    undo = [(i, s) for i, s in enumerate(saga.steps[:saga.pivot + 1]) if s.compensation]
    for i, s in reversed(undo):
        lines.append(f'    C{i}["undo {s.name}: {s.compensation.__name__}"]')
    lines.append('    NOTE["OrderCancelled event: notification sends the failure notice"]')
    lines.append("  end")
    lines.append('  subgraph eventual["Eventual consistency"]')
    lines.append('    EV["order events (outbox, relay, bus)"] --> AN["analytics read model"]')
    lines.append("  end")
    lines += [f"  S{i} --> S{i + 1}" for i in range(len(saga.steps) - 1)]
    lines.append(f"  S{saga.pivot} -. fails .-> FAIL")
    chain = ["FAIL"] + [f"C{i}" for i, _ in reversed(undo)] + ["NOTE"]
    lines += [f"  {a} --> {b}" for a, b in zip(chain, chain[1:])]
    lines += ["  S0 -.-> EV", f"  S{saga.pivot + 1} -.-> EV", f"  C{undo[0][0]} -.-> EV"]
    lines += ["  classDef step fill:#10B981,stroke:#059669,color:#fff",
              "  classDef comp fill:#8B5CF6,stroke:#7C3AED,color:#fff",
              "  classDef ev fill:#F59E0B,stroke:#D97706,color:#fff",
              "  classDef fail fill:#FF6666,stroke:#8B5CF6,color:#fff",
              f"  class {','.join(f'S{i}' for i in range(len(saga.steps)))} step",
              f"  class {','.join(f'C{i}' for i, _ in undo)},NOTE comp",
              "  class EV,AN ev", "  class FAIL fail"]
    return Mermaid("\n".join(lines))


@dataclass
class SagaResult:
    """Sagas run on the per-service design, and what the databases say about them."""
    knobs: object
    orders: int
    sagas: pd.DataFrame        # the orchestrator's table: one row per saga
    checks: pd.DataFrame       # invariants(): holds + evidence, read from the databases
    log: pd.DataFrame          # the orchestrator's log: every attempt and transition

    @property
    def drawn(self) -> Counter:
        return expected_outcomes(self.knobs, self.orders)

    @property
    def found(self) -> Counter:
        return Counter(self.sagas.status)

    @property
    def violated(self) -> int:
        """Invariants that do not hold (0 when the saga kept every promise)."""
        return int((~self.checks.holds).sum())

    @property
    def wrong_outcomes(self) -> int:
        """Sagas whose end differs from what the seeded payment draw decided."""
        want = {f"order-{i}": "completed" if payment_outcome(f"order-{i}", self.knobs) == "ok"
                else "compensated" for i in range(self.orders)}
        got = dict(zip(self.sagas.saga_id, self.sagas.status))
        return sum(got.get(o) != s for o, s in want.items())

    def steps_of(self, saga_id: str) -> str:
        """The saga's steps and compensations as they happened, from the orchestrator's log."""
        log = self.log
        rows = log[(log.saga_id == saga_id) & (log.phase != "saga") & (log.status != "started")]
        return " → ".join(f"{r.name}:{r.phase}:{r.status}" for r in rows.itertuples())

    def first_with(self, outcome: str) -> str | None:
        """The first order whose payment draw is ``outcome`` (ok, declined, lost_reply)."""
        v.one_of("outcome", outcome, ("ok", "declined", "lost_reply"))
        return next((f"order-{i}" for i in range(self.orders)
                     if payment_outcome(f"order-{i}", self.knobs) == outcome), None)


async def sagas(knobs=None, *, orders: int = 150, concurrency: int = 20) -> SagaResult:
    """``orders`` order sagas on the per-service design (the shared one needs none: one
    transaction did it), then the invariants, read from the five databases."""
    knobs = knobs_or_default(knobs)
    v.number("orders", orders, low=1, high=MAX_ORDERS, integer=True)
    v.number("concurrency", concurrency, low=1, high=500, integer=True)
    async with DatabasePerService(knobs) as d:
        table = await run_sagas(d, orders=orders, concurrency=concurrency)
        checks = await invariants(d)
        log = await d.orchestrator().log()
    return SagaResult(knobs, orders, table, checks, log)
