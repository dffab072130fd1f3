"""A saga orchestrator whose progress lives in SQLite, so it survives being stopped.

A saga is a sequence of local transactions (steps) in different services. There is no
distributed rollback; instead each step before the **pivot** has a *compensation* that undoes
it semantically (release the stock, refund the payment). The pivot is the go/no-go step:

* a step at or before the pivot fails → compensate, in **reverse order**, the failed step
  (it may have half-happened: a timeout does not mean "not done", and a compensation
  tolerates "nothing to undo") and every completed step before it → ``compensated``;
* after the pivot there is no way back: remaining steps are retried with capped exponential
  backoff and full jitter until they succeed, at most ``max_attempts`` times → ``completed``,
  or ``stuck`` (visible, for a human) when the attempts run out;
* a compensation is retried the same way; if it never succeeds → ``compensation_failed``.

Every call carries an **idempotency key** ``<saga id>:<step>:do`` or ``…:undo``, the same on
every attempt and after every restart, so a participant that honours it applies each command
once even when the orchestrator re-sends it (a restart lands in the middle of a step; a reply
was lost).

The state machine of one saga (``TRANSITIONS`` below; the log records every move)::

    running ──► completed
       │  └───► stuck                   (a step after the pivot ran out of attempts)
       ▼
    compensating ──► compensated
             └─────► compensation_failed

Durability: the ``sagas`` table holds each saga's status, cursor (the step to run next) and
context; ``saga_log`` appends every attempt and transition. A step's success and the cursor
move are one transaction, so an orchestrator cancelled anywhere resumes, on its next
``async with``, every saga still ``running`` or ``compensating`` from its cursor.

Production: Temporal, AWS Step Functions, Camunda, Eventuate Tram Sagas keep the same log.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

from toylib.core import validate as v
from toylib.data.db import Database

RUNNING, COMPENSATING = "running", "compensating"
COMPLETED, STUCK, COMPENSATED, COMPENSATION_FAILED = (
    "completed", "stuck", "compensated", "compensation_failed")
TRANSITIONS = {
    RUNNING: {COMPLETED, STUCK, COMPENSATING},
    COMPENSATING: {COMPENSATED, COMPENSATION_FAILED},
    COMPLETED: set(), STUCK: set(), COMPENSATED: set(), COMPENSATION_FAILED: set(),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sagas (
    saga_id    TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    status     TEXT NOT NULL,
    cursor     INTEGER NOT NULL,     -- next step to do (running) or to undo (compensating)
    context    TEXT NOT NULL,        -- JSON
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS saga_log (
    seq     INTEGER PRIMARY KEY,
    saga_id TEXT NOT NULL,
    step    INTEGER,                 -- NULL for a saga-level transition
    name    TEXT,
    phase   TEXT NOT NULL,           -- do | undo | saga
    status  TEXT NOT NULL,           -- started | succeeded | failed | <saga status>
    attempt INTEGER,
    t       REAL NOT NULL,
    detail  TEXT
);
"""


@dataclass(frozen=True)
class Step:
    """One local transaction of a saga.

    ``action(context, key)`` may return a dict merged into the context (e.g. a payment id
    that a later step needs). ``compensation(context, key)`` undoes it and must tolerate
    "nothing to undo". ``timeout`` (s) turns a hung call into a failure.
    """
    name: str
    action: object
    compensation: object = None
    pivot: bool = False
    timeout: float | None = None

    def __post_init__(self):
        v.name("name", self.name)
        v.async_function("action", self.action)
        if self.compensation is not None:
            v.async_function("compensation", self.compensation)
        if not isinstance(self.pivot, bool):
            raise TypeError(f"pivot must be True or False; got {self.pivot!r}")
        v.optional(v.seconds, "timeout", self.timeout)


class SagaDefinition:
    """Named steps with exactly one pivot: compensatable steps, the pivot, retriable steps."""

    def __init__(self, name: str, steps: list[Step]):
        self.name = v.name("name", name)
        steps = list(steps) if isinstance(steps, (list, tuple)) else None
        if not steps or not all(isinstance(s, Step) for s in steps):
            raise ValueError(f"steps must be a non-empty list of Step; got {steps!r}")
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"steps must have unique names; got {names}")
        pivots = [i for i, s in enumerate(steps) if s.pivot]
        if len(pivots) != 1:
            raise ValueError(f"steps must mark exactly one pivot (pivot=True); got {len(pivots)}")
        self.steps, self.pivot = steps, pivots[0]
        for s in steps[:self.pivot]:
            if s.compensation is None:
                raise ValueError(f"steps before the pivot need a compensation; step {s.name!r} "
                                 f"has none")
        for s in steps[self.pivot + 1:]:
            if s.compensation is not None:
                raise ValueError(f"steps after the pivot are retried, never compensated; step "
                                 f"{s.name!r} must have compensation=None")


def idempotency_key(saga_id: str, step: str, phase: str) -> str:
    """The key every attempt of one command carries: ``<saga id>:<step>:do|undo``."""
    v.name("saga_id", saga_id)
    v.name("step", step)
    v.one_of("phase", phase, ("do", "undo"))
    return f"{saga_id}:{step}:{phase}"


def backoff_delay(attempt: int, rng: random.Random, *, base: float, cap: float) -> float:
    """Full jitter (AWS): uniform in [0, min(cap, base·2^(attempt-1))]."""
    v.positive("attempt", attempt, integer=True, high=v.MAX_ATTEMPTS)
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random (seeded, so runs replay); got {rng!r}")
    v.seconds("base", base, zero=True)
    v.number("cap", cap, low=base, high=v.MAX_SECONDS)
    return rng.uniform(0, min(cap, base * 2.0 ** min(attempt - 1, 1000)))


async def _no_hook(saga_id: str, status: str) -> None:
    return None


class SagaOrchestrator:
    """Runs sagas as tasks owned by ``async with``; entering also resumes unfinished ones.

    ``sleep`` is injectable (tests pass a no-op); ``seed`` makes the jitter replayable (one
    random stream per saga, step and phase, so concurrency does not change the draws).
    ``on_status(saga_id, status)`` is awaited after every saga status change (to update a
    request status, publish an event…).
    """

    def __init__(self, db: Database, definitions, *, max_attempts: int = 5,
                 base_delay: float = 0.05, max_delay: float = 2.0, seed: int = 0,
                 sleep=asyncio.sleep, clock=time.time, on_status=None):
        if not isinstance(db, Database):
            raise TypeError(f"db must be a toylib.data.db.Database; got {db!r}")
        self.db = db
        defs = [definitions] if isinstance(definitions, SagaDefinition) else definitions
        if not isinstance(defs, (list, tuple)) or not defs or \
                not all(isinstance(d, SagaDefinition) for d in defs):
            raise TypeError(f"definitions must be a SagaDefinition or a non-empty list of them; "
                            f"got {definitions!r}")
        self.definitions = {d.name: d for d in defs}
        if len(self.definitions) != len(defs):
            raise ValueError("definitions must have unique names")
        self.max_attempts = v.positive("max_attempts", max_attempts, integer=True,
                                       high=v.MAX_ATTEMPTS)
        self.base_delay = v.seconds("base_delay", base_delay, zero=True)
        # the pair: base_delay is checked on its own first, so this names max_delay only
        # when max_delay itself is out of range (below base_delay or above a day)
        self.max_delay = v.number("max_delay", max_delay, low=self.base_delay,
                                  high=v.MAX_SECONDS)
        self.seed = v.seed("seed", seed)
        v.async_function("sleep", sleep)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.sleep, self.clock = sleep, clock
        if on_status is not None:
            v.async_function("on_status", on_status)
        self.on_status = on_status or _no_hook
        self._tasks: dict[str, asyncio.Task] = {}
        self._running = False
        self._ready = False

    # -- scope -------------------------------------------------------------------------------
    async def setup(self) -> SagaOrchestrator:
        if not self._ready:
            await self.db.executescript(SCHEMA)
            self._ready = True
        return self

    async def __aenter__(self) -> SagaOrchestrator:
        """Start: resume every unfinished saga of these definitions from the log."""
        await self.setup()
        self._running = True
        names = list(self.definitions)
        for (saga_id,) in await self.db.fetchall(
                "SELECT saga_id FROM sagas WHERE status IN (?, ?) AND definition IN "
                f"({', '.join('?' * len(names))}) ORDER BY created_at, saga_id",
                (RUNNING, COMPENSATING, *names)):
            self._spawn(saga_id)
        return self

    async def __aexit__(self, *exc) -> None:
        """Stop: cancel every saga wherever it is (its log says where to resume)."""
        self._running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        bugs = [r for r in results if isinstance(r, Exception)]
        if bugs and exc[1] is None:
            raise bugs[0]

    def _spawn(self, saga_id: str) -> None:
        if saga_id not in self._tasks:
            self._tasks[saga_id] = asyncio.create_task(self.run(saga_id), name=saga_id)

    # -- starting and waiting ----------------------------------------------------------------
    async def start(self, definition: str, context: dict | None = None, *,
                    saga_id: str | None = None) -> str:
        """Record a new saga and run it in the background. Idempotent on ``saga_id``."""
        if not self._running:
            raise RuntimeError("start() needs a running orchestrator (inside `async with`)")
        saga_id = await self.create(definition, context, saga_id=saga_id)
        if await self.status(saga_id) not in TERMINAL:
            self._spawn(saga_id)
        return saga_id

    async def create(self, definition: str, context: dict | None = None, *,
                     saga_id: str | None = None) -> str:
        """Only record the saga (``running``, cursor 0); ``run`` or a restart will drive it."""
        v.one_of("definition", definition, self.definitions)
        context = {} if context is None else context
        if not isinstance(context, dict):
            raise TypeError(f"context must be a dict; got {context!r}")
        try:
            ctx_json = json.dumps(context)
        except (TypeError, ValueError):
            raise TypeError(f"context must be JSON-serialisable; got {context!r}") from None
        v.optional(v.name, "saga_id", saga_id)
        await self.setup()
        async with self.db.transaction():
            if saga_id is None:                  # <definition>-<n>: readable and replayable
                (n,) = await self.db.fetchone("SELECT COUNT(*) FROM sagas")
                saga_id = f"{definition}-{n + 1}"
                while await self.db.fetchone("SELECT 1 FROM sagas WHERE saga_id = ?",
                                             (saga_id,)):
                    n += 1
                    saga_id = f"{definition}-{n + 1}"
            now = self.clock()
            inserted = await self.db.execute(
                "INSERT OR IGNORE INTO sagas VALUES (?, ?, ?, 0, ?, ?, ?)",
                (saga_id, definition, RUNNING, ctx_json, now, now))
            if inserted:
                await self._log(saga_id, None, None, "saga", RUNNING)
        if inserted:
            await self.on_status(saga_id, RUNNING)
        return saga_id

    async def wait(self, saga_id: str, timeout: float | None = None) -> str:
        """Wait for the saga's task here (if any) to end; return its status."""
        v.name("saga_id", saga_id)
        v.optional(v.seconds, "timeout", timeout)
        task = self._tasks.get(saga_id)
        if task is not None:
            await asyncio.wait([task], timeout=timeout)   # never cancels the saga
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()                    # a bug, e.g. a step's bad return
        return await self.status(saga_id)

    async def wait_all(self, timeout: float | None = None) -> None:
        v.optional(v.seconds, "timeout", timeout)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)

    async def status(self, saga_id: str) -> str:
        row = await self.db.fetchone("SELECT status FROM sagas WHERE saga_id = ?",
                                     (v.name("saga_id", saga_id),))
        if row is None:
            raise ValueError(f"saga_id must be a saga of this orchestrator; got {saga_id!r}")
        return row[0]

    # -- the state machine -------------------------------------------------------------------
    async def run(self, saga_id: str) -> str:
        """Drive one saga from its logged state to a terminal state; return that state."""
        await self.setup()
        while True:
            row = await self.db.fetchone(
                "SELECT definition, status, cursor, context FROM sagas WHERE saga_id = ?",
                (v.name("saga_id", saga_id),))
            if row is None:
                raise ValueError(f"saga_id must be a saga of this orchestrator; got {saga_id!r}")
            name, status, cursor, ctx = row
            if status in TERMINAL:
                return status
            saga = self.definitions[name]
            if status == RUNNING:
                await self._forward(saga_id, saga, cursor, json.loads(ctx))
            else:
                await self._backward(saga_id, saga, cursor, json.loads(ctx))

    async def _forward(self, saga_id, saga: SagaDefinition, i: int, ctx: dict) -> None:
        while i < len(saga.steps):
            retry = i > saga.pivot                   # past the pivot: only forward
            step = saga.steps[i]
            ok, result, attempt = await self._attempt(saga_id, step, i, "do", ctx, retry)
            if ok:
                ctx.update(result or {})
                await self._advance(saga_id, i + 1, ctx, (i, step.name, "do", "succeeded",
                                                          attempt))
                i += 1
            elif retry:
                return await self._transition(saga_id, STUCK, i)
            else:                                    # compensate from the failed step down
                return await self._transition(saga_id, COMPENSATING, i)
        await self._transition(saga_id, COMPLETED, i)

    async def _backward(self, saga_id, saga: SagaDefinition, j: int, ctx: dict) -> None:
        while j >= 0:
            step = saga.steps[j]
            outcome, attempt = "skipped", None        # the pivot may have nothing to undo
            if step.compensation is not None:
                ok, _, attempt = await self._attempt(saga_id, step, j, "undo", ctx, True)
                if not ok:
                    return await self._transition(saga_id, COMPENSATION_FAILED, j)
                outcome = "succeeded"
            await self._advance(saga_id, j - 1, ctx, (j, step.name, "undo", outcome, attempt))
            j -= 1
        await self._transition(saga_id, COMPENSATED, j)

    async def _attempt(self, saga_id, step: Step, i: int, phase: str, ctx: dict,
                       retry: bool):
        """Call the action or compensation, retrying with backoff if ``retry``."""
        fn = step.action if phase == "do" else step.compensation
        key = idempotency_key(saga_id, step.name, phase)
        rng = random.Random(f"{self.seed}:{saga_id}:{step.name}:{phase}")
        attempts = self.max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            await self._log(saga_id, i, step.name, phase, "started", attempt)
            try:
                async with asyncio.timeout(step.timeout):
                    result = await fn(dict(ctx), key)
            except Exception as e:                   # TimeoutError included
                await self._log(saga_id, i, step.name, phase, "failed", attempt,
                                    f"{type(e).__name__}: {e}")
                if attempt < attempts:
                    await self.sleep(backoff_delay(attempt, rng, base=self.base_delay,
                                                   cap=self.max_delay))
                continue
            if result is not None and not isinstance(result, dict):
                raise TypeError(f"step {step.name!r} {phase} must return a dict or None; "
                                f"got {result!r}")
            return True, result, attempt
        return False, None, attempts

    # -- the log -----------------------------------------------------------------------------
    async def _advance(self, saga_id: str, cursor: int, ctx: dict, done: tuple) -> None:
        """The step's outcome ``done`` = (step, name, phase, status, attempt) and the cursor
        move commit together: after a stop, the cursor says exactly what is left."""
        async with self.db.transaction():
            await self._log(saga_id, *done)
            await self.db.execute(
                "UPDATE sagas SET cursor = ?, context = ?, updated_at = ? WHERE saga_id = ?",
                (cursor, json.dumps(ctx), self.clock(), saga_id))

    async def _transition(self, saga_id: str, new: str, cursor: int) -> None:
        async with self.db.transaction():
            (old,) = await self.db.fetchone("SELECT status FROM sagas WHERE saga_id = ?",
                                            (saga_id,))
            if new not in TRANSITIONS[old]:
                raise RuntimeError(f"saga {saga_id}: illegal transition {old} -> {new}")
            await self.db.execute(
                "UPDATE sagas SET status = ?, cursor = ?, updated_at = ? WHERE saga_id = ?",
                (new, cursor, self.clock(), saga_id))
            await self._log(saga_id, None, None, "saga", new)
        await self.on_status(saga_id, new)

    async def _log(self, saga_id, step, name, phase, status, attempt=None, detail=None):
        await self.db.execute(
            "INSERT INTO saga_log (saga_id, step, name, phase, status, attempt, t, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (saga_id, step, name, phase, status, attempt, self.clock(), detail))

    async def log(self, saga_id: str | None = None):
        """The saga log as a DataFrame (every attempt and every transition, in order)."""
        await self.setup()
        if saga_id is None:
            return await self.db.dataframe("SELECT * FROM saga_log ORDER BY seq")
        return await self.db.dataframe("SELECT * FROM saga_log WHERE saga_id = ? ORDER BY seq",
                                       (v.name("saga_id", saga_id),))

    async def sagas(self):
        """One row per saga: status, cursor, context, timestamps."""
        await self.setup()
        return await self.db.dataframe("SELECT * FROM sagas ORDER BY created_at, saga_id")
