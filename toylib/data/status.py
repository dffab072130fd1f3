"""Request status tracking: answer "accepted" at once, let the client poll for the outcome.

Instead of holding the caller while five services answer, the service stores the request,
replies ``202 Accepted`` with a request id, and finishes the work in the background. The
client polls the id. Each status change is validated against the state machine below and
time-stamped, so a chapter can show time-to-accept next to time-to-completion.

    accepted ──► in_progress ──► completed
        │             ├────────► compensated   (undone: e.g. payment declined)
        └──────►──────┴────────► failed

Stored in SQLite, in the service's own database: ``accept`` can then join the transaction
that writes the order and its outbox event, so a request is never "accepted" without them.
"""
from __future__ import annotations

import time

from toylib.core import validate as v
from toylib.data.db import Database

ACCEPTED, IN_PROGRESS = "accepted", "in_progress"
COMPLETED, COMPENSATED, FAILED = "completed", "compensated", "failed"
TRANSITIONS = {
    ACCEPTED: {IN_PROGRESS, FAILED},
    IN_PROGRESS: {COMPLETED, COMPENSATED, FAILED},
    COMPLETED: set(), COMPENSATED: set(), FAILED: set(),
}
STATUSES = tuple(TRANSITIONS)

# What a client sees of a toylib.data.saga status (for an orchestrator's ``on_status`` hook).
FROM_SAGA = {"running": IN_PROGRESS, "completed": COMPLETED, "compensated": COMPENSATED,
             "compensation_failed": FAILED, "stuck": FAILED}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS request_history (
    seq        INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    t          REAL NOT NULL,
    detail     TEXT
);
"""


class UnknownRequest(LookupError):
    """No request with that id (an HTTP status endpoint answers 404)."""


class InvalidTransition(ValueError):
    """The requested status change is not an arrow of the state machine."""


class StatusStore:
    """Statuses of accepted requests in one service's database."""

    def __init__(self, db: Database, *, prefix: str = "req", clock=time.time):
        if not isinstance(db, Database):
            raise TypeError(f"db must be a toylib.data.db.Database; got {db!r}")
        self.db = db
        self.prefix = v.name("prefix", prefix)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds; got {clock!r}")
        self.clock = clock

    async def setup(self) -> StatusStore:
        await self.db.executescript(SCHEMA)
        return self

    async def accept(self, request_id: str | None = None) -> str:
        """Record a new request as ``accepted``; returns its id (``req-1``, ``req-2``… if not
        given). Joins the caller's transaction if there is one."""
        v.optional(v.name, "request_id", request_id)
        async with self.db.atomic():
            if request_id is None:
                (n,) = await self.db.fetchone("SELECT COUNT(*) FROM requests")
                request_id = f"{self.prefix}-{n + 1}"
            elif await self.db.fetchone("SELECT 1 FROM requests WHERE request_id = ?",
                                        (request_id,)):
                raise ValueError(f"request_id must be new; {request_id!r} was already accepted")
            now = self.clock()
            await self.db.execute("INSERT INTO requests VALUES (?, ?, ?)",
                                  (request_id, ACCEPTED, now))
            await self._history(request_id, ACCEPTED, now, None)
        return request_id

    async def set(self, request_id: str, status: str, detail: str | None = None) -> None:
        """Move the request to ``status``; raises InvalidTransition for a move the state
        machine does not allow (e.g. completed → in_progress)."""
        v.name("request_id", request_id)
        v.one_of("status", status, STATUSES)
        if detail is not None and not isinstance(detail, str):
            raise TypeError(f"detail must be a string or None; got {detail!r}")
        async with self.db.atomic():
            old = await self.status(request_id)
            if status not in TRANSITIONS[old]:
                allowed = sorted(TRANSITIONS[old]) or "none (terminal)"
                raise InvalidTransition(f"status must be one of {allowed} after {old!r}; got "
                                        f"{status!r} for request {request_id!r}")
            now = self.clock()
            await self.db.execute(
                "UPDATE requests SET status = ?, updated_at = ? WHERE request_id = ?",
                (status, now, request_id))
            await self._history(request_id, status, now, detail)

    async def status(self, request_id: str) -> str:
        row = await self.db.fetchone("SELECT status FROM requests WHERE request_id = ?",
                                     (v.name("request_id", request_id),))
        if row is None:
            raise UnknownRequest(f"request_id must be an accepted request; got {request_id!r}")
        return row[0]

    async def get(self, request_id: str) -> dict:
        """What a poll returns: id, current status, and every transition with its time."""
        status = await self.status(request_id)
        history = await self.db.fetchall(
            "SELECT status, t FROM request_history WHERE request_id = ? ORDER BY seq",
            (request_id,))
        return {"request_id": request_id, "status": status, "terminal": status in TERMINAL,
                "history": [{"status": s, "t": t} for s, t in history]}

    async def history(self):
        """Every transition of every request as a DataFrame."""
        return await self.db.dataframe("SELECT * FROM request_history ORDER BY seq")

    async def _history(self, request_id, status, t, detail) -> None:
        await self.db.execute(
            "INSERT INTO request_history (request_id, status, t, detail) VALUES (?, ?, ?, ?)",
            (request_id, status, t, detail))
