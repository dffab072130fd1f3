"""Service-owned data on real SQLite files, usable from asyncio.

An experiment gets a temporary folder (:class:`Workspace`); each database is a file in it. A
service that *owns* its data opens its own file; a *shared* database is one file that several
services open, each through its own connection, so they really contend for SQLite's single
writer lock (``busy_timeout`` says how long a writer waits for it before "database is locked").

Why sqlite3 on one worker thread per connection (and not aiosqlite)? It is what aiosqlite does,
without a dependency: SQLite calls block, so each :class:`Database` runs them on its own
single-thread executor. The event loop never waits on the disk or on a lock held by another
writer, and because one thread serves the connection, statements run in the order they were
issued, even when the coroutine that issued one was cancelled meanwhile (the ROLLBACK queued
after it still runs after it).

One connection means one transaction at a time: :meth:`Database.transaction` holds an asyncio
lock, other tasks using the same ``Database`` wait for it, and the task inside the transaction
can keep calling ``execute``/``fetchall`` on the same object.
"""
from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from toylib.core import validate as v

SYNCHRONOUS = ("off", "normal", "full")
# SQLite takes busy_timeout as a C int of milliseconds; an hour is longer than any experiment.
MAX_BUSY_TIMEOUT = 3600.0


class Database:
    """One connection, owned by one service, to one SQLite file.

    ``busy_timeout``: seconds a writer waits for the write lock held by another connection
    before SQLite raises ``sqlite3.OperationalError: database is locked`` (counted in
    ``stats["locked"]``). ``wal``: write-ahead logging, so readers do not block the writer.
    ``synchronous="off"`` skips fsync: fine for throwaway experiment files, and much faster.
    """

    def __init__(self, path, *, owner: str = "service", busy_timeout: float = 5.0,
                 wal: bool = False, synchronous: str = "normal"):
        if not isinstance(path, (str, Path)) or str(path) == "":
            raise TypeError(f"path must be a file path (str or Path) or ':memory:'; got {path!r}")
        self.path = Path(path) if str(path) != ":memory:" else ":memory:"
        self.owner = v.name("owner", owner)
        self.busy_timeout = v.number("busy_timeout", busy_timeout, low=0, high=MAX_BUSY_TIMEOUT)
        if not isinstance(wal, bool):
            raise TypeError(f"wal must be True or False; got {wal!r}")
        self.wal = wal
        self.synchronous = v.one_of("synchronous", synchronous, SYNCHRONOUS)
        self.stats = {"statements": 0, "commits": 0, "rollbacks": 0, "locked": 0}
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._tx_task: asyncio.Task | None = None   # the task inside transaction(), if any

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> Database:
        if self._conn is not None:
            raise RuntimeError(f"database {self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"sqlite-{self.owner}")
        try:
            self._conn = await self._run(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        return self

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; transactions are explicit (BEGIN IMMEDIATE).
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout,
                               isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        if self.wal:
            conn.execute("PRAGMA journal_mode = WAL")
        return conn

    async def close(self) -> None:
        """Close the connection and stop its thread (an open transaction is rolled back)."""
        if self._conn is None:
            return
        conn, executor = self._conn, self._executor
        self._conn = None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=True)
            self._executor = None

    @property
    def closed(self) -> bool:
        return self._conn is None

    async def __aenter__(self) -> Database:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- running statements ------------------------------------------------------------------
    async def _run(self, fn, *args):
        if self._executor is None:
            raise RuntimeError(f"database {self.path} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _in_my_transaction(self) -> bool:
        return self._tx_task is not None and self._tx_task is asyncio.current_task()

    async def _statement(self, fn, *args):
        """Run ``fn(conn, *args)`` in the worker thread, waiting for other tasks' transactions."""
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is closed")
        if self._in_my_transaction():
            return await self._call(fn, *args)
        async with self._lock:
            return await self._call(fn, *args)

    async def _call(self, fn, *args):
        self.stats["statements"] += 1
        try:
            return await self._run(fn, self._conn, *args)
        except sqlite3.OperationalError as e:
            self._count_locked(e)
            raise

    def _count_locked(self, error: BaseException) -> None:
        """Count "database is locked": the contention a shared database measures."""
        if isinstance(error, sqlite3.OperationalError) and \
                ("locked" in str(error) or "busy" in str(error)):
            self.stats["locked"] += 1

    async def execute(self, sql: str, params=()) -> int:
        """Run one statement; return the number of rows it changed."""
        _sql(sql)
        return await self._statement(lambda c, s, p: c.execute(s, p).rowcount, sql, _params(params))

    async def executemany(self, sql: str, seq_of_params) -> int:
        _sql(sql)
        rows = [_params(p, "seq_of_params item") for p in seq_of_params]
        return await self._statement(lambda c, s, p: c.executemany(s, p).rowcount, sql, rows)

    async def executescript(self, script: str) -> None:
        """Several statements at once (a schema). Not allowed inside a transaction."""
        _sql(script, "script")
        if self._in_my_transaction():
            raise RuntimeError("executescript commits implicitly; do not call it inside "
                               "transaction()")
        await self._statement(lambda c, s: c.executescript(s), script)

    async def fetchall(self, sql: str, params=()) -> list[tuple]:
        _sql(sql)
        return await self._statement(lambda c, s, p: c.execute(s, p).fetchall(), sql,
                                     _params(params))

    async def fetchone(self, sql: str, params=()) -> tuple | None:
        _sql(sql)
        return await self._statement(lambda c, s, p: c.execute(s, p).fetchone(), sql,
                                     _params(params))

    async def dataframe(self, sql: str, params=()):
        """A query's result as a pandas DataFrame (column names from the query)."""
        import pandas as pd

        def query(c, s, p):
            cur = c.execute(s, p)
            return pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
        _sql(sql)
        return await self._statement(query, sql, _params(params))

    # -- transactions ------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self):
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any error or cancellation.

        IMMEDIATE takes SQLite's write lock at BEGIN, so two writers queue (up to
        ``busy_timeout``) instead of both reading and then failing to upgrade (deadlock).
        Yields the database itself; the task inside may call its methods freely.
        """
        if self._in_my_transaction():
            raise RuntimeError("transaction() is not re-entrant: this task is already inside "
                               "one on this database")
        async with self._lock:
            if self._conn is None:
                raise RuntimeError(f"database {self.path} is closed")
            try:
                await self._call(lambda c: c.execute("BEGIN IMMEDIATE"))
                self._tx_task = asyncio.current_task()
                yield self
            except BaseException:
                # Also when BEGIN itself was cancelled: it still runs on the worker thread,
                # so the rollback is queued behind it rather than skipped.
                self._tx_task = None
                if await _to_completion(self._run(_rollback_if_open, self._conn)):
                    self.stats["rollbacks"] += 1
                raise
            self._tx_task = None
            try:
                await _to_completion(self._run(lambda c: c.execute("COMMIT"), self._conn))
                self.stats["commits"] += 1
            except BaseException as e:
                # COMMIT can fail with "database is locked" (readers in rollback-journal mode);
                # never leave the connection inside a half-finished transaction.
                self._count_locked(e)
                if await _to_completion(self._run(_rollback_if_open, self._conn)):
                    self.stats["rollbacks"] += 1
                raise

    @asynccontextmanager
    async def atomic(self):
        """Join the current task's transaction if it has one, else open one.

        For helpers (an outbox event, a status change) that must be atomic on their own yet
        also commit together with the caller's business rows when called inside its
        ``transaction()``: an error then rolls back the caller's whole transaction.
        """
        if self._in_my_transaction():
            yield self
        else:
            async with self.transaction():
                yield self

    @property
    def in_transaction(self) -> bool:
        """True while the *current task* is inside :meth:`transaction`."""
        return self._in_my_transaction()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Database({self.path.name if isinstance(self.path, Path) else self.path!s}, " \
               f"owner={self.owner!r}, {state})"


class Workspace:
    """A temporary folder for one experiment's databases, removed (with them) at the end.

    ``async with Workspace() as ws:`` then ``await ws.database("orders", owner="orders")``.
    Opening the same ``name`` again with another owner gives a second connection to the same
    file: that is a shared database. Leaving the block, normally or on error, closes every
    connection and deletes the folder.
    """

    def __init__(self, *, prefix: str = "toylib-", busy_timeout: float = 5.0, wal: bool = False,
                 synchronous: str = "normal"):
        self.prefix = v.name("prefix", prefix)
        self.busy_timeout = v.number("busy_timeout", busy_timeout, low=0, high=MAX_BUSY_TIMEOUT)
        if not isinstance(wal, bool):
            raise TypeError(f"wal must be True or False; got {wal!r}")
        self.wal = wal
        self.synchronous = v.one_of("synchronous", synchronous, SYNCHRONOUS)
        self.path: Path | None = None
        self.databases: list[Database] = []

    async def __aenter__(self) -> Workspace:
        self.path = Path(tempfile.mkdtemp(prefix=self.prefix))
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            for db in reversed(self.databases):
                await _to_completion(db.close())
        finally:
            self.databases.clear()
            if self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)

    async def database(self, name: str, *, owner: str | None = None,
                       busy_timeout: float | None = None, wal: bool | None = None,
                       synchronous: str | None = None) -> Database:
        """Open ``<name>.sqlite`` in the workspace for ``owner`` (default: ``name``)."""
        v.name("name", name)
        if self.path is None:
            raise RuntimeError("the workspace is not open; use `async with Workspace() as ws`")
        db = Database(self.path / f"{name}.sqlite", owner=owner if owner is not None else name,
                      busy_timeout=self.busy_timeout if busy_timeout is None else busy_timeout,
                      wal=self.wal if wal is None else wal,
                      synchronous=self.synchronous if synchronous is None else synchronous)
        await db.open()
        self.databases.append(db)
        return db

    def files(self) -> list[str]:
        """Names of the database files in the workspace (what a reader can `ls`)."""
        if self.path is None or not self.path.exists():
            return []
        return sorted(p.name for p in self.path.glob("*.sqlite"))


def _rollback_if_open(conn: sqlite3.Connection) -> bool:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
        return True
    return False


async def _to_completion(coro):
    """Await ``coro`` to the end even if we are cancelled meanwhile (then re-raise the cancel).

    Cleanup (ROLLBACK, close) must finish: a second Ctrl-C must not leave a connection half
    way through a transaction or a file open while its folder is deleted.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def _sql(sql, param: str = "sql") -> str:
    if not isinstance(sql, str) or not sql.strip():
        raise ValueError(f"{param} must be a non-empty SQL string; got {sql!r}")
    return sql


def _params(params, param: str = "params"):
    if isinstance(params, (tuple, list, dict)):
        return params
    raise TypeError(f"{param} must be a tuple, list or dict of SQL parameters; got {params!r}")
