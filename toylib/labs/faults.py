"""Faults a lab grader injects into a solution: a process that dies at a chosen statement.

A :class:`MortalDatabase` is a real SQLite connection that "dies" (raises :class:`Crash`, its
open transaction rolls back) at its ``at``-th statement or right after a commit, for the code
running under :meth:`MortalDatabase.doom` only, so one request or one delivery can be aimed at
while others run concurrently.
"""
from __future__ import annotations

import contextvars
from contextlib import asynccontextmanager

from toylib.data.db import Database, Workspace


class Crash(Exception):
    """Injected: the process running this code died here (its open transaction rolls back)."""


# The death planned for the code running now: {"db", "at", "after_commit"} or None. A context
# variable, so a death aims at one request or one delivery even when others run concurrently,
# and follows the tasks that code starts (they copy the context).
_doom: contextvars.ContextVar = contextvars.ContextVar("doom", default=None)


class MortalDatabase(Database):
    """A connection whose process can be made to die, for the code running under ``doom()``:
    at its ``at``-th statement (before it runs), or right after its first commit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deaths = 0

    @asynccontextmanager
    async def doom(self, *, at: int | None = None, after_commit: bool = False):
        """Arm a death for the code inside the block (and the tasks it starts)."""
        plan = {"db": self, "at": at, "after_commit": after_commit} \
            if at is not None or after_commit else None
        token = _doom.set(plan)
        try:
            yield
        finally:
            _doom.reset(token)

    def _plan(self) -> dict | None:
        plan = _doom.get()
        return plan if plan is not None and plan["db"] is self else None

    def _die(self, plan: dict, where: str):
        plan["at"], plan["after_commit"] = None, False       # one death per plan
        self.deaths += 1
        raise Crash(f"the {self.owner} service died {where}")

    async def _statement(self, fn, *args):
        plan = self._plan()
        if plan is not None and plan["at"] is not None:
            plan["at"] -= 1
            if plan["at"] == 0:
                self._die(plan, "at this statement")
        return await super()._statement(fn, *args)

    @asynccontextmanager
    async def transaction(self):
        async with super().transaction() as db:
            yield db
        plan = self._plan()
        if plan is not None and plan["after_commit"]:
            self._die(plan, "right after this commit")


async def mortal_database(ws: Workspace, name: str, **kwargs) -> MortalDatabase:
    db = MortalDatabase(ws.path / f"{name}.sqlite", owner=name, **kwargs)
    await db.open()
    ws.databases.append(db)            # closed and deleted with the workspace
    return db
