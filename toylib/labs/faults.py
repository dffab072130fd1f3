"""Faults a lab grader injects into a solution: deaths at chosen statements, and real restarts.

Deaths at a statement
    A :class:`MortalDatabase` is a real SQLite connection that "dies" (raises :class:`Crash`,
    its open transaction rolls back) at its ``at``-th statement or right after its
    ``after_commit``-th commit, for the code running under :meth:`MortalDatabase.doom` only, so
    one request or one delivery can be aimed at while others run concurrently. ``doom`` yields
    a :class:`Plan` that records what the code did (statements, commits) and whether the
    planned death fired: a grader proves each planned fault fired (``plan.fired``) and counts
    one that did not as its own error (:class:`GraderError`), never as a pass.

Real restarts
    A crash must end the process and everything in its memory. :class:`ProgramImage` is a
    solution's code as a fresh process would load it: :meth:`ProgramImage.boot` returns a new
    copy of the function whose module-level data, closure cells and instance state are deep
    copies of what they held when the image was taken (helpers defined beside it are rebuilt
    the same way), so a dict or a set kept in memory starts empty again on every boot.
    :class:`Process` is one process of a service: a boot of its code and its own connection
    to the service's database file. ``await proc.kill()`` ends both (the connection closes,
    its open transaction rolls back, later statements on it raise :class:`Crash`);
    ``await proc.start()`` again is a restart that recovers from the database file alone::

        image = ProgramImage(charge_once)        # once, before anything runs
        proc = await Process(ws, "payment", image).start()
        await proc.code(proc.db, event)          # the process at work
        await proc.restart()                     # kill -9, then a fresh boot and connection

    (A fresh OS process per restart would cost about a second each, too slow for a grader
    that restarts services dozens of times in 20 seconds; fresh objects built from the files
    alone give the same guarantee for what a solution can keep in Python memory.)
"""
from __future__ import annotations

import contextvars
import copy
import types
from contextlib import asynccontextmanager
from dataclasses import dataclass

from toylib.core import validate as v
from toylib.data.db import Database, Workspace


class Crash(Exception):
    """Injected: the process running this code died here (its open transaction rolls back)."""


class GraderError(Exception):
    """The grader could not do what it planned (a fault that never fired): not the student's
    failure, and never a pass."""


@dataclass
class Plan:
    """A death planned for the code under one :meth:`MortalDatabase.doom` (or none), and what
    that code did: ``statements`` and ``commits`` counted, ``fired`` once the death struck."""
    db: "MortalDatabase"
    at: int | None = None
    after_commit: int | None = None
    statements: int = 0
    commits: int = 0
    fired: str = ""

    @property
    def planned(self) -> bool:
        return self.at is not None or self.after_commit is not None

    def __str__(self) -> str:
        where = (f"at statement {self.at}" if self.at is not None else
                 f"after commit {self.after_commit}" if self.after_commit is not None else
                 "no death")
        return f"{self.db.owner}: {where}"


# The plan for the code running now, or None. A context variable, so a death aims at one
# request or one delivery even when others run concurrently, and follows the tasks that code
# starts (they copy the context).
_doom: contextvars.ContextVar = contextvars.ContextVar("doom", default=None)


class MortalDatabase(Database):
    """A connection whose process can be made to die, for the code running under ``doom()``:
    at its ``at``-th statement (before it runs), or right after its ``after_commit``-th
    commit; and a connection that can be killed outright (:meth:`kill`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deaths = 0
        self.dead = False

    @asynccontextmanager
    async def doom(self, *, at: int | None = None, after_commit: int | bool | None = None):
        """Arm a death for the code inside the block (and the tasks it starts); yields the
        :class:`Plan`, which counts what the code did even when no death is planned."""
        v.optional(v.positive, "at", at, integer=True)
        if after_commit is True:
            after_commit = 1
        elif after_commit is False:
            after_commit = None
        v.optional(v.positive, "after_commit", after_commit, integer=True)
        plan = Plan(self, at, after_commit)
        token = _doom.set(plan)
        try:
            yield plan
        finally:
            _doom.reset(token)

    def _plan(self) -> Plan | None:
        plan = _doom.get()
        return plan if plan is not None and plan.db is self else None

    def _die(self, plan: Plan, where: str):
        plan.fired = where
        plan.at = plan.after_commit = None            # one death per plan
        self.deaths += 1
        raise Crash(f"the {self.owner} service died {where}")

    async def _statement(self, fn, *args):
        if self.dead:
            raise Crash(f"the {self.owner} service is dead (its process was killed)")
        plan = self._plan()
        if plan is not None:
            plan.statements += 1
            if plan.at is not None and plan.statements == plan.at:
                self._die(plan, f"at statement {plan.statements}")
        return await super()._statement(fn, *args)

    @asynccontextmanager
    async def transaction(self):
        if self.dead:
            raise Crash(f"the {self.owner} service is dead (its process was killed)")
        async with super().transaction() as db:
            yield db
        plan = self._plan()
        if plan is not None:
            plan.commits += 1
            if plan.after_commit is not None and plan.commits == plan.after_commit:
                self._die(plan, f"right after commit {plan.commits}")

    async def kill(self) -> None:
        """The process dies: later statements raise :class:`Crash`; the connection closes
        (SQLite rolls back a transaction left open)."""
        self.dead = True
        await self.close()


async def mortal_database(ws: Workspace, name: str, **kwargs) -> MortalDatabase:
    """A :class:`MortalDatabase` on ``<name>.sqlite`` in ``ws`` (opening it again gives a
    second connection to the same file), closed and deleted with the workspace."""
    v.name("name", name)
    if not isinstance(ws, Workspace) or ws.path is None:
        raise TypeError(f"ws must be an open toylib.data.db.Workspace; got {ws!r}")
    kwargs.setdefault("owner", name)
    kwargs.setdefault("wal", ws.wal)
    db = MortalDatabase(ws.path / f"{name}.sqlite", **kwargs)
    await db.open()
    ws.databases.append(db)            # closed and deleted with the workspace
    return db


# -- real restarts --------------------------------------------------------------------------------
def _is_code(value) -> bool:
    return isinstance(value, (types.ModuleType, type, types.BuiltinFunctionType))


def code_names(code: types.CodeType) -> set[str]:
    """Global names a code object (and the functions nested in it) may read."""
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= code_names(const)
    return out


class ProgramImage:
    """A solution's code as a fresh process would load it (see the module docstring).

    Built from an ``async def`` function, a bound method or an object with an ``async def
    __call__``; :meth:`boot` returns a fresh callable each time.
    """

    def __init__(self, fn):
        v.async_function("fn", fn)
        self.fn = fn
        self.boots = 0
        if isinstance(fn, types.FunctionType):
            self._kind = "function"
            self._state = self._function_state(fn, {})
        elif isinstance(fn, types.MethodType):
            self._kind = "method"
            self._state = self._copy(fn.__self__)
        else:
            self._kind = "object"
            self._state = self._copy(fn)

    @staticmethod
    def _copy(value):
        try:
            return copy.deepcopy(value)
        except Exception:            # a lock, a socket: cannot be copied, so it is shared
            return value

    def _function_state(self, fn, seen: dict) -> dict:
        """Deep copies of the data ``fn`` reads: its globals (module-level data, and that of
        helpers it calls from the same module) and its closure cells."""
        if id(fn) in seen:
            return seen[id(fn)]
        state = {"globals": {}, "cells": [], "helpers": {}}
        seen[id(fn)] = state
        g = fn.__globals__
        for name in code_names(fn.__code__):
            if name not in g:
                continue
            value = g[name]
            if isinstance(value, types.FunctionType) and value.__globals__ is g:
                state["helpers"][name] = self._function_state(value, seen)
            elif not _is_code(value):
                state["globals"][name] = self._copy(value)
        for cell in fn.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:        # an empty cell
                content = None
            state["cells"].append(content if _is_code(content) else self._copy(content))
        return state

    def _rebuild(self, fn, state: dict, fresh_globals: dict | None, built: dict):
        if id(fn) in built:
            return built[id(fn)]
        g = fresh_globals if fresh_globals is not None else dict(fn.__globals__)
        cells = tuple(types.CellType(self._copy(c)) for c in state["cells"]) or None
        new = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, cells)
        new.__kwdefaults__ = copy.copy(fn.__kwdefaults__)
        new.__qualname__, new.__doc__ = fn.__qualname__, fn.__doc__
        new.__dict__.update(fn.__dict__)
        built[id(fn)] = new
        for name, value in state["globals"].items():
            g[name] = self._copy(value)
        for name, sub in state["helpers"].items():
            g[name] = self._rebuild(fn.__globals__[name], sub, g, built)
        return new

    def boot(self):
        """The code as a fresh process loads it: nothing kept in memory survives."""
        self.boots += 1
        if self._kind == "function":
            return self._rebuild(self.fn, self._state, None, {})
        if self._kind == "method":
            return getattr(self._copy(self._state), self.fn.__name__)
        return self._copy(self._state)


class Process:
    """One process of a service: a fresh boot of its code and its own connection to the
    service's database file ``<name>.sqlite`` in ``ws``. ``code`` is the booted callable (or a
    dict of them when ``image`` is a dict of images); ``generation`` counts its starts."""

    def __init__(self, ws: Workspace, name: str, image, **db_kwargs):
        if not isinstance(ws, Workspace):
            raise TypeError(f"ws must be a toylib.data.db.Workspace; got {ws!r}")
        self.ws, self.name = ws, v.name("name", name)
        images = image if isinstance(image, dict) else {"": image}
        for key, img in images.items():
            if not isinstance(img, ProgramImage):
                raise TypeError(f"image must be a ProgramImage (or a dict of them); "
                                f"got {img!r} for {key!r}")
        self.image = image
        self.db_kwargs = db_kwargs
        self.db: MortalDatabase | None = None
        self.code = None
        self.generation = 0
        self.deaths = 0

    @property
    def alive(self) -> bool:
        return self.db is not None and not self.db.dead

    async def start(self) -> "Process":
        """Start (or restart) the process: a new connection, a fresh boot of the code."""
        if self.alive:
            raise RuntimeError(f"the {self.name} process is already running")
        self.db = await mortal_database(self.ws, self.name, **self.db_kwargs)
        self.code = ({k: img.boot() for k, img in self.image.items()}
                     if isinstance(self.image, dict) else self.image.boot())
        self.generation += 1
        return self

    async def kill(self) -> None:
        """kill -9: the connection goes (its open transaction rolls back), and the memory."""
        if self.db is not None and not self.db.dead:
            self.deaths += 1
            await self.db.kill()
        self.code = None

    async def restart(self) -> "Process":
        await self.kill()
        return await self.start()
